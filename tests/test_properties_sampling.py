"""Property-based tests (hypothesis) of the samplers and the likelihood: every call either returns a finite result of the
right shape and dtype that satisfies a stated invariant, or raises ValueError/TypeError naming the argument at fault.
A torch-internal error, an AssertionError from torchdiffeq or any other exception is a failure.

Profiles (tests/conftest.py): "ci" (default, derandomized, fast) and "thorough" (HYPOTHESIS_PROFILE=thorough)."""
import math
import re

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from sde_diffusion.likelihood import log_likelihood
from sde_diffusion.sampling import (DDIM, ODE_METHODS, PREDICTORS, AncestralSampling, EulerMaruyama, Langevin,
                                    ode_sample, sample)
from sde_diffusion.sde import SubVPSDE, VESDE, VPSDE


pytestmark = pytest.mark.usefixtures("one_thread")   # small tensors: one CPU thread is fastest (tests/conftest.py)


# ---------------------------------------------------------------- strategies
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
NOT_FLOATS = [torch.int64, torch.int32, torch.bool, torch.complex64]


@st.composite
def sdes(draw):
    kind = draw(st.sampled_from(["vp", "subvp", "ve"]))
    N = draw(st.integers(1, 2000))
    if kind == "ve":
        lo = draw(st.floats(1e-3, 0.5))
        return VESDE(sigma_min=lo, sigma_max=lo * draw(st.floats(1.5, 5000.0)), N=N)
    lo = draw(st.floats(0.01, 2.0))
    hi = lo + draw(st.floats(0.0, 30.0))
    return (VPSDE if kind == "vp" else SubVPSDE)(beta_min=lo, beta_max=hi, N=N)


def kappa_ok(sde) -> bool:
    "Song et al.'s corrector factor 1 - beta(t)/N is positive on [0, T] (always for VE): else a corrector is refused."
    return not hasattr(sde, "beta") or bool(1 - sde.beta(torch.tensor([sde.T], dtype=torch.float64)) / sde.N > 0)


def shapes(min_rank=0):
    "(B, *D) with B in 1..5 and 0-3 (or `min_rank`-3) data dimensions of size 1-3."
    return st.tuples(st.integers(1, 5), st.lists(st.integers(1, 3), min_size=min_rank, max_size=3)).map(
        lambda bd: (bd[0], *bd[1]))


def _variance(sde, s2: float, t: torch.Tensor) -> torch.Tensor:
    "Variance of p_t for data N(0, s2 I): alpha(t)^2 s2 + sigma(t)^2, shape of t."
    alpha, sigma = sde.marginal_coeffs(t)
    return alpha**2 * s2 + sigma**2


def gaussian_score(sde, s2: float):
    "The exact score -x / v(t) of p_t for data N(0, s2 I), in x's dtype: a well-behaved score with an autograd graph."
    def score(x, t):
        v = _variance(sde, s2, t.to(torch.float64)).to(x.dtype)
        return -x / v.reshape(-1, *([1] * (x.ndim - 1)))
    return score


MISBEHAVIOURS = ["shape", "dtype", "int", "nan", "not_tensor", "batch"]


def misbehaving(score, kind: str, k: int):
    "`score` until its k-th call; from then on a wrong answer of the given kind."
    calls = [0]

    def bad(x, t):
        calls[0] += 1
        s = score(x, t)
        if calls[0] < k:
            return s
        if kind == "shape":
            return s[..., :1] if x.ndim > 1 and x.shape[-1] > 1 else s.unsqueeze(-1).expand(*s.shape, 2)
        if kind == "batch":
            return s[:1] if x.shape[0] > 1 else s.expand(2, *s.shape[1:])
        if kind == "dtype":
            return s.to(torch.float32 if s.dtype == torch.float64 else torch.float64)
        if kind == "int":
            return s.to(torch.int64)
        if kind == "nan":
            return s * math.nan
        return s.tolist()
    bad.calls = calls
    return bad


def _named(err: Exception, names) -> bool:
    "The message names one of `names` in backticks (e.g. `score_fn`, `dtype`, `options['step_size']`)."
    msg = str(err)
    return any(f"`{n}" in msg for n in names)


def check_outcome(call, bad_args, on_success):
    """Run `call()`. With bad arguments (a set of names) it must raise ValueError/TypeError naming one of them; without,
    it must succeed and its result must pass `on_success`. Anything else propagates and fails the test."""
    if bad_args:
        with pytest.raises((ValueError, TypeError)) as info:
            call()
        assert _named(info.value, bad_args), (bad_args, repr(info.value))
    else:
        on_success(call())


