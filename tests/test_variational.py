"""Tests of sde_diffusion.variational (chapter 14): the bounds against closed forms on Gaussian data, where they must be
tight or must hold pointwise; the Girsanov identity on a mixture; the invariance to the noise schedule; units, dtypes,
devices, reproducibility and argument errors. Tolerances: Student-t quantiles of each point's own standard error (a
union over the points at level 1e-3), or 4 standard errors of a mean."""
import math

import pytest
import torch
from scipy.special import stdtrit

from sde_diffusion.ddpm import ddpm_schedule, ddpm_timesteps_to_t
from sde_diffusion.likelihood import bits_per_dim
from sde_diffusion.sampling import invert_log_snr
from sde_diffusion.sde import VESDE, VPSDE
from sde_diffusion.toy import GaussianMixture, ring_of_gaussians
from sde_diffusion.variational import ELBOTerms, elbo, elbo_terms, log_snr

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = dict(dtype=torch.float64)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def t_tol(terms, n, level=1e-3):
    "Per-point two-sided Student-t quantile times the standard error, for a union of n checks at total level `level`."
    return torch.as_tensor(stdtrit(terms.df.numpy(), 1 - level / (2 * n))) * terms.se


def close(a, b, rtol=1e-7, atol=1e-9):
    "Elementwise |a - b| <= atol + rtol |b| (torch.testing.assert_close imports torch.distributed on first use: seconds)."
    assert a.shape == b.shape and ((a - b).abs() <= atol + rtol * b.abs()).all(), (a - b).abs().max()


def gaussian(s2, D):
    return GaussianMixture(torch.ones(1), torch.zeros(1, D), torch.tensor([s2]), **F64)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["VP", "VE"])
def test_gaussian_bound_is_tight_up_to_the_prior_term(sde):
    """N(0, s2 I) data and the exact score. With the exact p_T as the prior the model is p_0 (the reverse SDE is the time
    reversal; the decoder N(x0_hat, 1/SNR(eps)) misses the true posterior variance s2 sigma^2/v by a factor 1 + 1/(SNR s2),
    a KL of order (1/(SNR(eps) s2))^2 < 1e-9 here): ELBO(x) = log p0(x). With the prior pi it is
    log p0(x) + E[log pi(x_T) - log p_T(x_T) | x], in closed form for Gaussians."""
    s2, D, n, eps = 0.3**2, 3, 100, 1e-5
    g = gaussian(s2, D)
    x = g.sample(n, generator=gen(0))
    log_p0 = g.log_prob(x)
    a_T, s_T = (c.item() for c in sde.marginal_coeffs(torch.tensor([sde.T], **F64)))
    v_T = a_T**2 * s2 + s_T**2
    log_pT = lambda z: g.marginal_log_prob(z, torch.full((z.shape[0],), sde.T, **F64), sde)
    kw = dict(n_t=32, n_z=4, cv_var=s2, eps=eps)
    tight = elbo_terms(sde, g.score_fn(sde), x, prior_logp=log_pT, generator=gen(1), **kw)
    assert ((tight.elbo - log_p0).abs() <= t_tol(tight, n) + 1e-6).all()
    d = tight.elbo - log_p0
    assert abs(d.mean()) < 4 * d.std() / math.sqrt(n) + 1e-6
    # with the SDE's prior N(0, s_pi^2 I): the prior term moves the bound by the closed-form expectation below
    s_pi2 = sde.sigma_max**2 if isinstance(sde, VESDE) else 1.0
    m2 = a_T**2 * x.square().sum(1) + D * s_T**2                              # E|x_T|^2 given x
    shift = 0.5 * D * math.log(v_T / s_pi2) - 0.5 * m2 * (1 / s_pi2 - 1 / v_T)
    with_pi = elbo_terms(sde, g.score_fn(sde), x, generator=gen(1), **kw)
    assert ((with_pi.elbo - log_p0 - shift).abs() <= t_tol(with_pi, n) + 1e-6).all()


