"""`sample`'s defaults on a learned score: the shipped digits design (`load_pretrained_design`, 8x8 digits, 64-D).

`bench/bench_suite.py` ranks the samplers with exact mixture scores. A trained network's score is smooth in x and t but
wrong, and a solver of higher order or an end time nearer 0 could amplify that error. This script measures, on the
shipped winner of chapter 16 (unconditional, the "no class" label):

A. each sampler's own error: the RMS (over samples and pixels) of its output minus the converged probability-flow map
   of the same prior draw x_T, at 9/14/19/24/49 steps (NFE = steps + 1). The converged map is dopri5 at
   rtol = atol = 1e-5 to eps, then Tweedie's step; a second, independent solve (UniPC-3 with 499 log-SNR steps) shows
   how converged it is.
B. the samples' Fréchet distance to the held-out digits (chapter 12's judge) at 19 steps, for the chapters' sampler
   (DPM-Solver++(2M)) and UniPC-2 and UniPC-3, on the same prior draws: paired differences with standard errors.
C. the end time eps: `sample`'s default (no predictor) at 49, 99 and 249 steps, the budgets where
   `recommended_eps` changes, to eps = 1e-3 and to its own end time (at 99 steps also 1e-4), judged by the same
   Fréchet distance, paired over the same prior draws.

D. the last evaluation and the last step's order (chapter 9, 'The last evaluation'): at 8, 10 and 12 evaluations,
   n - 1 steps and Tweedie's step against n steps without it (the default below `AUTO_DENOISE_MIN_STEPS`), and at 16
   and 18 steps the default's UniPC-2 with `lower_order_final="always"` against `True`, by the same Fréchet distance,
   paired over the prior draws of B.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_learned.py [--sets 8] [--quick] [--only-eps] [--only-last] [--report-from FILE]

--only-eps reruns part C alone and keeps parts A, B and D of the learned.json already in the output folder;
--only-last reruns part D alone and keeps A, B and C.

Writes bench/LEARNED.md and bench/learned.json (with --quick: /tmp/bench_learned/). CPU, float32, one thread.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import design_space as ds  # noqa: E402
from design_conditional import mean_se as design_mean_se  # noqa: E402
from sde_diffusion.design import load_pretrained_design  # noqa: E402
from sde_diffusion.image_quality import sample_quality  # noqa: E402
from sde_diffusion.models import model_score  # noqa: E402
from sde_diffusion.sampling import (FINAL_ORDER_MAX_STEPS, PREDICTORS, DPMSolver2M, DPMSolver3M, IPNDM, UniPC,  # noqa: E402
                                    ode_sample, recommended_denoise, recommended_eps, recommended_sampler, sample)

SAMPLERS = {   # label -> (predictor factory or "auto", spacing)
    "DPM-Solver++(2M) [logsnr]": (DPMSolver2M, "logsnr"),
    "DPM-Solver++(3M) [logsnr]": (DPMSolver3M, "logsnr"),
    "UniPC-2 [logsnr]": (lambda: UniPC(order=2), "logsnr"),
    "UniPC-3 [logsnr]": (lambda: UniPC(order=3), "logsnr"),
    "iPNDM [logsnr]": (IPNDM, "logsnr"),
    "UniPC-2 [quad]": (lambda: UniPC(order=2), "quadratic"),
    "UniPC-2, no lower-order final [quad]": (lambda: UniPC(order=2, lower_order_final=False), "quadratic"),
    "UniPC-3 [quad]": (lambda: UniPC(order=3), "quadratic"),
    "iPNDM [quad]": (IPNDM, "quadratic"),
    "UniPC-2 [cubic]": (lambda: UniPC(order=2), "cubic"),
    "iPNDM [cubic]": (IPNDM, "cubic"),
    "UniPC-2 [3/2]": (lambda: UniPC(order=2), "threehalves"),
    "UniPC-3 [3/2]": (lambda: UniPC(order=3), "threehalves"),
}
STEPS = (9, 14, 19, 24, 49)
FD_STEPS = 19
FD_SAMPLERS = ("DPM-Solver++(2M) [logsnr]", "UniPC-2 [logsnr]", "UniPC-3 [logsnr]", "UniPC-2 [quad]", "UniPC-3 [quad]",
               "iPNDM [quad]", "iPNDM [cubic]")
EPS_STEPS = {49: (1e-3, 1e-4), 99: (1e-3, 1e-4, 1e-5), 249: (1e-3, 1e-5)}   # part C: steps -> end times
DIM = 64   # numbers per 8x8 digit: what `sample` passes `recommended_sampler` for these images


def mean_se(v) -> tuple[float, float]:
    "Mean and its standard error, as bench/design_conditional.py computes them."
    r = design_mean_se([float(a) for a in v])
    return r["mean"], r["se"]


def run(score, sde, label, steps, x_T, eps=1e-3):
    pred, spacing = SAMPLERS[label]
    return sample(sde, score, x_T=x_T.clone(), predictor=pred(), spacing=spacing, steps=steps, eps=eps).samples


def default_label(steps: int) -> str | None:
    """The row of SAMPLERS that `sample(..., steps=steps)` with no predictor runs (None if it is not one of them), up
    to Tweedie's step, which the default leaves out below `AUTO_DENOISE_MIN_STEPS` steps (`recommended_denoise`).
    `lower_order_final="always"` is True, bit for bit, in runs of at most `FINAL_ORDER_MAX_STEPS` steps."""
    name, spacing, options = recommended_sampler(steps, dim=DIM)
    if options.get("lower_order_final") == "always" and steps <= FINAL_ORDER_MAX_STEPS:
        options = {k: v for k, v in options.items() if k != "lower_order_final"}   # the classes' default, True
    probe = PREDICTORS[name](**options)
    for label, (make, sp) in SAMPLERS.items():
        p = make()
        if sp == spacing and type(p) is type(probe) and vars(p) == vars(probe):
            return label
    return None


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", type=int, default=8, help="prior draws of n = 500 for parts B and C")
    ap.add_argument("--map-sets", type=int, default=2, help="prior draws of n = 250 for part A")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 sets, fewer budgets, out to /tmp/bench_learned")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only-last", action="store_true", help="rerun part D only; parts A, B and C come from the "
                    "learned.json in the output folder")
    ap.add_argument("--only-eps", action="store_true", help="rerun part C only; parts A and B come from the "
                    "learned.json in the output folder")
    ap.add_argument("--report-from", default=None, help="rewrite LEARNED.md from this learned.json (no runs); the "
                    "'(default)' marks follow the current `recommended_sampler`")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out) if a.out else (Path("/tmp/bench_learned") if a.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    if a.report_from:
        r = json.loads(Path(a.report_from).read_text())
        r["recommended"] = {str(s): list(recommended_sampler(s, dim=DIM)) for s in r["steps"]}
        r["default_row"] = {str(s): default_label(s) for s in r["steps"]}
        (out / "learned.json").write_text(json.dumps(r, indent=1) + "\n")
        write_report(out, r)
        print(f"rewrote {out / 'LEARNED.md'}")
        return
    steps_list = (9, 19) if a.quick else STEPS
    sets = 2 if a.quick else a.sets
    map_sets, n_map, n_fd = (1, 64, 200) if a.quick else (a.map_sets, 250, 500)
    eps_steps = {49: EPS_STEPS[49]} if a.quick else EPS_STEPS
    t0 = time.perf_counter()
    model = load_pretrained_design().model
    sde, score = model.sde, model_score(model)
    clf, (x_train, y_train, x_test, sigma_data), floor, _ = ds.setup()
    log = lambda *m: print(f"[{(time.perf_counter() - t0) / 60:5.1f} min]", *m, flush=True)  # noqa: E731
    if a.only_last:
        res = json.loads((out / "learned.json").read_text())
        res["last"] = last_part(res["sets"], res["n_fd"], sde, score, clf, x_test, a.quick)
        res["last"]["machine"] = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                                  "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                        text=True, cwd=HERE).stdout.strip()}
        res["last"]["seconds"] = time.perf_counter() - t0
        (out / "learned.json").write_text(json.dumps(res, indent=1) + "\n")
        write_report(out, res)
        log(f"wrote {out / 'LEARNED.md'} (part D)")
        return
    if a.only_eps:
        res = json.loads((out / "learned.json").read_text())
        sets, n_fd = res["sets"], res["n_fd"]   # part C on the prior draws of part B
    else:
        res = {"steps": list(steps_list), "samplers": list(SAMPLERS), "map": {}, "map_check": [], "fd": {},
               "floor": {"mean": floor.mean, "std": floor.std}, "n_map": n_map, "n_fd": n_fd, "sets": sets,
               "map_sets": map_sets, "recommended": {s: list(recommended_sampler(s, dim=DIM)) for s in steps_list},
               "default_row": {s: default_label(s) for s in steps_list}}
    res["eps"] = {}
    res["eps_default"] = {str(s): [list(recommended_sampler(s, dim=DIM)), recommended_eps(s)] for s in eps_steps}

    with torch.no_grad():
        # A. paired error to the converged map
        for k in range(0 if a.only_eps else map_sets):
            x_T = sde.prior_sampling((n_map, 1, 8, 8), generator=torch.Generator().manual_seed(1000 + k))
            ref = ode_sample(sde, score, x_T=x_T.clone(), method="dopri5", rtol=1e-5, atol=1e-5)
            ref2 = run(score, sde, "UniPC-3 [logsnr]", 499, x_T)
            res["map_check"].append({"dopri5_nfe": ref.nfe, "rms_dopri5_vs_unipc3_499": (ref.samples - ref2).square().mean().sqrt().item()})
            log(f"map set {k}: dopri5 {ref.nfe} NFE; RMS vs UniPC-3 at 499 steps {res['map_check'][-1]['rms_dopri5_vs_unipc3_499']:.2e}")
            for label in SAMPLERS:
                for steps in steps_list:
                    x = run(score, sde, label, steps, x_T)
                    rms = (x - ref.samples).square().mean().sqrt().item()
                    res["map"].setdefault(label, {}).setdefault(str(steps), []).append(rms)
                log(f"  {label}: " + " ".join(f"{s}:{res['map'][label][str(s)][-1]:.2e}" for s in steps_list))

        # B. Fréchet distance at FD_STEPS, and C. the default's end time, on the same prior draws
        for k in range(sets):
            x_T = sde.prior_sampling((n_fd, 1, 8, 8), generator=torch.Generator().manual_seed(2000 + k))
            for label in () if a.only_eps else FD_SAMPLERS:
                x = run(score, sde, label, FD_STEPS, x_T)
                res["fd"].setdefault(label, []).append(sample_quality(clf, x.clamp(-1, 1), x_test)["fd"])
            for steps, epss in eps_steps.items():
                for eps in epss:
                    x = sample(sde, score, x_T=x_T.clone(), steps=steps, eps=eps).samples
                    fd = sample_quality(clf, x.clamp(-1, 1), x_test)["fd"]
                    res["eps"].setdefault(str(steps), {}).setdefault(f"{eps:g}", []).append(fd)
            log(f"FD set {k}: " + " ".join(f"{lb}: {res['fd'][lb][k]:.3f}" for lb in FD_SAMPLERS if lb in res["fd"])
                + "; eps " + " ".join(f"{s}/{e}: {v[k]:.3f}" for s, d in res["eps"].items() for e, v in d.items()))
    key = "eps_seconds" if a.only_eps else "seconds"
    res[key] = time.perf_counter() - t0
    machine = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
               "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=HERE).stdout.strip()}
    res["eps_machine"] = machine   # part C ran here; with --only-eps parts A and B keep their "machine"
    if not a.only_eps:
        res["machine"] = machine
    (out / "learned.json").write_text(json.dumps(res, indent=1) + "\n")
    write_report(out, res)
    log(f"wrote {out / 'LEARNED.md'}")


LAST_NFES, LAST_ORDER_STEPS = (8, 10, 12), (16, 18)


def last_part(sets: int, n_fd: int, sde, score, clf, x_test, quick: bool) -> dict:
    """Part D on the prior draws of part B: the default's rule at n - 1 steps with Tweedie's step against n steps without
    it (both n evaluations), and UniPC-2 of the default's grid with lower_order_final "always" against True."""
    out = {"nfe": {}, "order": {}}
    with torch.no_grad():
        for k in range(2 if quick else sets):
            x_T = sde.prior_sampling((n_fd, 1, 8, 8), generator=torch.Generator().manual_seed(2000 + k))
            fd = lambda x: sample_quality(clf, x.clamp(-1, 1), x_test)["fd"]  # noqa: E731
            for n in LAST_NFES:
                for key, steps, dn in (("tweedie", n - 1, True), ("step", n, False)):
                    name, spacing, options = recommended_sampler(steps, dim=DIM)
                    x = sample(sde, score, x_T=x_T.clone(), predictor=PREDICTORS[name](**options), spacing=spacing,
                               steps=steps, eps=recommended_eps(steps), denoise=dn).samples
                    out["nfe"].setdefault(str(n), {}).setdefault(key, []).append(fd(x))
            for steps in LAST_ORDER_STEPS:
                name, spacing, options = recommended_sampler(steps, dim=DIM)
                for key, lof in (("always", "always"), ("true", True)):
                    x = sample(sde, score, x_T=x_T.clone(), spacing=spacing, steps=steps,
                               predictor=PREDICTORS[name](**dict(options, lower_order_final=lof))).samples
                    out["order"].setdefault(str(steps), {}).setdefault(key, []).append(fd(x))
    return out


