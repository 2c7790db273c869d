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


# ------------------------------------------------------------------ mutation-test survivors (issue 17)
def _zero_model_variance(sde, D, eps, H, J, cv_var):
    """Var of the bound for the model eps_hat = 0, in closed form: h = |z|^2 (1 - c^2) + c^2 D with c = v SNR/(1 + v SNR)
    (eq. eq-var-cv), so E[h | t] = D and Var(h | t) = 2D (1 - c^2)^2; node k adds w_k^2 E_k[(1 - c^2)^2] 2D / J (the stratum
    average by 50-point Gauss-Legendre in u), the prior term (x = 0, VP prior N(0, I)) Var(log ratio)/n_t = (1 - s_T^2)^2 D/2 / n_t."""
    import numpy as np
    u_lo, u_hi = (-log_snr(sde, torch.tensor([eps, sde.T], **F64))).tolist()
    du = (u_hi - u_lo) / H
    gx, gw = np.polynomial.legendre.leggauss(50)

    def g(u):
        if cv_var is None:
            return np.ones_like(u)
        r = cv_var * np.exp(-u)
        return (1 - (r / (1 + r)) ** 2) ** 2
    total = 0.25 * g(np.array([u_lo]))[0]                              # the decoder node, weight 1/2, at t = eps
    for k in range(H):
        uu = u_lo + du * (k + (gx + 1) / 2)
        total += (du / 2) ** 2 * float(np.sum(gw / 2 * g(uu)))          # weight (u_hi - u_lo)/(2H) = du/2
    s_T = sde.marginal_coeffs(torch.tensor([sde.T], **F64))[1].item()
    return 2 * D * total / J + (1 - s_T**2) ** 2 * D / 2 / H


@pytest.mark.parametrize("n_t,n_z,cv_var", [(8, 2, 20.0), (8, 1, None), (9, 1, None)],
                         ids=["pairs-per-stratum-cv", "collapsed-odd-K", "collapsed-even-K"])
def test_standard_error_is_calibrated_against_the_closed_form_variance(n_t, n_z, cv_var):
    """Model eps_hat = 0 at x = 0 (B iid points): the mean reported se^2 and the spread of the bound both equal the
    closed-form variance, within 4 standard errors of the mean over B points (SE from the samples). n_z = 2 takes the
    per-stratum branch of the variance (its (J - 1)-df spread), n_z = 1 the collapsed strata (groups of two, and one of
    three when K = n_t + 1 is odd), unbiased here because every node's h has the same mean and variance (no control
    variate). With cv_var = 20 the control variate's c^2 enters the variance: c in its place lowers it by 16 %, SNR^(1/2)
    in place of SNR by 39 %, against 4 SE of about 6 %."""
    sde, D, B, eps = VPSDE(), 2, 6000, 1e-5
    est = elbo_terms(sde, lambda y, t: torch.zeros_like(y), torch.zeros(B, D, **F64), prediction="eps", eps=eps,
                     n_t=n_t, n_z=n_z, cv_var=cv_var, generator=gen(30))
    V = _zero_model_variance(sde, D, eps, n_t, n_z, cv_var)
    se2, dev2 = est.se.square(), (est.elbo - est.elbo.mean()).square()
    assert abs(se2.mean().item() - V) < 4 * se2.std().item() / math.sqrt(B), (se2.mean().item(), V)
    assert abs(dev2.mean().item() - V) < 4 * dev2.std().item() / math.sqrt(B), (dev2.mean().item(), V)


