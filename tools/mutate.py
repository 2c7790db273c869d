#!/usr/bin/env python3
"""A small, dependency-free mutation tester for sde_diffusion.

For each module named on the command line (default: sampling), generate single-point mutants of
sde_diffusion/<module>.py by walking its AST (swap + and -, * and /; drop ** 2, ** 0.5, .sqrt(), a unary minus,
.clamp_min(...); swap comparison operators at their boundary; replace numeric constants 2 -> 1, 0.5 -> 1, 1 -> 0,
0 -> 1, others n -> n + 1), apply each to a copy of the package in a temporary directory, run the module's tests on
it with `pytest -x -q` and a per-mutant timeout, and write a Markdown report: the score and every survivor with its
line and diff. Docstrings, f-strings and the bodies of `raise` statements (error messages) are not mutated.

    python tools/mutate.py                       # sampling, all mutants
    python tools/mutate.py sampling --max 60     # the first 60, in source order
    python tools/mutate.py sampling --only DDIM DPMSolver2M --list   # list mutants of these classes, run nothing
    python tools/mutate.py sde --tests tests/test_sde.py --timeout 120

The package is never touched: mutants live in a temp dir put first on PYTHONPATH. Each survivor in the report is
listed with "verdict: TODO", to be replaced by hand with "equivalent" (and why) or "test added" (its name).
"""
from __future__ import annotations

import argparse
import ast
import copy
import difflib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = "sde_diffusion"
# One torch/OpenMP thread per test run unless the caller chose otherwise (the Makefile exports 1): with two threads
# while another process holds a core, OpenMP's barriers spin and a 5 s test file took 100 s, turning kills into timeouts.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# module -> its test files, fastest and most specific first (pytest -x stops at the first failure)
TESTS = {
    "sampling": ["tests/test_sampling_coefficients.py", "tests/test_properties_sampling.py", "tests/test_sampling.py"],
    "sde": ["tests/test_sde.py", "tests/test_properties.py"],
    "reverse": ["tests/test_reverse.py"],
    "likelihood": ["tests/test_likelihood.py"],
    "score_matching": ["tests/test_losses.py"],
    "toy": ["tests/test_toy.py"],
    "ddpm": ["tests/test_ddpm.py"],
    "smld": ["tests/test_smld.py"],
}

SWAP_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
       ast.Eq: "==", ast.NotEq: "!="}
DROP_CALLS = {"sqrt", "clamp_min"}   # x.sqrt() -> x, math.sqrt(x) -> x, x.clamp_min(0) -> x


