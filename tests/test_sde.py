"""VE, VP, sub-VP and cosine SDEs: kernels against simulation and against the variance ODE, the inverse map from a kernel
to its SDE, the DDPM, SMLD and Nichol-Dhariwal discretizations, the reverse SDE/ODE formulas, a shape x dtype x device
matrix, priors against torch.distributions, and clear errors."""
import math

import pytest
import torch

from sde_diffusion.brownian import time_grid
from sde_diffusion.sde import SDE, CosineVPSDE, ReverseSDE, SubVPSDE, VESDE, VPSDE
from sde_diffusion.solvers import euler_maruyama


SDES = {
    "ve": lambda: VESDE(),
    "vp": lambda: VPSDE(),
    "subvp": lambda: SubVPSDE(),
    "ve-small": lambda: VESDE(sigma_min=0.05, sigma_max=5.0, N=100),
    "vp-slow": lambda: VPSDE(beta_min=0.5, beta_max=5.0, N=200),
    "subvp-slow": lambda: SubVPSDE(beta_min=0.5, beta_max=5.0, N=200),
    "cosine": lambda: CosineVPSDE(),
    "cosine-wide": lambda: CosineVPSDE(s=0.02, beta_max=50.0, N=100),
}
SHAPES = [(6,), (6, 2), (6, 3, 4, 4)]
SHAPE_IDS = ["rank1", "rank2", "rank4"]


# ------------------------------------------------------------------------------------------- kernels, checked
@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_marginal_prob_matches_euler_maruyama(name):
    "Simulated x_t from a fixed x0: the standardized residual (x_t - mean) / std is N(0, 1) within 4 standard errors."
    sde, M = SDES[name](), 10_000                               # (M, 3) stays under torch's parallel grain: fast on 2 busy cores
    x0 = torch.tensor([1.5, -0.5, 0.0]).expand(M, 3)
    gen, x, t_prev = torch.Generator().manual_seed(0), x0, 0.0
    for t in (0.1, 0.5, 1.0):
        steps = max(200, round((t - t_prev) * 1000))             # EM variance bias < 0.9%, below 1 standard error
        x = euler_maruyama(sde.drift, sde.diffusion, x, time_grid(t_prev, t, steps), generator=gen)
        t_prev = t
        mean, std = sde.marginal_prob(x0, torch.full((M,), t))
        z = (x - mean) / std
        assert (z.mean(0).abs() < 4 / math.sqrt(M)).all(), (t, z.mean(0))
        assert ((z.var(0) - 1).abs() < 4 * math.sqrt(2 / (M - 1))).all(), (t, z.var(0))


# The cosine SDE's rate climbs to beta_max = 200 near T, where the trapezoidal rule's error h^2/12 int |a''| is 5e-8, far
# above these tolerances; its kernel is tied to `sde` exactly by test_inverse_map_by_autograd instead.
@pytest.mark.parametrize("name", [n for n in SDES if not n.startswith("cosine")])
def test_kernel_solves_the_moment_odes(name):
    "alpha = exp(int a) and sigma^2 = exp(2 int a) int exp(-2 int a) g^2, integrated from `sde` by trapezoids."
    sde = SDES[name]()
    ts = time_grid(0.0, 1.0, 2**17, dtype=torch.float64)
    drift, diffusion = sde.sde(torch.ones(len(ts), 1, dtype=torch.float64), ts)
    a, g2 = drift[:, 0], diffusion[:, 0] ** 2
    cumtrapz = lambda y: torch.cat([y.new_zeros(1), torch.cumulative_trapezoid(y, ts)])
    A = cumtrapz(a)
    std = (torch.exp(2 * A) * cumtrapz(torch.exp(-2 * A) * g2)).sqrt()
    alpha, sigma = sde.marginal_coeffs(ts)
    far = ts >= 0.01
    torch.testing.assert_close(alpha, A.exp(), rtol=1e-12, atol=0)
    torch.testing.assert_close(std[far], sigma[far], rtol=1e-6, atol=0)
    torch.testing.assert_close(std, sigma, rtol=0, atol=1e-6)


def test_closed_forms_and_small_t_accuracy():
    t = torch.tensor([1e-8, 1e-4, 0.3, 1.0], dtype=torch.float64)
    vp, subvp, ve = VPSDE(), SubVPSDE(), VESDE()
    B = 0.1 * t + 0.5 * t**2 * 19.9
    a, s = vp.marginal_coeffs(t)
    torch.testing.assert_close(a, torch.exp(-B / 2), rtol=1e-14, atol=0)
    torch.testing.assert_close(s, (-torch.expm1(-B)).sqrt(), rtol=1e-14, atol=0)   # accurate where 1 - exp(-B) ~ B
    torch.testing.assert_close(subvp.marginal_coeffs(t)[1], -torch.expm1(-B), rtol=1e-14, atol=0)
    s_ve = ve.marginal_coeffs(t)[1]
    torch.testing.assert_close(s_ve**2, 0.01**2 * ((5000.0 ** (2 * t)) - 1), rtol=1e-9, atol=0)
    # float32 keeps relative accuracy at small t too
    s32 = vp.marginal_coeffs(t.float())[1]
    torch.testing.assert_close(s32.double(), s, rtol=1e-5, atol=0)


def test_variance_preserving_and_sub_vp_bound():
    t = torch.linspace(0, 1, 501, dtype=torch.float64)
    for beta_min, beta_max in ((0.1, 20.0), (0.01, 1.0), (2.0, 3.0)):
        a, s_vp = VPSDE(beta_min, beta_max).marginal_coeffs(t)
        _, s_sub = SubVPSDE(beta_min, beta_max).marginal_coeffs(t)
        torch.testing.assert_close(a**2 + s_vp**2, torch.ones_like(t))
        assert (s_sub <= s_vp + 1e-15).all() and (a**2 + s_sub**2 <= 1 + 1e-15).all()


