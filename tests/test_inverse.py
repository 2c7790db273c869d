"""Inverse problems (chapter 17): measurement operators, the exact posterior of a Gaussian mixture under a linear-Gaussian
measurement (against Bayes' rule on a grid and importance sampling), and the samplers replacement, RePaint,
reconstruction guidance and DPS (no measurement gives the prior sampler; each beats replacement on the Gaussian pair)."""
import math

import pytest
import torch

from sde_diffusion.guidance import mixture_conditional
from sde_diffusion.inverse import (MaskOperator, MatrixOperator, as_operator, average_pool_operator, dps,
                                   likelihood_guided_score, mixture_measurement_log_prob, mixture_posterior,
                                   noisy_measurement, reconstruction_guidance, repaint, repaint_schedule, replacement)
from sde_diffusion.sampling import sample
from sde_diffusion.sde import VESDE, VPSDE
from sde_diffusion.toy import GaussianMixture, random_mixture, ring_of_gaussians


VP = VPSDE()
RHO, A_OBS = 0.8, 1.0
PAIR = GaussianMixture([1.0], [[0.0, 0.0]], torch.tensor([[[1.0, RHO], [RHO, 1.0]]]))
PAIR_MASK = torch.tensor([True, False])


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


# --- operators ---------------------------------------------------------------------------------------------------------

def test_operators_match_their_matrices_and_project():
    g = gen(0)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[:, ::2] = True
    ops = [MaskOperator(mask), average_pool_operator((1, 4, 4), 2, dtype=torch.float64),
           MatrixOperator(torch.randn(5, 16, generator=g, dtype=torch.float64), (1, 4, 4))]
    x = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    for op in ops:
        A, y = op.matrix(), torch.randn(3, op.M, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op(x), x.flatten(1) @ A.mT, rtol=0, atol=1e-13)
        torch.testing.assert_close(op.adjoint(y).flatten(1), y @ A, rtol=0, atol=1e-13)
        torch.testing.assert_close(op.pinv(y).flatten(1), y @ torch.linalg.pinv(A).mT, rtol=0, atol=1e-12)
        torch.testing.assert_close(op(op.project(x, y)), y, rtol=0, atol=1e-12)
        torch.testing.assert_close(op.gram(), A @ A.mT, rtol=0, atol=1e-13)
    assert torch.equal(ops[0].project(x, y := torch.randn(3, 8, generator=g, dtype=torch.float64))[:, :, ::2].flatten(1), y)
    assert isinstance(as_operator(mask), MaskOperator) and isinstance(as_operator(torch.eye(2)), MatrixOperator)
    assert as_operator(ops[1]) is ops[1]


def test_operators_follow_the_input_dtype_and_device(device):
    op = MatrixOperator(torch.randn(3, 4, generator=gen(1)))          # float32 on the CPU
    x = torch.randn(2, 4, dtype=torch.float64, device=device)
    assert op(x).dtype == torch.float64 and op(x).device == x.device and op.pinv(op(x)).device == x.device
    m = MaskOperator(torch.tensor([True, False, True, False]))
    assert m.project(x, m(x)).device == x.device


# --- the exact posterior -----------------------------------------------------------------------------------------------

def test_posterior_matches_bayes_on_a_grid():
    "Ring, one noisy row: prior x likelihood normalized on a grid against the closed-form evidence, mean and log-density."
    ring = ring_of_gaussians(dtype=torch.float64)
    A, y, sy = torch.tensor([[1.0, 0.5]], dtype=torch.float64), torch.tensor([1.5], dtype=torch.float64), 0.3
    post = mixture_posterior(ring, A, y, sy)
    h = 0.02
    c = torch.arange(-4.0, 4.0 + h / 2, h, dtype=torch.float64)
    xs = torch.cartesian_prod(c, c)
    log_joint = ring.log_prob(xs) - 0.5 * ((y - xs @ A.mT) / sy).square().sum(1) - math.log(sy * math.sqrt(2 * math.pi))
    Z = log_joint.exp().sum() * h**2
    # The integrand is a sum of Gaussians whose narrowest standard deviation is >= 0.18: the grid (Riemann) sum errs by
    # about exp(-2 pi^2 0.18^2 / h^2) ~ 1e-700, and the mass outside [-4, 4]^2 is beyond 8 standard deviations (~1e-15).
    assert abs(Z.log().item() - post.log_evidence) < 1e-10
    w = (log_joint - post.log_evidence).exp() * h**2
    torch.testing.assert_close(w @ xs, post.mean(), rtol=0, atol=1e-10)
    torch.testing.assert_close(post.log_prob(xs[::97]), log_joint[::97] - post.log_evidence, rtol=0, atol=1e-10)


