"""The Gaussian-mixture oracle: exact scores against autograd and torch.distributions, marginals under VP/sub-VP/VE
against Monte Carlo, stability for far-apart components and tiny variances, bad input, a dtype x device matrix."""
import math

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from sde_diffusion.sde import SubVPSDE, VESDE, VPSDE
from sde_diffusion.toy import (DATASETS_2D, GaussianMixture, grid_of_gaussians, make_2d_dataset, random_mixture,
                               ring_of_gaussians)


SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
F64 = torch.float64


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def _autograd_score(log_prob, x):
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(log_prob(x).sum(), x)[0]


def _far():
    "Two components with std 0.01 at (+-50, 0): log-joints of order -1e7 between them."
    return GaussianMixture([0.3, 0.7], [[-50.0, 0.0], [50.0, 0.0]], 1e-4, dtype=F64)


def _coeffs(sde, t, dtype=F64):
    alpha, sigma = sde.marginal_coeffs(torch.tensor([t], dtype=dtype))
    return alpha.item(), sigma.item()


# ---------------------------------------------------------------------------------------------------------------------
# exactness

@pytest.mark.parametrize("gm", [random_mixture(5, 3, torch.Generator().manual_seed(0), dtype=F64), _far(),
                                grid_of_gaussians(dtype=F64)], ids=["random", "far", "grid"])
def test_log_prob_and_score_against_torch_distributions(gm):
    g = torch.Generator().manual_seed(1)
    x = torch.cat([gm.sample(100, generator=g), gm.mean() + 10 * torch.randn(100, gm.D, generator=g, dtype=F64)])
    ref = MixtureSameFamily(Categorical(probs=gm.weights), MultivariateNormal(gm.means, covariance_matrix=gm.covs))
    assert _rel(gm.log_prob(x), ref.log_prob(x)) < 1e-12
    assert _rel(gm.score(x), _autograd_score(gm.log_prob, x)) < 1e-10
    # cross-implementation agreement is limited by the conditioning: log-joints ~1e7 between far modes
    assert _rel(gm.score(x), _autograd_score(ref.log_prob, x)) < 1e-8


@pytest.mark.parametrize("t", [1e-3, 0.01, 0.3, 1.0])
@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("which", ["random", "far"])
def test_marginal_score_is_gradient_of_marginal_log_prob(which, sde_name, t):
    sde = SDES[sde_name]
    gm = random_mixture(4, 2, torch.Generator().manual_seed(2), dtype=F64) if which == "random" else _far()
    x = gm.marginal(*_coeffs(sde, t)).sample(128, generator=torch.Generator().manual_seed(3))
    x = torch.cat([x, gm.mean() + 5 * torch.randn(16, 2, generator=torch.Generator().manual_seed(4), dtype=F64)])
    tt = torch.full((x.shape[0],), t, dtype=F64)
    s = gm.marginal_score(x, tt, sde)
    assert torch.isfinite(s).all()
    assert _rel(s, _autograd_score(lambda y: gm.marginal_log_prob(y, tt, sde), x)) < 1e-10


@pytest.mark.parametrize("sde_name", list(SDES))
def test_per_sample_times_match_single_time_mixture(sde_name):
    "Eigen route (one time per sample) against marginal(alpha, sigma) (Cholesky route), sample by sample."
    sde = SDES[sde_name]
    gm = random_mixture(3, 4, torch.Generator().manual_seed(5), dtype=F64)
    t = torch.tensor([0.0, 1e-3, 0.02, 0.2, 0.6, 1.0], dtype=F64)
    x = 2 * torch.randn(6, 4, generator=torch.Generator().manual_seed(6), dtype=F64)
    alpha, sigma = sde.marginal_coeffs(t)
    lp = gm.marginal_log_prob(x, t, sde)
    sc = gm.score_fn(sde)(x, t)
    for b in range(6):
        pt = gm.marginal(alpha[b], sigma[b])
        assert abs(lp[b] - pt.log_prob(x[b:b + 1])[0]) < 1e-12 * max(1.0, abs(lp[b].item()))
        assert _rel(sc[b:b + 1], pt.score(x[b:b + 1])) < 1e-11
    assert torch.equal(gm.log_prob_fn(sde)(x, t), lp)


def test_marginal_at_time_zero_is_the_data():
    gm = random_mixture(3, 2, torch.Generator().manual_seed(7), dtype=F64)
    x = gm.sample(50, generator=torch.Generator().manual_seed(8))
    t = torch.zeros(50, dtype=F64)
    for sde in SDES.values():   # VP, sub-VP and VE all have alpha(0) = 1, sigma(0) = 0
        assert _rel(gm.marginal_score(x, t, sde), gm.score(x)) < 1e-12
        assert _rel(gm.marginal_log_prob(x, t, sde), gm.log_prob(x)) < 1e-12


