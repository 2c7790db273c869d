"""Fokker–Planck and linear SDEs: moment ODEs against closed forms and simulation, the Fokker–Planck PDE residual,
the finite-volume solver's mass conservation and agreement with the stationary density, and errors."""
import math

import pytest
import torch

from sde_diffusion.brownian import time_grid
from sde_diffusion.fokker_planck import (LinearSDE, fokker_planck_1d, fokker_planck_terms, gaussian_log_prob,
                                  linear_sde_moments)
from sde_diffusion.solvers import OrnsteinUhlenbeck, euler_maruyama


F64 = dict(dtype=torch.float64)


def test_moments_match_closed_forms(device):
    ou = OrnsteinUhlenbeck(theta=1.7, mu=0.3, sigma=0.9)
    ts = torch.linspace(0, 2, 9, device=device, **F64)
    mean0 = torch.tensor([-1.0, 0.0, 2.0], device=device, **F64)
    m, P = linear_sde_moments(-ou.theta, ou.theta * ou.mu, ou.sigma, mean0, 0.0, ts)
    assert m.shape == P.shape == (9, 3) and m.device.type == device
    torch.testing.assert_close(m, ou.mu + (mean0 - ou.mu) * torch.exp(-ou.theta * ts[:, None]), rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(P, ou.variance(ts)[:, None].expand_as(P), rtol=1e-8, atol=1e-9)
    # time-dependent coefficients: the VP SDE, beta(t) = 0.1 + 19.9 t
    beta = lambda t: 0.1 + 19.9 * t
    int_beta = lambda t: 0.1 * t + 9.95 * t**2
    m, P = linear_sde_moments(lambda t: -0.5 * beta(t), 0.0, lambda t: beta(t).sqrt(), mean0, 0.0, ts)
    torch.testing.assert_close(m, mean0 * torch.exp(-0.5 * int_beta(ts))[:, None], rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(P, (-torch.expm1(-int_beta(ts)))[:, None].expand_as(P), rtol=1e-8, atol=1e-9)


@pytest.mark.slow
def test_marginal_prob_against_simulation():
    "Euler–Maruyama vs its exact moment recursion within 4 standard errors, and that recursion vs the kernel within Euler's bound."
    sde = LinearSDE(a=lambda t: -1.0 - t, b=lambda t: torch.sin(3 * t), c=lambda t: 0.5 + t)
    M, T, N = 100_000, 1.0, 1000
    x0 = torch.full((M,), 0.7, **F64)
    ts = time_grid(0.0, T, N, **F64)
    xT = euler_maruyama(sde.drift, sde.diffusion, x0, ts, generator=torch.Generator().manual_seed(0))
    # for a linear SDE the EM step X' = (1 + a dt) X + b dt + c dW has exact moments m' = (1 + a dt) m + b dt and
    # V' = (1 + a dt)^2 V + c^2 dt: the samples against them, no discretization bias to allow for
    m_em, v_em, dt = 0.7, 0.0, T / N
    for t in ts[:-1].tolist():
        a, b, c = -1.0 - t, math.sin(3 * t), 0.5 + t
        m_em, v_em = (1 + a * dt) * m_em + b * dt, (1 + a * dt) ** 2 * v_em + c * c * dt
    assert abs(xT.mean().item() - m_em) < 4 * math.sqrt(v_em / M)
    assert abs(xT.var().item() - v_em) < 4 * v_em * math.sqrt(2 / (M - 1))
    # the recursion is Euler's method for the moment ODEs m' = a m + b, V' = 2 a V + c^2 (plus a^2 dt^2 V per step), so
    # with |a| <= L = 2 on [0, 1] its global error is at most (dt/2) max|m''| (e^{LT} - 1)/L for the mean and
    # max|tau| (e^{2LT} - 1)/(e^{2L dt} - 1) for the variance, tau = dt^2 (max|V''|/2 + max a^2 V) the local error;
    # m'' = a' m + a m' + b' and V'' = 2 a' V + 2 a V' + 2 c c' from the kernel's moments on a fine grid
    mean, std = sde.marginal_prob(x0[:1], torch.tensor([T], **F64))
    tf = torch.linspace(1e-9, T, 20_001, **F64)
    mf, sf = sde.marginal_prob(torch.full_like(tf, 0.7), tf)
    vf, af, cf = sf**2, -1.0 - tf, 0.5 + tf
    m2 = (-mf + af * (af * mf + torch.sin(3 * tf)) + 3 * torch.cos(3 * tf)).abs().max().item()
    v2 = (-2 * vf + 2 * af * (2 * af * vf + cf**2) + 2 * cf).abs().max().item()
    L = 2.0
    tau = dt**2 * (v2 / 2 + (af**2 * vf).max().item())
    assert abs(m_em - mean.item()) <= dt / 2 * m2 * math.expm1(L * T) / L
    assert abs(v_em - std.item() ** 2) <= tau * math.expm1(2 * L * T) / math.expm1(2 * L * dt)


def test_marginal_prob_shapes_and_errors():
    sde = LinearSDE(a=-0.5, c=1.0)
    x0 = torch.randn(5, 3, 4, **F64)
    mean, std = sde.marginal_prob(x0, torch.rand(5, **F64))
    assert mean.shape == x0.shape and std.shape == (5, 1, 1)
    with pytest.raises(ValueError, match="`t`"):
        sde.marginal_prob(x0, -torch.ones(5, **F64))
    with pytest.raises(ValueError, match="`t` must be a scalar or have shape"):
        sde.marginal_prob(x0, torch.ones(4, **F64))


def test_ou_density_solves_fokker_planck():
    "The OU kernel makes the PDE residual vanish; flipping the diffusion term's sign does not."
    ou = OrnsteinUhlenbeck(theta=1.2, mu=0.0, sigma=0.7)
    x0 = 1.5

    def density(x, t):
        return gaussian_log_prob(x, ou.mean(torch.full_like(x, x0), t), ou.variance(t)).exp()

    x = torch.linspace(-2, 3, 41, **F64)
    t = torch.full_like(x, 0.6)
    dt_p, dx_fp, dxx = fokker_planck_terms(density, ou.drift, ou.diffusion, x, t)
    scale = dt_p.abs().max()
    assert (dt_p + dx_fp - dxx).abs().max() < 1e-10 * scale
    assert (dt_p + dx_fp + dxx).abs().max() > 0.1 * scale


def test_fokker_planck_solver_conserves_mass_and_relaxes():
    sigma = 0.8
    x = torch.linspace(-2.4, 2.4, 97, **F64)
    dx = (x[1] - x[0]).item()
    p0 = gaussian_log_prob(x, torch.tensor(-1.0, **F64), torch.tensor(0.01, **F64)).exp()
    p0 = p0 / (p0.sum() * dx)
    ps = fokker_planck_1d(lambda x, t: x - x**3, lambda x, t: torch.full_like(x, sigma), p0, x,
                          torch.tensor([0.0, 2.0, 25.0], **F64), dt=2e-3)
    mass = ps.sum(-1) * dx
    torch.testing.assert_close(mass, torch.ones(3, **F64), rtol=0, atol=1e-12)
    assert (ps >= 0).all()
    stationary = torch.exp(-2 * (x**4 / 4 - x**2 / 2) / sigma**2)
    stationary = stationary / (stationary.sum() * dx)
    assert (ps[-1] - stationary).abs().sum() * dx < 5e-3       # L1, relaxation time ~ 1/rate, e^{-25 rate} small
    assert (ps[1] - stationary).abs().sum() * dx > 0.1         # but not yet at t = 2


def test_fokker_planck_solver_errors():
    x = torch.linspace(-1, 1, 21, **F64)
    p0 = torch.ones(21, **F64)
    with pytest.raises(ValueError, match="`dt` is too large"):
        fokker_planck_1d(lambda x, t: -x, lambda x, t: torch.ones_like(x), p0, x, torch.tensor([0.0, 1.0], **F64), dt=0.1)
    with pytest.raises(ValueError, match="`p0` must have the length of `x_grid`"):
        fokker_planck_1d(lambda x, t: -x, lambda x, t: torch.ones_like(x), p0[:-1], x, torch.tensor([0.0, 1.0], **F64), dt=1e-4)
    with pytest.raises(ValueError, match="`var` must be positive"):
        gaussian_log_prob(torch.zeros(3), torch.zeros(3), torch.zeros(3))