def test_posterior_matches_importance_sampling_in_4d():
    mix = random_mixture(3, 4, generator=gen(2), dtype=torch.float64)
    A, y, sy = torch.randn(2, 4, generator=gen(3), dtype=torch.float64), torch.tensor([0.3, -0.7], dtype=torch.float64), 0.4
    post = mixture_posterior(mix, A, y, sy)
    xp = mix.sample(200_000, generator=gen(4))
    w = torch.softmax(-0.5 * ((y - xp @ A.mT) / sy).square().sum(1), 0)
    mean = w @ xp
    se = (w[:, None] ** 2 * (xp - mean) ** 2).sum(0).sqrt()            # delta-method standard error of the SNIS mean
    assert ((mean - post.mean()).abs() < 4 * se).all()


def test_noiseless_posteriors():
    ring = ring_of_gaussians(dtype=torch.float64)
    a = torch.tensor([0.7], dtype=torch.float64)
    post = mixture_posterior(ring, PAIR_MASK, a)
    cond = mixture_conditional(ring, torch.tensor([0.7, 0.0], dtype=torch.float64), PAIR_MASK)
    u = torch.linspace(-3, 3, 61, dtype=torch.float64)[:, None]
    torch.testing.assert_close(post.log_prob(torch.cat([torch.full_like(u, 0.7), u], 1)), cond.log_prob(u), rtol=0, atol=1e-10)
    # a general row, no noise: on the line A x = y the posterior is the prior renormalized
    A = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    post = mixture_posterior(ring, A, torch.tensor([1.5], dtype=torch.float64))
    s = torch.linspace(-2, 2, 41, dtype=torch.float64)[:, None]
    on_line = post.offset + s * post.basis.mT
    gap = post.log_prob(on_line) - ring.log_prob(on_line)
    assert (gap - gap[0]).abs().max() < 1e-10
    assert (post.sample(50, generator=gen(5)) @ A.mT - 1.5).abs().max() < 1e-12


@pytest.mark.parametrize("noise_std", [0.0, 0.25])
def test_measurement_likelihood_gives_the_posterior_score(noise_std):
    mix = random_mixture(3, 3, generator=gen(6), dtype=torch.float64)
    A, y = torch.randn(2, 3, generator=gen(7), dtype=torch.float64), torch.tensor([0.4, 1.1], dtype=torch.float64)
    for sde in (VP, VESDE()):
        post = mixture_posterior(mix, A, y, noise_std)
        x = 2 * torch.randn(40, 3, generator=gen(8), dtype=torch.float64)
        t = 0.02 + 0.98 * torch.rand(40, generator=gen(9), dtype=torch.float64)
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(mixture_measurement_log_prob(mix, sde, A, y, noise_std)(xg, t).sum(), xg)
        exact = post.score_fn(sde)(x, t)
        assert ((mix.marginal_score(x, t, sde) + grad - exact).abs().max() / exact.abs().max()) < 1e-10


# --- the samplers ------------------------------------------------------------------------------------------------------

def test_no_measurement_gives_the_prior_sampler_bit_for_bit():
    "A mask with no observed entry: M = 0, no noise is drawn, and each sampler is the unconditional sampler."
    none = MaskOperator(torch.tensor([False, False]))
    y0 = torch.zeros(64, 0)
    score = PAIR.score_fn(VP)
    plain = lambda predictor: sample(VP, score, (64, 2), steps=20, predictor=predictor, generator=gen(10)).samples
    assert torch.equal(replacement(VP, score, none, y0, steps=20, generator=gen(10)).samples, plain("reverse_diffusion"))
    assert torch.equal(repaint(VP, score, none, y0, steps=20, resamplings=1, generator=gen(10)).samples, plain("ancestral"))
    assert torch.equal(reconstruction_guidance(VP, score, none, y0, steps=20, generator=gen(10)).samples,
                       plain("reverse_diffusion"))
    assert torch.equal(dps(VP, score, none, y0, steps=20, generator=gen(10)).samples, plain("ancestral"))


