"""The Gaussian-mixture oracle: exact scores against autograd and torch.distributions, marginals under VP/sub-VP/VE
against Monte Carlo, stability for far-apart components and tiny variances, bad input, a dtype x device matrix."""
import math

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from sde_diffusion.sde import SubVPSDE, VESDE, VPSDE
from sde_diffusion.toy import (DATASETS_2D, GaussianMixture, grid_of_gaussians, make_2d_dataset, random_mixture,
                               ring_of_gaussians)

from conftest import DEVICES

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
    (dict(covs=[1.0, 0.0]), "covs"),
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

@pytest.mark.parametrize("device", DEVICES)
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
