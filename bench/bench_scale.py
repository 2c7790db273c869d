#!/usr/bin/env python
"""Does the choice of `sample`'s default depend on the data's scale? The suite of `bench_suite.py` at several scales.

`bench/SUITE.md` ranks the samplers on mixtures normalized to data std 1 (mean coordinate variance 1). The time grids
are fixed in t, not in units of the data: on the VP SDE the time-quadratic grid puts its finest steps in log-SNR near
l = 0, where the noise is about the size of unit-scale data, and the log-SNR grid spreads them evenly. Data of another
scale move the region that matters. This script reruns the suite with every distribution multiplied by a scale s
(`bench_suite.py --scale s`: data std s) for the samplers the default chooses between, on both grids, plus the default
itself told the scale (`sample(..., data_std=s)`) and not told it, and `diffusers`' samplers as the peers, and writes
bench/SUITE_SCALE.md:

A. the time-quadratic against the log-SNR grid, UniPC-2 and iPNDM-4: on how many of the 14 mixtures each is closer to
   the exact probability-flow map on the log-density gap (net of the eps limit, paired, by more than 2 standard
   errors), and the median ratio of their RMS distances to that map;
B. the default with and without `data_std`: its noise-aware rank and its win rate against the best peer.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_scale.py [--jobs 2] [--scales 0.25,0.35,0.5,1,2] [--report-from DIR]

About 4 min of CPU per scale; `--jobs 2` runs two scales at once. The raw dumps go to `--work` (default a temporary
folder), the report to bench/SUITE_SCALE.md (`--out`).
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_suite as S  # noqa: E402
from sde_diffusion import sampling  # noqa: E402

SCALES = (0.25, 0.35, 0.5, 1.0, 2.0)
NFES = (5, 7, 10, 15, 20, 25, 50)
PAIRS = (("UniPC-2", "ours UniPC [quad]", "ours UniPC [logsnr]"), ("iPNDM-4", "ours iPNDM [quad]", "ours iPNDM [logsnr]"),
         ("UniPC-2, the time-cubic grid in place of the quadratic (q = cubic)", "ours UniPC [cubic]", "ours UniPC [logsnr]"),
         ("UniPC-2, the time-cubic grid (q) against the time-quadratic one (l)", "ours UniPC [cubic]", "ours UniPC [quad]"))
OURS = ("ours UniPC [quad]", "ours UniPC [cubic]", "ours UniPC [logsnr]", "ours iPNDM [quad]", "ours iPNDM [logsnr]",
        "ours UniPC-3 [logsnr]")
ONLY = ",".join(n.removeprefix("ours ") for n in OURS) + ",default,diffusers"
METRICS = ("net", "sw2")   # the sampler's own error (net of the eps limit, which grows as the data shrink) and SW2


def run_scale(s: float, work: Path, extra: list) -> subprocess.Popen:
    cmd = [sys.executable, str(HERE / "bench_suite.py"), "--scale", repr(s), "--nfes", ",".join(map(str, NFES)),
           "--only", ONLY, "--ours64", ",".join(OURS), "--dump", str(work / f"scale_{s:g}.pkl"),
           "--out", str(work / f"scale_{s:g}")] + extra
    log = open(work / f"scale_{s:g}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))


def run_jobs(keys: list, start, jobs: int, log_of, t0: float) -> None:
    "Run `start(key)` (a Popen) for every key, `jobs` at a time; exit naming the key's log `log_of(key)` on a failure."
    todo, running = list(keys), []
    while todo or running:
        while todo and len(running) < jobs:
            k = todo.pop(0)
            print(f"{k}: running (log {log_of(k)})", flush=True)
            running.append((k, start(k)))
        time.sleep(2)
        for k, p in list(running):
            if p.poll() is not None:
                running.remove((k, p))
                if p.returncode:
                    sys.exit(f"{k} failed (exit {p.returncode}): see {log_of(k)}")
                print(f"{k}: done [{(time.perf_counter() - t0) / 60:.1f} min]", flush=True)


class _Unpickler(pickle.Unpickler):
    "bench_suite.py pickles its dump as __main__: its classes live in bench_suite here."
    def find_class(self, module, name):
        return super().find_class("bench_suite" if module == "__main__" else module, name)


def load(path: Path):
    with open(path, "rb") as fh:
        R = _Unpickler(fh).load()
    spec = {s.name: s for s in R["samplers"]}
    return R, S.aggregate(R["recs"], R["preps"], spec)


def median(v):
    v = sorted(v)
    n = len(v)
    return math.nan if n == 0 else (v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2]))


def h2h(R, cells, a_name, b_name, T, metric):
    "(a clearly better, b clearly better, median RMS ratio a/b) over the suite at budget T."
    na = nb = 0
    ratios = []
    for d in (x.name for x in R["suite"]):
        a, b = cells.get((d, a_name, T)), cells.get((d, b_name, T))
        if a is None or b is None:
            continue
        na += S.clearly_better(a, b, metric)
        nb += S.clearly_better(b, a, metric)
        if not (a.failed or b.failed):
            ratios.append(a.rms / b.rms)
    return na, nb, median(ratios)


def grid_table(runs, w):
    w("## A. The time-quadratic (and time-cubic) against the log-SNR grid\n")
    w("Each cell: on how many of the 14 mixtures the time-quadratic grid is better by more than 2 standard errors / "
      "on how many the log-SNR grid is, first on the log-density gap to the exact flow map of the same x_T (paired, "
      "net of the ε limit: the end time's own over-concentration, which grows as the data shrink, is the same for "
      "both), then on SW2; in brackets the median over the mixtures of RMS(quadratic) / RMS(log-SNR), the distances "
      "to that map (< 1: the quadratic grid lands nearer). Bold: the log-SNR grid better on more mixtures on the gap. "
      "The third table puts the time-cubic grid, which `sample`'s default runs UniPC-2 on from "
      f"{sampling.AUTO_CUBIC_MIN_STEPS} to {sampling.AUTO_SWITCH_STEPS[0] - 1} steps, in the quadratic grid's place; the "
      "fourth compares it with the quadratic grid (bold there: the quadratic grid better on more mixtures).\n")
    for label, q, l in PAIRS:
        w(f"**{label}**: gap q / l; SW2 q / l (RMS ratio)\n")
        w("| data std | " + " | ".join(f"NFE {T}" for T in NFES) + " |")
        w("|---|" + "---|" * len(NFES))
        for s, (R, cells) in runs.items():
            row = []
            for T in NFES:
                nq, nl, r = h2h(R, cells, q, l, T, "net")
                mq, ml, _ = h2h(R, cells, q, l, T, "sw2")
                cell = f"{nq} / {nl}; {mq} / {ml} ({r:.2f})"
                row.append(f"**{cell}**" if nl > nq else cell)
            w(f"| {s:g} | " + " | ".join(row) + " |")
        w("")


def default_table(runs, w):
    w("## B. The default, told the data's scale and not\n")
    w("'rank': the noise-aware rank of `bench/SUITE.md` (on each mixture, 1 + the number of samplers that beat it on "
      "more comparisons than it wins, averaged over the two metrics, here the log-density gap net of the ε limit and "
      "SW2), median over the 14 mixtures, among the samplers of this run (ours above and `diffusers`' five). "
      "'vs best peer': the share of the mixtures on which it is at least as accurate as the best `diffusers` sampler "
      "on both metrics (within 2 standard errors). The default is `sample(..., data_std=s)`; below "
      f"`AUTO_QUAD_MIN_DATA_STD` = {sampling.AUTO_QUAD_MIN_DATA_STD:g} that is UniPC-2 on the time-cubic grid, then "
      "UniPC-3, where the call without `data_std` runs the VP rule (time-quadratic and time-cubic grids, iPNDM from "
      f"{sampling.AUTO_SWITCH_STEPS[0]} steps). At s = 1 the two calls are the same.\n")
    w("| data std | sampler | " + " | ".join(f"NFE {T}" for T in NFES) + " |")
    w("|---|---|" + "---|" * len(NFES))
    for s, (R, cells) in runs.items():
        names = [x.name for x in R["samplers"]]
        peers = [x.name for x in R["samplers"] if x.family == "peer"]
        dn = [x.name for x in R["suite"]]
        rks = {T: S.ranks(cells, dn, names, T, metrics=METRICS) for T in NFES}
        for sn in (S.DEFAULT_NAME, S.UNHINTED_NAME):
            if sn not in names:
                continue
            row = []
            for T in NFES:
                rk = rks[T]
                r = median([rk[(d, sn)][2] for d in dn if (d, sn) in rk])
                wins, n = S.wins_vs_best_peer(cells, peers, sn, dn, T, METRICS)
                row.append(f"{r:.1f}; {100 * wins / max(n, 1):.0f} %")
            label = "default, `data_std=s`" if sn == S.DEFAULT_NAME else "default, no `data_std`"
            w(f"| {s:g} | {label} | " + " | ".join(row) + " |")
    w("")


def write_report(out: Path, runs: dict, meta: dict):
    L = []
    w = L.append
    w("# The data's scale and the default's grid: the suite at data std 0.25 to 2\n")
    w(written_by("bench_scale.py", meta) + " `bench/SUITE.md` runs 14 Gaussian mixtures "
      "normalized to data std 1; here every one of them is multiplied by s (`bench_suite.py --scale s`), exact "
      f"scores, VP SDE, ε = 10⁻³, {S.SEEDS} seeds per cell, n = 2000 / 1500 / 1000 samples in 2 / 8 / 64 dimensions, "
      f"NFE {', '.join(map(str, NFES))} (steps = NFE − 1, the last evaluation being Tweedie's step). Samplers: "
      + ", ".join(OURS) + ", `sample`'s default with and without `data_std`, and `diffusers`' DDIM, DDPM, "
      "DPM-Solver++(2M), DPM-Solver++(3M) and UniPC as the peers.\n")
    w("Rerun: `OMP_NUM_THREADS=1 .venv/bin/python bench/bench_scale.py --jobs 2`.\n")
    grid_table(runs, w)
    default_table(runs, w)
    w("## Reading\n")
    for (_, q, l), grid in ((PAIRS[0], "quadratic"), (PAIRS[2], "cubic")):
        for sc, (R, cells) in runs.items():
            gap = [T for T in NFES if (lambda r: r[1] > r[0])(h2h(R, cells, q, l, T, "net"))]
            sw = [T for T in NFES if (lambda r: r[0] > r[1])(h2h(R, cells, q, l, T, "sw2"))]
            w(f"- Data std {sc:g}, UniPC-2, {grid} against log-SNR: the log-SNR grid better on the gap on more mixtures "
              f"at NFE {', '.join(map(str, gap)) or 'none of those run'}; the {grid} grid better on SW2 on more mixtures "
              f"at NFE {', '.join(map(str, sw)) or 'none of those run'}.")
    w("")
    w("The grids are fixed in t, not in units of the data, so which one serves better moves with the data's scale. "
      "On data of std 1 and 2 the time-quadratic grid wins over the log-SNR grid at low budgets; on data of std 0.25 "
      "and 0.35 the log-SNR grid lands nearer on the log-density gap at every budget, while at the lowest budgets the "
      "quadratic grid still gets the global shape (SW2) better: the gap is decided by the fine structure (the sharp "
      "components, std 0.02 s), which the quadratic grid reaches with steps too long when s is small. The time-cubic "
      "grid crowds its steps further toward ε and beats both below data std 1 (third and fourth tables). Hence "
      f"`recommended_sampler(steps, sde, data_std)`: below `AUTO_QUAD_MIN_DATA_STD` = "
      f"{sampling.AUTO_QUAD_MIN_DATA_STD:g} the VP rule runs UniPC-2 on the time-cubic grid below "
      f"{sampling.AUTO_SWITCH_STEPS[0]} steps and UniPC-3 on the log-SNR grid from there, and "
      "`sample(..., data_std=...)` passes it on; table B shows what that buys. Without `data_std` the default assumes "
      "data of about unit scale, as the suite's; chapter 12's digits have data std 0.54, and `bench/LEARNED.md` "
      "measured the VP rule on them.\n")
    w("## Machine\n")
    w(machine_line(meta, [(f"data std {sc:g}", R) for sc, (R, _) in runs.items()]))
    (out / "SUITE_SCALE.md").write_text("\n".join(L))


def add_run_args(ap, unit: str, report: str) -> None:
    "The options of a script that runs bench_suite.py several times: parallel jobs, the dumps' folder, the report's."
    ap.add_argument("--jobs", type=int, default=1, help=f"{unit}s run at once (one thread each)")
    ap.add_argument("--work", default=None, help=f"folder for the dumps and each {unit}'s SUITE.md (default: temporary)")
    ap.add_argument("--out", default=str(HERE), help=f"folder for {report} (default bench/)")
    ap.add_argument("--report-from", default=None, help="skip the runs: rewrite the report from the dumps in this folder")


def work_dir(ap, args, prefix: str) -> Path:
    "The folder of the dumps (checked arguments of `add_run_args`)."
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    work = Path(args.report_from or args.work or tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    return work


def run_meta(args, work: Path, t0: float, total_s: float) -> dict:
    "Wall minutes (with --report-from: the dumps' run times summed), torch, the git commit (marked if dirty), `work`."
    import torch
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    minutes = (time.perf_counter() - t0) / 60 if not args.report_from else total_s / 60
    return dict(minutes=minutes, torch=torch.__version__, git=(git or "?") + (" (working tree)" if dirty else ""),
                work=work, from_dumps=bool(args.report_from))


def machine_line(meta: dict, runs: list) -> str:
    "The machine and, per bench_suite run (label, its dump), its minutes and the commit and sampling.py it ran."
    each = "; ".join(f"{label}: {R.get('total_s', 0) / 60:.1f} min at {R.get('info', {}).get('commit', '?')} "
                     f"(sampling.py {R.get('sampling_sha1', '?')})" for label, R in runs)
    return (f"- {platform.machine()}, {os.cpu_count()} cores; torch {meta['torch']}; report written at git {meta['git']}; "
            f"dumps in `{meta['work']}`.\n- Runs: {each}.\n")


def run_and_load(ap, args, prefix: str, keys: list, start, name) -> tuple[dict, dict, Path]:
    """The body of a script that runs bench_suite.py several times: run `start(key, work)` (a Popen) for every key
    unless `--report-from`, then load each key's dump, work / `name(key)`.pkl. Returns ({key: (R, cells)}, `run_meta`,
    the report's folder, created)."""
    work = work_dir(ap, args, prefix)
    t0 = time.perf_counter()
    if not args.report_from:
        run_jobs(list(keys), lambda k: start(k, work), args.jobs, lambda k: work / f"{name(k)}.log", t0)
    runs = {k: load(work / f"{name(k)}.pkl") for k in keys}
    meta = run_meta(args, work, t0, sum(R.get("total_s", 0) for R, _ in runs.values()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return runs, meta, out


def written_by(script: str, meta: dict) -> str:
    how = (f"{meta['minutes']:.0f} min wall" if not meta["from_dumps"] else
           f"rewritten from the dumps of runs of {meta['minutes']:.0f} min in all")
    return f"Written by `bench/{script}` ({how})."


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default=",".join(f"{s:g}" for s in SCALES), help="comma-separated data stds")
    add_run_args(ap, "scale", "SUITE_SCALE.md")
    args = ap.parse_args(argv)
    scales = [float(v) for v in args.scales.split(",")]
    if any(not (math.isfinite(s) and s > 0) for s in scales):
        ap.error(f"--scales must be positive numbers, got {args.scales}")
    runs, meta, out = run_and_load(ap, args, "bench_scale_", scales, lambda s, work: run_scale(s, work, []),
                                   lambda s: f"scale_{s:g}")
    write_report(out, runs, meta)
    print(f"wrote {out / 'SUITE_SCALE.md'}")

if __name__ == "__main__":
    main()