def _new_constant(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if v == 2:
        return 1 if isinstance(v, int) else 1.0
    if v == 0.5:
        return 1.0
    if v == 1:
        return 0 if isinstance(v, int) else 0.0
    if v == 0:
        return 1 if isinstance(v, int) else 1.0
    return v + 1


class _Parents(ast.NodeVisitor):
    "Record each node's parent, and the enclosing def/class qualified name."

    def __init__(self):
        self.parent, self.qual, self._stack = {}, {}, []

    def generic_visit(self, node):
        named = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        if named:
            self._stack.append(node.name)
        self.qual[id(node)] = ".".join(self._stack)
        for child in ast.iter_child_nodes(node):
            self.parent[id(child)] = node
            self.visit(child)
        if named:
            self._stack.pop()


def _skipped(node, parents) -> bool:
    "Inside an f-string or a `raise` (error messages); docstrings are strings, never mutated."
    p = parents.parent.get(id(node))
    while p is not None:
        if isinstance(p, (ast.JoinedStr, ast.Raise)):
            return True
        p = parents.parent.get(id(p))
    return False


def mutants(source: str):
    """Every single-point mutant of `source`, in source order: dicts with line, col, qual (enclosing def), what,
    original (text of the node) and replacement (text)."""
    tree = ast.parse(source)
    parents = _Parents()
    parents.visit(tree)
    out = []

    def add(node, what, new_node):
        seg = ast.get_source_segment(source, node)
        if seg is None:
            return
        text = ast.unparse(new_node)
        out.append(dict(line=node.lineno, col=node.col_offset, end_line=node.end_lineno, end_col=node.end_col_offset,
                        qual=parents.qual.get(id(node), ""), what=what, original=seg, replacement=f"({text})"))

    for node in ast.walk(tree):
        if _skipped(node, parents):
            continue
        if isinstance(node, ast.BinOp):
            kind = type(node.op)
            if kind in SWAP_BINOP:
                new = copy.deepcopy(node)
                new.op = SWAP_BINOP[kind]()
                add(node, f"{OPS[kind]} -> {OPS[SWAP_BINOP[kind]]}", new)
            elif kind is ast.Pow and isinstance(node.right, ast.Constant) and node.right.value in (2, 0.5):
                add(node, f"drop ** {node.right.value}", node.left)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
            add(node, "drop unary -", node.operand)
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAP_CMP:
            kind = type(node.ops[0])
            new = copy.deepcopy(node)
            new.ops = [SWAP_CMP[kind]()]
            add(node, f"{OPS[kind]} -> {OPS[SWAP_CMP[kind]]}", new)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in DROP_CALLS:
            f = node.func
            if f.attr == "sqrt" and isinstance(f.value, ast.Name) and f.value.id in ("math", "torch", "np") and len(node.args) == 1:
                add(node, f"drop {f.value.id}.sqrt", node.args[0])
            elif not (isinstance(f.value, ast.Name) and f.value.id in ("math", "torch", "np")):
                add(node, f"drop .{f.attr}()", f.value)
        elif isinstance(node, ast.Constant):
            parent = parents.parent.get(id(node))
            if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Pow) and parent.right is node \
                    and node.value in (2, 0.5):
                continue   # x ** 2 -> x ** 1 is the "drop ** 2" mutant above
            new_v = _new_constant(node.value)
            if new_v is not None:
                add(node, f"{node.value!r} -> {new_v!r}", ast.Constant(new_v))
    out.sort(key=lambda m: (m["line"], m["col"], m["what"]))
    return out


def apply(source: str, m: dict) -> str:
    "`source` with mutant `m` applied (checked to parse)."
    lines = source.splitlines(keepends=True)

    def offset(line, col):
        b = lines[line - 1].encode()[:col]
        return sum(len(l) for l in lines[: line - 1]) + len(b.decode())
    start, end = offset(m["line"], m["col"]), offset(m["end_line"], m["end_col"])
    new = source[:start] + m["replacement"] + source[end:]
    ast.parse(new)   # a mutant must still be valid Python
    return new


def diff(source: str, mutated: str, name: str) -> str:
    d = difflib.unified_diff(source.splitlines(), mutated.splitlines(), f"a/{name}", f"b/{name}", n=0, lineterm="")
    return "\n".join(l for l in d if not l.startswith(("---", "+++")))


def _run_forked(workdir: Path, tests: list[str], timeout: float, extra: list[str]) -> tuple[str, float, str]:
    """Run pytest in a forked child of this process, which has imported torch and pytest once (a fresh interpreter
    spends most of a mutant's time importing them on a loaded machine). The child imports the package from `workdir`."""
    import signal
    t0 = time.time()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # child
        os.close(r)
        os.setsid()
        fd = os.open(os.devnull, os.O_WRONLY)
        out = os.open(os.path.join(workdir, "pytest.out"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1), os.dup2(out, 2), os.close(fd)
        sys.path[:] = [str(workdir)] + [p for p in sys.path if p not in ("", str(ROOT))]
        os.chdir(ROOT)
        import pytest
        try:
            rc = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "--no-header", "-rN", "--rootdir", str(ROOT),
                                  *extra, *tests]))
        except BaseException:
            rc = 3
        os.write(w, str(rc).encode())
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(0)
    os.close(w)
    status = None
    while status is None:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.read(r, 16).decode() or "3"
            status = "survived" if rc == "0" else "killed"
        elif time.time() - t0 > timeout:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = "timeout"
        elif _rss_bytes(pid) > MEMORY_LIMIT:
            # a mutant that allocates without bound (seen: a score-matching mutant at 16.6 GB of 23 GB and rising)
            # would make the machine kill some other process; it is detected, as a crashing test would be
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return "killed", time.time() - t0, f"stopped by the memory guard (resident set over {MEMORY_LIMIT / 2**30:.1f} GiB)"
        else:
            time.sleep(0.05)
    os.close(r)
    try:
        last = (Path(workdir) / "pytest.out").read_text().strip().splitlines()[-1]
    except (OSError, IndexError):
        last = ""
    return status, time.time() - t0, last


