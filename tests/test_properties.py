"""Property-based tests (hypothesis) over the public API outside sampling/likelihood/reverse: SDEs, losses, the mixture
oracle, models, metrics, solvers, DDPM and SMLD helpers.

Every call either returns a finite result of the right shape and dtype that satisfies a stated invariant, or raises
ValueError/TypeError whose message names the argument (in backticks). A torch-internal error or any other exception
fails the test. Profiles (tests/conftest.py): "ci" (default, derandomized, 25 examples), "thorough" (400 examples)."""
import math
import re

import pytest
import torch
from hypothesis import assume, given, note
from hypothesis import strategies as st

from sde_diffusion.sde import SDE, ReverseSDE, SubVPSDE, VESDE, VPSDE

F64 = torch.float64
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DTYPES = FLOATS + [torch.int64]
DEVICES = ["cpu", "meta"]

# ----------------------------------------------------------------------------------------------------------- helpers
# Values that stress argument checks: edge numbers, non-finite numbers, bools and non-numbers where numbers are expected.
WILD_NUMBERS = st.sampled_from([0, 0.0, -1.0, -1e-9, 1e-300, 1e-30, 1e30, 1e300, math.nan, math.inf, -math.inf,
                                True, False, None, "1.0", 1, 2, 0.5, 3.0, 20.0, 1000])


def named(exc: BaseException, *names: str) -> bool:
    "Whether the message of `exc` names one of `names` in backticks."
    return any(f"`{n}`" in str(exc) for n in names)


def call(fn, *names):
    """fn() or None when it raises ValueError/TypeError naming one of `names`; anything else propagates (a failure).
    (Warnings are errors here too: pytest turns none into errors by default, so they pass through.)"""
    try:
        return fn()
    except (ValueError, TypeError) as e:
        assert named(e, *names), f"{type(e).__name__} does not name any of {names}: {e}"
        return None


def shapes(min_rank=1, max_rank=4, max_batch=4, max_side=3):
    "Shapes (B, *D) with B >= 1 and rank in [min_rank, max_rank]."
    return st.integers(min_rank, max_rank).flatmap(
        lambda r: st.tuples(st.integers(1, max_batch), *[st.integers(1, max_side)] * (r - 1)))


def eps_of(dtype) -> float:
    return torch.finfo(dtype).eps


def randn(shape, dtype, seed=0, device="cpu", scale=1.0):
    "Seeded normal draws in float64, rounded to `dtype` (any dtype, ints included); `meta`: an empty meta tensor."
    if device == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    x = scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return x.round().to(dtype) if not dtype.is_floating_point else x.to(dtype)


def times(B, dtype, device, t_values):
    "A time tensor of shape (B,) built from drawn float64 values."
    t = torch.tensor(t_values[:B] + [t_values[-1]] * max(0, B - len(t_values)), dtype=F64)
    return t.to(dtype=dtype, device=device)


# -------------------------------------------------------------------------------------------------------------- SDEs
TIMES = st.one_of(st.just(0.0), st.just(1.0), st.floats(1e-30, 1))   # [0, T]; no subnormal times
def sde_params():
    "Valid SDEs over the full range of sensible parameters."
    N = st.integers(1, 2000)
    pos = st.floats(1e-3, 1e3)
    vp = st.tuples(pos, st.floats(0, 1e3), N).map(lambda a: (a[0], a[0] + a[1], a[2]))
    ve = st.tuples(st.floats(1e-4, 10), st.floats(1.001, 1e5), N).map(lambda a: (a[0], a[0] * a[1], a[2]))
    return st.one_of(vp.map(lambda a: VPSDE(*a)), vp.map(lambda a: SubVPSDE(*a)), ve.map(lambda a: VESDE(*a)))


def representable(sde, dtype) -> bool:
    "Whether the SDE's scales (sigma_max and g(T) for VE, beta_max for VP) fit `dtype` with room (x16) for products."
    big = torch.finfo(dtype).max / 16
    if isinstance(sde, VESDE):
        return sde.sigma_max * math.sqrt(2 * math.log(sde.sigma_max / sde.sigma_min)) * (1 + sde.sigma_max) < big
    return sde.beta_max < big


def closed_form(sde, t: torch.Tensor):
    "(alpha, sigma, drift coefficient a(t), g(t)) in float64 from the formulas of chapter 4."
    t = t.to(F64)
    if isinstance(sde, VESDE):
        L = math.log(sde.sigma_max / sde.sigma_min)
        sig = sde.sigma_min * torch.exp(L * t)            # sqrt(sig^2 - sigma_min^2) without cancellation at small t
        return torch.ones_like(t), sig * torch.sqrt(-torch.expm1(-2 * L * t)), torch.zeros_like(t), sig * math.sqrt(2 * L)
    b0, b1 = sde.beta_min, sde.beta_max
    B = b0 * t + 0.5 * t**2 * (b1 - b0)
    beta = b0 + t * (b1 - b0)
    if isinstance(sde, VPSDE):
        return torch.exp(-B / 2), torch.sqrt(-torch.expm1(-B)), -beta / 2, beta.sqrt()
    return torch.exp(-B / 2), -torch.expm1(-B), -beta / 2, torch.sqrt(beta * -torch.expm1(-2 * B))


@given(kind=st.sampled_from([VPSDE, SubVPSDE, VESDE]), a=WILD_NUMBERS, b=WILD_NUMBERS,
       N=st.sampled_from([1, 10, 0, -3, True, 2.0, None, "5", 10**6]))
def test_sde_constructor_valid_or_named_error(kind, a, b, N):
    "Either the SDE is built with finite, positive, ordered parameters and an integer N >= 1, or the error names one."
    names = ("beta_min", "beta_max", "N") if kind is not VESDE else ("sigma_min", "sigma_max", "N")
    sde = call(lambda: kind(a, b, N), *names)
    if sde is not None:
        lo, hi = (sde.beta_min, sde.beta_max) if kind is not VESDE else (sde.sigma_min, sde.sigma_max)
        assert type(lo) is float and type(hi) is float and 0 < lo <= hi < math.inf
        assert type(sde.N) is int and sde.N >= 1
        for v in (a, b, N):
            assert not isinstance(v, (bool, str)) and v is not None


@given(sde=sde_params(), shape=shapes(), dtype=st.sampled_from(FLOATS), device=st.sampled_from(DEVICES),
       t_values=st.lists(TIMES, min_size=1, max_size=4))
