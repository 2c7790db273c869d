"""Log-likelihood by the instantaneous change of variables, Hutchinson's trace estimator, bits/dim and dequantization."""
import math

import pytest
import torch

from sde_diffusion.likelihood import (bits_per_dim, dequantize, divergence, hutchinson_probes, log_likelihood,
                                      quantize)
from sde_diffusion.sde import SubVPSDE, VESDE, VPSDE
from sde_diffusion.toy import GaussianMixture, ring_of_gaussians


F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")   # small tensors: one CPU thread is fastest (tests/conftest.py)


def _log_pT(data, sde):
    return lambda z: data.marginal_log_prob(z, torch.full((z.shape[0],), sde.T, dtype=z.dtype, device=z.device), sde)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_exact_trace_matches_mixture_log_density(sde):
    "The issue's target: MAE <= 0.003 nats against the exact log p0 (float64, dopri5, rtol = atol = 1e-5)."
    data = ring_of_gaussians(dtype=F64)
    x = data.sample(200, generator=torch.Generator().manual_seed(0))
    ell, nfe = log_likelihood(sde, data.score_fn(sde), x)
    assert ell.shape == (200,) and ell.dtype == F64
    assert (ell - data.log_prob(x)).abs().mean() <= 3e-3
    assert 20 < nfe < 400
    # with the exact log p_T as the prior only the solver's error is left against log p_eps
    ell_pT, _ = log_likelihood(sde, data.score_fn(sde), x, prior_logp=_log_pT(data, sde))
    log_peps = data.marginal_log_prob(x, torch.full((200,), 1e-5, dtype=F64), sde)
    assert (ell_pT - log_peps).abs().mean() < 1e-4


def test_vp_error_well_inside_target_and_shrinks_with_rtol():
    data, sde = ring_of_gaussians(dtype=F64), VPSDE()
    x = data.sample(100, generator=torch.Generator().manual_seed(1))
    log_peps = data.marginal_log_prob(x, torch.full((100,), 1e-5, dtype=F64), sde)
    errs = []
    for rtol in (1e-4, 1e-6):
        ell, _ = log_likelihood(sde, data.score_fn(sde), x, rtol=rtol, atol=rtol, prior_logp=_log_pT(data, sde))
        errs.append((ell - log_peps).abs().mean().item())
    assert errs[1] < 0.05 * errs[0] and errs[1] < 5e-6


@pytest.mark.slow
def test_gaussian_closed_form_image_shaped():
    "Gaussian data: log N(x; 0, v_eps) exactly, for x of shape (B, C, H, W); eps as small as 1e-8, but not 0 (core.check_eps)."
    sde = VESDE()
    gauss = GaussianMixture(torch.ones(1), torch.zeros(1, 12), torch.tensor([0.4]), dtype=F64)
    x = torch.randn(16, 3, 2, 2, generator=torch.Generator().manual_seed(2), dtype=F64) * math.sqrt(0.4)
    with pytest.raises(ValueError, match=r"`eps` must lie in \(0, T\)"):
        log_likelihood(sde, gauss.score_fn(sde), x, eps=0.0)
    for eps in (1e-8, 1e-3):
        ell, _ = log_likelihood(sde, gauss.score_fn(sde), x, eps=eps, rtol=1e-7, atol=1e-7, prior_logp=_log_pT(gauss, sde))
        target = gauss.marginal_log_prob(x, torch.full((16,), eps, dtype=F64), sde)
        torch.testing.assert_close(ell, target, rtol=0, atol=1e-5)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(noise):
    "Mean over independent probes matches the exact-trace result within 4 standard errors."
    data, sde = ring_of_gaussians(dtype=F64), VPSDE()
    x = data.sample(16, generator=torch.Generator().manual_seed(3))
    exact, _ = log_likelihood(sde, data.score_fn(sde), x)
    R = 64
    est, _ = log_likelihood(sde, data.score_fn(sde), x.repeat(R, 1), trace="hutchinson", noise=noise,
                            generator=torch.Generator().manual_seed(4))
    dev = est.reshape(R, 16) - exact
    se = (dev.var(0).mean() / dev.numel()).sqrt()
    assert dev.var(0).mean() > 1e-3                      # it really is random
    assert abs(dev.mean()) < 4 * se + 1e-4


