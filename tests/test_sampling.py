"""Samplers of chapter 9: predictors, correctors, the PC loop and the ODE sampler, with exact mixture scores."""
import math

import numpy as np
import pytest
import torch
from torchdiffeq import odeint

from sde_diffusion.distances import expected_log_prob, mean_logp_gap
from sde_diffusion.reverse import probability_flow
from sde_diffusion.sampling import (AUTO_CUBIC_MAX_DIM, AUTO_THREEHALVES_MAX_STEPS, AUTO_THREEHALVES_MIN_DIM, AUTO_CUBIC_MIN_STEPS, AUTO_IPNDM_MAX_DIM, AUTO_EPS, AUTO_SWITCH_STEPS, CORRECTORS, DDIM, IPNDM,
                                    PREDICTORS, SAMPLE_EPS, SPACINGS,
                                    AncestralSampling, AnnealedLangevin, DPMSolver2M, DPMSolver3M, EulerMaruyama, Heun,
                                    Langevin, ReverseDiffusion, SamplerOutput, UniPC, ode_sample, recommended_eps, recommended_sampler, sample,
                                    sampling_times, tweedie_denoise)
from sde_diffusion.sde import SubVPSDE, VESDE, VPSDE
from sde_diffusion.sampling import AUTO_DENOISE_MIN_STEPS, recommended_denoise
from sde_diffusion.toy import GaussianMixture, ring_of_gaussians


SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
LOF = {"lower_order_final": "always"}   # `recommended_sampler`'s UniPC-2 options on VP and sub-VP (the 15-step cliff)
RING = ring_of_gaussians()
RING64 = ring_of_gaussians(dtype=torch.float64)


@pytest.fixture(scope="module")
def E_logp():
    return expected_log_prob(RING.log_prob, RING.sample, n=400_000, generator=torch.Generator().manual_seed(11))[0]


# ---------------------------------------------------------------- accuracy at high NFE
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("kw", [dict(predictor="euler_maruyama"), dict(predictor="reverse_diffusion"),
                                dict(predictor=AncestralSampling("transition")), dict(predictor="ddim"),
                                dict(predictor="heun", spacing="edm", steps=250),
                                dict(predictor="dpm_solver_2m", spacing="logsnr"),
                                dict(predictor="dpm_solver_3m", spacing="logsnr", steps=100),
                                dict(predictor="unipc", spacing="logsnr", steps=100),
                                dict(predictor="ipndm", spacing="edm", steps=100),
                                dict(predictor="reverse_diffusion", corrector="annealed_langevin", snr=0.04)],
                         ids=["em", "rd", "ancestral", "ddim", "heun", "dpm2m", "dpm3m", "unipc", "ipndm", "pc"])
def test_every_sampler_reaches_the_floor(sde_name, kw, E_logp):
    """With the exact score and 500 steps (250 for Heun, 100 for the multistep samplers of order 3 and more: they are
    accurate sooner), the mean exact log-density of 4,000 samples equals its expectation within 4 standard errors."""
    sde, n, kw = SDES[sde_name], 4000, dict(kw)
    steps = kw.pop("steps", 500)
    out = sample(sde, RING.score_fn(sde), (n, 2), steps=steps, generator=torch.Generator().manual_seed(3), **kw)
    gap, se = mean_logp_gap(out.samples, RING.log_prob, E_logp, return_se=True)
    # 4 se of the 4,000 samples (CLT; se 0.0155, 4 se = 0.062 nats); the reference E_logp (400,000 samples) adds a
    # tenth of that se in quadrature (+0.5 %), neglected. No allowance for the samplers' O(1/N) bias (a picked + 10/500
    # was here): at these step counts it is below this resolution, measured |gap| <= 1.6 se over the 20 cases (largest:
    # reverse diffusion on VP, -1.57 se; annealed Langevin PC on VE, -1.40 se). With 10x fewer steps 12 of 20 fail.
    assert abs(gap) < 4 * se, (gap, se)


def test_ode_sampler_reaches_the_floor(E_logp):
    out = ode_sample(VPSDE(), RING.score_fn(VPSDE()), (4000, 2), rtol=1e-5, atol=1e-5, generator=torch.Generator().manual_seed(4))
    gap, se = mean_logp_gap(out.samples, RING.log_prob, E_logp, return_se=True)
    assert abs(gap) < 4 * se and 40 < out.nfe < 200


def test_stochastic_error_decreases_with_nfe(E_logp):
    "Euler–Maruyama's log-density gap shrinks roughly like 1/N: 10 -> 40 -> 160 steps, far above the noise."
    gaps = [abs(mean_logp_gap(sample(VPSDE(), RING.score_fn(VPSDE()), (4000, 2), predictor="euler_maruyama", steps=N,
                                     generator=torch.Generator().manual_seed(5)).samples, RING.log_prob, E_logp))
            for N in (10, 40, 160)]
    assert gaps[0] > 3 * gaps[1] > 0 and gaps[1] > 2 * gaps[2], gaps


# ---------------------------------------------------------------- orders of the ODE predictors
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("pred,spacing,order", [(EulerMaruyama(ode=True), "uniform", 1.0),
                                                (ReverseDiffusion(ode=True), "uniform", 1.0),
                                                (DDIM(), "uniform", 1.0), (Heun(), "edm", 2.0),
                                                (DPMSolver2M(), "logsnr", 2.0)],
                         ids=["euler", "rd-pf", "ddim", "heun", "dpm2m"])