@pytest.mark.parametrize("where,n_z,want", [("decoder", 2, 1.0), ("decoder", 1, 1.0), ("last_stratum", 1, 2.0), ("prior", 2, 7.0)])
def test_degrees_of_freedom_of_a_dominant_variance_part(where, n_z, want):
    """Welch-Satterthwaite: when one variance part exceeds all others by a factor F, df equals that part's own degrees
    of freedom to relative order 1/F (df = V^2 / sum p_i^2/d_i with V = p_0 (1 + 1/F)). A model whose h is ~1e12 times
    larger at one node makes F > 1e20: df = J - 1 (a node's spread over J pairs), 1 (a collapsed group of two), 2 (the
    group of three when K = n_t + 1 is odd), n_t - 1 (the prior term's n_t draws). Tolerance 1e-9 relative."""
    sde, D, B, eps, H = VPSDE(), 2, 50, 1e-5, 8
    u_lo, u_hi = (-log_snr(sde, torch.tensor([eps, sde.T], **F64))).tolist()
    cut = u_hi - (1 - 1e-6) * (u_hi - u_lo) / H   # the last stratum (P = 1 - 1e-6 per draw); the others end below u_hi - du

    def model(y, t):
        if where == "decoder":
            big = t == eps
        elif where == "last_stratum":
            big = -log_snr(sde, t) > cut
        else:
            big = torch.zeros_like(t, dtype=torch.bool)
        return torch.where(big[:, None], 1e6 * y / sde.marginal_coeffs(t)[1][:, None], torch.zeros_like(y))
    prior_logp = (lambda z: 1e12 * z[:, 0]) if where == "prior" else None
    est = elbo_terms(sde, model, torch.zeros(B, D, **F64), prediction="eps", eps=eps, n_t=H, n_z=n_z, cv_var=None,
                     prior_logp=prior_logp, generator=gen(31))
    assert ((est.df - want).abs() <= 1e-9 * want).all(), est.df
    if where == "prior":   # se^2 = sample variance of log ratio = -1e12 s_T z_0 over n_t draws / n_t: E = 1e24 s_T^2 / n_t
        se2 = est.se.square()
        s_T = sde.marginal_coeffs(torch.tensor([sde.T], **F64))[1].item()
        assert abs(se2.mean().item() - 1e24 * s_T**2 / H) < 4 * se2.std().item() / math.sqrt(B)


@pytest.mark.parametrize("where", ["decoder", "last_stratum"])
def test_collapsed_strata_variance_of_a_dominant_node(where):
    """n_z = 1, K = 9 nodes: groups (0, 1), (2, 3), (4, 5), (6, 7, 8). One node with h = L ~ 1e12 |z|^2 (eps_hat = 1e6 z)
    dominates both the bound (elbo = -w L to relative order 1e-10) and its group's variance: the group of two gives
    se^2 = (w_0^2 + w_1^2) L^2 / 2, the group of three (equal weights w) se^2 = 3 w^2 L^2/3 = w^2 L^2 (the sample variance of
    three numbers of which one is L is L^2/3). So se/|elbo| = sqrt((w_0^2 + w_1^2)/2)/w_0, resp. 1. Tolerance 1e-8 relative."""
    sde, D, B, eps, H = VPSDE(), 2, 50, 1e-5, 8
    u_lo, u_hi = (-log_snr(sde, torch.tensor([eps, sde.T], **F64))).tolist()
    cut = u_hi - (1 - 1e-6) * (u_hi - u_lo) / H   # the last stratum (P = 1 - 1e-6 per draw); the others end below u_hi - du

    def model(y, t):
        big = (t == eps) if where == "decoder" else (-log_snr(sde, t) > cut)
        return torch.where(big[:, None], 1e6 * y / sde.marginal_coeffs(t)[1][:, None], torch.zeros_like(y))
    est = elbo_terms(sde, model, torch.zeros(B, D, **F64), prediction="eps", eps=eps, n_t=H, n_z=1, cv_var=None,
                     generator=gen(32))
    w0, w = 0.5, (u_hi - u_lo) / (2 * H)
    want = math.sqrt((w0**2 + w**2) / 2) / w0 if where == "decoder" else 1.0
    ratio = est.se / est.elbo.abs()
    assert ((ratio - want).abs() <= 1e-8 * want).all(), (ratio, want)