def test_divergence_exact_and_hutchinson_on_linear_fields():
    gen = torch.Generator().manual_seed(5)
    A = torch.randn(6, 6, generator=gen, dtype=F64)
    x = torch.randn(4, 6, generator=gen, dtype=F64)
    f, div = divergence(lambda y: y @ A.T, x)
    torch.testing.assert_close(f, x @ A.T)
    torch.testing.assert_close(div, A.trace().expand(4))
    # a diagonal Jacobian: every Rademacher probe gives the exact trace
    d = torch.arange(1.0, 7.0, dtype=F64)
    v = hutchinson_probes((3, 4, 6), generator=gen, dtype=F64)
    assert set(v.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(divergence(lambda y: y * d, x, v)[1], torch.full((4,), 21.0, dtype=F64))
    # Gaussian probes: v^T A v exactly, per probe
    g = hutchinson_probes((1, 4, 6), "gaussian", generator=gen, dtype=F64)
    torch.testing.assert_close(divergence(lambda y: y @ A.T, x, g)[1], torch.einsum("bi,ij,bj->b", g[0], A, g[0]))
    # a field that ignores x has divergence 0
    assert (divergence(lambda y: torch.ones_like(y), x)[1] == 0).all()


def test_hutchinson_variance_formulas():
    "Var = 2 sum_{i != j} S_ij^2 (Rademacher), 2 ||S||_F^2 (Gaussian), checked by simulation."
    gen = torch.Generator().manual_seed(6)
    A = torch.randn(4, 4, generator=gen, dtype=F64)
    S = 0.5 * (A + A.T)
    n = 200_000
    for noise, predicted in (("rademacher", 2 * (S.square().sum() - S.diagonal().square().sum())),
                             ("gaussian", 2 * S.square().sum())):
        v = hutchinson_probes((n, 4), noise, generator=gen, dtype=F64)
        q = torch.einsum("ni,ij,nj->n", v, A, v)
        # the sample variance of a quadratic form: relative SE about sqrt((kurtosis - 1) / n), < 2 % here
        assert abs(q.var() / predicted - 1) < 0.03, noise
        assert abs(q.mean() - A.trace()) < 4 * q.std() / math.sqrt(n)


def test_bits_per_dim_by_hand():
    logp = torch.tensor([-10.0, 2.0], dtype=F64)
    # D = 3 * 8 * 8 = 192, data on [-1, 1) in 256 bins: a = 1/128, bpd = -logp / (192 ln 2) + 7
    expected = -logp / (192 * math.log(2)) + 7
    torch.testing.assert_close(bits_per_dim(logp, (2, 3, 8, 8)), expected)
    torch.testing.assert_close(bits_per_dim(logp, 192), expected)
    torch.testing.assert_close(bits_per_dim(logp, torch.Size([2, 192]), data_range=(0.0, 1.0)), expected + 1)
    # DDPM's y = (x + u) / 127.5 - 1: a = 1/127.5
    torch.testing.assert_close(bits_per_dim(logp, 192, data_range=(-1.0, 256 / 127.5 - 1)),
                               -logp / (192 * math.log(2)) + math.log2(127.5))
    # 16 levels on [0, 4): a = 1/4, -log2 a = 2
    torch.testing.assert_close(bits_per_dim(logp, 192, n_bins=16, data_range=(0, 4)), -logp / (192 * math.log(2)) + 2)


def test_dequantization_bound_below_exact_discrete_probability():
    "1-D Gaussian, 8 bins of width 1/4: log P(bin) >= D log a + E_u log p (Jensen), by fine quadrature."
    mu, sd, n_bins, lo, hi = 0.1, 0.5, 8, -1.0, 1.0
    a = (hi - lo) / n_bins
    x = torch.arange(n_bins)
    left = lo + a * x.to(F64)
    P = torch.special.ndtr((left + a - mu) / sd) - torch.special.ndtr((left - mu) / sd)
    u = (torch.arange(2000, dtype=F64) + 0.5) / 2000
    y = lo + a * (x[:, None].to(F64) + u)
    logp = -0.5 * ((y - mu) / sd) ** 2 - math.log(sd * math.sqrt(2 * math.pi))
    bound = logp.mean(1) + math.log(a)
    gap = P.log() - bound
    assert (gap > 0).all()
    second_order = a**2 / 24 * ((left + a / 2 - mu) / sd**2) ** 2      # a^2 |d log p / dy|^2 / 24 at the bin centre
    torch.testing.assert_close(gap, second_order, rtol=0.2, atol=1e-3)
    # and bits_per_dim turns the bound into an upper bound on the exact bits
    assert (bits_per_dim(logp.mean(1), 1, n_bins=n_bins, data_range=(lo, hi)) >= -P.log2() - 1e-12).all()


def test_dequantize_stays_in_its_bin_despite_rounding():
    "Values whose u rounds up to 1 in float32 are kept inside the bin, so quantize inverts dequantize exactly."
    for n_bins, data_range in ((256, (-1.0, 1.0)), (256, (-1.0, 256 / 127.5 - 1)), (10, (0.0, 0.3))):
        x = torch.arange(n_bins).repeat(200)
        for dtype in (torch.float32, torch.float64):
            y = dequantize(x, torch.Generator().manual_seed(19), n_bins=n_bins, data_range=data_range, dtype=dtype)
            assert torch.equal(quantize(y, n_bins=n_bins, data_range=data_range), x)
            top = torch.full_like(y, data_range[0]) + (data_range[1] - data_range[0]) / n_bins * (x.to(dtype) + 1)
            assert torch.equal(quantize(torch.nextafter(top, top - 1), n_bins=n_bins, data_range=data_range), x)


def test_dequantize_and_quantize():
    x = torch.randint(0, 256, (1000, 3, 4), generator=torch.Generator().manual_seed(7), dtype=torch.uint8)
    y = dequantize(x, torch.Generator().manual_seed(8))
    assert y.dtype == torch.float32 and y.shape == x.shape and (y >= -1).all() and (y < 1).all()
    assert torch.equal(quantize(y), x.long())
    torch.testing.assert_close(dequantize(x, torch.Generator().manual_seed(8)), y)      # same generator, same result
    assert not torch.equal(dequantize(x, torch.Generator().manual_seed(9)), y)
    u = (y.double() + 1) * 128 - x.double()
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / u.numel())
    y64 = dequantize(x.long(), n_bins=256, data_range=(0.0, 1.0), dtype=F64)
    assert y64.dtype == F64 and torch.equal(quantize(y64, data_range=(0.0, 1.0)), x.long())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(8, 4), (8, 1, 2, 2)], ids=["BD", "BCHW"])
