"""The time-3/2 rule on a learned score: chapter 16's shipped digits model (64 numbers per sample) at 5 to 18 steps.

From `sampling.AUTO_THREEHALVES_MIN_DIM` = 64 numbers per sample, up to `AUTO_THREEHALVES_MAX_STEPS` = 10 steps,
`sample`'s default runs UniPC-3 on the time-3/2 grid where it ran UniPC-2 on the time-quadratic grid (chapter 9, 'From
64 numbers per sample'; bench/ORDER_HD.md). This script compares the two, and UniPC-2 on the time-3/2 grid, on the
shipped digits design, each with the default's other settings (`lower_order_final="always"`, the end time 1e-3,
`recommended_denoise`):

A. the RMS distance to the converged probability-flow map of the same prior draw (dopri5 at rtol = atol = 1e-5),
   2 draws of 250 images, at 5, 8, 9, 12, 14 and 18 steps;
B. the Fréchet distance to the held-out digits (chapter 12's judge), 6 draws of 500 images, at 5, 9 and 14 steps,
   paired over the draws (the difference to the time-quadratic grid, mean and standard error).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_threehalves_digits.py [--report-from JSON]

About 15 min of CPU. Writes bench/THREEHALVES_DIGITS.md and bench/threehalves_digits.json.
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

from design_conditional import mean_se  # noqa: E402

CANDS = {"old: UniPC-2 [quad]": (2, "quadratic"), "new: UniPC-3 [3/2]": (3, "threehalves"),
         "UniPC-2 [3/2]": (2, "threehalves")}
MAP_STEPS, FD_STEPS, MAP_SETS, FD_SETS = (5, 8, 9, 12, 14, 18), (5, 9, 14), 2, 6


def measure() -> dict:
    import design_space as ds
    from sde_diffusion.design import load_pretrained_design
    from sde_diffusion.image_quality import sample_quality
    from sde_diffusion.models import model_score
    from sde_diffusion.sampling import UniPC, ode_sample, recommended_denoise, sample
    model = load_pretrained_design().model
    sde, score = model.sde, model_score(model)
    clf, (_, _, x_test, _), _, _ = ds.setup()

    def run(c, steps, x_T):
        order, spacing = CANDS[c]
        return sample(sde, score, x_T=x_T.clone(), steps=steps, predictor=UniPC(order=order, lower_order_final="always"),
                      spacing=spacing, eps=1e-3, denoise=recommended_denoise(steps, sde)).samples

    out, t0 = {"A": {}, "FD": {}}, time.perf_counter()
    with torch.no_grad():
        for k in range(MAP_SETS):
            x_T = sde.prior_sampling((250, 1, 8, 8), generator=torch.Generator().manual_seed(1000 + k))
            ref = ode_sample(sde, score, x_T=x_T.clone(), method="dopri5", rtol=1e-5, atol=1e-5).samples
            for c in CANDS:
                for s in MAP_STEPS:
                    rms = (run(c, s, x_T) - ref).square().mean().sqrt().item()
                    out["A"].setdefault(c, {}).setdefault(str(s), []).append(rms)
            print(f"map set {k} done, {time.perf_counter() - t0:.0f} s", flush=True)
        for k in range(FD_SETS):
            x_T = sde.prior_sampling((500, 1, 8, 8), generator=torch.Generator().manual_seed(2000 + k))
            for c in CANDS:
                for s in FD_STEPS:
                    fd = sample_quality(clf, run(c, s, x_T).clamp(-1, 1), x_test)["fd"]
                    out["FD"].setdefault(c, {}).setdefault(str(s), []).append(fd)
            print(f"FD set {k} done, {time.perf_counter() - t0:.0f} s", flush=True)
    out["seconds"] = time.perf_counter() - t0
    out["machine"] = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                      "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                            cwd=HERE).stdout.strip()}
    return out


def report(r: dict) -> str:
    old = "old: UniPC-2 [quad]"
    lines = ["# The time-3/2 rule on the digits model\n",
             "Written by `bench/bench_threehalves_digits.py` (see its docstring). Chapter 16's shipped digits design, "
             "64 numbers per sample: `sample`'s default up to 10 steps ('new', UniPC-3 on the time-3/2 grid) against "
             "the rule before it ('old', UniPC-2 on the time-quadratic grid) and UniPC-2 on the time-3/2 grid, each "
             "with `lower_order_final=\"always\"`, ε = 10⁻³ and `recommended_denoise` (no Tweedie's step below 13 "
             "steps). CPU, float32."
             + (f" {r['seconds'] / 60:.0f} min; git {r['machine']['git']}, torch {r['machine']['torch']}."
                if "machine" in r else "") + "\n",
             "## A. RMS distance to the converged flow map of the same draws\n",
             f"{MAP_SETS} draws of 250 images, mean over the draws (pixel units of [-1, 1]).\n",
             "| sampler | " + " | ".join(f"{s} steps" for s in MAP_STEPS) + " |",
             "|---|" + "---|" * len(MAP_STEPS)]
    for c, d in r["A"].items():
        lines.append(f"| {c} | " + " | ".join(f"{sum(d[str(s)]) / len(d[str(s)]):.2e}" for s in MAP_STEPS) + " |")
    lines += ["", "## B. Fréchet distance to the held-out digits\n",
              f"{FD_SETS} draws of 500 images; each cell: the mean FD, then the mean difference to 'old' over the same "
              "draws ± its standard error.\n",
              "| sampler | " + " | ".join(f"{s} steps" for s in FD_STEPS) + " |", "|---|" + "---|" * len(FD_STEPS)]
    for c, d in r["FD"].items():
        cells = []
        for s in FD_STEPS:
            v, b = d[str(s)], r["FD"][old][str(s)]
            diff = mean_se([x - y for x, y in zip(v, b)]) if len(v) > 1 else {"mean": math.nan, "se": math.nan}
            cells.append(f"{sum(v) / len(v):.3f}" + ("" if c == old else f" ({diff['mean']:+.4f} ± {diff['se']:.4f})"))
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report-from", default=None, help="rewrite the report from this json (no runs)")
    ap.add_argument("--out", default=str(HERE))
    a = ap.parse_args(argv)
    out = Path(a.out)
    r = json.loads(Path(a.report_from).read_text()) if a.report_from else measure()
    (out / "threehalves_digits.json").write_text(json.dumps(r, indent=1) + "\n")
    (out / "THREEHALVES_DIGITS.md").write_text(report(r))
    print(f"wrote {out / 'THREEHALVES_DIGITS.md'}")


if __name__ == "__main__":
    main()