def _finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x.float()).all())


# ---------------------------------------------------------------- sample
PREDICTOR_CHOICES = list(PREDICTORS) + ["ddim_eta", "ancestral_transition", "euler_pf"]


def _predictor(name):
    return {"ddim_eta": lambda: DDIM(0.6), "ancestral_transition": lambda: AncestralSampling("transition"),
            "euler_pf": lambda: EulerMaruyama(ode=True)}.get(name, lambda: name)()


@given(st.data())
def test_sample_returns_finite_samples_or_names_the_bad_argument(data):
    draw = data.draw
    sde, shape = draw(sdes(), "sde"), draw(shapes(), "shape")
    dtype = draw(st.sampled_from(FLOATS + NOT_FLOATS + [None]), "dtype")
    pred_name = draw(st.sampled_from(PREDICTOR_CHOICES), "predictor")
    corr = draw(st.sampled_from([None, "langevin", "annealed_langevin", "per_sample"]), "corrector")
    corr_steps = draw(st.integers(1, 2), "corrector_steps")
    steps = draw(st.one_of(st.integers(1, 8), st.sampled_from([0, -2, 2.5, True])), "steps")
    spacing = draw(st.sampled_from(["uniform", "logsnr", "edm"]), "spacing")
    eps = draw(st.one_of(st.floats(1e-4, 0.3), st.sampled_from([0.0, 1.0, -0.1, math.nan])), "eps")
    denoise = draw(st.booleans(), "denoise")
    behaviour = draw(st.sampled_from([None] + MISBEHAVIOURS), "misbehaviour")
    k = draw(st.integers(1, 20), "k")
    s2 = draw(st.floats(0.05, 4.0), "s2")

    bad = set()
    if dtype in NOT_FLOATS:
        bad.add("dtype")
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
        bad.add("steps")
    if not (0 < eps < sde.T):
        bad.add("eps")
    if corr is not None and not kappa_ok(sde):
        bad.add("N")
    corrector = Langevin(0.16, per_sample=True) if corr == "per_sample" else corr
    score = gaussian_score(sde, s2)
    if not bad:
        nfe = (2 * steps - 1 if pred_name == "heun" else steps) + (steps * corr_steps if corr else 0) + int(denoise)
        if corr == "per_sample":   # an instance keeps its own n_steps = 1
            nfe -= steps * (corr_steps - 1)
        if behaviour is not None:
            score = misbehaving(score, behaviour, k)
            if k <= nfe:
                bad.add("score_fn")
    want_dtype = dtype or torch.get_default_dtype()

    def ok(out):
        x = out.samples
        assert x.shape == shape and x.dtype == want_dtype and _finite(x), (x.shape, x.dtype)
        assert out.nfe == nfe, (out.nfe, nfe)

    check_outcome(lambda: sample(sde, score, shape, predictor=_predictor(pred_name), corrector=corrector, steps=steps,
                                 corrector_steps=corr_steps, spacing=spacing, eps=eps, denoise=denoise, dtype=dtype,
                                 generator=torch.Generator().manual_seed(0)), bad, ok)


@given(st.data())
def test_low_precision_samples_are_the_float32_samples_rounded(data):
    "float16/bfloat16 samples are computed in float32: bit-for-bit the float32 samples, rounded once."
    draw = data.draw
    sde, shape = draw(sdes(), "sde"), draw(shapes(), "shape")
    low = draw(st.sampled_from([torch.float16, torch.bfloat16]), "dtype")
    pred = draw(st.sampled_from(list(PREDICTORS)), "predictor")
    corr = draw(st.sampled_from([None, "langevin", "annealed_langevin"]), "corrector")
    assume(corr is None or kappa_ok(sde))
    steps = draw(st.integers(1, 6), "steps")
    score = gaussian_score(sde, draw(st.floats(0.05, 4.0), "s2"))
    run = lambda dt: sample(sde, score, shape, predictor=pred, corrector=corr, steps=steps, dtype=dt,
                            generator=torch.Generator().manual_seed(1))
    ref = run(torch.float32).samples
    assume(bool((ref.abs() < 6e4).all()))   # float16 holds up to 65504; beyond it the run raises (tested elsewhere)
    out = run(low).samples
    assert out.dtype == low and torch.equal(out, ref.to(low))