def test_marginal_prob_and_sde_match_closed_forms(sde, shape, dtype, device, t_values):
    """marginal_prob and sde: shapes, dtypes, devices of the input; std >= 0 and > 0 for t > 0; both agree with the
    float64 closed forms at the times as rounded to the dtype, to a few ulps of the dtype times the condition number
    of exp (|log alpha|, the exponent of sigma)."""
    x0 = randn(shape, dtype, device=device)
    t = times(shape[0], dtype, device, t_values)
    mean, std = sde.marginal_prob(x0, t)
    drift, g = sde.sde(x0, t)
    bshape = (shape[0],) + (1,) * (len(shape) - 1)
    for v, s in ((mean, shape), (std, bshape), (drift, shape), (g, bshape)):
        assert v.shape == s and v.dtype == dtype and v.device.type == device
    if device == "meta":
        return
    alpha, sigma, a, gg = closed_form(sde, t)
    cond = 1 + (alpha.log().abs() if not isinstance(sde, VESDE) else 2 * math.log(sde.sigma_max / sde.sigma_min) * t.double())
    if isinstance(sde, VESDE):
        cond = cond + math.log(sde.sigma_max / sde.sigma_min)
    tol = 16 * eps_of(dtype) * cond                              # relative, per sample
    tiny = torch.finfo(dtype).tiny
    rel = lambda got, ref: ((got.double().reshape(shape[0], -1) - ref.reshape(shape[0], -1)).abs().amax(1)
                            <= tol * ref.reshape(shape[0], -1).abs().amax(1) + 4 * tiny / eps_of(dtype))
    big = torch.finfo(dtype).max
    assume(bool((sigma < big).all() and (gg < big).all()))    # beyond the dtype's range inf is the rounded value
    assert torch.isfinite(std).all() and (std >= 0).all()
    assert (std.reshape(-1)[t.double() > 0] > 0).all() or dtype in (torch.float16, torch.bfloat16)
    x64 = x0.double()
    assert rel(std, sigma).all(), (std.reshape(-1), sigma)
    assert rel(mean, alpha.reshape(bshape) * x64).all()
    assert rel(g, gg).all(), (g.reshape(-1), gg)
    assert rel(drift, a.reshape(bshape) * x64).all()


@given(sde=sde_params(), shape=shapes(), dtype=st.sampled_from(DTYPES), device=st.sampled_from(DEVICES),
       t_kind=st.sampled_from(["outside", "nan", "float", "wrong_shape", "bool", "int", "other_device"]),
       method=st.sampled_from(["marginal_prob", "sde", "discretize"]))
def test_bad_times_and_states_are_named(sde, shape, dtype, device, t_kind, method):
    "Times outside [0, T], NaN, wrong shapes, bools, python floats; integer states: a ValueError/TypeError naming `t`/`x`."
    x = randn(shape, dtype, device=device)
    B = shape[0]
    t = {"outside": lambda: torch.full((B,), 1.5, dtype=F64, device=device),
         "nan": lambda: torch.full((B,), math.nan, dtype=F64, device=device),
         "float": lambda: 0.5,
         "wrong_shape": lambda: torch.full((B + 1,), 0.5, device=device),
         "bool": lambda: torch.ones(B, dtype=torch.bool, device=device),
         "int": lambda: torch.ones(B, dtype=torch.int64, device=device),
         "other_device": lambda: torch.full((B,), 0.5, device="meta" if device == "cpu" else "cpu")}[t_kind]()
    out = call(lambda: getattr(sde, method)(x, t), "t", "x", "x0", "N")
    valid = dtype.is_floating_point and t_kind == "int" or (t_kind in ("outside", "nan") and device == "meta"
                                                           and dtype.is_floating_point)
    if out is None:
        assert not valid or (t_kind == "outside" and device == "meta") or (method == "discretize"), (t_kind, dtype)
        return
    assert valid, f"{t_kind} times with {dtype} x on {device} were accepted"
    for v in out:
        assert v.dtype == dtype and v.device.type == device


@given(sde=sde_params(), shape=shapes(), dtype=st.sampled_from(DTYPES + [None]), device=st.sampled_from(DEVICES),
       seed=st.integers(0, 2**31))
def test_prior_sampling_and_exact_logp(sde, shape, dtype, device, seed):
    """prior_sampling: shape, dtype, device as asked, finite, reproducible from a seed; an integer dtype is a named
    error. prior_logp: exactly the N(0, s^2 I) log-density (float64 reference, a few ulps of its magnitude)."""
    gen = torch.Generator().manual_seed(seed) if device == "cpu" else None
    z = call(lambda: sde.prior_sampling(shape, generator=gen, dtype=dtype, device=device), "dtype")
    s = sde.sigma_max if isinstance(sde, VESDE) else 1.0
    if z is None:   # an integer dtype, or one too narrow for N(0, s^2) samples
        assert dtype is not None and (not dtype.is_floating_point or 16 * s > torch.finfo(dtype).max)
        return
    dtype = dtype or torch.get_default_dtype()
    assert z.shape == shape and z.dtype == dtype and z.device.type == device
    lp = sde.prior_logp(z)
    assert lp.shape == (shape[0],) and lp.dtype == dtype and lp.device.type == device
    if device == "meta":
        return
    assert torch.isfinite(z).all()
    again = sde.prior_sampling(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype, device=device)
    assert torch.equal(z, again)
    ref = torch.distributions.Normal(torch.zeros((), dtype=F64), s).log_prob(z.double()).reshape(shape[0], -1).sum(1)
    assert torch.isfinite(lp).all()
    D = math.prod(shape[1:])
    torch.testing.assert_close(lp.double(), ref, rtol=8 * eps_of(dtype), atol=8 * eps_of(dtype) * (1 + D))


@given(sde=sde_params(), shape=shapes(), dtype=st.sampled_from(FLOATS), device=st.sampled_from(DEVICES),
       t_values=st.lists(TIMES, min_size=1, max_size=4))