def _memory_limit() -> int:
    "A quarter of the machine's memory (MUTATE_MEMORY_GB to set it): a mutant's test run beyond it is stopped."
    if os.environ.get("MUTATE_MEMORY_GB"):
        return int(float(os.environ["MUTATE_MEMORY_GB"]) * 2**30)
    try:
        total_kb = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal:"))
        return total_kb * 1024 // 4
    except (OSError, StopIteration, ValueError):
        return 6 * 2**30


MEMORY_LIMIT = _memory_limit()


def _rss_bytes(pid: int) -> int:
    "The resident set of process `pid` (Linux /proc; 0 where it cannot be read)."
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:")), 0)
    except OSError:
        return 0


def run_one(workdir: Path, tests: list[str], timeout: float, extra: list[str], fork: bool = True) -> tuple[str, float, str]:
    "killed / survived / timeout, seconds, the last line of pytest's output."
    if fork and hasattr(os, "fork"):
        return _run_forked(workdir, tests, timeout, extra)
    env = dict(os.environ, PYTHONPATH=str(workdir) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONDONTWRITEBYTECODE="1")
    # -P: `python -m` would put the cwd (the repository, with the real package) first on sys.path
    cmd = [sys.executable, "-P", "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", "-rN",
           "--rootdir", str(ROOT), *extra, *tests]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                           start_new_session=True)
    except subprocess.TimeoutExpired:
        return "timeout", time.time() - t0, ""
    status = "survived" if p.returncode == 0 else "killed"   # 1: a test failed; 2-4: the mutant broke collection
    text = (p.stdout + p.stderr).strip()
    return status, time.time() - t0, text.splitlines()[-1] if text else ""


