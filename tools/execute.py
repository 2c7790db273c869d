"""Execute the course's notebooks once, in parallel, into the book's jupyter-cache; `make book` then only renders.

    .venv/bin/python tools/execute.py                       # every notebook of book/_toc.yml, 2 at a time
    .venv/bin/python tools/execute.py nbs/05_reverse.ipynb  # some notebooks
    .venv/bin/python tools/execute.py --jobs 1 --force      # re-execute even when the cache has them

The book is built with myst-nb's `execute_notebooks: cache`: a notebook whose code cells match an executed copy in
`book/_build/.jupyter_cache` is rendered from that copy, anything else is executed by myst-nb, one notebook at a time.
This script fills that same cache the same way (jupyter-cache's hash of the code cells and the kernelspec; an executed
notebook stored with `cache_notebook_bundle`), but runs `--jobs` notebooks at once, each in its own process with its
own kernel, longest first. On a 2-core machine two one-thread kernels keep both cores busy; myst-nb alone keeps one.

Every notebook is executed as myst-nb executes it: nbclient, the notebook's folder as working directory, errors not
allowed, the cell timeout of `execute.timeout` in book/_config.yml or the notebook's own `metadata.execution.timeout`,
and `book/_ext/reliable_execution.py` installed (no lost-wake-up stalls; a timeout names its cell). A failed notebook is
not cached, its failing cell and traceback are printed, the other notebooks still run, and the exit status is 1.

Per-cell times are written to `book/_build/execution_times.json` (`--times`), and the slowest cells are printed:
that is where to look when the build gets slower.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "book/_build/.jupyter_cache"
TIMES = ROOT / "book/_build/execution_times.json"


class ExecutionFailed(RuntimeError):
    "A notebook failed to execute: the message names the notebook, the cell and the error."


def book_notebooks() -> list[Path]:
    "The notebooks of book/_toc.yml, in reading order."
    import yaml
    toc = yaml.safe_load((ROOT / "book/_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc.get("parts", []) for c in part["chapters"]]
    files += [c["file"] for c in toc.get("chapters", [])]
    paths = [ROOT / (f if f.endswith(".ipynb") else f + ".ipynb") for f in files]
    return [p for p in paths if p.exists()]


def default_timeout() -> int:
    "`execute.timeout` of book/_config.yml: seconds per cell unless the notebook says otherwise."
    import yaml
    return int(yaml.safe_load((ROOT / "book/_config.yml").read_text())["execute"]["timeout"])


def _seconds(meta: dict) -> float | None:
    try:
        t0 = datetime.fromisoformat(meta["iopub.status.busy"].replace("Z", "+00:00"))
        t1 = datetime.fromisoformat(meta["iopub.status.idle"].replace("Z", "+00:00"))
        return (t1 - t0).total_seconds()
    except (KeyError, ValueError):
        return None


def execute_notebook(path: Path, out: Path | None = None, cell_timeout: int | None = None):
    """Execute one notebook as the book does; return (executed notebook, seconds, [(cell index, seconds)]).

    Raises `ExecutionFailed` naming the cell. The executed notebook carries no timing metadata (jupyter-cache hashes
    cell metadata, so the copy must match the source); `out`, if given, receives it as .ipynb."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError
    sys.path.insert(0, str(ROOT / "book/_ext"))
    import reliable_execution
    reliable_execution.install()

    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    timeout = (nb.metadata.get("execution", {}).get("timeout") or cell_timeout or default_timeout())
    client = NotebookClient(nb, timeout=timeout, allow_errors=False, record_timing=True,
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.monotonic()
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as e:
        raise ExecutionFailed(f"{path.relative_to(ROOT)}: {e}") from None
    seconds = time.monotonic() - t0
    cells = []
    for i, cell in enumerate(nb.cells):
        meta = cell.metadata.pop("execution", None)
        if cell.cell_type == "code" and meta:
            s = _seconds(meta)
            if s is not None:
                cells.append((i, s))
    if out is not None:
        nbformat.write(nb, out)
    return nb, seconds, cells


def _worker(path: str, cell_timeout: int | None) -> dict:
    "One notebook in a pool process: the executed notebook as JSON, or the error."
    try:
        nb, seconds, cells = execute_notebook(Path(path), cell_timeout=cell_timeout)
        return {"path": path, "nb": nbformat.writes(nb), "seconds": seconds, "cells": cells, "error": None}
    except ExecutionFailed as e:
        return {"path": path, "error": str(e)}
    except Exception:   # noqa: BLE001 - the kernel died, a file is unreadable: report it with the notebook's name
        return {"path": path, "error": f"{path}: {traceback.format_exc()}"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook of book/_toc.yml")
    p.add_argument("--jobs", type=int, default=int(os.environ.get("BOOK_JOBS", 2)),
                   help="notebooks executed at once (default: $BOOK_JOBS or 2)")
    p.add_argument("--force", action="store_true", help="execute even the notebooks the cache already holds")
    p.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: book/_config.yml's)")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--times", type=Path, default=TIMES, help="per-cell times, JSON")
    a = p.parse_args(argv)
    if a.jobs < 1:
        p.error(f"--jobs must be >= 1, got {a.jobs}")
    # One OpenMP/torch thread per kernel unless the caller chose otherwise (the Makefile exports 1). Kernels inherit
    # this environment; with two threads each while another process holds a core, OpenMP's barriers spin: chapter 11's
    # training cell ran 25 times slower (over its 540 s timeout instead of 54 s) when this script was run by hand.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    paths = [x.resolve() for x in a.notebooks] or book_notebooks()
    for x in paths:
        if not x.exists():
            p.error(f"notebook {x} does not exist")
    a.cache.parent.mkdir(parents=True, exist_ok=True)
    cache = get_cache(str(a.cache))
    previous = json.loads(a.times.read_text()) if a.times.exists() else {}

    todo = []
    for x in paths:
        try:
            rec = cache.match_cache_notebook(nbformat.read(x, as_version=4))
        except KeyError:
            rec = None
        if rec is not None and not a.force:
            print(f"cached   {x.relative_to(ROOT)}", flush=True)
            continue
        todo.append(x)

    def cost(x):   # longest first: last measured time, else the notebook's sized cell timeout as a proxy
        known = previous.get(str(x.relative_to(ROOT)), {}).get("seconds")
        return known if known is not None else nbformat.read(x, as_version=4).metadata.get("execution", {}).get(
            "timeout", 60)
    todo.sort(key=cost, reverse=True)

    t0, failed, times = time.monotonic(), [], dict(previous)
    with ProcessPoolExecutor(max_workers=min(a.jobs, max(len(todo), 1))) as pool:
        futures = [pool.submit(_worker, str(x), a.timeout) for x in todo]
        for fut in as_completed(futures):
            r = fut.result()
            rel = str(Path(r["path"]).relative_to(ROOT))
            if r["error"]:
                failed.append(rel)
                print(f"FAILED   {rel}\n{r['error']}", flush=True)
                continue
            nb = nbformat.reads(r["nb"], as_version=4)
            stage = cache.add_nb_to_project(r["path"])
            cache.cache_notebook_bundle(CacheBundleIn(nb, stage.uri, data={"execution_seconds": r["seconds"]}),
                                        check_validity=False, overwrite=True)
            times[rel] = {"seconds": r["seconds"], "cells": r["cells"]}
            slow = sorted(r["cells"], key=lambda c: -c[1])[:3]
            print(f"executed {rel}: {r['seconds']:.1f} s (slowest cells: "
                  + ", ".join(f"#{i} {s:.1f} s" for i, s in slow) + f") at {time.monotonic() - t0:.0f} s", flush=True)
    a.times.parent.mkdir(parents=True, exist_ok=True)
    a.times.write_text(json.dumps(times, indent=1))
    total = sum(times.get(str(x.relative_to(ROOT)), {}).get("seconds", 0) for x in todo)
    print(f"{len(todo)} notebooks executed in {time.monotonic() - t0:.0f} s wall ({total:.0f} s of notebook time, "
          f"{a.jobs} at once), {len(paths) - len(todo)} from the cache, {len(failed)} failed", flush=True)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