def test_discretize_is_the_named_chain(sde, shape, dtype, device, t_values):
    """discretize: f of x's shape, G of shape (B, 1, ...), finite, G >= 0; the index is in [0, N-1] for every t in [0, T]
    in every dtype; VP: f = (sqrt(1 - beta_i) - 1) x, G = sqrt(beta_i); VE: G^2 = sigma_i^2 - sigma_{i-1}^2."""
    assume(not (isinstance(sde, VPSDE) and sde.beta_max >= sde.N))
    assume(representable(sde, dtype))        # beyond the dtype's range inf is the correctly rounded value
    x = randn(shape, dtype, device=device)
    t = times(shape[0], dtype, device, t_values)
    f, G = sde.discretize(x, t)
    bshape = (shape[0],) + (1,) * (len(shape) - 1)
    assert f.shape == shape and G.shape == bshape and f.dtype == G.dtype == dtype and f.device.type == device
    if device == "meta":
        return
    i = sde.timestep(t)
    assert i.dtype == torch.int64 and ((0 <= i) & (i <= sde.N - 1)).all()
    assert torch.isfinite(f).all() and torch.isfinite(G).all() and (G >= 0).all()
    tol = 16 * eps_of(dtype)
    if isinstance(sde, VPSDE):
        beta = sde.discrete_betas(F64)[i]
        torch.testing.assert_close(G.double().reshape(-1), beta.sqrt(), rtol=tol, atol=torch.finfo(dtype).tiny / eps_of(dtype))
    elif isinstance(sde, VESDE):
        logs = torch.linspace(math.log(sde.sigma_min), math.log(sde.sigma_max), sde.N, dtype=F64)
        gap = torch.cat([torch.full((1,), math.inf, dtype=F64), logs.diff()])    # log sigma_i - log sigma_{i-1}; sigma_{-1} = 0
        ref = logs.exp()[i] * torch.sqrt(-torch.expm1(-2 * gap[i]))            # sqrt(sigma_i^2 - sigma_{i-1}^2)
        L = math.log(sde.sigma_max / sde.sigma_min)
        # the levels' logs carry rounding errors of eps |log sigma|: relative to the gap delta = L/(N-1) they set G's error
        cond = 1 + sde.N * L + (abs(math.log(sde.sigma_min)) + abs(math.log(sde.sigma_max))) * (sde.N - 1) / L
        torch.testing.assert_close(G.double().reshape(-1), ref, rtol=tol * cond, atol=torch.finfo(dtype).tiny / eps_of(dtype))


@given(sde=sde_params(), shape=shapes(), dtype=st.sampled_from(FLOATS), pf=st.sampled_from([False, True, 0, 1, "no", None, 2.5]),
       t_values=st.lists(st.floats(1e-3, 1), min_size=1, max_size=4))
def test_reverse_is_anderson(sde, shape, dtype, pf, t_values):
    """reverse(score_fn, ode): ode must be a bool; drift f - w g^2 s with w = 1 (SDE) or 1/2
    (ODE); diffusion g or 0; discretize: f_i - w G_i^2 s and G_i or 0."""
    x = randn(shape, dtype)
    t = times(shape[0], dtype, "cpu", t_values)
    score = lambda x, t: -x            # the score of N(0, I)
    rev = call(lambda: sde.reverse(score, ode=pf), "ode")
    if rev is None:
        assert not isinstance(pf, bool)
        return
    assert isinstance(pf, bool), f"ode={pf!r} accepted"
    w = 0.5 if pf else 1.0
    d, g = rev.sde(x, t)
    f, gf = sde.sde(x, t)
    assert d.dtype == g.dtype == dtype and d.shape == x.shape
    torch.testing.assert_close(d, f + w * gf**2 * x, rtol=16 * eps_of(dtype), atol=16 * eps_of(dtype) * (1 + gf.double().max().item() ** 2))
    assert torch.equal(g, torch.zeros_like(gf) if pf else gf)
    assert call(lambda: sde.reverse("not callable"), "score_fn") is None


# ------------------------------------------------------------------------------------------- the mixture oracle
from sde_diffusion.toy import GaussianMixture  # noqa: E402


@st.composite
def mixtures(draw, max_k=3, max_d=3):
    "A valid mixture in float64: unequal weights, means at scale up to 10, isotropic, diagonal or full covariances."
    K, D = draw(st.integers(1, max_k)), draw(st.integers(1, max_d))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    w = 0.2 + torch.rand(K, generator=g, dtype=F64)
    mu = draw(st.sampled_from([0.1, 1.0, 10.0])) * torch.randn(K, D, generator=g, dtype=F64)
    kind = draw(st.sampled_from(["iso", "diag", "full", "number"]))
    scale = draw(st.sampled_from([0.01, 1.0, 25.0]))
    if kind == "number":
        covs = scale
    elif kind == "iso":
        covs = scale * (0.5 + torch.rand(K, generator=g, dtype=F64))
    elif kind == "diag":
        covs = scale * (0.5 + torch.rand(K, D, generator=g, dtype=F64))
    else:
        A = torch.randn(K, D, D, generator=g, dtype=F64)
        covs = scale * (A @ A.mT / D + 0.3 * torch.eye(D, dtype=F64))
    return GaussianMixture(w, mu, covs)


def as_points(x: torch.Tensor, rank: int) -> torch.Tensor:
    "Points (B, D) viewed as (B, *dims) of the given rank (the extra dims of size 1 but the last)."
    return x.reshape(x.shape[0], *([1] * (rank - 2)), x.shape[1]) if rank >= 2 else x


