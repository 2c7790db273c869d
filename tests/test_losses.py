"""Score-matching losses: the denoising loss at the exact score equals its irreducible constant (VP, sub-VP, VE), the
excess over it is the explicit loss, DSM and ESM have the same gradients, ISM - ESM is a constant, the weightings, a
shape x dtype x device matrix, reproducibility with a generator, and clear errors."""
import math

import pytest
import torch

from sde_diffusion.score_matching import (WEIGHTINGS, dsm_loss, esm_loss, irreducible_dsm_constant, ism_loss, perturb,
                                  weighting)
from sde_diffusion.sde import SubVPSDE, VESDE, VPSDE
from sde_diffusion.solvers import batch_broadcast
from sde_diffusion.toy import random_mixture, ring_of_gaussians


F64 = torch.float64
SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
RING = ring_of_gaussians(dtype=F64)


def _mean_se(v):
    return v.mean().item(), v.std().item() / math.sqrt(v.numel())


def _gaussian_score(sde, var0=1.0):
    "Exact score of p_t for data N(0, var0 I) of any shape."
    def score(x, t):
        alpha, sigma = sde.marginal_coeffs(t)
        return -x / batch_broadcast(alpha**2 * var0 + sigma**2, x)
    return score


# ---------------------------------------------------------------------------------------------------------------------
# the identities, with the exact score of the ring (Monte Carlo, paired samples, 4 standard errors)

@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("w", ["sigma2", "likelihood"])
def test_exact_score_dsm_equals_constant(sde_name, w, device):
    sde, n, ring = SDES[sde_name](), 20_000, RING.to(device=device)
    x0 = ring.sample(n, generator=torch.Generator(device).manual_seed(1))
    exact = ring.score_fn(sde)
    g = lambda: torch.Generator(device).manual_seed(2)
    loss = dsm_loss(sde, exact, x0, weighting=w, generator=g(), reduce="none")
    const = irreducible_dsm_constant(sde, exact, x0, weighting=w, generator=g(), reduce="none")
    assert loss.device.type == const.device.type == device
    d, se = _mean_se(loss - const)
    assert abs(d) < 4 * se, (d, se)
    assert const.mean() > 10 * se                                       # the constant is not zero


@pytest.mark.parametrize("sde_name", list(SDES))
def test_exact_score_dsm_equals_constant_at_fixed_t(sde_name):
    "At fixed t and lambda = 1: E|grad log p_t + z/sigma|^2 / 2 = (D/sigma^2 - E|grad log p_t|^2) / 2."
    sde, n = SDES[sde_name](), 20_000
    x0 = RING.sample(n, generator=torch.Generator().manual_seed(3))
    exact = RING.score_fn(sde)
    for tv in (0.01, 0.3):
        t = torch.full((n,), tv, dtype=F64)
        kw = dict(weighting="none", t=t, reduce="none")
        loss = dsm_loss(sde, exact, x0, generator=torch.Generator().manual_seed(4), **kw)
        const = irreducible_dsm_constant(sde, exact, x0, generator=torch.Generator().manual_seed(4), **kw)
        d, se = _mean_se(loss - const)
        assert abs(d) < 4 * se, (tv, d, se)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_dsm_excess_is_esm(sde_name):
    sde, n = SDES[sde_name](), 20_000
    x0 = RING.sample(n, generator=torch.Generator().manual_seed(5))
    exact = RING.score_fn(sde)
    wrong = lambda x, t: 0.8 * exact(x, t) + 0.3 * torch.stack([x[:, 1].sin(), x[:, 0].cos()], -1)
    g = lambda: torch.Generator().manual_seed(6)
    excess = dsm_loss(sde, wrong, x0, generator=g(), reduce="none") - dsm_loss(sde, exact, x0, generator=g(), reduce="none")
    p = perturb(sde, x0, generator=g())
    esm = esm_loss(wrong, exact, p.x_t, p.t, sde=sde, weighting="sigma2", reduce="none")
    d, se = _mean_se(excess - esm)
    assert abs(d) < 4 * se and esm.mean() > 10 * se


