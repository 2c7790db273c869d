"""Distributions the suite's generator never draws: `sample`'s default against the peers on two other kinds.

Every rule of `sampling.recommended_sampler` was chosen on mixtures from one generator (`bench_suite.suite_mixture`:
bulk components plus a sharp, far, broad or anisotropic feature), and the check sets of bench/SUITE_DIM.md come from the
same generator. Issue 10 is also judged on held-out distributions kept outside the repository, which need not look like
them. This script runs the default and the peers (`diffusers`' five schedulers, torchdiffeq rk4) at every budget of
`bench_suite.py` on

A. seven exact mixtures of other shapes (`bench_suite.FAMILIES`):
   - 2-D: scikit-learn's two moons (48 components along two arcs), a Swiss roll (60 components on a spiral, unequal
     weights), the '25 Gaussians' lattice (std 0.018 data std: sharper than any generated component);
   - 8-D: a needle in a haystack (1 % of std 0.05 inside a standard normal bulk);
   - 16-D: a union of planes (six rank-2 components with std 0.055 off their plane);
   - 64-D: one Gaussian with a k^-2 spectrum (condition number 4096), and scikit-learn's 8x8 digits as one Gaussian per
     class (the classes' own means and covariances);
B. 18 mixtures (6 each in 2, 8 and 64 dimensions) from a second generator written from issue 10's wording
   (`bench_suite.spec_mixture`): independent component scales in [0.02, 5], condition numbers in [1, 100], means out
   to 8, no profiles;

and writes bench/SUITE_FAMILIES.md: per distribution and budget, whether the default is at least as accurate as the
best peer on |dlogp| and SW2 (within 2 standard errors, issue 10's target (2)), the default's and the best peer's
errors, and target (1) at NFE 10.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_families.py [--jobs 2] [--report-from DIR]

About 12 min of CPU (4 the families, 8 the second generator). The dumps go to `--work` (default a temporary folder),
the report to bench/SUITE_FAMILIES.md.
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
from bench_scale import add_run_args, machine_line, run_and_load, written_by  # noqa: E402

SPEC_DIMS, SPEC_PER_DIM = (2, 8, 64), 6
GROUPS = {"families": tuple(S.FAMILIES),
          "spec": tuple(f"spec{D}d-{i}" for D in SPEC_DIMS for i in range(SPEC_PER_DIM))}


def start(key, work: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(HERE / "bench_suite.py"), "--families", ",".join(GROUPS[key]),
           "--only", "default,diffusers,torchdiffeq", "--dump", str(work / f"{key}.pkl"), "--out", str(work / key)]
    log = open(work / f"{key}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))


def fmt(v: float) -> str:
    return f"{v:.2g}" if abs(v) < 0.1 else f"{v:.2f}"


INTRO = {
    "families": ("A. Seven shapes the generator never draws",
                 "Exact mixtures of other shapes (`bench_suite.FAMILIES`): scikit-learn's two moons, a Swiss roll, the "
                 "25-Gaussian lattice, a needle in an 8-D haystack, a union of planes in 16-D, a k^-2 spectrum and the "
                 "digits' class Gaussians in 64-D."),
    "spec": ("B. A second generator, written from the issue's wording",
             "`bench_suite.spec_mixture` shares nothing with `suite_mixture` (no profiles, no bulk): 2-12 components "
             "(2-6 in 64-D), Dirichlet weights floored at 1 %, each component's own scale log-uniform in [0.02, 5] "
             "and condition number in [1, 100], means at distances uniform in [0, 8], redrawn until every axis std "
             "lies in [0.02, 5] and every mean within 8 of the origin after normalization. Unlike the suite's "
             "mixtures, most of the mass often sits in components much smaller than the data's overall scale."),
}


def section(w, key, R, cells) -> None:
    dists = {d.name: d for d in R["suite"]}
    peers = sorted({s.name for s in R["samplers"] if s.family == "peer"})
    preps, nfes, me = R["preps"], R["nfes"], S.DEFAULT_NAME
    title, intro = INTRO[key]
    w(f"## {title}\n")
    w(intro + " Normalized like the suite (centred, mean coordinate variance 1). 'smallest std': the smallest axis "
      "std of any component; 'ε limit': E[dlogp] of the converged method (end time ε = 10⁻³, then Tweedie's step), "
      "which every sampler that stops there approaches as its budget grows.\n")
    w("| distribution | D | components | smallest std | largest std | largest condition | farthest mean | ε limit (nats) |")
    w("|---|---|---|---|---|---|---|---|")
    for n, d in dists.items():
        p, pr = d.props, preps[n]
        w(f"| {n} | {p['D']} | {p['K']} | {p['std_min']:.3f} | {p['std_max']:.2f} | {p['cond_max']:.0f} | "
          f"{p['dist_max']:.2f} | {pr.limit:+.4f} |")
    w("")
    w("### At least as accurate as the best peer\n")
    w("Each cell: is the default at least as accurate as the best peer (chosen per metric) on both |dlogp| and SW2 "
      "('yes'), and if not, on which metric it loses. Last row: on how many, raw / net of the ε limit (the "
      "sampler's own error, bench/SUITE.md).\n")
    w("| distribution | " + " | ".join(f"NFE {T}" for T in nfes) + " |")
    w("|" + "---|" * (len(nfes) + 1))
    for n in dists:
        row = []
        for T in nfes:
            c = cells.get((n, me, T))
            lost = [lab for m, lab in (("err", "|dlogp|"), ("sw2", "SW2"))
                    if not S.at_least_as_good(c, S.best_peer(cells, peers, n, T, m), m)]
            row.append("yes" if not lost else "**no** (" + ", ".join(lost) + ")")
        w(f"| {n} | " + " | ".join(row) + " |")
    tot = []
    for T in nfes:
        raw, k = S.wins_vs_best_peer(cells, peers, me, list(dists), T)
        net, _ = S.wins_vs_best_peer(cells, peers, me, list(dists), T, ("net", "sw2"))
        tot.append(f"{raw} / {net} of {k}")
    w("| **all** | " + " | ".join(tot) + " |")
    w("")
    w("### The errors\n")
    w("Each cell: the default's |dlogp| / the best peer's (nats; the peer chosen per distribution and budget); bold "
      "where the default is not within 2 standard errors of it.\n")
    w("| distribution | " + " | ".join(f"NFE {T}" for T in nfes) + " |")
    w("|" + "---|" * (len(nfes) + 1))
    for n in dists:
        row = []
        for T in nfes:
            c, b = cells[(n, me, T)], S.best_peer(cells, peers, n, T, "err")
            txt = f"{fmt(c.err)} / {fmt(b.err)}"
            row.append(txt if S.at_least_as_good(c, b, "err") else f"**{txt}**")
        w(f"| {n} | " + " | ".join(row) + " |")
    w("")
    w("Where the default loses (the default vs the best peer on that metric, ± 2 SE of the difference):\n")
    any_lost = False
    for T in nfes:
        lost = []
        for n in dists:
            c = cells[(n, me, T)]
            for m, lab in (("err", "|dlogp|"), ("sw2", "SW2")):
                b = S.best_peer(cells, peers, n, T, m)
                if not S.at_least_as_good(c, b, m):
                    se = S._se_pair(c, b, m)
                    lost.append(f"{n} {lab} {S._val(c, m):.3g} vs {S._val(b, m):.3g} ± {2 * se:.2g} ({b.sampler})")
        if lost:
            any_lost = True
            w(f"- NFE {T}: " + "; ".join(lost))
    if not any_lost:
        w("- nowhere.")
    w("")
    if 10 in nfes:
        w("### Target (1) at NFE 10\n")
        w("|dlogp| ≤ 0.03 nats and SW2 ≤ the floor mean + 2 std (the floor: SW2 between two exact sample sets of the "
          "same size). 'net': |dlogp − ε limit| ≤ 0.03.\n")
        w("| distribution | default dlogp ± SE | ε limit | SW2 | floor + 2 std | ok | ok net | best peer's dlogp |")
        w("|---|---|---|---|---|---|---|---|")
        ok = ok_net = 0
        for n in dists:
            c, pr = cells[(n, me, 10)], preps[n]
            fl = pr.sw2_floor[0] + 2 * pr.sw2_floor[1]
            a, b = c.err <= 0.03 and c.sw2 <= fl, c.net <= 0.03 and c.sw2 <= fl
            ok, ok_net = ok + a, ok_net + b
            bp = S.best_peer(cells, peers, n, 10, "err")
            w(f"| {n} | {c.signed:+.4f} ± {c.err_se:.4f} | {pr.limit:+.4f} | {c.sw2:.4f} | {fl:.4f} | "
              f"{'yes' if a else '**no**'} | {'yes' if b else '**no**'} | {bp.signed:+.3f} ({bp.sampler}) |")
        w(f"\nMet on {ok} of {len(dists)} ({ok_net} net of the ε limit).\n")


def report(runs, meta) -> str:
    lines = []
    w = lines.append
    R0 = next(iter(runs.values()))[0]
    w("# `sample`'s default on distributions outside the suite's generator\n")
    w(written_by("bench_families.py", meta) + " Every rule of `sampling.recommended_sampler` was chosen on mixtures of "
      "one generator (`bench_suite.suite_mixture`), and the check sets of bench/SUITE_DIM.md come from it too. Issue 10 "
      "is also judged on held-out distributions outside the repository. Here the default meets the peers on "
      "distributions of two other kinds, used to choose no rule before they were run: the same measures as "
      "bench/SUITE.md (|dlogp| paired with the exact flow map of the same x_T, SW2; mean of "
      f"{len(R0['seeds'])} seeds; 'at least as accurate' within 2 standard errors), at every budget of bench_suite.py.\n")
    w("In short (the default against the best peer on both measures; issue 10's target (2) asks for 90 % from NFE 10):\n")
    for key, (R, cells) in runs.items():
        names = [d.name for d in R["suite"]]
        peers = sorted({s.name for s in R["samplers"] if s.family == "peer"})
        k = {T: S.wins_vs_best_peer(cells, peers, S.DEFAULT_NAME, names, T)[0] for T in R["nfes"]}
        late = [k[T] for T in R["nfes"] if T >= 15]
        w(f"- {INTRO[key][0][3:]}: at NFE 10 on {k.get(10, '?')} of {len(names)}; from NFE 15 on {min(late)} to "
          f"{max(late)} of {len(names)}.")
    w("\nChapter 9, 'Beyond the suite's generator', takes the needle's losses at NFE 15 to 25 apart (the scale error "
      "of iPNDM on the needle's N(0, I) bulk). In 64 dimensions the default runs UniPC-3 on the time-3/2 grid up to "
      "10 steps (`sampling.AUTO_THREEHALVES_MIN_DIM`, `AUTO_THREEHALVES_MAX_STEPS`; bench/ORDER_HD.md, chapter 9 'From "
      "64 numbers per sample'): it removed the second generator's 64-D losses on SW2 at NFE 7 to 10 that UniPC-2 on "
      "the time-quadratic grid had (at NFE 10 14 of 18 before, at git 63ba701), and costs log-density on the k^-2 "
      "spectrum and the digits' class Gaussians at NFE 5 to 10 (at NFE 10 8.3 and 5.6 nats, 2.35 and 0.93 before; "
      "the best peer's 20.6 and 17.3).\n")
    for key, (R, cells) in runs.items():
        section(w, key, R, cells)
    w("## Machine\n")
    w(machine_line(meta, [(key, R) for key, (R, _) in runs.items()]))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(ap, "run", "SUITE_FAMILIES.md")
    args = ap.parse_args(argv)
    runs, meta, out = run_and_load(ap, args, "bench_families_", list(GROUPS), start, lambda k: k)
    path = out / "SUITE_FAMILIES.md"
    path.write_text(report(runs, meta))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
