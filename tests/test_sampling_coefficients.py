"""Every coefficient of the chapter-9 samplers, pinned by a closed form at parameter values where the plausible wrong
formulas differ: DDIM at 0 < eta < 1 (eta vs eta^2), DPM-Solver++(2M) and (3M) and UniPC on grids with unequal
log-SNR steps (r vs 1/r), iPNDM on unequal steps in tau, correctors with snr != 1 (snr vs snr^2) and their stationary
variances (sqrt(delta) vs sqrt(2 delta), a no-op); the multistep samplers also against diffusers 0.42 and a transcription
of diff-sampler's iPNDM to float64 rounding, and their orders of convergence against dopri5.

Exact tests recompute a step by hand in float64 from the chapter's equations, with the kernel coefficients written out
independently of the package (VP: alpha = e^{-B/2}, sigma^2 = 1 - e^{-B}; sub-VP: sigma = 1 - e^{-B}; VE: alpha = 1,
sigma^2 = sigma_min^2 (r^{2t} - 1)), and replay the package's Gaussian draws from a second generator with the same seed,
so a noise coefficient is compared exactly, not statistically. Tolerances: float64 rounding (rtol 1e-12). Statistical
tests compare with 5 standard errors. Found by mutation testing: see tools/mutate.py and bench/MUTATION.md."""
import math

import numpy as np
import pytest
import torch

from sde_diffusion.sampling import (DDIM, IPNDM, AncestralSampling, AnnealedLangevin, DPMSolver2M, DPMSolver3M,
                                    EulerMaruyama, Heun, Langevin, ReverseDiffusion, UniPC, invert_log_snr, sample,
                                    sampling_times, tweedie_denoise)
from sde_diffusion.sde import SDE, SubVPSDE, VESDE, VPSDE
from sde_diffusion.toy import ring_of_gaussians

F64 = torch.float64
SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
RTOL = 1e-12          # float64: a few dozen roundings of numbers of order 1
B, D = 5, 3


# ------------------------------------------------------------------ the chapter's closed forms, written out by hand
def _B(sde, t):
    "Integrated rate B(t) = beta_min t + (beta_max - beta_min) t^2 / 2 of VP / sub-VP."
    return sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t * t


def kernel(name, t):
    "alpha(t), sigma(t) of x_t = alpha x_0 + sigma z, as Python floats."
    sde = SDES[name]
    if name == "ve":
        r = sde.sigma_max / sde.sigma_min
        return 1.0, sde.sigma_min * math.sqrt(math.expm1(2 * t * math.log(r)))   # expm1: no cancellation near t = 0
    Bt = _B(sde, t)
    alpha = math.exp(-Bt / 2)
    return alpha, (math.sqrt(-math.expm1(-Bt)) if name == "vp" else -math.expm1(-Bt))


def drift_diffusion(name, t):
    "f(x, t)/x and g(t)^2 of the forward SDE."
    sde = SDES[name]
    if name == "ve":
        s = sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
        return 0.0, s * s * 2 * math.log(sde.sigma_max / sde.sigma_min)
    beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
    return -0.5 * beta, beta * (1.0 if name == "vp" else 1 - math.exp(-2 * _B(sde, t)))


def score(x, t):
    "A deterministic, nonlinear, time-dependent stand-in for the score (its value is all a step uses)."
    tt = t.reshape(-1, *([1] * (x.ndim - 1)))
    return -(x - 0.3) / (1 + tt**2) + 0.2 * torch.sin(3 * x) * tt


def x_start(seed=0):
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed), dtype=F64) * 1.7 + 0.2


def replay(seed, n=1):
    "The standard normals the package draws from `torch.Generator().manual_seed(seed)`, in order."
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, D, generator=g, dtype=F64) for _ in range(n)]


def tb(t):
    return torch.full((B,), t, dtype=F64)


def close(got, want, rtol=RTOL):
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * float(want.abs().max()))


STEP = (0.62, 0.37)   # t -> t_next, an arbitrary step of a grid (not a grid point of anything special)


# ------------------------------------------------------------------ DDIM: the noise fraction is eta^2 of the posterior
@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("eta", [0.3, 0.7])
def test_ddim_step_at_intermediate_eta(name, eta):
    """DDIM (Song et al. 2021, eq. 12): x' = alpha' x0_hat + sqrt(sigma'^2 - c^2) eps_hat + c z with
    c^2 = eta^2 * (posterior variance) = eta^2 v sigma'^2 / sigma^2. At eta in {0, 1} eta = eta^2: only here can a
    noise fraction eta instead of eta^2 be seen. Mean and noise compared exactly (the noise replayed)."""
    t, tn = STEP
    al, si = kernel(name, t)
    aln, sin_ = kernel(name, tn)
    a = al / aln
    v = si**2 - a**2 * sin_**2
    c2 = eta**2 * v * sin_**2 / si**2
    x = x_start()
    s = score(x, tb(t))
    x0, eps_hat = (x + si**2 * s) / al, -si * s
    mean = aln * x0 + math.sqrt(sin_**2 - c2) * eps_hat
    (z,) = replay(7)
    got, got_mean = DDIM(eta).step(SDES[name], score, x, tb(t), tb(tn), torch.Generator().manual_seed(7))
    close(got_mean, mean)
    close(got, mean + math.sqrt(c2) * z)
    # the noise is exactly eta times the ancestral (posterior) step's noise: variance fraction eta^2
    anc, anc_mean = AncestralSampling("posterior").step(SDES[name], score, x, tb(t), tb(tn), torch.Generator().manual_seed(7))
    close(got - got_mean, eta * (anc - anc_mean))


# ------------------------------------------------------------------ DPM-Solver++(2M) on unequal log-SNR steps
def dpm2m_by_hand(name, ts, x, lower_order_final, first_order_last=None, orders=None):
    """Lu et al. (2022), DPM-Solver++(2M): lambda = log(alpha/sigma), h_i = lambda_i - lambda_{i-1},
    x_i = (sigma_i/sigma_{i-1}) x_{i-1} - alpha_i (e^{-h_i} - 1) D_i, D_i = (1 + 1/(2 r_i)) x0_{i-1} - 1/(2 r_i) x0_{i-2},
    r_i = h_{i-1}/h_i; D_1 = x0_0 (first order), and the last step first order when asked (runs of < 15 steps)."""
    n = len(ts) - 1
    lam = [math.log(kernel(name, t)[0] / kernel(name, t)[1]) for t in ts]
    x0_prev, h_prev = None, None
    for i in range(1, n + 1):
        (al, si), (aln, sin_) = kernel(name, ts[i - 1]), kernel(name, ts[i])
        h = lam[i] - lam[i - 1]
        x0 = (x + si**2 * score(x, tb(ts[i - 1]))) / al
        last_first = (lower_order_final and n < 15) if first_order_last is None else first_order_last
        if x0_prev is None or (i == n and last_first) or (orders is not None and orders[i - 1] == 1):
            Dm = x0
        else:
            r = h_prev / h
            Dm = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
        x = sin_ / si * x - aln * math.expm1(-h) * Dm
        x0_prev, h_prev = x0, h
    return x


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("spacing", ["uniform", "edm"])
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_dpm_solver_2m_on_unequal_log_snr_steps(name, spacing, lower_order_final):
    """On the log-SNR grid r = 1 and 1/r = r: a step ratio inverted is invisible there. On the uniform and EDM grids
    the log-SNR steps differ (checked), and four steps by hand match the package's to float64 rounding."""
    ts = sampling_times(SDES[name], 4, spacing=spacing, dtype=F64).tolist()
    lam = [math.log(kernel(name, t)[0] / kernel(name, t)[1]) for t in ts]
    h = [lam[i + 1] - lam[i] for i in range(4)]
    assert max(h) / min(h) > 1.2          # the grid really has unequal steps
    x = x_start(1)
    want = dpm2m_by_hand(name, ts, x, lower_order_final)
    pred = DPMSolver2M(lower_order_final, min_step_ratio=0)   # min_step_ratio=0: the published update has no step-ratio guard (eq-step-ratio), and these grids have steps > 2x the previous
    pred.reset(4)
    y = x
    for k in range(4):
        y, _ = pred.step(SDES[name], score, y, tb(ts[k]), tb(ts[k + 1]))
    close(y, want, 1e-11)
    # the same through `sample` (coefficients precomputed for the grid), without the final denoising
    out = sample(SDES[name], score, x_T=x, predictor=DPMSolver2M(lower_order_final, min_step_ratio=0), steps=4, spacing=spacing,
                 denoise=False)
    close(out.samples, want, 1e-11)


@pytest.mark.parametrize("steps", [14, 15])
def test_dpm_solver_2m_lower_order_final_threshold(steps):
    """The last step is first order only in runs of fewer than 15 steps (DPM-Solver++'s `lower_order_final`): at 14
    steps it is, at 15 it is not. Tests at 4 steps cannot tell `< 15` from `<= 15` or from `< 16`."""
    ts = sampling_times(SDES["vp"], steps, dtype=F64).tolist()
    x = x_start(3)
    # min_step_ratio=0: the rule under test alone (the guard would make the uniform grid's last step first order too)
    out = sample(SDES["vp"], score, x_T=x, predictor=DPMSolver2M(min_step_ratio=0), steps=steps, denoise=False)
    close(out.samples, dpm2m_by_hand("vp", ts, x, lower_order_final=True), 1e-10)
    assert not torch.allclose(out.samples, dpm2m_by_hand("vp", ts, x, True, first_order_last=steps >= 15),
                              rtol=1e-6)


