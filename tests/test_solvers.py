"""Euler–Maruyama and Milstein: against torchsde on the same Brownian increments, a shape x dtype x device matrix,
and clear errors for bad input."""
import math

import pytest
import torch
import torchsde

from sde_diffusion.brownian import brownian_increments, time_grid
from sde_diffusion.solvers import (GeometricBrownianMotion, OrnsteinUhlenbeck, batch_broadcast, euler_maruyama,
                                   milstein)



class _TorchsdeWrapper(torch.nn.Module):
    "Our (drift, diffusion)(x, t) as a torchsde diagonal-noise Itô SDE f(t, y), g(t, y)."
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, proc):
        super().__init__()
        self.proc = proc

    def f(self, t, y):
        return self.proc.drift(y, t.expand(y.shape[0]))

    def g(self, t, y):
        return torch.broadcast_to(self.proc.diffusion(y, t.expand(y.shape[0])), y.shape)


def _torchsde_and_ours(proc, method, ours):
    "Solve with torchsde, read its Brownian increments back, and solve with ours on exactly those increments."
    torch.manual_seed(0)
    B, D, N, T = 64, 3, 128, 1.0                   # dt = 2^-7: the grid is exact in binary, no remnant steps
    y0 = 1.0 + 0.1 * torch.randn(B, D, dtype=torch.float64)
    ts = time_grid(0.0, T, N, dtype=torch.float64)
    bm = torchsde.BrownianInterval(t0=0.0, t1=T, size=(B, D), dtype=torch.float64, entropy=1234,
                                   levy_area_approximation="space-time" if method == "milstein" else "none")
    ys = torchsde.sdeint(_TorchsdeWrapper(proc), y0, ts, bm=bm, method=method, dt=T / N)
    dW = torch.stack([bm(ts[k], ts[k + 1]) for k in range(N)])
    path = ours(proc.drift, proc.diffusion, y0, ts, dW=dW, return_path=True)
    return ys, path


@pytest.mark.parametrize("proc", [GeometricBrownianMotion(mu=0.7, sigma=0.9), OrnsteinUhlenbeck(theta=2.0, mu=0.5, sigma=0.8)],
                         ids=["gbm", "ou"])
def test_euler_maruyama_matches_torchsde(proc):
    ys, path = _torchsde_and_ours(proc, "euler", euler_maruyama)
    torch.testing.assert_close(path, ys, rtol=1e-12, atol=1e-12)


def test_milstein_matches_torchsde():
    ys, path = _torchsde_and_ours(GeometricBrownianMotion(mu=0.7, sigma=0.9), "milstein", milstein)
    torch.testing.assert_close(path, ys, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(16,), (16, 2), (8, 3, 4, 4)], ids=["rank1", "rank2", "rank4"])
@pytest.mark.parametrize("solver", [euler_maruyama, milstein])
def test_shape_dtype_device_matrix(solver, shape, dtype, device):
    gbm = GeometricBrownianMotion(mu=0.3, sigma=0.5)
    x0 = torch.ones(shape, dtype=dtype, device=device)
    ts = time_grid(0.0, 1.0, 20, dtype=torch.float64)              # grid dtype/device follow x0
    gen = lambda: torch.Generator(device=device).manual_seed(7)
    xT = solver(gbm.drift, gbm.diffusion, x0, ts, generator=gen())
    path = solver(gbm.drift, gbm.diffusion, x0, ts, generator=gen(), return_path=True)
    assert xT.shape == shape and xT.dtype == dtype and xT.device.type == device
    assert path.shape == (21, *shape) and path.dtype == dtype
    assert torch.equal(path[0], x0) and torch.equal(path[-1], xT)  # same seed, same path
    # the same increments in float64 give the same answer up to float32 rounding
    dW = brownian_increments(ts.to(device), shape, gen()).to(dtype)
    ref = solver(gbm.drift, gbm.diffusion, x0.double(), ts, dW=dW.double())
    torch.testing.assert_close(solver(gbm.drift, gbm.diffusion, x0, ts, dW=dW), ref.to(dtype),
                               rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)