# ------------------------------------------------------------------------------------------- discretizations
def test_vp_discrete_schedule_is_ddpm():
    vp = VPSDE()
    betas = vp.discrete_betas(torch.float64)
    i = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(betas, 0.1 / 1000 + i * 19.9 / (1000 * 999), rtol=1e-12, atol=0)
    torch.testing.assert_close(betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(vp.alphas_cumprod(torch.float64), torch.cumprod(1 - betas, 0), rtol=1e-12, atol=0)


def test_vp_discretize_is_the_ddpm_step():
    vp = VPSDE()
    x = torch.randn(7, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0, 1, 7, dtype=torch.float64)
    f, G = vp.discretize(x, t)
    beta = vp.discrete_betas(torch.float64)[torch.round(t * 999).long()]
    torch.testing.assert_close(x + f, (1 - beta).sqrt().reshape(-1, 1, 1) * x)                 # x_{i+1} = sqrt(1 - beta_i) x_i + ...
    torch.testing.assert_close(G, beta.sqrt().reshape(-1, 1, 1))


def test_ddpm_alphas_cumprod_converge_to_vp_kernel_first_order():
    errs = []
    for N in (100, 400, 1600):
        vp = VPSDE(N=N)
        t = torch.arange(1, N + 1, dtype=torch.float64) / N
        errs.append((vp.alphas_cumprod(torch.float64) - torch.exp(2 * vp.log_mean_coeff(t))).abs().max().item())
    ratios = [errs[k] / errs[k + 1] for k in range(2)]
    assert all(3.6 < r < 4.4 for r in ratios), (errs, ratios)        # error ~ 1/N


def test_ddpm_schedule_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler()                                 # linear betas 1e-4 ... 0.02, 1000 steps
    vp = VPSDE()
    torch.testing.assert_close(vp.discrete_betas(torch.float32), sched.betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(vp.alphas_cumprod(torch.float32), sched.alphas_cumprod, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("N", [1, 2, 10, 1000])
def test_ve_discretize_telescopes_to_the_kernel(N):
    ve = VESDE(N=N)
    t = torch.arange(N, dtype=torch.float64) / max(N - 1, 1)
    f, G = ve.discretize(torch.zeros(N, 2, dtype=torch.float64), t)
    assert torch.equal(f, torch.zeros(N, 2, dtype=torch.float64))
    cum = (G[:, 0] ** 2).cumsum(0)
    sigmas = ve.discrete_sigmas(torch.float64)
    torch.testing.assert_close(cum, sigmas**2, rtol=1e-12, atol=0)   # sigma_{-1} = 0 convention
    if N > 1:
        torch.testing.assert_close(cum[1:] - cum[0], ve.marginal_coeffs(t[1:])[1] ** 2, rtol=1e-10, atol=0)


def test_timestep_rounds_level_times():
    "Times t_i = i / (N - 1) computed in float32 map back to i (truncation would lose some)."
    for sde in (VPSDE(), VESDE(N=777), CosineVPSDE(N=333)):
        i = torch.arange(sde.N)
        t = i.float() / (sde.N - 1)
        assert torch.equal(sde.timestep(t), i)


def test_default_discretize_is_euler_maruyama():
    sub = SubVPSDE(N=50)
    x, t = torch.randn(4, 2, dtype=torch.float64), torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64)
    drift, diffusion = sub.sde(x, t)
    f, G = sub.discretize(x, t)
    torch.testing.assert_close(f, drift / 50)
    torch.testing.assert_close(G, diffusion * math.sqrt(1 / 50))


# ------------------------------------------------------------------------------------------- reverse
@pytest.mark.parametrize("probability_flow", [False, True], ids=["sde", "ode"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", ["ve", "vp", "subvp", "cosine"])
def test_reverse_formulas_with_random_score(name, shape, probability_flow):
    sde = SDES[name]()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    t = torch.rand(shape[0], generator=gen, dtype=torch.float64)
    W = torch.randn(shape, generator=gen, dtype=torch.float64)
    score_fn = lambda x, t: W * x + t.reshape(-1, *[1] * (x.ndim - 1))     # an arbitrary field of the shape of x
    rsde = sde.reverse(score_fn, ode=probability_flow)
    assert isinstance(rsde, ReverseSDE) and rsde.T == sde.T and rsde.N == sde.N and rsde.forward is sde
    w = 0.5 if probability_flow else 1.0
    drift, diffusion = sde.sde(x, t)
    rdrift, rdiffusion = rsde.sde(x, t)
    assert rdrift.shape == shape and rdiffusion.shape == (shape[0],) + (1,) * (len(shape) - 1)
    torch.testing.assert_close(rdrift, drift - w * diffusion**2 * score_fn(x, t))
    torch.testing.assert_close(rdiffusion, torch.zeros_like(diffusion) if probability_flow else diffusion)
    f, G = sde.discretize(x, t)
    rf, rG = rsde.discretize(x, t)
    assert rf.shape == shape and rG.shape == G.shape
    torch.testing.assert_close(rf, f - w * G**2 * score_fn(x, t))
    torch.testing.assert_close(rG, torch.zeros_like(G) if probability_flow else G)
    torch.testing.assert_close(rsde.drift(x, t), rdrift)
    z = rsde.prior_sampling(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(rsde.prior_logp(z), sde.prior_logp(z))


def test_reverse_bad_score():
    vp = VPSDE()
    with pytest.raises(ValueError, match=r"`score_fn` must return a tensor of the shape of x \(3, 2\)"):
        vp.reverse(lambda x, t: x[:, :1]).sde(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(TypeError, match="`score_fn` must be callable"):
        vp.reverse(None)
    with pytest.raises(TypeError, match="`forward` must be an SDE"):
        ReverseSDE(object(), lambda x, t: x)


# ------------------------------------------------------------------------------------------- shape x dtype x device
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", ["ve", "vp", "subvp", "cosine"])
def test_shape_dtype_device_matrix(name, shape, dtype, device):
    sde = SDES[name]()
    gen = torch.Generator(device=device).manual_seed(3)
    x = torch.randn(shape, generator=gen, dtype=dtype, device=device)
    t = torch.rand(shape[0], generator=gen, dtype=dtype, device=device)
    per_sample = (shape[0],) + (1,) * (len(shape) - 1)
    outputs = {"sde": sde.sde(x, t), "marginal_prob": sde.marginal_prob(x, t), "discretize": sde.discretize(x, t)}
    for method, (full, small) in outputs.items():
        assert full.shape == shape and small.shape == per_sample, method
        for v in (full, small):
            assert v.dtype == dtype and v.device.type == device, method
            assert torch.isfinite(v).all(), method
    alpha, sigma = sde.marginal_coeffs(t)
    assert alpha.shape == sigma.shape == (shape[0],) and alpha.dtype == dtype and alpha.device.type == device
    z = sde.prior_sampling(shape, generator=torch.Generator(device=device).manual_seed(0), dtype=dtype)
    assert z.shape == shape and z.dtype == dtype and z.device.type == device
    assert torch.equal(z, sde.prior_sampling(shape, generator=torch.Generator(device=device).manual_seed(0), dtype=dtype))
    logp = sde.prior_logp(z)
    assert logp.shape == (shape[0],) and logp.dtype == dtype and logp.device.type == device
    # float32 and float64 agree
    x64, t64 = x.double(), t.double()
    for method in ("sde", "marginal_prob", "discretize"):
        ref = getattr(sde, method)(x64, t64)
        for got, want in zip(outputs[method], ref):
            torch.testing.assert_close(got, want.to(dtype), rtol=1e-4 if dtype == torch.float32 else 1e-12, atol=1e-5)


def test_integer_and_boundary_times(device):
    vp = VPSDE()
    x = torch.zeros(2, 3, device=device)
    mean, std = vp.marginal_prob(x, torch.tensor([0, 1], device=device))  # integer times are cast to x's dtype
    assert std.dtype == torch.float32 and std[0].item() == 0.0 and abs(std[1].item() - 1) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_time_on_wrong_device():
    with pytest.raises(ValueError, match="`t` is on cpu but `x` is on cuda"):
        VPSDE().sde(torch.zeros(2, 3, device="cuda"), torch.zeros(2))
    with pytest.raises(ValueError, match="`generator` is on cpu"):
        VPSDE().prior_sampling((2, 3), generator=torch.Generator().manual_seed(0), device="cuda")


# ------------------------------------------------------------------------------------------- priors
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", ["ve", "vp", "subvp", "ve-small", "cosine"])
def test_prior_logp_matches_torch_normal(name, shape):
    sde = SDES[name]()
    z = sde.prior_sampling(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scale = sde.sigma_max if isinstance(sde, VESDE) else 1.0
    ref = torch.distributions.Normal(torch.zeros((), dtype=torch.float64), torch.tensor(scale, dtype=torch.float64)).log_prob(z).reshape(shape[0], -1).sum(1)
    torch.testing.assert_close(sde.prior_logp(z), ref, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("name", ["ve", "vp", "cosine"])
def test_prior_sampling_moments(name):
    sde, M = SDES[name](), 200_000
    z = sde.prior_sampling((M, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    scale = sde.sigma_max if isinstance(sde, VESDE) else 1.0
    assert (z.mean(0).abs() < 4 * scale / math.sqrt(M)).all()
    assert ((z.var(0) / scale**2 - 1).abs() < 4 * math.sqrt(2 / (M - 1))).all()


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["ve", "vp", "subvp", "cosine"])
@pytest.mark.parametrize("method", ["sde", "marginal_prob", "discretize", "drift"])
def test_bad_times(name, method):
    sde = SDES[name]()
    call = getattr(sde, method)
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"`t` must lie in \[0, T\] = \[0, 1\], got values in \[0.1, 1.5\]"):
        call(x, torch.tensor([0.1, 0.2, 1.5]))
    with pytest.raises(ValueError, match=r"`t` must lie in \[0, T\]"):
        call(x, torch.tensor([-1e-3, 0.2, 0.5]))
    with pytest.raises(ValueError, match=r"`t` must be a tensor of shape \(B,\) = \(3,\) matching x.shape\[0\], got shape \(\)"):
        call(x, torch.tensor(0.5))
    with pytest.raises(ValueError, match=r"`t` must be a tensor of shape \(B,\) = \(3,\).*got shape \(2,\)"):
        call(x, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"`t` must be a tensor of shape \(B,\).*got shape \(3, 1\)"):
        call(x, torch.full((3, 1), 0.5))
    with pytest.raises(ValueError, match="`t` contains NaN or inf"):
        call(x, torch.tensor([0.1, float("nan"), 0.5]))
    with pytest.raises(TypeError, match="`x` must be a floating-point tensor"):
        call(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3))
    with pytest.raises(ValueError, match=r"`t` must lie in \[0, T\]"):
        sde.marginal_coeffs(torch.tensor([2.0]))
    with pytest.raises(ValueError, match=r"`t` must be a tensor of shape \(B,\)"):
        sde.marginal_coeffs(torch.tensor(0.5))


@pytest.mark.parametrize("make, match", [
    (lambda: VPSDE(beta_min=0.0), "`beta_min` must be a positive finite number"),
    (lambda: VPSDE(beta_min=-0.1), "`beta_min` must be a positive finite number"),
    (lambda: SubVPSDE(beta_max=float("inf")), "`beta_max` must be a positive finite number"),
    (lambda: VPSDE(beta_min=5.0, beta_max=4.0), "`beta_max` must be at least `beta_min`"),
    (lambda: SubVPSDE(beta_min=5.0, beta_max=1.0), "`beta_max` must be at least `beta_min`"),
    (lambda: VESDE(sigma_min=0.0), "`sigma_min` must be a positive finite number"),
    (lambda: VESDE(sigma_max=-1.0), "`sigma_max` must be a positive finite number"),
    (lambda: VESDE(sigma_min=1.0, sigma_max=0.5), "`sigma_max` must be greater than `sigma_min`"),
    (lambda: VESDE(sigma_min=1.0, sigma_max=1.0), "`sigma_max` must be greater than `sigma_min`"),
    (lambda: VPSDE(N=0), "`N` must be a positive integer"),
    (lambda: VESDE(N=2.5), "`N` must be a positive integer"),
    (lambda: SubVPSDE(N=True), "`N` must be a positive integer"),
    (lambda: VPSDE(beta_min="0.1"), "`beta_min` must be a positive finite number"),
])
def test_bad_schedule_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_ddpm_needs_small_betas():
    with pytest.raises(ValueError, match="`N` = 10 is too small for the DDPM discretization"):
        VPSDE(N=10).discretize(torch.zeros(2, 2), torch.zeros(2))


def test_bad_prior_arguments():
    vp = VPSDE()
    with pytest.raises(ValueError, match=r"`shape` must be a tuple \(B, \*D\) of positive integers"):
        vp.prior_sampling(())
    with pytest.raises(ValueError, match=r"`shape` must be a tuple \(B, \*D\) of positive integers"):
        vp.prior_sampling((4, 0))
    with pytest.raises(ValueError, match="`z` must have a batch dimension"):
        vp.prior_logp(torch.tensor(1.0))
    with pytest.raises(TypeError, match="`z` must be a floating-point tensor"):
        vp.prior_logp([1.0, 2.0])


def test_abstract_sde_cannot_be_instantiated():
    with pytest.raises(TypeError):
        SDE(10)


def test_unchecked_skips_validation_only_inside_the_block():
    from sde_diffusion.sde import VPSDE as _VP
    sde = _VP()
    x, t = torch.randn(4, 2, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    checked = sde.sde(x, t)
    with sde.unchecked():
        assert not sde.check_args
        unchecked = sde.sde(x, t)
        sde.sde(x, torch.full((4,), 1.5, dtype=torch.float64))   # out of range, but not checked here
    assert sde.check_args
    torch.testing.assert_close(checked, unchecked)
    with pytest.raises(ValueError, match="`t` must lie in"):
        sde.sde(x, torch.full((4,), 1.5, dtype=torch.float64))


def test_constant_beta_is_ornstein_uhlenbeck():
    "VPSDE(b, b) is OU with theta = b/2, sigma = sqrt(b): kernels agree, and the mixture oracle works under it."
    import math as _math
    from sde_diffusion.solvers import OrnsteinUhlenbeck
    from sde_diffusion.toy import ring_of_gaussians
    b = 2.5
    sde, ou = VPSDE(beta_min=b, beta_max=b), OrnsteinUhlenbeck(theta=b / 2, mu=0.0, sigma=_math.sqrt(b))
    t = torch.linspace(0.0, 1.0, 9, dtype=torch.float64)
    x = torch.randn(9, 2, dtype=torch.float64)
    mean, std = sde.marginal_prob(x, t)
    torch.testing.assert_close(mean, ou.mean(x, t))
    torch.testing.assert_close(std[:, 0] ** 2, ou.variance(t))
    mix = ring_of_gaussians(dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    lp = mix.marginal_log_prob(xr, t[1:].clone().repeat(2)[:9], sde).sum()
    (grad,) = torch.autograd.grad(lp, xr)
    torch.testing.assert_close(mix.marginal_score(x, t[1:].clone().repeat(2)[:9], sde), grad)


# ------------------------------------------------------------------ regressions found by tests/test_properties.py
def test_half_precision_ve_kernel_is_finite_and_correctly_rounded():
    "float16: sigma_min sqrt(expm1(2 t log 5000)) overflowed (2.5e7 > 65504) to inf; now sigma(t) sqrt(1 - e^{-2tL}) in float32."
    sde, t = VESDE(), torch.tensor([0.0, 0.3, 1.0])
    for dtype in (torch.float16, torch.bfloat16):
        _, std = sde.marginal_prob(torch.zeros(3, 2, dtype=dtype), t.to(dtype))
        ref = sde.marginal_coeffs(t.to(dtype).double())[1]
        assert std.dtype == dtype and torch.isfinite(std).all()
        torch.testing.assert_close(std.double().reshape(-1), ref, rtol=torch.finfo(dtype).eps, atol=0)   # one rounding


def test_huge_ve_ratio_kernel_is_finite_in_float64():
    "sigma_max/sigma_min = 1e302: expm1(2 log(ratio)) = e^1390 overflows float64, sigma(1)^2 too, but sigma_VE(1) = 1e300 does not."
    sde = VESDE(sigma_min=0.01, sigma_max=1e300)
    std = sde.marginal_coeffs(torch.tensor([1.0], dtype=torch.float64))[1]
    torch.testing.assert_close(std, torch.tensor([1e300], dtype=torch.float64), rtol=1e-13, atol=0)


def test_timestep_stays_in_range_in_half_precision():
    "float16 t = 1 with N = 5000: t (N-1) = 4999 rounds to 5000 in float16, an index out of range of the N levels."
    for sde in (VPSDE(N=5000), VESDE(N=5000), CosineVPSDE(N=5000)):
        x = torch.zeros(2, 3, dtype=torch.float16)
        t = torch.ones(2, dtype=torch.float16)
        assert sde.timestep(t).tolist() == [4999, 4999]
        f, G = sde.discretize(x, t)
        assert torch.isfinite(G).all() and G.dtype == torch.float16


def test_ve_discretize_has_no_cancellation():
    "G_i = sigma_i sqrt(1 - e^{-2 delta}): in float32 with N = 2000, agrees with the float64 sqrt(sigma_i^2 - sigma_{i-1}^2) to 4 ulps."
    sde = VESDE(N=2000)
    t = torch.linspace(0, 1, 2000, dtype=torch.float64)
    sig = sde.discrete_sigmas(torch.float64)
    ref = torch.cat([sig[:1], (sig[1:] ** 2 - sig[:-1] ** 2).sqrt()])
    G = sde.discretize(torch.zeros(2000, 1), t.float())[1].reshape(-1)
    torch.testing.assert_close(G.double(), ref, rtol=4 * torch.finfo(torch.float32).eps, atol=0)


def test_bool_times_and_integer_prior_dtype_are_named_errors():
    "Bool times were cast to 0/1; an integer prior dtype failed inside torch ('normal_kernel_cpu' not implemented for 'Long')."
    sde = VPSDE()
    with pytest.raises(TypeError, match="`t`"):
        sde.marginal_prob(torch.zeros(2, 1), torch.ones(2, dtype=torch.bool))
    with pytest.raises(TypeError, match="`dtype`"):
        sde.prior_sampling((2, 3), dtype=torch.int64)
    with pytest.raises(TypeError, match="`ode`"):
        sde.reverse(lambda x, t: -x, ode="no")     # bool("no") is True


def test_meta_tensors_give_shapes():
    "On the meta device (shapes only, no values) the time check is skipped instead of failing to copy values out."
    for sde in (VPSDE(), SubVPSDE(), VESDE(), CosineVPSDE()):
        x = torch.empty(3, 2, 4, 4, device="meta")
        t = torch.empty(3, device="meta")
        mean, std = sde.marginal_prob(x, t)
        f, G = sde.discretize(x, t)
        assert mean.shape == f.shape == x.shape and std.shape == G.shape == (3, 1, 1, 1) and std.device.type == "meta"
        assert sde.prior_logp(sde.prior_sampling((3, 2), device="meta")).shape == (3,)


def test_half_precision_prior_logp_does_not_overflow():
    "float16 z of 4096 entries of size 50: the sum of squares (1e7) overflowed float16; the density itself is representable."
    sde = VESDE()
    z = torch.full((1, 4096), 50.0, dtype=torch.float16)
    lp = sde.prior_logp(z)
    ref = sde.prior_logp(z.double())
    assert lp.dtype == torch.float16 and torch.isfinite(lp).all()
    torch.testing.assert_close(lp.double(), ref, rtol=torch.finfo(torch.float16).eps, atol=0)


def test_prior_too_wide_for_the_dtype_is_a_named_error():
    "VESDE(sigma_max=3e5) in float16: the N(0, sigma_max^2) draws overflowed to inf; now the `dtype` is named (thorough profile)."
    with pytest.raises(ValueError, match="`dtype`"):
        VESDE(sigma_min=7.0, sigma_max=3e5).prior_sampling((2, 3), dtype=torch.float16)
    assert torch.isfinite(VESDE(sigma_max=3e5).prior_sampling((2, 3), dtype=torch.float32)).all()


# ------------------------------------------------------------------ mutation survivors (bench/MUTATION.md)
class _LongVE(VESDE):
    "A VE SDE on [0, 2] (the shipped SDEs all have T = 1, where T and 1/T coincide): only T-dependent helpers are used."
    @property
    def T(self) -> float:
        return 2.0


def test_timestep_and_default_discretize_scale_with_T():
    "i = round(t (N - 1)/T) and the default Euler-Maruyama step dt = T/N, on an SDE with T = 2."
    sde = _LongVE(N=11)
    t = torch.tensor([0.0, 1.0, 2.0, 0.7], dtype=torch.float64)
    assert sde.timestep(t).tolist() == [0, 5, 10, round(0.7 * 10 / 2)]
    x, tt = torch.ones(2, 3, dtype=torch.float64), torch.full((2,), 0.5, dtype=torch.float64)
    f, G = SDE.discretize(sde, x, tt)
    drift, g = sde.sde(x, tt)
    torch.testing.assert_close(f, drift * (2.0 / 11), rtol=1e-15, atol=0)
    torch.testing.assert_close(G, g * math.sqrt(2.0 / 11), rtol=1e-15, atol=0)


def test_unchecked_times_take_the_dtype_of_x():
    "With the checks off (inside samplers), t of another dtype is still cast to x's dtype, and the same dtype passes."
    sde = VPSDE()
    x = torch.ones(3, 2, dtype=torch.float64)
    with sde.unchecked():
        for t in (torch.full((3,), 0.3, dtype=torch.float32), torch.full((3,), 0.3, dtype=torch.float64)):
            drift, diffusion = sde.sde(x, t)
            assert drift.dtype == diffusion.dtype == torch.float64
            assert sde._t(t, x).dtype == torch.float64


def test_timestep_clamps_to_the_levels_and_the_base_default_N():
    """Inside samplers (checks off) a time can overshoot T by rounding: the index is clamped to N - 1 (and t = 0 gives 0,
    not 1). The base class documents N = 1000 for subclasses that do not pass it."""
    import inspect
    sde = VESDE(N=5000)
    assert sde.timestep(torch.tensor([1.0, 0.0], dtype=torch.float16)).tolist() == [4999, 0]
    with sde.unchecked():
        assert sde.timestep(torch.tensor([1.0 + 1e-3, -1e-3], dtype=torch.float64)).tolist() == [4999, 0]
    assert inspect.signature(SDE.__init__).parameters["N"].default == 1000


def test_prior_dtype_range_boundary_and_ddpm_rate_boundary():
    """The prior refuses a dtype only if 16 sigma (P(|z| > 16) ~ 1e-57) exceeds its largest value: float16 holds
    65504 = 16 * 4094 exactly, so sigma_max = 4094 is accepted and 4100 refused. DDPM's discretization needs
    beta_max / N < 1: N = beta_max is refused (a rate of 1 would erase x in one step), N = beta_max + 1 accepted."""
    x = VESDE(sigma_max=4094.0).prior_sampling((8, 2), dtype=torch.float16, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float16 and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="`dtype`"):
        VESDE(sigma_max=4100.0).prior_sampling((8, 2), dtype=torch.float16)
    with pytest.raises(ValueError, match="`N`"):
        VPSDE(beta_max=20.0, N=20).discrete_betas()
    assert VPSDE(beta_max=20.0, N=21).discrete_betas().shape == (21,)


def test_documented_defaults_of_the_three_sdes():
    "N = 1000 levels for every SDE; VP and sub-VP beta in [0.1, 20]; VE sigma in [0.01, 50] (Song et al.'s values)."
    for sde in (VPSDE(), SubVPSDE(), VESDE()):
        assert sde.N == 1000
    assert (VPSDE().beta_min, VPSDE().beta_max) == (0.1, 20.0) == (SubVPSDE().beta_min, SubVPSDE().beta_max)
    assert (VESDE().sigma_min, VESDE().sigma_max) == (0.01, 50.0)


# ------------------------------------------------------------------------------------------- the inverse map, the cosine SDE
def _cosine_alpha_bar(t, s, T):
    "Nichol & Dhariwal's alpha_bar(t) = cos^2(u(t)) / cos^2(u(0)), u(t) = (t/T + s)/(1 + s) pi/2, straight from the formula."
    u = lambda t: (t / T + s) / (1 + s) * math.pi / 2
    return torch.cos(u(t)) ** 2 / math.cos(u(0.0)) ** 2


def _inverse_map(sde, t):
    "a = d log alpha/dt and g^2 = d sigma^2/dt - 2 a sigma^2 (eq-inverse-map) from marginal_coeffs alone, by autograd."
    t = t.detach().clone().requires_grad_(True)
    alpha, sigma = sde.marginal_coeffs(t)
    log_alpha, var = alpha.log(), sigma**2
    deriv = lambda y: torch.autograd.grad(y.sum(), t, retain_graph=True)[0] if y.requires_grad else torch.zeros_like(t)
    a = deriv(log_alpha)
    return a, deriv(var) - 2 * a * var


@pytest.mark.parametrize("name", list(SDES) + ["cosine-T2"])
def test_inverse_map_by_autograd(name):
    """The drift coefficient a(t) = f(1, t) and g(t)^2 of `sde` equal d log alpha/dt and d sigma^2/dt - 2 a sigma^2 from
    `marginal_coeffs` (float64): the kernel is the SDE's, for every class (cosine: on both sides of the clip t_c)."""
    sde = CosineVPSDE(T=2.0, beta_max=100.0) if name == "cosine-T2" else SDES[name]()
    t = torch.linspace(0.01, 1.0, 100, dtype=torch.float64) * sde.T
    if isinstance(sde, CosineVPSDE):
        t = t[(t - sde.t_clip).abs() > 1e-6]                       # the rate has a kink at t_c
        assert (t > sde.t_clip).any() and (t < sde.t_clip).any()
    a, g2 = _inverse_map(sde, t)
    drift, g = sde.sde(torch.ones(len(t), 1, dtype=torch.float64), t)
    # both sides are float64 closed forms with condition numbers <= ~1e2: rounding < 1e-13; a wrong factor is O(1)
    torch.testing.assert_close(a, drift[:, 0], rtol=1e-10, atol=0)
    torch.testing.assert_close(g2, g[:, 0] ** 2, rtol=1e-10, atol=0)


@pytest.mark.parametrize("kw", [{}, {"s": 0.02, "beta_max": 50.0, "T": 2.0}, {"s": 0.0}], ids=["default", "wide-T2", "s0"])
def test_cosine_marginal_coeffs_match_the_closed_form(kw):
    """alpha^2 = alpha_bar(t) of Nichol & Dhariwal up to t_c, then alpha_bar(t_c) exp(-beta_max (t - t_c)) up to and at T;
    sigma^2 = 1 - alpha^2, accurate at small t (against sin(d) sin(2 u0 + d)/cos^2 u0, no cancellation)."""
    sde = CosineVPSDE(**kw)
    s, T, tc, bmax = sde.s, sde.T, sde.t_clip, sde.beta_max
    t = torch.tensor([0.0, 1e-9, 1e-4, 0.25, 0.5, 0.9, tc / T, 0.5 * (1 + tc / T), 1.0], dtype=torch.float64) * T
    alpha, sigma = sde.marginal_coeffs(t)
    past = t > tc
    ab_c = _cosine_alpha_bar(torch.tensor(tc, dtype=torch.float64), s, T)
    ref = torch.where(past, ab_c * torch.exp(-bmax * (t - tc)), _cosine_alpha_bar(t, s, T))
    torch.testing.assert_close(alpha**2, ref, rtol=1e-12, atol=0)     # cos has condition number u tan u < 1e2 up to t_c
    u0, d = s / (1 + s) * math.pi / 2, t.clamp(max=tc) / T / (1 + s) * math.pi / 2
    var_ref = torch.sin(d) * torch.sin(2 * u0 + d) / math.cos(u0) ** 2
    torch.testing.assert_close((sigma**2)[~past], var_ref[~past], rtol=1e-12, atol=0)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t), rtol=0, atol=4e-16)
    assert alpha[0] == 1 and sigma[0] == 0 and past[-1] and (alpha.diff() <= 0).all() and (sigma.diff() > 0).all()
    # the clip time solves beta(t_c) = beta_max; below it beta is Nichol & Dhariwal's pi tan(u)/(T (1 + s)), above it beta_max
    u = lambda t: (t / T + s) / (1 + s) * math.pi / 2
    beta = sde.beta(t)
    torch.testing.assert_close(beta[~past], math.pi / (T * (1 + s)) * torch.tan(u(t[~past])), rtol=1e-12, atol=0)
    assert torch.equal(beta[past], torch.full_like(beta[past], bmax))
    torch.testing.assert_close(math.pi / (T * (1 + s)) * math.tan(u(tc)), bmax, rtol=1e-12, atol=0)


def test_cosine_prior_at_T_and_default_schedule():
    """Defaults s = 0.008, beta_max = 200, T = 1, N = 1000: the clip covers the last ~1/100 of [0, T] (t_c ~ T - 2/beta_max),
    alpha(T)^2 ~ e^-2 (pi/((1+s) beta_max T))^2 (relative error < 3e-4 from the dropped terms), KL to N(0, I) < 1e-4."""
    sde = CosineVPSDE()
    assert (sde.s, sde.beta_max, sde.N, sde.T) == (0.008, 200.0, 1000, 1.0)
    assert abs(sde.t_clip - (1 - 2 / 200)) < 1e-4
    aT, sT = (v.item() for v in sde.marginal_coeffs(torch.tensor([1.0], dtype=torch.float64)))
    approx = math.exp(-2) * (math.pi / (1.008 * 200)) ** 2
    assert abs(aT**2 / approx - 1) < 1e-3
    kl = -0.5 * math.log1p(-aT**2)                                    # kernel of x0 = 1 vs N(0, 1): VP, alpha^2 + sigma^2 = 1
    assert 1e-5 < kl < 1e-4


def test_cosine_time_rescaling():
    "T enters only through t/T: CosineVPSDE(T=2, beta_max=b/2) at time 2t has the kernel of CosineVPSDE(T=1, beta_max=b) at t."
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    one, two = CosineVPSDE(beta_max=200.0), CosineVPSDE(beta_max=100.0, T=2.0)
    for a, b in zip(one.marginal_coeffs(t), two.marginal_coeffs(2 * t)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(two.beta(2 * t), one.beta(t) / 2, rtol=1e-12, atol=0)
    assert abs(two.t_clip - 2 * one.t_clip) < 1e-12
    with pytest.raises(ValueError, match=r"`t` must lie in \[0, T\] = \[0, 2\]"):
        two.sde(torch.zeros(2, 1), torch.tensor([1.0, 2.5]))


def test_cosine_matches_euler_maruyama():
    """Simulated x_t from a fixed x0 on a grid with beta(t) dt <= h: the standardized residual is N(0, 1) within 4 standard
    errors at t = 0.5, 0.995 (past the clip) and T. Euler-Maruyama's own bias is computed exactly from its mean/variance
    recursion on the same grid and must stay below half a standard error."""
    sde, M = CosineVPSDE(), 4000
    x0 = torch.tensor([1.5, -0.5, 0.0]).expand(M, 3)
    se_m, se_v = 1 / math.sqrt(M), math.sqrt(2 / (M - 1))
    gen, x, factor, var, t_prev = torch.Generator().manual_seed(0), x0, 1.0, 0.0, 0.0
    for t in (0.5, 0.995, 1.0):
        ts = [t_prev]
        while ts[-1] < t:
            beta = sde.beta(torch.tensor(ts[-1], dtype=torch.float64)).item()
            ts.append(min(ts[-1] + min(0.02 / beta, 0.005), t))
        if len(ts) > 2 and ts[-1] - ts[-2] < 0.5 * (ts[-2] - ts[-3]):
            del ts[-2]
        grid = torch.tensor(ts, dtype=torch.float64)
        x = euler_maruyama(sde.drift, sde.diffusion, x, grid.float(), generator=gen)
        drift, g = sde.sde(torch.ones(len(grid) - 1, 1, dtype=torch.float64), grid[:-1])
        for a_n, g2_n, dt in zip(drift[:, 0].tolist(), (g[:, 0] ** 2).tolist(), grid.diff().tolist()):
            factor, var = (1 + a_n * dt) * factor, (1 + a_n * dt) ** 2 * var + g2_n * dt
        t_prev = t
        alpha, sigma = (v.item() for v in sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64)))
        assert abs(factor - alpha) * 1.5 / sigma < 0.5 * se_m and abs(var / sigma**2 - 1) < 0.5 * se_v, (t, factor, var)
        z = (x.double() - alpha * x0.double()) / sigma
        assert (z.mean(0).abs() < 4 * se_m).all(), (t, z.mean(0))
        assert ((z.var(0) - 1).abs() < 4 * se_v).all(), (t, z.var(0))


def test_cosine_discrete_betas_are_nichol_dhariwal():
    """beta_i = min(1 - alpha_bar(t_{i+1})/alpha_bar(t_i), 0.999), t_i = i/N (reference: the formula in float64, which
    cancels to ~eps/beta_0 ~ 6e-12 relative); only the last step is clipped; the product telescopes to alpha_bar(t_{i+1})
    and equals the continuous kernel alpha(t_{i+1})^2 up to t_c; discretize is the chain with these rates."""
    for N, s in ((1000, 0.008), (50, 0.1)):
        sde = CosineVPSDE(s=s, N=N)
        betas = sde.discrete_betas(torch.float64)
        ab = _cosine_alpha_bar(torch.arange(N + 1, dtype=torch.float64) / N, s, 1.0)
        ref = (1 - ab[1:] / ab[:-1]).clamp(max=0.999)
        torch.testing.assert_close(betas, ref, rtol=1e-10, atol=0)
        assert betas[-1] == 0.999 and (betas[:-1] < 0.999).all() and (betas.diff() > 0).all()
        cum = sde.alphas_cumprod(torch.float64)
        torch.testing.assert_close(cum, torch.cumprod(1 - betas, 0), rtol=1e-12, atol=0)
        torch.testing.assert_close(cum[:-1], ab[1:-1], rtol=1e-11, atol=0)      # N logs summed: rounding < N eps |log ab|
        t_next = torch.arange(1, N + 1, dtype=torch.float64) / N
        keep = t_next <= sde.t_clip
        torch.testing.assert_close(cum[keep], sde.marginal_coeffs(t_next[keep])[0] ** 2, rtol=1e-11, atol=0)
        x = torch.randn(N, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        t = torch.arange(N, dtype=torch.float64) / (N - 1)              # the levels: timestep(t_i) = i
        f, G = sde.discretize(x, t)
        torch.testing.assert_close(x + f, (1 - betas).sqrt()[:, None] * x, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(G[:, 0], betas.sqrt(), rtol=1e-12, atol=0)
    # float32 keeps the small rates accurate (no cancellation): a few ulps of float32
    torch.testing.assert_close(CosineVPSDE().discrete_betas(torch.float32).double(), CosineVPSDE().discrete_betas(torch.float64),
                               rtol=1e-5, atol=0)


def test_cosine_schedule_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")   # Nichol & Dhariwal's cosine, 1000 steps, max_beta 0.999
    sde = CosineVPSDE()
    torch.testing.assert_close(sde.discrete_betas(torch.float64), sched.betas.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(sde.alphas_cumprod(torch.float64), sched.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_cosine_dtype_device_and_end_point(dtype, device):
    """Outputs in the input's dtype and on its device, finite at t = 0, t_c and T in every dtype (tan is never evaluated past
    t_c), and equal to the float64 values up to the dtype's rounding; beta is exactly beta_max past the clip."""
    sde = CosineVPSDE()
    t64 = torch.tensor([0.0, 0.3, sde.t_clip, 0.999, 1.0], dtype=torch.float64)
    t = t64.to(dtype=dtype, device=device)
    x = torch.ones(5, 2, dtype=dtype, device=device)
    outputs = (*sde.sde(x, t), *sde.marginal_prob(x, t), *sde.discretize(x, t), *sde.marginal_coeffs(t))
    for v in outputs:
        assert v.dtype == dtype and v.device == x.device and torch.isfinite(v).all()
    drift, g = sde.sde(x, t)
    ref_g = sde.sde(x.double().cpu(), t.double().cpu())[1]              # at the times as rounded to the dtype
    # beta's condition number t beta'/beta ~ t/(T - t) reaches ~1/(T - t_c) = 100 at t_c: rounding t_c to the dtype (it decides
    # the side of the clip) moves beta by up to that many ulps, g by half as many
    torch.testing.assert_close(g.double().cpu(), ref_g, rtol=(1 + 1 / (1 - sde.t_clip)) * torch.finfo(dtype).eps, atol=0)
    alpha, sigma = sde.marginal_coeffs(t)
    ref_alpha, ref_sigma = sde.marginal_coeffs(t.double().cpu())
    rtol = 64 * torch.finfo(dtype).eps if dtype in (torch.float16, torch.bfloat16) else 1e3 * torch.finfo(dtype).eps   # cond ~ |log alpha| <= 6
    torch.testing.assert_close(alpha.double().cpu(), ref_alpha, rtol=rtol, atol=0)
    torch.testing.assert_close(sigma.double().cpu(), ref_sigma, rtol=rtol, atol=torch.finfo(dtype).eps)
    assert g[-1].item() ** 2 == pytest.approx(200.0, rel=2 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("make, match", [
    (lambda: CosineVPSDE(s=-0.1), "`s` must be a finite number >= 0"),
    (lambda: CosineVPSDE(s=float("nan")), "`s` must be a finite number >= 0"),
    (lambda: CosineVPSDE(s=math.inf), "`s` must be a finite number >= 0"),
    (lambda: CosineVPSDE(s=True), "`s` must be a finite number >= 0"),
    (lambda: CosineVPSDE(s="0.008"), "`s` must be a finite number >= 0"),
    (lambda: CosineVPSDE(beta_max=0.0), "`beta_max` must be a positive finite number"),
    (lambda: CosineVPSDE(beta_max=math.inf), "`beta_max` must be a positive finite number"),
    (lambda: CosineVPSDE(beta_max=0.03), r"`beta_max` must exceed beta\(0\) = 0.03886"),    # beta(0) = pi tan(u0)/(1 + s)
    (lambda: CosineVPSDE(T=0.0), "`T` must be a positive finite number"),
    (lambda: CosineVPSDE(T=-1.0), "`T` must be a positive finite number"),
    (lambda: CosineVPSDE(T=math.nan), "`T` must be a positive finite number"),
    (lambda: CosineVPSDE(T=5e-324), "`T` = 5e-324 is too small"),
    (lambda: CosineVPSDE(T=1e-300), "`beta_max` must exceed beta"),
    (lambda: CosineVPSDE(N=0), "`N` must be a positive integer"),
    (lambda: CosineVPSDE(N=2.5), "`N` must be a positive integer"),
])
def test_cosine_bad_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_cosine_is_refused_where_only_the_linear_vp_schedule_is_handled():
    "ddpm.py's helpers read beta_min/beta_max of the linear schedule: they refuse the cosine SDE, naming `sde`."
    from sde_diffusion import ddpm
    with pytest.raises(TypeError, match="`sde` must be a VPSDE"):
        ddpm.ddpm_schedule(CosineVPSDE())
    with pytest.raises(TypeError, match="`sde` must be a VPSDE"):
        ddpm.ddpm_timesteps_to_t(CosineVPSDE(), 3)