# ------------------------------------------------------------------ every other predictor, one step by hand
@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("pf", [False, True])
def test_euler_maruyama_step(name, pf):
    "Eq. `eq-sampling-em`: x' = x - f h + w g^2 s h + g sqrt(h) z, w = 1 (SDE) or 1/2 with no noise (probability flow)."
    t, tn = STEP
    h = t - tn
    f, g2 = drift_diffusion(name, t)
    x = x_start()
    mean = x - f * x * h + (0.5 if pf else 1.0) * g2 * h * score(x, tb(t))
    (z,) = replay(3)
    got, got_mean = EulerMaruyama(pf).step(SDES[name], score, x, tb(t), tb(tn), torch.Generator().manual_seed(3))
    close(got_mean, mean)
    close(got, mean if pf else mean + math.sqrt(g2 * h) * z)


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("pf", [False, True])
def test_reverse_diffusion_step(name, pf):
    """Eq. `eq-sampling-rd` with the exact transition x_t = a x_{t'} + sqrt(v) z: x' = x - (a - 1) x + v s + sqrt(v) z;
    the deterministic variant weighs v s by 1/2 and draws nothing."""
    t, tn = STEP
    (al, si), (aln, sin_) = kernel(name, t), kernel(name, tn)
    a = al / aln
    v = si**2 - a**2 * sin_**2
    x = x_start()
    mean = (2 - a) * x + (0.5 if pf else 1.0) * v * score(x, tb(t))
    (z,) = replay(4)
    got, got_mean = ReverseDiffusion(pf).step(SDES[name], score, x, tb(t), tb(tn), torch.Generator().manual_seed(4))
    close(got_mean, mean)
    close(got, mean if pf else mean + math.sqrt(v) * z)


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("variance", ["posterior", "transition"])
def test_ancestral_step(name, variance):
    """Eq. `eq-sampling-ancestral`: the forward posterior q(x_{t'} | x_t, x0_hat) has mean (x + v s)/a (Tweedie) and
    variance v sigma'^2/sigma^2; the "transition" variant uses v. The two differ by sigma'^2/sigma^2 != 1."""
    t, tn = STEP
    (al, si), (aln, sin_) = kernel(name, t), kernel(name, tn)
    a = al / aln
    v = si**2 - a**2 * sin_**2
    x = x_start()
    mean = (x + v * score(x, tb(t))) / a
    omega = v * sin_**2 / si**2 if variance == "posterior" else v
    # the posterior mean written the textbook way: alpha' x0_hat weighted by v/sigma^2 plus x_t weighted by a sigma'^2/sigma^2
    x0 = (x + si**2 * score(x, tb(t))) / al
    close(mean, aln * v / si**2 * x0 + a * sin_**2 / si**2 * x)
    (z,) = replay(5)
    got, got_mean = AncestralSampling(variance).step(SDES[name], score, x, tb(t), tb(tn), torch.Generator().manual_seed(5))
    close(got_mean, mean)
    close(got, mean + math.sqrt(omega) * z)


@pytest.mark.parametrize("name", list(SDES))
def test_heun_step(name):
    """Eq. `eq-heun`: in y = x/alpha, tau = sigma/alpha the probability-flow ODE is dy/dtau = eps_hat = -sigma s;
    Heun: an Euler step to tau', then the trapezoid of the two slopes."""
    t, tn = STEP
    (al, si), (aln, sin_) = kernel(name, t), kernel(name, tn)
    x = x_start()
    y, dtau = x / al, sin_ / aln - si / al
    d = -si * score(x, tb(t))
    d2 = -sin_ * score(aln * (y + dtau * d), tb(tn))
    want = aln * (y + dtau * (d + d2) / 2)
    got, got_mean = Heun().step(SDES[name], score, x, tb(t), tb(tn))
    close(got, want)
    close(got_mean, want)


@pytest.mark.parametrize("name", list(SDES))
def test_tweedie_denoise(name):
    "Eq. `eq-tweedie`: x0_hat = (x + sigma^2 s)/alpha, at a time where alpha != 1 (VP) and sigma != 1."
    t = 0.3
    al, si = kernel(name, t)
    x = x_start()
    close(tweedie_denoise(SDES[name], score, x, tb(t)), (x + si**2 * score(x, tb(t))) / al)


@pytest.mark.parametrize("pred", [EulerMaruyama(), ReverseDiffusion(), AncestralSampling(), DDIM(0.4), Heun(),
                                  EulerMaruyama(True), ReverseDiffusion(True)],
                         ids=["em", "rd", "ancestral", "ddim", "heun", "em_pf", "rd_pf"])
def test_per_sample_times_are_per_sample_steps(pred):
    """`step` takes a time per sample: row i of a step with times (t_i, t'_i) is the step of row i alone (the means,
    which draw no noise, compared to float64 rounding). Equal times in every other test cannot see a coefficient
    broadcast along the wrong axis."""
    sde, x = SDES["vp"], x_start(5)
    t = torch.linspace(0.35, 0.95, B, dtype=F64)
    tn = t - torch.linspace(0.05, 0.3, B, dtype=F64)
    _, mean = pred.step(sde, score, x, t, tn, torch.Generator().manual_seed(0))
    rows = [pred.step(sde, score, x[i:i + 1], t[i:i + 1], tn[i:i + 1], torch.Generator().manual_seed(0))[1]
            for i in range(B)]
    close(mean, torch.cat(rows))


def test_dpm_solver_2m_instance_reused_across_runs():
    "`sample` resets the multistep state: a second run with the same instance repeats the first exactly."
    pred, x = DPMSolver2M(), x_start(6)
    first = sample(SDES["vp"], score, x_T=x, predictor=pred, steps=5, denoise=False).samples
    second = sample(SDES["vp"], score, x_T=x, predictor=pred, steps=5, denoise=False).samples
    assert torch.equal(first, second)


def test_tweedie_denoise_any_rank_and_scalar_refused():
    """Samples of shape (B,) (D empty) are valid: Tweedie's formula applies elementwise. A 0-d tensor has no batch
    axis and is refused as a wrong *type* of input, naming `x` (not as a shape mismatch of `t`)."""
    t, x = 0.3, x_start()[:, 0]
    al, si = kernel("vp", t)
    close(tweedie_denoise(SDES["vp"], score, x, tb(t)), (x + si**2 * score(x, tb(t))) / al)
    with pytest.raises(TypeError, match="`x`"):
        tweedie_denoise(SDES["vp"], score, torch.tensor(1.0, dtype=F64), torch.full((1,), t, dtype=F64))


# ------------------------------------------------------------------ correctors: one step exactly
def kappa(name, t):
    "Song et al.'s factor 1 - beta(t)/N (VP-type), 1 for VE."
    sde = SDES[name]
    return 1.0 if name == "ve" else 1 - (sde.beta_min + t * (sde.beta_max - sde.beta_min)) / sde.N


