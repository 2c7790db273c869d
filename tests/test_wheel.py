"""The package as a user gets it: `python -m build --wheel`, installed into a fresh virtual environment (no system
site-packages, nothing of this repository on sys.path), then every module imported, every ```python block of README.md
run on its own, `python -m sde_diffusion --help`, `__version__`, and the shipped digits weights found.

Offline-capable: everything is installed with `pip install --no-index` from a wheelhouse (`$SDE_DIFFUSION_WHEELHOUSE`,
default ~/.cache/sde_diffusion/wheelhouse) plus the --find-links of the machine's pip configuration, which is where
`make install` finds torch (`pip install -c constraints.txt torch==2.13.0` resolves to the CPU wheel on local disk);
torch first, then the wheel, at the versions of constraints.txt. Only when that fails (the first run on a machine) is
the install resolved through the pip configuration and every missing wheel but torch downloaded into the wheelhouse;
where torch is not on local disk (CI: PyTorch's CPU index) it is installed by that same route.
SDE_DIFFUSION_OFFLINE=1 forbids any download. One test, so that pytest-xdist builds the venv once.
Slow: two to three minutes on 2 cores (a fresh venv, torch unpacked, every module imported in a new process).
"""
import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
WHEELHOUSE = Path(os.environ.get("SDE_DIFFUSION_WHEELHOUSE", Path.home() / ".cache/sde_diffusion/wheelhouse"))


def _settings():
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    return cfg["DEFAULT"]


def _torch_pin() -> str:
    pins = [line.strip() for line in CONSTRAINTS.read_text().splitlines() if line.startswith("torch==")]
    assert len(pins) == 1, "constraints.txt pins torch once"
    return pins[0]


def readme_snippets() -> list[str]:
    "The ```python blocks of README.md, in order."
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.M | re.S)


# Snippets of README.md known not to run on their own: index -> (the error they stop with, why). The test xfails on
# exactly that error, fails on any other, and fails once the snippet runs (then the entry goes).
KNOWN_BROKEN: dict[int, tuple[str, str]] = {}   # the second snippet lacked `import torch` (fixed when this test found it)


def _run(cmd, cwd, env, timeout=1200, check=True):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def _clean_env(**extra) -> dict:
    "The environment without anything that would put this repository or .venv on sys.path."
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT)))
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def _install(py, reqs: list, dist: Path, tmp: Path, env: dict) -> str:
    """Install `reqs` into the venv of `py` at the versions of constraints.txt, offline when the wheelhouse (and the pip
    configuration's --find-links, where `make install` finds torch) has everything; returns how it went."""
    # --no-compile: no .pyc for all of torch up front (the imports compile what they use)
    offline = [py, "-m", "pip", "install", "-q", "--no-compile", "--no-index", "--find-links", WHEELHOUSE, "--find-links", dist,
               "-c", CONSTRAINTS, *reqs]
    r = _run(offline, tmp, env, check=False)
    if r.returncode == 0:
        return "offline"
    if os.environ.get("SDE_DIFFUSION_OFFLINE"):
        pytest.fail(f"not installable offline from {WHEELHOUSE} and SDE_DIFFUSION_OFFLINE is set:\n{r.stderr[-3000:]}")
    # Resolve through the pip configuration (make install's route), then keep what is missing in the wheelhouse.
    report = tmp / "report.json"
    _run([py, "-m", "pip", "install", "-q", "--dry-run", "--report", report, "-c", CONSTRAINTS, *reqs], tmp, env)
    need = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in json.loads(report.read_text())["install"]
            if i["metadata"]["name"].replace("-", "_").lower() not in ("sde_diffusion", "torch")]
    if need:
        _run([py, "-m", "pip", "download", "-q", "--no-deps", "-d", WHEELHOUSE, "-c", CONSTRAINTS, *need], tmp, env)
    if _run(offline, tmp, env, check=False).returncode == 0:
        return "wheelhouse filled, then offline"
    # torch itself is not on local disk here (CI: PyTorch's CPU index): the plain route of `make install`
    _run([py, "-m", "pip", "install", "-q", "--no-compile", "--find-links", WHEELHOUSE, "-c", CONSTRAINTS, *reqs], tmp, env)
    return "online"


def _python(py, cwd: Path, code: str, timeout=600) -> subprocess.CompletedProcess:
    "Run code with the venv's Python from a folder outside the repository."
    return _run([py, "-c", code], cwd, _clean_env(MPLBACKEND="Agg"), timeout=timeout, check=False)