def lp_tol(dtype, lp: torch.Tensor, D: int) -> torch.Tensor:
    "Tolerance for a log-density computed in `dtype` (float32 for half): a few ulps of the squared Mahalanobis terms."
    e = eps_of(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    return 64 * e * (1 + D + lp.abs())


@given(w=st.one_of(WILD_NUMBERS, st.just([1.0, 2.0]), st.just([True, True]), st.just([[1.0]])),
       mu=st.sampled_from([[[0.0, 1.0]], [[0.0, 1.0], [2.0, 3.0]], [[math.nan, 0.0]], [[1e300, 0.0]], [0.0, 1.0],
                           [[True, False]], "ab", None]),
       covs=st.one_of(WILD_NUMBERS, st.just([[[1.0, 0.9], [0.9, 1.0]]]), st.just([[[1.0, 2.0], [2.0, 1.0]]]),
                      st.just([[1.0, -1.0]]), st.just([[[1.0, 0.5], [0.0, 1.0]]])),
       dtype=st.sampled_from(DTYPES + [None]))
def test_mixture_constructor_valid_or_named_error(w, mu, covs, dtype):
    "A mixture is built from finite positive weights, finite means, SPD covariances in a floating dtype, or the error names one."
    gm = call(lambda: GaussianMixture(w, mu, covs, dtype=dtype), "weights", "means", "covs", "dtype")
    if gm is None:
        return
    for v in (w, mu, covs):
        assert not isinstance(v, (bool, str)) and v is not None
        assert not (isinstance(v, list) and any(isinstance(u, bool) for u in torch.as_tensor(v).flatten().tolist()
                                                if False)), v
    assert torch.as_tensor(w).dtype != torch.bool and torch.as_tensor(mu).dtype != torch.bool and torch.as_tensor(covs).dtype != torch.bool
    assert gm.dtype.is_floating_point and torch.isfinite(gm.means).all() and (gm.weights > 0).all()
    torch.testing.assert_close(gm.weights.double().sum(), torch.tensor(1.0, dtype=F64), rtol=0, atol=4 * eps_of(gm.dtype))
    assert (torch.linalg.eigvalsh(gm.covs.double()) > 0).all()


@given(gm=mixtures(), B=st.integers(1, 4), rank=st.integers(2, 4), dtype=st.sampled_from(FLOATS),
       seed=st.integers(0, 2**16))
def test_mixture_log_prob_and_score(gm, B, rank, dtype, seed):
    """log_prob: finite, shape (B,), dtype of x, equal to log sum_k w_k N(x; mu_k, Sigma_k) from torch.distributions
    (float64 reference); for K = 1 exactly MultivariateNormal.log_prob. score: the autograd gradient of log_prob (float64)."""
    x64 = gm.sample(B, generator=torch.Generator().manual_seed(seed)) + 0.5 * torch.randn(B, gm.D, dtype=F64)
    x = as_points(x64, rank).to(dtype)
    g = gm.to(dtype=dtype) if dtype in (torch.float32, F64) else gm
    lp, s = call(lambda: g.log_prob(x), "x"), call(lambda: g.score(x), "x")
    assert lp is not None and s is not None, "half-precision points are supported"
    assert lp.shape == (B,) and lp.dtype == dtype and s.shape == x.shape and s.dtype == dtype
    assert torch.isfinite(lp).all() and torch.isfinite(s).all()
    xr = x.double().reshape(B, gm.D)
    comps = torch.distributions.MultivariateNormal(gm.means, covariance_matrix=gm.covs)
    ref = torch.logsumexp(comps.log_prob(xr[:, None, :]) + gm.weights.log(), -1)
    if gm.K == 1:
        torch.testing.assert_close(ref, comps.log_prob(xr)[:, 0] if False else torch.distributions.MultivariateNormal(
            gm.means[0], gm.covs[0]).log_prob(xr), rtol=1e-12, atol=1e-12)
    tol = lp_tol(dtype, ref, gm.D) if dtype in (torch.float32, F64) else lp_tol(dtype, ref, gm.D) + 2 * eps_of(dtype) * ref.abs()
    assert ((lp.double() - ref).abs() <= tol).all(), (lp, ref)
    if dtype == F64:
        xg = xr.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(gm.log_prob(xg).sum(), xg)
        torch.testing.assert_close(s.reshape(B, gm.D), grad, rtol=1e-9, atol=1e-9 * (1 + grad.abs().max().item()))


@st.composite
def sdes_for_oracle(draw):
    return draw(st.sampled_from([VPSDE(), SubVPSDE(), VESDE(), VPSDE(0.5, 5.0), VESDE(0.05, 5.0)]))


@given(gm=mixtures(), B=st.integers(1, 4), dtype=st.sampled_from([torch.float32, F64]), sde=sdes_for_oracle(),
       t_values=st.lists(st.floats(1e-3, 1), min_size=1, max_size=4), scalar_t=st.booleans(), seed=st.integers(0, 2**16))
def test_mixture_marginals_are_exact(gm, B, dtype, sde, t_values, scalar_t, seed):
    """marginal_log_prob(x, t, sde) equals log_prob of the mixture `marginal(alpha(t), sigma(t))` sample by sample, and
    marginal_score is its autograd gradient (float64); a python float t means the same t for all samples."""
    g = gm.to(dtype=dtype)
    x = (gm.sample(B, generator=torch.Generator().manual_seed(seed)) + torch.randn(B, gm.D, dtype=F64)).to(dtype)
    t = t_values[0] if scalar_t else times(B, dtype, "cpu", t_values)
    lp, s = g.marginal_log_prob(x, t, sde), g.marginal_score(x, t, sde)
    assert lp.shape == (B,) and s.shape == x.shape and lp.dtype == s.dtype == dtype
    assert torch.isfinite(lp).all() and torch.isfinite(s).all()
    tt = torch.as_tensor(t, dtype=dtype).expand(B).double()
    alpha, sigma = sde.marginal_coeffs(tt)
    for b in range(B):
        ref = gm.marginal(alpha[b], sigma[b]).log_prob(x[b:b + 1].double())
        assert (lp[b].double() - ref).abs() <= lp_tol(dtype, ref, gm.D) * (1 + abs(math.log(sigma[b].item()))), (lp[b], ref)
    if dtype == F64:
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(gm.marginal_log_prob(xg, t, sde).sum(), xg)
        torch.testing.assert_close(s, grad, rtol=1e-9, atol=1e-9 * (1 + grad.abs().max().item()))


@given(gm=mixtures(max_k=2, max_d=2), dtype=st.sampled_from(DTYPES), device=st.sampled_from(DEVICES),
       t_kind=st.sampled_from(["ok", "outside", "nan", "wrong_shape", "bool", "string_sde", "none_sde"]),
       method=st.sampled_from(["marginal_log_prob", "marginal_score"]))
def test_mixture_marginal_bad_input_is_named(gm, dtype, device, t_kind, method):
    "Bad times, states or SDE objects for the marginal oracle: a named ValueError/TypeError; meta points give shapes."
    B = 3
    x = randn((B, gm.D), dtype, device=device)
    t = {"ok": 0.5, "outside": torch.full((B,), 1.5), "nan": torch.full((B,), math.nan), "wrong_shape": torch.full((B + 1,), 0.5),
         "bool": torch.ones(B, dtype=torch.bool), "string_sde": 0.5, "none_sde": 0.5}[t_kind]
    if isinstance(t, torch.Tensor):
        t = t.to(device)
    sde = {"string_sde": "VPSDE", "none_sde": None}.get(t_kind, VPSDE())
    out = call(lambda: getattr(gm, method)(x, t, sde), "t", "x", "sde")
    ok = t_kind == "ok" and dtype.is_floating_point or (device == "meta" and t_kind in ("outside", "nan") and dtype.is_floating_point)
    if out is None:
        assert not ok or device == "meta" and t_kind != "ok", (t_kind, dtype, device)
        return
    assert ok, f"accepted {t_kind} with {dtype} on {device}"
    assert out.dtype == dtype and out.device.type == device
    if device == "cpu":
        assert torch.isfinite(out).all()


@given(gm=mixtures(), n=st.one_of(st.integers(0, 50), st.sampled_from([-1, True, 2.5, None, "3"])),
       dtype=st.sampled_from(FLOATS), stratified=st.booleans(), seed=st.integers(0, 2**16))
def test_mixture_sample(gm, n, dtype, stratified, seed):
    "sample(n): (n, D) in the mixture's dtype, finite, reproducible from a seed; stratified counts sum to n; bad n is named."
    g = gm.to(dtype=dtype) if dtype in (torch.float32, F64) else call(lambda: gm.to(dtype=dtype), "dtype")
    if g is None:
        return
    x = call(lambda: g.sample(n, generator=torch.Generator().manual_seed(seed), stratified=stratified, return_labels=True), "n")
    if x is None:
        assert isinstance(n, bool) or not isinstance(n, int) or n < 0
        return
    x, labels = x
    assert x.shape == (n, gm.D) and x.dtype == dtype and torch.isfinite(x).all() and labels.shape == (n,)
    y = g.sample(n, generator=torch.Generator().manual_seed(seed), stratified=stratified)
    assert torch.equal(x, y)
    if stratified:
        counts = torch.bincount(labels, minlength=gm.K)
        assert (counts.double() - n * gm.weights).abs().max() < 1 and counts.sum() == n


# ------------------------------------------------------------------------------------------------------ losses
from sde_diffusion import losses  # noqa: E402

WEIGHTINGS = st.sampled_from(["sigma2", "likelihood", "none", "callable", "bad_name", None, 1.0])


@given(sde=sde_params(), shape=shapes(), dtype=st.sampled_from(DTYPES), device=st.sampled_from(DEVICES),
       weighting=WEIGHTINGS, eps=st.sampled_from([1e-5, 1e-3, 0.5, 0, -1e-3, 1.0, 2.0, math.nan, True, "1e-3"]),
       reduce=st.sampled_from(["mean", "sum", "none", "avg", None]), seed=st.integers(0, 2**16))
def test_dsm_loss_is_a_weighted_square(sde, shape, dtype, device, weighting, eps, reduce, seed):
    """dsm_loss: finite, >= 0, in x0's dtype, reduced as asked; per sample lambda(t)/sigma(t)^2 times the 'sigma2' loss on
    the same draws (lambda = 1, g^2 or a callable); bad arguments are named."""
    assume(not dtype.is_floating_point or representable(sde, dtype))   # beyond the dtype's range inf is the rounded value
    x0 = randn(shape, dtype, device=device)
    score = lambda x, t: -x
    lam = (lambda t: 1 + t) if weighting == "callable" else weighting
    gen = (lambda: torch.Generator().manual_seed(seed)) if device == "cpu" else (lambda: None)
    out = call(lambda: losses.dsm_loss(sde, score, x0, weighting=lam, eps=eps, generator=gen(), reduce=reduce),
               "x0", "weighting", "eps", "reduce")
    if out is None:
        return
    assert dtype.is_floating_point and reduce in ("mean", "sum", "none") and 0 < eps < 1 and not isinstance(eps, bool)
    assert out.dtype == dtype and out.device.type == device and out.shape == ((shape[0],) if reduce == "none" else ())
    if device == "meta":
        return
    assert torch.isfinite(out).all() and (out >= 0).all()
    if reduce == "none" and weighting != "sigma2":
        base = losses.dsm_loss(sde, score, x0, weighting="sigma2", eps=eps, generator=gen(), reduce="none").double()
        p = losses.perturb(sde, x0.double(), eps=eps, generator=gen()) if dtype == F64 else None
        if p is not None:
            ratio = {"none": 1 / p.sigma**2, "likelihood": losses.weighting(sde, "likelihood", p.t) / p.sigma**2,
                     "callable": (1 + p.t) / p.sigma**2}[weighting]
            torch.testing.assert_close(out, base * ratio, rtol=1e-10, atol=1e-300)


@given(sde=sde_params(), B=st.integers(1, 4), dtype=st.sampled_from(FLOATS), weighting=st.sampled_from(["sigma2", "likelihood", "none"]),
       t_kind=st.sampled_from(["ok", "below_eps", "above_T", "nan", "wrong_shape", "float", "bool"]))
def test_losses_reject_bad_times_by_name(sde, B, dtype, weighting, t_kind):
    "dsm_loss, esm_loss and ism_loss with given times: in [eps, T] (dsm) or finite (esm/ism), shape (B,), real, else named."
    assume(representable(sde, dtype))         # beyond the dtype's range inf is the rounded value
    x = randn((B, 2), dtype)
    t = {"ok": torch.full((B,), 0.5, dtype=dtype), "below_eps": torch.full((B,), 1e-7), "above_T": torch.full((B,), 1.5),
         "nan": torch.full((B,), math.nan), "wrong_shape": torch.full((B + 1,), 0.5), "float": 0.5,
         "bool": torch.ones(B, dtype=torch.bool)}[t_kind]
    def score(x, t):   # the exact score of N(0, I) data: sigma s + z stays of the size of z (no float16 overflow)
        a, s = sde.marginal_coeffs(t)
        return -x / (a**2 + s**2).reshape(-1, 1)
    gen = torch.Generator().manual_seed(0)
    for k, fn in enumerate((lambda: losses.dsm_loss(sde, score, x, t=t, weighting=weighting, eps=1e-5, generator=gen),
                            lambda: losses.esm_loss(score, torch.zeros_like(x), x, t, sde=sde, weighting=weighting),
                            lambda: losses.ism_loss(score, x, t, sde=sde, weighting=weighting))):
        out = call(fn, "t")
        if out is None:
            assert t_kind != "ok", t_kind
            continue
        # esm/ism have no eps: any t in [0, T], and any finite t when lambda does not need the SDE
        assert t_kind == "ok" or k > 0 and (t_kind == "below_eps" or t_kind == "above_T" and weighting == "none"), t_kind
        assert out.dtype == dtype and out.shape == ()
        assert torch.isfinite(out) or dtype in (torch.float16, torch.bfloat16) and k == 0 and weighting == "none", out
        assert out >= 0 or k == 2                      # ISM = ESM - a constant: it can be negative
        # (float16 with lambda = 1: |z/sigma|^2 / 2 itself exceeds 65504 when sigma < 0.004; inf is its rounded value)


def test_dsm_loss_exceeds_the_irreducible_constant_by_the_explicit_loss():
    """E[dsm(s)] - E[L*] = E[esm(s)] >= 0 (eq. eq-sm-constant): on the same draws (t, z) the per-sample difference
    dsm - L* - esm = (|z|^2 - D)/2 + sigma s.(z + sigma s*) has mean zero; checked within 4 standard errors."""
    from sde_diffusion.toy import ring_of_gaussians
    gm, sde, B = ring_of_gaussians(dtype=F64), VPSDE(), 20_000
    x0 = gm.sample(B, generator=torch.Generator().manual_seed(0))
    true = gm.score_fn(sde)
    s = lambda x, t: 0.8 * true(x, t) + 0.1          # a wrong score
    kw = dict(weighting="sigma2", eps=1e-3, reduce="none")
    d = losses.dsm_loss(sde, s, x0, generator=torch.Generator().manual_seed(1), **kw)
    c = losses.irreducible_dsm_constant(sde, true, x0, generator=torch.Generator().manual_seed(1), **kw)
    p = losses.perturb(sde, x0, eps=1e-3, generator=torch.Generator().manual_seed(1))
    e = losses.esm_loss(s, true, p.x_t, p.t, sde=sde, weighting="sigma2", reduce="none")
    diff = d - c - e
    assert diff.mean().abs() < 4 * diff.std() / math.sqrt(B)
    assert e.mean() > 4 * e.std() / math.sqrt(B) and c.mean() > -4 * c.std() / math.sqrt(B)


# ------------------------------------------------------------------------------------------------------ models
from sde_diffusion.models import GaussianFourierProjection, ScoreMLP, UNet  # noqa: E402


@given(embed_dim=st.sampled_from([2, 8, 0, 3, -2, True, 4.0, None]), scale=WILD_NUMBERS, B=st.integers(1, 4),
       dtype=st.sampled_from(DTYPES), device=st.sampled_from(DEVICES), seed=st.integers(0, 2**16))
def test_fourier_features(embed_dim, scale, B, dtype, device, seed):
    "phi(v) = [sin 2 pi W v, cos 2 pi W v]: shape (B, embed_dim), sin^2 + cos^2 = 1; bad sizes and scales are named."
    proj = call(lambda: GaussianFourierProjection(embed_dim, scale, seed=seed), "embed_dim", "scale")
    if proj is None:
        return
    proj = proj.to(device)
    v = randn((B,), dtype, device=device)
    out = call(lambda: proj(v), "v")
    assert out is not None
    assert out.shape == (B, embed_dim) and out.device.type == device and out.dtype == proj.W.dtype
    if device == "cpu":
        m = embed_dim // 2
        torch.testing.assert_close(out[:, :m] ** 2 + out[:, m:] ** 2, torch.ones(B, m), rtol=0, atol=4e-7)


@given(sde=st.sampled_from([None, VPSDE(), SubVPSDE(), VESDE()]), B=st.integers(1, 4), dtype=st.sampled_from(FLOATS),
       device=st.sampled_from(DEVICES), t_kind=st.sampled_from(["ok", "ok", "zero", "outside", "wrong_shape", "float"]),
       time_input=st.sampled_from(["t", "log_sigma"]), model=st.sampled_from(["mlp", "unet"]), seed=st.integers(0, 2**8))
def test_score_networks_forward(sde, B, dtype, device, t_kind, time_input, model, seed):
    """ScoreMLP / UNet forward: output of x's shape, dtype and device, finite; with an sde the output times sigma(t) is
    the network's output (eq. eq-models-param), so it is finite for t in (0, T]; bad t is named."""
    kw = dict(sde=sde, time_input=time_input, seed=seed)
    build = (lambda: ScoreMLP(dim=3, hidden=8, depth=2, embed_dim=4, **kw)) if model == "mlp" else \
        (lambda: UNet(1, channels=(4, 8), groups=4, embed_dim=8, **kw))
    net = call(build, "time_input")
    if net is None:
        assert sde is None and time_input == "log_sigma"
        return
    net = net.to(device=device, dtype=dtype)
    x = randn((B, 3) if model == "mlp" else (B, 1, 5, 3), dtype, device=device)
    t = {"ok": torch.rand(B, generator=torch.Generator().manual_seed(seed)) * 0.9 + 0.1, "zero": torch.zeros(B),
         "outside": torch.full((B,), 1.5), "wrong_shape": torch.full((B + 1,), 0.5), "float": 0.5}[t_kind]
    t = t.to(device) if isinstance(t, torch.Tensor) else t
    out = call(lambda: net(x, t), "t", "x")
    if out is None:
        assert t_kind in ("wrong_shape", "float") or sde is not None and t_kind in ("zero", "outside"), t_kind
        return
    assert t_kind not in ("wrong_shape", "float")
    assert out.shape == x.shape and out.dtype == dtype and out.device.type == device
    if device == "cpu" and t_kind == "ok":
        assert torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------------- metrics
from sde_diffusion import metrics  # noqa: E402


@given(n=st.integers(1, 12), m=st.integers(1, 12), shape=shapes(min_rank=1, max_rank=3), dtype=st.sampled_from(DTYPES),
       P=st.sampled_from([1, 6, 12, 0, -1, True, 2.5]), seed=st.integers(0, 2**16))
def test_sliced_wasserstein_properties(n, m, shape, dtype, P, seed):
    """SW2: >= 0, SW2(x, x) = 0, symmetric (same directions); a shift c with whole frames (P a multiple of D) gives
    exactly |c| / sqrt(D); NaN samples and bad P are named errors."""
    x = randn((n, *shape[1:]), dtype, seed)
    y = randn((m, *shape[1:]), dtype, seed + 1)
    gen = lambda: torch.Generator().manual_seed(seed)
    sw = call(lambda: metrics.sliced_wasserstein(x, y, P, gen()), "x", "y", "n_projections")
    if sw is None:
        assert not dtype.is_floating_point or isinstance(P, bool) or not isinstance(P, int) or P < 1
        return
    assert isinstance(sw, float) and math.isfinite(sw) and sw >= 0
    e = 16 * eps_of(torch.promote_types(dtype, torch.float32))
    scale = 1 + max(x.abs().max().item(), y.abs().max().item())
    assert abs(metrics.sliced_wasserstein(y, x, P, gen()) - sw) <= e * scale * 4
    assert metrics.sliced_wasserstein(x, x, P, gen()) == 0
    D = math.prod(shape[1:])
    if P % D == 0 and dtype in (torch.float32, F64):
        c = torch.randn(shape[1:], generator=gen(), dtype=dtype)
        got = metrics.sliced_wasserstein(x, x + c, P, gen())
        assert abs(got - c.double().norm().item() / math.sqrt(D)) <= e * 16 * scale * (1 + c.double().norm().item())
    bad = x.clone().double()
    bad.view(-1)[0] = math.nan
    assert call(lambda: metrics.sliced_wasserstein(bad, y.double(), P, gen()), "x") is None


@given(n=st.integers(1, 10), m=st.integers(1, 10), D=st.integers(1, 3), dtype=st.sampled_from(DTYPES), unbiased=st.booleans(),
       block=st.sampled_from([2**22, 1, 3, 0, -1, True]), seed=st.integers(0, 2**16))
def test_energy_distance_properties(n, m, D, dtype, unbiased, block, seed):
    "Energy distance: symmetric, the V-statistic >= 0 and 0 at y = x, independent of the block size; bad arguments named."
    x, y = randn((n, D), dtype, seed), randn((m, D), dtype, seed + 1)
    e = call(lambda: metrics.energy_distance(x, y, unbiased, block), "x", "y", "block_entries", "unbiased")
    if e is None:
        return
    assert dtype.is_floating_point and isinstance(e, float) and math.isfinite(e)
    tol = 64 * eps_of(torch.promote_types(dtype, torch.float32)) * (1 + x.double().abs().max().item() + y.double().abs().max().item())
    assert abs(metrics.energy_distance(y, x, unbiased) - e) <= tol
    assert abs(metrics.energy_distance(x, y, unbiased) - e) <= tol
    if not unbiased:
        assert e >= -tol and abs(metrics.energy_distance(x, x, False)) <= tol


@given(m1=WILD_NUMBERS, s1=WILD_NUMBERS, m2=st.floats(-5, 5), s2=st.floats(0.1, 5))
def test_energy_distance_gaussian_1d(m1, s1, m2, s2):
    "The closed form is finite and >= 0, 0 for equal Gaussians; non-finite, non-positive or non-number parameters are named."
    e = call(lambda: metrics.energy_distance_gaussian_1d(m1, s1, m2, s2), "mean1", "std1", "mean2", "std2")
    if e is None:
        return
    assert math.isfinite(e) and e >= -1e-12 * (1 + abs(m1) + s1 + abs(m2) + s2), e
    assert abs(metrics.energy_distance_gaussian_1d(m1, s1, m1, s1)) <= 1e-12 * (1 + s1)


# ----------------------------------------------------------------------------------------------------- solvers
from sde_diffusion.solvers import GeometricBrownianMotion, OrnsteinUhlenbeck, batch_broadcast, euler_maruyama, milstein  # noqa: E402


@given(theta=WILD_NUMBERS, mu=WILD_NUMBERS, sigma=WILD_NUMBERS, t=st.sampled_from([0.0, 0.5, 2.0, -1.0, math.nan, math.inf]))
def test_ou_and_gbm_parameters_and_moments(theta, mu, sigma, t):
    "OU/GBM: finite numbers (positive theta, sigma), no bools, else named; moments at t >= 0 finite, variance >= 0; t < 0 named."
    ou = call(lambda: OrnsteinUhlenbeck(theta, mu, sigma), "theta", "mu", "sigma")
    gbm = call(lambda: GeometricBrownianMotion(mu, sigma), "mu", "sigma")
    for p in (ou, gbm):
        if p is not None:
            assert not any(isinstance(v, bool) for v in (theta, mu, sigma) if p is ou or v is not theta)
    x0 = torch.tensor([[0.5], [-1.0]], dtype=F64)
    if ou is not None and abs(ou.mu) < 1e30 and ou.sigma < 1e30 and ou.theta < 1e30:
        v = call(lambda: ou.variance(torch.tensor(t, dtype=F64)), "t")
        if v is not None:
            assert math.isfinite(t) and t >= 0 and torch.isfinite(v) and v >= 0
            ref = ou.sigma**2 / (2 * ou.theta) * -math.expm1(-2 * ou.theta * t)
            assert abs(v.item() - ref) <= 1e-14 * abs(ref) + 1e-300
            m = ou.mean(x0, t)
            assert m.shape == x0.shape and torch.isfinite(m).all()


@given(shape=shapes(), dtype=st.sampled_from(DTYPES), device=st.sampled_from(DEVICES), steps=st.integers(1, 5),
       method=st.sampled_from(["em", "milstein"]), seed=st.integers(0, 2**16),
       ts_kind=st.sampled_from(["ok", "ok", "decreasing", "nan", "single", "2d"]))
def test_solvers_on_ou(shape, dtype, device, steps, method, seed, ts_kind):
    """euler_maruyama / milstein on the OU process with given increments: shape, dtype of x0, finite, equal to the
    explicit recursion x + theta(mu - x) dt + sigma dW (Milstein adds nothing for additive noise); bad input named."""
    ou = OrnsteinUhlenbeck(1.5, 0.3, 0.7)
    x0 = randn(shape, dtype, seed, device=device)
    ts = {"ok": torch.linspace(0, 1, steps + 1), "decreasing": torch.linspace(1, 0, steps + 1),
          "nan": torch.full((steps + 1,), math.nan), "single": torch.zeros(1), "2d": torch.zeros(2, 2)}[ts_kind]
    ts = ts.to(dtype if dtype.is_floating_point else torch.float32)
    solver = euler_maruyama if method == "em" else milstein
    out = call(lambda: solver(ou.drift, ou.diffusion, x0, ts, generator=torch.Generator().manual_seed(seed)), "x0", "ts")
    if out is None:
        assert ts_kind != "ok" or not dtype.is_floating_point or device == "meta", (ts_kind, dtype, device)
        return
    assert ts_kind == "ok" and dtype.is_floating_point and device == "cpu"
    assert out.shape == shape and out.dtype == dtype and torch.isfinite(out).all()
    if dtype == F64:
        dW = torch.randn((steps, *shape), generator=torch.Generator().manual_seed(seed), dtype=F64)
        got = solver(ou.drift, ou.diffusion, x0, ts, dW=dW)
        x = x0
        for k in range(steps):
            x = x + 1.5 * (0.3 - x) * (ts[k + 1] - ts[k]) + 0.7 * dW[k]
        torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)