def test_shapes_dtypes_devices(device, dtype, shape):
    sde = VPSDE()
    gauss = GaussianMixture(torch.ones(1), torch.zeros(1, 4), torch.tensor([0.3]), dtype=dtype, device=device)
    x = torch.randn(shape, generator=torch.Generator(device).manual_seed(10), dtype=dtype, device=device) * math.sqrt(0.3)
    target = gauss.marginal_log_prob(x, torch.full((8,), 1e-5, dtype=dtype, device=device), sde)
    tol = 1e-3 if dtype == torch.float32 else 1e-4      # the prior mismatch of VP at T = 1 is ~1e-4 here
    for kw in (dict(trace="exact"), dict(trace="hutchinson", n_probes=2, generator=torch.Generator(device).manual_seed(11))):
        ell, nfe = log_likelihood(sde, gauss.score_fn(sde), x, **kw)
        assert ell.shape == (8,) and ell.dtype == dtype and ell.device == x.device and nfe > 0
        if kw["trace"] == "exact":
            assert (ell - target).abs().max() < tol
        else:
            assert torch.isfinite(ell).all()
    bpd = bits_per_dim(ell, x.shape)
    assert bpd.shape == (8,) and bpd.device == x.device
    levels = torch.randint(0, 256, shape, device=device, generator=torch.Generator(device).manual_seed(12))
    y = dequantize(levels, torch.Generator(device).manual_seed(13), dtype=dtype)
    assert y.device == x.device and y.dtype == dtype and torch.equal(quantize(y), levels)