def _node_sigma_model(sde, v):
    """An eps model at x = 0 with eps_hat = x_t / b_k - v, b_k = sqrt(1 - alphabar_k) of the node whose time the model is
    called at (DDPM's matched, clipped times): z - eps_hat = v for z and for -z, so h = |v|^2 at every node, no noise."""
    s = ddpm_schedule(sde, torch.float64)
    times = ddpm_timesteps_to_t(sde, torch.arange(s.N), torch.float64).clamp(max=sde.T)
    b_of = dict(zip(times.tolist(), s.sqrt_one_minus_alphas_cumprod.tolist()))
    return lambda y, t: y / torch.tensor([b_of[u] for u in t.tolist()], **F64)[:, None] - v


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "twice_small"])
def test_discrete_terms_in_closed_form_for_a_noise_free_model(variance):
    """With h = |v|^2 at every node (`_node_sigma_model`), the DDPM bound's terms are deterministic: L_0 =
    (D/2)(log 2 pi - log SNR_1) + (D/2) sum_i (r_i - 1 - log r_i) + |v|^2/2 with r_i = tilde beta_i / w_i, and
    L_diff = |v|^2 sum_{i>=2} beta_i^2 / (2 w_i alpha_i (1 - alphabar_i)) (Ho et al.'s weights, eq. eq-var-lt-eps).
    Tolerance 1e-10 relative: rounding only (x_t / b_k = z to one ulp)."""
    sde, D, B = VPSDE(0.1, 20.0, N=40), 2, 3
    s = ddpm_schedule(sde, torch.float64)
    w = {"fixed_small": s.posterior_variance, "fixed_large": s.betas, "twice_small": 2 * s.posterior_variance}[variance]
    v = torch.tensor([0.7, -1.3], **F64)
    est = elbo_terms(sde, _node_sigma_model(sde, v), torch.zeros(B, D, **F64), prediction="eps", discrete=True,
                     variance=w.clone() if variance == "twice_small" else variance, cv_var=None, generator=gen(33))
    v2 = v.square().sum().item()
    r = (s.posterior_variance[1:] / w[1:]).tolist()
    a0 = s.alphas_cumprod[0].item()
    L0 = 0.5 * D * (math.log(2 * math.pi) - math.log(a0 / (1 - a0))) + 0.5 * D * sum(x - 1 - math.log(x) for x in r) + 0.5 * v2
    gamma = s.betas[1:] ** 2 / (2 * w[1:] * s.alphas[1:] * (1 - s.alphas_cumprod[1:]))
    L_diff = v2 * gamma.sum().item()
    close(est.reconstruction, torch.full((B,), L0, **F64), rtol=1e-10, atol=0)
    close(est.diffusion, torch.full((B,), L_diff, **F64), rtol=1e-10, atol=0)


def test_variance_entry_zero_is_unused_and_a_zero_variance_is_refused():
    "The decoder's entry 0 of a `variance` tensor is documented as unused (NaN there changes nothing); w_i = 0 at i >= 1 is refused."
    sde, x = VPSDE(0.1, 20.0, N=40), torch.randn(3, 2, generator=gen(34), **F64)
    w = ddpm_schedule(sde, torch.float64).betas.clone()
    score = lambda y, t: -y
    ref = elbo(sde, score, x, discrete=True, variance=w, generator=gen(35))
    w_nan = w.clone()
    w_nan[0] = float("nan")
    close(elbo(sde, score, x, discrete=True, variance=w_nan, generator=gen(35)), ref, rtol=0, atol=0)
    w_zero = w.clone()
    w_zero[5] = 0.0
    with pytest.raises(ValueError, match="`variance`"):
        elbo(sde, score, x, discrete=True, variance=w_zero)


def test_defaults_batch_of_one_rows_per_call_and_cv_var_zero():
    """n_t = 64 strata and n_z = 2 pairs by default; a batch of one works (continuous and discrete); `max_batch` bounds the
    rows of every model call; cv_var = 0 is refused (it must be positive, or None)."""
    sde, score = VPSDE(), lambda y, t: -y
    x = torch.randn(2, 3, generator=gen(36), **F64)
    close(elbo(sde, score, x, generator=gen(37)), elbo(sde, score, x, n_t=64, n_z=2, generator=gen(37)), rtol=0, atol=0)
    assert elbo(sde, score, x[:1], n_t=4, generator=gen(38)).shape == (1,)
    assert elbo(VPSDE(0.1, 20.0, N=40), score, x[:1], discrete=True, generator=gen(38)).shape == (1,)
    rows = []
    elbo(sde, lambda y, t: rows.append(y.shape[0]) or -y, torch.randn(5, 3, generator=gen(39), **F64), n_t=8, max_batch=40)
    assert max(rows) <= 40 and sum(rows) == 2 * 5 * 2 * 9, rows
    with pytest.raises(ValueError, match="`cv_var`"):
        elbo(sde, score, x, n_t=4, cv_var=0.0)


def test_bits_per_dim_of_a_batch_of_one():
    "`elbo(..., bpd=True)` for a single sample: D is the size of one sample (x[0]), as for any batch."
    sde, x = VPSDE(), ring_of_gaussians(**F64).sample(3, generator=gen(45)) / 4
    score = lambda y, t: -y
    one = elbo(sde, score, x[:1], n_t=4, bpd=True, generator=gen(46))
    nats = elbo(sde, score, x[:1], n_t=4, generator=gen(46))
    close(one, bits_per_dim(nats, x[:1].shape))