def test_per_sample_time_and_broadcast(device):
    x = torch.zeros(5, 2, 3, device=device)
    t = torch.linspace(0, 1, 5, device=device)
    b = batch_broadcast(t, x)
    assert b.shape == (5, 1, 1) and b.device == x.device
    seen = []

    def drift(x, t):
        seen.append(t)
        return -x * batch_broadcast(t, x)

    euler_maruyama(drift, lambda x, t: 0.1, x, time_grid(0.0, 1.0, 4), generator=torch.Generator(device).manual_seed(0))
    assert all(s.shape == (5,) and s.device == x.device for s in seen)
    torch.testing.assert_close(seen[1], torch.full((5,), 0.25, device=device))


# ---------------------------------------------------------------------------------------------------- bad input
OU = OrnsteinUhlenbeck()


@pytest.mark.parametrize("ts, match", [
    (torch.tensor([0.0, 0.5, 0.5, 1.0]), r"`ts` must be strictly increasing: step 1 .*non-positive step"),
    (torch.tensor([0.0, 1.0, 0.5]), r"`ts` must be strictly increasing"),
    (torch.tensor([0.0, float("nan"), 1.0]), r"`ts` contains NaN"),
    (torch.tensor([0.0]), r"`ts` must be a 1-D tensor with at least 2 times"),
    (torch.zeros(2, 3), r"`ts` must be a 1-D tensor"),
])
@pytest.mark.parametrize("solver", [euler_maruyama, milstein])
def test_bad_time_grid(solver, ts, match):
    with pytest.raises(ValueError, match=match):
        solver(OU.drift, OU.diffusion, torch.zeros(4), ts)


@pytest.mark.parametrize("solver", [euler_maruyama, milstein])
def test_bad_x0_and_dW(solver):
    ts = time_grid(0.0, 1.0, 10)
    with pytest.raises(ValueError, match="`x0` contains NaN or inf"):
        solver(OU.drift, OU.diffusion, torch.tensor([0.0, float("inf")]), ts)
    with pytest.raises(ValueError, match="`x0` must have a batch dimension"):
        solver(OU.drift, OU.diffusion, torch.tensor(1.0), ts)
    with pytest.raises(TypeError, match="`x0` must be a floating-point tensor"):
        solver(OU.drift, OU.diffusion, torch.zeros(4, dtype=torch.long), ts)
    with pytest.raises(ValueError, match=r"`dW` must have shape \(len\(ts\) - 1, \*x0.shape\) = \(10, 4\)"):
        solver(OU.drift, OU.diffusion, torch.zeros(4), ts, dW=torch.zeros(9, 4))
    with pytest.raises(ValueError, match=r"`dW` contains NaN or inf \(at step 0\)"):
        solver(OU.drift, OU.diffusion, torch.zeros(4), ts, dW=torch.full((10, 4), float("nan")))
    for bad in (float("nan"), float("inf")):   # found after the loop (no check of all of dW before it), at its step
        dW = torch.zeros(10, 4)
        dW[7, 2] = bad
        with pytest.raises(ValueError, match=r"`dW` contains NaN or inf \(at step 7\)"):
            solver(OU.drift, OU.diffusion, torch.zeros(4), ts, dW=dW)


def test_drift_with_wrong_shape():
    with pytest.raises(ValueError, match="`drift`/`diffusion` produced a state of shape"):
        euler_maruyama(lambda x, t: torch.zeros(3, *x.shape), OU.diffusion, torch.zeros(4), time_grid(0.0, 1.0, 5))
    # a single step: the check is made after the first step, not only on later ones (mutation testing found this open)
    with pytest.raises(ValueError, match="`drift`/`diffusion` produced a state of shape"):
        euler_maruyama(lambda x, t: torch.zeros(3, *x.shape), OU.diffusion, torch.zeros(4), time_grid(0.0, 1.0, 1))


def test_divergence_names_the_step():
    ou = OrnsteinUhlenbeck(theta=50.0)          # |1 - theta dt| = 1.5 > 1: Euler–Maruyama is unstable
    with pytest.raises(FloatingPointError, match=r"NaN/inf at step \d+ \(t = "):
        euler_maruyama(ou.drift, ou.diffusion, torch.ones(4), time_grid(0.0, 20.0, 400),
                       generator=torch.Generator().manual_seed(0))



