"""Execute notebooks many times the way the book build does, under CPU load, and count stalls.

    .venv/bin/python tools/exec_harness.py nbs/03_fokker_planck.ipynb nbs/A6b_main.ipynb --repeats 20 --load 1
    .venv/bin/python tools/exec_harness.py --course 1 --load 1        # also whole-course passes

Each execution goes through the same code path as `make book` (myst-nb's cache mode calls jupyter-cache's
`single_nb_execution`, i.e. one nbclient `NotebookClient` per notebook, all in one long-lived process), or, with
`--executor ours`, through `tools/execute.py`, the executor `make book` uses now. `--load N` starts N busy processes
(one core each) for the whole run, as a second job on the machine would.

An execution is a *stall* when, for some cell, the kernel's `execute_reply` reaches the client more than 5 s after the
kernel announced `status: idle` (normally a few milliseconds; the stalls this harness exists for wait the whole cell
timeout there), or when it takes `--stall-after` seconds more than the fastest execution of the same notebook. The
client-side message log of every execution (every message sent or received, with its time, type and parent) is
written to `--logdir`, so a lost message can be named. The figures are printed as a table and written as JSON.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent

# ---- client-side message log ----------------------------------------------------------------------------------------
_LOG: list[tuple] = []
_T0 = [time.monotonic()]


def _install_message_log() -> None:
    from jupyter_client.session import Session

    send, deserialize = Session.send, Session.deserialize

    def logged_send(self, stream, msg_or_type, *args, **kwargs):
        msg = send(self, stream, msg_or_type, *args, **kwargs)
        if isinstance(msg, dict):
            _LOG.append((time.monotonic() - _T0[0], "sent", msg["header"]["msg_type"], msg["header"]["msg_id"][-8:],
                         "", ""))
        return msg

    def logged_deserialize(self, msg_list, *args, **kwargs):
        msg = deserialize(self, msg_list, *args, **kwargs)
        content = msg.get("content") if isinstance(msg.get("content"), dict) else {}
        _LOG.append((time.monotonic() - _T0[0], "recv", msg["header"]["msg_type"], msg["header"]["msg_id"][-8:],
                     (msg.get("parent_header") or {}).get("msg_id", "")[-8:], content.get("execution_state", "")))
        return msg

    Session.send, Session.deserialize = logged_send, logged_deserialize


def _worst_idle_to_reply(log) -> float:
    "Longest wait, over the cells, between the kernel's `status: idle` and its `execute_reply` reaching the client."
    idle, reply = {}, {}
    for t, d, typ, _msg_id, parent, state in log:
        if d == "recv" and typ == "status" and state == "idle":
            idle[parent] = t
        elif d == "recv" and typ == "execute_reply":
            reply[parent] = t
    return max((abs(reply[p] - idle[p]) for p in reply if p in idle), default=0.0)


def _busy() -> None:   # one core of competing load
    x = 0
    while True:
        x = (x * 1103515245 + 12345) % 2147483648


def execute_like_the_book(path: Path, timeout: int) -> tuple[float, str | None]:
    "myst-nb's cache mode: jupyter-cache's single_nb_execution (nbclient), cwd = the notebook's folder."
    from jupyter_cache.executors.utils import single_nb_execution
    nb = nbformat.read(path, as_version=4)
    res = single_nb_execution(nb, cwd=str(path.parent), timeout=timeout, allow_errors=False, meta_override=True)
    return res.time, (None if res.err is None else f"{type(res.err).__name__}: {str(res.err)[-300:]}")


def execute_ours(path: Path, timeout: int) -> tuple[float, str | None]:
    "The project's executor (tools/execute.py), one notebook."
    sys.path.insert(0, str(ROOT / "tools"))
    import execute
    t0 = time.monotonic()
    try:
        execute.execute_notebook(path, out=None, cell_timeout=timeout)
        return time.monotonic() - t0, None
    except execute.ExecutionFailed as e:
        return time.monotonic() - t0, f"ExecutionFailed: {str(e)[-300:]}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="*", type=Path)
    p.add_argument("--repeats", type=int, default=10, help="executions of each listed notebook")
    p.add_argument("--course", type=int, default=0, help="whole-course passes (every notebook in book/_toc.yml order)")
    p.add_argument("--load", type=int, default=1, help="busy processes competing for the CPU")
    p.add_argument("--timeout", type=int, default=300, help="nbclient timeout per cell, seconds")
    p.add_argument("--stall-after", type=float, default=60.0, help="seconds above the notebook's fastest run")
    p.add_argument("--executor", choices=["book", "ours"], default="book")
    p.add_argument("--fixed", action="store_true", help="install book/_ext/reliable_execution.py first, as the book does")
    p.add_argument("--logdir", type=Path, default=Path("/tmp/exec_harness"))
    p.add_argument("--out", type=Path, default=None, help="JSON summary (default: <logdir>/summary.json)")
    a = p.parse_args()
    a.logdir.mkdir(parents=True, exist_ok=True)
    if a.executor == "book":
        _install_message_log()
    lost = []
    if a.fixed:
        sys.path.insert(0, str(ROOT / "book" / "_ext"))
        import reliable_execution
        reliable_execution.install()
        lost = reliable_execution.LOST_WAKEUPS
    run = execute_like_the_book if a.executor == "book" else execute_ours
    plan = [nb for nb in a.notebooks for _ in range(a.repeats)]
    if a.course:
        import yaml
        toc = yaml.safe_load((ROOT / "book/_toc.yml").read_text())
        files = [toc["root"]] + [c["file"] for part in toc.get("parts", []) for c in part["chapters"]]
        course = [ROOT / (f if f.endswith(".ipynb") else f + ".ipynb") for f in files]
        course = [f for f in course if f.exists()]
        plan += course * a.course
    load = [mp.Process(target=_busy, daemon=True) for _ in range(a.load)]
    for proc in load:
        proc.start()
    rows = []
    try:
        for i, nb in enumerate(plan):
            _LOG.clear()
            _T0[0] = time.monotonic()
            t0 = time.monotonic()
            try:
                secs, err = run(nb, a.timeout)
            except Exception as e:   # noqa: BLE001 - the harness records every way an execution can end
                secs, err = time.monotonic() - t0, f"{type(e).__name__}: {e}"
            wall = time.monotonic() - t0
            gap = _worst_idle_to_reply(_LOG)
            n_lost = len(lost)
            lost.clear()
            rows.append({"i": i, "notebook": nb.name, "seconds": wall, "error": err, "lost_wakeups": n_lost,
                         "idle_to_reply": gap,
                         "loadavg_1min": os.getloadavg()[0]})
            (a.logdir / f"{i:04d}_{nb.stem}.log").write_text("\n".join(
                f"{t:9.3f} {d} {typ:24s} {mid} parent={par} {st}" for t, d, typ, mid, par, st in _LOG))
            print(f"[{i + 1}/{len(plan)}] {nb.name}: {wall:.1f} s (load {os.getloadavg()[0]:.1f})" + (f", {n_lost} lost wake-ups recovered" if n_lost else "")
                  + (f"  ERROR {err}" if err else ""), flush=True)
    finally:
        for proc in load:
            proc.terminate()
    fastest = {}
    for r in rows:
        if r["error"] is None:
            fastest[r["notebook"]] = min(fastest.get(r["notebook"], 1e9), r["seconds"])
    for r in rows:   # the kernel said idle, and its execute_reply reached us that much later; or a slow run overall
        r["stall"] = r["idle_to_reply"] > 5.0 or r["seconds"] > fastest.get(r["notebook"], 0) + a.stall_after
    stalls = [r for r in rows if r["stall"]]
    errors = [r for r in rows if r["error"]]
    summary = {"executor": a.executor, "fixed": a.fixed, "load": a.load,
               "lost_wakeups_recovered": sum(r["lost_wakeups"] for r in rows), "executions": len(rows), "stalls": len(stalls),
               "errors": len(errors), "rows": rows,
               "mean_loadavg_1min": sum(r["loadavg_1min"] for r in rows) / max(len(rows), 1), "python": sys.version.split()[0]}
    (a.out or a.logdir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{len(rows)} executions ({a.executor} executor{', fixed' if a.fixed else ''}, load {a.load}): "
          f"{len(stalls)} stalls, {len(errors)} errors, {summary['lost_wakeups_recovered']} lost wake-ups recovered")
    for r in stalls + errors:
        print(f"  #{r['i']} {r['notebook']}: {r['seconds']:.1f} s {r['error'] or ''}")
    return 1 if stalls or errors else 0


if __name__ == "__main__":
    sys.exit(main())