@given(st.data())
def test_per_sample_langevin_is_blind_to_other_samples(data):
    "With per_sample=True, changing the other rows of x_T leaves row 0's trajectory bit-exact (same noise)."
    draw = data.draw
    sde, shape = draw(sdes(), "sde"), draw(shapes(), "shape")
    assume(shape[0] > 1 and kappa_ok(sde))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]), "dtype")
    pred = draw(st.sampled_from(list(PREDICTORS)), "predictor")
    steps = draw(st.integers(1, 6), "steps")
    scale = draw(st.floats(0.1, 10.0), "scale")
    score = gaussian_score(sde, draw(st.floats(0.05, 4.0), "s2"))
    x_T = sde.prior_sampling(shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    x_T2 = x_T.clone()
    x_T2[1:] = scale * x_T[1:].flip(0) + 0.5
    run = lambda x: sample(sde, score, x_T=x, predictor=pred, corrector=Langevin(0.16, per_sample=True), steps=steps,
                           generator=torch.Generator().manual_seed(3)).samples
    assert torch.equal(run(x_T)[0], run(x_T2)[0])


# ---------------------------------------------------------------- ode_sample
FIXED = {"euler": 1, "midpoint": 2, "rk4": 4, "heun3": 3}
TOLERANCES = st.one_of(st.sampled_from([1e-2, 1e-3, 1e-4]), st.sampled_from([0.0, -1.0, math.nan, math.inf, True]))


@given(st.data())
def test_ode_sample_returns_finite_samples_or_names_the_bad_argument(data):
    draw = data.draw
    sde, shape = draw(sdes(), "sde"), draw(shapes(), "shape")
    dtype = draw(st.sampled_from(FLOATS + NOT_FLOATS[:2] + [None]), "dtype")
    method = draw(st.sampled_from(list(ODE_METHODS) + ["scipy_solver"]), "method")
    rtol, atol = draw(TOLERANCES, "rtol"), draw(TOLERANCES, "atol")
    steps = draw(st.one_of(st.none(), st.integers(1, 6), st.just(0)), "steps")
    eps = draw(st.one_of(st.floats(1e-3, 0.3), st.just(0.0)), "eps")
    denoise = draw(st.booleans(), "denoise")
    behaviour = draw(st.sampled_from([None] + MISBEHAVIOURS), "misbehaviour")
    k = draw(st.integers(1, 30), "k")
    score = gaussian_score(sde, draw(st.floats(0.05, 4.0), "s2"))

    bad = set()
    if dtype in NOT_FLOATS:
        bad.add("dtype")
    if method not in ODE_METHODS:
        bad.add("method")
    elif method in FIXED and (steps is None or steps < 1):
        bad.add("steps")
    elif method not in FIXED and steps is not None:
        bad.add("steps")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, bool) or not (0 < v < math.inf):
            bad.add(name)
    if not eps > 0:
        bad.add("eps")
    if not bad and behaviour is not None:
        score = misbehaving(score, behaviour, k)
        if method in FIXED and k <= FIXED[method] * steps + int(denoise):
            bad.add("score_fn")
    want_dtype = dtype or torch.get_default_dtype()

    def ok(out):
        x = out.samples
        assert x.shape == shape and x.dtype == want_dtype and _finite(x)
        if method in FIXED:   # torchdiffeq's grid from a step size may add one remnant step
            assert out.nfe - int(denoise) in (FIXED[method] * steps, FIXED[method] * (steps + 1)), out.nfe
        if behaviour is not None:   # an adaptive solve may finish before the k-th call; then it never misbehaved
            assert score.calls[0] < k, (score.calls[0], k)

    call = lambda: ode_sample(sde, score, shape, method=method, rtol=rtol, atol=atol, steps=steps, eps=eps,
                              denoise=denoise, dtype=dtype, generator=torch.Generator().manual_seed(4))
    if not bad and behaviour is not None and method not in FIXED:   # how many calls an adaptive solve makes is unknown
        try:
            out = call()
        except (ValueError, TypeError) as err:
            assert _named(err, ["score_fn"]) and score.calls[0] >= k, repr(err)
        else:
            ok(out)
    else:
        check_outcome(call, bad, ok)


# ---------------------------------------------------------------- log_likelihood
LIK_MISBEHAVIOURS = MISBEHAVIOURS + ["detach", "no_grad"]


