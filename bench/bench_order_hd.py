"""Order and grid at 6 to 19 evaluations in 32, 64 and 256 dimensions: UniPC-2 and UniPC-3 on four grids, the default.

Below 19 steps `sample`'s default runs UniPC-2 (on the time-quadratic grid for samples of more than
`AUTO_CUBIC_MAX_DIM` numbers). bench/SUITE_FAMILIES.md found its losses at NFE 10 in 64 dimensions on mixtures whose
mass sits mostly in components much smaller than the data's scale. This script asks which order and grid serve
32- and 64-dimensional data best at 6 to 19 evaluations (where the default runs UniPC-2), on 48 mixtures: in 64-D 18
from the suite's generator (`bench_suite.suite_mixture`, indices 30-35, 50-55 and 70-75: bench/SUITE_DIM.md's 64-D
mixtures) and 12 from the second generator of bench/SUITE_FAMILIES.md (`bench_suite.spec_mixture`, spec64d-0 to
spec64d-11); in 32-D 12 from the suite's generator (indices 30-35 and 60-65) and 6 from the second (spec32d-0 to
spec32d-5). It runs UniPC-2 and UniPC-3 (bh2) on the time-quadratic, time-cubic, log-SNR and time-3/2 grids, DPM-Solver++(3M)
on the log-SNR grid, the default and the peers; in 256-D, beyond the data the rule was set on, 12 more mixtures (6 from
each generator: suite indices 30-35, spec256d-0 to spec256d-5; 2000 samples) with only the default with and without the
time-3/2 rule, UniPC-3 on the time-3/2 grid and the peers, and the k^-2 spectrum of `FAMILIES`' powerlaw64d in 256
dimensions (powerlaw256d). It writes bench/ORDER_HD.md: per budget and set, on how many mixtures
each is at least as accurate as the best peer on both metrics, the geometric means of its own log-density error (net
of the ε limit), of its RMS distance to the exact flow map and of SW2, and head to head against the default (clearly
better / worse, 2 SE). `sampling.AUTO_THREEHALVES_MIN_DIM` and `AUTO_THREEHALVES_MAX_STEPS` rest on it.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_order_hd.py [--jobs 2] [--report-from DIR]

About 50 min of CPU for 32 and 64 dimensions (25 with `--jobs 2`), about 110 more for the three 256-D groups. The dumps go to `--work` (default a temporary folder), the report to
bench/ORDER_HD.md.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_suite as S  # noqa: E402
from bench_last import gmean  # noqa: E402
from bench_scale import add_run_args, machine_line, run_and_load, written_by  # noqa: E402

NFES = (6, 8, 10, 12, 13, 15, 17, 19)
OURS = ("ours UniPC [quad]", "ours UniPC [cubic]", "ours UniPC [logsnr]", "ours UniPC [3/2]", "ours UniPC-3 [quad]",
        "ours UniPC-3 [logsnr]", "ours UniPC-3 [3/2]", "ours DPM-Solver++(3M) [logsnr]", S.QUAD64_NAME,
        S.DEFAULT_NAME)
RUNS = {"gen30": ["--dims", "64", "--idx-offset", "30"], "gen50": ["--dims", "64", "--idx-offset", "50"],
        "gen70": ["--dims", "64", "--idx-offset", "70"],
        "spec": ["--families", ",".join(f"spec64d-{i}" for i in range(12))],
        # 32 dimensions, between AUTO_IPNDM_MAX_DIM = 16 and 64: bench/SUITE_DIM.md's 32-D mixtures and 6 spec ones
        "gen32": ["--dims", "32", "--idx-offset", "30"], "gen32e": ["--dims", "32", "--idx-offset", "60"],
        "spec32": ["--families", ",".join(f"spec32d-{i}" for i in range(6))],
        # 256 dimensions, beyond the rule's evidence: the default with and without it, UniPC-3 on the time-3/2 grid
        "gen256": ["--dims", "256", "--idx-offset", "30", "--n", "256=2000"],
        "spec256": ["--families", ",".join(f"spec256d-{i}" for i in range(6)), "--n", "256=2000"],
        "fam256": ["--families", "powerlaw256d", "--n", "256=2000"]}
NFES_256 = NFES
OURS_256 = ("ours UniPC-3 [3/2]", S.QUAD64_NAME, S.DEFAULT_NAME)
SETS = (("64-D, the suite's generator (18)", ("gen30", "gen50", "gen70")), ("64-D, the second generator (12)", ("spec",)),
        ("32-D, the suite's generator (12)", ("gen32", "gen32e")), ("32-D, the second generator (6)", ("spec32",)),
        ("256-D, the suite's generator (6)", ("gen256",)), ("256-D, the second generator (6)", ("spec256",)),
        ("256-D, a k^-2 spectrum (1)", ("fam256",)))


def start(key, work: Path) -> subprocess.Popen:
    ours, nfes = (OURS_256, NFES_256) if key.endswith("256") else (OURS, NFES)
    only = ",".join(ours) + ",diffusers,torchdiffeq"
    cmd = ([sys.executable, str(HERE / "bench_suite.py")] + RUNS[key]
           + ["--nfes", ",".join(map(str, nfes)), "--only", only, "--ours64", ",".join(ours),
              "--quad64-default", "--dump", str(work / f"{key}.pkl"), "--out", str(work / key)])
    log = open(work / f"{key}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))


def label(name: str) -> str:
    if name == S.QUAD64_NAME:
        return "default with the time-quadratic grid at 64-D (before the time-3/2 rule)"
    return "default" if name == S.DEFAULT_NAME else name.removeprefix("ours ")


def report(runs, meta) -> str:
    lines = []
    w = lines.append
    w("# Order and grid at 6 to 19 evaluations in 32, 64 and 256 dimensions\n")
    w(written_by("bench_order_hd.py", meta) + " UniPC-2 and UniPC-3 (bh2) on four grids (time-quadratic, time-cubic, "
      "log-SNR and time-3/2), DPM-Solver++(3M) on the log-SNR "
      "grid and `sample`'s default against the peers on 32- and 64-D mixtures (in 256-D the default with and without the time-3/2 rule and UniPC-3 on the time-3/2 grid), the measures of bench/SUITE.md (3 seeds). "
      "'UniPC' is UniPC-2; both UniPC orders here take Tweedie's step (NFE = steps + 1) and lower the last step's "
      "order only in runs of fewer than 15 steps (diffusers' rule), the default as `sample` runs it (no Tweedie's "
      "step below 13 steps, the last step at first order; so at a budget of 13 it runs 12 steps, NFE 12, since 13 steps "
      "would take Tweedie's step, NFE 14). `recommended_sampler` reads it for `AUTO_THREEHALVES_MIN_DIM` = "
      f"{S.sampling.AUTO_THREEHALVES_MIN_DIM} and `AUTO_THREEHALVES_MAX_STEPS` = "
      f"{S.sampling.AUTO_THREEHALVES_MAX_STEPS}: from 64 numbers per sample the default runs UniPC-3 on the time-3/2 "
      "grid up to 10 steps, where it is at least as accurate as the best peer on more of the 64-D mixtures than "
      "UniPC-2 on the time-quadratic grid (the rows 'default with the time-quadratic grid at 64-D') and lands nearer "
      "the exact map, while its own log-density error is the larger on more than half of them at 6 to 10 "
      "evaluations (the "
      "last column of those rows: the old default clearly better / clearly worse); in 32 dimensions, up to 10 "
      "evaluations, the time-quadratic grid keeps the smaller own error and is at least as accurate as the best peer "
      "as often or more, and beyond 10 steps the time-3/2 "
      "grid's coarser end costs log-density on fine components (chapter 9, 'From 64 numbers per sample'). The 256-D "
      "sets, run after the rule was set (6 mixtures from each generator and the k^-2 spectrum of powerlaw64d in 256 "
      "dimensions; the default with and without the rule and UniPC-3 on the time-3/2 grid as this bench runs it), check "
      "it beyond 64 numbers per sample: at 6 to 10 evaluations the rule is at least as accurate as the best peer on "
      "more of the 12 mixtures, with smaller geometric means of RMS and SW2; its own log-density error is the smaller "
      "on the second generator, but the larger on the suite's generator at 8 and 10 evaluations (there the "
      "time-quadratic grid is clearly better on 3 and 2 of the 6 and clearly worse on 3 and 0) and on the spectrum "
      "(up to twice, at 10 evaluations; the peers' larger still). From 12 evaluations the default (12 steps at a "
      "budget of 13) loses on up to 2 of each 6, mostly SW2 to diffusers' schedulers (on the suite's generator the "
      "two mixtures with a broad component), where UniPC-3 on the time-3/2 grid is at least as accurate as the best "
      "peer on 5 or 6 of each 6 at 13 and 15 evaluations, at 2.4 and 2.9 times the default's own log-density error "
      "on the spectrum (2.2 and 1.3 times on the second generator's geometric mean): the trade that bought nothing "
      "against the peers in 64 dimensions buys SW2 in 256. The rule stops at 10 steps there too; whether it should "
      "not in many dimensions is open.\n")
    w("Each row: on how many mixtures the sampler is at least as accurate as the best peer on |dlogp| and SW2; the "
      "geometric means over the mixtures of its own log-density error (|dlogp| net of the ε limit, nats), of its RMS "
      "distance to the exact flow map of the same x_T, and of SW2; on how many it is clearly better / clearly worse "
      "than the default on the own error (2 standard errors).\n")
    for title, keys in SETS:
        cells, dists, peers = {}, [], set()
        for k in keys:
            R, c = runs[k]
            cells.update(c)
            dists += [d.name for d in R["suite"]]
            peers |= {s.name for s in R["samplers"] if s.family == "peer"}
        peers = sorted(peers)
        w(f"## {title[0].upper() + title[1:]}\n")
        w("| NFE | sampler | vs best peer | own error | RMS | SW2 | vs default |")
        w("|---|---|---|---|---|---|---|")
        for T in NFES:
            for o in OURS:
                dd = [d for d in dists if (d, o, T) in cells]
                if not dd:
                    continue
                k, n = S.wins_vs_best_peer(cells, peers, o, dd, T)
                cs = [cells[(d, o, T)] for d in dd]
                better = sum(S.clearly_better(cells[(d, o, T)], cells[(d, S.DEFAULT_NAME, T)], "net") for d in dd)
                worse = sum(S.clearly_better(cells[(d, S.DEFAULT_NAME, T)], cells[(d, o, T)], "net") for d in dd)
                vs = "" if o == S.DEFAULT_NAME else f"{better} / {worse}"
                w(f"| {T} | {label(o)} | {k} of {n} | {gmean([c.net for c in cs]):.3f} | "
                  f"{gmean([c.rms for c in cs]):.3f} | {gmean([c.sw2 for c in cs]):.4f} | {vs} |")
        w("")
    w("## Machine\n")
    w(machine_line(meta, [(k, R) for k, (R, _) in runs.items()]))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(ap, "run", "ORDER_HD.md")
    args = ap.parse_args(argv)
    runs, meta, out = run_and_load(ap, args, "bench_order_hd_", list(RUNS), start, lambda k: k)
    path = out / "ORDER_HD.md"
    path.write_text(report(runs, meta))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
