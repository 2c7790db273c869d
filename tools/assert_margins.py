"""How close does every numerical assert come to failing?  Run the notebooks (or the tests) with instrumented asserts.

    .venv/bin/python tools/assert_margins.py nbs/*.ipynb --out /tmp/margins_1t.json          # notebooks
    .venv/bin/python tools/assert_margins.py --tests tests/ --out /tmp/margins_tests.json     # pytest files
    .venv/bin/python tools/assert_margins.py nbs/07_smld.ipynb --seed-offset 1                # other seeds

Every comparison inside an `assert` (`a < b`, `abs(x - y) <= tol`, chained `lo < x < hi`, and `(t < tol).all()` on
tensors) is rewritten to record, besides its truth value, its *margin*: the ratio of the side that must stay small to
the side that bounds it (`a / b` for `a < b`, `b / a` for `a > b`), worst element for tensors. A margin below 1 passes;
a margin above 0.5 means the assert came within 2x of its tolerance. Comparisons whose sides have mixed signs or a zero
bound (`x > 0`) carry no tolerance and are reported as such.

`--seed-offset k` adds k to every integer literal given to `manual_seed(...)`, `seed=...` or `default_rng(...)`, so a
check that holds only for the chosen seed shows up. Notebooks execute through nbclient (cell timeout `--timeout`);
tests run under pytest in a temporary copy of tests/ whose asserts are rewritten the same way.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD_ENV = "ASSERT_MARGINS_FILE"
_LOST: list = []

_OPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}


class _Rewrite(ast.NodeTransformer):
    "Inside assert statements, replace each ordering comparison by a call to __margin__ that records it."

    def __init__(self, tag: str, seed_offset: int = 0):
        self.tag, self.seed_offset, self.in_assert = tag, seed_offset, False

    def visit_Assert(self, node):
        self.in_assert = True
        node.test = self.visit(node.test)
        self.in_assert = False
        return node

    def visit_Lambda(self, node):   # a lambda's body is not evaluated by the assert itself (seeds in it still move)
        in_assert, self.in_assert = self.in_assert, False
        node = self.generic_visit(node)
        self.in_assert = in_assert
        return node

    def visit_Compare(self, node):
        node = self.generic_visit(node)
        if not self.in_assert or not all(type(op) in _OPS for op in node.ops):
            return node
        sides = [node.left] + list(node.comparators)
        label = f"{self.tag}:{node.lineno}:{ast.unparse(node)[:90]}"
        return ast.Call(func=ast.Name("__margin__", ast.Load()),
                        args=[ast.Constant(label), ast.List([ast.Constant(_OPS[type(o)]) for o in node.ops], ast.Load()),
                              ast.List(sides, ast.Load())], keywords=[])

    def visit_Call(self, node):
        node = self.generic_visit(node)
        if self.seed_offset:
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("manual_seed", "default_rng", "seed") and node.args and _is_int(node.args[0]):
                node.args[0] = ast.Constant(node.args[0].value + self.seed_offset)
            for kw in node.keywords:
                if kw.arg == "seed" and _is_int(kw.value):
                    kw.value = ast.Constant(kw.value.value + self.seed_offset)
        return node


def _is_int(n) -> bool:
    return isinstance(n, ast.Constant) and isinstance(n.value, int) and not isinstance(n.value, bool)


RECORDER = r'''
import json as _json, math as _math, os as _os
def __margin__(label, ops, sides, _file=_os.environ.get("%s")):
    "Evaluate a (chained) comparison as Python would, recording the worst margin of each link."
    result = True
    for op, a, b in zip(ops, sides[:-1], sides[1:]):
        ok = {"<": lambda: a < b, "<=": lambda: a <= b, ">": lambda: a > b, ">=": lambda: a >= b}[op]()
        small, big = (a, b) if op in ("<", "<=") else (b, a)
        margin = None
        try:
            import torch
            s = torch.as_tensor(small, dtype=torch.float64).cpu()
            l = torch.as_tensor(big, dtype=torch.float64).cpu()
            s, l = torch.broadcast_tensors(s, l)
            if s.numel() and bool((s >= 0).all()) and bool((l > 0).all()):
                margin = float((s / l).max())
        except Exception:
            pass
        try:
            if _file:
                with open(_file, "a") as f:
                    f.write(_json.dumps({"label": label, "op": op, "margin": margin}) + "\n")
        except Exception:
            pass
        result = result and ok
        if isinstance(result, bool) and not result:
            return False
    return result
''' % RECORD_ENV


def rewrite_source(src: str, tag: str, seed_offset: int = 0) -> str:
    tree = ast.parse(src)
    tree = _Rewrite(tag, seed_offset).visit(tree)
    ast.fix_missing_locations(tree)
    return ast.unparse(tree)


def _cell_seconds(cell) -> float | None:
    "Execution time of a cell from nbclient's timing metadata (record_timing)."
    from datetime import datetime
    ex = cell.get("metadata", {}).get("execution", {})
    try:
        t0, t1 = ex["iopub.execute_input"], ex["shell.execute_reply"]
        return (datetime.fromisoformat(t1.replace("Z", "+00:00")) - datetime.fromisoformat(t0.replace("Z", "+00:00"))).total_seconds()
    except (KeyError, ValueError):
        return None


def run_notebooks(paths: list[Path], record: Path, timeout: int, seed_offset: int, timing: dict) -> dict:
    import time
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    status = {}
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                try:
                    lines = cell.source.splitlines()
                    magics = [l for l in lines if l.lstrip().startswith(("%", "!"))]
                    body = "\n".join(l for l in lines if not l.lstrip().startswith(("%", "!")))
                    cell.source = "\n".join(magics + [rewrite_source(body, f"{path.stem}[{i}]", seed_offset)])
                except SyntaxError:
                    pass
        nb.cells.insert(0, nbformat.v4.new_code_cell(RECORDER))
        env_before = os.environ.get(RECORD_ENV)
        os.environ[RECORD_ENV] = str(record)
        t0, lost0 = time.monotonic(), len(_LOST)
        try:
            NotebookClient(nb, timeout=timeout, record_timing=True,
                           resources={"metadata": {"path": str(path.parent)}}).execute()
            status[path.name] = "ok"
        except CellExecutionError as e:
            status[path.name] = "FAILED: " + str(e).strip().splitlines()[-1][:300]
        except Exception as e:   # noqa: BLE001
            status[path.name] = f"ERROR {type(e).__name__}: {str(e)[:300]}"
        finally:
            if env_before is None:
                os.environ.pop(RECORD_ENV, None)
        secs = [(_cell_seconds(c), i - 1) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        secs = [(s, i) for s, i in secs if s is not None]
        slowest = max(secs) if secs else (None, None)
        timing[path.name] = {"wall": time.monotonic() - t0, "slowest_cell": slowest[0], "slowest_index": slowest[1],
                             "lost_wakeups": len(_LOST) - lost0}
        print(f"{path.name}: {status[path.name]} ({timing[path.name]['wall']:.1f} s, slowest cell "
              f"{slowest[1]}: {slowest[0]} s, lost wake-ups {timing[path.name]['lost_wakeups']})", flush=True)
    return status


def run_tests(tests: Path, record: Path, seed_offset: int, pytest_args: list[str]) -> dict:
    dest = ROOT / "_margins_tests"            # a sibling of tests/, so paths relative to a test file still resolve
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(tests, dest)
    for f in dest.glob("test_*.py"):
        tree = ast.parse(rewrite_source(f.read_text(), f.stem, seed_offset))
        i = 0                                  # the recorder goes after the docstring and `from __future__` imports
        while i < len(tree.body) and (
                (isinstance(tree.body[i], ast.ImportFrom) and tree.body[i].module == "__future__")
                or (i == 0 and isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Constant))):
            i += 1
        tree.body[i:i] = ast.parse(RECORDER).body
        f.write_text(ast.unparse(tree))
    env = dict(os.environ, **{RECORD_ENV: str(record)})
    r = subprocess.run([sys.executable, "-m", "pytest", str(dest), "-q", "-p", "no:cacheprovider",
                        "--assert=plain", *pytest_args], cwd=ROOT, env=env, capture_output=True, text=True)
    shutil.rmtree(dest, ignore_errors=True)
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]
    print(tail)
    failed = [l for l in r.stdout.splitlines() if l.startswith("FAILED")]
    return {"pytest": tail, "failed": failed}


def summarize(record: Path) -> list[dict]:
    worst: dict[str, dict] = {}
    if record.exists():
        for line in record.read_text().splitlines():
            d = json.loads(line)
            key = f"{d['label']} [{d['op']}]"
            w = worst.setdefault(key, {"assert": key, "margin": None, "calls": 0})
            w["calls"] += 1
            if d["margin"] is not None and (w["margin"] is None or d["margin"] > w["margin"]):
                w["margin"] = d["margin"]
    return sorted(worst.values(), key=lambda w: -(w["margin"] if w["margin"] is not None else -1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="*", type=Path)
    p.add_argument("--tests", type=Path, default=None, help="a tests/ folder to run under pytest instead")
    p.add_argument("--seed-offset", type=int, default=0)
    p.add_argument("--timeout", type=int, default=600)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fixed", action="store_true", help="execute with book/_ext/reliable_execution.py installed")
    p.add_argument("--pytest-args", nargs=argparse.REMAINDER, default=[])
    a = p.parse_args()
    if a.fixed:
        sys.path.insert(0, str(ROOT / "book" / "_ext"))
        import reliable_execution
        reliable_execution.install()
        _LOST[:] = []
        globals()["_LOST"] = reliable_execution.LOST_WAKEUPS
    record = a.out.with_suffix(".records")
    record.unlink(missing_ok=True)
    timing: dict = {}
    if a.tests:
        status = run_tests(a.tests, record, a.seed_offset, a.pytest_args)
    else:
        status = run_notebooks(a.notebooks, record, a.timeout, a.seed_offset, timing)
    rows = summarize(record)
    close = [r for r in rows if r["margin"] is not None and r["margin"] > 0.5]
    a.out.write_text(json.dumps({"env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "SDE_DIFFUSION_CACHE")},
                                 "seed_offset": a.seed_offset, "status": status, "timing": timing,
                                 "asserts": rows}, indent=1))
    print(f"{len(rows)} recorded comparisons, {len(close)} within 2x of their bound (margin > 0.5):")
    for r in close:
        print(f"  {r['margin']:.3f}  {r['assert']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
