"""Measured convergence orders on geometric Brownian motion (exact solution path by path).

Tolerance: the fitted order may differ from the theoretical one by Monte Carlo error (3 bootstrap standard errors of
the slope) plus the pre-asymptotic bias of the log-log line, which we estimate from the data themselves as the
difference between the slopes fitted on the coarse half and on the fine half of the step sizes.
"""
import pytest
import torch

from sde_diffusion.brownian import brownian_increments, coarsen_increments, time_grid
from sde_diffusion.solvers import GeometricBrownianMotion, convergence_order, euler_maruyama, milstein


@pytest.fixture(scope="module")
def differences():
    gbm = GeometricBrownianMotion(mu=2.0, sigma=1.0)
    M, T, n_fine = 40_000, 1.0, 2**10
    x0 = torch.ones(M, dtype=torch.float64)
    dW_fine = brownian_increments(time_grid(0.0, T, n_fine, dtype=torch.float64), (M,), torch.Generator().manual_seed(11))
    exact = gbm.solution(x0, T, dW_fine.sum(0))
    levels = [2**p for p in range(4, 11)]
    out = {"dts": [T / N for N in levels]}
    for name, solver, kw in (("em", euler_maruyama, {}), ("milstein", milstein, {"diffusion_dx": gbm.diffusion_dx})):
        out[name] = torch.stack([
            solver(gbm.drift, gbm.diffusion, x0, time_grid(0.0, T, N, dtype=torch.float64),
                   dW=coarsen_increments(dW_fine, n_fine // N), **kw) - exact
            for N in levels])
    return out


def _check_order(dts, samples, kind, expected):
    fit = convergence_order(dts, samples, kind, generator=torch.Generator().manual_seed(0))
    h = len(dts) // 2 + 1
    coarse = convergence_order(dts[:h], samples[:h], kind, n_boot=2).order
    fine = convergence_order(dts[-h:], samples[-h:], kind, n_boot=2).order
    tol = 3 * fit.order_se + abs(coarse - fine)
    assert abs(fit.order - expected) < tol, f"{kind} order {fit.order:.3f} ± {fit.order_se:.3f}, tolerance {tol:.3f}"
    assert tol < 0.2, f"tolerance {tol:.3f} too loose to tell order {expected} from {expected} ± 0.5"  # the test can fail
    return fit


def test_euler_maruyama_strong_order_one_half(differences):
    _check_order(differences["dts"], differences["em"].abs(), "strong", 0.5)


def test_milstein_strong_order_one(differences):
    _check_order(differences["dts"], differences["milstein"].abs(), "strong", 1.0)


@pytest.mark.parametrize("name", ["em", "milstein"])
def test_weak_order_one(differences, name):
    _check_order(differences["dts"], differences[name], "weak", 1.0)


def test_weak_error_matches_closed_form(differences):
    "E X_N = (1 + mu dt)^N exactly for both schemes on GBM; the coupled estimate must agree within 4 standard errors."
    for name in ("em", "milstein"):
        for dt, d in zip(differences["dts"], differences[name]):
            N = round(1 / dt)
            exact = torch.tensor((1 + 2.0 * dt) ** N - torch.e**2.0, dtype=torch.float64)
            se = d.std() / d.numel() ** 0.5
            assert abs(d.mean() - exact) < 4 * se, (name, N)


def test_convergence_order_rejects_bad_input():
    with pytest.raises(ValueError, match="`kind` must be"):
        convergence_order([0.1, 0.01], torch.ones(2, 5), "medium")
    with pytest.raises(ValueError, match="`samples` must have shape"):
        convergence_order([0.1, 0.01], torch.ones(3, 5))


def test_bootstrap_matches_gather_and_delta_method(differences):
    """The count-based bootstrap gives the same resamples as gathering `samples[:, idx]` (same draws, sums in another
    order: agreement to rounding), and its slope SE agrees with the delta method's: slope = w @ log(err) with w the
    least-squares weights, so Var(slope) ~ w^T C w with C_lk = Cov(s_l, s_k) / (M err_l err_k) (paths shared by levels).
    A bootstrap SD from B resamples has relative standard error ~ 1/sqrt(2 B); allow 4 of those."""
    from sde_diffusion.solvers import _fit_slope
    dts = torch.tensor(differences["dts"], dtype=torch.float64)
    for kind, samples in (("strong", differences["em"].abs()), ("weak", differences["milstein"])):
        B = 400
        fit = convergence_order(dts, samples, kind, n_boot=B, generator=torch.Generator().manual_seed(3))
        idx = torch.randint(samples.shape[1], (B, samples.shape[1]), generator=torch.Generator().manual_seed(3))
        old = torch.stack([_fit_slope(dts.log(), e.clamp_min(1e-300).log())[0] for e in samples[:, idx].mean(-1).abs().T])
        assert abs(old.std().item() - fit.order_se) < 1e-12
        A = torch.stack([dts.log(), torch.ones_like(dts)], -1)
        w = torch.linalg.pinv(A)[0]                                   # slope = w @ log err
        mean = samples.mean(1)
        C = torch.cov(samples) / (samples.shape[1] * mean[:, None] * mean[None, :])
        se_delta = (w @ C @ w).sqrt().item()
        assert abs(fit.order_se / se_delta - 1) < 4 / (2 * B) ** 0.5, (kind, fit.order_se, se_delta)
