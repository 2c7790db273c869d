"""Flow matching (sde_diffusion.flow): the score/velocity/x0/noise conversions exactly in float64 against posterior means
computed from their definitions, the marginal velocity as the probability-flow drift, the linear-interpolant SDE (inverse
map, kernel against simulation, exact transitions, prior), the flow-matching loss (its minimizer and minimum on Gaussian
data, its identity with weighted DSM), velocity models in `sample`/`ode_sample`/`probability_flow`, the stochastic-
interpolant sampler's marginals, dtypes, and errors that name the argument."""
import math

import pytest
import torch

from sde_diffusion.brownian import time_grid
from sde_diffusion.flow import (PARAMETERIZATIONS, LinearInterpolantSDE, Reparameterized, as_score_fn, as_velocity_fn,
                                conditional_velocity, convert, flow_matching_loss, interpolant_clock, kernel_rates,
                                sample_interpolant_sde)
from sde_diffusion.score_matching import dsm_loss, perturb
from sde_diffusion.reverse import probability_flow
from sde_diffusion.sampling import ode_sample, sample
from sde_diffusion.sde import CosineVPSDE, SubVPSDE, VESDE, VPSDE
from sde_diffusion.solvers import euler_maruyama
from sde_diffusion.toy import GaussianMixture, random_mixture, ring_of_gaussians