@pytest.mark.parametrize("name", ["vp", "ve"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_langevin_steps_exactly(name, per_sample):
    """Eq. `eq-langevin-snr`: delta = 2 kappa (r ||z|| / ||s||)^2 (norms per sample, or each averaged over the batch),
    x <- x + delta s + sqrt(2 delta) z; two steps (n_steps = 2) at snr r = 0.37, where r and r^2 differ, replayed.
    A corrector that does nothing, or one with r, sqrt(delta) or no kappa, fails here."""
    t, snr = 0.55, 0.37
    x = x_start(2)
    want = x
    for z in replay(9, 2):
        s = score(want, tb(t))
        zn, sn = z.norm(dim=1), s.norm(dim=1)
        ratio = (zn / sn)[:, None] if per_sample else zn.mean() / sn.mean()
        delta = 2 * kappa(name, t) * (snr * ratio) ** 2
        mean = want + delta * s
        want = mean + (2 * delta) ** 0.5 * z
    got, got_mean = Langevin(snr, n_steps=2, per_sample=per_sample).step(
        SDES[name], score, x, tb(t), torch.Generator().manual_seed(9))
    close(got_mean, mean)
    close(got, want)
    assert (got - x).abs().min() > 1e-3    # every coordinate moved


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_annealed_langevin_steps_exactly(name):
    """NCSN's annealed Langevin: delta = 2 kappa (r sigma(t))^2, x <- x + delta s + sqrt(2 delta) z (Song & Ermon 2019,
    Alg. 1 with alpha_i = eps sigma_i^2 / sigma_L^2); three steps replayed at r = 0.37."""
    t, snr = 0.55, 0.37
    _, si = kernel(name, t)
    delta = 2 * kappa(name, t) * (snr * si) ** 2
    x = x_start(2)
    want = x
    for z in replay(9, 3):
        mean = want + delta * score(want, tb(t))
        want = mean + math.sqrt(2 * delta) * z
    got, got_mean = AnnealedLangevin(snr, n_steps=3).step(SDES[name], score, x, tb(t), torch.Generator().manual_seed(9))
    close(got_mean, mean)
    close(got, want)


# ------------------------------------------------------------------ correctors: stationary variance on Gaussian data
VE = SDES["ve"]
S0 = 0.5                      # data N(0, S0^2 I): p_t = N(0, (S0^2 + sigma(t)^2) I) under VE, score -x / S^2
T_C = 0.82                    # sigma_VE(T_C) ~ 0.99 with the default sigma_min, sigma_max


def gaussian_chain(corrector, n=4000, d=8, seed=0):
    "Run `corrector` at T_C from exact samples of p_t; return the final samples and S^2."
    S2 = S0**2 + kernel("ve", T_C)[1] ** 2
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64) * math.sqrt(S2)
    t = torch.full((n,), T_C, dtype=F64)
    out, _ = corrector.step(VE, lambda y, t: -y / S2, x, t, g)
    return x, out, S2


def within(est, want, se, k=5.0):
    assert abs(est - want) <= k * se, f"{est:.5f} vs {want:.5f} (se {se:.2g})"


def test_annealed_langevin_stationary_variance():
    """With the exact score of N(0, S^2) and a fixed step delta, x <- (1 - delta/S^2) x + sqrt(2 delta) z is an AR(1)
    chain with stationary variance 2 delta / (1 - (1 - delta/S^2)^2) = S^2 / (1 - delta/(2 S^2)): Langevin's O(delta)
    bias, the same for every sample. After 60 steps (contraction (1 - delta/S^2)^120 < 1e-15) the sample variance of
    32,000 independent coordinates matches it within 5 standard errors (se = V sqrt(2/n)). Noise sqrt(delta) would give
    half of it; no move at all, S^2."""
    snr = 0.4
    delta = 2 * (snr * kernel("ve", T_C)[1]) ** 2
    x, out, S2 = gaussian_chain(AnnealedLangevin(snr, n_steps=60))
    V = S2 / (1 - delta / (2 * S2))
    se = V * math.sqrt(2 / out.numel())
    # The bias is large enough to tell the formulas apart (the picked delta / S2 > 0.2 and V / S2 > 1.1 were here): the
    # wrong ones (no bias, S^2; noise sqrt(delta), V / 2) lie more than 2 x 5 se from V, so `within`'s 5-se band around
    # V and the one around either of them are disjoint: no draw passes both. Exact (no randomness): V - S^2 = 20.2 se.
    assert min(V - S2, V - V / 2) > 2 * 5 * se, (V - S2) / se
    within(float(out.var()), V, se)


def test_langevin_stationary_variance():
    """The batch-mean step delta = 2 (r mean||z|| / mean||s||)^2 with s = -x/S^2 and x ~ N(0, V I) is 2 r^2 S^4 / V (the
    chi factors of ||z|| and ||x|| cancel); the AR(1) fixed point V = S^2/(1 - delta/(2 S^2)) then solves to
    V = S^2 (1 + r^2). The snr not squared would give S^2 (1 + r): at r = 0.5, 1.25 S^2 vs 1.5 S^2."""
    snr = 0.5
    x, out, S2 = gaussian_chain(Langevin(snr, n_steps=40))
    V = S2 * (1 + snr**2)
    within(float(out.var()), V, V * math.sqrt(2 / out.numel()) + V * 2 / out.shape[0])   # + O(1/B) for the random delta


@pytest.mark.parametrize("corrector", [AnnealedLangevin(0.3), Langevin(0.3), Langevin(0.3, per_sample=True)],
                         ids=["annealed", "langevin", "per_sample"])
def test_correctors_move_samples_by_the_expected_amount(corrector):
    """"The corrector keeps exact samples in place" holds for a no-op too. From exact samples of N(0, S^2 I_d) one step
    moves each coordinate by delta s + sqrt(2 delta) z, of mean square delta^2/S^2 + 2 delta (the cross term has mean
    0), with delta = 2 r^2 sigma^2 (annealed) or 2 r^2 S^2 (Langevin, batch means: E||z|| / E||s|| = S^2/S).
    Per sample, delta_i = 2 r^2 S^2 Z/X with Z = ||z_i||^2, X = ||x_i||^2/S^2 independent chi^2_d, and the mean square
    is exactly (delta^2/S^2 + 2 delta)(d + 2)/(d - 2) (E Z^2 = d(d + 2), E 1/X = 1/(d - 2)). Tolerance: 5 se of the
    mean over samples, plus for the batch-mean delta its own relative fluctuation ~2/sqrt(B d)."""
    x, out, S2 = gaussian_chain(corrector)
    n, d = x.shape
    per_sample = getattr(corrector, "per_sample", False)
    delta = 2 * corrector.snr**2 * (kernel("ve", T_C)[1] ** 2 if isinstance(corrector, AnnealedLangevin) else S2)
    want = (delta**2 / S2 + 2 * delta) * ((d + 2) / (d - 2) if per_sample else 1.0)
    sq = ((out - x) ** 2).mean(dim=1)
    se = float(sq.std()) / math.sqrt(n)
    if isinstance(corrector, Langevin) and not per_sample:
        se = math.hypot(se, want * 2 / math.sqrt(n * d))
    within(float(sq.mean()), want, se)


# ------------------------------------------------------------------ the predictor-corrector loop, two steps by hand
def test_pc_loop_order_and_grid_by_hand():
    """`sample` with x_T, no denoising, on a 2-step EDM grid: corrector at t_k, then the predictor from t_k to t_{k+1};
    noise drawn in that order from one generator. Every number recomputed by hand (VP, reverse diffusion, annealed)."""
    name, snr = "vp", 0.2
    ts = sampling_times(SDES[name], 2, spacing="edm", dtype=F64).tolist()
    x = x_start(4)
    zs = replay(11, 4)
    want = x
    for k in range(2):
        t, tn = ts[k], ts[k + 1]
        delta = 2 * kappa(name, t) * (snr * kernel(name, t)[1]) ** 2
        want = want + delta * score(want, tb(t)) + math.sqrt(2 * delta) * zs[2 * k]
        (al, si), (aln, sin_) = kernel(name, t), kernel(name, tn)
        a = al / aln
        v = si**2 - a**2 * sin_**2
        want = (2 - a) * want + v * score(want, tb(t)) + math.sqrt(v) * zs[2 * k + 1]
    out = sample(SDES[name], score, x_T=x, predictor="reverse_diffusion", corrector="annealed_langevin", snr=snr,
                 steps=2, spacing="edm", denoise=False, generator=torch.Generator().manual_seed(11))
    close(out.samples, want, 1e-11)
    assert out.nfe == 4
    # and with the final denoising: one more score evaluation, Tweedie at eps
    out = sample(SDES[name], score, x_T=x, predictor="reverse_diffusion", corrector="annealed_langevin", snr=snr,
                 steps=2, spacing="edm", generator=torch.Generator().manual_seed(11))
    al, si = kernel(name, ts[-1])
    close(out.samples, (want + si**2 * score(want, tb(ts[-1]))) / al, 1e-11)
    assert out.nfe == 5


def test_one_step_sampler():
    """`steps` = 1 is the smallest valid run (the validation's boundary): the grid is (T, eps), and the run is one
    reverse-diffusion step by hand, then Tweedie's formula."""
    name, x = "vp", x_start(8)
    assert sampling_times(SDES[name], 1, dtype=F64).tolist() == [SDES[name].T, 1e-3]
    (al, si), (aln, sin_) = kernel(name, 1.0), kernel(name, 1e-3)
    a = al / aln
    v = si**2 - a**2 * sin_**2
    (z,) = replay(2)
    want = (2 - a) * x + v * score(x, tb(1.0)) + math.sqrt(v) * z
    want = (want + sin_**2 * score(want, tb(1e-3))) / aln
    out = sample(SDES[name], score, x_T=x, predictor="reverse_diffusion", steps=1,
                 generator=torch.Generator().manual_seed(2))
    close(out.samples, want, 1e-11)
    assert out.nfe == 2


# ------------------------------------------------------------------ the time grids
@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("rho", [7.0, 3.0, 0.5])
def test_sampling_time_grids_by_hand(name, rho):
    """Eq. `eq-spacings`: "uniform" is linear in t from T to eps; "logsnr" linear in lambda = log(alpha/sigma); "edm"
    linear in tau^(1/rho), tau = sigma/alpha = e^{-lambda}. Compared through the hand-written kernel (the bisection
    inverts lambda(t) to float64 rounding, so lambda matches to ~1e-13)."""
    sde, eps, n = SDES[name], 1e-3, 6
    u = [i / n for i in range(n + 1)]
    ts = sampling_times(sde, n, eps, "uniform", dtype=F64).tolist()
    assert ts == pytest.approx([sde.T + (eps - sde.T) * ui for ui in u], rel=1e-15, abs=1e-15)
    lam = lambda t: math.log(kernel(name, t)[0] / kernel(name, t)[1])   # noqa: E731
    lT, le = lam(sde.T), lam(eps)
    ts = sampling_times(sde, n, eps, "logsnr", dtype=F64).tolist()
    assert [lam(t) for t in ts] == pytest.approx([lT + (le - lT) * ui for ui in u], abs=1e-9)
    ts = sampling_times(sde, n, eps, "edm", rho=rho, dtype=F64).tolist()
    hi, lo = math.exp(-lT) ** (1 / rho), math.exp(-le) ** (1 / rho)
    assert [math.exp(-lam(t)) ** (1 / rho) for t in ts] == pytest.approx([hi + (lo - hi) * ui for ui in u], rel=1e-9,
                                                                              abs=1e-13 * max(hi, lo))   # hi + (lo - hi) rounds


def test_edm_grid_default_rho_and_its_domain():
    """The default exponent is Karras et al.'s rho = 7; any rho > 0 is valid (0.5 above), rho = 0 is refused by name
    (it would divide by zero)."""
    sde = SDES["ve"]
    assert torch.equal(sampling_times(sde, 5, spacing="edm", dtype=F64), sampling_times(sde, 5, spacing="edm", rho=7.0, dtype=F64))
    assert not torch.allclose(sampling_times(sde, 5, spacing="edm", dtype=F64), sampling_times(sde, 5, spacing="edm", rho=8.0, dtype=F64))
    with pytest.raises(ValueError, match="`rho`"):
        sampling_times(sde, 5, spacing="edm", rho=0.0)


def test_deterministic_predictors_draw_no_noise():
    """DDIM at eta = 0 (and every probability-flow variant) is deterministic: a run leaves the generator's state as it
    was, so a caller's later draws do not depend on having sampled. (Zero noise added is not enough: drawing and
    discarding it advances the generator.)"""
    for pred in (DDIM(0.0), EulerMaruyama(True), ReverseDiffusion(True), Heun(), DPMSolver2M()):
        g = torch.Generator().manual_seed(1)
        before = g.get_state()
        sample(SDES["vp"], score, x_T=x_start(), predictor=pred, steps=3, generator=g)
        assert torch.equal(g.get_state(), before), pred


def test_heun_through_sample_evaluates_the_score_at_the_next_grid_time():
    """`sample` passes each step its own t_next: Heun's second score evaluation is at t_{k+1}. Only Heun (and
    `project`) read t_next in the loop, so the loop's grid indexing is pinned here, on an unequal EDM grid, by hand."""
    name, x = "vp", x_start(9)
    ts = sampling_times(SDES[name], 3, spacing="edm", dtype=F64).tolist()
    y = x
    for k in range(3):
        (al, si), (aln, sin_) = kernel(name, ts[k]), kernel(name, ts[k + 1])
        u, dtau = y / al, sin_ / aln - si / al
        d = -si * score(y, tb(ts[k]))
        d2 = -sin_ * score(aln * (u + dtau * d), tb(ts[k + 1]))
        y = aln * (u + dtau * (d + d2) / 2)
    out = sample(SDES[name], score, x_T=x, predictor=Heun(euler_last=False), steps=3, spacing="edm", denoise=False)
    close(out.samples, y, 1e-11)
    assert out.nfe == 6   # (the default Euler last step: test_heun_euler_last_step_by_hand)


# ------------------------------------------------------------------ defaults and error reports (run-2 survivors)
def _minus_x(x, t):
    "The exact score of N(0, I) data under VP: every marginal is N(0, I)."
    return -x


def test_sample_defaults_are_the_documented_ones():
    """steps = 1000 (+1 for the final denoising), predictor "auto" (UniPC-3 on the log-SNR grid at 1000 steps, to the
    end time 1e-5 on VP) and snr = 0.16: a default call equals the explicit one, bit for bit."""
    from sde_diffusion.sampling import ScoreCounter
    sde, x_T = VPSDE(), torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = sample(sde, _minus_x, x_T=x_T, generator=torch.Generator().manual_seed(1))
    assert out.nfe == 1001
    explicit = sample(sde, _minus_x, x_T=x_T, predictor=UniPC(order=3), spacing="logsnr", steps=1000, denoise=True,
                      eps=1e-5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out.samples, explicit.samples)
    assert not torch.equal(out.samples, sample(sde, _minus_x, x_T=x_T, predictor=UniPC(order=3), spacing="logsnr",
                                               steps=1000, generator=torch.Generator().manual_seed(1)).samples)
    run = lambda **kw: sample(sde, _minus_x, x_T=x_T, steps=20, corrector="langevin",
                              generator=torch.Generator().manual_seed(2), **kw).samples
    assert torch.equal(run(), run(snr=0.16)) and not torch.equal(run(), run(snr=0.17))


def test_corrector_kappa_exactly_zero_is_refused():
    "kappa = 1 - beta(t)/N: with beta_max = N it is exactly 0 at t = T, a corrector step of size 0: refused by name."
    sde = VPSDE(beta_max=20.0, N=20)
    with pytest.raises(ValueError, match="`N`"):
        sample(sde, _minus_x, (4, 2), steps=5, corrector="langevin")
    sample(VPSDE(beta_max=20.0, N=21), _minus_x, (4, 2), steps=5, corrector="langevin")   # kappa > 0: accepted


def test_nonfinite_reports_name_where_it_happened():
    "The start, the start after `project`, step k, the final denoising step, the output dtype: each named as such."
    from sde_diffusion.reverse import NonFiniteError
    sde = VPSDE()
    x_nan = torch.zeros(4, 2, dtype=F64)
    x_nan[1, 0] = torch.nan
    with pytest.raises(NonFiniteError, match=r"^`x_T` contains NaN or inf$"):
        sample(sde, _minus_x, x_T=x_nan, steps=3)
    with pytest.raises(NonFiniteError, match=r"`x_T` contains NaN or inf \(after `project`\)"):
        sample(sde, _minus_x, (4, 2), steps=3, project=lambda x, t: x / 0 * 0)
    # NaN from the score only at t < 0.45 on the uniform 10-step grid from 1 to 1e-3: step k = 6 (t = 0.4006 -> 0.3007)
    ts = sampling_times(sde, 10, eps=1e-3, dtype=F64)
    k = int((ts[:-1] >= 0.45).sum())
    late = lambda x, t: torch.where((t < 0.45)[:, None], torch.nan, -x)
    with pytest.raises(NonFiniteError, match=rf"at step {k} of 10 \(t = {ts[k].item():.4g} -> {ts[k + 1].item():.4g}\)"):
        sample(sde, late, (4, 2), predictor="reverse_diffusion", steps=10)   # the uniform grid of `ts`
    # NaN only at t = eps: only the final Tweedie step evaluates the score there
    at_eps = lambda x, t: torch.where((t < 2e-3)[:, None], torch.nan, -x)
    with pytest.raises(NonFiniteError, match="at the final denoising step"):
        sample(sde, at_eps, (4, 2), steps=10, denoise=True)
    assert torch.isfinite(sample(sde, at_eps, (4, 2), steps=10, denoise=False).samples).all()
    with pytest.raises(NonFiniteError, match="overflow `dtype` torch.float16"):
        sample(sde, _minus_x, (4, 2), steps=3, dtype=torch.float16, project=lambda x, t: x * 0 + 1e6)


def test_project_output_is_checked():
    "A `project` returning another shape or dtype is refused by name on its first call, not broadcast or cast."
    for bad in (lambda x, t: x[:, :1], lambda x, t: x.double(), lambda x, t: x.tolist()):
        with pytest.raises(ValueError, match="`project` must return a tensor of x's shape, dtype and device"):
            sample(VPSDE(), _minus_x, (4, 2), steps=3, dtype=torch.float32, project=bad)


def test_ode_sample_defaults_and_fixed_steps():
    """rtol = atol = 1e-5 by default (the default call equals the explicit one); a fixed-step method with `steps` = n
    takes exactly n steps of (T - eps)/n: Euler's NFE is n + 1 and its result is n Euler steps computed by hand."""
    from sde_diffusion.sampling import ode_sample
    sde, x_T = VPSDE(), torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    score = lambda x, t: -x / 1.5   # N(0, 1.5 I) data: not the prior, so the ODE moves x
    a, b = ode_sample(sde, score, x_T=x_T), ode_sample(sde, score, x_T=x_T, rtol=1e-5, atol=1e-5)
    c = ode_sample(sde, score, x_T=x_T, rtol=2e-5, atol=2e-5)
    assert a.nfe == b.nfe and torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)
    n, eps = 7, 1e-3
    out = ode_sample(sde, score, x_T=x_T, method="euler", steps=n, eps=eps, denoise=False)
    assert out.nfe == n
    x, h = x_T.clone(), (sde.T - eps) / n
    for i in range(n):   # dx/dt = f - g^2 s / 2 = -beta x / 2 - beta s / 2, stepped backwards in time
        t = sde.T - i * h
        beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
        x = x - h * (-0.5 * beta * x - 0.5 * beta * score(x, None))
    torch.testing.assert_close(out.samples, x, rtol=RTOL, atol=1e-14)