@pytest.mark.parametrize("solver", [euler_maruyama, milstein])
@pytest.mark.parametrize("k", [0, 7, 1500])   # 1500: past the watch's first chunk of 1024 per-step sums
def test_nan_injected_at_step_k_is_reported_as_step_k(solver, k):
    from sde_diffusion.core import NonFiniteError
    ts = time_grid(0.0, 1.0, 2000)
    t_bad = ts[k].item()
    drift = lambda x, t: torch.where(batch_broadcast(t >= t_bad, x).bool(), torch.full_like(x, float("nan")), -x)
    diffusion = lambda x, t: 0.5 * torch.ones_like(x)
    with pytest.raises(NonFiniteError, match=rf"became NaN/inf at step {k} \(t = {t_bad:.4g} -> {ts[k + 1].item():.4g}\)"):
        solver(drift, diffusion, torch.ones(4, 2), ts, generator=torch.Generator().manual_seed(0))


def test_the_nan_watch_runs_no_entrywise_test_per_step(monkeypatch):
    "The loop keeps one sum per step (core.NonFiniteWatch): torch.isfinite runs a fixed number of times, not 300."
    calls, isfinite = [], torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda v: calls.append(v.numel()) or isfinite(v))
    for solver in (euler_maruyama, milstein):
        calls.clear()
        solver(OU.drift, OU.diffusion, torch.ones(4, 2), time_grid(0.0, 1.0, 300), generator=torch.Generator().manual_seed(0))
        assert 0 < len(calls) <= 4, calls   # x0's sum, the grid, the 300 sums once after the loop

def test_bad_parameters():
    with pytest.raises(ValueError, match="`theta` must be a positive"):
        OrnsteinUhlenbeck(theta=0.0)
    with pytest.raises(ValueError, match="`sigma` must be a positive"):
        GeometricBrownianMotion(sigma=-1.0)
    with pytest.raises(ValueError, match="`steps` must be a positive integer"):
        time_grid(0.0, 1.0, 0)
    with pytest.raises(ValueError, match="`t1` must be finite and greater than `t0`"):
        time_grid(1.0, 1.0, 4)
    with pytest.raises(ValueError, match="per-sample value must have shape"):
        batch_broadcast(torch.ones(3), torch.ones(4, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generator_on_wrong_device():
    with pytest.raises(ValueError, match="`generator` is on cpu"):
        brownian_increments(time_grid(0.0, 1.0, 4, device="cuda"), (3,), torch.Generator().manual_seed(0))


def test_ou_exact_moments_match_simulation():
    "Exact transition sampling vs the closed-form moments, within 4 standard errors."
    ou, M = OrnsteinUhlenbeck(theta=1.3, mu=-0.4, sigma=0.6), 100_000
    x0 = torch.full((M,), 2.0, dtype=torch.float64)
    xt = ou.sample(x0, 0.7, generator=torch.Generator().manual_seed(0))
    m, v = ou.mean(x0[:1], 0.7).item(), ou.variance(torch.tensor(0.7, dtype=torch.float64)).item()
    assert abs(xt.mean().item() - m) < 4 * math.sqrt(v / M)
    assert abs(xt.var().item() - v) < 4 * v * math.sqrt(2 / (M - 1))


# ------------------------------------------------------------------ regressions found by tests/test_properties.py
def test_closed_forms_reject_negative_times_and_bool_parameters():
    "OU variance at t < 0 was negative (its sample NaN); theta=True was taken as 1.0; meta x0 failed inside torch."
    from sde_diffusion.solvers import GeometricBrownianMotion, OrnsteinUhlenbeck, euler_maruyama
    ou, x0 = OrnsteinUhlenbeck(), torch.zeros(3, 1)
    for fn in (lambda: ou.variance(-1.0), lambda: ou.mean(x0, -0.5), lambda: ou.sample(x0, float("nan")),
               lambda: GeometricBrownianMotion().variance(x0 + 1, -1.0)):
        with pytest.raises(ValueError, match="`t`"):
            fn()
    with pytest.raises(ValueError, match="`theta`"):
        OrnsteinUhlenbeck(theta=True)
    with pytest.raises(ValueError, match="`mu`"):
        GeometricBrownianMotion(mu="1")
    with pytest.raises(ValueError, match="`x0`"):
        euler_maruyama(ou.drift, ou.diffusion, torch.zeros(2, 1, device="meta"), [0.0, 1.0])