@given(st.data())
def test_log_likelihood_is_exact_for_gaussian_data_or_names_the_bad_argument(data):
    """For data N(0, s2 I) with the exact score and the exact log p_T as the prior, log_likelihood equals
    log N(x; 0, v(eps) I) up to the solver's error; or it raises, naming the argument at fault."""
    draw = data.draw
    sde, shape = draw(sdes(), "sde"), draw(shapes(min_rank=1), "shape")
    dtype = draw(st.sampled_from(FLOATS + NOT_FLOATS[:1]), "dtype")
    method = draw(st.sampled_from(["dopri5", "bosh3", "adaptive_heun", "rk4", "euler", "explicit_adams"]), "method")
    with_step = draw(st.booleans(), "with_step")
    trace = draw(st.sampled_from(["exact", "hutchinson"]), "trace")
    rtol = draw(st.one_of(st.sampled_from([1e-3, 1e-4, 1e-5]), st.sampled_from([0.0, -1e-3, math.nan])), "rtol")
    eps = draw(st.one_of(st.floats(0.0, 0.3), st.sampled_from([-0.1, 1.0])), "eps")
    behaviour = draw(st.sampled_from([None] * 4 + LIK_MISBEHAVIOURS), "misbehaviour")
    k = draw(st.integers(1, 8), "k")
    inference = draw(st.booleans(), "inference_mode")
    s2 = draw(st.floats(0.05, 4.0), "s2")
    score = gaussian_score(sde, s2)
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * math.sqrt(s2)).to(dtype)
    D = math.prod(shape[1:])
    v_T = _variance(sde, s2, torch.tensor([sde.T], dtype=torch.float64)).item()
    log_pT = lambda z: -0.5 * D * math.log(2 * math.pi * v_T) - z.reshape(z.shape[0], -1).square().sum(1) / (2 * v_T)
    options = {"step_size": 0.01} if method in ("rk4", "euler", "explicit_adams") and with_step else None

    bad = set()
    if not dtype.is_floating_point:
        bad.add("x")
    if not (0 < eps < sde.T):      # (0, T) everywhere: core.check_eps
        bad.add("eps")
    if not (rtol > 0):
        bad.add("rtol")
    if method in ("rk4", "euler", "explicit_adams") and not with_step:
        bad.add("options")
    if not bad and behaviour is not None:
        if behaviour == "detach":
            inner = score
            score = lambda y, t: inner(y.detach(), t)
            bad.add("score_fn")
        elif behaviour == "no_grad":
            score = torch.no_grad()(score)
            bad.add("score_fn")
        else:   # raises naming `score_fn` unless the solve ends before the k-th call (a zero field: s2 = 1 under VP)
            score = misbehaving(score, behaviour, k)

    def ok(result):
        ell, nfe = result
        assert ell.shape == (shape[0],) and ell.dtype == work and _finite(ell) and nfe > 0
        if trace == "exact" and method not in ("euler", "explicit_adams"):
            v_eps = _variance(sde, s2, torch.tensor([float(eps)], dtype=torch.float64)).item()
            xf = x.to(torch.float64).reshape(shape[0], -1)
            exact = -0.5 * D * math.log(2 * math.pi * v_eps) - xf.square().sum(1) / (2 * v_eps)
            # a bound, not a fit: the solver's local tolerance (rtol = atol) times the log-variance change over [eps, T],
            # per dimension; RK4 at h = 0.01 is far below it; float32 adds its rounding of |log p| (~1e-6 relative)
            swing = abs(math.log(v_T / v_eps))
            tol = D * (200 * rtol * (1 + swing) + 1e-3 * (work == torch.float32)) + 1e-5 * exact.abs().max().item() + 1e-6
            assert (ell.to(torch.float64) - exact).abs().max().item() < tol

    def call():
        kw = dict(eps=eps, trace=trace, method=method, rtol=rtol, atol=rtol if rtol > 0 else 1e-3, options=options,
                  prior_logp=log_pT, generator=torch.Generator().manual_seed(6))
        if inference:
            with torch.inference_mode():
                return log_likelihood(sde, score, x.clone(), **kw)
        return log_likelihood(sde, score, x, **kw)

    if not bad and behaviour in MISBEHAVIOURS:
        try:
            result = call()
        except (ValueError, TypeError) as err:
            assert _named(err, ["score_fn"]) and score.calls[0] >= k, repr(err)
        else:
            assert score.calls[0] < k, (score.calls[0], k)
            ok(result)
    else:
        check_outcome(call, bad, ok)