@pytest.mark.parametrize("sde_name,w", [("vp", "sigma2"), ("subvp", "likelihood"), ("ve", "sigma2")])
def test_dsm_and_esm_gradients_agree(sde_name, w):
    sde = SDES[sde_name]()
    exact = RING.score_fn(sde)
    theta = [torch.tensor(0.7, dtype=F64), torch.tensor([[0.1, -0.2], [0.3, 0.05]], dtype=F64), torch.tensor([0.2, -0.1], dtype=F64)]
    theta = [p.requires_grad_(True) for p in theta]
    s_theta = lambda x, t: theta[0] * exact(x, t) + x @ theta[1].T + theta[2]
    diffs, grads = [], []
    for k in range(20):
        xb = RING.sample(2000, generator=torch.Generator().manual_seed(100 + k))
        g = lambda: torch.Generator().manual_seed(200 + k)
        p = perturb(sde, xb, generator=g())
        gd = torch.autograd.grad(dsm_loss(sde, s_theta, xb, weighting=w, generator=g()), theta)
        ge = torch.autograd.grad(esm_loss(s_theta, exact, p.x_t, p.t, sde=sde, weighting=w), theta)
        flat = lambda gs: torch.cat([v.reshape(-1) for v in gs])
        diffs.append(flat(gd) - flat(ge))
        grads.append(flat(ge))
    diffs, grads = torch.stack(diffs), torch.stack(grads)
    se = diffs.std(0) / math.sqrt(len(diffs))
    assert ((diffs.mean(0) / se).abs() < 4).all(), diffs.mean(0) / se
    assert (grads.mean(0).abs() > 10 * se).all()                        # the gradients themselves are resolved


def test_ism_minus_esm_is_constant():
    mix = random_mixture(3, 2, torch.Generator().manual_seed(7), dtype=F64)
    sde, tv, n = VPSDE(), 0.1, 20_000
    alpha, sigma = (c.item() for c in sde.marginal_coeffs(torch.tensor([tv], dtype=F64)))
    x = mix.marginal(alpha, sigma).sample(n, generator=torch.Generator().manual_seed(8))
    t = torch.full((n,), tv, dtype=F64)
    exact = mix.score_fn(sde)
    s_true = exact(x, t)
    half_fisher = 0.5 * s_true.square().sum(1)
    gaps = []
    for a, W, b in ((1.0, [[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0]), (0.5, [[0.3, 0.1], [-0.1, 0.3]], [0.0, 0.0]),
                    (0.0, [[-1.0, 0.0], [0.0, -1.0]], [1.0, -1.0])):
        a, W, b = (torch.tensor(v, dtype=F64) for v in (a, W, b))
        s_theta = lambda x, t: a * exact(x, t) + x @ W.T + b
        gap = ism_loss(s_theta, x, t, reduce="none") - esm_loss(s_theta, s_true, x, t, reduce="none")
        m, se = _mean_se(gap + half_fisher)                              # = tr grad s + <s, grad log p>, mean zero
        assert abs(m) < 4 * se, (m, se)
        gaps.append(gap)
    for gap in gaps[1:]:
        m, se = _mean_se(gap - gaps[0])
        assert abs(m) < 4 * se


def test_hutchinson_is_unbiased_and_exact_for_diagonal_jacobians():
    mix = random_mixture(3, 4, torch.Generator().manual_seed(9), dtype=F64)
    sde, n = VPSDE(), 10_000
    x = mix.sample(n, generator=torch.Generator().manual_seed(10))
    t = torch.full((n,), 0.05, dtype=F64)
    exact = mix.score_fn(sde)
    ex = ism_loss(exact, x, t, reduce="none")
    hu = ism_loss(exact, x, t, divergence="hutchinson", num_probes=2, generator=torch.Generator().manual_seed(11), reduce="none")
    m, se = _mean_se(hu - ex)
    assert abs(m) < 4 * se and se > 0
    diag = lambda x, t: -x**3                                           # diagonal Jacobian: Rademacher probes are exact
    torch.testing.assert_close(ism_loss(diag, x, t, divergence="hutchinson", generator=torch.Generator().manual_seed(12)),
                               ism_loss(diag, x, t))


def test_ism_exact_trace_against_closed_form():
    "For s(x) = A x + b (any rank), tr grad s = tr A."
    A = torch.tensor([[1.0, 2.0, 0.0], [0.5, -3.0, 1.0], [0.0, 0.2, 0.7]], dtype=F64)
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(13), dtype=F64)
    s = lambda x, t: x @ A.T + 1.0
    per = ism_loss(s, x, torch.zeros(7, dtype=F64), reduce="none")
    torch.testing.assert_close(per, torch.trace(A) + 0.5 * s(x, None).square().sum(1))