def test_first_step_nan_and_the_start_projection_time():
    "A NaN from the very first score call is reported as step 0; `project` is applied to the prior draw at t = T."
    from sde_diffusion.reverse import NonFiniteError
    sde = VPSDE()
    with pytest.raises(NonFiniteError, match=r"at step 0 of 4 \(t = 1 ->"):
        sample(sde, lambda x, t: torch.full_like(x, torch.nan), (4, 2), steps=4)
    seen = []
    sample(sde, _minus_x, (4, 2), steps=4, project=lambda x, t: (seen.append(t.tolist()), x)[1])
    ts = sampling_times(sde, 4, dtype=torch.float32).tolist()
    assert seen[0] == [ts[0]] * 4 and seen[1] == [ts[1]] * 4   # the start at T, then after step 0 at t_1


# ================================================================== the multistep samplers of chapter 9 (issue 10)
# DPM-Solver++(3M), UniPC (bh1/bh2, orders 1-3, corrector on/off), iPNDM (constant / variable-step weights) and Heun's Euler
# last step: by hand from the papers' formulas (independent code paths: closed-form phi's, numpy solves, the diff-sampler
# loop), against diffusers 0.42 to float64 rounding, and their orders against dopri5 (float64, exact mixture score).
U64, U32 = torch.finfo(F64).eps / 2, torch.finfo(torch.float32).eps / 2


def lam(name, t):
    "log-SNR ell(t) = log(alpha/sigma) of the hand-written kernel."
    al, si = kernel(name, t)
    return math.log(al / si)


def x0_hat(name, x, t):
    "Tweedie's data prediction with the stand-in score."
    al, si = kernel(name, t)
    return (x + si**2 * score(x, tb(t))) / al


def run_pred(sde, pred, x, ts, score_fn=score):
    "A bare loop over the grid `ts` with `Predictor.step` (per-step coefficients), after `reset`."
    pred.reset(len(ts) - 1)
    with sde.unchecked():
        for k in range(len(ts) - 1):
            x = pred.step(sde, score_fn, x, torch.full((x.shape[0],), float(ts[k]), dtype=x.dtype),
                          torch.full((x.shape[0],), float(ts[k + 1]), dtype=x.dtype))[0]
    return x


def dpm3m_by_hand(name, ts, x, lower_order_final, threshold=15, orders=None):
    """Lu et al.'s multistep_dpm_solver_third_update (diffusers' DPMSolverMultistepScheduler, solver_order=3): step 1 DDIM,
    step 2 the 2M ("midpoint") update, then D1_0, D1_1, D1 = D1_0 + r0/(r0+r1)(D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0+r1),
    x' = (s'/s) x - a'(e^-h - 1) D0 + a'((e^-h - 1)/h + 1) D1 - a'((e^-h - 1 + h)/h^2 - 1/2) D2; in runs of < 15 steps the
    last step is first order and the one before second order (`threshold`: the run length from which they are not)."""
    n, ms, lams = len(ts) - 1, [], [lam(name, t) for t in ts]
    for i in range(n):
        (al, si), (aln, sin_) = kernel(name, ts[i]), kernel(name, ts[i + 1])
        h = lams[i + 1] - lams[i]
        ms.append(x0_hat(name, x, ts[i]))
        order = min(3, i + 1)
        if lower_order_final and n < threshold:
            order = min(order, n - i)
        if orders is not None:
            order = orders[i]
        e = math.expm1(-h)
        out = sin_ / si * x - aln * e * ms[-1]
        if order >= 2:
            r0 = (lams[i] - lams[i - 1]) / h
            D10 = (ms[-1] - ms[-2]) / r0
            if order == 2:
                out = out - 0.5 * aln * e * D10
            else:
                r1 = (lams[i - 1] - lams[i - 2]) / h
                D11 = (ms[-2] - ms[-3]) / r1
                D1, D2 = D10 + r0 / (r0 + r1) * (D10 - D11), (D10 - D11) / (r0 + r1)
                out = out + aln * (e / h + 1) * D1 - aln * ((e + h) / h**2 - 0.5) * D2
        x = out
    return x


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("spacing", ["uniform", "edm"])
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_dpm_solver_3m_by_hand_on_unequal_steps(name, spacing, lower_order_final):
    """Six steps on grids with unequal log-SNR steps (r0, r1 != 1: an inverted ratio or a swapped r0/r1 shows), by
    `sample` (coefficients precomputed) and by `step` (per call), against the reference update written out."""
    sde, x = SDES[name], x_start(10)
    ts = sampling_times(sde, 6, spacing=spacing, dtype=F64).tolist()
    h = [lam(name, ts[i + 1]) - lam(name, ts[i]) for i in range(6)]
    assert max(h[i + 1] / h[i] for i in range(5)) / min(h[i + 1] / h[i] for i in range(5)) > 1.2
    want = dpm3m_by_hand(name, ts, x, lower_order_final)
    pred = lambda: DPMSolver3M(lower_order_final, min_step_ratio=0)   # min_step_ratio=0: the published update has no step-ratio guard (eq-step-ratio), and these grids have steps > 2x the previous
    close(sample(sde, score, x_T=x, predictor=pred(), steps=6, spacing=spacing, denoise=False).samples, want, 1e-11)
    close(run_pred(sde, pred(), x, ts), want, 1e-11)


@pytest.mark.parametrize("steps", [14, 15])
def test_dpm_solver_3m_lower_order_final_threshold(steps):
    "Orders 1 and 2 in the last two steps at 14 steps, not at 15 (diffusers' `len(timesteps) < 15`)."
    ts = sampling_times(SDES["vp"], steps, dtype=F64).tolist()
    x = x_start(11)
    # min_step_ratio=0: the rule under test alone (the guard lowers the uniform grid's last steps at 15 steps too)
    out = sample(SDES["vp"], score, x_T=x, predictor=DPMSolver3M(min_step_ratio=0), steps=steps, denoise=False).samples
    close(out, dpm3m_by_hand("vp", ts, x, lower_order_final=True), 1e-10)
    other = dpm3m_by_hand("vp", ts, x, lower_order_final=True, threshold=16 if steps == 15 else 14)   # the rule moved by one
    assert not torch.allclose(out, other, rtol=1e-6)