def test_normalized_on_a_grid():
    ring = ring_of_gaussians(dtype=F64)
    lim, n = 6.0, 400
    h = 2 * lim / n
    c = torch.linspace(-lim + h / 2, lim - h / 2, n, dtype=F64)
    pts = torch.cartesian_prod(c, c)
    for t in (0.0, 0.1, 1.0):
        mass = (ring.marginal_log_prob(pts, torch.full((len(pts),), t, dtype=F64), SDES["vp"]).exp().sum() * h * h).item()
        assert abs(mass - 1) < 1e-6


# ---------------------------------------------------------------------------------------------------------------------
# Monte Carlo

def test_sample_moments_and_stratified_counts():
    gm = random_mixture(4, 3, torch.Generator().manual_seed(9), dtype=F64)
    n = 100_000
    x = gm.sample(n, generator=torch.Generator().manual_seed(10))
    z_mean = (x.mean(0) - gm.mean()) / (gm.covariance().diagonal() / n).sqrt()
    xc = x - x.mean(0)
    z_cov = (torch.cov(x.T) - gm.covariance()) / ((xc[:, :, None] * xc[:, None, :]).std(0) / math.sqrt(n))
    assert z_mean.abs().max() < 4.5 and z_cov.abs().max() < 4.5
    for n in (0, 1, 7, 1000):
        _, labels = gm.sample(n, generator=torch.Generator().manual_seed(11), stratified=True, return_labels=True)
        counts = torch.bincount(labels, minlength=gm.K)
        assert counts.sum() == n and ((counts - n * gm.weights).abs() < 1).all()


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("t", [0.05, 0.5, 1.0])
def test_marginal_against_monte_carlo(sde_name, t):
    "Perturb exact data samples with (alpha, sigma); compare moments and E log p_t with direct samples of the marginal."
    sde, ring, n = SDES[sde_name], ring_of_gaussians(dtype=F64), 50_000
    g = torch.Generator().manual_seed(12)
    alpha, sigma = _coeffs(sde, t)
    xt = alpha * ring.sample(n, generator=g) + sigma * torch.randn(n, 2, generator=g, dtype=F64)
    pt = ring.marginal(alpha, sigma)
    assert ((xt.mean(0) - pt.mean()).abs() / (pt.covariance().diagonal() / n).sqrt()).max() < 4.5
    xc = xt - xt.mean(0)
    se = (xc[:, :, None] * xc[:, None, :]).std(0) / math.sqrt(n)
    assert ((torch.cov(xt.T) - pt.covariance()) / se).abs().max() < 4.5
    tt = torch.full((n,), t, dtype=F64)
    a, b = ring.marginal_log_prob(xt, tt, sde), ring.marginal_log_prob(pt.sample(n, generator=g), tt, sde)
    assert abs(a.mean() - b.mean()) < 4 * math.sqrt(a.var() / n + b.var() / n)


def test_marginal_density_against_kernel_average():
    "p_t(x) = E_{x0} N(x; alpha x0, sigma^2 I) (the convolution integral), estimated by Monte Carlo at a few points."
    ring, n = ring_of_gaussians(dtype=F64), 100_000
    x0 = ring.sample(n, generator=torch.Generator().manual_seed(13))
    probe = torch.tensor([[2.0, 0.0], [1.2, 1.2], [0.0, -1.6]], dtype=F64)
    for sde in SDES.values():
        for t in (0.3, 1.0):
            alpha, sigma = _coeffs(sde, t)
            kern = torch.exp(-((probe[:, None] - alpha * x0) ** 2).sum(-1) / (2 * sigma**2)) / (2 * math.pi * sigma**2)
            exact = ring.marginal_log_prob(probe, torch.full((3,), t, dtype=F64), sde).exp()
            assert ((kern.mean(1) - exact).abs() < 4 * kern.std(1) / math.sqrt(n)).all()


def test_stratified_sampling_reduces_variance_of_the_mean():
    ring, reps, n = ring_of_gaussians(dtype=F64), 200, 500
    g = torch.Generator().manual_seed(14)
    plain = torch.stack([ring.sample(n, generator=g).mean(0) for _ in range(reps)]).var(0).mean() * n
    strat = torch.stack([ring.sample(n, generator=g, stratified=True).mean(0) for _ in range(reps)]).var(0).mean() * n
    se = 4 * math.sqrt(1 / reps)
    assert abs(plain / (2.0**2 / 2 + 0.25**2) - 1) < se and abs(strat / 0.25**2 - 1) < se