def ddpm_gaussian(sde, s2, D, variance, r2):
    "Closed-form DDPM bound for N(0, s2 I) data, exact eps at the clipped matched times; and the model's variance."
    s = ddpm_schedule(sde, torch.float64)
    al, sg = sde.marginal_coeffs(ddpm_timesteps_to_t(sde, torch.arange(s.N), torch.float64).clamp(max=sde.T))
    Vm = al**2 * s2 + sg**2
    a, b = s.sqrt_alphas_cumprod, s.sqrt_one_minus_alphas_cumprod
    w = s.posterior_variance if variance == "fixed_small" else s.betas
    E = D * (1 - b**2 / Vm)[:, None] ** 2 + (a * b / Vm)[:, None] ** 2 * r2
    gamma = s.betas[1:] ** 2 / (2 * w[1:] * s.alphas[1:] * (1 - s.alphas_cumprod[1:]))
    ratio = s.posterior_variance[1:] / w[1:]
    snr1 = s.alphas_cumprod[0] / (1 - s.alphas_cumprod[0])
    loss = ((gamma[:, None] * E[1:]).sum(0) + 0.5 * D * (ratio - 1 - ratio.log()).sum()
            + 0.5 * D * torch.log(2 * math.pi / snr1) + 0.5 * E[0]
            + 0.5 * D * (b[-1] ** 2 - 1 - torch.log(b[-1] ** 2)) + 0.5 * a[-1] ** 2 * r2)
    V = torch.tensor(1.0, **F64)
    for j in range(s.N - 1, 0, -1):
        V = ((1 - s.betas[j] / Vm[j]) / s.alphas[j].sqrt()) ** 2 * V + w[j]
    V = ((1 - b[0] ** 2 / Vm[0]) / a[0]) ** 2 * V + 1 / snr1
    return -loss, V


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_discrete_bound_matches_its_closed_form_and_holds_pointwise(variance):
    sde, s2, D, n = VPSDE(0.1, 20.0, N=100), 0.25**2, 2, 150
    g = gaussian(s2, D)
    x = g.sample(n, generator=gen(2))
    r2 = x.square().sum(1)
    est = elbo_terms(sde, g.score_fn(sde), x, discrete=True, variance=variance, n_z=2, generator=gen(3))
    closed, V = ddpm_gaussian(sde, s2, D, variance, r2)
    assert ((est.elbo - closed).abs() <= t_tol(est, n)).all()
    log_p_theta = -0.5 * D * torch.log(2 * math.pi * V) - r2 / (2 * V)
    assert (log_p_theta - closed > 0).all()                          # Jensen: ELBO <= log p_theta at every point


def test_girsanov_identity_on_a_mixture():
    """Perturbed score s + c x on the ring under VP: E[log p0 - ELBO] = KL(p_T || pi) + (1/2) int g^2 E|c x_t|^2 dt, the
    integral in closed form from E|x0|^2 = r^2 + D std^2 (KL(p_T || pi) < 1e-6 under VP for this ring)."""
    ring, sde, c, n, eps = ring_of_gaussians(**F64), VPSDE(), 0.2, 300, 1e-5
    x = ring.sample(n, generator=gen(4))
    exact = ring.score_fn(sde)
    est = elbo_terms(sde, lambda y, t: exact(y, t) + c * y, x, n_t=32, n_z=2, generator=gen(5))
    nodes, weights = (torch.tensor(v, **F64) for v in __import__("numpy").polynomial.legendre.leggauss(100))
    t = eps + (sde.T - eps) * (nodes + 1) / 2
    a, s = sde.marginal_coeffs(t)
    J = 0.5 * c**2 * ((sde.T - eps) / 2 * weights * sde.beta(t) * (a**2 * (4 + 2 * 0.25**2) + 2 * s**2)).sum().item()
    gap = ring.log_prob(x) - est.elbo
    assert abs(gap.mean() - J) < 4 * gap.std() / math.sqrt(n) + 1e-6
    assert gap.mean() > 10 * gap.std() / math.sqrt(n)                 # and the bound is clearly below log p0 on average


def test_the_diffusion_term_depends_on_the_schedule_only_through_its_endpoints():
    """Gaussian data: L_infty in closed form depends on SNR(eps), SNR(T) only. VP and a VE SDE with matched endpoints give
    the same Monte Carlo estimate draw for draw (the integrand is a function of u alone), and both the closed form."""
    s2, D, n = 0.3**2, 3, 100
    g = gaussian(s2, D)
    x = g.sample(n, generator=gen(6))
    vp = VPSDE()
    lam_eps, lam_T = (log_snr(vp, torch.tensor([t], **F64)).item() for t in (1e-5, 1.0))
    ve = VESDE(0.01, math.sqrt(math.exp(-lam_T) + 0.01**2))
    eps_ve = invert_log_snr(ve, torch.tensor([lam_eps / 2], **F64), 1e-12, 1.0).item()
    w_eps, w_T = s2 * math.exp(lam_eps), s2 * math.exp(lam_T)
    F = lambda w: math.log1p(w) + 1 / (1 + w)
    closed = 0.5 * D * (F(w_eps) - F(w_T)) + x.square().sum(1) / (2 * s2) * (1 / (1 + w_T) - 1 / (1 + w_eps))
    runs = [elbo_terms(sde, g.score_fn(sde), x, eps=e, n_t=32, n_z=4, cv_var=s2, generator=gen(7))
            for sde, e in ((vp, 1e-5), (ve, eps_ve))]
    close(runs[0].diffusion, runs[1].diffusion, rtol=1e-9)
    close(runs[0].reconstruction, runs[1].reconstruction, rtol=1e-9)
    d = runs[0].diffusion - closed
    assert abs(d.mean()) < 4 * d.std() / math.sqrt(n)