def test_convergence_order_against_dopri5(sde_name, pred, spacing, order):
    sde = SDES[sde_name]
    score = RING64.score_fn(sde)
    x_T = sde.prior_sampling((200, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with sde.unchecked():
        ref, _ = probability_flow(sde, score, x_T, sde.T, 1e-3, rtol=1e-10, atol=1e-10)
    Ns = [64, 128, 256, 512]
    errs = [(sample(sde, score, predictor=pred, steps=N, spacing=spacing, x_T=x_T, denoise=False).samples - ref)
            .square().sum(1).mean().sqrt().item() for N in Ns]
    slope = -np.polyfit(np.log(Ns), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.15, (errs, slope)


# ---------------------------------------------------------------- identities and cross-checks
def test_ddim_eta1_is_ancestral_and_dpm_first_step_is_ddim():
    sde, score = VPSDE(), RING64.score_fn(VPSDE())
    x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t, tn = torch.full((50,), 0.6, dtype=torch.float64), torch.full((50,), 0.55, dtype=torch.float64)
    a = DDIM(1.0).step(sde, score, x, t, tn, torch.Generator().manual_seed(2))
    b = AncestralSampling().step(sde, score, x, t, tn, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-13)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-13)
    dpm = DPMSolver2M()
    dpm.reset(10)
    torch.testing.assert_close(dpm.step(sde, score, x, t, tn)[0], DDIM().step(sde, score, x, t, tn)[0], rtol=0, atol=1e-13)


def test_ancestral_vp_equals_ddpm_step():
    "On the VP SDE the ancestral mean is DDPM's (x + beta s)/sqrt(1 - beta) with beta = 1 - a^2 of the step."
    sde, score = VPSDE(), RING64.score_fn(VPSDE())
    x = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t, tn = torch.full((20,), 0.3, dtype=torch.float64), torch.full((20,), 0.299, dtype=torch.float64)
    (al, sg), (aln, sgn) = sde.marginal_coeffs(t), sde.marginal_coeffs(tn)
    beta = 1 - (al / aln) ** 2
    mean = (x + beta[:, None] * score(x, t)) / (1 - beta[:, None]).sqrt()
    _, got = AncestralSampling().step(sde, score, x, t, tn)
    torch.testing.assert_close(got, mean, rtol=0, atol=1e-13)


def test_ode_sample_equals_direct_torchdiffeq():
    sde, score = VPSDE(), RING64.score_fn(VPSDE())
    x_T = sde.prior_sampling((100, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours, nfe = ode_sample(sde, score, x_T=x_T, rtol=1e-7, atol=1e-7, denoise=False)

    def field(t, x):
        beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
        return -0.5 * beta * (x + score(x, t.expand(x.shape[0])))
    direct = odeint(field, x_T, torch.tensor([1.0, 1e-3], dtype=torch.float64), rtol=1e-7, atol=1e-7,
                    options={"step_t": torch.tensor([1e-3], dtype=torch.float64), "first_step": 1e-2 * (1 - 1e-3)})[-1]
    assert (ours - direct).abs().max() < 1e-10 and nfe > 20
    rk4, nfe4 = ode_sample(sde, score, x_T=x_T, method="rk4", steps=50, denoise=False)
    assert nfe4 == 200 and (rk4 - direct).abs().max() < 1e-3


def test_tweedie_denoise_is_the_posterior_mean():
    "For Gaussian data N(m, s^2 I), E[x0 | x_t] is known in closed form."
    sde, m, s2 = VPSDE(), 0.7, 0.3
    score = lambda x, t: -(x - sde.marginal_coeffs(t)[0][:, None] * m) / (
        sde.marginal_coeffs(t)[0][:, None] ** 2 * s2 + sde.marginal_coeffs(t)[1][:, None] ** 2)
    x = torch.randn(10, 3, dtype=torch.float64)
    t = torch.full((10,), 0.4, dtype=torch.float64)
    a, sg = (c[:, None] for c in sde.marginal_coeffs(t))
    exact = m + a * s2 / (a**2 * s2 + sg**2) * (x - a * m)
    torch.testing.assert_close(tweedie_denoise(sde, score, x, t), exact, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the loop: seeds, NFE, shapes, devices, errors
def test_same_seed_same_samples_and_nfe():
    sde, score = VESDE(), RING.score_fn(VESDE())
    run = lambda seed, **kw: sample(sde, score, (300, 2), steps=40, generator=torch.Generator().manual_seed(seed),
                                    **{"predictor": "reverse_diffusion", **kw})   # stochastic: the seed drives the noise
    assert torch.equal(run(1).samples, run(1).samples)
    assert not torch.equal(run(1).samples, run(2).samples)
    assert run(1).nfe == 41 and run(1, denoise=False).nfe == 40
    assert run(1, predictor="heun").nfe == 80   # two per step, one in the last (an Euler step)
    assert run(1, corrector="langevin", corrector_steps=3).nfe == 40 * 4 + 1
    assert run(1, corrector=Langevin(0.1, 2)).nfe == 40 * 3 + 1
    out = run(1, return_path=True)
    assert isinstance(out, SamplerOutput) and out.samples.shape == (42, 300, 2)


# Output variance minus 1 after 100 uniform steps for data N(0, I) under the VP SDE (score -x), from the exact variance
# recursion of chapter 9 (every step is linear for Gaussian data). The PF drift is 0 here, yet DDIM is not exact:
# with alpha = cos(theta), sigma = sin(theta) its step multiplies x by cos(theta - theta'), so the variance is
# prod cos^2(dtheta) = 1 - O(1/N). Heun and the multistep samplers are of order 2 or more: O(1/N^2), below 0.005 here
# (Heun's Euler last step adds one DDIM factor cos^2(dtheta_N), about 1 - 1e-3 on this grid).
def _ddim_gaussian_bias(steps):
    a, s = VPSDE().marginal_coeffs(sampling_times(VPSDE(), steps, dtype=torch.float64))
    return (torch.atan2(s, a).diff().cos() ** 2).prod().item() - 1


GAUSSIAN_BIAS_100 = {"euler_maruyama": 0.01415, "reverse_diffusion": 0.02827, "ancestral": -0.07816,
                     "ddim": _ddim_gaussian_bias(100), "heun": 0.0, "dpm_solver_2m": 0.0, "dpm_solver_3m": 0.0,
                     "unipc": 0.0, "ipndm": 0.0}
SECOND_ORDER_OR_MORE = ("heun", "dpm_solver_2m", "dpm_solver_3m", "unipc", "ipndm")


@pytest.mark.parametrize("name", list(PREDICTORS))
def test_any_rank_dtype_device_and_gaussian_variance(device, name):
    "Samples of shape (B, 3, 4, 4) for data N(0, I): right shape, dtype, device, and the predicted output variance."
    sde, g = VPSDE(), torch.Generator(device=device).manual_seed(0)
    out = sample(sde, lambda x, t: -x, (2000, 3, 4, 4), predictor=name, steps=100, generator=g, denoise=False,
                 dtype=torch.float64, device=device)
    x = out.samples
    assert x.shape == (2000, 3, 4, 4) and x.dtype == torch.float64 and x.device.type == device and out.nfe == (
        199 if name == "heun" else 100)
    n = x.numel()   # independent N(0, 1 + bias) coordinates
    assert abs(x.mean().item()) < 4 / math.sqrt(n)
    slack = 0.005 if name in SECOND_ORDER_OR_MORE else 0.0
    assert abs(x.var().item() - 1 - GAUSSIAN_BIAS_100[name]) < 4 * math.sqrt(2 / n) + slack


def test_corrector_keeps_exact_samples_at_small_snr():
    sde = VPSDE()
    alpha, sigma = sde.marginal_coeffs(torch.tensor([0.1]))
    p_t = RING.marginal(alpha.item(), sigma.item())
    x = p_t.sample(5000, generator=torch.Generator().manual_seed(0))
    E = expected_log_prob(p_t.log_prob, p_t.sample, n=200_000, generator=torch.Generator().manual_seed(1))[0]
    t, g = torch.full((5000,), 0.1), torch.Generator().manual_seed(2)
    for corr in (Langevin(0.03, 50), AnnealedLangevin(0.03, 50)):
        y = corr.step(sde, RING.score_fn(sde), x, t, g)[0]
        gap, se = mean_logp_gap(y, p_t.log_prob, E, return_se=True)
        assert abs(gap) < 4 * se, (corr, gap, se)


def test_nan_is_reported_with_its_step():
    sde, score = VPSDE(), RING.score_fn(VPSDE())
    bad = lambda x, t: torch.where((t < 0.5)[:, None], torch.nan, score(x, t))
    with pytest.raises(FloatingPointError, match=r"step 26 of 50"):   # the uniform grid: t_26 = 0.4805
        sample(sde, bad, (10, 2), predictor="reverse_diffusion", steps=50)
    with pytest.raises(FloatingPointError, match="ODE"):
        ode_sample(sde, lambda x, t: torch.full_like(x, torch.inf), (10, 2), method="euler", steps=5)


def test_sampling_times():
    for sde in SDES.values():
        for spacing in SPACINGS:
            ts = sampling_times(sde, 30, eps=1e-3, spacing=spacing, dtype=torch.float64)
            assert ts.shape == (31,) and ts[0] == sde.T and ts[-1] == 1e-3 and (ts.diff() < 0).all()
    ts = sampling_times(VPSDE(), 10, spacing="logsnr", dtype=torch.float64)
    a, s = VPSDE().marginal_coeffs(ts)
    lam = (a / s).log()
    assert (lam.diff() - lam.diff().mean()).abs().max() < 1e-9
    # time-3/2 / time-quadratic / time-cubic (eq. eq-spacings): equal steps in t^(1/k), (eps^(1/k) - T^(1/k))/N, to float64
    # rounding; also with T = 2^k, where T^(1/k) = 2 != T (at T = 1 a grid without the roots would pass); eps = 10^-k has
    # the exact root 0.1
    class LongVP(VPSDE):
        def __init__(self, T):
            super().__init__()
            self._T = T
        T = property(lambda self: self._T)
    assert set(SPACINGS) == {"uniform", "logsnr", "edm", "quadratic", "cubic", "threehalves"}
    for spacing, k in (("threehalves", 1.5), ("quadratic", 2), ("cubic", 3)):
        for sde, root_T in ((VPSDE(), 1.0), (LongVP(2.0 ** k), 2.0)):
            ts = sampling_times(sde, 10, eps=10.0 ** -k, spacing=spacing, dtype=torch.float64)
            assert ts[0] == sde.T and ts[-1] == 10.0 ** -k
            want = torch.full((10,), (0.1 - root_T) / 10, dtype=torch.float64)
            assert torch.allclose(ts.pow(1 / k).diff(), want, rtol=0, atol=1e-14), (spacing, root_T)
    # EDM (eq. eq-spacings): equal steps in tau^(1/rho), tau = sigma/alpha, for the default rho = 7 and for rho = 3;
    # the grid comes from bisection in t (64 halvings), so the steps agree to ~1e-12 relative
    for rho, kw in ((7.0, {}), (3.0, {"rho": 3.0})):
        ts = sampling_times(VPSDE(), 12, spacing="edm", dtype=torch.float64, **kw)
        a, s = VPSDE().marginal_coeffs(ts)
        steps = (s / a).pow(1 / rho).diff()
        assert ((steps - steps.mean()).abs() / steps.abs().mean()).max() < 1e-9, rho
    with pytest.raises(ValueError, match="`rho`"):
        sampling_times(VPSDE(), 4, spacing="edm", rho=0.0)
    assert (sampling_times(VPSDE(), 4, spacing="edm", rho=0.5, dtype=torch.float64).diff() < 0).all()   # any rho > 0


@pytest.mark.parametrize("call,match", [
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), steps=0), "`steps`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), eps=0.0), "`eps`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), eps=1.0), "`eps`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), spacing="cosine"), "`spacing`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), predictor="euler"), "`predictor`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), corrector=3), "`corrector`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), corrector="langevin", snr=-1), "`snr`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), x_T=torch.zeros(5, 2)), "`x_T`"),
    (lambda: sample(VPSDE(), lambda x, t: -x), "`shape` or `x_T`"),
    (lambda: sample(VPSDE(), lambda x, t: x[:, :1], (4, 2), steps=2), "`score_fn`"),
    (lambda: sample("vp", lambda x, t: -x, (4, 2)), "`sde`"),
    (lambda: DDIM(eta=2.0), "`eta`"),
    (lambda: UniPC(order=4), "`order`"),
    (lambda: UniPC(order=True), "`order`"),
    (lambda: UniPC(variant="bh3"), "`variant`"),
    (lambda: IPNDM(order=5), "`order`"),
    (lambda: IPNDM(order=0), "`order`"),
    (lambda: AncestralSampling("large"), "`variance`"),
    (lambda: Langevin(n_steps=0), "`n_steps`"),
    (lambda: ode_sample(VPSDE(), lambda x, t: -x, (4, 2), method="rk45"), "`method`"),
    (lambda: ode_sample(VPSDE(), lambda x, t: -x, (4, 2), method="euler"), "needs `steps`"),
    (lambda: ode_sample(VPSDE(), lambda x, t: -x, (4, 2), steps=10), "`steps`"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_registries():
    assert set(PREDICTORS) == {"euler_maruyama", "reverse_diffusion", "ancestral", "ddim", "heun", "dpm_solver_2m",
                               "dpm_solver_3m", "unipc", "ipndm"}
    assert PREDICTORS["dpm_solver_3m"] is DPMSolver3M and PREDICTORS["unipc"] is UniPC and PREDICTORS["ipndm"] is IPNDM
    assert set(CORRECTORS) == {"langevin", "annealed_langevin"}
    assert "DDIM(eta=0.5)" in repr(DDIM(0.5))


# ---------------------------------------------------------------- silent wrong answers (reliability issue, part 2)
def _late(k, bad):
    "A score (-x) that misbehaves from its k-th call on: `bad(x)` is what it returns then."
    calls = [0]

    def score(x, t):
        calls[0] += 1
        return -x if calls[0] < k else bad(x)
    return score


@pytest.mark.parametrize("bad,err", [(lambda x: -x[:1], ValueError), (lambda x: -x.double(), TypeError),
                                     (lambda x: torch.zeros(x.shape, dtype=torch.long), TypeError),
                                     (lambda x: -x[..., :1], ValueError)],
                         ids=["batch-1", "float64", "int", "broadcastable"])
def test_score_output_is_checked_on_every_call(bad, err):
    "A score that goes wrong at its 3rd call (after two good ones) is refused, not broadcast or promoted silently."
    with pytest.raises(err, match="`score_fn`"):
        sample(VPSDE(), _late(3, bad), (5, 2), steps=6, dtype=torch.float32)
    with pytest.raises(err, match="`score_fn`"):
        ode_sample(VPSDE(), _late(3, bad), (5, 2), method="euler", steps=6, dtype=torch.float32)
    with pytest.raises(err, match="`score_fn`"):
        sample(VPSDE(), _late(3, bad), (5, 2), steps=6, corrector=Langevin(0.1, per_sample=True), dtype=torch.float32)


def test_samplers_build_no_graph_unless_asked():
    "A score with trainable parameters: no graph by default; with enable_grad the gradient matches finite differences."
    w = torch.nn.Parameter(torch.tensor(1.3, dtype=torch.float64))
    net = torch.nn.Linear(2, 2).double()
    x_T = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for out in (sample(VPSDE(), lambda x, t: net(x) - x, x_T=x_T, steps=20).samples,
                ode_sample(VPSDE(), lambda x, t: net(x) - x, x_T=x_T).samples,
                sample(VPSDE(), lambda x, t: net(x) - x, x_T=x_T, steps=20, corrector="langevin").samples):
        assert out.grad_fn is None and not out.requires_grad
    # gradient through a deterministic sampler (DDIM, eta = 0), d/dw of the mean of the samples, vs central differences
    run = lambda w_, **kw: sample(VPSDE(), lambda x, t: -w_ * x, x_T=x_T, predictor="ddim", steps=20, **kw).samples.mean()
    (g,) = torch.autograd.grad(run(w, enable_grad=True), w)
    h = 1e-5
    fd = (run(torch.tensor(1.3 + h, dtype=torch.float64)) - run(torch.tensor(1.3 - h, dtype=torch.float64))) / (2 * h)
    assert abs(g.item() - fd.item()) < 1e-7 * (1 + abs(fd.item())), (g, fd)   # central differences: O(h^2) ~ 1e-10
    with torch.inference_mode(), pytest.raises(ValueError, match="`enable_grad`"):
        sample(VPSDE(), lambda x, t: -x, (4, 2), steps=2, enable_grad=True)
    with pytest.raises(TypeError, match="`enable_grad`"):
        sample(VPSDE(), lambda x, t: -x, (4, 2), steps=2, enable_grad="yes")


def test_x_T_that_contradicts_dtype_or_device_is_refused():
    x_T = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="`x_T`.*`dtype`"):
        sample(VPSDE(), lambda x, t: -x, x_T=x_T, dtype=torch.float64, steps=2)
    with pytest.raises(ValueError, match="`device`"):   # contradicts x_T (or, without CUDA, is not available)
        sample(VPSDE(), lambda x, t: -x, x_T=x_T, device="cuda", steps=2)
    with pytest.raises(ValueError, match="`x_T`.*`dtype`"):
        ode_sample(VPSDE(), lambda x, t: -x, x_T=x_T, dtype=torch.float64)
    # agreeing arguments are fine
    assert sample(VPSDE(), lambda x, t: -x, x_T=x_T, dtype=torch.float32, device="cpu", steps=2).samples.dtype == torch.float32