def test_same_generator_same_result():
    data, sde = ring_of_gaussians(dtype=F64), VPSDE()
    x = data.sample(32, generator=torch.Generator().manual_seed(14))
    run = lambda seed, noise: log_likelihood(sde, data.score_fn(sde), x, trace="hutchinson", noise=noise,
                                             generator=torch.Generator().manual_seed(seed), rtol=1e-4, atol=1e-4)[0]
    for noise in ("rademacher", "gaussian"):
        assert torch.equal(run(15, noise), run(15, noise))
        assert not torch.equal(run(15, noise), run(16, noise))


def test_fixed_step_method_counts_evaluations():
    data, sde = ring_of_gaussians(dtype=F64), VPSDE()
    x = data.sample(16, generator=torch.Generator().manual_seed(17))
    ell, nfe = log_likelihood(sde, data.score_fn(sde), x, eps=1e-3, method="rk4", options={"step_size": 0.999 / 200})
    assert nfe == 4 * 200 or nfe == 4 * 201
    assert (ell - data.marginal_log_prob(x, torch.full((16,), 1e-3, dtype=F64), sde)).abs().mean() < 1e-3


def test_bad_inputs():
    data, sde = ring_of_gaussians(dtype=F64), VPSDE()
    score, x = data.score_fn(sde), data.sample(4, generator=torch.Generator().manual_seed(18))
    with pytest.raises(ValueError, match="`eps`"):
        log_likelihood(sde, score, x, eps=-1e-3)
    with pytest.raises(ValueError, match="`eps`"):
        log_likelihood(sde, score, x, eps=1.0)
    with pytest.raises(ValueError, match="`trace`"):
        log_likelihood(sde, score, x, trace="approximate")
    with pytest.raises(ValueError, match="`noise`"):
        log_likelihood(sde, score, x, trace="hutchinson", noise="uniform")
    with pytest.raises(ValueError, match="`n_probes`"):
        log_likelihood(sde, score, x, trace="hutchinson", n_probes=0)
    with pytest.raises(ValueError, match="`x`.*floating-point"):
        log_likelihood(sde, score, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="`x`"):
        log_likelihood(sde, score, torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match="`x` contains NaN"):
        log_likelihood(sde, score, torch.full((4, 2), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="`rtol`"):
        log_likelihood(sde, score, x, rtol=0.0)
    with pytest.raises(ValueError, match="`prior_logp`"):
        log_likelihood(sde, score, x, prior_logp=lambda z: z)
    with pytest.raises(ValueError, match="NaN or inf"):
        log_likelihood(sde, lambda y, t: y * float("nan"), x)   # (a constant score has no graph: refused, see below)
    with pytest.raises(TypeError, match="`sde`"):
        log_likelihood("VP", score, x)
    with pytest.raises(ValueError, match="`probes`"):
        divergence(lambda y: y, x, torch.ones(2, 4, 3, dtype=F64))
    with pytest.raises(ValueError, match="`n_bins`"):
        bits_per_dim(torch.zeros(2), 4, n_bins=1)
    with pytest.raises(ValueError, match="`data_range`"):
        bits_per_dim(torch.zeros(2), 4, data_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="`shape`"):
        bits_per_dim(torch.zeros(2), (3, 4))
    with pytest.raises(ValueError, match="`logp`"):
        bits_per_dim(torch.zeros(2, 1), 4)
    with pytest.raises(ValueError, match="`x`"):
        dequantize(torch.rand(3, 2))
    with pytest.raises(ValueError, match="`x` must take values"):
        dequantize(torch.tensor([[0, 256]]))
    with pytest.raises(ValueError, match="`noise`"):
        hutchinson_probes((1, 2, 2), "uniform")


# ---------------------------------------------------------------- silent wrong answers (reliability issue, part 2)
def test_inference_mode_gives_the_same_log_likelihood():
    """Under torch.inference_mode() (the CLI's sampling pattern) the divergence term was dropped (MAE 1.1 nats on the
    ring); now autograd is enabled inside and the result is the one computed outside, to float64 rounding."""
    data, sde = ring_of_gaussians(dtype=F64), VPSDE()
    x = data.sample(50, generator=torch.Generator().manual_seed(20))
    ref, nfe = log_likelihood(sde, data.score_fn(sde), x)
    assert (ref - data.log_prob(x)).abs().mean() < 3e-3
    with torch.inference_mode():
        x_inf = x.clone()
        got, nfe_inf = log_likelihood(sde, data.score_fn(sde), x_inf)
        _, div = divergence(lambda y: y * torch.arange(1.0, 3.0, dtype=F64), x_inf)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    assert nfe_inf == nfe and (div == 3.0).all()
    with torch.no_grad():
        torch.testing.assert_close(log_likelihood(sde, data.score_fn(sde), x)[0], ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("detached", [lambda s: (lambda y, t: s(y.detach(), t)),
                                      lambda s: (lambda y, t: s(y, t).detach()),
                                      lambda s: torch.no_grad()(s)], ids=["input", "output", "no_grad"])
def test_score_without_a_graph_is_refused(detached):
    "A score cut off from x's graph cannot give a divergence (it gave 10.6 nats of error): ValueError naming `score_fn`."
    data, sde = ring_of_gaussians(dtype=F64), VPSDE()
    x = data.sample(8, generator=torch.Generator().manual_seed(21))
    with pytest.raises(ValueError, match="`score_fn`.*no autograd graph"):
        log_likelihood(sde, detached(data.score_fn(sde)), x)


def test_score_with_inference_mode_parameters_is_named():
    "Parameters created under inference_mode cannot enter autograd: a ValueError naming `score_fn`, not a RuntimeError."
    with torch.inference_mode():
        net = torch.nn.Linear(2, 2).double()
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(22))
    with pytest.raises(ValueError, match="`score_fn`"):
        log_likelihood(VPSDE(), lambda y, t: net(y) - y, x)


@pytest.mark.parametrize("method", ["euler", "rk4", "explicit_adams", "midpoint"])
def test_fixed_step_method_without_a_step_is_refused(method):
    "Without a step size torchdiffeq takes ONE step (rk4: 4 NFE, 1.03 nats off): refused, naming `options`."
    data, sde = ring_of_gaussians(dtype=F64), VPSDE()
    x = data.sample(4, generator=torch.Generator().manual_seed(23))
    with pytest.raises(ValueError, match="`options`"):
        log_likelihood(sde, data.score_fn(sde), x, method=method)
    with pytest.raises(ValueError, match="`method`"):
        log_likelihood(sde, data.score_fn(sde), x, method="scipy_solver")
    with pytest.raises(ValueError, match="step_size"):
        log_likelihood(sde, data.score_fn(sde), x, method=method, options={"step_size": -0.1})


def test_score_output_checked_on_every_call_in_log_likelihood():
    data, sde = ring_of_gaussians(dtype=F64), VPSDE()
    x = data.sample(4, generator=torch.Generator().manual_seed(24))
    score, calls = data.score_fn(sde), [0]

    def late(y, t):
        calls[0] += 1
        return score(y, t) if calls[0] < 4 else score(y, t).float()
    with pytest.raises(TypeError, match="`score_fn`"):
        log_likelihood(sde, late, x)


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_half_precision_data_is_computed_in_float32(low):
    "float16/bfloat16 data: the float32 result for the same (rounded) points, returned in float32."
    gauss = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.tensor([0.5]))
    sde = VPSDE()
    x = (torch.randn(8, 2, generator=torch.Generator().manual_seed(25)) * 0.7).to(low)
    got, _ = log_likelihood(sde, gauss.score_fn(sde), x)
    ref, _ = log_likelihood(sde, gauss.score_fn(sde), x.float())
    assert got.dtype == torch.float32 and torch.equal(got, ref)
    with pytest.raises(ValueError, match="`x`"):
        log_likelihood(sde, gauss.score_fn(sde), torch.zeros(4, 2, device="meta"))


