"""Memorization against training length (issue 12): for chapter 12's DSM run, the shipped EDM run (the winner) and, if
given, the checkpoints of a longer run of the same design, measure three things on the same footing:

- the Fréchet distance of unconditional samples (4 sets of 500, DPM-Solver++(2M), 20 log-SNR steps) against the
  held-out digits, over the real-vs-real floor from 400 draws;
- `memorization_test` (A5_quality) on the 2,000 samples pooled: the share nearer to a random subset of training digits
  than to the 359 held-out ones, against real unseen digits (the control);
- the diffusion term of the continuous bound (eq. eq-design-elbo-levels of chapter 16) over noise levels 0.003 to 10,
  in bits/dim, on 359 training digits and on the 359 held-out ones: its difference is the model's generalization gap.

    OMP_NUM_THREADS=1 python bench/design_memorization.py [--long-dir DIR]

DIR holds EMA weights `edm_<steps>.pt` saved by `bench/design_long.py --save DIR` (not shipped; e.g. a 12,000-step run
with checkpoints every 3,000 steps); their settings are `WINNER`'s. Writes bench/design_memorization.json; bench/DESIGN.md's
section is rewritten from it by `python bench/design_space.py --report`.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import re
import time
from pathlib import Path

import torch

import design_space as ds
from sde_diffusion.design import WINNER, denoising_errors, design_model, load_pretrained_design
from sde_diffusion.digits_unet import digits_config, train_digits
from sde_diffusion.image_quality import memorization_test, sample_quality
from sde_diffusion.models import model_score
from sde_diffusion.sampling import sample

HERE = Path(__file__).resolve().parent
OUT = HERE / "design_memorization.json"
SETS, TAUS = (1, 2, 3, 4), torch.logspace(math.log10(0.003), 1.0, 22, dtype=torch.float64)


def mean_se(v: torch.Tensor) -> dict:
    return {"mean": v.mean().item(), "se": (v.std() / math.sqrt(len(v))).item()}


def measure(model, clf, floor, x_train, x_test) -> dict:
    n = ds.SETTINGS["n_samples"]
    xs, fds = [], []
    with torch.no_grad():
        for k in SETS:
            x = sample(model.sde, model_score(model), (n, 1, 8, 8), predictor="dpm_solver_2m",
                       steps=ds.SETTINGS["sampler_steps"], spacing="logsnr",
                       generator=torch.Generator().manual_seed(k)).samples.clamp(-1, 1)
            xs.append(x)
            fds.append(sample_quality(clf, x, x_test, floor=floor)["fd"])
    fd = torch.tensor(fds, dtype=torch.float64)
    mem = memorization_test(torch.cat(xs), x_train, x_test, seed=0)
    seen = x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(7))[:len(x_test)]]
    term = {}
    for split, x, seed in (("seen", seen, 1), ("unseen", x_test, 2)):   # the same noise draws for every model
        e = denoising_errors(model_score(model), model.sde, x, TAUS, generator=torch.Generator().manual_seed(seed))
        term[split] = torch.trapezoid(e / TAUS[:, None] ** 2, TAUS.log(), dim=0) / (64 * math.log(2))
    gap = term["unseen"].mean() - term["seen"].mean()
    gap_se = math.hypot(*(t.std().item() / math.sqrt(len(t)) for t in term.values()))
    return {"fd": {**mean_se(fd), "values": fds, "ratio": fd.mean().item() / floor.mean},
            "memorization": mem, "bits_seen": mean_se(term["seen"]), "bits_unseen": mean_se(term["unseen"]),
            "gap": {"mean": gap.item(), "se": gap_se}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--long-dir", default=None, help="folder of edm_<steps>.pt checkpoints of a longer WINNER run")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    clf, (x_train, y_train, x_test, sigma_data), floor, _ = ds.setup()
    shipped = load_pretrained_design()
    models = [("chapter 12's DSM run (shipped)", digits_config().steps, "dsm",
               lambda: train_digits(digits_config()).ema_model.eval()),
              ("EDM winner (shipped)", shipped.settings["steps"], "edm", lambda: shipped.model)]
    if a.long_dir:
        for f in sorted(Path(a.long_dir).glob("edm_*.pt"), key=lambda p: int(re.search(r"_(\d+)\.pt$", p.name).group(1))):
            steps = int(re.search(r"_(\d+)\.pt$", f.name).group(1))

            def load(f=f):
                m = design_model(dict(WINNER), shipped.model.sigma_data)
                m.load_state_dict(torch.load(f, weights_only=True))
                return m.eval().requires_grad_(False)
            models.append((f"EDM, longer run, step {steps} (not shipped)", steps, "edm", load))
    res = {"floor": {"mean": floor.mean, "std": floor.std}, "taus": [TAUS[0].item(), TAUS[-1].item(), len(TAUS)],
           "sets": len(SETS), "n_samples": ds.SETTINGS["n_samples"], "machine": f"{platform.machine()}, torch threads 1",
           "models": []}
    for name, steps, kind, load in models:
        r = {"name": name, "steps": steps, "kind": kind, **measure(load(), clf, floor, x_train, x_test)}
        res["models"].append(r)
        m = r["memorization"]
        print(f"{name}: FD {r['fd']['mean']:.3f} ± {r['fd']['se']:.3f} ({r['fd']['ratio']:.2f} x floor); nearer the "
              f"training subset {m['share']:.3f} ± {m['share_se']:.3f} vs control {m['control']:.3f} (z {m['z']:.1f}); "
              f"bits/dim seen {r['bits_seen']['mean']:.2f}, unseen {r['bits_unseen']['mean']:.2f}, gap "
              f"{r['gap']['mean']:.2f} ± {r['gap']['se']:.2f}", flush=True)
        OUT.write_text(json.dumps(res, indent=1))
    res["seconds"] = time.perf_counter() - t0
    OUT.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
