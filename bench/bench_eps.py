#!/usr/bin/env python
"""The end time of `sample`'s default (`sampling.recommended_eps`): from which budget does a smaller eps pay?

Stopping at eps and taking Tweedie's step over-concentrates the samples by an amount that does not shrink with the
budget (chapter 9, eq. `eq-eps-limit`), while the sampler's own error does. This script runs `sample`'s default
sampler at a fixed end time, 1e-3, 1e-4 and 1e-5 (`bench_suite.py --eps`, which moves the default's end time as well),
on the 18 check mixtures of bench/SUITE_DIM.md (2, 8 and 64 dimensions, suite indices 50-55), with the peers at their
usual settings (ours' and rk4's end time 1e-3), at NFE 10 to 250, and writes bench/SUITE_EPS_DEFAULT.md: per budget and
end time, on how many mixtures the default is at least as accurate as the best peer on both metrics (|dlogp| and SW2,
within 2 standard errors of the two cells, unpaired: the default and the peers come from different runs) and the
median |dlogp|. `recommended_eps` takes the end time that this table ranks best from where it is clearly better.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_eps.py [--jobs 2] [--report-from DIR]

About 20 min of CPU; the dumps go to `--work` (default a temporary folder), the report to bench/ (`--out`).
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_suite as S  # noqa: E402
from bench_dims import CHECK_DIMS, CHECK_IDX, PROFILES  # noqa: E402
from bench_scale import add_run_args, machine_line, median, run_and_load, written_by  # noqa: E402
from sde_diffusion import sampling  # noqa: E402

NFES = (10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 250)
EPSS = (1e-3, 1e-4, 1e-5)
# (tag, --eps, --only, NFEs): the peers once, at their settings; the default at each end time
RUNS = (("peers", 1e-3, "ours default,diffusers,torchdiffeq", NFES),
        ("eps1e-4", 1e-4, "ours default", NFES),
        ("eps1e-5", 1e-5, "ours default", tuple(T for T in NFES if T >= 50)))


def run_one(run, work: Path) -> subprocess.Popen:
    tag, eps, only, nfes = run
    cmd = [sys.executable, str(HERE / "bench_suite.py"), "--profiles", PROFILES, "--dims", ",".join(map(str, CHECK_DIMS)),
           "--idx-offset", str(CHECK_IDX), "--only", only, "--nfes", ",".join(map(str, nfes)), "--eps", f"{eps:g}",
           "--dump", str(work / f"{tag}.pkl"), "--out", str(work / tag)]
    log = open(work / f"{tag}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))


def ok(c, b, metric) -> bool:
    "c at least as accurate as b within 2 SE of the two cells (unpaired: the runs' exact maps differ)."
    if c.failed:
        return False
    if b.failed:
        return True
    se = math.hypot(*((x.err_se, x.sw2_se)[metric == "sw2"] for x in (c, b)))
    return S._val(c, metric) <= S._val(b, metric) + 2 * se


def write_report(out: Path, runs: dict, meta: dict) -> None:
    Rp, cp = runs["peers"]
    peers = [s.name for s in Rp["samplers"] if s.family == "peer"]
    dists = [d.name for d in Rp["suite"]]
    cells_at = {1e-3: cp, **{eps: runs[tag][1] for tag, eps, _, _ in RUNS[1:]}}
    lines = []
    w = lines.append
    w("# The end time of `sample`'s default: where a smaller ε pays\n")
    w(written_by("bench_eps.py", meta) + " " + (__doc__ or "").split("\n\n")[1].replace("\n", " ") + "\n")
    w(f"`sampling.recommended_eps` of the code that wrote this report: " + ", ".join(
        f"{s} steps: {sampling.recommended_eps(s):g}" for s in (9, 48, 49, 74, 98, 99, 249)) + ".\n")
    w("Each cell: on how many of the 18 mixtures the default at that end time is at least as accurate as the best peer "
      "on both metrics; then its median |dlogp| over the mixtures (nats). Bold: the end time `recommended_eps` picks "
      "for that budget.\n")
    w("| NFE | " + " | ".join(f"ε = {S.eps_tex(e)}" for e in EPSS) + " |")
    w("|---|" + "---|" * len(EPSS))
    stats = {}   # (T, eps) -> (count, median |dlogp|)
    for T in NFES:
        row = []
        pick = sampling.recommended_eps(T - 1)
        for eps in EPSS:
            cells = cells_at[eps]
            cs = [(d, cells.get((d, S.DEFAULT_NAME, T))) for d in dists]
            cs = [(d, c) for d, c in cs if c is not None]
            if not cs:
                row.append("–")
                continue
            k = sum(all(ok(c, S.best_peer(cp, peers, d, T, m), m) for m in S.METRICS) for d, c in cs)
            stats[T, eps] = (k, median([c.err for _, c in cs]))
            txt = f"{k} of {len(cs)}; {stats[T, eps][1]:.4f}"
            row.append(f"**{txt}**" if eps == pick else txt)
        w(f"| {T} | " + " | ".join(row) + " |")
    below = [T for T in NFES if T < 50 and (T, 1e-4) in stats]
    worse = [T for T in below if stats[T, 1e-4][1] > stats[T, 1e-3][1]]
    no_more = [T for T in below if T not in worse and stats[T, 1e-4][0] <= stats[T, 1e-3][0]]
    w("\nFrom 49 steps the default's median |dlogp| falls about tenfold with ε = 10⁻⁴ and it is at least as accurate "
      "as the best peer on every mixture; below, a smaller ε makes the median worse (NFE "
      + (", ".join(map(str, worse)) or "none") + ") or leaves the count no better (NFE "
      + (", ".join(map(str, no_more)) or "none") + "). The rest of the gap is the ε limit, the over-concentration of "
      "reaching ε exactly and then taking Tweedie's step (chapter 9, eq. `eq-eps-limit`), by mixture, nats:\n")
    w("| mixture | limit at " + " | limit at ".join(S.eps_tex(e) for e in EPSS) + " |")
    w("|---|" + "---|" * len(EPSS))
    preps = {e: runs[tag][0]["preps"] for tag, e, _, _ in RUNS}
    for d in dists:
        w(f"| {d} | " + " | ".join(f"{preps[e][d].limit:+.4f}" for e in EPSS) + " |")
    w("\n## Machine\n")
    w(machine_line(meta, [(tag, runs[tag][0]) for tag, _, _, _ in RUNS]))
    (out / "SUITE_EPS_DEFAULT.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(ap, "end time", "SUITE_EPS_DEFAULT.md")
    args = ap.parse_args(argv)
    runs, meta, out = run_and_load(ap, args, "bench_eps_", RUNS, run_one, lambda r: r[0])
    write_report(out, {r[0]: v for r, v in runs.items()}, meta)
    print(f"wrote {out / 'SUITE_EPS_DEFAULT.md'}")


if __name__ == "__main__":
    main()