# ---------------------------------------------------------------------------------------------------------------------
# stability

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_far_apart_components_and_tiny_variances_stay_finite(dtype):
    gm = _far().to(dtype=dtype)
    x = torch.tensor([[-50.0, 0.0], [50.0, 1e-3], [0.0, 0.0], [1e3, -1e3], [-49.99, 0.02]], dtype=dtype)
    assert torch.isfinite(gm.log_prob(x)).all() and torch.isfinite(gm.score(x)).all()
    # at a mode the score is exactly the one component's score
    s = gm.score(x[1:2])
    torch.testing.assert_close(s, -(x[1:2] - gm.means[1]) / gm.covs[1, 0, 0], rtol=1e-5, atol=1e-3)
    for sde in SDES.values():
        t = torch.full((5,), 1e-3, dtype=dtype)
        assert torch.isfinite(gm.marginal_score(x, t, sde)).all()
        assert torch.isfinite(gm.marginal_log_prob(x, t, sde)).all()
    if dtype == F64:   # exact value between the modes (equal densities there: responsibilities = weights)
        mid = torch.zeros(1, 2, dtype=F64)
        assert abs(gm.log_prob(mid).item() - (-0.5 * 50**2 / 1e-4 - math.log(2 * math.pi * 1e-4))) < 1e-9 * 1.25e7
        assert abs(gm.score(mid)[0, 0].item() - 2e5) < 1e-8 * 2e5


def test_mixture_with_one_component_is_a_gaussian():
    cov = torch.tensor([[2.0, 0.3], [0.3, 0.5]], dtype=F64)
    gm = GaussianMixture([1.0], [[1.0, -1.0]], cov[None])
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(15), dtype=F64)
    torch.testing.assert_close(gm.log_prob(x), MultivariateNormal(gm.means[0], cov).log_prob(x))
    torch.testing.assert_close(gm.score(x), -(x - gm.means[0]) @ torch.linalg.inv(cov))


# ---------------------------------------------------------------------------------------------------------------------
# input forms and bad input

def test_covariance_forms_agree():
    means = [[0.0, 0.0], [3.0, 1.0]]
    full = GaussianMixture([1, 3], means, [[[0.5, 0.0], [0.0, 0.5]], [[2.0, 0.0], [0.0, 2.0]]], dtype=F64)
    diag = GaussianMixture([1, 3], means, [[0.5, 0.5], [2.0, 2.0]], dtype=F64)
    iso = GaussianMixture([0.25, 0.75], means, [0.5, 2.0], dtype=F64)
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(16), dtype=F64)
    for other in (diag, iso):
        torch.testing.assert_close(other.log_prob(x), full.log_prob(x))
        torch.testing.assert_close(other.score(x), full.score(x))
    assert torch.allclose(full.weights, torch.tensor([0.25, 0.75], dtype=F64))
    shared = GaussianMixture([1, 1], means, 0.3)
    assert shared.covs.shape == (2, 2, 2) and shared.dtype == torch.get_default_dtype()


@pytest.mark.parametrize("kwargs, match", [
    (dict(weights=[1.0, -1.0]), "weights"),
    (dict(weights=[1.0, 0.0]), "weights"),
    (dict(weights=[1.0, 1.0, 1.0]), "weights"),
    (dict(weights=[1.0, float("nan")]), "weights"),
    (dict(means=[0.0, 1.0]), "means"),
    (dict(means=[[0.0, float("inf")], [1.0, 1.0]]), "means"),
    (dict(covs=[[[1.0, 2.0], [2.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]]), "positive definite"),
    (dict(covs=[[[1.0, 0.5], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]]), "symmetric"),
    (dict(covs=[[1.0, 1.0], [1.0, -1.0]]), "covs"),
    (dict(covs=[1.0, 0.0]), "isotropic variances must be positive"),     # 0 is refused by name, not by Cholesky
    (dict(covs=[[1.0, 1.0], [1.0, 0.0]]), "diagonal variances must be positive"),
    (dict(means=torch.zeros(0, 2), weights=[], covs=1.0), "`means` must have shape"),   # K = 0
    (dict(means=torch.zeros(2, 0)), "`means` must have shape"),                           # D = 0
    (dict(covs=[1.0, 1.0, 1.0]), "covs"),
    (dict(covs=torch.ones(2, 3, 3)), "covs"),
])
def test_bad_constructor_arguments(kwargs, match):
    args = dict(weights=[1.0, 1.0], means=[[0.0, 0.0], [1.0, 1.0]], covs=[1.0, 1.0]) | kwargs
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**args)


def test_bad_call_arguments():
    gm, sde = ring_of_gaussians(dtype=F64), SDES["vp"]
    x = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="x"):
        gm.log_prob(torch.zeros(4, 3, dtype=F64))
    with pytest.raises(ValueError, match="x"):
        gm.score(torch.zeros(4, dtype=F64))
    with pytest.raises(TypeError, match="x"):
        gm.score(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="t"):
        gm.marginal_score(x, torch.zeros(3, dtype=F64), sde)
    with pytest.raises(ValueError, match="t"):
        gm.marginal_score(x, torch.full((4,), 1.5, dtype=F64), sde)
    with pytest.raises(ValueError, match="t"):
        gm.marginal_log_prob(x, torch.full((4,), -0.1, dtype=F64), sde)
    one_d = GaussianMixture([1.0], [[0.0]], 1.0, dtype=F64)
    with pytest.raises(ValueError, match="x"):                             # points are (B, *D) with ndim >= 2, also for D = 1
        one_d.score(torch.zeros(4, dtype=F64))
    assert one_d.score(torch.zeros(4, 1, dtype=F64)).shape == (4, 1)
    with pytest.raises(ValueError, match="sigma"):
        gm.marginal(1.0, -0.5)
    with pytest.raises(ValueError, match="both be zero"):
        gm.marginal(0.0, 0.0)
    with pytest.raises(ValueError, match="n"):
        gm.sample(-1)
    with pytest.raises(ValueError, match="name"):
        make_2d_dataset("spirals", 10)
    with pytest.raises(ValueError, match="k"):
        ring_of_gaussians(k=0)