def test_gradients_flow_to_parameters():
    net = torch.nn.Linear(3, 3).double()
    x0 = torch.randn(16, 3, generator=torch.Generator().manual_seed(14), dtype=F64)
    t = torch.full((16,), 0.3, dtype=F64)
    for loss in (dsm_loss(VPSDE(), lambda x, t: net(x), x0, generator=torch.Generator().manual_seed(15)),
                 ism_loss(lambda x, t: net(x), x0, t), esm_loss(lambda x, t: net(x), -x0, x0, t)):
        net.zero_grad()
        loss.backward()
        assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------------
# weightings and the noise-prediction form

def test_weightings():
    t = torch.linspace(1e-4, 1, 50, dtype=F64, requires_grad=True)
    for sde in (VPSDE(), SubVPSDE(), VESDE()):
        alpha, sigma = sde.marginal_coeffs(t)
        torch.testing.assert_close(weighting(sde, "sigma2", t), sigma**2)
        torch.testing.assert_close(weighting(sde, "none", t), torch.ones_like(t))
        g2 = weighting(sde, "likelihood", t)
        torch.testing.assert_close(g2, sde.diffusion(torch.zeros(50, 1, dtype=F64), t)[:, 0] ** 2)
        dlog = torch.autograd.grad((sigma**2 / alpha**2).log().sum(), t)[0]   # g^2 = sigma^2 d/dt log(sigma^2/alpha^2)
        torch.testing.assert_close(g2, sigma**2 * dlog, rtol=1e-10, atol=0)
    torch.testing.assert_close(weighting(VPSDE(), lambda t: 2 * t, t), 2 * t)
    assert set(WEIGHTINGS) == {"sigma2", "likelihood", "none"}


@pytest.mark.parametrize("w", ["none", "likelihood", "sigma2"])
def test_loss_formula_by_hand(w):
    sde = VPSDE()
    x0 = torch.randn(32, 2, 3, generator=torch.Generator().manual_seed(16), dtype=F64)
    score = lambda x, t: -x * (1 + batch_broadcast(t, x))
    per = dsm_loss(sde, score, x0, weighting=w, eps=1e-3, generator=torch.Generator().manual_seed(17), reduce="none")
    g = torch.Generator().manual_seed(17)                                # t first, then z
    t = 1e-3 + (1 - 1e-3) * torch.rand(32, generator=g, dtype=F64)
    z = torch.randn(32, 2, 3, generator=g, dtype=F64)
    alpha, sigma = sde.marginal_coeffs(t)
    xt = alpha[:, None, None] * x0 + sigma[:, None, None] * z
    lam = weighting(sde, w, t)
    ref = lam * 0.5 * (score(xt, t) + z / sigma[:, None, None]).square().sum((1, 2))
    torch.testing.assert_close(per, ref)
    torch.testing.assert_close(dsm_loss(sde, score, x0, weighting=w, eps=1e-3, generator=torch.Generator().manual_seed(17)), ref.mean())
    torch.testing.assert_close(dsm_loss(sde, score, x0, weighting=w, eps=1e-3, generator=torch.Generator().manual_seed(17), reduce="sum"), ref.sum())