def unipc_by_hand(name, ts, x, order, variant, corrector, lower_order_final):
    """UniPC-p (Zhao et al. 2023, Alg. 2/3, B(h) version, data prediction) with the order conditions solved by numpy:
    sum_m rho_m r_m^(n-1) = n! h phi_{n+1}(-h)/B(h) (phi from its integral, by quadrature), rho = 1/2 for one node.
    The corrector reuses x0_hat at the predicted point; the last step is not corrected."""
    gl_x, gl_w = np.polynomial.legendre.leggauss(40)
    th, wt = (gl_x + 1) / 2, gl_w / 2

    def b(n, h):
        phi = float(np.sum(wt * np.exp(-(1 - th) * h) * th**n) / math.factorial(n))   # phi_{n+1}(-h)
        B = h if variant == "bh1" else -math.expm1(-h)
        return math.factorial(n) * h * phi / B

    def update(i, x, hist, m_new=None):   # from grid point i to i + 1; hist: (x0_hat, ell) newest last, incl. current
        (al, si), (aln, sin_) = kernel(name, ts[i]), kernel(name, ts[i + 1])
        ell, h = lam(name, ts[i]), lam(name, ts[i + 1]) - lam(name, ts[i])
        m0 = hist[-1][0]
        nodes = [(e - ell) / h for _, e in hist[:-1][::-1]]
        D = [(m - m0) / r for (m, _), r in zip(hist[:-1][::-1], nodes)]
        if m_new is not None:
            nodes, D = nodes + [1.0], D + [m_new - m0]
        out = sin_ / si * x - aln * math.expm1(-h) * m0
        if D:
            if len(D) == 1:
                rho = [0.5]
            else:
                R = np.array([[r ** (n - 1) for r in nodes] for n in range(1, len(nodes) + 1)])
                rho = np.linalg.solve(R, np.array([b(n, h) for n in range(1, len(nodes) + 1)])).tolist()
            B = h if variant == "bh1" else -math.expm1(-h)
            out = out + aln * B * sum(r * d for r, d in zip(rho, D))
        return out

    n, hist, last = len(ts) - 1, [], None
    for i in range(n):
        m = x0_hat(name, x, ts[i])
        if last is not None and corrector:
            x_prev, q_prev = last
            x = update(i - 1, x_prev, hist[-q_prev:], m_new=m)
        hist = (hist + [(m, lam(name, ts[i]))])[-order:]
        q = min(order, i + 1)
        if lower_order_final == "always" or (lower_order_final is True and n < 15):
            q = min(q, n - i)
        last = (x, q)
        x = update(i, x, hist[-q:])
    return x


@pytest.mark.parametrize("name", ["vp", "ve"])
@pytest.mark.parametrize("order,variant,corrector", [(1, "bh1", True), (2, "bh1", True), (2, "bh2", True),
                                                     (3, "bh2", True), (3, "bh1", False), (2, "bh2", False)])
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_unipc_by_hand_on_unequal_steps(name, order, variant, corrector, lower_order_final):
    """Six steps on the EDM grid (unequal log-SNR steps) against UniPC written out with numpy solves and quadrature phi's:
    every parameter at a value where it matters (B(h) enters with order 2 or the order-1 corrector)."""
    sde, x = SDES[name], x_start(12)
    ts = sampling_times(sde, 6, spacing="edm", dtype=F64).tolist()
    want = unipc_by_hand(name, ts, x, order, variant, corrector, lower_order_final)
    pred = UniPC(order, variant, corrector=corrector, lower_order_final=lower_order_final)
    close(sample(sde, score, x_T=x, predictor=pred, steps=6, spacing="edm", denoise=False).samples, want, 1e-10)


def test_unipc_parameters_change_the_result():
    """B(h) matters at order 2 (rho = 1/2 is exact for neither); the corrector, `order` and `lower_order_final` (at 14
    steps) change the samples; the 15-step threshold: at 15 steps lower_order_final does nothing."""
    sde, x = SDES["vp"], x_start(13)
    run = lambda steps=8, **kw: sample(sde, score, x_T=x, predictor=UniPC(**kw), steps=steps, spacing="edm", denoise=False).samples
    differ = lambda a, b: not torch.allclose(a, b, rtol=1e-8, atol=1e-10)
    assert differ(run(order=2, variant="bh1"), run(order=2, variant="bh2"))
    assert differ(run(order=3), run(order=3, corrector=False)) and differ(run(order=2), run(order=3))
    assert differ(run(14, lower_order_final=True), run(14, lower_order_final=False))
    assert torch.equal(run(15, lower_order_final=True), run(15, lower_order_final=False))


@pytest.mark.parametrize("steps", [14, 16])
def test_lower_order_final_always(steps):
    """`lower_order_final="always"` (`sample`'s default below N1 steps: chapter 9's 15-step cliff) lowers the last
    steps' orders in runs of every length: by hand for DPM-Solver++(2M), (3M), UniPC-2 and iPNDM-4 at 14 and 16 steps;
    at 14 steps bit for bit the same as True (diffusers' rule, runs of < 15), at 16 steps unlike True. Any other string
    is refused by name."""
    sde, x = SDES["vp"], x_start(16)
    ts_u = sampling_times(sde, steps, dtype=F64).tolist()
    ts_e = sampling_times(sde, steps, spacing="edm", dtype=F64).tolist()
    run = lambda pred, spacing="uniform": sample(sde, score, x_T=x, predictor=pred, steps=steps, spacing=spacing,  # noqa: E731
                                                 denoise=False).samples
    # min_step_ratio=0: the rule under test alone (the guard lowers the uniform grid's last step by itself)
    pairs = [(lambda lof: DPMSolver2M(lof, min_step_ratio=0), "uniform",
              dpm2m_by_hand("vp", ts_u, x, True, first_order_last=True)),
             (lambda lof: DPMSolver3M(lof, min_step_ratio=0), "uniform",
              dpm3m_by_hand("vp", ts_u, x, True, threshold=10**9)),
             (lambda lof: UniPC(2, lower_order_final=lof), "edm", unipc_by_hand("vp", ts_e, x, 2, "bh2", True, "always")),
             (lambda lof: IPNDM(4, lower_order_final=lof), "edm", ipndm_by_transcription("vp", ts_e, x, 4, "always"))]
    for make, spacing, want in pairs:
        always, true = run(make("always"), spacing), run(make(True), spacing)
        close(always, want, 1e-10)
        if steps < 15:
            assert torch.equal(always, true)
        else:
            assert not torch.allclose(always, true, rtol=1e-6)
        with pytest.raises(ValueError, match="lower_order_final"):
            make("sometimes")


def test_lower_order_final_always_needs_a_known_run_length():
    """`Predictor.step` without `reset(steps)` does not know which step is the last (run length 0): "always" must then
    lower no order, as True and False do not; the multistep predictors keep their full order, bit for bit."""
    sde, x = SDES["vp"], x_start(17)
    ts = sampling_times(sde, 5, spacing="edm", dtype=F64).tolist()

    def bare(pred):   # `step` on a fresh instance: no reset, so no run length
        y = x
        with sde.unchecked():
            for k in range(5):
                y = pred.step(sde, score, y, tb(ts[k]), tb(ts[k + 1]))[0]
        return y
    for make in (lambda lof: DPMSolver2M(lof, min_step_ratio=0), lambda lof: DPMSolver3M(lof, min_step_ratio=0),
                 lambda lof: UniPC(2, lower_order_final=lof), lambda lof: IPNDM(4, lower_order_final=lof)):
        assert torch.equal(bare(make("always")), bare(make(False)))
        # and a run of known length lowers its last orders: the same predictor after reset(5) differs
        assert not torch.allclose(run_pred(sde, make("always"), x, ts), bare(make(False)), rtol=1e-6)


