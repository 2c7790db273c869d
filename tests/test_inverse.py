"""Inverse problems (chapter 17): measurement operators, the exact posterior of a Gaussian mixture under a linear-Gaussian
measurement (against Bayes' rule on a grid and importance sampling), and the samplers replacement, RePaint,
reconstruction guidance and DPS (no measurement gives the prior sampler; each beats replacement on the Gaussian pair)."""
import math

import numpy as np
import pytest
import torch

from sde_diffusion.guidance import mixture_conditional
from sde_diffusion.inverse import (MaskOperator, MatrixOperator, as_operator, average_pool_operator, dps,
                                   likelihood_guided_score, mixture_measurement_log_prob, mixture_posterior,
                                   noisy_measurement, reconstruction_guidance, repaint, repaint_schedule, replacement)
from sde_diffusion.sampling import PREDICTORS, sample, sampling_times
from sde_diffusion.sde import VESDE, VPSDE
from sde_diffusion.toy import GaussianMixture, random_mixture, ring_of_gaussians


VP = VPSDE()
RHO, A_OBS = 0.8, 1.0
PAIR = GaussianMixture([1.0], [[0.0, 0.0]], torch.tensor([[[1.0, RHO], [RHO, 1.0]]]))
PAIR_MASK = torch.tensor([True, False])


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _pair_moments(steps, *, a=None, resamplings=1, jump_length=1, predictor="reverse_diffusion", eps=1e-3):
    """Exact mean (2,) and covariance (2, 2) of a sampler's output on the pair N(0, Sigma) under VP (chapter 17's
    `pair_moments`): the score is affine, so each step maps a Gaussian to a Gaussian. `a`: replacement of x^o = a
    (None: no measurement); `resamplings`, `jump_length`: RePaint's schedule; then Tweedie's step at eps."""
    Sigma, I = np.array([[1.0, RHO], [RHO, 1.0]]), np.eye(2)
    grid = sampling_times(VP, steps, eps, dtype=torch.float64)
    with VP.unchecked():
        c = {k: v.tolist() for k, v in PREDICTORS[predictor]().coefficients(VP, grid[:-1], grid[1:]).items()}
        al, sg = (v.tolist() for v in VP.marginal_coeffs(grid))

    def replaced(m, C, k):   # x^o <- alpha a + sigma z, independent of x^u
        if a is None:
            return m, C
        m, C = m.copy(), C.copy()
        m[0], C[0, :], C[:, 0] = al[k] * a, 0.0, 0.0
        C[0, 0] = sg[k] ** 2
        return m, C

    m, C = replaced(np.zeros(2), I.copy(), 0)
    seq = range(steps + 1) if resamplings == 1 else repaint_schedule(steps, resamplings, jump_length)
    for k, k_next in zip(seq[:-1], seq[1:]):
        if k_next == k + 1:   # x' = cx x + cs s + cz z with s = -(alpha^2 Sigma + sigma^2 I)^-1 x
            M = c["cx"][k] * I - c["cs"][k] * np.linalg.inv(al[k] ** 2 * Sigma + sg[k] ** 2 * I)
            m, C = replaced(M @ m, M @ C @ M.T + c["cz"][k] ** 2 * I, k_next)
        else:                 # RePaint's jump back: the forward transition
            ak = al[k_next] / al[k]
            m, C = ak * m, ak**2 * C + (sg[k_next] ** 2 - ak**2 * sg[k] ** 2) * I
    H = (I - sg[-1] ** 2 * np.linalg.inv(al[-1] ** 2 * Sigma + sg[-1] ** 2 * I)) / al[-1]
    m, C = H @ m, H @ C @ H.T
    if a is not None:
        m[0], C[0, :], C[:, 0] = a, 0.0, 0.0
    return m, C


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
    runs = {"replacement": (replacement(VP, score, zero, y, steps=100, generator=gen(11)), _pair_moments(100)),
            "repaint": (repaint(VP, score, zero, y, steps=50, resamplings=4, jump_length=5, predictor="reverse_diffusion",
                                generator=gen(12)),   # DDPM's ancestral step is too narrow on a coarse grid, and RePaint repeats it
                        _pair_moments(50, resamplings=4, jump_length=5)),
            "reconstruction guidance": (reconstruction_guidance(VP, score, zero, y, steps=100, generator=gen(13)),
                                        _pair_moments(100)),
            "dps": (dps(VP, score, zero, y, zeta=0.5, steps=100, generator=gen(14)), _pair_moments(100, predictor="ancestral"))}
    for name, (out, (m, C)) in runs.items():
        # Each sampler is then its unconditional sampler, whose output on N(0, Sigma) is exactly N(m, C) (the recursion;
        # m = 0, and C - Sigma is the discretization bias: +0.020 on the diagonal at 100 reverse-diffusion steps, -0.074
        # with DPS's ancestral step, more than the picked + 0.02 that was here stood for). Mean and covariance within 4 se:
        # a sample covariance entry of N(0, C) has se sqrt((C_ij^2 + C_ii C_jj) / n). Measured |z| <= 1.5.
        x = out.samples.double()
        assert (np.abs(x.mean(0).numpy() - m) < 4 * np.sqrt(np.diag(C) / n)).all(), name
        se = np.sqrt((C**2 + np.outer(np.diag(C), np.diag(C))) / n)
        assert (np.abs(x.T.cov().numpy() - C) < 4 * se).all(), (name, x.T.cov(), C)


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
    # The samples against the exact recursion at N = 200 within 4 se (the + 0.008 and + 0.016 that stood for its O(1/N)
    # distance to the limit were here): measured -1.3 and -0.5 se.
    m, C = _pair_moments(200, a=A_OBS)
    V = C[1, 1]
    assert abs(u.mean().item() - m[1]) < 4 * math.sqrt(V / n) and abs(u.var().item() - V) < 4 * V * math.sqrt(2 / n)
    # The recursion converges to the limit at first order: e(N) = c / N + O(1/N^2) gives e(N) = r(N) - r(N/2) + O(1/N^2),
    # so |r(N) - limit| < 2 |r(N) - r(N/2)| leaves the O(1/N^2) terms and the limit's eps -> 0 up to the first-order
    # term itself (chapter 17's check). Measured ratios 1.00 (mean) and 0.96 (variance) at N = 1000.
    (m5, C5), (m10, C10) = _pair_moments(500, a=A_OBS), _pair_moments(1000, a=A_OBS)
    assert abs(m10[1] - limit_mean) < 2 * abs(m10[1] - m5[1]) and abs(C10[1, 1] - limit_var) < 2 * abs(C10[1, 1] - C5[1, 1])


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