def test_a_zero_operator_samples_the_prior():
    "A = 0 (two rows): the measurement says nothing, every sampler must return the prior N(0, Sigma), within 4 standard errors."
    n, zero = 4000, torch.zeros(2, 2)
    y = torch.zeros(n, 2)
    score = PAIR.score_fn(VP)
    runs = {"replacement": replacement(VP, score, zero, y, steps=100, generator=gen(11)),
            "repaint": repaint(VP, score, zero, y, steps=50, resamplings=4, jump_length=5, predictor="reverse_diffusion",
                               generator=gen(12)),   # DDPM's ancestral step is too narrow on a coarse grid, and RePaint repeats it
            "reconstruction guidance": reconstruction_guidance(VP, score, zero, y, steps=100, generator=gen(13)),
            "dps": dps(VP, score, zero, y, zeta=0.5, steps=100, generator=gen(14))}
    for name, out in runs.items():
        x = out.samples.double()
        assert (x.mean(0).abs() < 4 * math.sqrt(1 / n)).all(), name
        cov = x.T.cov()
        # se of a sample covariance entry of N(0, Sigma): sqrt((Sigma_ij^2 + Sigma_ii Sigma_jj) / n) <= sqrt(2 / n); plus
        # the variance error of 100 (RePaint: 50, resampled) reverse-diffusion steps with the exact score, under 0.02
        assert ((cov - torch.tensor([[1.0, RHO], [RHO, 1.0]], dtype=torch.float64)).abs() < 4 * math.sqrt(2 / n) + 0.02).all(), name


def test_each_sampler_beats_replacement_on_the_gaussian_pair():
    """About 200 score evaluations each; bias = |E x^u - rho a|, compared with 4 standard errors of the difference.
    Reconstruction guidance with Ho et al.'s w_r > 1: with w_r = 1 its gain over replacement at N = 200 is only 0.046
    (chapter 17's exact recursion), too small to resolve with a fast test."""
    n = 8000
    y = torch.full((n, 1), A_OBS)
    score = PAIR.score_fn(VP)
    runs = {"replacement": replacement(VP, score, PAIR_MASK, y, steps=200, generator=gen(20)),
            "repaint": repaint(VP, score, PAIR_MASK, y, steps=50, resamplings=4, jump_length=1, generator=gen(21)),
            "reconstruction guidance": reconstruction_guidance(VP, score, PAIR_MASK, y, weight=2.0, steps=200,
                                                               generator=gen(22)),
            "dps": dps(VP, score, PAIR_MASK, y, zeta=0.1, steps=200, generator=gen(23))}
    stats = {}
    for name, out in runs.items():
        assert 195 <= out.nfe <= 201, (name, out.nfe)
        u = out.samples[:, 1].double()
        stats[name] = (abs(u.mean().item() - RHO * A_OBS), math.sqrt(u.var().item() / n))
    bias_r, se_r = stats.pop("replacement")
    assert bias_r > 0.25                                                   # eq. eq-inv-replacement-limit: 0.3 in the limit
    for name, (bias, se) in stats.items():
        assert bias + 4 * math.hypot(se, se_r) < bias_r, (name, bias, bias_r)


def test_replacement_agrees_with_its_exact_limit_and_keeps_the_measurement():
    n = 8000
    out = replacement(VP, PAIR.score_fn(VP), PAIR_MASK, torch.full((n, 1), A_OBS), steps=200, generator=gen(30))
    assert torch.equal(out.samples[:, 0], torch.full((n,), A_OBS))
    u = out.samples[:, 1].double()
    limit_mean = A_OBS * (1 - math.sqrt(1 - RHO**2)) / RHO                # = 0.5
    limit_var = (1 - RHO**2) * math.atanh(RHO) / RHO
    # 4 standard errors plus the O(1/N) discretization error at N = 200 (chapter 17's exact recursion: 0.0073 in the
    # mean, 0.0153 in the variance)
    assert abs(u.mean().item() - limit_mean) < 4 * math.sqrt(limit_var / n) + 0.008
    assert abs(u.var().item() - limit_var) < 4 * limit_var * math.sqrt(2 / n) + 0.016