@pytest.mark.parametrize("call,err,match", [
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), dtype=torch.long, steps=2), TypeError, "`dtype`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), dtype=torch.complex64, steps=2), TypeError, "`dtype`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), dtype="float32", steps=2), TypeError, "`dtype`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), device="meta", steps=2), ValueError, "`device`"),
    (lambda: ode_sample(VPSDE(), lambda x, t: -x, (4, 2), device="meta"), ValueError, "`device`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, x_T=torch.zeros(4, 2, device="meta"), steps=2), ValueError, "`x_T`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, x_T=torch.zeros(4, 2, dtype=torch.long), steps=2), TypeError, "`x_T`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), generator=3, steps=2), TypeError, "`generator`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), project="clip", steps=2), TypeError, "`project`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), project=lambda x, t: x[:1], steps=2), ValueError, "`project`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, x_T=torch.full((4, 2), math.nan), steps=2), ValueError, "`x_T`"),
    (lambda: ode_sample(VPSDE(), lambda x, t: -x, x_T=torch.full((4, 2), math.nan)), ValueError, "`x_T`"),
    (lambda: ode_sample(VPSDE(), lambda x, t: -x, (4, 2), rtol=-1.0), ValueError, "`rtol`"),
    (lambda: ode_sample(VPSDE(), lambda x, t: -x, (4, 2), rtol=0.0, atol=0.0), ValueError, "`rtol`"),
    (lambda: ode_sample(VPSDE(), lambda x, t: -x, (4, 2), atol=math.inf), ValueError, "`atol`"),
    (lambda: Langevin(per_sample=1), TypeError, "`per_sample`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, x_T=torch.zeros(0, 2), steps=2), ValueError, "`x_T`"),
    (lambda: ode_sample(VPSDE(), lambda x, t: -x, x_T=torch.zeros(0, 2)), ValueError, "`x_T`"),
    (lambda: sampling_times(VPSDE(), 4, dtype=torch.long), TypeError, "`dtype`"),
    (lambda: tweedie_denoise(VPSDE(), lambda x, t: -x, torch.zeros(3, 2, dtype=torch.long), torch.full((3,), 0.5)),
     TypeError, "`x`"),
    (lambda: tweedie_denoise(VPSDE(), lambda x, t: -x, torch.zeros(3, 2), torch.full((2,), 0.5)), ValueError, "`t`"),
    (lambda: sample(VPSDE(N=10), lambda x, t: -x, (4, 2), steps=3, corrector="langevin"), ValueError, "`N`"),
])
def test_unsupported_inputs_are_named(call, err, match):
    "Integer/complex dtypes, the meta device, NaN starts and bad tolerances: a named error, never a raw torch error."
    with pytest.raises(err, match=match):
        call()