def ipndm_by_transcription(name, ts, x, max_order, lower_order_final=False):
    """zju-pi/diff-sampler's ipndm_sampler, transcribed: y = x/alpha, t = sigma/alpha, d = (y - D(y))/t, Adams-Bashforth
    with the equal-step constants on the buffer of past d's (warm-up min(max_order, i + 1)); optionally lower orders
    in the last steps of runs of < 15 steps."""
    ab = {1: [1], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    n, buf = len(ts) - 1, []
    al0, _ = kernel(name, ts[0])
    y = x / al0
    for i in range(n):
        al, si = kernel(name, ts[i])
        aln, sin_ = kernel(name, ts[i + 1])
        t_cur, t_next = si / al, sin_ / aln
        d = (y - x0_hat(name, al * y, ts[i])) / t_cur
        buf = [d] + buf[:3]
        order = min(max_order, i + 1)
        if lower_order_final == "always" or (lower_order_final is True and n < 15):
            order = min(order, n - i)
        y = y + (t_next - t_cur) * sum(w * dj for w, dj in zip(ab[order], buf))
    return kernel(name, ts[-1])[0] * y


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ipndm_matches_diff_sampler(name, order):
    "Seven steps on the EDM grid (unequal steps in tau), every maximal order, against the transcribed reference loop."
    sde, x = SDES[name], x_start(14)
    ts = sampling_times(sde, 7, spacing="edm", dtype=F64).tolist()
    want = ipndm_by_transcription(name, ts, x, order)
    close(sample(sde, score, x_T=x, predictor=IPNDM(order), steps=7, spacing="edm", denoise=False).samples, want, 1e-10)


@pytest.mark.parametrize("steps", [14, 15])
def test_ipndm_lower_order_final_threshold(steps):
    "With lower_order_final the last steps drop to orders 1, 2, 3 at 14 steps and not at 15."
    ts = sampling_times(SDES["vp"], steps, spacing="edm", dtype=F64).tolist()
    x = x_start(15)
    out = sample(SDES["vp"], score, x_T=x, predictor=IPNDM(4, lower_order_final=True), steps=steps, spacing="edm",
                 denoise=False).samples
    close(out, ipndm_by_transcription("vp", ts, x, 4, lower_order_final=True), 1e-10)
    assert torch.allclose(out, ipndm_by_transcription("vp", ts, x, 4), rtol=1e-12) == (steps >= 15)


@pytest.mark.parametrize("q", [2, 3, 4])
def test_ipndm_variable_step_weights_integrate_polynomials(q):
    """Eq. `eq-ipndm-var`: with a slope z_hat(tau) that is a polynomial of degree q - 1 (and does not depend on x), each
    step of order q integrates it exactly on unequal steps; the constant weights do not (their defect is eq-ipndm-error)."""
    sde, x = SDES["vp"], x_start(16)
    coef = [0.3, -0.7, 0.25, 0.05][:q]
    zfun = lambda tau: sum(c * tau**j for j, c in enumerate(coef))
    Zint = lambda tau: sum(c * tau ** (j + 1) / (j + 1) for j, c in enumerate(coef))

    def score_z(x, t):
        al, si = sde.marginal_coeffs(t)
        return -(zfun(si / al) / si)[:, None] + 0 * x
    ts = sampling_times(sde, 6, spacing="edm", dtype=F64).tolist()
    taus = [kernel("vp", t)[1] / kernel("vp", t)[0] for t in ts]
    for variable_step, exact in ((True, True), (False, False)):
        pred = IPNDM(q, variable_step=variable_step)
        pred.reset(6)
        y = x
        for k in range(6):
            y_next = pred.step(sde, score_z, y, tb(ts[k]), tb(ts[k + 1]))[0]
            if k >= q - 1:   # a step of order q
                inc = y_next / kernel("vp", ts[k + 1])[0] - y / kernel("vp", ts[k])[0]
                err = (inc - (Zint(taus[k + 1]) - Zint(taus[k]))).abs().max().item()
                scale = (y / kernel("vp", ts[k])[0]).abs().max().item() + abs(Zint(taus[k]))
                assert (err < 1e-12 * scale) == exact, (variable_step, k, err, scale)
            y = y_next


def test_heun_euler_last_step_by_hand():
    """The last step of a run is an Euler step in tau (= DDIM), 1 evaluation: 2N - 1 in all; `euler_last=False` keeps
    the Heun step there (2N). `step` without `reset` never takes the Euler shortcut."""
    name, x = "vp", x_start(17)
    ts = sampling_times(SDES[name], 3, spacing="edm", dtype=F64).tolist()
    y = x
    for k in range(3):
        (al, si), (aln, sin_) = kernel(name, ts[k]), kernel(name, ts[k + 1])
        u, dtau = y / al, sin_ / aln - si / al
        d = -si * score(y, tb(ts[k]))
        if k == 2:
            y = aln * (u + dtau * d)
        else:
            d2 = -sin_ * score(aln * (u + dtau * d), tb(ts[k + 1]))
            y = aln * (u + dtau * (d + d2) / 2)
    out = sample(SDES[name], score, x_T=x, predictor=Heun(), steps=3, spacing="edm", denoise=False)
    close(out.samples, y, 1e-11)
    assert out.nfe == 5
    assert sample(SDES[name], score, x_T=x, predictor=Heun(euler_last=False), steps=3, spacing="edm",
                  denoise=False).nfe == 6
    t, tn = STEP
    close(Heun().step(SDES[name], score, x, tb(t), tb(tn))[0], Heun(euler_last=False).step(SDES[name], score, x, tb(t), tb(tn))[0])


@pytest.mark.parametrize("pred", [DPMSolver3M(False), UniPC(3, "bh1", lower_order_final=False), UniPC(2),
                                  IPNDM(4), IPNDM(3, variable_step=True)],
                         ids=["3m", "unipc3", "unipc2", "ipndm", "ipndm_var"])
def test_multistep_per_sample_grids(pred):
    """`step` with a different grid per sample: the multistep history (log-SNR or tau, x0_hat) is kept per sample, so row i
    of a 4-step run equals the run of row i alone on its own grid."""
    sde, x = SDES["vp"], x_start(18)
    grids = torch.stack([torch.linspace(0.9 - 0.05 * i, 0.1 + 0.03 * i, 5, dtype=F64) ** (1 + 0.2 * i) for i in range(B)])

    def run(x, grids):
        pred.reset(4)
        for k in range(4):
            x = pred.step(sde, score, x, grids[:, k], grids[:, k + 1])[0]
        return x
    close(run(x, grids), torch.cat([run(x[i:i + 1], grids[i:i + 1]) for i in range(B)]), 1e-11)


def test_multistep_instances_reused_across_runs():
    "`sample` resets the history: a second run with the same instance repeats the first exactly."
    for pred in (DPMSolver3M(), UniPC(3), IPNDM(), Heun()):
        first = sample(SDES["vp"], score, x_T=x_start(19), predictor=pred, steps=5, denoise=False).samples
        assert torch.equal(first, sample(SDES["vp"], score, x_T=x_start(19), predictor=pred, steps=5, denoise=False).samples)


# ------------------------------------------------------------------ against diffusers 0.42, on its own (DDPM) grid
@pytest.fixture(scope="module")
def diffusers_schedulers():
    "diffusers' UniPC and DPM-Solver scheduler modules (imported once); the tests are skipped where it is not installed."
    return pytest.importorskip("diffusers.schedulers.scheduling_unipc_multistep"), pytest.importorskip(
        "diffusers.schedulers.scheduling_dpmsolver_multistep")


RING64 = ring_of_gaussians(dtype=F64)
VPS = SDES["vp"]
SCORE64 = RING64.score_fn(VPS)
X_CMP = torch.randn(60, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
DIFFUSERS_KW = dict(prediction_type="epsilon", timestep_spacing="leading", final_sigmas_type="sigma_min")


def vp_time_of_tau(tau):
    "The VP time with sigma/alpha = tau: B(t) = log(1 + tau^2), B quadratic in t."
    Bt = torch.log1p(tau**2)
    return 2 * Bt / (VPS.beta_min + torch.sqrt(VPS.beta_min**2 + 2 * (VPS.beta_max - VPS.beta_min) * Bt))


def run_diffusers(scheduler, steps, x):
    """diffusers' loop with the exact epsilon = -sigma s of the ring at the times with sigma/alpha = its grid (handed back
    to it in float64: the same numbers, so the same grid, with float64 coefficients)."""
    scheduler.set_timesteps(steps)
    scheduler.sigmas = scheduler.sigmas.double()
    ts = vp_time_of_tau(scheduler.sigmas)
    for k, step in enumerate(scheduler.timesteps):
        t_k = ts[k].expand(x.shape[0])
        x = scheduler.step(-VPS.marginal_coeffs(t_k)[1][:, None] * SCORE64(x, t_k), step, x).prev_sample
    return x, ts


def run_grid_replayed(pred, ts, x, replay_float32):
    "Our predictor on the grid; optionally with DPMSolverMultistepScheduler.step's float32 (sigma'/sigma) x replayed."
    pred.reset(len(ts) - 1)
    with VPS.unchecked():
        sig = VPS.marginal_coeffs(ts)[1]
        for k in range(len(ts) - 1):
            x_next = pred.step(VPS, SCORE64, x, ts[k].expand(x.shape[0]), ts[k + 1].expand(x.shape[0]))[0]
            if replay_float32:
                ratio = (sig[k + 1] / sig[k]).item()
                x_next = x_next + (torch.tensor(ratio, dtype=torch.float32) * x.float()).double() - ratio * x
            x = x_next
    return x


def amplification(pred, ts, x):
    "How much a perturbation of x_T grows over the run (largest ratio over the samples)."
    v = 1e-7 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    d = run_grid_replayed(pred, ts, x + v, False) - run_grid_replayed(pred, ts, x, False)
    return (d.norm(dim=1) / v.norm(dim=1)).max().item()


@pytest.mark.parametrize("steps,lower_order_final", [(6, True), (10, True), (10, False), (20, False)])
def test_dpm_solver_3m_matches_diffusers(steps, lower_order_final, diffusers_schedulers):
    """DPMSolverMultistepScheduler(solver_order=3, algorithm_type="dpmsolver++") on the same DDPM-step times. Its `step`
    casts the sample to float32, so (sigma'/sigma) x is a float32 product: with that rounding replayed the two agree to
    float64 rounding, without it to float32 rounding. Bound: N steps, each at most 64 u max|x| (u the unit roundoff of
    the arithmetic), grown by at most the measured amplification A of a perturbation over the run."""
    _, dpm = diffusers_schedulers
    theirs, ts = run_diffusers(dpm.DPMSolverMultistepScheduler(solver_order=3, algorithm_type="dpmsolver++",
                                                               lower_order_final=lower_order_final, **DIFFUSERS_KW),
                               steps, X_CMP)
    pred = DPMSolver3M(lower_order_final, min_step_ratio=0)   # diffusers has no step-ratio guard; its DDPM grid needs one
    A, M = amplification(pred, ts, X_CMP), theirs.abs().max().item()
    replayed = (run_grid_replayed(pred, ts, X_CMP, True) - theirs).abs().max().item()
    raw = (run_grid_replayed(pred, ts, X_CMP, False) - theirs).abs().max().item()
    assert replayed < steps * A * 64 * U64 * M, (replayed, A)
    assert raw < steps * A * 64 * U32 * M and raw > replayed   # the float32 cast is the only difference


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps,lower_order_final,corrector", [(6, True, True), (10, False, True), (10, True, False),
                                                                (20, False, True)])
def test_unipc_matches_diffusers(variant, order, steps, lower_order_final, corrector, diffusers_schedulers):
    """UniPCMultistepScheduler(solver_type=variant, predict_x0=True, solver_order=order) on the same times, the corrector
    switched off by `disable_corrector` where asked: float64 rounding (no cast in its step). diffusers lowers the final
    orders at every length, we below 15 steps: the runs with lower_order_final have fewer than 15 steps."""
    unipc, _ = diffusers_schedulers
    sched = unipc.UniPCMultistepScheduler(solver_order=order, solver_type=variant, predict_x0=True,
                                          lower_order_final=lower_order_final,
                                          disable_corrector=[] if corrector else list(range(steps)), **DIFFUSERS_KW)
    theirs, ts = run_diffusers(sched, steps, X_CMP)
    # diffusers has no step-ratio guard, and its DDPM grid's last log-SNR steps are > 2x the previous
    pred = UniPC(order, variant, corrector=corrector, lower_order_final=lower_order_final, min_step_ratio=0)
    err = (run_grid_replayed(pred, ts, X_CMP, False) - theirs).abs().max().item()
    assert err < steps * amplification(pred, ts, X_CMP) * 64 * U64 * theirs.abs().max().item(), err