U64 = torch.finfo(torch.float64).eps / 2
SDES = {"linear": LinearInterpolantSDE, "vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "cosine": CosineVPSDE}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


def posterior_means(mix, x, alpha, sigma):
    "E[x0 | x_t = x] and E[z | x_t = x] for a Gaussian mixture, from the joint Gaussian of each component (scalar alpha, sigma)."
    C = alpha**2 * mix.covs + sigma**2 * torch.eye(mix.D, dtype=x.dtype)                   # (K, D, D)
    resid = x[:, None, :] - alpha * mix.means                                              # (B, K, D)
    sol = torch.linalg.solve(C, resid.permute(1, 2, 0)).permute(2, 0, 1)                  # C_k^{-1} resid
    logits = mix.weights.log() - 0.5 * (resid * sol).sum(-1) - 0.5 * torch.linalg.slogdet(C)[1]
    r = torch.softmax(logits, -1)
    x0 = (r[..., None] * (mix.means + alpha * torch.einsum("kde,bke->bkd", mix.covs, sol))).sum(1)
    return x0, (x - alpha * x0) / sigma


def rates_by_autograd(sde, t_val):
    "alpha, sigma and their derivatives at one time, by autograd of marginal_coeffs (float64)."
    t = torch.tensor([t_val], dtype=torch.float64, requires_grad=True)
    alpha, sigma = sde.marginal_coeffs(t)
    d = lambda y: torch.autograd.grad(y.sum(), t, retain_graph=True)[0].item() if y.requires_grad else 0.0
    return alpha.item(), sigma.item(), d(alpha), d(sigma)


MIX = random_mixture(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def assert_close(got, want, rtol=1e-12, atol=1e-12):
    "Elementwise |got - want| <= atol + rtol |want|, same shape and dtype (torch.testing's first call costs seconds of imports)."
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
    assert ((got - want).abs() <= atol + rtol * want.abs()).all(), (got - want).abs().max()


# ------------------------------------------------------------------------------------------------ conversions, exact
@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("t_val", [0.05, 0.5, "T"])
def test_conversions_are_exact_in_float64(name, t_val):
    """From the exact score: x0_hat, z_hat and u equal the posterior means and the velocity from their definitions, and
    every conversion back returns the score. Tolerance: 1000 unit roundoffs, amplified by 1/min(alpha, sigma)."""
    sde = SDES[name]()
    t_val = sde.T if t_val == "T" else t_val
    alpha, sigma, dalpha, dsigma = rates_by_autograd(sde, t_val)
    x = MIX.marginal(alpha, sigma).sample(300, generator=torch.Generator().manual_seed(1))
    t = torch.full((300,), t_val, dtype=torch.float64)
    s = MIX.score_fn(sde)(x, t)
    x0, z = posterior_means(MIX, x, alpha, sigma)
    want = {"score": s, "x0": x0, "noise": z, "velocity": dalpha * x0 + dsigma * z}
    tol = 1e3 * U64 / min(1.0, alpha, sigma)
    for source in PARAMETERIZATIONS:
        for target in PARAMETERIZATIONS:
            got = convert(sde, want[source], x, t, source=source, target=target)
            err = ((got - want[target]).abs().max() / want[target].abs().max()).item()
            assert err < tol, (source, target, err)
    # the theorem: the marginal velocity is the probability-flow drift
    pf = sde.reverse(MIX.score_fn(sde), ode=True).drift(x, t)
    assert ((pf - want["velocity"]).abs().max() / want["velocity"].abs().max()).item() < tol


def test_kernel_rates_from_the_inverse_map_and_exact_for_the_linear_interpolant():
    t = torch.tensor([0.1, 0.4, 0.9], dtype=torch.float64)
    for sde in (VPSDE(), SubVPSDE(), VESDE(), CosineVPSDE()):
        _, _, dalpha, dsigma = kernel_rates(sde, t)
        for k, tv in enumerate(t.tolist()):
            _, _, da, ds = rates_by_autograd(sde, tv)
            assert abs(dalpha[k].item() - da) <= 1e-12 * max(1.0, abs(da)) and abs(dsigma[k].item() - ds) <= 1e-12 * max(1.0, abs(ds))
    alpha, sigma, dalpha, dsigma = kernel_rates(LinearInterpolantSDE(), t)
    assert torch.equal(alpha, 1 - t) and torch.equal(sigma, t)
    assert torch.equal(dalpha, -torch.ones_like(t)) and torch.equal(dsigma, torch.ones_like(t))


def test_linear_interpolant_conversions_in_closed_form():
    li = LinearInterpolantSDE()
    gen = torch.Generator().manual_seed(2)
    x, u = torch.randn(50, 3, 2, generator=gen, dtype=torch.float64), torch.randn(50, 3, 2, generator=gen, dtype=torch.float64)
    t = torch.rand(50, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    tt = t[:, None, None]
    for target, formula in (("x0", x - tt * u), ("noise", x + (1 - tt) * u), ("score", -(x + (1 - tt) * u) / tt)):
        assert_close(convert(li, u, x, t, source="velocity", target=target), formula, rtol=1e3 * U64, atol=0)


def test_wrappers_call_the_model_and_convert():
    li = LinearInterpolantSDE()
    velocity = lambda x, t: -x + t[:, None]
    score = as_score_fn(li, velocity)
    assert isinstance(score, Reparameterized) and "velocity -> score" in repr(score)
    x, t = torch.randn(4, 2, dtype=torch.float64), torch.full((4,), 0.3, dtype=torch.float64)
    assert_close(score(x, t), -(x + 0.7 * velocity(x, t)) / 0.3)
    assert_close(as_velocity_fn(li, score)(x, t), velocity(x, t), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_follow_the_inputs(dtype):
    li, vp = LinearInterpolantSDE(), VPSDE()
    x, t = torch.randn(5, 3, 4, 4).to(dtype), torch.full((5,), 0.5, dtype=dtype)
    for sde in (li, vp):
        for target in PARAMETERIZATIONS:
            out = convert(sde, x, x, t, source="velocity", target=target)
            assert out.dtype == dtype and out.shape == x.shape and torch.isfinite(out).all()
    assert li.prior_sampling((3, 2), dtype=dtype).dtype == dtype
    assert conditional_velocity(li, x, x, t).dtype == dtype


# ------------------------------------------------------------------------------------------------ the linear interpolant
def test_linear_interpolant_sde_is_the_inverse_map_of_its_kernel():
    "a = d log alpha / dt and g^2 = d sigma^2/dt - 2 a sigma^2 by autograd, against `sde`, t in [0.01, T]."
    li = LinearInterpolantSDE()
    for t_val in torch.linspace(0.01, li.T, 20, dtype=torch.float64).tolist():
        alpha, sigma, dalpha, dsigma = rates_by_autograd(li, t_val)
        a, g2 = dalpha / alpha, 2 * sigma * dsigma - 2 * dalpha / alpha * sigma**2
        drift, g = li.sde(torch.ones(1, 1, dtype=torch.float64), torch.tensor([t_val], dtype=torch.float64))
        assert abs(drift.item() - a) <= 1e3 * U64 * abs(a) / (1 - li.T) and abs(g.item() ** 2 - g2) <= 1e3 * U64 * g2 / (1 - li.T)


def test_linear_interpolant_defaults_interface_and_prior():
    li = LinearInterpolantSDE()
    assert li.T == 1 - 2**-10 and li.N == 1000
    assert torch.tensor(li.T, dtype=torch.float32).item() == li.T == torch.tensor(li.T, dtype=torch.float16).item()
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    t = torch.linspace(0.0, li.T, 6)
    drift, g = li.sde(x, t)
    mean, std = li.marginal_prob(x, t)
    f, G = li.discretize(x, t)
    assert drift.shape == mean.shape == f.shape == x.shape and g.shape == std.shape == G.shape == (6, 1, 1, 1)
    assert_close(mean, (1 - t).reshape(6, 1, 1, 1) * x)
    z = li.prior_sampling((4000, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert abs(z.std().item() - li.T) < 4 * li.T / math.sqrt(2 * 8000)
    want = torch.distributions.Normal(torch.zeros((), dtype=torch.float64), torch.tensor(li.T, dtype=torch.float64)).log_prob(z).sum(1)
    assert_close(li.prior_logp(z), want)


def test_linear_interpolant_discretize_composes_to_the_kernel():
    "The exact transitions of `discretize`, composed from t = 0, give alpha(t_i) and sigma(t_i)^2 at every grid time."
    for N in (5, 300):
        li = LinearInterpolantSDE(N=N)
        ts = torch.arange(N, dtype=torch.float64) * li.T / N
        f, G = li.discretize(torch.ones(N, 1, dtype=torch.float64), ts)
        factor, var = 1.0, 0.0
        for i in range(N):
            factor, var = (1 + f[i, 0].item()) * factor, (1 + f[i, 0].item()) ** 2 * var + G[i, 0].item() ** 2
            t_next = (i + 1) * li.T / N
            assert abs(factor - (1 - t_next)) < 1e-12 and abs(var - t_next**2) < 1e-12


def test_linear_interpolant_kernel_against_simulation():
    """Euler–Maruyama from a point to t = 0.5 and 0.9 (float64, dt = 2e-3): the standardized residual within 4 standard
    errors; EM's own bias, computed exactly from the scheme's mean and variance recursion, below a quarter of one."""
    li, M = LinearInterpolantSDE(), 2000                       # EM's variance bias 0.6 % at dt = 2e-3, a quarter SE at M = 2000
    x0 = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64).expand(M, 3)
    gen, x, t_prev, factor, var = torch.Generator().manual_seed(5), x0, 0.0, 1.0, 0.0
    se_m, se_v = 1 / math.sqrt(M), math.sqrt(2 / (M - 1))
    for t in (0.5, 0.9):
        ts = time_grid(t_prev, t, round((t - t_prev) * 500), dtype=torch.float64)
        x = euler_maruyama(li.drift, li.diffusion, x, ts, generator=gen)
        drift, g = li.sde(torch.ones(len(ts) - 1, 1, dtype=torch.float64), ts[:-1])
        for a, gn, dt in zip(drift[:, 0].tolist(), g[:, 0].tolist(), ts.diff().tolist()):
            factor, var = (1 + a * dt) * factor, (1 + a * dt) ** 2 * var + gn**2 * dt
        t_prev = t
        assert abs(factor - (1 - t)) * 2 / t < 0.25 * se_m and abs(var / t**2 - 1) < 0.25 * se_v
        z = (x - (1 - t) * x0) / t
        assert (z.mean(0).abs() < 4 * se_m).all() and ((z.var(0) - 1).abs() < 4 * se_v).all(), t


# ------------------------------------------------------------------------------------------------ the loss
def test_flow_matching_is_dsm_with_lambda_g4_over_4():
    x0 = MIX.sample(1000, generator=torch.Generator().manual_seed(6))
    for sde in (LinearInterpolantSDE(), VPSDE()):
        model = lambda x, t, sde=sde: MIX.score_fn(sde)(x, t) + 0.3 * torch.cos(x)
        fm = flow_matching_loss(sde, as_velocity_fn(sde, model), x0, generator=torch.Generator().manual_seed(7), reduce="none")
        lam = lambda t, sde=sde: sde.diffusion(torch.zeros(len(t), 1, dtype=t.dtype), t)[:, 0] ** 4 / 4
        dsm = dsm_loss(sde, model, x0, weighting=lam, generator=torch.Generator().manual_seed(7), reduce="none")
        p = perturb(sde, x0, generator=torch.Generator().manual_seed(7))
        alpha, sigma = sde.marginal_coeffs(p.t)
        assert ((fm - dsm).abs() / dsm < 1e3 * U64 / torch.minimum(alpha, sigma).clamp(max=1)).all()


@pytest.mark.parametrize("name", ["linear", "vp"])
def test_flow_matching_minimizer_is_the_marginal_velocity_on_gaussian_data(name):
    """N(m, s^2 I) data: u(x, t) = alpha' m + c (x - alpha m) in closed form. Shifting the model by a constant vector b
    raises the loss by |b|^2/2 on average (the cross term has mean zero at the minimizer): within 4 SE, same draws."""
    sde, n = SDES[name](), 100_000
    m, s = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.7
    x0 = m + s * torch.randn(n, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    def u_star(x, t):
        alpha, sigma, dalpha, dsigma = (v[:, None] for v in kernel_rates(sde, t))
        c = (alpha * dalpha * s**2 + sigma * dsigma) / (alpha**2 * s**2 + sigma**2)
        return dalpha * m + c * (x - alpha * m)

    b = torch.tensor([0.3, -0.2], dtype=torch.float64)
    loss = lambda fn: flow_matching_loss(sde, fn, x0, eps=1e-3, generator=torch.Generator().manual_seed(9), reduce="none")
    excess = loss(lambda x, t: u_star(x, t) + b) - loss(u_star)
    assert abs(excess.mean().item() - 0.5 * b.square().sum().item()) < 4 * excess.std().item() / math.sqrt(n)


def test_flow_matching_constant_of_the_linear_interpolant():
    "N(0, I) data: the loss at the exact velocity averages to (D/2) (atan(2T - 1) - atan(2 eps - 1)) / (T - eps), within 4 SE."
    li, n, D, eps = LinearInterpolantSDE(), 100_000, 3, 1e-3
    c = lambda t: (2 * t - 1) / ((1 - t) ** 2 + t**2)
    losses = flow_matching_loss(li, lambda x, t: c(t)[:, None] * x, torch.randn(n, D, generator=torch.Generator().manual_seed(10),
                                dtype=torch.float64), eps=eps, generator=torch.Generator().manual_seed(11), reduce="none")
    want = D / 2 * (math.atan(2 * li.T - 1) - math.atan(2 * eps - 1)) / (li.T - eps)
    assert abs(losses.mean().item() - want) < 4 * losses.std().item() / math.sqrt(n)
    assert flow_matching_loss(li, lambda x, t: c(t)[:, None] * x, torch.zeros(4, D), reduce="sum").shape == ()


# ------------------------------------------------------------------------------------------------ samplers
def _moments_ok(x, mix):
    "Mean and covariance entries of the samples against the mixture's, within 4 standard errors."
    x = x.double()
    m, C = mix.mean().double(), mix.covariance().double()
    n = x.shape[0]
    assert ((x.mean(0) - m).abs() < 4 * x.std(0) / math.sqrt(n)).all()
    prods = (x - m)[:, :, None] * (x - m)[:, None, :]
    assert ((prods.mean(0) - C).abs() < 4 * prods.std(0) / math.sqrt(n)).all()


def test_velocity_model_plugs_into_sample_ode_sample_and_probability_flow():
    "The exact ring velocity of the linear interpolant, wrapped as a score: samples with the ring's moments; ODE invertible."
    ring, li = ring_of_gaussians(), LinearInterpolantSDE()
    score = as_score_fn(li, as_velocity_fn(li, ring.score_fn(li)))
    x, nfe = sample(li, score, (3000, 2), predictor="dpm_solver_2m", steps=25, spacing="logsnr",
                    generator=torch.Generator().manual_seed(12))
    assert nfe == 26
    _moments_ok(x, ring)
    x, _ = ode_sample(li, score, (3000, 2), rtol=1e-4, atol=1e-4, generator=torch.Generator().manual_seed(13))
    _moments_ok(x, ring)
    z = li.prior_sampling((200, 2), generator=torch.Generator().manual_seed(15))
    x0, _ = probability_flow(li, score, z, li.T, 1e-3)                     # float32 from t0 = T: T is exact in float32
    back, _ = probability_flow(li, score, x0, 1e-3, li.T)
    assert (back - z).abs().max() < 1e-2                                   # 1e3 x the solver's default tolerance 1e-5


@pytest.mark.parametrize("nu", [0.0, 1.0, "g2"])
def test_sample_interpolant_sde_has_the_marginals(nu):
    "From exact samples of p_T under the linear interpolant, 150 EM steps land on the ring's moments (4 SE) for each nu."
    ring, li = ring_of_gaussians(), LinearInterpolantSDE()
    nu = (lambda t: 2 * t / (1 - t)) if nu == "g2" else nu
    x_T = ring.marginal(1 - li.T, li.T).sample(2000, generator=torch.Generator().manual_seed(16))
    x = sample_interpolant_sde(li, ring.score_fn(li), x_T=x_T, nu=nu, steps=150, generator=torch.Generator().manual_seed(17))
    assert x.shape == x_T.shape and x.dtype == x_T.dtype
    _moments_ok(x, ring)


def test_interpolant_clock_with_nu_g2_is_the_reverse_sde():
    "nu = g^2 gives Anderson's reverse SDE: the same drift and diffusion as `reversed_clock`."
    from sde_diffusion.reverse import reversed_clock
    vp, score = VPSDE(), MIX.score_fn(VPSDE())
    drift, diffusion = interpolant_clock(vp, score, lambda t: vp.beta(t))
    drift_r, diffusion_r = reversed_clock(vp, score)
    y, s = torch.randn(7, 2, dtype=torch.float64), torch.full((7,), 0.4, dtype=torch.float64)
    assert_close(drift(y, s), drift_r(y, s))
    assert_close(diffusion(y, s), diffusion_r(y, s))
    assert_close(interpolant_clock(vp, score, 0.0)[0](y, s),
                               reversed_clock(vp, score, ode=True)[0](y, s))


# ------------------------------------------------------------------------------------------------ errors
def test_errors_name_the_argument():
    li = LinearInterpolantSDE()
    x, t = torch.zeros(3, 2), torch.full((3,), 0.5)
    cases = [
        (ValueError, "`T`", lambda: LinearInterpolantSDE(T=1.0)),
        (ValueError, "`T`", lambda: LinearInterpolantSDE(T=-0.5)),
        (ValueError, "`N`", lambda: LinearInterpolantSDE(N=0)),
        (ValueError, "`source`", lambda: convert(li, x, x, t, source="eps", target="score")),
        (ValueError, "`target`", lambda: convert(li, x, x, t, source="score", target="v")),
        (ValueError, "`value`", lambda: convert(li, torch.zeros(3, 3), x, t, source="velocity", target="score")),
        (ValueError, "`value`", lambda: convert(li, x.double(), x, t, source="velocity", target="score")),
        (ValueError, "`t`", lambda: convert(li, x, x, torch.zeros(3), source="velocity", target="score")),
        (ValueError, "`t`", lambda: convert(li, x, x, torch.full((3,), 1.5), source="velocity", target="score")),
        (ValueError, "`t`", lambda: convert(li, x, x, torch.full((2,), 0.5), source="velocity", target="score")),
        (TypeError, "`x`", lambda: convert(li, x, x.long(), t, source="velocity", target="score")),
        (TypeError, "`sde`", lambda: as_score_fn("linear", lambda x, t: x)),
        (TypeError, "`fn`", lambda: as_velocity_fn(li, 3.0)),
        (ValueError, "`source`", lambda: as_score_fn(li, lambda x, t: x, parameterization="v")),
        (TypeError, "`fn`", lambda: as_score_fn(li, lambda x, t: 1.0)(x, t)),
        (ValueError, "`velocity_fn`", lambda: flow_matching_loss(li, lambda x, t: x[:, :1], x)),
        (ValueError, "`reduce`", lambda: flow_matching_loss(li, lambda x, t: x, x, reduce="max")),
        (ValueError, "`eps`", lambda: flow_matching_loss(li, lambda x, t: x, x, eps=0.0)),
        (ValueError, "`z`", lambda: conditional_velocity(li, x, torch.zeros(3, 3), t)),
        (ValueError, "`nu`", lambda: sample_interpolant_sde(li, lambda x, t: -x, (3, 2), nu=-1.0, steps=2)),
        (ValueError, "`nu`", lambda: sample_interpolant_sde(li, lambda x, t: -x, (3, 2), nu=lambda t: t[:1], steps=2)),
        (ValueError, "`nu`", lambda: sample_interpolant_sde(li, lambda x, t: -x, (3, 2), nu=lambda t: t - 0.5, steps=2)),
        (ValueError, "`eps`", lambda: sample_interpolant_sde(li, lambda x, t: -x, (3, 2), eps=1.0, steps=2)),
        (TypeError, "`score_fn`", lambda: sample_interpolant_sde(li, None, (3, 2), steps=2)),
        (ValueError, "`score_fn`", lambda: sample_interpolant_sde(li, lambda x, t: x[:, :1], (3, 2), steps=2)),
    ]
    for exc, name, call in cases:
        with pytest.raises(exc, match=name):
            call()


# ------------------------------------------------------------------------------------------------ mutation-test survivors (issue 17)
def test_linear_interpolant_discretize_drift_is_linear_in_x():
    """The mean of one exact step is x + f = (1 - t')/(1 - t) x = alpha(t')/alpha(t) x for any x, not only x = 1 (the
    composition test uses ones, where -rate * x and -rate / x agree). Tolerance: 100 unit roundoffs of |x|/(1 - t), the
    rounding of rate = (t' - t)/(1 - t) and of the sum, amplified by 1/(1 - t) near T."""
    li = LinearInterpolantSDE(N=7)
    gen = torch.Generator().manual_seed(20)
    x = 3 * torch.randn(6, 2, 3, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.0, 0.1, 0.37, 0.5, 0.8, li.T - 0.01], dtype=torch.float64)
    f, G = li.discretize(x, t)
    t_next = (t + li.T / li.N).clamp(max=li.T)
    want = ((1 - t_next) / (1 - t))[:, None, None] * x
    assert (((x + f) - want).abs() <= 100 * U64 * x.abs() / (1 - t)[:, None, None]).all()
    assert G.shape == (6, 1, 1)


def test_nu_exactly_zero_from_a_callable_is_accepted():
    "nu(t) >= 0 is the contract (0 is Euler on the probability-flow ODE): a callable returning exact zeros is valid and gives the samples of nu = 0, bit for bit."
    li = LinearInterpolantSDE()
    x_T = li.prior_sampling((5, 2), generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    score = lambda x, t: -x / t[:, None] ** 2
    a = sample_interpolant_sde(li, score, x_T=x_T, nu=lambda t: torch.zeros_like(t), steps=8, generator=torch.Generator().manual_seed(22))
    b = sample_interpolant_sde(li, score, x_T=x_T, nu=0.0, steps=8, generator=torch.Generator().manual_seed(22))
    assert torch.equal(a, b)


def test_interpolant_defaults_are_the_documented_ones():
    "`interpolant_clock` and `sample_interpolant_sde` default to nu = 1 (diffusion exactly 1) and 1000 steps (a path of 1001 states)."
    li = LinearInterpolantSDE()
    score = lambda x, t: -x
    y, s = torch.randn(3, 2, dtype=torch.float64), torch.full((3,), 0.2, dtype=torch.float64)
    drift, diffusion = interpolant_clock(li, score)
    assert torch.equal(diffusion(y, s), torch.ones(3, 1, dtype=torch.float64))
    assert torch.equal(drift(y, s), interpolant_clock(li, score, 1.0)[0](y, s))
    x_T = li.prior_sampling((2, 2), generator=torch.Generator().manual_seed(23), dtype=torch.float64)
    path = sample_interpolant_sde(li, score, x_T=x_T, return_path=True, generator=torch.Generator().manual_seed(24))
    assert path.shape == (1001, 2, 2)
    explicit = sample_interpolant_sde(li, score, x_T=x_T, nu=1.0, steps=1000, generator=torch.Generator().manual_seed(24))
    assert torch.equal(path[-1], explicit)


def test_interpolant_sampler_runs_the_clock_from_T_to_eps():
    """The score is evaluated at t = T - s_k on the uniform clock s_k = k (T - eps)/N, k < N: the run ends at t = eps
    exactly, not past it. Tolerance: 4 unit roundoffs of T (linspace and one subtraction)."""
    li, eps, N, seen = LinearInterpolantSDE(), 0.05, 4, []
    score = lambda x, t: seen.append(t.clone()) or -x
    x_T = li.prior_sampling((3, 2), generator=torch.Generator().manual_seed(25), dtype=torch.float64)
    sample_interpolant_sde(li, score, x_T=x_T, eps=eps, steps=N, generator=torch.Generator().manual_seed(26))
    got = torch.stack([t[0] for t in seen])
    want = torch.tensor([li.T - k * (li.T - eps) / N for k in range(N)], dtype=torch.float64)
    assert got.shape == want.shape and ((got - want).abs() <= 4 * U64 * li.T).all(), (got, want)


def test_interpolant_sampler_reports_overflow_of_a_half_precision_dtype():
    "float16 samples are computed in float32; a finite float32 result beyond float16's range (65504) must raise, not return inf."
    li = LinearInterpolantSDE()
    with pytest.raises(FloatingPointError, match="overflow"):
        sample_interpolant_sde(li, lambda x, t: torch.full_like(x, -1e7), (3, 2), nu=0.0, steps=4, dtype=torch.float16,
                               generator=torch.Generator().manual_seed(27))