def test_nan_score_in_an_adaptive_ode_solve_names_score_and_time():
    "torchdiffeq would raise `AssertionError: underflow in dt`; we name the score and the time where it first went bad."
    sde = VPSDE()
    bad = lambda x, t: torch.where((t < 0.5)[:, None], torch.nan, -x)
    with pytest.raises(ValueError, match=r"`score_fn`") as info:
        ode_sample(sde, bad, (8, 2), dtype=torch.float64)
    assert isinstance(info.value, FloatingPointError)   # NonFiniteError is both
    t_bad = float(str(info.value).split("t = ")[1].split(" ")[0])
    assert 0.0 < t_bad < 0.5


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_half_precision_samples_are_float32_samples_rounded(low):
    "float16/bfloat16 samples run in float32 with a float32 score: exactly the float32 run, rounded once at the end."
    sde, score = VPSDE(), RING.score_fn(VPSDE())
    for kw in (dict(predictor="euler_maruyama", corrector="langevin"), dict(predictor="dpm_solver_2m")):
        ref = sample(sde, score, (200, 2), steps=30, generator=torch.Generator().manual_seed(1), dtype=torch.float32, **kw)
        out = sample(sde, score, (200, 2), steps=30, generator=torch.Generator().manual_seed(1), dtype=low, **kw)
        assert out.samples.dtype == low and torch.equal(out.samples, ref.samples.to(low)) and out.nfe == ref.nfe
    ref = ode_sample(sde, score, (200, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float32)
    out = ode_sample(sde, score, (200, 2), generator=torch.Generator().manual_seed(2), dtype=low)
    assert out.samples.dtype == low and torch.equal(out.samples, ref.samples.to(low))
    # a given low-precision x_T is upcast once; the path comes back in the samples' dtype
    x_T = sde.prior_sampling((50, 2), generator=torch.Generator().manual_seed(3)).to(low)
    path = sample(sde, score, x_T=x_T, steps=5, return_path=True, denoise=True).samples
    assert path.dtype == low and path.shape == (7, 50, 2) and torch.equal(path[0], x_T)


def test_overflow_of_the_samples_dtype_is_reported():
    "VE samples at sigma_max = 1e6 fit float32 but not float16 (max 65504): an error, not inf."
    sde = VESDE(sigma_max=1e6)
    with pytest.raises(ValueError, match="`dtype`"):
        sample(sde, lambda x, t: torch.zeros_like(x), (20, 2), steps=3, denoise=False, dtype=torch.float16,
               generator=torch.Generator().manual_seed(0))


def test_langevin_per_sample_step_ignores_other_samples():
    """Song et al.'s corrector averages the norms over the batch: changing other rows of x_T moves row 0. With
    per_sample=True row 0's trajectory is bit-exact whatever the other rows are (same generator, same noise)."""
    sde, score = VPSDE(), RING64.score_fn(VPSDE())
    x_T = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_T2 = x_T.clone()
    x_T2[1:] = 3 * x_T[1:].flip(0)
    run = lambda x, corr: sample(sde, score, x_T=x, steps=40, corrector=corr,
                                 generator=torch.Generator().manual_seed(1)).samples
    a, b = run(x_T, Langevin(0.16, per_sample=True)), run(x_T2, Langevin(0.16, per_sample=True))
    assert torch.equal(a[0], b[0])
    a, b = run(x_T, "langevin"), run(x_T2, "langevin")
    assert (a[0] - b[0]).abs().max() > 1e-3   # the batch convention: far above float64 rounding
    # one step by hand, both conventions: delta = 2 kappa (r |z| / |s|)^2 with batch means or per-sample norms
    t = torch.full((64,), 0.3, dtype=torch.float64)
    z = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s = score(x_T, t)
    kappa = 1 - sde.beta(t[:1]).item() / sde.N
    for per_sample, ratio in ((False, z.norm(dim=1).mean() / s.norm(dim=1).mean()), (True, (z.norm(dim=1) / s.norm(dim=1))[:, None])):
        delta = 2 * kappa * (0.16 * ratio) ** 2
        got, mean = Langevin(0.16, per_sample=per_sample).step(sde, score, x_T, t, torch.Generator().manual_seed(2))
        torch.testing.assert_close(mean, x_T + delta * s, rtol=0, atol=1e-13)
        torch.testing.assert_close(got, x_T + delta * s + (2 * delta).sqrt() * z, rtol=0, atol=1e-13)
    assert "per_sample=True" in repr(Langevin(per_sample=True))


# ---------------------------------------------------------------- the default: predictor="auto" (issue 10, item 4)
@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("steps", [1, 4, AUTO_CUBIC_MIN_STEPS - 1, AUTO_CUBIC_MIN_STEPS, 12, AUTO_SWITCH_STEPS[0] - 1,
                                   AUTO_SWITCH_STEPS[0], 30, AUTO_SWITCH_STEPS[1] - 1, AUTO_SWITCH_STEPS[1], 60])
def test_auto_is_the_recommended_sampler_bit_for_bit(sde_name, steps):
    """No predictor (bench/SUITE.md, bench/LEARNED.md): on VP and sub-VP, UniPC-2 below N1 steps (on the time-quadratic
    grid below AUTO_CUBIC_MIN_STEPS, on the time-cubic grid from there for the ring's 2 numbers per sample), iPNDM-4 on
    the time-quadratic grid from N1 to
    N2 - 1, UniPC-3 on the log-SNR grid from N2; on VE, UniPC-2 then UniPC-3, both on the log-SNR grid. The default
    call equals the explicit call of that sampler, to its end time `recommended_eps`, bit for bit, with and without the
    Tweedie step and the path."""
    sde = SDES[sde_name]
    name, grid, options = recommended_sampler(steps, sde)
    eps = recommended_eps(steps, sde)
    n1, n2 = AUTO_SWITCH_STEPS
    if isinstance(sde, VESDE):   # the quadratic grid is measured on VP and sub-VP only
        want = ("unipc", "logsnr", {}) if steps < n1 else ("unipc", "logsnr", {"order": 3})
    else:
        want = (("unipc", "quadratic", LOF) if steps < AUTO_CUBIC_MIN_STEPS else ("unipc", "cubic", LOF) if steps < n1
                else ("ipndm", "quadratic", {}) if steps < n2 else ("unipc", "logsnr", {"order": 3}))
    assert (name, grid, options) == want
    assert recommended_sampler(steps) == recommended_sampler(steps, VPSDE())   # no SDE: the suite's VP
    pred = lambda: PREDICTORS[name](**options)
    run = lambda **kw: sample(sde, RING.score_fn(sde), (64, 2), steps=steps, generator=torch.Generator().manual_seed(4),
                              **kw)
    dn = recommended_denoise(steps, sde)   # Tweedie's step: not on VP below AUTO_DENOISE_MIN_STEPS steps
    assert dn == (not isinstance(sde, VPSDE) or steps >= AUTO_DENOISE_MIN_STEPS)
    for extra in ({}, {"denoise": False}, {"denoise": True}, {"return_path": True}):
        auto, explicit = run(**extra), run(predictor=pred(), spacing=grid, eps=eps, **{"denoise": dn, **extra})
        assert torch.equal(auto.samples, explicit.samples)
        assert auto.nfe == explicit.nfe == steps + extra.get("denoise", dn)
    assert torch.equal(run(predictor="auto").samples, run().samples)   # "auto" by name is the default
    # "auto" with a grid given: the recommended predictor on that grid
    assert torch.equal(run(spacing="edm").samples, run(predictor=pred(), spacing="edm", eps=eps, denoise=dn).samples)
    if options and not (options == LOF and steps < 15):   # the options matter: the same predictor with its own
        # defaults gives other samples ("always" = True, diffusers' rule, in runs of fewer than 15 steps)
        assert not torch.equal(run().samples, run(predictor=name, spacing=grid, eps=eps, denoise=dn).samples)
    # the choice is not the old default: reverse diffusion on the uniform grid gives other samples
    assert not torch.equal(run().samples, run(predictor="reverse_diffusion", spacing="uniform").samples)


@pytest.mark.parametrize("steps", [4, AUTO_CUBIC_MIN_STEPS - 1, AUTO_CUBIC_MIN_STEPS, AUTO_SWITCH_STEPS[0] - 1,
                                   AUTO_SWITCH_STEPS[0], AUTO_SWITCH_STEPS[1] - 1, AUTO_SWITCH_STEPS[1]])
def test_auto_drops_the_quadratic_grid_for_small_data(steps):
    """`data_std` below AUTO_QUAD_MIN_DATA_STD (bench/SUITE_SCALE.md: at data std 0.25 and 0.35 the log-SNR grid is
    closer than the time-quadratic one on more mixtures at every budget, and the time-cubic one closer than both): on VP
    and sub-VP, UniPC-2 on the time-cubic grid below N1 steps, then UniPC-3 on the log-SNR grid; at and above the
    threshold, and with no data_std, the time-quadratic and time-cubic rule; VE ignores data_std.
    `sample(..., data_std=...)` runs that choice bit for bit; a data_std that is not a positive finite number is refused by name."""
    from sde_diffusion.sampling import AUTO_QUAD_MIN_DATA_STD as S0
    n1 = AUTO_SWITCH_STEPS[0]
    small = ("unipc", "cubic", LOF) if steps < n1 else ("unipc", "logsnr", {"order": 3})
    for sde in (VPSDE(), SubVPSDE()):
        for std in (0.1, 0.25, math.nextafter(S0, 0)):
            assert recommended_sampler(steps, sde, data_std=std) == small
        for std in (S0, 1.0, 4):
            assert recommended_sampler(steps, sde, data_std=std) == recommended_sampler(steps, sde)
        assert recommended_sampler(steps, sde)[1] == ("cubic" if AUTO_CUBIC_MIN_STEPS <= steps < AUTO_SWITCH_STEPS[0]
                                                      else "quadratic" if steps < AUTO_SWITCH_STEPS[1] else "logsnr")
    assert recommended_sampler(steps, VESDE(), data_std=0.25) == recommended_sampler(steps, VESDE(), data_std=2.0)
    sde, score = VPSDE(), RING.score_fn(VPSDE())
    run = lambda **kw: sample(sde, score, (64, 2), steps=steps, generator=torch.Generator().manual_seed(7), **kw).samples
    name, grid, options = small
    assert torch.equal(run(data_std=0.25), run(predictor=PREDICTORS[name](**options), spacing=grid,
                                               eps=recommended_eps(steps, sde)))
    assert torch.equal(run(data_std=1.0), run())
    if steps < AUTO_CUBIC_MIN_STEPS or AUTO_SWITCH_STEPS[0] <= steps < AUTO_SWITCH_STEPS[1]:   # the rules differ here,
        assert not torch.equal(run(data_std=0.25), run())                                         # so data_std counts
    else:   # the same sampler; small data keep Tweedie's step (recommended_denoise), which the default drops below 13
        assert recommended_denoise(steps, sde, 0.25)
        assert torch.equal(run(data_std=0.25), run(denoise=True))
    # with an explicit predictor (or a corrector) data_std does not change anything
    assert torch.equal(run(predictor="ddim", data_std=0.25), run(predictor="ddim"))
    for bad in (0, -1.0, math.nan, math.inf, "0.5", True):
        with pytest.raises((ValueError, TypeError), match="data_std"):
            recommended_sampler(steps, data_std=bad)
        with pytest.raises((ValueError, TypeError), match="data_std"):
            run(data_std=bad)


@pytest.mark.parametrize("steps", [AUTO_CUBIC_MIN_STEPS - 1, AUTO_CUBIC_MIN_STEPS, 10, 11, 12, AUTO_SWITCH_STEPS[0] - 1,
                                   AUTO_SWITCH_STEPS[0], 24, AUTO_SWITCH_STEPS[1] - 1, AUTO_SWITCH_STEPS[1]])
def test_auto_in_many_dimensions(steps):
    """bench/SUITE_DIM.md: with more than AUTO_CUBIC_MAX_DIM numbers per sample the time-cubic grid's long steps at high
    noise shrink broad components, so on VP and sub-VP UniPC-2 stays on the time-quadratic grid from AUTO_CUBIC_MIN_STEPS
    to N1 - 1 steps; with more than AUTO_IPNDM_MAX_DIM iPNDM's scale error costs D times in log-density (section E,
    chapter 9), so UniPC-3 on the log-SNR grid replaces iPNDM-4 from N1 to N2 - 1; elsewhere (fewer steps, N2 and more,
    VE, small data_std) dim changes nothing. D is the product of the trailing dimensions of the samples: `sample` passes
    it, bit for bit."""
    n1, n2 = AUTO_SWITCH_STEPS
    cubic_range, ipndm_range = AUTO_CUBIC_MIN_STEPS <= steps < n1, n1 <= steps < n2
    assert AUTO_CUBIC_MAX_DIM < AUTO_IPNDM_MAX_DIM < AUTO_THREEHALVES_MIN_DIM
    assert AUTO_CUBIC_MIN_STEPS <= AUTO_THREEHALVES_MAX_STEPS < AUTO_SWITCH_STEPS[0]

    def expected(sde, d):
        low = recommended_sampler(steps, sde)
        if isinstance(sde, VESDE):
            return low
        if steps <= AUTO_THREEHALVES_MAX_STEPS and d >= AUTO_THREEHALVES_MIN_DIM:   # bench/ORDER_HD.md: UniPC-3, time-3/2 grid
            return ("unipc", "threehalves", {"order": 3, **LOF})
        if cubic_range and d > AUTO_CUBIC_MAX_DIM:
            assert low == ("unipc", "cubic", LOF)
            return ("unipc", "quadratic", LOF)
        if ipndm_range and d > AUTO_IPNDM_MAX_DIM:
            assert low == ("ipndm", "quadratic", {})
            return ("unipc", "logsnr", {"order": 3})
        return low

    for sde in (VPSDE(), SubVPSDE(), VESDE()):
        for d in (1, 2, AUTO_CUBIC_MAX_DIM, AUTO_CUBIC_MAX_DIM + 1, AUTO_IPNDM_MAX_DIM, AUTO_IPNDM_MAX_DIM + 1,
                  AUTO_THREEHALVES_MIN_DIM - 1, AUTO_THREEHALVES_MIN_DIM, 3 * 32 * 32):
            assert recommended_sampler(steps, sde, dim=d) == expected(sde, d)
            # small data keep their own rule (the cubic grid below N1, UniPC-3 from there) in any dimension
            assert recommended_sampler(steps, sde, data_std=0.25, dim=d) == recommended_sampler(steps, sde, data_std=0.25)
    sde = VPSDE()
    score = lambda x, t: -x   # data N(0, I): any shape
    for shape in ((16, 2, 4), (16, 9), (16, 3, 3), (16, 63), (16, 64), (16, 4, 4, 4)):
        D = math.prod(shape[1:])
        name, grid, options = recommended_sampler(steps, sde, dim=D)
        assert (name, grid, options) == expected(sde, D)
        x_T = sde.prior_sampling(shape, generator=torch.Generator().manual_seed(8))
        auto = sample(sde, score, x_T=x_T, steps=steps).samples
        assert torch.equal(auto, sample(sde, score, x_T=x_T, steps=steps, predictor=PREDICTORS[name](**options),
                                        spacing=grid, eps=recommended_eps(steps, sde),
                                        denoise=recommended_denoise(steps, sde)).samples)
        assert torch.equal(auto, sample(sde, score, shape, steps=steps, generator=torch.Generator().manual_seed(8)).samples)
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises((ValueError, TypeError), match="`dim`"):
            recommended_sampler(steps, dim=bad)


def _sharp_mixture():
    "2-D, three components, two of them with an axis std of 0.02: the scale the cubic grid's last steps cross."
    f = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    covs = torch.stack([torch.diag(f(*v)) for v in ((0.3**2, 0.02**2), (0.02**2, 0.02**2), (0.5**2, 0.4**2))])
    return GaussianMixture(f(0.5, 0.3, 0.2), f([-1.0, 0.0], [1.0, 0.5], [0.3, -1.2]), covs)


def _flow_map(sde, score, x_T):
    "The converged flow map of x_T (UniPC-3, 400 log-SNR steps, then Tweedie's step at 1e-3), float64."
    return sample(sde, score, x_T=x_T, steps=400, predictor=UniPC(order=3), spacing="logsnr", eps=SAMPLE_EPS,
                  denoise=True).samples


@pytest.mark.parametrize("steps", [1, 9, AUTO_DENOISE_MIN_STEPS - 1, AUTO_DENOISE_MIN_STEPS, 14, 100])
def test_recommended_denoise(steps):
    """Tweedie's step of `sample`'s default (chapter 9, bench/SUITE.md): not on the VP SDE below
    AUTO_DENOISE_MIN_STEPS steps (NFE = steps), unless data_std is below AUTO_QUAD_MIN_DATA_STD; always on sub-VP and
    VE and from AUTO_DENOISE_MIN_STEPS. An explicit predictor, a corrector or `project` keep it; an explicit `denoise`
    wins; a `denoise` that is not True, False or None is refused by name, as are bad arguments of the rule."""
    from sde_diffusion.sampling import AUTO_QUAD_MIN_DATA_STD as S0
    below = steps < AUTO_DENOISE_MIN_STEPS
    assert recommended_denoise(steps) == recommended_denoise(steps, VPSDE()) == (not below)
    assert recommended_denoise(steps, VPSDE(), data_std=S0) == recommended_denoise(steps, VPSDE(), data_std=3.0) == (not below)
    assert recommended_denoise(steps, VPSDE(), data_std=math.nextafter(S0, 0))
    assert recommended_denoise(steps, SubVPSDE()) and recommended_denoise(steps, VESDE())
    sde, score = VPSDE(), RING.score_fn(VPSDE())
    run = lambda **kw: sample(sde, score, (64, 2), steps=steps, generator=torch.Generator().manual_seed(3), **kw)  # noqa: E731
    out = run()
    assert out.nfe == steps + (not below)
    assert torch.equal(out.samples, run(denoise=not below).samples)
    assert run(denoise=True).nfe == steps + 1 and run(denoise=False).nfe == steps
    assert run(predictor="ddim").nfe == steps + 1                   # an explicit predictor keeps Tweedie's step
    assert run(corrector="langevin").nfe == 2 * steps + 1           # so does "auto" with a corrector (reverse diffusion)
    assert run(data_std=0.25).nfe == steps + 1                      # and small data
    for bad in (1, 0, "yes", 1.0):
        with pytest.raises(TypeError, match="`denoise`"):
            run(denoise=bad)
    for kw, name in (({"steps": 0}, "steps"), ({"steps": steps, "sde": "vp"}, "sde"),
                     ({"steps": steps, "data_std": -1.0}, "data_std")):
        with pytest.raises((ValueError, TypeError), match=f"`{name}`"):
            recommended_denoise(**kw)


@pytest.mark.parametrize("nfe", [8, 10, 12])
def test_default_spends_its_last_evaluation_on_a_step(nfe):
    """At NFE < AUTO_DENOISE_MIN_STEPS + 1 the default runs `nfe` steps without Tweedie's step, and its samples are
    nearer the converged flow map of the same x_T than those of `nfe` - 1 steps and Tweedie's step: the mean squared
    distance is smaller by more than 3 standard errors of the paired difference (4000 samples of a 2-D mixture with
    components of std 0.02; measured 4 to 8 standard errors)."""
    sde, gm = VPSDE(), _sharp_mixture()
    score = gm.score_fn(sde)
    x_T = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = _flow_map(sde, score, x_T)
    default = sample(sde, score, x_T=x_T, steps=nfe)
    tweedie = sample(sde, score, x_T=x_T, steps=nfe - 1, denoise=True)
    assert default.nfe == tweedie.nfe == nfe
    d = (tweedie.samples - ref).square().sum(1) - (default.samples - ref).square().sum(1)
    assert d.mean() > 3 * d.std() / math.sqrt(d.numel())


@pytest.mark.parametrize("steps", [15, 16, 18])
def test_default_has_no_15_step_cliff(steps):
    """UniPC-2 on the time-cubic grid with a full-order last step (`lower_order_final=True` does nothing from 15
    steps, diffusers' rule) over-disperses components of std 0.02: the mean log-density gap to the converged flow map
    of the same x_T drops by about 0.05 nats from 14 to 15 steps. The default's `lower_order_final="always"` keeps the
    last step first order: its gap is smaller in size than the full-order one's by more than 3 standard errors of
    their paired difference, and the two agree bit for bit at 14 steps."""
    sde, gm = VPSDE(), _sharp_mixture()
    score = gm.score_fn(sde)
    x_T = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lp_ref = gm.log_prob(_flow_map(sde, score, x_T))
    run = lambda n, lof: sample(sde, score, x_T=x_T, steps=n, predictor=UniPC(2, lower_order_final=lof),  # noqa: E731
                                spacing="cubic", eps=SAMPLE_EPS, denoise=True).samples
    assert recommended_sampler(steps, sde, dim=2) == ("unipc", "cubic", LOF)
    default = sample(sde, score, x_T=x_T, steps=steps).samples
    assert torch.equal(default, run(steps, "always"))
    gap_default, gap_full = gm.log_prob(default) - lp_ref, gm.log_prob(run(steps, True)) - lp_ref
    diff = gap_full - gap_default   # paired: the same x_T
    se = diff.std() / math.sqrt(diff.numel())
    assert gap_full.mean() < gap_default.mean() - 3 * se              # the full-order step over-disperses
    assert abs(gap_default.mean()) < abs(gap_full.mean()) - 3 * se     # and the default's gap is the smaller one
    assert torch.equal(run(14, "always"), run(14, True))


@pytest.mark.parametrize("steps", [1, AUTO_SWITCH_STEPS[1] - 1, AUTO_SWITCH_STEPS[1], 98, 99, 1000])
def test_recommended_eps(steps):
    """The default's end time (bench/SUITE_EPS_DEFAULT.md): SAMPLE_EPS = 1e-3, on the VP SDE 1e-4 from 49 steps and
    1e-5 from 99 (AUTO_EPS); sub-VP and VE keep 1e-3. `sample` uses it only for "auto": an explicit predictor, a corrector or
    `project` keep SAMPLE_EPS, and an explicit `eps` always wins."""
    want = SAMPLE_EPS
    for n, e in AUTO_EPS:
        want = e if steps >= n else want
    assert SAMPLE_EPS == 1e-3 and AUTO_EPS == ((AUTO_SWITCH_STEPS[1], 1e-4), (99, 1e-5))
    assert recommended_eps(steps) == recommended_eps(steps, VPSDE()) == want
    assert recommended_eps(steps, SubVPSDE()) == recommended_eps(steps, VESDE()) == SAMPLE_EPS
    sde, score = VPSDE(), RING64.score_fn(VPSDE())
    x_T = sde.prior_sampling((32, 2), generator=torch.Generator().manual_seed(9)).double()
    run = lambda **kw: sample(sde, score, x_T=x_T, steps=steps, generator=torch.Generator().manual_seed(10), **kw).samples
    name, grid, options = recommended_sampler(steps, sde)
    explicit = lambda eps: run(predictor=PREDICTORS[name](**options), spacing=grid, eps=eps,
                               denoise=recommended_denoise(steps, sde))
    auto = run()
    assert torch.equal(auto, explicit(want)) and torch.equal(auto, run(eps=None))
    assert torch.equal(run(eps=1e-3), explicit(1e-3))   # an explicit eps wins
    assert torch.equal(run(predictor="reverse_diffusion"), run(predictor="reverse_diffusion", eps=SAMPLE_EPS))
    assert torch.equal(run(corrector="langevin"), run(corrector="langevin", eps=SAMPLE_EPS))
    if want != SAMPLE_EPS:
        assert not torch.equal(auto, explicit(SAMPLE_EPS))
    for bad in (0, -3, 2.5, "9"):
        with pytest.raises((ValueError, TypeError), match="`steps`"):
            recommended_eps(bad)
    with pytest.raises(TypeError, match="`sde`"):
        recommended_eps(steps, "VP")
    for bad in (0.0, -1e-3, 1.5):
        with pytest.raises(ValueError, match="eps"):
            run(eps=bad)


@pytest.mark.parametrize("steps", [99, 249])
def test_the_default_end_time_removes_the_tweedie_over_concentration(steps):
    """Gaussian data N(0, s^2 I): the flow map is linear and stopping at eps then taking Tweedie's step scales the exact
    sample by sqrt(r), r = s^2 / (s^2 + tau(eps)^2), tau = sigma / alpha (eq. eq-eps-limit of chapter 9). With 99 or
    more steps the default runs to 1e-5: its samples' scale matches sqrt(r(1e-5)) far more closely than the 1e-3 end
    time's sqrt(r(1e-3)) differs from it (the sampler's own error is below a tenth of that difference)."""
    sde, s, D = VPSDE(), 0.05, 3
    score = lambda x, t: -x / (sde.marginal_coeffs(t)[0][:, None] ** 2 * s**2 + sde.marginal_coeffs(t)[1][:, None] ** 2)
    x_T = sde.prior_sampling((64, D), generator=torch.Generator().manual_seed(11)).double()
    a_T, s_T = sde.marginal_coeffs(torch.tensor([sde.T], dtype=torch.float64))
    exact = x_T * s / (a_T**2 * s**2 + s_T**2).sqrt()          # the exact flow map to t = 0
    def scale(eps):   # sqrt(r(eps))
        a, sg = sde.marginal_coeffs(torch.tensor([eps], dtype=torch.float64))
        return (s**2 / (s**2 + (sg / a) ** 2)).sqrt().item()
    eps = recommended_eps(steps, sde)
    assert eps < SAMPLE_EPS
    ratio = (sample(sde, score, x_T=x_T, steps=steps).samples / exact).mean().item()
    assert abs(ratio - scale(eps)) < 0.1 * (scale(eps) - scale(SAMPLE_EPS))
    old = (sample(sde, score, x_T=x_T, steps=steps, eps=SAMPLE_EPS).samples / exact).mean().item()
    assert abs(old - scale(SAMPLE_EPS)) < 0.1 * (scale(eps) - scale(SAMPLE_EPS))


def test_auto_with_a_corrector_or_project_is_reverse_diffusion_on_the_uniform_grid():
    """Song et al.'s predictor-corrector and projection samplers: a corrector or `project` moves the state between the
    steps, which the multistep samplers' history would ignore, so "auto" keeps reverse diffusion there (the old default)."""
    sde, score = VPSDE(), RING.score_fn(VPSDE())
    run = lambda **kw: sample(sde, score, (64, 2), steps=12, generator=torch.Generator().manual_seed(5), **kw).samples
    clip = lambda x, t: x.clamp(-1.5, 1.5)
    for extra in ({"corrector": "langevin"}, {"corrector": Langevin(0.1, per_sample=True)}, {"project": clip},
                  {"corrector": "annealed_langevin", "project": clip}):
        assert torch.equal(run(**extra), run(predictor="reverse_diffusion", spacing="uniform", **extra)), extra


@pytest.mark.parametrize("name", list(PREDICTORS))
def test_an_explicit_predictor_keeps_the_uniform_grid(name):
    "Every call that names a predictor (by name, class or instance) runs on the uniform grid, as before 'auto' existed."
    sde, x_T = VPSDE(), RING.sample(32, generator=torch.Generator().manual_seed(6))
    run = lambda pred, **kw: sample(sde, RING.score_fn(sde), x_T=x_T, predictor=pred, steps=7,
                                    generator=torch.Generator().manual_seed(7), **kw).samples
    uniform = run(name, spacing="uniform")
    for pred in (name, PREDICTORS[name], PREDICTORS[name]()):
        assert torch.equal(run(pred), uniform), pred
    assert not torch.equal(run(name, spacing="logsnr"), uniform)


@pytest.mark.parametrize("call,err,match", [
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), predictor="Auto"), ValueError, r"`predictor` must be one of \('auto'"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), predictor=None), TypeError, "`predictor`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), spacing="cosine"), ValueError, "`spacing` must be None or one of"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), spacing=3), ValueError, "`spacing`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), predictor="ddim", spacing=""), ValueError, "`spacing`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), steps=0), ValueError, "`steps`"),
    (lambda: sample(VPSDE(), lambda x, t: -x, (4, 2), steps=2.5), (ValueError, TypeError), "`steps`"),
    (lambda: recommended_sampler(0), ValueError, "`steps`"),
    (lambda: recommended_sampler(5, "VP"), TypeError, "`sde`"),
    (lambda: recommended_sampler(True), (ValueError, TypeError), "`steps`"),
    (lambda: recommended_sampler("10"), (ValueError, TypeError), "`steps`"),
])
def test_bad_auto_arguments_are_named(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_langevin_norms_by_matrix_vector_product():
    "The per-sample norms (a product with a cached ones vector) equal torch's norms for any rank, dtype and feature size."
    corr = Langevin(0.16)
    for shape, dtype in (((50, 2), torch.float32), ((7, 3, 4, 4), torch.float64), ((50, 2), torch.float64),
                         ((9, 5), torch.float32)):
        v = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(8))
        want = v.reshape(shape[0], -1).norm(dim=1)
        # squares, a sum of F positive terms and a square root: relative error <= (F/2 + 1) u, u = eps/2, plus the
        # reference's own rounding: (F/2 + 2) eps is a bound, whatever the summation order of the product
        tol = (v[0].numel() / 2 + 2) * torch.finfo(dtype).eps
        torch.testing.assert_close(corr._norms(v), want, rtol=tol, atol=0)
        assert corr._ones.shape == (v[0].numel(),) and corr._ones.dtype == dtype