def test_sigma2_weighting_is_noise_prediction():
    sde = VESDE()
    x0 = torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(18))
    score = lambda x, t: -x / (1 + batch_broadcast(t, x))
    loss = dsm_loss(sde, score, x0, generator=torch.Generator().manual_seed(19))
    p = perturb(sde, x0, generator=torch.Generator().manual_seed(19))
    z_hat = -batch_broadcast(p.sigma, x0) * score(p.x_t, p.t)
    torch.testing.assert_close(loss, 0.5 * (z_hat - p.z).square().sum((1, 2, 3)).mean())


def test_given_t_is_used_and_perturb_matches_marginal_prob():
    sde = SubVPSDE()
    x0 = torch.randn(8, 5, generator=torch.Generator().manual_seed(20), dtype=F64)
    t = torch.linspace(0.1, 0.9, 8, dtype=F64)
    p = perturb(sde, x0, t=t, generator=torch.Generator().manual_seed(21))
    mean, std = sde.marginal_prob(x0, t)
    torch.testing.assert_close(p.t, t)
    torch.testing.assert_close(p.x_t, mean + std * p.z)
    torch.testing.assert_close(p.z, torch.randn(8, 5, generator=torch.Generator().manual_seed(21), dtype=F64))


# ---------------------------------------------------------------------------------------------------------------------
# shapes x dtypes x devices, reproducibility

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(6,), (6, 2), (6, 3, 4, 4)], ids=["rank1", "rank2", "rank4"])
def test_shape_dtype_device_matrix(shape, dtype, device):
    x0 = torch.randn(shape, generator=torch.Generator(device).manual_seed(22), dtype=dtype, device=device)
    t = torch.full((shape[0],), 0.4, dtype=dtype, device=device)
    for sde in (VPSDE(), SubVPSDE(), VESDE()):
        score = _gaussian_score(sde)
        for w in WEIGHTINGS:
            per = dsm_loss(sde, score, x0, weighting=w, generator=torch.Generator(device).manual_seed(23), reduce="none")
            assert per.shape == (shape[0],) and per.dtype == dtype and per.device.type == device
            assert torch.isfinite(per).all() and (per >= 0).all()
            c = irreducible_dsm_constant(sde, score, x0, weighting=w, generator=torch.Generator(device).manual_seed(23))
            assert c.shape == () and c.dtype == dtype and c.device.type == device
        p = perturb(sde, x0, generator=torch.Generator(device).manual_seed(24))
        assert p.x_t.shape == shape and p.t.shape == p.sigma.shape == p.alpha.shape == (shape[0],)
        assert p.x_t.dtype == dtype and p.x_t.device.type == device
        e = esm_loss(score, score, x0, t, sde=sde, weighting="likelihood", reduce="none")
        assert e.shape == (shape[0],) and (e == 0).all() and e.dtype == dtype and e.device.type == device
        for div in ("exact", "hutchinson"):
            i = ism_loss(score, x0, t, divergence=div, generator=torch.Generator(device).manual_seed(25), reduce="none")
            assert i.shape == (shape[0],) and i.dtype == dtype and i.device.type == device
            D = x0[0].numel()
            alpha, sigma = sde.marginal_coeffs(t)
            v = alpha**2 + sigma**2                                    # tr grad s = -D/v for the Gaussian score
            ref = -D / v + 0.5 * score(x0, t).reshape(shape[0], -1).square().sum(1)
            torch.testing.assert_close(i, ref, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-4 if dtype == torch.float32 else 1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_devices_are_checked():
    sde = VPSDE()
    score, x0, t = _gaussian_score(sde), torch.randn(4, 2, device="cuda"), torch.full((4,), 0.5, device="cuda")
    with pytest.raises(ValueError, match="generator"):
        dsm_loss(sde, score, x0, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="generator"):
        ism_loss(score, x0, t, divergence="hutchinson", generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="`t` is on cpu"):
        dsm_loss(sde, score, x0, t=t.cpu())
    with pytest.raises(ValueError, match="`t` is on cpu"):
        esm_loss(score, score, x0, t.cpu())


def test_same_generator_same_loss():
    sde = VPSDE()
    x0 = RING.to(dtype=torch.float32).sample(128, generator=torch.Generator().manual_seed(29))
    score = RING.to(dtype=torch.float32).score_fn(sde)
    a = dsm_loss(sde, score, x0, generator=torch.Generator().manual_seed(30))
    b = dsm_loss(sde, score, x0, generator=torch.Generator().manual_seed(30))
    c = dsm_loss(sde, score, x0, generator=torch.Generator().manual_seed(31))
    assert a == b and a != c
    h = [ism_loss(score, x0, torch.full((128,), 0.2), divergence="hutchinson", generator=torch.Generator().manual_seed(32))
         for _ in range(2)]
    assert h[0] == h[1]


# ---------------------------------------------------------------------------------------------------------------------
# errors

def test_bad_inputs():
    sde, x0 = VPSDE(), torch.randn(4, 2)
    score = _gaussian_score(sde)
    for eps in (0.0, -1e-3, 1.0, 2.0, float("nan"), True):
        with pytest.raises(ValueError, match="eps"):
            dsm_loss(sde, score, x0, eps=eps)
    with pytest.raises(ValueError, match="weighting"):
        dsm_loss(sde, score, x0, weighting="sigma")
    with pytest.raises(ValueError, match="weighting"):
        dsm_loss(sde, score, x0, weighting=lambda t: t[:2])
    with pytest.raises(ValueError, match="`t` must have shape"):
        dsm_loss(sde, score, x0, t=torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="`t` must have shape"):
        dsm_loss(sde, score, x0, t=torch.full((4, 1), 0.5))
    with pytest.raises(ValueError, match=r"`t` must lie in \[eps, T\]"):
        dsm_loss(sde, score, x0, eps=1e-2, t=torch.tensor([0.5, 0.5, 1e-3, 0.5]))
    with pytest.raises(ValueError, match=r"`t` must lie in \[eps, T\]"):
        dsm_loss(sde, score, x0, t=torch.tensor([0.5, 0.5, 1.5, 0.5]))
    with pytest.raises(ValueError, match="NaN"):
        dsm_loss(sde, score, x0, t=torch.tensor([0.5, float("nan"), 0.5, 0.5]))
    with pytest.raises(ValueError, match="score_fn"):
        dsm_loss(sde, lambda x, t: x[:, :1], x0)
    with pytest.raises(ValueError, match="true_score"):
        irreducible_dsm_constant(sde, lambda x, t: x.sum(1), x0)
    with pytest.raises(ValueError, match="reduce"):
        dsm_loss(sde, score, x0, reduce="max")
    with pytest.raises(ValueError, match="x0"):
        dsm_loss(sde, score, torch.zeros(0, 2))
    with pytest.raises(TypeError, match="x0"):
        dsm_loss(sde, score, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="sde"):
        dsm_loss("vp", score, x0)
    t = torch.full((4,), 0.5)
    with pytest.raises(ValueError, match="needs the `sde`"):
        esm_loss(score, score, x0, t, weighting="sigma2")
    with pytest.raises(ValueError, match="true_score"):
        esm_loss(score, torch.zeros(4, 3), x0, t)
    with pytest.raises(ValueError, match="`t` must have shape"):
        esm_loss(score, score, x0, torch.full((5,), 0.5))
    with pytest.raises(ValueError, match="divergence"):
        ism_loss(score, x0, t, divergence="sliced")
    with pytest.raises(ValueError, match="num_probes"):
        ism_loss(score, x0, t, divergence="hutchinson", num_probes=0)
    with pytest.raises(ValueError, match="does not depend on `x`"):
        ism_loss(lambda x, t: torch.ones_like(x), x0, t)
    with pytest.raises(ValueError, match="weighting"):
        weighting(sde, "g2", t)


# ------------------------------------------------------------------ regressions found by tests/test_properties.py
def test_bool_times_are_rejected_by_name_and_meta_gives_shapes():
    "Bool times were cast to 0/1 (t = 1 silently); meta data failed to copy values out of the time check."
    x = torch.zeros(3, 2)
    score = lambda x, t: -x
    for fn in (lambda t: dsm_loss(VPSDE(), score, x, t=t), lambda t: esm_loss(score, torch.zeros_like(x), x, t),
               lambda t: ism_loss(score, x, t)):
        with pytest.raises(TypeError, match="`t`"):
            fn(torch.ones(3, dtype=torch.bool))
    xm = torch.empty(3, 2, 4, device="meta")
    out = dsm_loss(VESDE(), score, xm, t=torch.empty(3, device="meta"), reduce="none")
    assert out.shape == (3,) and out.device.type == "meta"


def test_half_precision_dsm_loss_with_a_large_weight_is_finite():
    "float16, VE sigma_max = 3955, likelihood weighting: g(1)^2 = 65650 overflowed float16 although the loss is ~10 (thorough profile)."
    sde = VESDE(sigma_min=1.0, sigma_max=3955.0)
    x0 = torch.zeros(2, 2)
    t = torch.full((2,), 0.999)
    score = lambda x, t: -x / sde.marginal_coeffs(t)[1].reshape(-1, 1) / sde.marginal_coeffs(t)[1].reshape(-1, 1)   # exact, data at 0
    ref = dsm_loss(sde, score, x0, t=t, weighting="likelihood", generator=torch.Generator().manual_seed(0), reduce="none")
    got = dsm_loss(sde, score, x0.half(), t=t.half(), weighting="likelihood", generator=torch.Generator().manual_seed(0), reduce="none")
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), ref.double(), rtol=0.05, atol=0.05)   # z, t rounded to float16: ~1e-3 relative each