def test_same_seed_same_samples():
    gm = random_mixture(3, 2, torch.Generator().manual_seed(17))
    for stratified in (False, True):
        a = gm.sample(100, generator=torch.Generator().manual_seed(18), stratified=stratified)
        b = gm.sample(100, generator=torch.Generator().manual_seed(18), stratified=stratified)
        assert torch.equal(a, b)
    for name in DATASETS_2D:
        assert torch.equal(make_2d_dataset(name, 50, torch.Generator().manual_seed(19)),
                           make_2d_dataset(name, 50, torch.Generator().manual_seed(19)))


@pytest.mark.parametrize("name", list(DATASETS_2D))
def test_datasets_are_standardized(name):
    n = 40_000
    x = make_2d_dataset(name, n, torch.Generator().manual_seed(20), dtype=F64)
    assert x.shape == (n, 2) and x.dtype == F64 and torch.isfinite(x).all()
    assert ((x.mean(0) / (x.var(0) / n).sqrt()).abs() < 4.5).all()
    xc = x - x.mean(0)
    se = (xc.square().sum(1) / 2).std() / math.sqrt(n)
    assert abs(x.var(0).mean() - 1) < 4.5 * se
    assert make_2d_dataset(name, 0).shape == (0, 2)


# ---------------------------------------------------------------------------------------------------------------------
# dtype x device matrix

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_device_matrix(device, dtype):
    gm = random_mixture(3, 4, torch.Generator().manual_seed(21), dtype=F64)
    gmd = gm.to(device=device, dtype=dtype)
    assert gmd.dtype == dtype and gmd.device.type == device
    x = gmd.sample(64, generator=torch.Generator(device).manual_seed(22))
    assert x.shape == (64, 4) and x.dtype == dtype and x.device.type == device
    ximg = x.reshape(64, 1, 2, 2)                                     # any rank with D numbers per sample
    t = torch.rand(64, generator=torch.Generator(device).manual_seed(23), dtype=dtype, device=device) * 0.999 + 1e-3
    tol = 1e-10 if dtype == F64 else 2e-4
    for sde in SDES.values():
        s = gm.score_fn(sde)(ximg, t)                                 # float64 parameters, evaluated in x's dtype/device
        assert s.shape == ximg.shape and s.dtype == dtype and s.device.type == device
        ref = gm.marginal_score(x.cpu().double(), t.cpu().double(), sde).reshape(64, 1, 2, 2)
        assert _rel(s.cpu().double(), ref) < tol
        lp = gmd.marginal_log_prob(ximg, t, sde)
        assert lp.shape == (64,) and lp.dtype == dtype and lp.device.type == device
    for name in DATASETS_2D:
        d = make_2d_dataset(name, 16, torch.Generator(device).manual_seed(24), dtype=dtype, device=device)
        assert d.dtype == dtype and d.device.type == device
    ring = ring_of_gaussians(dtype=dtype, device=device)
    assert ring.score(ring.sample(8, generator=torch.Generator(device).manual_seed(25))).device.type == device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generator_on_the_wrong_device():
    gm = ring_of_gaussians(device="cuda")
    with pytest.raises(ValueError, match="generator"):
        gm.sample(4, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------ regressions found by tests/test_properties.py
def test_half_precision_mixture_is_evaluated_in_float32():
    "float16/bfloat16 failed inside torch ('cholesky_cpu' not implemented for 'Half'); now float32 inside, one rounding out."
    import sde_diffusion.sde as sde_lib
    gm = GaussianMixture([0.3, 0.7], [[0.0, 1.0], [2.0, -1.0]], [[[1.0, 0.3], [0.3, 0.5]], [[0.4, 0.0], [0.0, 2.0]]],
                         dtype=torch.float64)
    x = torch.tensor([[0.5, 0.5], [1.0, -2.0], [3.0, 0.0]], dtype=torch.float64)
    for dtype in (torch.float16, torch.bfloat16):
        xh = x.to(dtype)
        for fn, ref in ((gm.log_prob, gm.log_prob(xh.double())), (gm.score, gm.score(xh.double())),
                        (lambda x: gm.marginal_score(x, 0.3, sde_lib.VPSDE()), gm.marginal_score(xh.double(), 0.3, sde_lib.VPSDE()))):
            out = fn(xh)
            assert out.dtype == dtype
            torch.testing.assert_close(out.double(), ref, rtol=torch.finfo(dtype).eps, atol=torch.finfo(dtype).eps)
        s = gm.to(dtype=dtype).sample(100, generator=torch.Generator().manual_seed(0))
        assert s.dtype == dtype and torch.isfinite(s).all()


def test_mixture_rejects_bools_bad_sde_and_bool_times_by_name():
    "[True, True] weights became [1, 1]; a string `sde` gave AttributeError; bool times were cast to 0/1."
    with pytest.raises(TypeError, match="`weights`"):
        GaussianMixture([True, True], [[0.0], [1.0]], 1.0)
    gm = GaussianMixture([1.0], [[0.0, 1.0]], 1.0)
    x = torch.zeros(3, 2)
    with pytest.raises(TypeError, match="`sde`"):
        gm.marginal_score(x, 0.5, "VPSDE")
    from sde_diffusion.sde import VPSDE
    with pytest.raises(TypeError, match="`t`"):
        gm.marginal_log_prob(x, torch.ones(3, dtype=torch.bool), VPSDE())


def test_mixture_on_meta_points_gives_shapes():
    "Meta points (shapes only) failed on `bad.any()` / the Cholesky info check; now they give meta results of the right shape."
    from sde_diffusion.sde import VESDE
    gm = GaussianMixture([1.0, 2.0], [[0.0, 1.0], [1.0, 0.0]], 1.0)
    x = torch.empty(4, 1, 2, device="meta")
    s = gm.marginal_score(x, torch.empty(4, device="meta"), VESDE())
    assert s.shape == x.shape and s.device.type == "meta"
    assert gm.log_prob(x).shape == (4,)


# ------------------------------------------------------------------ boundaries found by mutation testing (tools/mutate.py)
def _two_unit_gaussians(mu2):
    "Equal weights, identity covariances, means 0 and `mu2` in 2-D: at x = 0 the log-joints differ by -|mu2|^2 / 2."
    return GaussianMixture([1.0, 1.0], torch.tensor([[0.0, 0.0], mu2], dtype=F64), 1.0)


def test_terms_more_than_80_below_the_top_log_joint_are_exactly_zero():
    "Eq. `eq-toy-lse`: a term e^(a_k - a*) below e^-80 (~2e-35, far below float64 resolution) is set to exactly 0."
    x = torch.zeros(1, 2, dtype=F64)
    for gap in (79.5, 80.5):
        gm = _two_unit_gaussians([12.0, math.sqrt(2 * gap - 144.0)])
        r, s = gm.responsibilities(x), gm.score(x)
        r2 = math.exp(-gap) / (1 + math.exp(-gap)) if gap < 80 else 0.0
        # score at the first mean: -sum_k r_k (x - mu_k) = r_2 mu_2. Rounding of |mu_2|^2 / 2 ~ 1e-14 in the exponent,
        # so the kept term is exact to a relative 1e-12; the dropped one is exactly 0.
        assert r[0, 0].item() == 1.0 and abs(r[0, 1].item() - r2) <= 1e-12 * r2
        assert (s[0] - r2 * gm.means[1]).abs().max().item() <= 1e-12 * r2 * 12
    # the construction of the boundary case below: |mu|^2 / 2 = (144 + 16) / 2 = 80 and the shifted log-joint is exactly -80
    logits = _two_unit_gaussians([12.0, 4.0])._logits(x)[0]
    assert (logits[0, 1] - logits[0, 0]).item() == -80.0


def test_a_term_at_exactly_exp_minus_80_is_kept_as_documented():
    "Only terms below exp(-80) are zeroed (found by mutation testing: `a > floor` dropped the term at exactly -80)."
    r = _two_unit_gaussians([12.0, 4.0]).responsibilities(torch.zeros(1, 2, dtype=F64))
    assert abs(r[0, 1].item() - math.exp(-80) / (1 + math.exp(-80))) <= 1e-12 * math.exp(-80)


def test_responsibilities_are_the_posterior_component_probabilities():
    "r_k(x) = w_k N(x; mu_k, Sigma_k) / p_0(x) (eq. `eq-toy-score`), against torch.distributions, shape (B, K)."
    gm = random_mixture(4, 3, torch.Generator().manual_seed(30), dtype=F64)
    g = torch.Generator().manual_seed(31)
    x = torch.cat([gm.sample(50, generator=g), gm.mean() + 5 * torch.randn(50, 3, generator=g, dtype=F64)])
    a = gm.weights.log() + MultivariateNormal(gm.means, covariance_matrix=gm.covs).log_prob(x[:, None, :])
    r = gm.responsibilities(x)
    assert r.shape == (100, 4) and ((r.sum(1) - 1).abs() <= 4 * 2**-52).all()
    # an absolute error delta in the log-joints moves a responsibility by at most 2 delta; delta <= 16 ulps of max |a|
    assert (r - (a - a.logsumexp(1, keepdim=True)).exp()).abs().max() <= 2 * 16 * 2**-52 * a.abs().max()


def test_constructor_and_factor_checks_at_their_boundaries():
    means = [[0.0, 0.0], [1.0, 1.0]]
    eye, zero = [[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]
    # an all-zero component is symmetric (asymmetry 0 is not above 0 * tolerance) and fails Cholesky, by its index
    with pytest.raises(ValueError, match="positive definite: component 0"):
        GaussianMixture([1, 1], means, [zero, eye])
    with pytest.raises(ValueError, match="symmetric: component 1"):                    # the first asymmetric one
        GaussianMixture([1, 1], means, [zero, [[1.0, 0.5], [0.0, 1.0]]])
    # asymmetry below sqrt(eps) ~ 1.5e-8 relative to the largest entry is rounding noise: accepted and averaged away
    near = [[100.0, 1.0 + 1e-7], [1.0, 100.0]]                                         # 1e-7 / 100 = 1e-9 relative
    gm = GaussianMixture([1.0], [[0.0, 0.0]], [near], dtype=F64)
    assert torch.equal(gm.covs[0], 0.5 * (torch.tensor(near, dtype=F64) + torch.tensor(near, dtype=F64).T))
    with pytest.raises(ValueError, match="symmetric: component 1"):                    # only the clearly asymmetric one
        GaussianMixture([1, 1], means, [near, [[1.0, 0.5], [0.0, 1.0]]], dtype=F64)
    # Cholesky failing at its first pivot (info = 1), in component 1
    with pytest.raises(ValueError, match="component 1 is not"):
        GaussianMixture([1, 1], means, [eye, [[-1.0, 0.0], [0.0, 1.0]]])
    # SPD in float64, not in float32: the variance 1e-50 underflows to 0 (first pivot) when evaluated at float32 points
    tiny = GaussianMixture([1, 1], means, [[1e-50, 1.0], [1.0, 1.0]], dtype=F64)
    assert torch.isfinite(tiny.log_prob(torch.ones(3, 2, dtype=F64))).all()
    with pytest.raises(ValueError, match="wider dtype"):
        tiny.log_prob(torch.ones(3, 2))


def test_stratified_counts_are_the_closest_integers_and_tiny_samples():
    "Largest remainders: the counts minimise sum_k (c_k - n w_k)^2 among integer vectors summing to n (brute force)."
    gm = GaussianMixture([0.64, 0.27, 0.09], [[-1.0], [0.0], [1.0]], 0.1, dtype=F64)
    for n in range(21):
        _, labels = gm.sample(n, generator=torch.Generator().manual_seed(32), stratified=True, return_labels=True)
        counts = torch.bincount(labels, minlength=3).double()
        best = min(((a - n * 0.64) ** 2 + (b - n * 0.27) ** 2 + (n - a - b - n * 0.09) ** 2
                    for a in range(n + 1) for b in range(n + 1 - a)))
        assert ((counts - n * gm.weights) ** 2).sum().item() <= best + 1e-12, (n, counts)
    for n in (0, 1):      # the multinomial path at its smallest sizes
        for stratified in (False, True):
            x, labels = gm.sample(n, generator=torch.Generator().manual_seed(33), stratified=stratified, return_labels=True)
            assert x.shape == (n, 1) and labels.shape == (n,) and torch.isfinite(x).all()


class _Interpolant:
    "x_t = (1 - t) x_0 + t z: alpha(1) = 0, and p_1 = N(0, I) whatever the data."
    T = 1.0

    def marginal_coeffs(self, t):
        return 1 - t, t


class _Degenerate:
    "alpha = sigma = 0: a point mass, no density."
    T = 1.0

    def marginal_coeffs(self, t):
        return torch.zeros_like(t), torch.zeros_like(t)


def test_marginal_with_vanishing_alpha_is_the_noise_and_a_point_mass_is_refused():
    gm = random_mixture(3, 2, torch.Generator().manual_seed(34), dtype=F64)
    x = 2 * torch.randn(20, 2, generator=torch.Generator().manual_seed(35), dtype=F64)
    t = torch.ones(20, dtype=F64)
    # |U_k^T x|^2 = |x|^2 up to rounding: relative 1e-14
    assert _rel(gm.marginal_log_prob(x, t, _Interpolant()), -0.5 * x.square().sum(1) - math.log(2 * math.pi)) < 1e-14
    assert _rel(gm.marginal_score(x, t, _Interpolant()), -x) < 1e-14
    assert _rel(gm.marginal_score(x, 0.5 * t, _Interpolant()), gm.marginal(0.5, 0.5).score(x)) < 1e-12
    with pytest.raises(ValueError, match="valid marginal"):
        gm.marginal_score(x, t, _Degenerate())
    with pytest.raises(ValueError, match=r"sample 1 has t = 1\.5"):   # an SDE that does not check t: the first bad one is named
        gm.marginal_score(x[:4], torch.tensor([0.5, 1.5, 0.5, 0.5], dtype=F64), _Interpolant())


def test_an_empty_batch_gives_empty_results():
    "An empty batch (0, *D), which sample(0) returns, gives empty results (it raised IndexError: found by mutation testing)."
    gm = ring_of_gaussians(dtype=F64)
    x = gm.sample(0)
    assert gm.log_prob(x).shape == (0,) and gm.score(x).shape == (0, 2)
    assert gm.marginal_score(x, torch.zeros(0, dtype=F64), SDES["vp"]).shape == (0, 2)


def test_ring_and_grid_layouts_and_their_documented_defaults():
    ring = ring_of_gaussians(dtype=F64)                 # eight components, radius 2, std 0.25
    angles = 2 * math.pi * torch.arange(8, dtype=F64) / 8
    torch.testing.assert_close(ring.means, 2 * torch.stack([angles.cos(), angles.sin()], -1), rtol=0, atol=1e-15)
    assert torch.equal(ring.covs, torch.eye(2, dtype=F64).expand(8, 2, 2) * 0.0625)
    one = ring_of_gaussians(k=1, radius=3.0, dtype=F64)  # k = 1 is valid: one Gaussian at (radius, 0)
    assert one.K == 1 and torch.equal(one.means, torch.tensor([[3.0, 0.0]], dtype=F64))

    def layout(gm):
        return sorted(map(tuple, gm.means.tolist())), gm.covs

    for kw, coords, var in ((dict(), [-2.0, 0.0, 2.0], 0.0625),    # defaults: 3 x 3, spacing 2, std 0.25
                            (dict(side=4, spacing=1.5, std=0.1), [-2.25, -0.75, 0.75, 2.25], 0.1**2),
                            (dict(side=1), [0.0], 0.0625)):
        means, covs = layout(grid_of_gaussians(dtype=F64, **kw))
        assert means == sorted((a, b) for a in coords for b in coords), kw
        assert torch.equal(covs, torch.eye(2, dtype=F64).expand(len(coords) ** 2, 2, 2) * var)
    with pytest.raises(ValueError, match="`side`"):
        grid_of_gaussians(side=0)


def test_random_mixture_parameters_follow_their_construction():
    """Means ~ N(0, spread^2 I), spread 3 by default; covs 0.5 A A^T + 0.05 I with A_ij ~ N(0, 1/d), so E Sigma_k = 0.55 I;
    weights proportional to 0.5 + U(0, 1)."""
    k, d = 500, 4
    gm = random_mixture(k, d, torch.Generator().manual_seed(36), dtype=F64)
    m2 = gm.means.square().flatten() / 9
    assert abs(m2.mean().item() - 1) < 4.5 * math.sqrt(2 / m2.numel())       # chi^2_1 / n: mean 1, variance 2 / n
    z = (gm.covs.mean(0) - 0.55 * torch.eye(d, dtype=F64)) / (gm.covs.std(0) / math.sqrt(k))
    assert z.abs().max() < 4.5
    assert torch.linalg.eigvalsh(gm.covs).min() > 0.05 - 1e-12                  # A A^T is PSD
    # the ratio of two weights lies in [1/3, 3]; with k = 500 the extremes come within 0.05 of 0.5 and 1.5 except with
    # probability 2 * 0.95^500 ~ 1e-11, so max/min > 1.45 / 0.55 > 2.6
    ratio = (gm.weights.max() / gm.weights.min()).item()
    assert 2.6 < ratio <= 3 * (1 + 1e-12)


def _population_constants():
    "Mean and total variance of each noise-free dataset, from its construction (exact values)."
    a, b = 1.5 * math.pi, 4.5 * math.pi
    # swiss roll: E[s cos s] = [s sin s + cos s]_a^b / (b - a) = (b + a) / (b - a) = 2, E[s sin s] = [sin s - s cos s] / (b - a)
    # = 2 / (3 pi), E[s^2] = (a^2 + a b + b^2) / 3 = 9.75 pi^2
    swiss_mean = (2.0, 2 / (3 * math.pi))
    return {"moons": ((0.5, 0.25), 0.75 + 9 / 16 - 1 / math.pi),   # var x = 3/4, var y = 9/16 - 1/pi
            "swiss_roll": (swiss_mean, 9.75 * math.pi**2 - swiss_mean[0] ** 2 - swiss_mean[1] ** 2),
            "rings": ((0.0, 0.0), 10.0),                             # E r^2 = sum r^3 / sum r = 100 / 10
            "checkerboard": ((0.0, 0.0), 8 / 3)}                     # U(-2, 2) in each coordinate: 4/3 each


def _raw(name, x):
    "Undo the standardization with the population constants: the points in the dataset's own coordinates."
    mean, total_var = _population_constants()[name]
    return x * math.sqrt(total_var / 2) + torch.tensor(mean, dtype=x.dtype)


def test_datasets_without_noise_lie_on_their_curves():
    n = 4000
    # the standardization and its inverse round at a few ulps of |p| <= 4.5 pi: 1e-14; 1e-12 leaves a margin of 100
    tol = 1e-12
    g = lambda: torch.Generator().manual_seed(37)
    p = _raw("swiss_roll", make_2d_dataset("swiss_roll", n, g(), dtype=F64, noise=0.0))
    s = p.norm(dim=1)                                              # the point (s cos s, s sin s) has norm s ...
    assert (s > 1.5 * math.pi - tol).all() and (s < 4.5 * math.pi + tol).all()
    dphi = torch.remainder(torch.atan2(p[:, 1], p[:, 0]) - s + math.pi, 2 * math.pi) - math.pi
    assert dphi.abs().max() < tol                                   # ... and angle s (mod 2 pi)
    assert abs(s.mean().item() - 3 * math.pi) < 4.5 * 3 * math.pi / math.sqrt(12 * n)   # s ~ U(1.5 pi, 4.5 pi)
    p = _raw("rings", make_2d_dataset("rings", n, g(), dtype=F64, noise=0.0))
    r = p.norm(dim=1)
    assert (r - r.round()).abs().max() < tol
    for radius in range(1, 5):                                       # P(ring) = radius / 10
        frac, q = (r.round() == radius).double().mean().item(), radius / 10
        assert abs(frac - q) < 4.5 * math.sqrt(q * (1 - q) / n)
    p = _raw("moons", make_2d_dataset("moons", n, g(), dtype=F64, noise=0.0))
    upper = (p.norm(dim=1) - 1).abs()                                # (cos t, sin t), t in [0, pi]
    lower = ((p - torch.tensor([1.0, 0.5], dtype=F64)).norm(dim=1) - 1).abs()   # (1 - cos t, 1/2 - sin t)
    on_upper = upper < tol
    assert (on_upper | (lower < tol)).all() and (p[on_upper, 1] > -tol).all() and (p[~on_upper, 1] < 0.5 + tol).all()
    assert abs(on_upper.double().mean().item() - 0.5) < 4.5 * math.sqrt(0.25 / n)


@pytest.mark.parametrize("name", ["moons", "swiss_roll", "rings"])
def test_dataset_noise_is_isotropic_and_in_the_scale(name):
    "With noise 1e3 the points are ~ the noise: independent N(0, sigma^2) coordinates, and the scale still includes 2 sigma^2."
    n, sigma = 4000, 1e3
    x = make_2d_dataset(name, n, torch.Generator().manual_seed(38), dtype=F64, noise=sigma)
    # mean coordinate variance: 1 in population, whatever the noise. Its SE for independent N(0, 1) coordinates is
    # sqrt(Var((x^2 + y^2) / 2) / n) = 1 / sqrt(n) (not estimated from the sample: a heavy tail must not widen it); the
    # noise-free part changes the kurtosis by O(Var / sigma^2) < 1e-4
    assert abs(x.var(0).mean().item() - 1) < 4.5 / math.sqrt(n) + 1e-4
    # correlation: SE 1/sqrt(n); the noise-free part adds |Cov| / sigma^2 <= (4.5 pi)^2 / 1e6 < 2e-4
    assert abs(torch.corrcoef(x.T)[0, 1].item()) < 4.5 / math.sqrt(n) + 2e-4


def test_dataset_coins_are_exactly_fair_on_the_grid_of_uniforms(monkeypatch):
    """torch.rand draws from the grid k / 2^m, k < 2^m, and `u < 1/2` takes exactly half of it: a fair coin. Fed the grid
    k / 16, 8 of the 16 points go each way (`u <= 1/2` would send 9 one way)."""
    monkeypatch.setattr(torch, "rand", lambda n, generator=None, dtype=None, device=None:
                        torch.arange(n, dtype=dtype, device=device) / n)
    p = _raw("moons", make_2d_dataset("moons", 16, dtype=F64, noise=0.0))
    lower = ((p - torch.tensor([1.0, 0.5], dtype=F64)).norm(dim=1) - 1).abs() < 1e-12
    assert lower.sum().item() == 8
    p = _raw("checkerboard", make_2d_dataset("checkerboard", 16, dtype=F64))
    assert (p[:, 1] < -1 / 32).sum().item() == 8                       # y - floor(x) mod 2 in [-2, -1) for the lower squares


def test_documented_dataset_noise_defaults():
    for name, noise in (("moons", 0.05), ("swiss_roll", 0.5), ("rings", 0.08)):
        assert torch.equal(make_2d_dataset(name, 32, torch.Generator().manual_seed(39)),
                           make_2d_dataset(name, 32, torch.Generator().manual_seed(39), noise=noise)), name
