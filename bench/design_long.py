"""Issue 12's goal, measured: can the best design of chapter 16 reach a digits Fréchet distance <= 2x the real-vs-real
floor with more training? One long run of one design at chapter 12's network size (channels (32, 64)), trained by the
package's `sde_diffusion.design.train_digits_design` and judged along the way exactly as `bench/design_space.py` judges
(500 unconditional samples, DPM-Solver++(2M), 20 log-SNR steps, one sample seed).

    OMP_NUM_THREADS=1 nice -n 5 python bench/design_long.py --save DIR           # the run of `design.WINNER` (~30 min)
    OMP_NUM_THREADS=1 python bench/design_long.py --evaluate DIR                 # re-judge the saved checkpoints
    OMP_NUM_THREADS=1 python bench/design_long.py --ship DIR/edm_6000.pt         # write the package's shipped weights

Writes bench/design_long.json (the curve; DESIGN.md reads it), with --save DIR the EMA weights at every checkpoint,
and at the end of a run of `WINNER` the shipped file `sde_diffusion/pretrained/digits-design-edm.pt` (chapter 16 loads
it; tests/test_design.py retrains its first steps). The learning rate decays over the whole run (cosine to 0 at
`steps`), so a checkpoint at step k is not the run one would make with k steps: it is the same run, read at k.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

import design_space as ds
from sde_diffusion.design import (DESIGNS, WINNER, design_model, pretrained_design_path, save_pretrained_design,
                                  train_digits_design)

HERE = Path(__file__).resolve().parent
FIRST = 100   # per-step losses shipped for the reproduction test


class _Averaged:
    "`ds.evaluate` asks an EMA for its averaged model: hand it one that is already averaged."
    def __init__(self, model):
        self.model = model

    def averaged_model(self, _):
        return self.model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--design", default=WINNER["design"], choices=list(DESIGNS))
    ap.add_argument("--steps", type=int, default=WINNER["steps"])
    ap.add_argument("--every", type=int, default=1500)
    ap.add_argument("--channels", type=int, nargs="+", default=list(WINNER["channels"]))
    ap.add_argument("--seed", type=int, default=WINNER["seed"])
    ap.add_argument("--save", default=None, help="directory for the EMA weights at each checkpoint")
    ap.add_argument("--out", default=str(HERE / "design_long.json"))
    ap.add_argument("--evaluate", default=None, metavar="DIR",
                    help="judge the checkpoints saved in DIR with --sample-seeds seeds and 20 and 50 sampler steps")
    ap.add_argument("--sample-seeds", type=int, default=5)
    ap.add_argument("--ship", default=None, metavar="FILE",
                    help="write the shipped file from the final EMA weights saved by --save (a finished run of WINNER)")
    a = ap.parse_args()
    if a.evaluate:
        return evaluate_saved(a)
    if a.ship:
        return ship(a)
    settings = dict(WINNER, design=a.design, steps=a.steps, channels=list(a.channels), seed=a.seed)
    s = dict(ds.SETTINGS, steps=a.steps, channels=list(a.channels), seed=a.seed,
             checkpoints=list(range(a.every, a.steps + 1, a.every)))
    assert all(s[k] == settings[k] for k in ("batch_size", "lr", "lr_warmup", "ema_decay", "label_dropout",
                                             "fourier_scale")), "the sweep's settings and WINNER's must agree"
    t_start = time.perf_counter()
    clf, (x_train, y_train, x_test, sigma_data), floor, rep = ds.setup()
    prediction, noise, weighting = DESIGNS[a.design]
    res = {"design": a.design, "prediction": prediction, "noise": noise, "weighting": weighting, "seed": a.seed,
           "settings": s, "winner_settings": settings, "floor": {"mean": floor.mean, "std": floor.std},
           "sigma_data": sigma_data, "n_params": sum(p.numel() for p in design_model(settings).parameters()),
           "torch": torch.__version__, "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads 1",
           "curve": []}
    print(f"floor {floor.mean:.3f} ± {floor.std:.3f}; {res['n_params']:,} parameters", flush=True)
    t0 = time.perf_counter()

    def callback(step, averaged):
        r = ds.evaluate(_Averaged(averaged), None, clf, x_test, floor, s)
        r["step"], r["train_seconds"] = step, time.perf_counter() - t0
        res["curve"].append(r)
        print(f"  step {step}: FD {r['fd']:.3f} = {r['fd'] / floor.mean:.2f} x floor, coverage {r['coverage']:.2f}, "
              f"confidence {r['mean_confidence']:.3f}, {r['train_seconds']:.0f} s", flush=True)
        if a.save:
            Path(a.save).mkdir(parents=True, exist_ok=True)
            torch.save(averaged.state_dict(), Path(a.save) / f"{a.design}_{step}.pt")
        Path(a.out).write_text(json.dumps(res, indent=1))

    model, ema, losses = train_digits_design(settings, callback=callback, checkpoints=tuple(s["checkpoints"]))
    res["seconds"] = time.perf_counter() - t_start
    res["losses_every_100"] = [sum(losses[i:i + 100]) / len(losses[i:i + 100]) for i in range(0, len(losses), 100)]
    Path(a.out).write_text(json.dumps(res, indent=1))
    if settings == WINNER:
        save_pretrained_design(ema.averaged_model(model), settings, losses[:FIRST], res["losses_every_100"],
                               pretrained_design_path(a.design), seconds=res["seconds"])


def ship(a):
    """The shipped file from a finished run's saved final weights: the first FIRST per-step losses are recomputed by
    the same function with the same seed (identical on the machine that made the run; the run's callbacks come later)."""
    res = json.loads(Path(a.out).read_text())
    settings = res.get("winner_settings") or dict(WINNER)
    assert settings == WINNER and res["curve"][-1]["step"] == WINNER["steps"], "only a finished run of WINNER ships"
    averaged = design_model(settings, res["sigma_data"])
    averaged.load_state_dict(torch.load(a.ship, weights_only=True))
    _, _, first = train_digits_design(settings, stop_at=FIRST)
    path = save_pretrained_design(averaged.eval().requires_grad_(False), settings, first, res["losses_every_100"],
                                  pretrained_design_path(settings["design"]), seconds=res["seconds"])
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def evaluate_saved(a):
    """The run's own evaluation uses one sample seed: the Fréchet distance of one set of 500 samples has a sampling
    spread comparable to the floor's. Re-judge every saved checkpoint with several sample seeds (mean and standard
    error over seeds) and with 20 and 50 DPM-Solver++(2M) steps (is the sampler converged?)."""
    res = json.loads(Path(a.out).read_text())
    s = res["settings"]
    clf, (x_train, y_train, x_test, sigma_data), floor, rep = ds.setup()
    model = design_model(dict(WINNER, design=res["design"], channels=s["channels"], seed=res["seed"]), res["sigma_data"])
    ev = {"sample_seeds": list(range(1, a.sample_seeds + 1)), "floor": {"mean": floor.mean, "std": floor.std},
          "checkpoints": []}
    for step in s["checkpoints"]:
        f = Path(a.evaluate) / f"{res['design']}_{step}.pt"
        if not f.exists():
            continue
        model.load_state_dict(torch.load(f, weights_only=True))
        model.eval()
        row = {"step": step}
        for n_steps in (20, 50):
            fds = [ds.evaluate(_Averaged(model), None, clf, x_test, floor,
                               dict(s, sampler_steps=n_steps, sample_seed=seed))["fd"] for seed in ev["sample_seeds"]]
            m = sum(fds) / len(fds)
            se = math.sqrt(sum((v - m) ** 2 for v in fds) / (len(fds) - 1) / len(fds))
            row[f"fd_{n_steps}"] = {"values": fds, "mean": m, "se": se}
            print(f"  step {step}, {n_steps} sampler steps: FD {m:.3f} ± {se:.3f} = {m / floor.mean:.2f} x floor",
                  flush=True)
        ev["checkpoints"].append(row)
    res["evaluation"] = ev
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