@given(B=st.integers(1, 4), rank=st.integers(1, 4), dtype=st.sampled_from(FLOATS), v_kind=st.sampled_from(["scalar", "batch", "wrong"]))
def test_batch_broadcast(B, rank, dtype, v_kind):
    "batch_broadcast: a scalar stays (), per-sample values become (B, 1, ..., 1) in x's dtype; a wrong shape is a ValueError."
    x = torch.zeros((B,) + (2,) * (rank - 1), dtype=dtype)
    v = {"scalar": 2.0, "batch": torch.arange(B, dtype=F64), "wrong": torch.arange(B + 1, dtype=F64)}[v_kind]
    try:
        out = batch_broadcast(v, x)
    except ValueError:
        assert v_kind == "wrong"
        return
    assert out.dtype == dtype and (out.shape == () if v_kind == "scalar" else out.shape == (B,) + (1,) * (rank - 1))
    assert (out * torch.ones_like(x)).shape == x.shape


# -------------------------------------------------------------------------------------------------------- DDPM
from sde_diffusion import ddpm  # noqa: E402


@given(beta_min=st.floats(1e-3, 1), width=st.floats(0, 30), N=st.integers(1, 3000), dtype=st.sampled_from(DTYPES + [None]))
def test_ddpm_schedule_invariants(beta_min, width, N, dtype):
    """ddpm_schedule: every field finite in the asked floating dtype (an integer dtype is named); betas in (0, 1);
    alpha_bar decreasing in (0, 1]; sqrt_ab^2 + sqrt(1 - ab)^2 = 1; 0 <= posterior variance <= beta."""
    sde = VPSDE(beta_min, beta_min + width, N)
    s = call(lambda: ddpm.ddpm_schedule(sde, dtype), "N", "dtype")
    if s is None:
        assert sde.beta_max >= N or dtype is not None and not dtype.is_floating_point
        return
    dt = dtype or torch.get_default_dtype()
    assert all(v.dtype == dt and v.shape == (N,) and torch.isfinite(v).all() for v in s)
    e = eps_of(dt)
    b, ab = s.betas.double(), s.alphas_cumprod.double()
    assert (b > 0).all() and (b < 1).all() and (ab > 0).all() and (ab <= 1).all() and (ab.diff() <= e).all()
    assert ((s.sqrt_alphas_cumprod.double() ** 2 + s.sqrt_one_minus_alphas_cumprod.double() ** 2 - 1).abs() <= 4 * e).all()
    assert (s.posterior_variance.double() >= 0).all() and (s.posterior_variance.double() <= b * (1 + 4 * e)).all()