# --- mutation-test survivors (issue 17) --------------------------------------------------------------------------------

def test_operator_arguments_at_their_boundaries():
    "Valid edge cases are accepted (a 1-D event shape, one column, no rows, factor 1, 0/1 float masks); invalid ones named."
    A = torch.randn(2, 4, generator=gen(40), dtype=torch.float64)
    assert MatrixOperator(A, (4,)).event_shape == (4,) and MatrixOperator(A, 4).event_shape == (4,)
    assert MatrixOperator(torch.ones(2, 1)).D == 1 and MatrixOperator(torch.zeros(0, 3)).M == 0
    for bad in ((), (0, 4), (4, -1)):
        with pytest.raises(ValueError, match="`event_shape` must be a non-empty tuple of positive integers"):
            MatrixOperator(A, bad)
    with pytest.raises(ValueError, match="at least one column"):
        MatrixOperator(torch.zeros(2, 0))
    # a float or integer 0/1 mask is the bool mask; anything else is refused
    for m in (torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([1, 0, 1, 0])):
        assert torch.equal(MaskOperator(m).index, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="`mask`"):
        MaskOperator(torch.tensor([1.0, 2.0, 0.0]))
    # average pooling: factor 2 by default, factor 1 is the identity, factor 0 is refused by name
    assert average_pool_operator((1, 4, 4)).M == 4
    assert torch.equal(average_pool_operator((2, 2, 2), 1, dtype=torch.float64).matrix(), torch.eye(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="`factor`"):
        average_pool_operator((1, 4, 4), 0)


def test_posterior_edge_cases_and_one_element_tensors():
    """noise_std as a one-element tensor equals the number; y of shape (1, M) equals y of shape (M,), (M, 1) is refused;
    no measurement (M = 0) is the prior with log evidence 0 and no fixed direction (its score is the prior's)."""
    mix = random_mixture(2, 3, generator=gen(41), dtype=torch.float64)
    A, y = torch.randn(2, 3, generator=gen(42), dtype=torch.float64), torch.tensor([0.4, -0.9], dtype=torch.float64)
    ref = mixture_posterior(mix, A, y, 0.3)
    for other in (mixture_posterior(mix, A, y, torch.tensor(0.3, dtype=torch.float64)), mixture_posterior(mix, A, y[None], 0.3)):
        assert torch.equal(other.mean(), ref.mean())
        assert other.log_evidence == ref.log_evidence
    with pytest.raises(ValueError, match="`y`"):
        mixture_posterior(mix, A, y[:, None], 0.3)
    none = mixture_posterior(mix, MaskOperator(torch.zeros(3, dtype=torch.bool)), torch.zeros(0, dtype=torch.float64))
    assert none.log_evidence == 0.0 and none.fixed.shape == (3, 0) and none.D == 3
    x, t = torch.randn(5, 3, generator=gen(43), dtype=torch.float64), torch.full((5,), 0.3, dtype=torch.float64)
    assert (none.score_fn(VP)(x, t) - mix.marginal_score(x, t, VP)).abs().max() <= 1e-12
    # the default noise of the measurement likelihood is 0
    f0, f = mixture_measurement_log_prob(mix, VP, A, y), mixture_measurement_log_prob(mix, VP, A, y, 0.0)
    assert torch.equal(f0(x, t), f(x, t))


def test_noiseless_posterior_of_the_gaussian_pair_in_closed_form():
    """Observing x_1 = a of N(0, [[1, rho], [rho, 1]]) without noise: x_2 | a ~ N(rho a, 1 - rho^2) on the line x_1 = a
    (the textbook conditional). The posterior's dimension D = 2, its component mean, mean() and covariance(), exactly."""
    a = 0.9
    pair = GaussianMixture([1.0], [[0.0, 0.0]], torch.tensor([[[1.0, RHO], [RHO, 1.0]]], dtype=torch.float64), dtype=torch.float64)
    post = mixture_posterior(pair, PAIR_MASK, torch.tensor([a], dtype=torch.float64))
    assert post.D == 2 and post.reduced.D == 1
    want = torch.tensor([a, RHO * a], dtype=torch.float64)
    assert (post.means[0] - want).abs().max() <= 1e-12, post.means[0]
    assert (post.mean() - want).abs().max() <= 1e-12, post.mean()
    cov = torch.tensor([[0.0, 0.0], [0.0, 1 - RHO**2]], dtype=torch.float64)
    assert (post.covariance() - cov).abs().max() <= 1e-12, post.covariance()


def test_posterior_log_evidence_in_closed_form_and_far_measurements():
    """One Gaussian N(mu, Sigma) in 3-D, two noisy rows: log p(y) = log N(y; A mu, A Sigma A^T + s^2 I) (M = 2, where the
    normalizer's M/2 log 2 pi differs from 1/(2M) log 2 pi). A measurement 40 standard deviations out (log p(y) ~ -800,
    exp(2 log p(y)) underflows) still gives a posterior with weights summing to 1. Tolerance 1e-10 (float64 Cholesky)."""
    mu = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    L = torch.tensor([[1.0, 0.0, 0.0], [0.4, 0.8, 0.0], [-0.3, 0.2, 0.6]], dtype=torch.float64)
    g = GaussianMixture([1.0], mu[None], (L @ L.T)[None], dtype=torch.float64)
    A, s = torch.tensor([[1.0, 0.5, -0.2], [0.0, 1.0, 0.7]], dtype=torch.float64), 0.3
    for y in (torch.tensor([0.4, -0.9], dtype=torch.float64), torch.tensor([40.0, -35.0], dtype=torch.float64)):
        post = mixture_posterior(g, A, y, s)
        S, r = A @ L @ L.T @ A.T + s**2 * torch.eye(2, dtype=torch.float64), y - A @ mu
        want = -0.5 * r @ torch.linalg.solve(S, r) - 0.5 * torch.logdet(S) - math.log(2 * math.pi)   # M/2 log 2 pi, M = 2
        assert abs(post.log_evidence - want.item()) <= 1e-10 * max(1.0, abs(want.item())), (post.log_evidence, want)
        assert abs(post.weights.sum().item() - 1) < 1e-12


def test_noiseless_rank_check_is_relative_to_the_dimension():
    """Rows e_1 and e_1 + delta e_2 in D = 10: singular values ~sqrt(2) and delta/sqrt(2) = 1e-15, below the numerical-rank
    threshold sigma_max max(M, D) eps = 3.1e-15 (the SVD's absolute error is ~ eps sigma_max = 3e-16): refused as rank-deficient."""
    mix = random_mixture(2, 10, generator=gen(44), dtype=torch.float64)
    A = torch.zeros(2, 10, dtype=torch.float64)
    A[0, 0], A[1, 0], A[1, 1] = 1.0, 1.0, math.sqrt(2) * 1e-15
    with pytest.raises(ValueError, match="full row rank"):
        mixture_posterior(mix, A, torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_measurement_likelihood_value_is_bayes_rule():
    """log p_t(y | x_t) = log p_t(x_t | y) - log p_t(x_t) + log p(y), every term exact (the noisy posterior is a mixture on
    all of R^D). M = 2 rows, so the normalizer M/2 log 2 pi is pinned; y given as (M,) and as (B, M); a batch of one.
    Tolerance 1e-9: float64 Cholesky solves of matrices with condition number < 1e3."""
    mix = random_mixture(3, 3, generator=gen(50), dtype=torch.float64)
    A, y, s = torch.randn(2, 3, generator=gen(51), dtype=torch.float64), torch.tensor([0.4, 1.1], dtype=torch.float64), 0.3
    post = mixture_posterior(mix, A, y, s)
    x = 2 * torch.randn(7, 3, generator=gen(52), dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(7, generator=gen(53), dtype=torch.float64)
    want = post.reduced.marginal_log_prob(x, t, VP) - mix.marginal_log_prob(x, t, VP) + post.log_evidence
    for yy in (y, y.expand(7, 2).clone()):
        got = mixture_measurement_log_prob(mix, VP, A, yy, s)(x, t)
        assert (got - want).abs().max() <= 1e-9 * want.abs().max(), (got, want)
    one = mixture_measurement_log_prob(mix, VP, A, y, s)(x[:1], t[:1])
    assert one.shape == (1,) and (one - want[:1]).abs().max() <= 1e-9 * want.abs().max()


def test_noisy_measurement_has_the_law_of_A_x_t():
    """A x_t given A x_0 = y is N(alpha y, sigma^2 A A^T): the sampled covariance against it, entry by entry within 4 SE
    (SE of a covariance entry of a Gaussian: sqrt((S_ij^2 + S_ii S_jj)/n)); A A^T with eigenvalues 0.25 and 4. A
    rank-one A, whose Gram matrix has a rounding-negative eigenvalue (-1.8e-15), still gives finite draws."""
    n, t = 20000, torch.full((20000,), 0.5, dtype=torch.float64)
    A = torch.tensor([[0.5, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64) @ torch.linalg.qr(
        torch.randn(3, 3, generator=gen(54), dtype=torch.float64))[0]
    y = torch.tensor([0.3, -1.0], dtype=torch.float64).expand(n, 2)
    draws = noisy_measurement(VP, A, y, t, gen(55))
    alpha, sigma = (v[0].item() for v in VP.marginal_coeffs(t[:1]))
    S = sigma**2 * A @ A.mT
    d = draws - alpha * y
    se = ((S**2 + S.diagonal()[:, None] * S.diagonal()[None, :]) / n).sqrt()
    assert ((d.T.cov() - S).abs() < 4 * se).all(), (d.T.cov(), S)
    assert (d.mean(0).abs() < 4 * S.diagonal().sqrt() / math.sqrt(n)).all()
    g = gen(0)
    u, v = torch.randn(3, 1, generator=g, dtype=torch.float64), torch.randn(1, 4, generator=g, dtype=torch.float64)
    assert torch.linalg.eigh((u @ v) @ (u @ v).mT)[0].min() < 0              # the rounding this case is about
    assert torch.isfinite(noisy_measurement(VP, u @ v, torch.zeros(5, 3, dtype=torch.float64), t[:5], gen(56))).all()


def test_sampler_defaults_x_T_and_one_element_tensors():
    """replacement: 1000 steps (NFE 1001 with the denoising step), snr 0.16 and one corrector step by default; a valid x_T
    is used, a wrong dtype refused; dps' zeta as a one-element tensor equals the number; RePaint's U = j = 10 by default."""
    score, mask = PAIR.score_fn(VP), PAIR_MASK
    y = torch.tensor([[0.5], [-0.3]])
    assert replacement(VP, lambda x, t: -x, mask, y, generator=gen(57)).nfe == 1001
    kw = dict(corrector="langevin", steps=3, generator=None)
    a = replacement(VP, score, mask, y, **dict(kw, generator=gen(58))).samples
    b = replacement(VP, score, mask, y, snr=0.16, corrector_steps=1, **dict(kw, generator=gen(58))).samples
    assert torch.equal(a, b)
    x_T = VP.prior_sampling((2, 2), generator=gen(59))
    out = replacement(VP, score, mask, y, steps=3, x_T=x_T, denoise=False, generator=gen(60)).samples
    assert torch.equal(out, replacement(VP, score, mask, y, steps=3, x_T=x_T.clone(), denoise=False, generator=gen(60)).samples)
    with pytest.raises(ValueError, match="`x_T`"):
        replacement(VP, score, mask, y, steps=3, x_T=x_T.double())
    z1 = dps(VP, score, mask, y, zeta=torch.tensor(0.5), steps=3, generator=gen(61)).samples
    assert torch.equal(z1, dps(VP, score, mask, y, zeta=0.5, steps=3, generator=gen(61)).samples)
    assert repaint_schedule(45) == repaint_schedule(45, 10, 10)


@pytest.mark.parametrize("x0_variance", ["reconstruction", "zero", 0.3])
def test_guided_score_against_the_gaussian_approximation_written_out(x0_variance):
    """s + w grad_x log N(y; A x0_hat, nu_t A A^T + s_y^2 I), x0_hat = (x + sigma^2 s)/alpha, by autograd on the formula
    written out: nu_t = sigma^2/alpha^2 ('reconstruction'), 0 ('zero'), or the number; w = 1.7 and s_y = 0.2 (neither 0
    nor 1, where alternatives coincide). Tolerance 1e-10 relative: float64, a 2 x 2 solve."""
    mix = random_mixture(2, 3, generator=gen(62), dtype=torch.float64)
    A = torch.randn(2, 3, generator=gen(63), dtype=torch.float64)
    x = torch.randn(9, 3, generator=gen(64), dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(9, generator=gen(65), dtype=torch.float64)
    y = torch.randn(9, 2, generator=gen(66), dtype=torch.float64)
    w, sy, score = 1.7, 0.2, mix.score_fn(VP)
    got = likelihood_guided_score(VP, score, A, y, noise_std=sy, weight=w, x0_variance=x0_variance)(x, t)
    alpha, sigma = VP.marginal_coeffs(t)
    nu = {"reconstruction": sigma**2 / alpha**2, "zero": torch.zeros_like(t), 0.3: torch.full_like(t, 0.3)}[x0_variance]
    xg = x.clone().requires_grad_(True)
    s = score(xg, t)
    r = y - ((xg + sigma[:, None] ** 2 * s) / alpha[:, None]) @ A.mT
    Sy = nu[:, None, None] * (A @ A.mT) + sy**2 * torch.eye(2, dtype=torch.float64)
    neg_log_lik = 0.5 * (r[:, None, :] @ torch.linalg.solve(Sy, r[:, :, None])).sum()
    (grad,) = torch.autograd.grad(neg_log_lik, xg)
    want = s.detach() - w * grad
    assert (got - want).abs().max() <= 1e-10 * want.abs().max(), (got - want).abs().max()


def test_repaint_defaults_are_the_papers():
    "RePaint defaults to N = 250 steps, U = 10 resamplings, jumps of j = 10: NFE = the reverse steps of that schedule + 1."
    sched = lambda *a: sum(b == a_ + 1 for a_, b in zip(repaint_schedule(*a)[:-1], repaint_schedule(*a)[1:]))
    n = sched(250, 10, 10)
    assert n not in (sched(251, 10, 10), sched(250, 11, 10), sched(250, 10, 11))
    out = repaint(VP, lambda x, t: -x, PAIR_MASK, torch.tensor([[0.5], [-0.3]]), generator=gen(67))
    assert out.nfe == n + 1


def test_repaint_jumps_have_the_forward_transition_law():
    """With a predictor that leaves x in place and no measurement (M = 0), RePaint's output is x_T = 0 moved by its jumps
    alone: each back-step t_k -> t_{k-1} is x -> a x + sqrt(v) z, a = alpha_{k-1}/alpha_k, v = sigma_{k-1}^2 - a^2 sigma_k^2
    (the forward kernel's transition), so Var = the recursion V -> a^2 V + v over the schedule. Coarse grid (4 steps),
    where a is far from 1. Sample variance of 2 x 20000 coordinates within 4 SE (sqrt(2/(n-1)) V)."""
    from sde_diffusion.sampling import Predictor, sampling_times

    class Still(Predictor):
        stochastic = False

        def coefficients(self, sde, t, t_next):
            return {"one": torch.ones_like(t)}

        def apply(self, c, score, x, t, t_next, generator=None):
            return x, x
    n, steps, U, j = 20000, 4, 3, 2
    none = MaskOperator(torch.tensor([False, False]))
    out = repaint(VP, lambda x, t: -x, none, torch.zeros(n, 0, dtype=torch.float64), steps=steps, resamplings=U,
                  jump_length=j, predictor=Still(), denoise=False, x_T=torch.zeros(n, 2, dtype=torch.float64), generator=gen(68))
    alpha, sigma = VP.marginal_coeffs(sampling_times(VP, steps, 1e-3, dtype=torch.float64))
    seq, V = repaint_schedule(steps, U, j), 0.0
    for k, kn in zip(seq[:-1], seq[1:]):
        if kn == k - 1:
            a = (alpha[kn] / alpha[k]).item()
            V = a**2 * V + sigma[kn].item() ** 2 - a**2 * sigma[k].item() ** 2
    x = out.samples.reshape(-1)
    assert V > 0.1 and abs(x.var().item() - V) < 4 * math.sqrt(2 / (x.numel() - 1)) * V, (x.var().item(), V)


def test_dps_step_by_hand():
    """One DPS step from x_T: a DDIM step, then minus zeta / ||y - A x0_hat|| times the gradient of ||y - A x0_hat||^2,
    x0_hat = (x + sigma^2 s)/alpha, by autograd on the formula written out (zeta = 0.7, not 1). Tolerance 1e-10 relative."""
    from sde_diffusion.sampling import DDIM, sampling_times
    mix = random_mixture(2, 3, generator=gen(69), dtype=torch.float64)
    A, score = torch.randn(2, 3, generator=gen(70), dtype=torch.float64), mix.score_fn(VP)
    y, x = torch.randn(6, 2, generator=gen(71), dtype=torch.float64), torch.randn(6, 3, generator=gen(72), dtype=torch.float64)
    got = dps(VP, score, A, y, zeta=0.7, steps=1, predictor="ddim", denoise=False, x_T=x).samples
    ts = sampling_times(VP, 1, dtype=torch.float64)
    t, tn = ts[0].expand(6), ts[1].expand(6)
    xg = x.clone().requires_grad_(True)
    alpha, sigma = (v[:, None] for v in VP.marginal_coeffs(t))
    r2 = (y - ((xg + sigma**2 * score(xg, t)) / alpha) @ A.mT).square().sum(1)
    (grad,) = torch.autograd.grad(r2.sum(), xg)
    want = DDIM().step(VP, score, x, t, tn)[0] - 0.7 / r2.detach().sqrt()[:, None] * grad
    assert (got - want).abs().max() <= 1e-10 * want.abs().max(), (got - want).abs().max()


def test_guidance_defaults_and_a_zero_numeric_x0_variance():
    """reconstruction_guidance: weight 1, snr 0.16 and one corrector step by default; dps: zeta 1 by default; the number
    0.0 as x0_variance without measurement noise is refused like 'zero' (N(y; A x0_hat, 0) has no gradient)."""
    score, mask, y = PAIR.score_fn(VP), PAIR_MASK, torch.tensor([[0.5], [-0.3]])
    rg = lambda **kw: reconstruction_guidance(VP, score, mask, y, steps=3, corrector="langevin", generator=gen(73), **kw).samples
    assert torch.equal(rg(), rg(weight=1.0, snr=0.16, corrector_steps=1))
    d = lambda **kw: dps(VP, score, mask, y, steps=3, generator=gen(74), **kw).samples
    assert torch.equal(d(), d(zeta=1.0))
    with pytest.raises(ValueError, match="`x0_variance`"):
        likelihood_guided_score(VP, score, mask, y, x0_variance=0.0)


@pytest.mark.slow
def test_guidance_samplers_default_to_1000_steps():
    "NFE 1001 (1000 steps and the denoising step) for reconstruction guidance and DPS by default (about 3 s: marked slow)."
    y = torch.tensor([[0.5]])
    assert reconstruction_guidance(VP, PAIR.score_fn(VP), PAIR_MASK, y, generator=gen(75)).nfe == 1001
    assert dps(VP, PAIR.score_fn(VP), PAIR_MASK, y, generator=gen(76)).nfe == 1001


def test_measurement_likelihood_refuses_x_without_a_batch_dimension():
    "x must be (B, *D): a 1-D x for a 1-D mixture (D = 1, where x[0].numel() == D) is refused by name, not read as B samples."
    mix = GaussianMixture([1.0], [[0.0]], torch.ones(1, 1, 1, dtype=torch.float64), dtype=torch.float64)
    f = mixture_measurement_log_prob(mix, VP, torch.ones(1, 1, dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match="`x`"):
        f(torch.zeros(4, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64))


def test_repaint_starts_from_the_measurement_noised_to_T():
    """RePaint's first state has A x = alpha(T) y + sigma(T) A z (the measurement noised to the grid's first time, T), the
    first draw of the generator when x_T is given; one DDIM step from it, by hand, gives the unobserved entry exactly."""
    from sde_diffusion.sampling import DDIM, sampling_times
    pair = GaussianMixture([1.0], [[0.0, 0.0]], torch.tensor([[[1.0, RHO], [RHO, 1.0]]], dtype=torch.float64), dtype=torch.float64)
    score, y = pair.score_fn(VP), torch.tensor([[0.5], [-0.3], [1.2]], dtype=torch.float64)
    x_T = torch.randn(3, 2, generator=gen(77), dtype=torch.float64)
    out = repaint(VP, score, PAIR_MASK, y, steps=1, resamplings=1, predictor="ddim", denoise=False, x_T=x_T, generator=gen(78))
    ts = sampling_times(VP, 1, dtype=torch.float64)
    alpha, sigma = (v.item() for v in VP.marginal_coeffs(ts[:1]))
    x0 = x_T.clone()
    x0[:, :1] = alpha * y + sigma * torch.randn(3, 1, generator=gen(78), dtype=torch.float64)
    want = DDIM().step(VP, score, x0, ts[0].expand(3), ts[1].expand(3))[0]
    assert (out.samples[:, 1] - want[:, 1]).abs().max() <= 1e-12 * want.abs().max()


def test_dps_tells_the_predictor_each_step_s_end_time():
    """`dps` passes the predictor the step's two grid times t_k and t_{k+1}: a user predictor that evaluates the score once
    at the current state may read t_next (the built-in ones take it from their precomputed coefficients, so a mutant that
    passed t_{k-1} or t_k survived)."""
    from sde_diffusion.sampling import EulerMaruyama, sampling_times
    seen = []

    class Recording(EulerMaruyama):
        def apply(self, c, score, x, t, t_next, generator=None):
            seen.append((t.clone(), t_next.clone()))
            return super().apply(c, score, x, t, t_next, generator)

    y = torch.ones(4, 1, dtype=torch.float64)
    x_T = torch.randn(4, 2, generator=gen(80), dtype=torch.float64)
    dps(VP, PAIR.score_fn(VP), PAIR_MASK, y, steps=5, predictor=Recording(), denoise=False, x_T=x_T)
    ts = sampling_times(VP, 5, dtype=torch.float64)
    assert len(seen) == 5
    for k, (t, t_next) in enumerate(seen):
        assert torch.equal(t, ts[k].expand(4)) and torch.equal(t_next, ts[k + 1].expand(4))