def write_report(out: Path, r: dict) -> None:
    L = []
    w = L.append
    steps = r["steps"]
    w("# `sample`'s samplers on a learned score: the shipped digits design\n")
    w("Written by `bench/bench_learned.py` (see its docstring). `bench/SUITE.md` ranks the samplers on exact mixture "
      "scores; this checks the default's choices on a trained network (chapter 16's shipped winner, 8x8 digits, "
      "64-D, unconditional), where a higher-order solver or an end time nearer 0 could amplify the score's error. "
      f"CPU, float32, one thread; {r['seconds'] / 60:.1f} min; git {r['machine']['git']}, torch {r['machine']['torch']}.\n")
    w("## A. Each sampler's own error: RMS distance to the converged probability-flow map\n")
    chk = r["map_check"]
    w(f"{r['map_sets']} prior draws of {r['n_map']} images; the same x_T for every sampler. The converged map: dopri5 "
      f"at rtol = atol = 10⁻⁵ to ε = 10⁻³, then Tweedie's step ({', '.join(str(c['dopri5_nfe']) for c in chk)} NFE); "
      "an independent solve, UniPC-3 with 499 log-SNR steps, lies "
      + ", ".join(f"{c['rms_dopri5_vs_unipc3_499']:.1e}" for c in chk)
      + " from it (RMS, pixel units of [-1, 1]): errors below that are not resolved. Mean over the draws.\n")
    w("| sampler | " + " | ".join(f"{s} steps (NFE {s + 1})" for s in steps) + " |")
    w("|---|" + "---|" * len(steps))
    best = {s: min(sum(v[str(s)]) / len(v[str(s)]) for v in r["map"].values()) for s in steps}
    dflt = {int(k): v for k, v in r["default_row"].items()}
    for label, v in r["map"].items():
        cells = []
        for s in steps:
            m = sum(v[str(s)]) / len(v[str(s)])
            c = f"**{m:.2e}**" if m == best[s] else f"{m:.2e}"
            mark = " (default)" if recommended_denoise(s) else " (default, before its Tweedie step)"
            cells.append(c + (mark if dflt.get(s) == label else ""))
        w(f"| {label} | " + " | ".join(cells) + " |")
    rec = r["recommended"]
    w("\nBold: the smallest at that budget. '(default)': what `sample` runs with no predictor ('before its Tweedie "
      "step': below `AUTO_DENOISE_MIN_STEPS` steps the default takes none, and its samples are that row's before the "
      "step), "
      f"`recommended_sampler(steps, dim={DIM})` of the code that wrote this report (`sample` passes the 8x8 "
      "digits' 64 numbers per sample): "
      + "; ".join(f"{s} steps: {v[0]} [{v[1]}]{'' if not v[2] else ' ' + str(v[2])}" for s, v in rec.items()) + ". "
      "Every sampler here runs to ε = 10⁻³; the default itself stops at `recommended_eps(steps)` (" + ", ".join(
          f"{s} steps: {recommended_eps(int(s)):g}" for s in rec) + "), whose cost on this model section C measures.\n")
    w(f"## B. Fréchet distance at {FD_STEPS} steps (NFE {FD_STEPS + 1})\n")
    n = len(next(iter(r["fd"].values())))
    w(f"{n} prior draws of {r['n_fd']} images, the same draws for each sampler; Fréchet distance to the held-out digits "
      f"in the judge's features (chapter 12); real-vs-real floor {r['floor']['mean']:.3f} ± {r['floor']['std']:.3f} "
      "(400 draws). Differences are paired per draw.\n")
    w("| sampler | FD: mean ± se | minus DPM-Solver++(2M): mean ± se |")
    w("|---|---|---|")
    base = r["fd"][FD_SAMPLERS[0]]
    for label, v in r["fd"].items():
        m, se = mean_se(v)
        dm, dse = mean_se([x - y for x, y in zip(v, base)]) if label != FD_SAMPLERS[0] else (0.0, 0.0)
        w(f"| {label} | {m:.3f} ± {se:.3f} | " + ("–" if label == FD_SAMPLERS[0] else f"{dm:+.4f} ± {dse:.4f}") + " |")
    w("\n## C. The default's end time ε\n")
    em = r.get("eps_machine", r["machine"])
    w(f"`sample`'s default (no predictor) at the budgets where `recommended_eps` changes, run to ε = 10⁻³ and to its "
      "own end time, then Tweedie's step, on the same prior draws as B; the Fréchet distance to the held-out digits, "
      "paired per draw. The default there: " + "; ".join(
          f"{s} steps: {v[0][0]} [{v[0][1]}]{'' if not v[0][2] else ' ' + str(v[0][2])}, own ε {v[1]:g}"
          for s, v in r["eps_default"].items())
      + ". The exact-score check mixtures (bench/SUITE_EPS_DEFAULT.md) gain from the smaller ε; here the score is "
      f"learned. {r.get('eps_seconds', r['seconds']) / 60:.1f} min; git {em['git']}.\n")
    w("| steps (NFE) | ε | FD: mean ± se | minus ε = 10⁻³: mean ± se |")
    w("|---|---|---|---|")
    for s, d in r["eps"].items():
        e0 = d[f"{1e-3:g}"]
        own = r["eps_default"][s][1]
        for e, v in d.items():
            m, se = mean_se(v)
            dm, dse = mean_se([x - y for x, y in zip(v, e0)])
            mark = " (the default's)" if float(e) == own else ""
            w(f"| {s} ({int(s) + 1}) | {e}{mark} | {m:.3f} ± {se:.3f} | "
              + ("–" if v is e0 else f"{dm:+.4f} ± {dse:.4f}") + " |")
    if "last" in r:
        d = r["last"]
        w("\n## D. The last evaluation and the last step's order\n")
        w("`sample`'s default below `AUTO_DENOISE_MIN_STEPS` steps spends its last evaluation on a solver step instead of "
          "Tweedie's step (chapter 9, 'The last evaluation'): at n evaluations, n - 1 steps and Tweedie's step against n "
          "steps without it, the default's sampler and grid at each step count; and its UniPC-2 takes the last step at "
          "first order in runs of every length (`lower_order_final=\"always\"`) where diffusers' rule (True) stops at 15 "
          "steps. Fréchet distance to the held-out digits on the prior draws of B, paired per draw; "
          f"{d['seconds'] / 60:.1f} min; git {d['machine']['git']}.\n")
        w("| NFE | n - 1 steps + Tweedie: FD | n steps, no Tweedie: FD | difference: mean ± se |")
        w("|---|---|---|---|")
        for n, v in d["nfe"].items():
            (ma, sa), (mb, sb) = mean_se(v["tweedie"]), mean_se(v["step"])
            dm, dse = mean_se([b - a for a, b in zip(v["tweedie"], v["step"])])
            w(f"| {n} | {ma:.3f} ± {sa:.3f} | {mb:.3f} ± {sb:.3f} | {dm:+.4f} ± {dse:.4f} |")
        w("\n| steps | last step first order (\"always\"): FD | full order from 15 steps (True): FD | "
          "\"always\" minus True: mean ± se |")
        w("|---|---|---|---|")
        for n, v in d["order"].items():
            (ma, sa), (mb, sb) = mean_se(v["always"]), mean_se(v["true"])
            dm, dse = mean_se([a - b for a, b in zip(v["always"], v["true"])])
            w(f"| {n} | {ma:.3f} ± {sa:.3f} | {mb:.3f} ± {sb:.3f} | {dm:+.4f} ± {dse:.4f} |")
    (out / "LEARNED.md").write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