@given(N=st.integers(21, 2000), i=st.one_of(st.integers(-2, 2001), st.sampled_from([True, 1.0, "3", None])),
       dtype=st.sampled_from(DTYPES + [None]))
def test_ddpm_timesteps_to_t_matches_alpha_bar(N, i, dtype):
    "ddpm_timesteps_to_t: alpha(t)^2 = alpha_bar_i for 0 <= i < N, t in (0, T + 1%]; bad indices and integer dtypes named."
    sde = VPSDE(N=N)
    t = call(lambda: ddpm.ddpm_timesteps_to_t(sde, i, dtype), "i", "dtype")
    if t is None:
        assert isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < N or dtype is not None and not dtype.is_floating_point
        return
    assert t.dtype == (dtype or torch.get_default_dtype()) and t.shape == ()
    t64 = ddpm.ddpm_timesteps_to_t(sde, i, F64)
    assert 0 < t64            # can exceed T when N is small (beta_i near 1): samplers clip it
    ab = ddpm.ddpm_schedule(sde, F64).alphas_cumprod[i]
    torch.testing.assert_close(torch.exp(2 * sde.log_mean_coeff(t64)), ab, rtol=1e-12, atol=0)


@given(B=st.integers(1, 4), rank=st.integers(1, 4), dtype=st.sampled_from(FLOATS),
       sigma=st.one_of(st.floats(1e-3, 1), st.sampled_from([0.0, -0.5, math.nan, math.inf, True, "0.5"])))