@pytest.mark.parametrize("call,err,match", [
    (lambda: quantize(torch.tensor([[math.nan, 0.0]])), ValueError, "`y`"),       # was bin 0 (via -2**63), silently
    (lambda: bits_per_dim(torch.tensor([-math.inf]), 4), ValueError, "`logp`"),   # was inf bits/dim
    (lambda: dequantize(torch.tensor([[1, 2]]), dtype="float32"), ValueError, "`dtype`"),
    (lambda: dequantize(torch.zeros(2, 2, dtype=torch.long, device="meta")), ValueError, "`x`"),
    (lambda: hutchinson_probes((1, 2, 2), "gaussian", dtype=torch.long), TypeError, "`dtype`"),
    (lambda: log_likelihood(VPSDE(), lambda x, t: -x, torch.zeros(2, 2), generator=3), TypeError, "`generator`"),
    (lambda: log_likelihood(VPSDE(), lambda x, t: -x, torch.zeros(2, 2), options={"first_step": -1.0}), ValueError,
     "first_step"),
    (lambda: log_likelihood(VPSDE(), lambda x, t: -x, torch.zeros(2, 2), prior_logp=lambda z: torch.zeros(2, dtype=torch.long)),
     ValueError, "`prior_logp`"),
    (lambda: divergence(lambda y: y, torch.zeros(2, 2, dtype=torch.long)), TypeError, "`x`"),
])
def test_more_bad_inputs_are_named(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_divergence_shape_boundaries():
    "x of shape (B,) (one dimension per sample) and a single probe are valid; a 0-d x and zero probes are refused by name."
    from sde_diffusion.likelihood import divergence
    x = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    f, div = divergence(lambda y: 3 * y, x)
    torch.testing.assert_close(div, torch.full((5,), 3.0, dtype=torch.float64))
    f, div = divergence(lambda y: 3 * y, x, torch.ones(1, 5, dtype=torch.float64))   # one probe: v J v = 3 exactly
    torch.testing.assert_close(div, torch.full((5,), 3.0, dtype=torch.float64))
    with pytest.raises(TypeError, match="`x`"):
        divergence(lambda y: 3 * y, torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="`probes`"):
        divergence(lambda y: 3 * y, x, torch.ones(0, 5, dtype=torch.float64))


def test_likelihood_and_bin_argument_boundaries():
    """x of shape (B, 1) is valid and (B,) or empty refused; n_bins = 2 (one bit) is valid and 1 refused; a data range
    with lo = hi is refused (mutation survivors: boundaries never exercised)."""
    sde = VPSDE()
    gauss_score = lambda x, t: -x   # N(0, 1) data: every marginal is N(0, 1) under VP
    x1 = torch.randn(4, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ell, _ = log_likelihood(sde, gauss_score, x1)
    exact = -0.5 * (x1.squeeze(1) ** 2 + math.log(2 * math.pi))
    assert (ell - exact).abs().max() < 1e-12   # the PF field -beta x/2 - beta s/2 is identically 0: float64 rounding only
    for bad in (x1.squeeze(1), torch.zeros(0, 1, dtype=torch.float64)):
        with pytest.raises(ValueError, match="`x`"):
            log_likelihood(sde, gauss_score, bad)
    levels = quantize(torch.tensor([[-0.9, 0.9]], dtype=torch.float64), n_bins=2)
    assert levels.tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="`n_bins`"):
        quantize(torch.zeros(1, 2, dtype=torch.float64), n_bins=1)
    with pytest.raises(ValueError, match="`data_range`"):
        quantize(torch.zeros(1, 2, dtype=torch.float64), n_bins=4, data_range=(1.0, 1.0))


@pytest.mark.parametrize("n_bins,data_range", [(10, (-1.0, 1.0)), (7, (0.1, 0.7)), (5, (0.1, 0.7))])
def test_quantize_puts_every_bin_edge_in_its_own_bin(n_bins, data_range):
    """A value exactly on the lower edge lo + a k of bin k belongs to bin k, although floor((y - lo)/a) rounds it down
    to k - 1 for some k (e.g. k = 1 of 10 bins on [-1, 1] in float64): the rounding correction is exercised."""
    lo, hi = data_range
    a = (hi - lo) / n_bins
    k = torch.arange(n_bins, dtype=torch.float64)
    edges = lo + a * k
    assert (torch.floor((edges - lo) / a) != k).any()   # the case the correction exists for occurs here
    assert quantize(edges[None], n_bins=n_bins, data_range=data_range).tolist() == [list(range(n_bins))]


def test_out_of_range_values_and_bits_per_dim_shape_boundaries():
    "Values at or beyond hi (and below lo) go to the edge bins; bits_per_dim refuses a (B,) shape and D = 0 by name."
    y = torch.tensor([[-5.0, -1.0, 1.0, 7.0]], dtype=torch.float64)
    assert quantize(y, n_bins=4).tolist() == [[0, 0, 3, 3]]
    logp = torch.zeros(3, dtype=torch.float64)
    for bad in ((3,), 0):
        with pytest.raises(ValueError, match="`shape`"):
            bits_per_dim(logp, bad)
    assert bits_per_dim(logp, 1).shape == (3,)


@pytest.mark.parametrize("probes", [None, "hutchinson"], ids=["exact", "hutchinson"])
def test_divergence_frees_the_graph_after_its_last_backward_pass(probes):
    """The D (or n_probes) backward passes keep the field's autograd graph between passes only: after the last one its
    saved tensors are freed (retain_graph is False there), so a caller that still holds the output cannot backpropagate
    through it again. (Mutation survivors: retaining the graph on the last pass changes no number, only memory.)"""
    kept = []

    def field(y):
        f = torch.sin(y) * y      # saves y and sin(y) for its backward pass
        kept.append((y, f))
        return f

    x = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    v = None if probes is None else hutchinson_probes((2, 3, 4), generator=torch.Generator().manual_seed(1), dtype=F64)
    _, div = divergence(field, x, v)
    exact = (torch.cos(x) * x + torch.sin(x)).sum(1)     # d/dy (y sin y), summed over the 4 dimensions
    if probes is None:
        torch.testing.assert_close(div, exact, rtol=1e-12, atol=1e-12)   # float64 rounding of a sum of 4 terms
    y, f = kept[0]
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(f.sum(), y)


def test_the_first_trial_step_is_one_percent_of_the_interval():
    """Adaptive methods start with a step of 1 % of [eps, T] (no automatic probe outside the interval): dopri5's second
    stage evaluates the score at eps + c2 h with c2 = 1/5 and h = 0.01 (T - eps). eps = 0.1 makes T - eps and T + eps
    differ by 20 % (a mutant used the sum); the times agree to float64 rounding (a few ulps of 0.1)."""
    ts = []

    def score(x, t):
        ts.append(float(t[0]))
        return -x                  # N(0, I) data under VP: a smooth field, any step is accepted

    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    sde, eps = VPSDE(), 0.1
    log_likelihood(sde, score, x, eps=eps)
    assert ts[0] == eps
    assert ts[1] - eps == pytest.approx(0.2 * 0.01 * (sde.T - eps), rel=1e-12)
    assert max(ts) <= sde.T          # the steps land on T, never past it


@pytest.mark.parametrize("n_bins,data_range,dtype", [
    (256, (0.0, 1000.0), torch.bfloat16),    # a = 3.9 < the bfloat16 spacing 4 on [512, 1024): some bins hold no value
    (4096, (-1.0, 1.0), torch.float16),      # level 4095 is not a float16 number (rounds to 4096)
])
def test_dequantize_refuses_a_dtype_that_cannot_resolve_the_bins(n_bins, data_range, dtype):
    """Each dequantized value must lie in its own bin, so that `quantize` inverts `dequantize`. When the dtype cannot
    represent a level or any value of a bin, that is impossible: refused by name (it used to return values in another
    bin, silently). Below the limit, bfloat16 and float16 round-trip exactly."""
    x = torch.arange(n_bins).repeat(4)
    with pytest.raises(ValueError, match="`dtype`"):
        dequantize(x, torch.Generator().manual_seed(0), n_bins=n_bins, data_range=data_range, dtype=dtype)
    for n_bins, data_range, dtype in ((256, (0.0, 255.0), torch.bfloat16),   # one bfloat16 value per bin on [128, 256)
                                      (2048, (-1.0, 1.0), torch.float16)):    # every level up to 2047 is a float16 number
        x = torch.arange(n_bins).repeat(50)
        y = dequantize(x, torch.Generator().manual_seed(1), n_bins=n_bins, data_range=data_range, dtype=dtype)
        assert y.dtype == dtype and torch.equal(quantize(y, n_bins=n_bins, data_range=data_range), x)