def _scratch() -> str | None:
    """Where the venv goes: /dev/shm (memory) when it has room, since on a busy disk unpacking torch and deleting it
    took a minute each (measured: 17,000 files, 760 MB); else the default temporary folder."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 4 * 2**30:
            return str(shm)
    except OSError:
        pass
    return None


def test_the_wheel_installs_and_works():
    """One test (the venv is built once, also under pytest-xdist): build, install, then every check, each failure
    collected so that one run reports all of them. The venv (about 1 GB with torch) is deleted at the end."""
    pytest.importorskip("build")
    with tempfile.TemporaryDirectory(prefix="sde_diffusion_wheel_", dir=_scratch()) as tmp:
        _check_wheel(Path(tmp))
        t = time.perf_counter()
    print(f"wheel test: deleting the venv took {time.perf_counter() - t:.1f} s")


def _check_wheel(tmp: Path):
    times, problems = {}, []
    t0 = time.perf_counter()
    # The sources as a fresh clone would have them (tracked + untracked-not-ignored files), so nothing built here
    # (build/, *.egg-info) lands in the working tree.
    src = tmp / "src"
    files = _run(["git", "ls-files", "-co", "--exclude-standard", "-z", "--", "setup.py", "settings.ini", "README.md",
                  "MANIFEST.in", "LICENSE", "sde_diffusion"], ROOT, os.environ).stdout.split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    dist = tmp / "dist"
    # --no-isolation: the build backend (setuptools) of this environment, so building needs no download
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, src], tmp, _clean_env())
    (wheel,) = dist.glob("sde_diffusion-*.whl")
    times["build"] = time.perf_counter() - t0

    # -- what is in the wheel
    names = zipfile.ZipFile(wheel).namelist()
    modules = {f"sde_diffusion/{p.name}" for p in (ROOT / "sde_diffusion").glob("*.py")}
    if modules - set(names):
        problems.append(f"modules missing from the wheel: {sorted(modules - set(names))}")
    weights = {f"sde_diffusion/pretrained/{p.name}" for p in (ROOT / "sde_diffusion/pretrained").glob("*.pt")}
    if not weights or not weights <= set(names):
        problems.append("the shipped digits weights are missing from the wheel")
    if [n for n in names if n.startswith(("tests/", "nbs/", "book/", "tools/"))]:
        problems.append("the wheel carries tests/, nbs/, book/ or tools/")
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    settings = _settings()
    if f"\nVersion: {settings['version']}\n" not in meta:
        problems.append(f"the wheel's version is not settings.ini's {settings['version']}")
    requires = sorted(r.replace(" ", "") for r in re.findall(r"^Requires-Dist: ([^;\n]+)$", meta, flags=re.M))
    if requires != sorted(settings["requirements"].split()):
        problems.append(f"Requires-Dist {requires} differs from settings.ini's requirements")

    # -- a fresh venv, without system site-packages
    t = time.perf_counter()
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp, _clean_env())
    py = venv / "bin/python"
    times["venv"] = time.perf_counter() - t
    env = _clean_env()
    t = time.perf_counter()
    how_torch = _install(py, [_torch_pin()], dist, tmp, env)        # torch first, as `make install` does
    times["torch"] = time.perf_counter() - t
    t = time.perf_counter()
    how = _install(py, [wheel], dist, tmp, env)
    times["install"] = time.perf_counter() - t

    # -- used from a folder outside the repository
    out = tmp / "elsewhere"
    out.mkdir()
    t = time.perf_counter()
    mods = sorted(f"sde_diffusion.{p.stem}" for p in (ROOT / "sde_diffusion").glob("*.py")
                  if p.stem not in ("__init__", "__main__"))
    r = _python(py, out, "import importlib, sde_diffusion\n"
                         f"for m in {mods!r}: importlib.import_module(m)\n"
                         "print(sde_diffusion.__file__)")
    if r.returncode != 0:
        problems.append(f"importing every module failed:\n{r.stderr[-3000:]}")
    elif str(venv) not in r.stdout or str(ROOT) in r.stdout:
        problems.append(f"sde_diffusion imported from {r.stdout.strip()}, not from the venv")
    times["imports"] = time.perf_counter() - t

    r = _python(py, out, "import sde_diffusion, importlib.metadata as m; "
                         "print(sde_diffusion.__version__, m.version('sde_diffusion'))")
    if r.stdout.split() != [settings["version"]] * 2:
        problems.append(f"__version__ / metadata version: {r.stdout.strip()} {r.stderr[-1000:]}, want {settings['version']}")

    r = _python(py, out, "from sde_diffusion.digits_unet import pretrained_path, digits_config; "
                         "p = pretrained_path(digits_config()); print(p.exists(), p)")
    if not r.stdout.startswith("True "):
        problems.append(f"the shipped weights are not found where images.pretrained_path looks: {r.stdout}{r.stderr[-1000:]}")

    r = _run([py, "-m", "sde_diffusion", "--help"], out, _clean_env(), check=False)
    if r.returncode != 0 or "train" not in r.stdout or "sample" not in r.stdout:
        problems.append(f"python -m sde_diffusion --help exited {r.returncode}: {r.stdout[-500:]}{r.stderr[-1000:]}")

    t = time.perf_counter()
    for index, code in enumerate(readme_snippets()):
        r = _python(py, out, code)
        if index in KNOWN_BROKEN:
            error, why = KNOWN_BROKEN[index]
            if r.returncode == 0:
                problems.append(f"README.md python block {index + 1} runs on its own now: remove it from KNOWN_BROKEN")
            elif error not in r.stderr:
                problems.append(f"README.md python block {index + 1} fails differently than known:\n{r.stderr[-2000:]}")
            else:
                warnings.warn(f"README.md python block {index + 1}: {why} ({error})")
        elif r.returncode != 0:
            problems.append(f"README.md python block {index + 1} failed on its own:\n{code}\n{r.stderr[-2000:]}")
    times["README"] = time.perf_counter() - t
    print(f"\nwheel test (torch: {how_torch}, package: {how}), seconds: "
          + ", ".join(f"{k} {v:.1f}" for k, v in times.items()) + f", total {time.perf_counter() - t0:.1f}")
    assert not problems, "\n\n".join(problems)