def test_noise_score_round_trip(B, rank, dtype, sigma):
    "score_from_noise(noise_from_score(s, sigma), sigma) = s to rounding for sigma in (0, 1]; sigma <= 0, NaN, inf, bools named."
    s = randn((B,) + (2,) * (rank - 1), dtype)
    e = call(lambda: ddpm.noise_from_score(s, sigma), "sigma")
    back = call(lambda: ddpm.score_from_noise(e, sigma), "sigma") if e is not None else None
    if e is None or back is None:
        assert not (isinstance(sigma, float) and 0 < sigma < math.inf)
        return
    assert isinstance(sigma, float) and 0 < sigma < math.inf
    assert e.dtype == back.dtype == dtype
    torch.testing.assert_close(back, s, rtol=4 * eps_of(dtype), atol=0)


# -------------------------------------------------------------------------------------------------------- SMLD
from sde_diffusion import smld  # noqa: E402


@given(sde=st.sampled_from([VESDE(), VESDE(0.05, 5.0), VESDE(1e-3, 1e3)]), dtype=st.sampled_from(DTYPES),
       sigma=st.one_of(st.floats(1e-3, 50), st.sampled_from([0.0, -1.0, math.nan, math.inf, True])),
       as_tensor=st.booleans())
def test_ve_sigma_to_t_inverts_the_kernel(sde, dtype, sigma, as_tensor):
    "ve_sigma_to_t: the VE kernel std at t(sigma) is sigma (float64: 1e-12 relative); negative/NaN/inf/bool levels named."
    assume(not as_tensor or dtype.is_floating_point or math.isfinite(float(sigma)))   # an int64 tensor cannot hold NaN
    s = torch.tensor([sigma], dtype=dtype) if as_tensor else sigma
    t = call(lambda: smld.ve_sigma_to_t(sde, s), "sigma")
    valid = (as_tensor or isinstance(sigma, float)) and 0 <= float(sigma) < math.inf   # a tensor built from True holds 1
    if t is None:
        assert not valid, sigma
        return
    assert valid, sigma
    assert torch.isfinite(t).all() and (t >= 0).all()
    if dtype == F64 or not as_tensor:
        t64 = smld.ve_sigma_to_t(sde, torch.tensor([float(sigma)], dtype=F64))
        assume(t64.item() <= 1)
        torch.testing.assert_close(sde.marginal_coeffs(t64)[1], torch.tensor([float(sigma)], dtype=F64), rtol=1e-12, atol=1e-300)