def _reference_pc(sde, score_fn, x, pred, corr, steps, generator, denoise=True):
    """`sample`'s loop as it was before the in-place sums (issue 10, item 5), written out with out-of-place tensor
    operations: the same coefficient tables (as Python numbers) and the same draws in the same order. Langevin:
    r = ||z|| / ||s|| (per sample, or the ratio of the batch sums), root = (2 snr) sqrt(kappa) r, mean = x + root^2 s / 2
    and x = mean + root z by addcmul; annealed Langevin: x + delta s + sqrt(2 delta) z; the predictor c_x x + c_s s
    (c_x x left out when c_x = 1) + c_z z; Tweedie's step at the end."""
    from sde_diffusion.sampling import _rows
    grid = sampling_times(sde, steps, 1e-3, "uniform", dtype=torch.float64)
    with sde.unchecked():
        rows = _rows(pred.coefficients(sde, grid[:-1], grid[1:]))
        crows = None if corr is None else _rows(corr.coefficients(sde, grid[:-1]))
        tb = grid.to(x.dtype).unsqueeze(1).expand(steps + 1, x.shape[0]).unbind(0)
        pred.reset(steps)

        def norms(v):
            v = v.reshape(v.shape[0], -1)
            return torch.mv(v * v, torch.ones(v.shape[1], dtype=v.dtype)).sqrt()
        for k in range(steps):
            t = tb[k]
            if isinstance(corr, Langevin):
                for _ in range(corr.n_steps):
                    s, z = score_fn(x, t), torch.randn(x.shape, generator=generator, dtype=x.dtype)
                    zn, sn = norms(z), norms(s)
                    ratio = (zn / sn).reshape(-1, *[1] * (x.ndim - 1)) if corr.per_sample else zn.sum() / sn.sum()
                    root = (2 * corr.snr) * crows[k]["kappa"] ** 0.5 * ratio
                    x = torch.addcmul(torch.addcmul(x, root.square(), s, value=0.5), root, z)
            elif isinstance(corr, AnnealedLangevin):
                delta = 2 * crows[k]["kappa"] * (corr.snr * crows[k]["sigma"]) ** 2
                for _ in range(corr.n_steps):
                    mean = x + delta * score_fn(x, t)
                    x = mean + (2 * delta) ** 0.5 * torch.randn(x.shape, generator=generator, dtype=x.dtype)
            c = rows[k]
            mean = (x if c["cx"] == 1.0 else c["cx"] * x) + c["cs"] * score_fn(x, t)
            x = mean + c["cz"] * torch.randn(x.shape, generator=generator, dtype=x.dtype) if pred.stochastic else mean
        return tweedie_denoise(sde, score_fn, x, tb[-1]) if denoise else x


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("pred,corr", [
    ("reverse_diffusion", "langevin"), ("reverse_diffusion", Langevin(0.1, 2, per_sample=True)),
    ("reverse_diffusion", AnnealedLangevin(0.05, 2)), ("euler_maruyama", None), ("ancestral", None),
    (ReverseDiffusion(ode=True), Langevin(0.16)), (AncestralSampling("transition"), None)],
    ids=["pc", "pc-per-sample-2", "pc-annealed-2", "em", "ancestral", "rd-ode+langevin", "ancestral-transition"])