def test_bits_per_dim_eps_prediction_and_reproducibility():
    ring, sde = ring_of_gaussians(**F64), VPSDE()
    x = ring.sample(20, generator=gen(8)) / 4
    score = ring.score_fn(sde)
    nats, se = elbo(sde, score, x, n_t=8, return_se=True, generator=gen(9))
    bpd, bpd_se = elbo(sde, score, x, n_t=8, bpd=True, return_se=True, generator=gen(9))
    close(bpd, bits_per_dim(nats, x.shape))
    close(bpd_se, se / (2 * math.log(2)))
    eps_model = lambda y, t: -sde.marginal_coeffs(t)[1][:, None] * score(y, t)
    close(elbo(sde, eps_model, x, prediction="eps", n_t=8, generator=gen(9)), nats)
    close(elbo(sde, score, x, n_t=8, max_batch=7, generator=gen(9)), nats)   # chunking: same draws
    assert not torch.equal(elbo(sde, score, x, n_t=8, generator=gen(10)), nats)
    terms = elbo_terms(sde, score, x, n_t=8, generator=gen(9))
    assert isinstance(terms, ELBOTerms)
    close(terms.elbo, -(terms.prior + terms.diffusion + terms.reconstruction))
    # the discrete bound with the variance given as a tensor equals the named choice
    s = VPSDE(0.1, 20.0, N=50)
    a = elbo(s, score, x, discrete=True, generator=gen(11))
    b = elbo(s, score, x, discrete=True, variance=ddpm_schedule(s, torch.float64).posterior_variance, generator=gen(11))
    close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_shapes_dtypes_devices(device, dtype):
    "Any rank; float16 is computed in float32; the result stays on x's device."
    sde = VPSDE()
    x = torch.randn(4, 1, 2, 2, generator=torch.Generator(device=device).manual_seed(0), device=device).to(dtype)
    model = lambda y, t: -y                                               # a score of the right shape, any dtype
    out = elbo(sde, model, x, n_t=4, generator=torch.Generator(device=device).manual_seed(1))
    assert out.shape == (4,) and out.device.type == device
    assert out.dtype == (torch.float32 if dtype == torch.float16 else dtype)
    assert torch.isfinite(out).all()


def test_argument_errors_name_the_argument():
    sde, x = VPSDE(), torch.randn(3, 2, generator=gen(0))
    score = lambda y, t: -y
    cases = [
        (dict(sde="vp"), TypeError, "`sde`"),
        (dict(model_fn=3), TypeError, "`model_fn`"),
        (dict(x=torch.ones(3, 2, dtype=torch.long)), ValueError, "`x`"),
        (dict(x=torch.tensor([[float("nan"), 0.0]])), ValueError, "`x`"),
        (dict(prediction="v"), ValueError, "`prediction`"),
        (dict(discrete="yes"), TypeError, "`discrete`"),
        (dict(discrete=True, sde=VESDE()), TypeError, "VPSDE"),
        (dict(variance="fixed_large"), ValueError, "`variance`"),
        (dict(discrete=True, variance="small"), ValueError, "`variance`"),
        (dict(discrete=True, variance=torch.ones(7, **F64)), ValueError, "`variance`"),
        (dict(discrete=True, variance=-torch.ones(1000, **F64)), ValueError, "`variance`"),
        (dict(eps=0.0), ValueError, "`eps`"),
        (dict(eps=1.0), ValueError, "`eps`"),
        (dict(n_t=1), ValueError, "`n_t`"),
        (dict(n_z=0), ValueError, "`n_z`"),
        (dict(cv_var=-1.0), ValueError, "`cv_var`"),
        (dict(max_batch=0), ValueError, "`max_batch`"),
        (dict(prior_logp="normal"), TypeError, "`prior_logp`"),
        (dict(prior_logp=lambda z: z), ValueError, "`prior_logp`"),
        (dict(generator=3), TypeError, "`generator`"),
        (dict(model_fn=lambda y, t: y[:, :1]), ValueError, "`model_fn`"),
        (dict(bpd=True, n_bins=1), ValueError, "`n_bins`"),
        (dict(bpd="yes"), TypeError, "`bpd`"),
    ]
    for kw, exc, word in cases:
        args = dict(sde=sde, model_fn=score, x=x, n_t=4)
        args.update(kw)
        with pytest.raises(exc, match=word):
            elbo(args.pop("sde"), args.pop("model_fn"), args.pop("x"), **args)
    with pytest.raises(ValueError, match="non-finite|NaN"):
        elbo(sde, lambda y, t: y * float("nan"), x, n_t=4)