# ------------------------------------------------------------------ orders of convergence (float64, exact mixture score)
@pytest.fixture(scope="module")
def edm_reference(one_thread):
    "200 prior draws and their exact probability-flow solution at eps = 1e-3 (dopri5, rtol = atol = 1e-10), VP."
    from sde_diffusion.reverse import probability_flow
    x_T = VPS.prior_sampling((100, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    with VPS.unchecked():
        ref, _ = probability_flow(VPS, SCORE64, x_T, VPS.T, 1e-3, rtol=1e-10, atol=1e-10)
    return x_T, ref


@pytest.mark.parametrize("pred,order", [(DPMSolver3M(), 2), (UniPC(3, corrector=False), 3), (UniPC(2, "bh1"), 3),
                                        (UniPC(2, "bh2"), 3), (UniPC(3, "bh2"), 4), (IPNDM(4), 2),
                                        (IPNDM(4, variable_step=True), 4), (Heun(), 2)],
                         ids=["3m", "unip3", "unipc2_bh1", "unipc2_bh2", "unipc3", "ipndm4", "ipndm4_var", "heun"])
def test_multistep_orders_on_the_edm_grid(pred, order, edm_reference):
    """Fitted slope of log(error) against log N, N = 64..512, on the EDM grid (unequal steps in log-SNR and in tau). The
    slope drifts towards the order as O(1/N) (deterministic, not noise), so the test is the one the claim needs: the
    nearest integer is the predicted order. DPM-Solver++(3M) as implemented is second order (its D2 is half the Taylor
    term, eq-dpmpp3m-defect); UniPC-p is p + 1; iPNDM with the constant weights is 2 on unequal steps (eq-ipndm-error)."""
    x_T, ref = edm_reference
    Ns = [64, 128, 256, 512]
    errs = [(sample(VPS, SCORE64, x_T=x_T, predictor=pred, steps=N, spacing="edm", denoise=False).samples - ref)
            .square().sum(1).mean().sqrt().item() for N in Ns]
    slope = -np.polyfit(np.log(Ns), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.5, (errs, slope)


def test_langevin_kappa_scales_with_the_sdes_time_horizon():
    "kappa = 1 - beta(t) T / N is DDPM's 1 - beta_i for a VP-type SDE on [0, T]; with T = 1 the two readings coincide."
    from sde_diffusion.sde import CosineVPSDE
    t = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    for sde in (CosineVPSDE(N=100, T=2.0), VPSDE(N=100)):
        c = Langevin(snr=0.16).coefficients(sde, t)
        torch.testing.assert_close(c["kappa"], 1 - sde.beta(t) * sde.T / sde.N, rtol=1e-15, atol=0)
    c = Langevin(snr=0.16).coefficients(CosineVPSDE(N=100, T=2.0), t)
    assert (c["kappa"] < 1 - CosineVPSDE(N=100, T=2.0).beta(t) / 100).all()   # the T-free formula would be too large


# ------------------------------------------------------------------ mutation-test survivors of the new solvers (issue 17)
@pytest.mark.parametrize("make", [DPMSolver3M, lambda: UniPC(3), lambda: UniPC(2, "bh1"), lambda: IPNDM(4, lower_order_final=True),
                                  DPMSolver2M, Heun], ids=["3m", "unipc3", "unipc2", "ipndm_lof", "2m", "heun"])
def test_a_fresh_multistep_instance_steps_like_a_long_run(make):
    """`step` without `reset` (a fresh instance) never counts a step as one of a short run's last: its orders are the
    warm-up 1, 2, ..., p and then p, as after `reset(20)` (20 >= 15: no final lowering). Bit for bit, 5 unequal steps."""
    sde, x = SDES["vp"], x_start(40)
    ts = torch.tensor([0.9, 0.7, 0.45, 0.3, 0.12, 0.05], dtype=F64)
    fresh, ref = make(), make()
    ref.reset(20)
    a, b = x, x
    for k in range(5):
        t, tn = ts[k].expand(B), ts[k + 1].expand(B)
        a, b = fresh.step(sde, score, a, t, tn)[0], ref.step(sde, score, b, t, tn)[0]
    assert torch.equal(a, b)


def test_unipc_order_zero_is_refused():
    with pytest.raises(ValueError, match="`order`"):
        UniPC(order=0)


# ------------------------------------------------------------------ the step-ratio guard (eq-step-ratio)
def ratio_grid(ratios=(1.0, 0.4, 0.6)):
    """VP times from T to eps whose log-SNR steps h_1..h_4 have the ratios h_{k-1}/h_k = `ratios` (steps 2, 3, 4)."""
    sde = SDES["vp"]
    h = [1.0]
    for r in ratios:
        h.append(h[-1] / r)
    lam_T, lam_eps = lam("vp", sde.T), lam("vp", 1e-3)
    scale = (lam_eps - lam_T) / sum(h)
    targets = torch.tensor([lam_T + scale * sum(h[:k]) for k in range(len(h) + 1)], dtype=F64)
    ts = invert_log_snr(sde, targets, 1e-3, sde.T)
    ts[0], ts[-1] = sde.T, 1e-3
    return ts.tolist()


def test_step_ratio_guard_orders_on_a_hand_made_grid():
    """Log-SNR step ratios 1, 0.4, 0.6: step 1 is first order (warm-up), step 2 full (r = 1), step 3 first order (0.4 <
    1/2), step 4 uses the previous point (0.6) but not the one before (h_2/h_4 = 0.24): 2M and 3M take orders 1, 2, 1, 2,
    through `sample` (numbers, decided on the host) and through `step` (tensors, torch.where), as the references with
    those orders forced; with min_step_ratio=0 the references' own orders."""
    sde, x = SDES["vp"], x_start(20)
    ts = ratio_grid()
    lams = [lam("vp", t) for t in ts]
    h = [lams[i + 1] - lams[i] for i in range(4)]
    close(torch.tensor([h[0] / h[1], h[1] / h[2], h[2] / h[3], h[1] / h[3]], dtype=F64),
          torch.tensor([1.0, 0.4, 0.6, 0.24], dtype=F64), 1e-9)
    grid = torch.tensor(ts, dtype=F64)
    for make, by_hand in ((DPMSolver2M, dpm2m_by_hand), (DPMSolver3M, dpm3m_by_hand)):
        guarded = by_hand("vp", ts, x, False, orders=[1, 2, 1, 2])
        plain = by_hand("vp", ts, x, False, orders=[1, 2, 2, 2] if make is DPMSolver2M else [1, 2, 3, 3])
        assert not torch.allclose(guarded, plain, rtol=1e-6)
        close(run_pred(sde, make(False), x, ts), guarded, 1e-11)                        # tensors: torch.where
        close(run_pred(sde, make(False, min_step_ratio=0), x, ts), plain, 1e-11)
        close(host_run(sde, make(False), x, grid), guarded, 1e-11)                      # numbers: on the host
        close(host_run(sde, make(False, min_step_ratio=0), x, grid), plain, 1e-11)
    # UniP-3 and iPNDM-4 (steps in tau here: this grid's tau steps shrink, so the guard passes) through both paths
    for pred in (lambda **kw: UniPC(3, corrector=False, lower_order_final=False, **kw),
                 lambda **kw: UniPC(2, lower_order_final=False, **kw), lambda **kw: IPNDM(4, **kw)):
        close(run_pred(sde, pred(), x, ts), host_run(sde, pred(), x, grid), 1e-11)
    assert torch.equal(host_run(sde, IPNDM(4), x, grid), host_run(sde, IPNDM(4, min_step_ratio=0), x, grid))
    assert not torch.allclose(host_run(sde, UniPC(2, lower_order_final=False), x, grid),
                              host_run(sde, UniPC(2, lower_order_final=False, min_step_ratio=0), x, grid), rtol=1e-6)


def host_run(sde, pred, x, grid):
    "The loop of `sample` on an arbitrary grid: coefficients once, as Python numbers per step."
    table = pred.coefficients(sde, grid[:-1], grid[1:])
    rows = [{k: v[i].item() for k, v in table.items()} for i in range(len(grid) - 1)]
    pred.reset(len(grid) - 1)
    with sde.unchecked():
        for k, c in enumerate(rows):
            x = pred.apply(c, score, x, grid[k].expand(x.shape[0]), grid[k + 1].expand(x.shape[0]))[0]
    return x


@pytest.mark.parametrize("spacing", ["uniform", "logsnr", "edm"])
@pytest.mark.parametrize("make", [lambda **kw: DPMSolver2M(**kw), lambda **kw: DPMSolver3M(**kw),
                                  lambda **kw: UniPC(2, **kw), lambda **kw: UniPC(3, "bh1", **kw),
                                  lambda **kw: IPNDM(4, **kw), lambda **kw: IPNDM(4, variable_step=True, **kw)],
                         ids=["2m", "3m", "unipc2", "unipc3", "ipndm", "ipndm_var"])
def test_step_ratio_guard_off_and_inactive_are_bit_for_bit(spacing, make):
    """min_step_ratio=0 skips the guard; a guard that never fires (a tiny threshold, every ratio passes) takes the same
    arithmetic, bit for bit, through `sample` and through `step` (torch.where picks the full-order candidate); on the
    log-SNR grid (ratios 1) and the EDM grid from 5 steps on (ratios > 1/2) the default changes nothing."""
    sde, x = SDES["vp"], x_start(21)
    for steps in (5, 16):
        ts = sampling_times(sde, steps, spacing=spacing, dtype=F64).tolist()
        runs = {m: sample(sde, score, x_T=x, predictor=make(min_step_ratio=m), steps=steps, spacing=spacing,
                          denoise=False).samples for m in (0, 1e-9)}
        assert torch.equal(runs[0], runs[1e-9])
        assert torch.equal(run_pred(sde, make(min_step_ratio=0), x, ts), run_pred(sde, make(min_step_ratio=1e-9), x, ts))
        if spacing != "uniform":
            assert torch.equal(runs[0], sample(sde, score, x_T=x, predictor=make(), steps=steps, spacing=spacing,
                                               denoise=False).samples)


@pytest.mark.parametrize("cls", [DPMSolver2M, DPMSolver3M, UniPC, IPNDM])
@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "0.5", None])
def test_min_step_ratio_refuses_bad_values(cls, bad):
    with pytest.raises(ValueError, match="min_step_ratio"):
        cls(min_step_ratio=bad)


def test_min_step_ratio_default_and_repr():
    for cls in (DPMSolver2M, DPMSolver3M, UniPC, IPNDM):
        assert cls().min_step_ratio == 0.5 and "min_step_ratio=0.5" in repr(cls())
        assert cls(min_step_ratio=0).min_step_ratio == 0.0


def test_step_ratio_guard_keeps_a_ratio_exactly_at_the_threshold():
    "eq-step-ratio keeps a past point whose ratio equals `min_step_ratio` (>=, not >): exact binary fractions, numbers and tensors."
    from sde_diffusion.sampling import _ratio_order
    # nodes newest first, step 1: ratios 0.5 (exactly the threshold) then 0.25 (below it)
    assert _ratio_order(3, [0.0, -0.5, -0.75], 1.0, 0.5) == 2
    assert _ratio_order(2, [0.0, -0.5], 1.0, 0.5) == 2
    assert _ratio_order(2, [0.0, -0.5], 1.0, 0.625) == 1
    nodes = [torch.zeros(3, 1), torch.tensor([[-0.5], [-0.25], [-1.0]]), torch.tensor([[-1.0], [-0.5], [-1.25]])]
    assert torch.equal(_ratio_order(3, nodes, torch.ones(3, 1), 0.5), torch.tensor([[3], [1], [2]]))


# ------------------------------------------------------------------ mutation-test survivors of the whole module (issue 17, 2026-12-03)
class _ExpandingSDE(SDE):
    "dx = c x dt + dw (c > 0: an expanding linear SDE): alpha = e^{ct}, sigma^2 = (e^{2ct} - 1)/(2c); only what `sample` reads."

    def __init__(self, c):
        super().__init__()
        self.c = c

    def sde(self, x, t):
        return self.c * x, torch.ones(x.shape[0], *([1] * (x.ndim - 1)), dtype=x.dtype)

    def marginal_coeffs(self, t):
        return torch.exp(self.c * t), torch.sqrt(torch.expm1(2 * self.c * t) / (2 * self.c))

    def prior_sampling(self, shape, *, generator=None, dtype=None, device=None):
        raise NotImplementedError

    def prior_logp(self, z):
        raise NotImplementedError


def test_euler_step_whose_x_factor_is_exactly_zero_keeps_nothing_of_x():
    """`sample`'s loop skips the product 1 * x when a step's x factor c_x is exactly 1 (VE), and only then. An Euler
    step of the probability-flow ODE of dx = 2x dt + dw over h = T - eps = 1/2 has c_x = 1 - (f/x) h = 1 - 2 * 1/2 = 0
    exactly: x' = x - h (2x - s/2) = s/4, with nothing of x left (exact binary fractions: compared bit for bit)."""
    sde, x = _ExpandingSDE(2.0), x_start(30)
    out = sample(sde, score, x_T=x, predictor=EulerMaruyama(ode=True), steps=1, eps=0.5, denoise=False)
    assert torch.equal(out.samples, 0.25 * score(x, tb(1.0)))


def test_ddim_at_eta_one_is_ancestral_sampling_in_float32():
    """Eq. `eq-ddim` at eta = 1 is ancestral sampling: c^2 = v sigma'^2/sigma^2 and sqrt(sigma'^2 - c^2) = a sigma'^2/sigma.
    In float32 at these (float32) times sigma'^2 - c^2 rounds below zero (-7e-15 for sub-VP, -5e-13 for VE); the clamp
    keeps the step finite and equal to ancestral sampling's: both formulas start from the same float32 sigma, sigma', a
    and take at most four roundings each, so they agree within 8 u (u = 2^-24)."""
    from sde_diffusion.sampling import _transition
    u = torch.finfo(torch.float32).eps / 2
    for sde, t, tn in ((SDES["subvp"], 0.5687745213508606, 0.0022201647516340017),
                       (SDES["ve"], 0.8788895010948181, 0.004040745552629232)):
        T, TN = torch.tensor([t], dtype=torch.float32), torch.tensor([tn], dtype=torch.float32)
        assert T.item() == t and TN.item() == tn   # the times are float32 numbers
        with sde.unchecked():
            a, v, sigma, sigma_n = _transition(sde, T, TN)
            assert float(sigma_n**2 - v * sigma_n**2 / sigma**2) < 0   # the rounding the clamp is there for
            got, want = DDIM(1.0).coefficients(sde, T, TN), AncestralSampling().coefficients(sde, T, TN)
        for k in ("cx", "cs", "cz"):
            torch.testing.assert_close(got[k], want[k], rtol=8 * u, atol=0)
        x = x_start(31).float()
        step = DDIM(1.0).step(sde, score, x, T.expand(B), TN.expand(B), torch.Generator().manual_seed(3))[0]
        assert torch.isfinite(step).all()


def test_step_ratio_guard_at_threshold_one_and_a_negative_ratio():
    """`min_step_ratio` = 0 alone switches the guard off (every past point is used, whatever its ratio, even a negative
    one); any other threshold, 1 included, is compared: ratio 1/2 < 1 drops the point, ratio 1 keeps it."""
    from sde_diffusion.sampling import _ratio_order
    assert _ratio_order(2, [0.0, -0.5], 1.0, 1.0) == 1
    assert _ratio_order(2, [0.0, -1.0], 1.0, 1.0) == 2
    assert _ratio_order(3, [0.0, -1.0, -1.5], 1.0, 1.0) == 2
    assert _ratio_order(2, [0.0, 0.5], 1.0, 0) == 2   # a negative ratio, guard off
    assert _ratio_order(2, [0.0, 0.5], 1.0, 1e-9) == 1


def test_corrector_defaults_are_song_et_al():
    """A corrector built without arguments has Song et al.'s signal-to-noise ratio r = 0.16 and one Langevin step per
    call: its step equals the explicit one bit for bit (and differs at r = 0.17)."""
    x, t = x_start(32), tb(0.4)
    for cls in (Langevin, AnnealedLangevin):
        assert (cls().snr, cls().n_steps) == (0.16, 1)
        run = lambda c: c.step(SDES["vp"], score, x, t, torch.Generator().manual_seed(4))[0]   # noqa: E731
        assert torch.equal(run(cls()), run(cls(0.16, 1))) and not torch.equal(run(cls()), run(cls(0.17, 1)))


def test_langevin_norms_cache_follows_feature_size_dtype_and_device(device):
    """One Langevin instance on batches whose shape, dtype or device changes, one at a time: the cached ones vector is
    remade for each change (a batch size equal to the old feature size included), and the norms are torch's. Each
    norm is a sum of D squares and a square root: (D/2 + 2) eps bounds the relative error of both (as in test_sampling).
    The device change is a change only where there is a GPU (`device` = "cuda")."""
    corr, g = Langevin(0.16), torch.Generator().manual_seed(9)
    for shape, dtype, dev in (((4, 2), torch.float32, "cpu"), ((2, 3), torch.float32, "cpu"),   # B = the old D
                              ((2, 3), torch.float64, "cpu"), ((2, 3), torch.float64, device)):
        v = torch.randn(shape, dtype=dtype, generator=g).to(dev)
        tol = (shape[1] / 2 + 2) * torch.finfo(dtype).eps
        torch.testing.assert_close(corr._norms(v), v.norm(dim=1), rtol=tol, atol=0)
        assert corr._ones.shape == (shape[1],) and corr._ones.dtype == dtype and corr._ones.device == v.device


def test_auto_switches_at_9_19_and_49_steps():
    """bench/SUITE.md's choice, as numbers (test_sampling reads the constants themselves): on VP, UniPC-2 on the
    time-quadratic grid for 1 to 8 steps and on the time-cubic grid for 9 to 18 (up to 8 numbers per sample), iPNDM-4 on the time-quadratic grid for
    19 to 48, UniPC-3 on the log-SNR grid from 49 (NFE 50)."""
    from sde_diffusion.sampling import AUTO_CUBIC_MIN_STEPS, AUTO_SWITCH_STEPS, recommended_sampler
    assert AUTO_SWITCH_STEPS == (19, 49) and AUTO_CUBIC_MIN_STEPS == 9
    lof = {"lower_order_final": "always"}   # UniPC-2's last step first order in runs of every length (the 15-step cliff)
    assert [recommended_sampler(n) for n in (1, 8, 9, 18, 19, 48, 49, 1000)] == (
        [("unipc", "quadratic", lof)] * 2 + [("unipc", "cubic", lof)] * 2 + [("ipndm", "quadratic", {})] * 2
        + [("unipc", "logsnr", {"order": 3})] * 2)
    # more than 8 numbers per sample (bench/SUITE_DIM.md): the time-quadratic grid from 9 to 18 steps as well
    from sde_diffusion.sampling import AUTO_CUBIC_MAX_DIM
    assert AUTO_CUBIC_MAX_DIM == 8
    assert [recommended_sampler(n, dim=d) for n, d in ((9, 8), (9, 9), (18, 8), (18, 63), (19, 16))] == (
        [("unipc", "cubic", lof), ("unipc", "quadratic", lof)] * 2 + [("ipndm", "quadratic", {})])
    # from 64 numbers per sample up to 10 steps (bench/ORDER_HD.md): UniPC-3 on the time-3/2 grid
    from sde_diffusion.sampling import AUTO_THREEHALVES_MAX_STEPS, AUTO_THREEHALVES_MIN_DIM
    assert AUTO_THREEHALVES_MIN_DIM == 64 and AUTO_THREEHALVES_MAX_STEPS == 10
    assert [recommended_sampler(n, dim=d) for n, d in ((1, 64), (10, 3072), (11, 64), (18, 64), (19, 64))] == (
        [("unipc", "threehalves", {"order": 3, **lof})] * 2 + [("unipc", "quadratic", lof)] * 2
        + [("unipc", "logsnr", {"order": 3})])
    # more than 16 numbers per sample (bench/SUITE_DIM.md section E): UniPC-3 on the log-SNR grid from 19 steps on
    from sde_diffusion.sampling import AUTO_IPNDM_MAX_DIM
    assert AUTO_IPNDM_MAX_DIM == 16
    assert [recommended_sampler(n, dim=d) for n, d in ((19, 17), (24, 64), (48, 3072), (48, 16))] == (
        [("unipc", "logsnr", {"order": 3})] * 3 + [("ipndm", "quadratic", {})])
    # Tweedie's step from 13 steps on the VP SDE (below: NFE = steps; chapter 9, bench/SUITE.md)
    from sde_diffusion.sampling import AUTO_DENOISE_MIN_STEPS, recommended_denoise
    assert AUTO_DENOISE_MIN_STEPS == 13
    assert [recommended_denoise(n) for n in (1, 9, 12, 13, 14, 1000)] == [False] * 3 + [True] * 3


def test_ode_sample_reports_overflow_of_the_samples_dtype():
    """VE at sigma_max = 1e6 with a zero score: the ODE leaves the prior draw (values ~1e6) in place, finite in float32,
    the working dtype of float16 samples, but beyond float16's 65504: an error naming the dtype, not inf."""
    from sde_diffusion.reverse import NonFiniteError
    from sde_diffusion.sampling import ode_sample
    with pytest.raises(NonFiniteError, match=r"samples overflow `dtype` torch.float16 after 2 score evaluations"):
        ode_sample(VESDE(sigma_max=1e6), lambda x, t: torch.zeros_like(x), (20, 2), method="euler", steps=2,
                   denoise=False, dtype=torch.float16, generator=torch.Generator().manual_seed(0))