# ---------------------------------------------------------------------------------------------------------------------
# mutation-testing survivors (bench/MUTATION.md, losses.py): boundaries and paths only one formula could take

def test_ism_named_weightings_multiply_the_unweighted_loss():
    "ism_loss with weighting w is lambda_w(t) times the unweighted per-sample loss (a skipped weighting passed before)."
    sde = VPSDE()
    A = torch.tensor([[1.0, 2.0], [0.5, -3.0]], dtype=F64)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    t = torch.linspace(0.1, 0.9, 5, dtype=F64)
    s = lambda x, t: x @ A.T + 1.0
    plain = ism_loss(s, x, t, reduce="none")
    for w in ("sigma2", "likelihood"):
        lam = weighting(sde, w, t)
        assert not torch.allclose(lam, torch.ones_like(lam))     # the test would not see a skipped weighting otherwise
        torch.testing.assert_close(ism_loss(s, x, t, sde=sde, weighting=w, reduce="none"), lam * plain)


def test_times_exactly_on_the_boundaries_are_accepted():
    "t = eps and t = T lie in [eps, T]: the range check is inclusive at both ends (strict checks refused them)."
    sde, x0 = VPSDE(), torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    score = _gaussian_score(sde)
    for t in (torch.full((4,), 1e-2, dtype=F64), torch.full((4,), sde.T, dtype=F64)):
        assert torch.isfinite(dsm_loss(sde, score, x0, eps=1e-2, t=t))


def test_scalar_x_is_refused_by_name_and_a_batch_of_one_is_valid():
    "A 0-d tensor has no batch axis: ValueError naming `x` (not an IndexError); B = 1 gives the per-sample value."
    with pytest.raises(ValueError, match="`x` must have (a batch dimension|shape)"):
        ism_loss(lambda x, t: -x, torch.tensor(1.0), torch.zeros(()))
    sde = VPSDE()
    score = _gaussian_score(sde)
    x0 = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = torch.tensor([0.2, 0.5, 0.8], dtype=F64)
    g = lambda: torch.Generator().manual_seed(7)
    full = irreducible_dsm_constant(sde, score, x0, t=t, generator=g(), reduce="none")
    one = irreducible_dsm_constant(sde, score, x0[:1], t=t[:1], generator=g(), reduce="none")
    torch.testing.assert_close(one, full[:1])