def test_repaint_schedule_and_cost():
    for steps, U, j in ((50, 1, 1), (50, 8, 1), (250, 10, 10), (7, 3, 2), (3, 5, 10)):
        seq = repaint_schedule(steps, U, j)
        assert seq[0] == 0 and seq[-1] == steps and min(seq) >= 0 and max(seq) <= steps
        moves = [b - a for a, b in zip(seq[:-1], seq[1:])]
        assert all(m in (1, -1) for m in moves)                     # a jump of j goes back one grid step at a time
        jump_points = len(range(0, steps - j, j))
        assert moves.count(-1) == (U - 1) * j * jump_points
    assert repaint_schedule(5, 1, 1) == list(range(6))
    out = repaint(VP, PAIR.score_fn(VP), PAIR_MASK, torch.ones(8, 1), steps=20, resamplings=3, jump_length=4, generator=gen(31))
    seq = repaint_schedule(20, 3, 4)
    assert out.nfe == sum(b == a + 1 for a, b in zip(seq[:-1], seq[1:])) + 1
    a = repaint(VP, PAIR.score_fn(VP), PAIR_MASK, torch.ones(8, 1), steps=20, resamplings=1, generator=gen(32)).samples
    b = replacement(VP, PAIR.score_fn(VP), PAIR_MASK, torch.ones(8, 1), steps=20, predictor="ancestral", generator=gen(32)).samples
    assert torch.equal(a, b)


def test_guided_score_is_exact_for_a_gaussian_with_the_exact_variance():
    pair = PAIR.to(dtype=torch.float64)
    Sig = pair.covs[0]
    post = mixture_posterior(pair, PAIR_MASK, torch.tensor([A_OBS], dtype=torch.float64))

    def x0_var(t):
        alpha, sigma = VP.marginal_coeffs(t)
        P = torch.linalg.inv(alpha[:, None, None] ** 2 * Sig + sigma[:, None, None] ** 2 * torch.eye(2, dtype=t.dtype))
        return (Sig - alpha[:, None, None] ** 2 * Sig @ P @ Sig)[:, 0, 0]

    x = torch.randn(30, 2, generator=gen(40), dtype=torch.float64)
    t = 0.01 + 0.99 * torch.rand(30, generator=gen(41), dtype=torch.float64)
    y = torch.full((30, 1), A_OBS, dtype=torch.float64)
    with torch.inference_mode():
        s = likelihood_guided_score(VP, pair.score_fn(VP), PAIR_MASK, y, x0_variance=x0_var)(x, t)
    exact = post.score_fn(VP)(x, t)
    assert (s - exact).abs().max() / exact.abs().max() < 1e-10


def test_samplers_keep_dtype_device_and_image_shapes(device):
    op_mask = MaskOperator(torch.zeros(1, 4, 4, dtype=torch.bool, device=device).index_fill_(1, torch.tensor([0, 1], device=device), True))
    op_pool = average_pool_operator((1, 4, 4), 2, dtype=torch.float64, device=device)
    x0 = torch.randn(3, 1, 4, 4, dtype=torch.float64, device=device)
    g = torch.Generator(device).manual_seed(0)
    score = lambda x, t: -x
    for op in (op_mask, op_pool):
        y = op(x0)
        for out in (replacement(VP, score, op, y, steps=5, generator=g),
                    repaint(VP, score, op, y, steps=6, resamplings=2, jump_length=2, generator=g),
                    reconstruction_guidance(VP, score, op, y, noise_std=0.1, steps=5, generator=g),
                    dps(VP, score, op, y, steps=5, generator=g)):
            assert out.samples.shape == x0.shape and out.samples.dtype == torch.float64 and out.samples.device == x0.device
            assert torch.isfinite(out.samples).all()
    t = torch.full((3,), 0.5, dtype=torch.float64, device=device)
    assert noisy_measurement(VP, op_pool, op_pool(x0), t, g).shape == (3, 4)


