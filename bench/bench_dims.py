#!/usr/bin/env python
"""Does the choice of `sample`'s default depend on the data's dimension? The suite's generator at 2 to 64 dimensions.

`bench/SUITE.md` has 14 mixtures in 2, 8 and 64 dimensions, only two of them in 64. This script draws new ones from the
same generator (`bench_suite.suite_mixture`) at indices the shipped suite never used (`--idx-offset`, default 30), one
per hard-feature profile (sharp, far, broad, aniso, broad+sharp, aniso+far) and dimension (2, 4, 8, 12, 16, 32, 64),
runs UniPC-2 on the time-cubic, time-quadratic and log-SNR grids, `sample`'s default (which is told D through the
samples' shape), and the peers (`diffusers`' five schedulers, torchdiffeq rk4) at NFE 8 to 19, where the default runs
UniPC-2, and writes bench/SUITE_DIM.md:

A. per dimension and budget, on how many mixtures each is at least as accurate as the best peer on both metrics
   (|dlogp| and SW2, within 2 standard errors; issue 10's target (2));
B. the time-cubic against the time-quadratic grid head to head (clearly better on the gap net of the eps limit, SW2);
C. where each grid loses to the best peer, by profile: which feature and which metric;
D. a check on 18 further mixtures (2, 8 and 64 dimensions, indices 50-55, not used to choose the rule): the default
   alone against the peers at every budget of bench_suite.py, raw and net of the eps limit;
E. from 19 steps, where the default leaves UniPC-2: iPNDM-4 on the time-quadratic grid against UniPC-3 on the log-SNR
   grid on 36 more mixtures (2, 8, 12, 16, 32 and 64 dimensions, indices 60-65) at NFE 20 to 40, the evidence for
   `AUTO_IPNDM_MAX_DIM`;
F. a second check like D on 18 mixtures at indices 70-75, drawn after every rule was set and used for none.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_dims.py [--jobs 2] [--report-from DIR]

About 45 min of CPU (10 each check, 10 section E); `--jobs 2` runs two at once. The dumps go to `--work` (default a temporary
folder), the report to bench/SUITE_DIM.md (`--out`).
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
from bench_scale import add_run_args, h2h, machine_line, run_and_load, written_by  # noqa: E402
from sde_diffusion import sampling  # noqa: E402

GROUPS = ((2, 4), (8, 12), (16, 32), (64,))          # one bench_suite run each
PROFILES = "sharp,far,broad,aniso,broad+sharp,aniso+far"
NFES = (8, 10, 12, 15, 19)
GRIDS = (("cubic", "ours UniPC [cubic]", "cubic"), ("quadratic", "ours UniPC [quad]", "quadratic"),
         ("log-SNR", "ours UniPC [logsnr]", "logsnr"))   # (label, sampler, spacing)
OURS = tuple(n for _, n, _ in GRIDS)
ONLY = ",".join(n.removeprefix("ours ") for n in OURS) + ",default,diffusers,torchdiffeq"
# a check on further mixtures, in the dimensions, at indices the rule was not chosen on: the default alone
# against the peers at every budget of bench_suite.py
CHECK_DIMS, CHECK_IDX = (2, 8, 64), 50
# section F: a second check at indices drawn after every rule of `recommended_sampler` was set and never used for one
LATE_CHECK_IDX = 70
# from 19 steps (section E): the two samplers the default chooses between, by dimension, on mixtures at further indices
MULTI_GROUPS = ((2, 12, 16, 32), (8, 64))
MULTI_IDX, MULTI_NFES = 60, (20, 25, 30, 40)
MULTI = (("iPNDM-4 [quad]", "ours iPNDM [quad]", ("ipndm", "quadratic", {})),
         ("UniPC-3 [log-SNR]", "ours UniPC-3 [logsnr]", ("unipc", "logsnr", {"order": 3})))   # (label, sampler, rule)


def tag(g) -> str:
    if g in ("check", "late_check"):
        return g
    return ("multi_" + "_".join(map(str, g[1:]))) if g[0] == "multi" else "dims_" + "_".join(map(str, g))


def run_group(g, work: Path, idx_offset: int) -> subprocess.Popen:
    "One bench_suite run: a group of dimensions (the grids at NFES), or \"check\" (the default at every budget)."
    if g in ("check", "late_check"):
        args = ["--dims", ",".join(map(str, CHECK_DIMS)),
                "--idx-offset", str(CHECK_IDX if g == "check" else LATE_CHECK_IDX),
                "--only", "default,diffusers,torchdiffeq"]
    elif g[0] == "multi":
        ours = [n for _, n, _ in MULTI] + [S.DEFAULT_NAME]
        args = ["--dims", ",".join(map(str, g[1:])), "--idx-offset", str(MULTI_IDX),
                "--nfes", ",".join(map(str, MULTI_NFES)), "--only", ",".join(ours) + ",diffusers,torchdiffeq",
                "--ours64", ",".join(ours)]
    else:
        args = ["--dims", ",".join(map(str, g)), "--idx-offset", str(idx_offset), "--nfes", ",".join(map(str, NFES)),
                "--only", ONLY, "--ours64", ",".join(OURS)]
    cmd = ([sys.executable, str(HERE / "bench_suite.py"), "--profiles", PROFILES] + args
           + ["--dump", str(work / f"{tag(g)}.pkl"), "--out", str(work / tag(g))])
    log = open(work / f"{tag(g)}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))


def merge(runs):
    "All groups' cells, distributions (name -> Dist) and peer names in one place."
    cells, dists, peers = {}, {}, set()
    for R, c in runs:
        cells.update(c)
        dists.update({d.name: d for d in R["suite"]})
        peers |= {s.name for s in R["samplers"] if s.family == "peer"}
    return cells, dists, sorted(peers)


def head(w, first: list) -> None:
    "A table's header: the `first` columns, then one per budget."
    w("| " + " | ".join(first) + " | " + " | ".join(f"NFE {T}" for T in NFES) + " |")
    w("|" + "---|" * (len(first) + len(NFES)))


def check_section(w, check, late: bool = False) -> None:
    """D (F with `late`). The default alone against the peers at every budget, on the further mixtures of a check
    run."""
    R = check[0]
    cells, dists, peers = merge([check])
    dims = sorted({d.D for d in dists.values()})
    idx = LATE_CHECK_IDX if late else CHECK_IDX
    span = f"at indices {idx} to {idx + len(PROFILES.split(',')) - 1}, in the issue's dimensions ({', '.join(map(str, dims))})"
    if not late:
        w(f"## D. A check on {len(dists)} further mixtures: the default at every budget\n")
        intro = (f"The rule above was chosen on the mixtures of tables A-C. This run draws {len(dists)} more from the same "
          f"generator {span}, and runs only `sample`'s default and the peers at every budget of `bench_suite.py`. "
          f"(These mixtures showed the NFE 25 losses in 64 dimensions that section E then studied on other mixtures.) ")
    else:
        w(f"## F. A second check on {len(dists)} mixtures drawn after every rule was set\n")
        intro = (f"The same as D on {len(dists)} more mixtures {span}, drawn after `AUTO_CUBIC_MAX_DIM`, "
                 "`AUTO_IPNDM_MAX_DIM` and `AUTO_EPS` were set and used for none of them. ")
    w(intro + "Each cell: on how many mixtures the default is at least as accurate as the best peer on "
      "both metrics, on the raw |dlogp| / on |dlogp| net of the ε limit (the sampler's own error; see bench/SUITE.md), "
      "each with SW2.\n")
    nfes = R["nfes"]
    own = {T: c.eps for (d, sn, T), c in cells.items() if sn == S.DEFAULT_NAME and c.eps == c.eps and c.eps != S.EPS}
    if own:   # the default's own end time (sampling.recommended_eps) where it is not the run's
        w("At " + ", ".join(f"NFE {T}" for T in sorted(own)) + " the default stops at its own end time ("
          + ", ".join(f"{S.eps_tex(own[T])} at NFE {T}" for T in sorted(own)) + f"; `sampling.recommended_eps`), the "
          f"peers' runs and rk4 at {S.eps_tex()}: bench/SUITE_EPS_DEFAULT.md.\n")
    w("| mixtures | " + " | ".join(f"NFE {T}" for T in nfes) + " |")
    w("|" + "---|" * (len(nfes) + 1))
    for label, ds in [(f"all {len(dists)}", list(dists))] + [(f"{D}-D", [n for n, d in dists.items() if d.D == D])
                                                           for D in dims]:
        row = []
        for T in nfes:
            raw, _ = S.wins_vs_best_peer(cells, peers, S.DEFAULT_NAME, ds, T)
            net, _ = S.wins_vs_best_peer(cells, peers, S.DEFAULT_NAME, ds, T, ("net", "sw2"))
            row.append(f"{raw} / {net}")
        w(f"| {label} | " + " | ".join(row) + " |")
    w("")
    w("Where the default is not at least as accurate as the best peer from NFE 10 on (the default vs that peer):\n")
    for T in (T for T in nfes if T >= 10):
        lost = []
        for d in dists:
            c = cells.get((d, S.DEFAULT_NAME, T))
            for m, lab in (("err", "|dlogp|"), ("sw2", "SW2")):
                b = S.best_peer(cells, peers, d, T, m)
                if c is not None and not S.at_least_as_good(c, b, m):
                    lost.append(f"{d} {lab} {S._val(c, m):.3g} vs {S._val(b, m):.3g} ({b.sampler})")
        if lost:
            w(f"- NFE {T}: " + "; ".join(lost))
    w("")


def multi_section(w, multi) -> None:
    "E. From 19 steps: iPNDM-4 (time-quadratic) against UniPC-3 (log-SNR), by dimension, on the mixtures at MULTI_IDX."
    cells, dists, peers = merge(multi)
    dims = sorted({d.D for d in dists.values()})
    w(f"## E. From {sampling.AUTO_SWITCH_STEPS[0]} steps: iPNDM-4 or UniPC-3, by dimension\n")
    w(f"From {sampling.AUTO_SWITCH_STEPS[0]} to {sampling.AUTO_SWITCH_STEPS[1] - 1} steps the default chooses between "
      "iPNDM-4 on the time-quadratic grid and UniPC-3 (bh2) on the log-SNR grid. Here both run against the peers on "
      f"{len(dists)} more mixtures from the same generator, at indices {MULTI_IDX} to "
      f"{MULTI_IDX + len(PROFILES.split(',')) - 1}, one per profile and dimension D = {', '.join(map(str, dims))}, at "
      f"NFE {', '.join(map(str, MULTI_NFES))}. Each cell: iPNDM-4 / UniPC-3, on how many mixtures each is at least as "
      "accurate as the best peer on both metrics, then the geometric mean over the mixtures of its own log-density "
      "error (|dlogp| net of the ε limit, paired with the exact flow map of the same x_T). Bold: what "
      "`recommended_sampler(steps, dim=D)` runs there.\n")
    w("| D | " + " | ".join(f"NFE {T}" for T in MULTI_NFES) + " |")
    w("|" + "---|" * (len(MULTI_NFES) + 1))
    for D in dims:
        ds = [n for n, d in dists.items() if d.D == D]
        row = []
        for T in MULTI_NFES:
            rec = sampling.recommended_sampler(T - 1, dim=D)
            parts = []
            for _, sn, rule in MULTI:
                k, n = S.wins_vs_best_peer(cells, peers, sn, ds, T)
                nets = [cells[(d, sn, T)].net for d in ds if (d, sn, T) in cells]
                g = math.exp(sum(math.log(max(x, 1e-9)) for x in nets) / len(nets)) if nets else math.nan
                txt = f"{k}/{n}, {g:.3f}"
                parts.append(f"**{txt}**" if tuple(rec) == rule else txt)
            row.append(" vs ".join(parts))
        w(f"| {D} | " + " | ".join(row) + " |")
    w("")
    w("Why the dimension: on a Gaussian component the flow map and these samplers are linear, and a relative scale error "
      "c of the sampler, the same in every coordinate, costs about D·c nats of log-density while its RMS distance to the "
      "map stays |c|·s (chapter 9, 'More steps in many dimensions', eq. `eq-scale-error`). iPNDM-4's scale error on the "
      "quadratic grid is more than ten times UniPC-3's on the log-SNR grid at 24 steps; in a few dimensions it does not matter, in 64 "
      f"it decides. Hence `AUTO_IPNDM_MAX_DIM` = {sampling.AUTO_IPNDM_MAX_DIM}: above it the default runs UniPC-3 on the "
      f"log-SNR grid from {sampling.AUTO_SWITCH_STEPS[0]} steps. The learned digits model (64 numbers per sample) pays "
      "for it in RMS distance to its own flow map (bench/LEARNED.md section A), with no resolved difference in Fréchet "
      "distance (section B).\n")


def write_report(out: Path, runs: list, meta: dict, check=None, multi=None, late=None):
    cells, dists, peers = merge(runs)
    dims = sorted({d.D for d in dists.values()})
    by_D = {D: [n for n, d in dists.items() if d.D == D] for D in dims}
    names = [n for _, n, _ in GRIDS] + [S.DEFAULT_NAME]
    L = []
    w = L.append
    w("# The data's dimension and the default's grid: new mixtures in 2 to 64 dimensions\n")
    ns = {D: sorted({r[0]["preps"][n].n for r in runs for n in by_D[D] if n in r[0]["preps"]}) for D in dims}
    w(written_by("bench_dims.py", meta) + " `bench/SUITE.md` has 14 mixtures in 2, 8 and "
      "64 dimensions; here the same generator (`bench_suite.suite_mixture`) draws new ones, at indices "
      f"{meta['idx']} to {meta['idx'] + len(PROFILES.split(',')) - 1} that the shipped suite never used, one per "
      f"profile ({PROFILES.replace(',', ', ')}) and dimension D = {', '.join(map(str, dims))}: {len(dists)} mixtures, "
      f"exact scores, VP SDE, ε = 10⁻³, {S.SEEDS} seeds per cell, n = "
      + ", ".join(f"{'/'.join(map(str, ns[D]))} ({D}-D)" for D in dims)
      + f" samples, NFE {', '.join(map(str, NFES))} (steps = NFE − 1, the last evaluation being Tweedie's step; "
      "the default below `AUTO_DENOISE_MIN_STEPS` = "
      f"{getattr(sampling, 'AUTO_DENOISE_MIN_STEPS', 1)} steps: steps = NFE, no Tweedie step, `recommended_denoise`). "
      "Samplers: UniPC-2 on the time-cubic, time-quadratic and log-SNR grids, `sample`'s default (`predictor=\"auto\"`, "
      "told D by the shape of its samples) and the peers: " + ", ".join(peers) + ".\n")
    w("Rerun: `OMP_NUM_THREADS=1 .venv/bin/python bench/bench_dims.py --jobs 2`.\n")
    nfe_of = S.default_nfe()
    dsteps = lambda T: next(n for n in range(T, 0, -1) if nfe_of(n) <= T)   # noqa: E731 -- the default's steps at NFE T
    rec = lambda n, D: sampling.recommended_sampler(n, dim=D)   # noqa: E731
    rule = "; ".join(f"D = {D}: " + ", ".join(
        f"{dsteps(T)} steps {rec(dsteps(T), D)[1]}" + (" UniPC-3" if rec(dsteps(T), D)[2].get("order") == 3 else "")
        + ("" if nfe_of(dsteps(T)) > dsteps(T) else " without Tweedie's step") for T in NFES) for D in (dims[0], dims[-1]))
    w(f"The default at these budgets (`recommended_sampler(steps, dim=D)`, `AUTO_CUBIC_MAX_DIM` = "
      f"{sampling.AUTO_CUBIC_MAX_DIM}): UniPC-2, on the time-quadratic grid below {sampling.AUTO_CUBIC_MIN_STEPS} steps, "
      f"from there on the time-cubic grid for D ≤ {sampling.AUTO_CUBIC_MAX_DIM} and on the time-quadratic one above; "
      + (f"from `AUTO_THREEHALVES_MIN_DIM` = {sampling.AUTO_THREEHALVES_MIN_DIM} numbers per sample UniPC-3 on the "
         f"time-3/2 grid up to `AUTO_THREEHALVES_MAX_STEPS` = {sampling.AUTO_THREEHALVES_MAX_STEPS} steps "
         "(bench/ORDER_HD.md) "
         if hasattr(sampling, "AUTO_THREEHALVES_MIN_DIM") else "") + f"({rule}).\n")

    w("## A. At least as accurate as the best peer on both metrics\n")
    w("Each cell: on how many of the mixtures of that dimension UniPC-2 on the time-cubic / time-quadratic / log-SNR "
      "grid / the default is at least as accurate as the best peer on that mixture (chosen per metric) on |dlogp| and "
      "on SW2, within 2 standard errors. Bold: the grid the default runs there.\n")
    head(w, ["D", "mixtures"])
    tot = {(sn, T, hi): [0, 0] for sn in names for T in NFES for hi in (False, True)}
    for D in dims:
        row = []
        for T in NFES:
            rec = sampling.recommended_sampler(T - 1, dim=D)[1]
            parts = []
            for _, sn, spacing in GRIDS + (("default", S.DEFAULT_NAME, None),):
                k, n = S.wins_vs_best_peer(cells, peers, sn, by_D[D], T)
                t = tot[(sn, T, D > sampling.AUTO_CUBIC_MAX_DIM)]
                t[0] += k
                t[1] += n
                parts.append(f"**{k}**" if spacing == rec else str(k))
            row.append(" / ".join(parts))
        w(f"| {D} | {len(by_D[D])} | " + " | ".join(row) + " |")
    for hi in (False, True):
        lab = f"D ≤ {sampling.AUTO_CUBIC_MAX_DIM}" if not hi else f"D > {sampling.AUTO_CUBIC_MAX_DIM}"
        row = [" / ".join(str(tot[(sn, T, hi)][0]) for sn in names) for T in NFES]
        n = tot[(S.DEFAULT_NAME, NFES[0], hi)][1]
        w(f"| {lab} | {n} | " + " | ".join(row) + " |")
    w("")

    w("## B. The time-cubic against the time-quadratic grid, head to head\n")
    w("Each cell: on how many mixtures the time-cubic grid is better by more than 2 standard errors / on how many the "
      "time-quadratic grid is, on the log-density gap to the exact flow map of the same x_T (paired, net of the ε "
      "limit), then on SW2.\n")
    head(w, ["D"])
    for D in dims:
        row = []
        for T in NFES:
            r = [0, 0, 0, 0]
            for R, c in runs:
                sub = dict(R, suite=[d for d in R["suite"] if d.D == D])
                a, b, _ = h2h(sub, c, GRIDS[0][1], GRIDS[1][1], T, "net")
                e, f, _ = h2h(sub, c, GRIDS[0][1], GRIDS[1][1], T, "sw2")
                r = [r[0] + a, r[1] + b, r[2] + e, r[3] + f]
            row.append(f"{r[0]} / {r[1]}; {r[2]} / {r[3]}")
        w(f"| {D} | " + " | ".join(row) + " |")
    w("")

    w(f"## C. Where each grid loses to the best peer, NFE {', '.join(str(T) for T in NFES if T > 9)}\n")
    w("Losses (mixture × budget) summed over those budgets, split by the profile's tags and by the metric lost "
      "(|dlogp| / SW2; a mixture can lose on both), for D ≤ "
      f"{sampling.AUTO_CUBIC_MAX_DIM} and above.\n")
    profs = sorted({"+".join(d.tags) for d in dists.values()}, key=PROFILES.split(",").index)
    w("| grid | D | " + " | ".join(profs) + " | all |")
    w("|---|---|" + "---|" * (len(profs) + 1))
    for label, sn, _ in GRIDS:
        for hi in (False, True):
            lab = f"≤ {sampling.AUTO_CUBIC_MAX_DIM}" if not hi else f"> {sampling.AUTO_CUBIC_MAX_DIM}"
            row, all_ = [], [0, 0]
            for p in profs:
                ds = [n for n, d in dists.items() if "+".join(d.tags) == p and (d.D > sampling.AUTO_CUBIC_MAX_DIM) == hi]
                le = ls = 0
                for T in (T for T in NFES if T > 9):
                    for d in ds:
                        c = cells.get((d, sn, T))
                        if c is None:
                            continue
                        le += not S.at_least_as_good(c, S.best_peer(cells, peers, d, T, "err"), "err")
                        ls += not S.at_least_as_good(c, S.best_peer(cells, peers, d, T, "sw2"), "sw2")
                row.append(f"{le} / {ls}")
                all_ = [all_[0] + le, all_[1] + ls]
            w(f"| {label} | {lab} | " + " | ".join(row) + f" | {all_[0]} / {all_[1]} |")
    w("")

    w("## Reading\n")
    for hi in (False, True):
        lab = f"D ≤ {sampling.AUTO_CUBIC_MAX_DIM}" if not hi else f"D > {sampling.AUTO_CUBIC_MAX_DIM}"
        parts = []
        for T in NFES[1:]:
            c, q = tot[(GRIDS[0][1], T, hi)], tot[(GRIDS[1][1], T, hi)]
            parts.append(f"NFE {T}: cubic {c[0]}, quadratic {q[0]} of {c[1]}")
        w(f"- {lab}, at least as accurate as the best peer on both metrics: " + "; ".join(parts) + ".")
    behind = [T for T in NFES[1:] if tot[(GRIDS[0][1], T, True)][0] > tot[(GRIDS[1][1], T, True)][0]]
    if behind:
        w(f"- Above {sampling.AUTO_CUBIC_MAX_DIM} dimensions the time-cubic grid would have done better than the "
          f"default's time-quadratic grid at NFE {', '.join(map(str, behind))} (counts above).")
    dflt = [tot[(S.DEFAULT_NAME, T, False)][0] + tot[(S.DEFAULT_NAME, T, True)][0] for T in NFES]
    n_all = tot[(S.DEFAULT_NAME, NFES[0], False)][1] + tot[(S.DEFAULT_NAME, NFES[0], True)][1]
    w("- The default, over all " + str(n_all) + " mixtures: " + ", ".join(
        f"{k} ({100 * k / max(n_all, 1):.0f} %) at NFE {T}" for k, T in zip(dflt, NFES)) + ".")
    w("")
    w("Up to 8 dimensions the time-cubic grid is at least as accurate as the best peer on as many mixtures as the "
      "time-quadratic one or more, and closer on the log-density gap on more mixtures at most budgets (table B). From "
      "12 dimensions on it loses to the best peer on SW2 on the mixtures with a broad component (table C): its long "
      "steps at high noise shrink the broad component, and in many dimensions the broad and the narrow components part "
      "within a narrow band of noise levels, which those steps cross (chapter 9, 'Many dimensions: the quadratic grid "
      "again', measures the shrinkage). Hence `AUTO_CUBIC_MAX_DIM`: above it the default keeps UniPC-2 on the "
      "time-quadratic grid up to "
      f"{sampling.AUTO_SWITCH_STEPS[0] - 1} steps. The learned digits model of `bench/LEARNED.md` (64 numbers per "
      "sample) agrees: UniPC-2 lands nearer its flow map on the quadratic grid at 9 and 14 steps.\n")
    if check is not None:
        check_section(w, check)
    if multi:
        multi_section(w, multi)
    if late is not None:
        check_section(w, late, late=True)
    w("## Machine\n")
    label = lambda R: f"D = {', '.join(str(d.D) for d in R['suite'][::len(PROFILES.split(','))])}"  # noqa: E731
    w(machine_line(meta, [(label(R), R) for R, _ in runs] + ([("check", check[0])] if check else [])
                   + [(f"section E, {label(R)}", R) for R, _ in (multi or [])]
                   + ([("second check", late[0])] if late else [])))
    (out / "SUITE_DIM.md").write_text("\n".join(L))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idx-offset", type=int, default=30, help="index of the first mixture per dimension")
    add_run_args(ap, "group of dimensions", "SUITE_DIM.md")
    args = ap.parse_args(argv)
    multi = [("multi",) + g for g in MULTI_GROUPS]
    loaded, meta, out = run_and_load(ap, args, "bench_dims_", ["check", "late_check"] + multi + list(GROUPS),
                                     lambda g, work: run_group(g, work, args.idx_offset), tag)
    write_report(out, [loaded[g] for g in GROUPS], dict(meta, idx=args.idx_offset), loaded["check"],
                 [loaded[g] for g in multi], loaded["late_check"])
    print(f"wrote {out / 'SUITE_DIM.md'}")

if __name__ == "__main__":
    main()