@pytest.mark.parametrize("shape,dtype", [((1001, 2), torch.float32), ((33, 1, 4, 4), torch.float32),
                                         ((65, 3), torch.float64)], ids=["1001x2-f32", "images-f32", "65x3-f64"])
def test_sample_loop_is_the_out_of_place_arithmetic_bit_for_bit(sde_name, pred, corr, shape, dtype):
    """The in-place sums of the predictors and correctors (one allocation fewer per sum) and Langevin's in-place root
    and once-per-call factor leave every sample bit for bit as the out-of-place loop above computes it: IEEE addition
    and multiplication commute, and no product is fused with a sum. An odd batch (1001 x 2) also runs the scalar tails
    of the vectorized kernels. float64 and image-shaped batches included."""
    sde = SDES[sde_name]
    ring = RING64 if dtype == torch.float64 else RING
    if len(shape) == 2 and shape[1] == 2:
        score_fn = ring.score_fn(sde)
    else:   # any rank: a nonlinear, time-dependent stand-in whose value is all a step uses
        score_fn = lambda x, t: -x / (1 + t.reshape(-1, *[1] * (x.ndim - 1)) ** 2) + 0.1 * torch.sin(3 * x)  # noqa: E731
    make = lambda kind, table: table[kind]() if isinstance(kind, str) else kind  # noqa: E731
    p, c = make(pred, PREDICTORS), None if corr is None else make(corr, CORRECTORS)
    steps = 15
    got = sample(sde, score_fn, shape, predictor=p, corrector=c, steps=steps, dtype=dtype,
                 generator=torch.Generator().manual_seed(3)).samples
    g = torch.Generator().manual_seed(3)
    x_T = sde.prior_sampling(shape, generator=g, dtype=dtype)
    want = _reference_pc(sde, score_fn, x_T, p, c, steps, g)
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert torch.equal(got, want)


