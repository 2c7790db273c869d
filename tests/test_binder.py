"""binder/: the environment Binder (repo2docker) builds to run the notebooks. The files parse, every pin is the version
of constraints.txt, torch is pinned to the CPU build from PyTorch's CPU index, the pins are exactly the closure of what
the package and the notebooks need (nothing missing, nothing extra), and postBuild installs the package."""
import configparser
import os
import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# What running the notebooks needs besides the package's own requirements.
NOTEBOOK_EXTRAS = {"ipykernel", "ipywidgets", "diffusers", "scipy"}
# Linux x86-64, the Python of binder/runtime.txt: the markers under which Binder resolves.
MARKER_ENV = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
NOT_PINNED = {"setuptools", "pip", "wheel"}   # the build tools of the image (pip freeze leaves them out of constraints.txt too)


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def _binder() -> tuple[list[str], dict[str, Requirement]]:
    "(pip options, name -> requirement) of binder/requirements.txt; fails on a line that is neither."
    options, reqs = [], {}
    for n, raw in enumerate((BINDER / "requirements.txt").read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            options.append(line)
            continue
        req = Requirement(line)            # raises on a line pip would not parse as a requirement
        name = canonicalize_name(req.name)
        assert name not in reqs, f"line {n}: {req.name} pinned twice"
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"line {n}: {line!r} is not an exact pin (==)"
        reqs[name] = req
    return options, reqs


def _pinned_version(req: Requirement) -> Version:
    return Version(next(iter(req.specifier)).version)


def _runtime_python() -> str:
    text = (BINDER / "runtime.txt").read_text(encoding="utf-8").strip()
    m = re.fullmatch(r"python-(3\.\d+)", text)
    assert m, f"binder/runtime.txt must read python-3.X, got {text!r}"
    return m.group(1)


def _settings() -> configparser.SectionProxy:
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    return cfg["DEFAULT"]


def test_requirements_parse_and_torch_is_the_cpu_build():
    options, reqs = _binder()
    assert f"--extra-index-url {CPU_INDEX}" in options, "PyTorch's CPU index must be an extra index URL"
    assert not [o for o in options if o.startswith(("--index-url", "-i "))], "PyPI must stay the main index"
    torch = _pinned_version(reqs["torch"])
    assert torch.local == "cpu", f"torch must be pinned to the CPU build (torch==X+cpu), got {torch}"


def test_every_pin_is_the_version_of_constraints():
    _, reqs = _binder()
    cons = _constraints()
    wrong = {name: (str(_pinned_version(r)), cons.get(name)) for name, r in reqs.items()
             if cons.get(name) is None or Version(_pinned_version(r).public) != Version(cons[name])}
    assert not wrong, f"binder pin vs constraints.txt (None: not in constraints.txt): {wrong}"


def test_the_package_requirements_are_pinned_and_satisfied():
    _, reqs = _binder()
    for line in _settings()["requirements"].split():
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in reqs, f"the package requires {line} but binder/requirements.txt does not pin it"
        assert req.specifier.contains(_pinned_version(reqs[name]), prereleases=True), (line, str(reqs[name]))
    missing = sorted(NOTEBOOK_EXTRAS - set(reqs))
    assert not missing, f"the notebooks need {missing}"


def test_pins_are_the_closure_of_what_is_needed():
    """Every dependency of a pinned package (its metadata as installed in .venv, which constraints.txt pins; markers
    evaluated for Linux and the Python of runtime.txt) is pinned, and nothing else is: Binder resolves nothing itself."""
    _, reqs = _binder()
    env = {**MARKER_ENV, "python_version": _runtime_python(), "python_full_version": _runtime_python() + ".0"}
    roots = {canonicalize_name(Requirement(r).name) for r in _settings()["requirements"].split()} | NOTEBOOK_EXTRAS
    needed, todo = set(), list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in needed or name in NOT_PINNED:
            continue
        needed.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            pytest.skip(f"{name} is not installed here: its dependencies cannot be read (run `make install`)")
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(req.name)
    assert not sorted(needed - set(reqs)), f"dependencies not pinned in binder/requirements.txt: {sorted(needed - set(reqs))}"
    assert not sorted(set(reqs) - needed), f"pins nothing needs: {sorted(set(reqs) - needed)}"


def test_runtime_python_is_the_one_ci_builds_with():
    "binder/runtime.txt asks for the Python that CI builds and tests the book with (the pins were resolved there)."
    import yaml
    py = _runtime_python()
    assert Version(py) >= Version(_settings()["min_python"])
    wf = yaml.safe_load((ROOT / ".github/workflows/book.yml").read_text(encoding="utf-8"))
    versions = {str(step["with"]["python-version"]) for job in wf["jobs"].values() for step in job.get("steps", [])
                if "setup-python" in str(step.get("uses", ""))}
    assert versions == {py}, f"CI uses Python {versions}, binder/runtime.txt {py}"


def test_postbuild_installs_the_package():
    post = BINDER / "postBuild"
    assert post.exists() and os.access(post, os.X_OK), "binder/postBuild must exist and be executable"
    text = post.read_text(encoding="utf-8")
    assert text.startswith("#!") and "set -e" in text
    assert re.search(r"pip install --no-deps -e \.(\s|$)", text), "postBuild must install the package: pip install --no-deps -e ."
    r = subprocess.run(["bash", "-n", str(post)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