# --- argument errors ---------------------------------------------------------------------------------------------------

def test_argument_errors_name_the_argument():
    score, y = PAIR.score_fn(VP), torch.ones(4, 1)
    with pytest.raises(ValueError, match="`mask`"):
        MaskOperator(torch.tensor([0.0, 2.0]))
    with pytest.raises(TypeError, match="`mask`"):
        MaskOperator([True, False])
    with pytest.raises(ValueError, match="`A`"):
        MatrixOperator(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(TypeError, match="`A`"):
        MatrixOperator(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="`event_shape`"):
        MatrixOperator(torch.ones(2, 6), (2, 2))
    with pytest.raises(ValueError, match="`factor`"):
        average_pool_operator((1, 6, 6), 4)
    with pytest.raises(TypeError, match="`A`"):
        as_operator("mask")
    with pytest.raises(ValueError, match="`y`"):
        replacement(VP, score, PAIR_MASK, torch.ones(4, 2))
    with pytest.raises(ValueError, match="`y`"):
        replacement(VP, score, PAIR_MASK, torch.tensor([[float("inf")]] * 4))
    with pytest.raises(TypeError, match="`sde`"):
        repaint("vp", score, PAIR_MASK, y)
    with pytest.raises(TypeError, match="`score_fn`"):
        dps(VP, None, PAIR_MASK, y)
    with pytest.raises(ValueError, match="`x_T`"):
        replacement(VP, score, PAIR_MASK, y, x_T=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="`resamplings`"):
        repaint(VP, score, PAIR_MASK, y, resamplings=0)
    with pytest.raises(ValueError, match="`jump_length`"):
        repaint_schedule(10, 2, 0)
    with pytest.raises(ValueError, match="`zeta`"):
        dps(VP, score, PAIR_MASK, y, zeta=-1.0)
    with pytest.raises(ValueError, match="`weight`"):
        reconstruction_guidance(VP, score, PAIR_MASK, y, weight=float("nan"))
    with pytest.raises(ValueError, match="`noise_std`"):
        reconstruction_guidance(VP, score, PAIR_MASK, y, noise_std=-0.1)
    with pytest.raises(ValueError, match="`x0_variance`"):
        likelihood_guided_score(VP, score, PAIR_MASK, y, x0_variance="bogus")
    with pytest.raises(ValueError, match="`x0_variance`"):
        likelihood_guided_score(VP, score, PAIR_MASK, y, x0_variance="zero")   # needs noise_std > 0
    with pytest.raises(ValueError, match="`predictor`"):
        dps(VP, score, PAIR_MASK, y, predictor="nope")
    with pytest.raises(ValueError, match="predictor"):
        dps(VP, score, PAIR_MASK, y, predictor="heun", steps=3)   # evaluates the score off the current state
    with pytest.raises(ValueError, match="`score_fn`"):
        dps(VP, lambda x, t: torch.zeros_like(x).detach(), PAIR_MASK, y, steps=3)   # no graph to differentiate
    with pytest.raises(ValueError, match="`steps`"):
        dps(VP, score, PAIR_MASK, y, steps=0)
    ring = ring_of_gaussians(dtype=torch.float64)
    with pytest.raises(ValueError, match="`A`"):
        mixture_posterior(ring, torch.tensor([[1.0, 1.0], [2.0, 2.0]], dtype=torch.float64), torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="point"):
        mixture_posterior(ring, torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), 0.0)
    with pytest.raises(ValueError, match="`noise_std`"):
        mixture_posterior(ring, PAIR_MASK, torch.zeros(1), float("inf"))
    with pytest.raises(ValueError, match="`y`"):
        mixture_posterior(ring, PAIR_MASK, torch.zeros(2))
    with pytest.raises(ValueError, match="D = 3"):
        mixture_posterior(ring, torch.ones(1, 3), torch.zeros(1))
    with pytest.raises(TypeError, match="`mixture`"):
        mixture_posterior("ring", PAIR_MASK, torch.zeros(1))