@pytest.mark.parametrize("corr", ["langevin", "annealed_langevin", None])
def test_gradient_through_the_in_place_sums_is_the_out_of_place_one(corr):
    """enable_grad=True through the stochastic loop (the sums accumulate in place into the step's new tensors): the
    samples and d/dw of their mean, w a parameter of the score, equal the out-of-place loop's (float64; the same
    backward operations, so equal to rounding: rtol 1e-12)."""
    sde, steps = SDES["vp"], 8
    w = torch.nn.Parameter(torch.tensor(1.3, dtype=torch.float64))
    score_fn = lambda x, t: -w * x + 0.1 * torch.sin(x)  # noqa: E731
    x_T = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    c = None if corr is None else CORRECTORS[corr]()
    got = sample(sde, score_fn, x_T=x_T, predictor="reverse_diffusion", corrector=c, steps=steps, enable_grad=True,
                 generator=torch.Generator().manual_seed(5)).samples
    want = _reference_pc(sde, score_fn, x_T, ReverseDiffusion(), c, steps, torch.Generator().manual_seed(5))
    assert torch.equal(got.detach(), want.detach())
    (g_got,) = torch.autograd.grad(got.mean(), w)
    (g_want,) = torch.autograd.grad(want.mean(), w)
    torch.testing.assert_close(g_got, g_want, rtol=1e-12, atol=0)
    assert g_got.abs() > 1e-3
