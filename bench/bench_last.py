"""The default's last evaluation: Tweedie's step or one more solver step, on the suites' mixtures (chapter 9,
'The last evaluation'; `sampling.AUTO_DENOISE_MIN_STEPS`).

At a budget of n evaluations `sample`'s default can run n - 1 steps and Tweedie's step (A) or n steps without it (B,
what it does below `AUTO_DENOISE_MIN_STEPS` steps on the VP SDE). This script measures both at n = 8 to 19, each with
the sampler and grid `recommended_sampler` gives its own step count, on the mixtures of bench_suite dumps (`--dump` of
bench/bench_suite.py, the groups of bench/bench_dims.py or of bench/bench_families.py): the same seeds, sample sizes,
floors and ε limits, the exact flow maps recomputed (float64 dopri5, as bench_suite). Per budget: the geometric mean
over the mixtures of |dlogp| (the ε limit plus the paired gap to the exact map), the median SW2, the geometric mean
RMS distance to the exact map, and on how many mixtures each choice is better than the other by more than 2 standard
errors (bench_suite's rule).
A second table: the default's own log-density error (net of the ε limit) with its UniPC-2's last step at first order
in runs of every length (`lower_order_final="always"`, A) and with diffusers' rule, full order from 15 steps (True, C).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_last.py DUMP [DUMP ...] [--out bench/LAST.md]

Only ours runs (no peers), so it takes minutes per dump; the dumps stay where bench_suite/bench_dims wrote them.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_samplers as bs  # noqa: E402
import bench_scale as B  # noqa: E402
import bench_suite as S  # noqa: E402
from sde_diffusion import sampling  # noqa: E402

NFES = (8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19)
CHOICES = (("A", "n - 1 steps + Tweedie"), ("B", "n steps, no Tweedie"),
           ("C", "n - 1 steps + Tweedie, lower_order_final=True"))   # C: diffusers' rule, full order from 15 steps


def run(P, nfe: int, choice: str, seed: int):
    steps, denoise = (nfe, False) if choice == "B" else (nfe - 1, True)
    name, grid, options = sampling.recommended_sampler(steps, P.vp, None, P.dim)
    if choice == "C" and "lower_order_final" in options:
        options = dict(options, lower_order_final=True)
    return sampling.sample(P.vp, P.score_vp, (P.n, P.dim), predictor=sampling.PREDICTORS[name](**options), steps=steps,
                           eps=sampling.recommended_eps(steps, P.vp), spacing=grid, denoise=denoise,
                           generator=bs._gen(seed)).samples


def measure(path: Path, log) -> tuple[dict, list, str]:
    R, _ = B.load(path)
    seeds, sd, recs = R["seeds"], R["args"].seed, []
    for d in R["suite"]:
        t0 = time.perf_counter()
        prep, gm64 = R["preps"][d.name], d.gm
        n = prep.n
        P = bs.Problem.make(n, gm=gm64)
        maps = {}
        for s in seeds:
            x0 = bs.exact_flow_map(P, s, rtol=R["args"].map_rtol)[1]
            maps[s] = dict(x0=x0, lp0=gm64.log_prob(x0))
        ctx = dict(gm64=gm64, ref=gm64.sample(n, generator=bs._gen(sd + 1), stratified=True).float(), maps=maps)
        for nfe in NFES:
            for c, _ in CHOICES:
                for s in seeds:
                    r = S.Rec(d.name, c, nfe, s)
                    S.evaluate(r, run(P, nfe, c, s), prep, ctx, True, sd + 7)
                    recs.append(r)
        log(f"{path.name} {d.name}: {time.perf_counter() - t0:.0f} s")
    spec = {c: bs.Sampler(c, "ours", "VP", None, paired=True) for c, _ in CHOICES}
    if getattr(R["args"], "families", None):        # bench_families.py: name the dimensions the distributions have
        label = ",".join(str(D) for D in sorted({d.D for d in R["suite"]}))
    else:
        label = R["args"].dims or "the shipped suite"
    return S.aggregate(recs, R["preps"], spec), [d.name for d in R["suite"]], label


def gmean(v):
    return math.exp(sum(math.log(max(x, 1e-9)) for x in v) / len(v))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dumps", nargs="+")
    ap.add_argument("--out", default=str(HERE / "LAST.md"))
    ap.add_argument("--jobs", type=int, default=1, help="dumps measured at once (one process and thread each)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    log = lambda *m: print(f"[{(time.perf_counter() - t0) / 60:5.1f} min]", *m, flush=True)  # noqa: E731
    L = ["# The default's last evaluation: Tweedie's step or one more step\n",
         f"Written by `bench/bench_last.py` from the bench_suite dumps {', '.join(Path(p).name for p in a.dumps)} "
         f"(`sampling.AUTO_DENOISE_MIN_STEPS` = {sampling.AUTO_DENOISE_MIN_STEPS}). At n evaluations, A: n − 1 steps and "
         "Tweedie's step; B: n steps without it (the default below the threshold). Each with `recommended_sampler` of "
         "its own step count, to `recommended_eps`, exact scores, VP SDE, the dumps' seeds and sample sizes. |dlogp|: "
         "the ε limit plus the paired gap to the exact flow map of the same x_T (geometric mean over the mixtures); SW2: "
         "median; RMS: geometric mean distance to the exact map; 'A > B': mixtures where A is better by more than 2 "
         "standard errors (bench_suite's `clearly_better`).\n"]
    if a.jobs > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(a.jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            results = pool.starmap(measure, [(Path(p), print) for p in a.dumps])
    else:
        results = [measure(Path(p), log) for p in a.dumps]
    for p, (cells, names, label) in zip(a.dumps, results):
        L.append(f"## {Path(p).name} ({len(names)} mixtures; dimensions {label})\n")
        L.append("| NFE | |dlogp| A | |dlogp| B | SW2 A | SW2 B | RMS A | RMS B | |dlogp|: B > A / A > B | "
                 "SW2: B > A / A > B |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for n in NFES:
            cs = {c: [cells[(d, c, n)] for d in names] for c, _ in CHOICES}
            cb = lambda x, y, m: sum(S.clearly_better(cells[(d, x, n)], cells[(d, y, n)], m) for d in names)  # noqa: E731
            L.append(f"| {n} | {gmean([c.err for c in cs['A']]):.4f} | {gmean([c.err for c in cs['B']]):.4f} | "
                     f"{S.median([c.sw2 for c in cs['A']]):.4f} | {S.median([c.sw2 for c in cs['B']]):.4f} | "
                     f"{gmean([c.rms for c in cs['A']]):.4f} | {gmean([c.rms for c in cs['B']]):.4f} | "
                     f"{cb('B', 'A', 'err')} / {cb('A', 'B', 'err')} | {cb('B', 'A', 'sw2')} / {cb('A', 'B', 'sw2')} |")
        L.append("")
        L.append("| NFE | steps | own error A (\"always\") | own error C (True) | A > C / C > A |")
        L.append("|---|---|---|---|---|")
        for n in NFES:
            if n - 1 > sampling.FINAL_ORDER_MAX_STEPS or n in (8, 12):
                ca, cc = [cells[(d, "A", n)] for d in names], [cells[(d, "C", n)] for d in names]
                cb = lambda x, y: sum(S.clearly_better(cells[(d, x, n)], cells[(d, y, n)], "net") for d in names)  # noqa: E731
                L.append(f"| {n} | {n - 1} | {gmean([c.net for c in ca]):.4f} | {gmean([c.net for c in cc]):.4f} | "
                         f"{cb('A', 'C')} / {cb('C', 'A')} |")
        L.append("")
    L.append(f"Run time {(time.perf_counter() - t0) / 60:.1f} min, one thread.\n")
    Path(a.out).write_text("\n".join(L))
    log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