def _check_isolated(workdir: Path) -> None:
    "The tests must import the copy, not the repository's package (an editable install would win otherwise)."
    env = dict(os.environ, PYTHONPATH=str(workdir))
    where = subprocess.run([sys.executable, "-P", "-c", f"import {PKG}; print({PKG}.__file__)"], cwd=ROOT, env=env,
                           capture_output=True, text=True).stdout.strip()
    if not where.startswith(str(workdir)):
        sys.exit(f"mutants would not be imported: {PKG} resolves to {where!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", default=["sampling"], help=f"modules of {PKG}: {', '.join(TESTS)}")
    ap.add_argument("--tests", nargs="+", help="test files to run (default: the module's mapping)")
    ap.add_argument("--only", nargs="+", help="mutate only inside these top-level functions/classes (qualified-name prefixes)")
    ap.add_argument("--max", type=int, help="run only the first MAX mutants (source order), per module")
    ap.add_argument("--start", type=int, default=0, help="skip the first START mutants (with --max: a window)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant (default 300); a timeout is reported apart")
    ap.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. \"-k 'not slow'\"")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--report", default=str(ROOT / "bench" / "MUTATION.md"), help="the Markdown report to write")
    ap.add_argument("--no-fork", action="store_true", help="a fresh interpreter per mutant (slower: imports torch each time)")
    args = ap.parse_args(argv)
    if not args.no_fork:
        import numpy, pytest, torch  # noqa: F401  imported once, shared by every forked mutant run
        for name in ("torchdiffeq", "tqdm.auto", "hypothesis", "scipy.integrate", "torchsde"):
            try:
                __import__(name)
            except ImportError:
                pass
        x = torch.randn(4, 3, dtype=torch.float64)   # torch's lazy first-call set-up, done once
        (x.sin() * x.norm(dim=1, keepdim=True) / x.exp()).sum().item()
        assert "sde_diffusion" not in sys.modules

    sections = []
    for mod in args.modules:
        if mod not in TESTS and not args.tests:
            ap.error(f"unknown module {mod!r}: give --tests, or one of {', '.join(TESTS)}")
        path = ROOT / PKG / f"{mod}.py"
        source = path.read_text()
        ms = mutants(source)
        if args.only:
            ms = [m for m in ms if any(m["qual"] == o or m["qual"].startswith(o + ".") for o in args.only)]
        total_generated = len(ms)
        ms = ms[args.start:]
        if args.max:
            ms = ms[: args.max]
        if args.list:
            for i, m in enumerate(ms):
                print(f"{i:4d} {mod}.py:{m['line']:<4d} {m['qual']:<28s} {m['what']:<16s} {m['original'][:60]!r}")
            continue
        tests = args.tests or TESTS[mod]
        results = []
        with tempfile.TemporaryDirectory(prefix="mutants_") as tmp:
            work = Path(tmp)
            shutil.copytree(ROOT / PKG, work / PKG, ignore=shutil.ignore_patterns("__pycache__"))
            _check_isolated(work)
            target = work / PKG / f"{mod}.py"
            status, secs, last = run_one(work, tests, args.timeout, shlex.split(args.pytest_args), not args.no_fork)
            if status != "survived":
                sys.exit(f"the unmutated package does not pass {tests}: {status} ({last})")
            print(f"{mod}: baseline passes in {secs:.0f} s; {len(ms)} of {total_generated} mutants to run", flush=True)
            for i, m in enumerate(ms):
                mutated = apply(source, m)
                target.write_text(mutated)
                status, secs, last = run_one(work, tests, args.timeout, shlex.split(args.pytest_args), not args.no_fork)
                results.append(dict(m, status=status, secs=secs, last=last, diff=diff(source, mutated, f"{PKG}/{mod}.py")))
                print(f"[{i + 1}/{len(ms)}] {mod}.py:{m['line']} {m['what']:<16s} {status:<8s} {secs:5.1f} s  {last[:90]}",
                      flush=True)
                write_report(Path(args.report), sections + [(mod, tests, total_generated, results)], args, quiet=True)
            target.write_text(source)
        sections.append((mod, tests, total_generated, results))
    if args.list:
        return 0
    write_report(Path(args.report), sections, args)
    return 0


def write_report(path: Path, sections, args, quiet: bool = False) -> None:
    "The Markdown report (rewritten after every mutant, so an interrupted run leaves a partial one)."
    out = ["# Mutation testing", "",
           f"Generated by `tools/mutate.py` (`make mutate`). Command: `python tools/mutate.py {' '.join(sys.argv[1:])}`.", ""]
    for mod, tests, total, results in sections:
        n = len(results)
        killed = sum(r["status"] == "killed" for r in results)
        timeouts = sum(r["status"] == "timeout" for r in results)
        survivors = [r for r in results if r["status"] == "survived"]
        out += [f"## `{PKG}/{mod}.py`", "",
                f"Tests: {', '.join(f'`{t}`' for t in tests)} (`pytest -x -q`, timeout {args.timeout:.0f} s per mutant).", "",
                f"**Score: {killed} / {n} killed ({100 * killed / max(n, 1):.1f} %)**; {len(survivors)} survived, "
                f"{timeouts} timed out; {n} of the {total} mutants generated were run.", ""]
        if survivors or timeouts:
            out += ["### Survivors", ""]
            for r in results:
                if r["status"] == "killed":
                    continue
                out += [f"- line {r['line']} (`{r['qual']}`), {r['what']} — {r['status']} — **verdict: TODO**", "",
                        "  ```diff", *("  " + l for l in r["diff"].splitlines()), "  ```", ""]
        out += ["<details><summary>All mutants</summary>", "", "| # | line | where | mutation | result | s |",
                "|---|---|---|---|---|---|"]
        out += [f"| {i} | {r['line']} | `{r['qual']}` | `{r['what']}` | {r['status']} | {r['secs']:.0f} |"
                for i, r in enumerate(results)]
        out += ["", "</details>", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out))
    if not quiet:
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
