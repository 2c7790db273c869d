"""Flow matching against denoising score matching on the digits at equal compute (chapter 15, nbs/15_flow_matching.ipynb,
"Measured on the digits"; issue 12, Part V).

    OMP_NUM_THREADS=1 nice -n 5 python bench/fm_digits.py     # resumes: finished (arm, seed) runs in the JSON are kept

Writes bench/fm_digits.json; the chapter reads it and does not train. Everything but the loss is that of
`bench/design_space.py` (chapter 16), whose `setup` and `evaluate` this script imports:

- the network: the same class-conditional U-Net (`sde_diffusion.models.UNet`, channels (16, 32), Fourier scale 4), behind
  `sde_diffusion.design.PredictionModel`'s input and noise scalings ($c_{in}$ and $c_{noise} = \\tfrac14\\log\\tau$,
  $\\tau = \\sigma/\\alpha$), the same initial weights for each seed in both arms;
- training: 800 AdamW steps at batch 128, lr 2e-3 (100 warm-up steps, cosine decay to 0), gradient norm clipped to 1,
  EMA 0.999, label dropout 0.1, data `load_digits("train")`; the same draws of each seed in both arms (the batch indices,
  the dropped labels, then u ~ U[0, 1] with t = eps + (T - eps) u on each arm's path, then z);
- the arms: (a) DSM, the VP SDE, the network predicts the noise: `train_design` with the "eps" design, i.e. chapter 16's
  eps run; (b) flow matching, the linear interpolant (`LinearInterpolantSDE`), the network predicts the velocity
  z - x0: `flow_matching_loss` in `train_velocity`, a copy of `train_design`'s loop with only the loss changed (checked
  below to reproduce `train_design` bit for bit when given its loss);
- sampling, identical for both arms: the EMA weights, 500 samples with the 'no class' label, DPM-Solver++(2M) with 20
  log-SNR steps on the VP SDE plus the final denoising step (21 network evaluations), the same prior draws (sample
  seed 1), the samples clamped to [-1, 1]. The FM model's velocity becomes a score of the linear interpolant with
  `as_score_fn` (chapter 15's conversions), and a score of the VP SDE by the change of frame at equal noise level
  $\\tau$: both paths are $y = x/\\alpha = x_0 + \\tau z$, so $s_{VP}(x, t) = r\\,s_{lin}(r x, t')$ with
  $t' = \\tau/(1 + \\tau)$, $r = \\alpha_{lin}(t')/\\alpha_{VP}(t)$ (checked below on an exact mixture score). The
  solver's convergence is checked by sampling every final model again with twice the steps (40 + 1 evaluations);
- the metric: chapter 12's Fréchet distance of the samples to the 359 held-out digits in the digits classifier's
  features, next to the real-vs-real floor at n = 500 (`frechet_floor`, 10 repeats), as in chapter 16.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import design_space as ds                                      # noqa: E402  (bench/design_space.py)
from sde_diffusion.design import PredictionModel, prediction_loss, train_design      # noqa: E402
from sde_diffusion.flow import LinearInterpolantSDE, as_score_fn, flow_matching_loss  # noqa: E402
from sde_diffusion.models import UNet                                                 # noqa: E402
from sde_diffusion.sde import VPSDE                                                   # noqa: E402
from sde_diffusion.solvers import batch_broadcast                                     # noqa: E402
from sde_diffusion.training import EMA                                                # noqa: E402

HERE = Path(__file__).resolve().parent
JSON = HERE / "fm_digits.json"
ARMS = ("DSM", "FM")
SETTINGS = dict({k: ds.SETTINGS[k] for k in ("steps", "checkpoints", "batch_size", "lr", "lr_warmup", "ema_decay",
                                              "label_dropout", "channels", "fourier_scale", "n_samples", "sampler_steps",
                                              "sample_seed")},
                seeds=[0, 1, 2], train_eps=1e-5, grad_clip=1.0, check_sampler_steps=2 * ds.SETTINGS["sampler_steps"],
                sampler="dpm_solver_2m, logsnr spacing, eps 1e-3, final denoising step, on the VP SDE (both arms)",
                arms={"DSM": "VP SDE, eps prediction, 0.5 |eps_hat - z|^2 (train_design, design 'eps')",
                      "FM": "linear interpolant, velocity prediction, 0.5 |v_hat - (z - x0)|^2 (flow_matching_loss)"})


def vp_frame(score_lin, vp: VPSDE):
    "A score of the VP SDE from a score `score_lin(x, t)` of the linear interpolant, at the same noise level tau."
    def score_vp(x, t):
        alpha, sigma = vp.marginal_coeffs(t)
        tau = sigma / alpha                                      # y = x / alpha = x0 + tau z on both paths
        t_lin, alpha_lin = tau / (1 + tau), 1 / (1 + tau)        # the linear path's time and alpha at that tau
        r = batch_broadcast((alpha_lin / alpha).to(x.dtype), x)  # x_lin = alpha_lin y = r x_vp; p_vp(x) = r^d p_lin(r x)
        return r * score_lin(r * x, t_lin.to(t.dtype))
    return score_vp


class VelocityModel(nn.Module):
    "The FM arm: the U-Net behind PredictionModel's scalings on the linear interpolant, its raw output the velocity; called as a VP score."

    def __init__(self, net: nn.Module, sigma_data: float):
        super().__init__()
        # PredictionModel supplies c_in and c_noise, the same as the DSM arm's at equal tau; only `output` (the raw
        # network output F) is used, so its `prediction` label plays no part
        self.flow = PredictionModel(net, LinearInterpolantSDE(), "eps", sigma_data)
        self.sde, self.num_classes = VPSDE(), net.num_classes    # `sample` runs on the VP SDE, as for the DSM arm

    def velocity(self, x, t, y=None):
        return self.flow.output(x, t, y)

    def forward(self, x, t, y=None):
        score_lin = as_score_fn(self.flow.sde, lambda x_, t_: self.velocity(x_, t_, y), "velocity")
        return vp_frame(score_lin, self.sde)(x, t)


def train_velocity(model, loss_fn, x, y, *, s, seed, callback=None, stop_at=None):
    "`train_design`'s loop (the same draws, schedule, clipping, EMA) with the loss `loss_fn(model, xb, yb, generator)`."
    g = torch.Generator(x.device).manual_seed(int(seed))
    steps, lr, warm = s["steps"], s["lr"], s["lr_warmup"]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    ema, losses = EMA(model, s["ema_decay"]), []
    for step in range(steps if stop_at is None else min(steps, int(stop_at))):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(1, warm)) * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(x.shape[0], (s["batch_size"],), generator=g, device=x.device)
        drop = torch.rand(s["batch_size"], generator=g, device=x.device) < s["label_dropout"]
        yb = torch.where(drop, model.num_classes, y[idx])
        loss = loss_fn(model, x[idx], yb, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s["grad_clip"])
        opt.step()
        ema.update(model)
        losses.append(loss.item())
        if callback is not None and step + 1 in s["checkpoints"]:
            callback(step + 1, ema)
    return ema, losses


def fm_loss(model: VelocityModel, xb, yb, g, s=SETTINGS):
    "Conditional flow matching on the linear interpolant; draws t (u first), then z, from `g`, as `prediction_loss` does."
    return flow_matching_loss(model.flow.sde, lambda x, t: model.velocity(x, t, yb), xb, eps=s["train_eps"], generator=g)


def dsm_loss_fn(model: PredictionModel, xb, yb, g, s=SETTINGS):
    return prediction_loss(model, xb, y=yb, eps=s["train_eps"], generator=g)


def net(seed: int, s=SETTINGS) -> UNet:
    return UNet(channels=tuple(s["channels"]), num_classes=10, fourier_scale=s["fourier_scale"], seed=seed)


def checks(data) -> dict:
    "The loop copy against train_design, and the change of frame against an exact score."
    x_train, y_train, _, sigma_data = data
    s = SETTINGS
    k = 4
    a = PredictionModel(net(0), VPSDE(), "eps", sigma_data)
    b = PredictionModel(net(0), VPSDE(), "eps", sigma_data)
    _, la = train_design(a, x_train, y_train, steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"],
                         lr_warmup=s["lr_warmup"], ema_decay=s["ema_decay"], label_dropout=s["label_dropout"],
                         seed=3, stop_at=k)
    _, lb = train_velocity(b, dsm_loss_fn, x_train, y_train, s=s, seed=3, stop_at=k)
    same = la == lb and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert same, "train_velocity does not reproduce train_design"
    # the frame change, on the exact score of a Gaussian mixture in float64: relative error within 1000 unit roundoffs
    # divided by the smallest alpha of the linear path on the grid (the rule of chapter 15's `rounding_tol`)
    from sde_diffusion.toy import random_mixture
    mix = random_mixture(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    vp, lin = VPSDE(), LinearInterpolantSDE()
    worst, tol = 0.0, 0.0
    for t_val in (1e-3, 0.1, 0.5, 0.9, 1.0):
        x = 2 * torch.randn(500, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        t = torch.full((500,), t_val, dtype=torch.float64)
        want = mix.score_fn(vp)(x, t)
        got = vp_frame(mix.score_fn(lin), vp)(x, t)
        worst = max(worst, ((got - want).norm(dim=1) / want.norm(dim=1)).max().item())
        alpha, sigma = vp.marginal_coeffs(t[:1])
        a_lin = (1 / (1 + sigma / alpha)).item()
        tol = max(tol, 1e3 * torch.finfo(torch.float64).eps / 2 / min(1.0, a_lin, (sigma / alpha).item()))
    assert worst <= tol, (worst, tol)
    return {"loop_equals_train_design_steps": k, "frame_change_rel_error": worst, "frame_change_tol": tol}


def run(arm: str, seed: int, clf, data, floor, s=SETTINGS) -> dict:
    x_train, y_train, x_test, sigma_data = data
    model = (PredictionModel(net(seed), VPSDE(), "eps", sigma_data) if arm == "DSM"
             else VelocityModel(net(seed), sigma_data))
    curve, check, t0 = [], {}, time.perf_counter()

    def callback(step, ema):
        r = ds.evaluate(ema, model, clf, x_test, floor, s)
        r["step"], r["train_seconds"] = step, time.perf_counter() - t0
        curve.append(r)
        msg = f"  {arm} seed {seed} step {step}: FD {r['fd']:.3f} (floor {floor.mean:.3f}), coverage {r['coverage']:.2f}"
        if step == s["steps"]:                                   # the solver's convergence: twice the steps, same draws
            c = ds.evaluate(ema, model, clf, x_test, floor, dict(s, sampler_steps=s["check_sampler_steps"]))
            check.update(c, sampler_steps=s["check_sampler_steps"])
            msg += f"; with {s['check_sampler_steps']} steps FD {c['fd']:.3f}"
        print(msg + f", {time.perf_counter() - t0:.0f} s", flush=True)

    if arm == "DSM":
        _, losses = train_design(model, x_train, y_train, steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"],
                                 lr_warmup=s["lr_warmup"], ema_decay=s["ema_decay"], label_dropout=s["label_dropout"],
                                 grad_clip=s["grad_clip"], seed=seed, callback=callback, checkpoints=tuple(s["checkpoints"]))
    else:
        _, losses = train_velocity(model, fm_loss, x_train, y_train, s=s, seed=seed, callback=callback)
    k = max(1, len(losses) // 10)
    return {"arm": arm, "seed": seed, "curve": curve, "double_steps": check, "final_loss": sum(losses[-k:]) / k,
            "losses_every_100": [sum(losses[i:i + 100]) / len(losses[i:i + 100]) for i in range(0, len(losses), 100)],
            "seconds": time.perf_counter() - t0}


def main():
    res = json.loads(JSON.read_text()) if JSON.exists() else {}
    if res.get("settings") != SETTINGS:
        res = {}
    t_start = time.perf_counter()
    clf, data, floor, rep = ds.setup()
    res.update(settings=SETTINGS, floor={"mean": floor.mean, "std": floor.std, "n": SETTINGS["n_samples"], "repeats": 10},
               sigma_data=data[3], classifier_accuracy=rep.test_accuracy, torch=torch.__version__,
               n_params=sum(p.numel() for p in net(0).parameters()),
               machine=f"{platform.machine()}, {os.cpu_count()} cores, torch threads 1 (shared with other jobs)")
    res.setdefault("runs", {arm: {} for arm in ARMS})
    print(f"floor {floor.mean:.3f} ± {floor.std:.3f}; sigma_data {data[3]:.4f}; {res['n_params']:,} parameters", flush=True)
    if "checks" not in res:
        res["checks"] = checks(data)
        print(f"checks: {res['checks']}", flush=True)
        JSON.write_text(json.dumps(res, indent=1))
    for seed in SETTINGS["seeds"]:
        for arm in ARMS:                                           # paired: both arms of a seed, one after the other
            if str(seed) not in res["runs"][arm]:
                res["runs"][arm][str(seed)] = run(arm, seed, clf, data, floor)
                JSON.write_text(json.dumps(res, indent=1))
    res["seconds"] = res.get("seconds", 0) + time.perf_counter() - t_start
    JSON.write_text(json.dumps(res, indent=1))
    fin = {arm: [res["runs"][arm][str(s)]["curve"][-1]["fd"] for s in SETTINGS["seeds"]] for arm in ARMS}
    print({arm: [round(v, 3) for v in f] for arm, f in fin.items()})


if __name__ == "__main__":
    main()