@given(L=st.integers(1, 4), shape=shapes(max_rank=3), dtype=st.sampled_from(DTYPES), sampler=st.sampled_from(["annealed", "reverse"]),
       sigmas_kind=st.sampled_from(["ok", "ok", "increasing", "negative", "nan", "2d"]), seed=st.integers(0, 2**16))
def test_smld_samplers_shapes_and_errors(L, shape, dtype, sampler, sigmas_kind, seed):
    "annealed_langevin / smld_reverse_diffusion from a shape: samples of that shape and dtype, finite; bad levels and dtypes named."
    sig = torch.logspace(1, -1, L)
    sigmas = {"ok": sig, "increasing": sig.flip(0) if L > 1 else -sig, "negative": -sig, "nan": sig * math.nan,
              "2d": sig[None]}[sigmas_kind]
    score = lambda x, s: -x / (1 + s.reshape(-1, *([1] * (x.ndim - 1))) ** 2)
    gen = torch.Generator().manual_seed(seed)
    run = (lambda: smld.annealed_langevin(score, sigmas, shape, n_steps_each=2, step_lr=1e-2, generator=gen, dtype=dtype)) \
        if sampler == "annealed" else (lambda: smld.smld_reverse_diffusion(score, sigmas, shape, generator=gen, dtype=dtype))
    x = call(run, "sigmas", "dtype", "x")
    if x is None:
        assert sigmas_kind != "ok" or not dtype.is_floating_point, (sigmas_kind, dtype)
        return
    assert sigmas_kind == "ok" and dtype.is_floating_point
    assert x.shape == shape and x.dtype == dtype and torch.isfinite(x).all()
