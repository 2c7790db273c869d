"""The Colab cell (tools/colab_cell.py): every notebook's first code cell is the same generated cell, hidden from the book;
run in a fresh interpreter where sde_diffusion is not importable it asks pip (a stub here: nothing is downloaded) to
install the package from the repository the book's launch buttons open, and where the package is importable it does
nothing."""
import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import colab_cell  # noqa: E402

NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))

# A `pip` that records how it was called instead of installing anything.
STUB_PIP = '''\
import json, os, sys
with open(os.environ["PIP_STUB_LOG"], "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "executable": sys.executable}) + "\\n")
'''


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_carries_the_cell(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    found = colab_cell.problems(nb)
    assert not found, f"{path.name}: {'; '.join(found)}: run .venv/bin/python tools/colab_cell.py --fix {path.relative_to(ROOT)}"


def test_default_exp_stays_with_its_notebook():
    "The cell keeps each notebook's own nbdev directive (the module it exports), on top."
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        if not code:
            continue
        directives, _ = colab_cell._split("".join(code[0]["source"]))
        if any("#| export" in "".join(c["source"]) for c in code):
            assert any(d.startswith("#| default_exp ") for d in directives), \
                f"{path.name} exports code but its first cell has no `#| default_exp`"


def _run_cell(tmp_path, hide_package: bool) -> list[dict]:
    "Run the cell's code in a fresh interpreter with the stub pip first on the path; return pip's recorded calls."
    stub = tmp_path / "stub"
    (stub / "pip").mkdir(parents=True)
    (stub / "pip/__init__.py").write_text("")
    (stub / "pip/__main__.py").write_text(STUB_PIP)
    log = tmp_path / "pip.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env.update(PYTHONPATH=str(stub), PIP_STUB_LOG=str(log), OMP_NUM_THREADS="1")
    # -S: no site-packages, so neither the editable install of sde_diffusion nor anything else is importable; the cwd
    # (on sys.path for -c) is outside the repository. The `python -m pip` the cell starts finds the stub first.
    cmd = [sys.executable, *(["-S"] if hide_package else []), "-c", colab_cell.canonical()]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_cell_installs_from_the_repository_when_the_package_is_missing(tmp_path):
    cfg = yaml.safe_load((ROOT / "book/_config.yml").read_text(encoding="utf-8"))["repository"]
    calls = _run_cell(tmp_path, hide_package=True)
    assert len(calls) == 1, calls
    argv = calls[0]["argv"]
    assert argv[:2] == ["install", "-q"] and len(argv) == 3, argv
    target = argv[2]
    assert target.startswith("git+"), f"pip installs {target!r}, not the git repository"
    url = target[len("git+"):].split("@", 1)[0].rstrip("/")
    assert url == cfg["url"].rstrip("/"), f"the cell installs from {url}, the book's repository is {cfg['url']}"
    assert url.startswith("https://github.com/") and url.count("/") == 4, url   # owner/name, nothing else
    # the same interpreter as the notebook's kernel runs pip, so the package lands where the kernel imports from
    assert Path(calls[0]["executable"]).resolve() == Path(sys.executable).resolve()


def test_cell_does_nothing_where_the_package_is_installed(tmp_path):
    assert _run_cell(tmp_path, hide_package=False) == []


def test_fix_keeps_a_canonical_notebook_byte_for_byte_and_repairs_a_broken_one():
    path = ROOT / "nbs/04_sde.ipynb"
    raw = path.read_text(encoding="utf-8")
    nb = json.loads(raw)
    if colab_cell.problems(nb):
        pytest.skip("04_sde's cell is not canonical (see test_notebook_carries_the_cell)")
    assert colab_cell.dump(nb) == raw, "tools/colab_cell.py would not write notebooks in their on-disk format"
    # an edited cell comes back, with its own default_exp line
    broken = copy.deepcopy(nb)
    first = next(c for c in broken["cells"] if c["cell_type"] == "code")
    first["source"] = ["#| default_exp sde\n", colab_cell.MARKER + "\n", "import sde_diffusion\n"]
    first["metadata"] = {}
    assert colab_cell.problems(broken)
    assert colab_cell.dump(colab_cell.fix(broken, path.name)) == raw
    # a notebook without the cell gets one on top, and its default_exp moves into it
    bare = copy.deepcopy(nb)
    i = next(k for k, c in enumerate(bare["cells"]) if c["cell_type"] == "code")
    bare["cells"][i]["source"] = ["#| default_exp sde\n", "import torch"]
    fixed = colab_cell.fix(bare, path.name)
    assert not colab_cell.problems(fixed)
    code = [c for c in fixed["cells"] if c["cell_type"] == "code"]
    assert "".join(code[0]["source"]).startswith("#| default_exp sde\n" + colab_cell.MARKER)
    assert "".join(code[1]["source"]) == "import torch"


def test_check_command_line():
    r = subprocess.run([sys.executable, str(ROOT / "tools/colab_cell.py"), "--check"], capture_output=True, text=True,
                       timeout=120)
    bad = [json.loads(p.read_text(encoding="utf-8")) for p in NOTEBOOKS]
    assert r.returncode == (1 if any(colab_cell.problems(nb) for nb in bad) else 0), r.stdout + r.stderr
    printed = subprocess.run([sys.executable, str(ROOT / "tools/colab_cell.py"), "--print"], capture_output=True,
                             text=True, timeout=120).stdout
    assert printed.rstrip("\n") == colab_cell.canonical() and textwrap.dedent(printed) == printed
