"""Per-step overhead of the package's own loops outside `sample` (issue 10, item 5: one NaN/inf watch for every loop,
overhead <= 1.2x a plain loop), measured and written to bench/LOOPS.md.

Each loop runs with a null score (or null drift) so that only the loop's own work is timed, against a hand-written
plain loop of the same arithmetic (the same random draws, no checks, no watch), interleaved in one process so that both
see the same load. Timing is CPU time (`time.process_time`: preemption by other jobs on a shared machine does not
count), the fastest of R repeats, 1000 steps at n = 10^4 x 2, float32, one thread. The whole measurement runs in P
fresh processes; the report gives the median and the range over them.

    OMP_NUM_THREADS=1 python bench/bench_loops.py             # P = 3 processes, R = 9 repeats, writes LOOPS.md
    OMP_NUM_THREADS=1 python bench/bench_loops.py --quick     # P = 1, R = 2, prints only
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
B, D, STEPS = 10_000, 2, 1000
TARGET = 1.2


def measure(repeats: int) -> dict:
    "One process's measurement: {loop: {ours_us, plain_us, overhead_us, ratio}} and the watch's own cost."
    import torch
    torch.set_num_threads(1)
    from sde_diffusion.core import NonFiniteWatch
    from sde_diffusion.ddpm import ddpm_sample, ddpm_schedule
    from sde_diffusion.sampling import sample
    from sde_diffusion.sde import VPSDE
    from sde_diffusion.smld import annealed_langevin, smld_reverse_diffusion
    from sde_diffusion.solvers import euler_maruyama, milstein

    zero = torch.zeros(B, D)
    null = lambda x, t: zero
    x_T = torch.randn(B, D, generator=torch.Generator().manual_seed(0))
    loops = {}

    # DDPM ancestral sampling, noise prediction, fixed_small variance, N = 1000 steps
    sde = VPSDE(N=STEPS)
    s = ddpm_schedule(sde, torch.float32)
    c_in = (s.betas / s.sqrt_one_minus_alphas_cumprod).tolist()
    c_out = (1 / (1 - s.betas).sqrt()).tolist()
    c_std = s.posterior_variance.sqrt().tolist()

    def ddpm_plain():
        g, x = torch.Generator().manual_seed(1), x_T
        for i in range(STEPS - 1, -1, -1):
            x = (x - c_in[i] * null(x, None)) * c_out[i]
            if i > 0:
                x = x + c_std[i] * torch.randn(x.shape, generator=g)
        return x
    loops["`ddpm_sample` (noise prediction, fixed_small, N = 1000)"] = (
        lambda: ddpm_sample(null, (B, D), sde, prediction="eps", x_T=x_T, generator=torch.Generator().manual_seed(1)),
        ddpm_plain)

    # annealed Langevin dynamics, 10 levels x 100 steps
    sig = torch.logspace(0, -2, 10)
    alphas = 2e-5 * (sig / sig[-1]) ** 2
    a_half, a_sqrt = (0.5 * alphas).tolist(), alphas.sqrt().tolist()

    def ald_plain():
        g, x = torch.Generator().manual_seed(1), x_T
        for i in range(10):
            for _ in range(100):
                x = x + a_half[i] * null(x, None) + a_sqrt[i] * torch.randn(x.shape, generator=g)
        return x
    loops["`annealed_langevin` (10 levels x 100 steps)"] = (
        lambda: annealed_langevin(null, sig, x_T, n_steps_each=100, step_lr=2e-5,
                                  generator=torch.Generator().manual_seed(1), final_denoise=False),
        ald_plain)

    # SMLD reverse diffusion, 1000 noise levels
    sig_rd = torch.logspace(1, -2, STEPS)
    inc = sig_rd.square() - torch.cat([sig_rd[1:], sig_rd.new_zeros(1)]).square()
    inc_l, inc_sqrt = inc.tolist(), inc.sqrt().tolist()

    def rd_plain():
        g, x = torch.Generator().manual_seed(1), x_T
        for k in range(STEPS):
            x = x + inc_l[k] * null(x, None)
            x = x + inc_sqrt[k] * torch.randn(x.shape, generator=g)
        return x
    loops["`smld_reverse_diffusion` (1000 levels)"] = (
        lambda: smld_reverse_diffusion(null, sig_rd, x_T, generator=torch.Generator().manual_seed(1), final_denoise=False),
        rd_plain)

    # Euler-Maruyama and Milstein on a given grid and given increments
    ts = torch.linspace(0.0, 1.0, STEPS + 1)
    dts = ts.diff()
    dW = torch.randn(STEPS, B, D, generator=torch.Generator().manual_seed(2)) * (1 / STEPS) ** 0.5
    one = lambda x, t: 1.0

    def em_plain():
        x = x_T
        for n in range(STEPS):
            t = ts[n].expand(B)
            x = x + null(x, t) * dts[n] + one(x, t) * dW[n]
        return x
    loops["`euler_maruyama` (`dW` given)"] = (lambda: euler_maruyama(null, one, x_T, ts, dW=dW), em_plain)

    def mil_plain():
        x = x_T
        for n in range(STEPS):
            t, dt, dWn = ts[n].expand(B), dts[n], dW[n]
            g, dg = one(x, t), null(x, t)
            x = x + null(x, t) * dt + g * dWn + 0.5 * g * dg * (dWn.square() - dt)
        return x
    loops["`milstein` (`dW`, `diffusion_dx` given)"] = (
        lambda: milstein(null, one, x_T, ts, dW=dW, diffusion_dx=null), mil_plain)

    # sample's own Euler-Maruyama loop (its watch is the same mechanism), against the same plain loop as before
    def sample_plain():
        g, x = torch.Generator().manual_seed(1), x_T
        for _ in range(STEPS):
            x = x * 1.001 + 0.5 * null(x, None) * 0.001 + 0.03 * torch.randn(x.shape, generator=g)
        return x
    vp = VPSDE()
    loops["`sample(..., predictor='euler_maruyama')`"] = (
        lambda: sample(vp, null, x_T=x_T, predictor="euler_maruyama", steps=STEPS,
                       generator=torch.Generator().manual_seed(1), denoise=False),
        sample_plain)

    def fastest(fns):
        best = {k: float("inf") for k in fns}
        for _ in range(repeats):
            for k, f in fns.items():   # interleaved: both see the same load
                t0 = time.process_time()
                f()
                best[k] = min(best[k], time.process_time() - t0)
        return best

    out = {}
    for name, (ours, plain) in loops.items():
        ours(), plain()   # warm-up
        t = fastest({"ours": ours, "plain": plain})
        o, p = 1e6 * t["ours"] / STEPS, 1e6 * t["plain"] / STEPS
        out[name] = {"ours_us": o, "plain_us": p, "overhead_us": o - p, "ratio": o / p}

    x = torch.randn(B, D)

    def watch():
        w = NonFiniteWatch()
        for _ in range(STEPS):
            w(x)
        w.first()

    def nothing():
        for _ in range(STEPS):
            pass
    t = fastest({"watch": watch, "nothing": nothing})
    out["_watch_us"] = 1e6 * (t["watch"] - t["nothing"]) / STEPS
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="1 process, 2 repeats, no report written")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.repeats)))
        return
    if a.quick:
        a.processes, a.repeats = 1, 2
    t0, load0 = time.time(), os.getloadavg()
    runs = []
    for k in range(a.processes):
        r = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(a.repeats)], check=True,
                           capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"process {k + 1} of {a.processes}: " + "; ".join(
            f"{n.split('`')[1]} {v['ratio']:.2f}x" for n, v in runs[-1].items() if not n.startswith("_")), flush=True)
    load1 = os.getloadavg()
    names = [n for n in runs[0] if not n.startswith("_")]
    med = lambda xs: statistics.median(xs)
    rows = ["| loop (null score) | plain loop µs/step | ours µs/step | overhead µs/step | × plain: median (range) | ≤ 1.2×? |",
            "|---|---|---|---|---|---|"]
    summary = {}
    for n in names:
        v = {k: [r[n][k] for r in runs] for k in ("ours_us", "plain_us", "overhead_us", "ratio")}
        m = med(v["ratio"])
        summary[n] = {k: med(x) for k, x in v.items()} | {"ratio_min": min(v["ratio"]), "ratio_max": max(v["ratio"])}
        rows.append(f"| {n} | {med(v['plain_us']):.1f} | {med(v['ours_us']):.1f} | {med(v['overhead_us']):.1f} | "
                    f"**{m:.2f}×** ({min(v['ratio']):.2f}–{max(v['ratio']):.2f}) | {'yes' if m <= TARGET else '**no**'} |")
    watch_us = med([r["_watch_us"] for r in runs])
    met = sum(summary[n]["ratio"] <= TARGET for n in names)
    print("\n".join(rows))
    if a.quick:
        return
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "../sde_diffusion"], capture_output=True, text=True,
                               cwd=HERE).stdout.strip()
    except OSError:
        head, dirty = "?", ""
    import torch
    lines = ["# The package's loops outside `sample`: per-step overhead (issue 10, item 5)", "",
             "Written by `bench/bench_loops.py` (rerun: `OMP_NUM_THREADS=1 .venv/bin/python bench/bench_loops.py`). "
             "Each loop runs with a null score (or drift), so only its own work is timed, against a hand-written plain "
             "loop of the same arithmetic and the same random draws (no checks, no NaN watch), interleaved in one "
             f"process. CPU time (`time.process_time`), fastest of {a.repeats} repeats, {STEPS} steps at n = 10⁴ × 2, "
             f"float32, one thread; median and range over {a.processes} fresh processes. Target: ≤ {TARGET}× the plain loop.",
             "", *rows, "",
             f"Met by {met} of {len(names)} loops. Every loop watches for NaN/inf with `core.NonFiniteWatch` (a 0-d "
             f"sum of the state per step on its device, one host synchronisation after the loop): {watch_us:.1f} µs "
             f"per step at this size, i.e. {watch_us / med([summary[n]['plain_us'] for n in names]):.2f}× of the median "
             "plain step; a loop cannot be cheaper than the plain loop plus its watch.", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}; "
             f"torch {torch.__version__}; load average before {load0[0]:.2f}, after {load1[0]:.2f} (CPU time does not "
             f"count preemption, but a loaded machine still shares caches); git {head}"
             + (" with uncommitted changes to the package" if dirty else "") + f"; {time.time() - t0:.0f} s.", ""]
    (HERE / "LOOPS.md").write_text("\n".join(lines))
    (HERE / "loops.json").write_text(json.dumps({"runs": runs, "summary": summary, "watch_us": watch_us,
                                                 "repeats": a.repeats, "head": head}, indent=1))


if __name__ == "__main__":
    main()
