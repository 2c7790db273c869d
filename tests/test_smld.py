"""SMLD / NCSN samplers: noise levels, annealed Langevin dynamics and the reverse-diffusion chain, with exact scores."""
import math

import pytest
import torch

from sde_diffusion.distances import expected_log_prob, mean_logp_gap
from sde_diffusion.sde import VESDE
from sde_diffusion.smld import NoisePerturbation, annealed_langevin, noise_conditional_score, smld_reverse_diffusion, ve_sigma_to_t
from sde_diffusion.solvers import batch_broadcast
from sde_diffusion.toy import GaussianMixture, ring_of_gaussians



def gaussian_ncsn_score(v):
    "Exact noise-conditional score of N(0, v I) data: -x / (v + sigma^2), any rank."
    return lambda x, sigma: -x / batch_broadcast(v + sigma**2, x)


def test_levels_are_the_ve_discrete_sigmas():
    L, hi, lo = 10, 50.0, 0.01
    ncsn = hi * (lo / hi) ** (torch.arange(L, dtype=torch.float64) / (L - 1))
    torch.testing.assert_close(VESDE(lo, hi, N=L).discrete_sigmas(torch.float64).flip(0), ncsn, rtol=1e-13, atol=0)


def test_time_map_inverts_the_ve_kernel_std():
    ve = VESDE()
    sigma = torch.logspace(-3, math.log10(40.0), 50, dtype=torch.float64)
    t = ve_sigma_to_t(ve, sigma)
    torch.testing.assert_close(ve.marginal_coeffs(t)[1], sigma, rtol=1e-10, atol=0)
    assert torch.equal(ve_sigma_to_t(ve, torch.zeros(2, dtype=torch.float64)), torch.zeros(2, dtype=torch.float64))  # sigma = 0 at t = 0
    with pytest.raises(TypeError, match="`sde` must be a VESDE"):
        ve_sigma_to_t(object(), sigma)


def test_noise_conditional_score_equals_the_blurred_mixture_score():
    data, ve = ring_of_gaussians(dtype=torch.float64), VESDE(N=20)
    sigmas = ve.discrete_sigmas(torch.float64).flip(0)              # includes sigma_max, just beyond sigma_VE(T)
    x = 3 * torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    via_time = noise_conditional_score(ve, data.score_fn(ve))(x, sigmas)
    torch.testing.assert_close(via_time, data.score_fn(NoisePerturbation())(x, sigmas), rtol=1e-7, atol=1e-12)
    top = torch.full((20,), ve.sigma_max, dtype=torch.float64)     # exactly sigma_max: t = 1 + 2e-9 in float64, clamped to T
    torch.testing.assert_close(noise_conditional_score(ve, data.score_fn(ve))(x, top),
                               data.score_fn(NoisePerturbation())(x, top), rtol=1e-7, atol=1e-12)
    with pytest.raises(ValueError, match="`t` must lie in"):      # a level above sigma_max is not silently clamped
        noise_conditional_score(ve, data.score_fn(ve))(x[:1], torch.tensor([60.0], dtype=torch.float64))


def _chain_variance(levels, v):
    "Exact output variance of the reverse-diffusion chain (final_denoise) for N(0, v) data from N(0, levels[0]^2)."
    V, N = levels[0] ** 2, len(levels)
    for k in range(N):
        inc = levels[k] ** 2 - (levels[k + 1] ** 2 if k < N - 1 else 0.0)
        V = V * (1 - inc / (v + levels[k] ** 2)) ** 2 + (inc if k < N - 1 else 0.0)
    return V


@pytest.mark.parametrize("N", [10, 30])
def test_reverse_diffusion_follows_the_exact_gaussian_recursion(N):
    v, m = 0.3, 40_000
    levels = VESDE(N=N).discrete_sigmas(torch.float64).flip(0)
    x = smld_reverse_diffusion(gaussian_ncsn_score(v), levels, (m, 1), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    predicted = _chain_variance(levels.tolist(), v)
    assert abs(x.var().item() - predicted) < 4 * predicted * math.sqrt(2 / m)
    assert abs(x.mean().item()) < 4 * math.sqrt(predicted / m)


def test_reverse_diffusion_converges_and_reaches_the_floor():
    "Exact score, ring: dlogp at N = 1000 within 4 standard errors (+ the 1/N bias bound), far off at N = 10."
    data, n = ring_of_gaussians(), 4000
    score = data.score_fn(NoisePerturbation())
    E, E_se = expected_log_prob(data.log_prob, data.sample, n=100_000, generator=torch.Generator().manual_seed(2))
    x = smld_reverse_diffusion(score, VESDE(N=1000).discrete_sigmas().flip(0), (n, 2), generator=torch.Generator().manual_seed(3))
    gap, se = mean_logp_gap(x, data.log_prob, E, return_se=True)
    bias = 1 - _chain_variance(VESDE(N=1000).discrete_sigmas(torch.float64).flip(0).tolist(), 0.25**2) / 0.25**2   # about -0.007
    assert abs(gap - bias) < 4 * math.hypot(se, E_se), gap
    x10 = smld_reverse_diffusion(score, VESDE(N=10).discrete_sigmas().flip(0), (n, 2), generator=torch.Generator().manual_seed(3))
    assert mean_logp_gap(x10, data.log_prob, E) < -1.0


def test_langevin_alone_keeps_the_initial_mode_split_annealing_fixes_it():
    mix = GaussianMixture(torch.tensor([0.2, 0.8]), torch.tensor([[-4.0], [4.0]]), torch.tensor([0.25, 0.25]))
    n = 2000
    start = 3 * torch.randn(n, 1, generator=torch.Generator().manual_seed(4))
    se = math.sqrt(0.2 * 0.8 / n)
    plain = annealed_langevin(lambda x, s: mix.score(x), [1.0], start, n_steps_each=300, step_lr=0.02,
                              generator=torch.Generator().manual_seed(5), final_denoise=False)
    assert abs((plain < 0).double().mean().item() - (start < 0).double().mean().item()) < 0.02   # nobody crosses
    assert abs((plain < 0).double().mean().item() - 0.2) > 20 * se
    levels = VESDE(sigma_min=0.01, sigma_max=10.0, N=20).discrete_sigmas().flip(0)
    annealed = annealed_langevin(mix.score_fn(NoisePerturbation()), levels, start, n_steps_each=30, step_lr=5e-5,
                                 generator=torch.Generator().manual_seed(6))
    assert abs((annealed < 0).double().mean().item() - 0.2) < 4 * se


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_langevin_stationary_variance(alpha):
    "Unadjusted Langevin on N(0, 1): stationary variance 1 / (1 - alpha/4)."
    x0 = torch.randn(50_000, 1, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x = annealed_langevin(lambda x, s: -x, [1.0], x0, n_steps_each=100, step_lr=alpha,
                          generator=torch.Generator().manual_seed(8), final_denoise=False)
    predicted = 1 / (1 - alpha / 4)
    assert abs(x.var().item() - predicted) < 4 * predicted * math.sqrt(2 / 50_000)


def test_final_denoise_is_one_tweedie_step():
    score, levels = gaussian_ncsn_score(0.5), torch.tensor([3.0, 1.0, 0.3])
    kw = dict(n_steps_each=5, step_lr=0.01)
    raw = annealed_langevin(score, levels, (100, 2), generator=torch.Generator().manual_seed(9), final_denoise=False, **kw)
    den = annealed_langevin(score, levels, (100, 2), generator=torch.Generator().manual_seed(9), **kw)
    torch.testing.assert_close(den, raw + 0.3**2 * score(raw, torch.full((100,), 0.3)))
    # reverse diffusion: with final_denoise the last step has no noise; without it, sigma_L z is added
    path = smld_reverse_diffusion(score, levels, (100, 2), generator=torch.Generator().manual_seed(9), return_path=True)
    assert path.shape == (4, 100, 2)
    torch.testing.assert_close(path[-1], path[-2] + 0.3**2 * score(path[-2], torch.full((100,), 0.3)))
    noisy = smld_reverse_diffusion(score, levels, (100, 2), generator=torch.Generator().manual_seed(9), final_denoise=False)
    assert not torch.allclose(noisy, path[-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(16,), (16, 3), (4, 2, 3, 3)], ids=["B", "BD", "BCHW"])
def test_shapes_dtypes_devices_and_seeds(shape, dtype, device):
    score, levels = gaussian_ncsn_score(0.5), VESDE(sigma_max=5.0, N=8).discrete_sigmas().flip(0)
    gen = lambda seed=10: torch.Generator(device).manual_seed(seed)
    for sampler, kw in ((smld_reverse_diffusion, {}), (annealed_langevin, dict(n_steps_each=3, step_lr=1e-4))):
        a = sampler(score, levels, shape, generator=gen(), dtype=dtype, device=device, **kw)
        b = sampler(score, levels, shape, generator=gen(), dtype=dtype, device=device, **kw)
        c = sampler(score, levels, shape, generator=gen(11), dtype=dtype, device=device, **kw)
        assert a.shape == shape and a.dtype == dtype and a.device.type == device
        assert torch.equal(a, b) and not torch.equal(a, c)
        path = sampler(score, levels, torch.zeros(shape, dtype=dtype, device=device), generator=gen(), return_path=True, **kw)
        assert path.shape == (9, *shape) and path.dtype == dtype


def test_progress_bar_runs():
    score = gaussian_ncsn_score(1.0)
    smld_reverse_diffusion(score, [2.0, 1.0], (3, 2), progress=True)
    annealed_langevin(score, [2.0, 1.0], (3, 2), n_steps_each=2, step_lr=1e-3, progress=True)


@pytest.mark.parametrize("kwargs, match", [
    (dict(step_lr=0.0), "`step_lr` must be a positive finite number"),
    (dict(step_lr=-1e-3), "`step_lr` must be a positive finite number"),
    (dict(step_lr=float("nan")), "`step_lr` must be a positive finite number"),
    (dict(n_steps_each=0), "`n_steps_each` must be a positive integer"),
    (dict(n_steps_each=2.5), "`n_steps_each` must be a positive integer"),
    (dict(sigmas=[1.0, 2.0]), "`sigmas` must be strictly decreasing"),
    (dict(sigmas=[1.0, 1.0]), "`sigmas` must be strictly decreasing"),
    (dict(sigmas=[1.0, -0.5]), "`sigmas` must be finite and positive"),
    (dict(sigmas=[1.0, 0.0]), "`sigmas` must be finite and positive"),
    (dict(sigmas=[[1.0, 0.5]]), "`sigmas` must be a 1-D tensor"),
    (dict(sigmas=[]), "`sigmas` must be a 1-D tensor"),
    (dict(x=(0, 2)), "`x` must be a tensor of start states or a shape"),
    (dict(x="shape"), "`x` must be a tensor of start states or a shape"),
    (dict(x=()), "`x` must be a tensor of start states or a shape"),
    (dict(x=torch.tensor(0.5)), "`x` must have a batch dimension"),
])
def test_bad_input_annealed_langevin(kwargs, match):
    args = dict(sigmas=[2.0, 1.0], x=(4, 2), n_steps_each=2, step_lr=1e-3) | kwargs
    with pytest.raises(ValueError, match=match):
        annealed_langevin(gaussian_ncsn_score(1.0), args.pop("sigmas"), args.pop("x"), **args)


def test_bad_input_reverse_diffusion():
    score = gaussian_ncsn_score(1.0)
    with pytest.raises(ValueError, match="`sigmas` must be strictly decreasing"):
        smld_reverse_diffusion(score, torch.tensor([0.1, 1.0, 10.0]), (4, 2))
    with pytest.raises(ValueError, match="`score_fn` must return a tensor of the shape of x"):
        smld_reverse_diffusion(lambda x, s: x[:, :1], [2.0, 1.0], (4, 2))
    with pytest.raises(TypeError, match="`x` must be a floating-point tensor"):
        smld_reverse_diffusion(score, [2.0, 1.0], torch.zeros(4, 2, dtype=torch.long))


def test_nonfinite_values_raise_naming_the_step():
    def exploding(x, sigma):    # NaN once the level drops below 0.5
        return torch.where(batch_broadcast(sigma < 0.5, x).bool(), torch.full_like(x, float("nan")), -x)
    levels = torch.tensor([4.0, 2.0, 1.0, 0.4, 0.2])
    with pytest.raises(FloatingPointError, match=r"reverse-diffusion chain became NaN/inf at step 3 \(sigma = 0\.4\)"):
        smld_reverse_diffusion(exploding, levels, (8, 2), generator=torch.Generator().manual_seed(0))
    with pytest.raises(FloatingPointError, match=r"NaN/inf at level 3 \(sigma = 0\.4\), step 0"):
        annealed_langevin(exploding, levels, (8, 2), n_steps_each=4, step_lr=1e-3, generator=torch.Generator().manual_seed(0))
    calls = []

    def fails_third_call(x, sigma):    # fine for the 2 Langevin steps, NaN in the denoising step
        calls.append(1)
        return -x if len(calls) < 3 else x * float("nan")
    with pytest.raises(FloatingPointError, match="the final denoising step"):
        annealed_langevin(fails_third_call, [1.0, 0.2], (8, 2), n_steps_each=1, step_lr=1e-3, generator=torch.Generator().manual_seed(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generator_on_the_wrong_device():
    with pytest.raises(ValueError, match="`generator` is on cpu"):
        smld_reverse_diffusion(gaussian_ncsn_score(1.0), [2.0, 1.0], torch.zeros(4, 2, device="cuda"), generator=torch.Generator())


# ------------------------------------------------------------------ regressions found by tests/test_properties.py
def test_ve_sigma_to_t_numbers_half_precision_and_bad_levels():
    "A python float failed inside torch (log1p of a float); float16 (3/0.01)^2 overflowed to t = inf; -1 gave t(1) silently."
    from sde_diffusion.sde import VESDE
    from sde_diffusion.smld import ve_sigma_to_t
    sde = VESDE()
    ref = ve_sigma_to_t(sde, torch.tensor(3.0, dtype=torch.float64))
    torch.testing.assert_close(ve_sigma_to_t(sde, 3.0).double(), ref, rtol=1e-6, atol=0)
    th = ve_sigma_to_t(sde, torch.tensor([3.0], dtype=torch.float16))
    assert th.dtype == torch.float16
    torch.testing.assert_close(th.double(), ref.reshape(1), rtol=torch.finfo(torch.float16).eps, atol=0)
    for bad, err in ((-1.0, ValueError), (float("nan"), ValueError), (True, TypeError), ("1", TypeError)):
        with pytest.raises(err, match="`sigma`"):
            ve_sigma_to_t(sde, bad)


# ------------------------------------------------------------------ boundaries found by mutation testing (tools/mutate.py)
def test_start_is_drawn_at_the_largest_level_and_the_path_ends_at_the_sample():
    "A shape starts the chain from N(0, sigma_1^2 I), sigma_1 the largest level; the path keeps that start and ends at the sample."
    score, n = gaussian_ncsn_score(0.5), 20_000
    for sampler, kw in ((annealed_langevin, dict(n_steps_each=1, step_lr=1e-3)), (smld_reverse_diffusion, {})):
        run = lambda **extra: sampler(score, [3.0, 1.0], (n, 1), generator=torch.Generator().manual_seed(12),
                                      dtype=torch.float64, **kw, **extra)
        path = run(return_path=True)
        assert abs(path[0].var().item() / 9 - 1) < 4.5 * math.sqrt(2 / n)     # sample variance of N(0, 9): relative SE sqrt(2/n)
        assert torch.equal(path[-1], run())                                   # the last entry is the (denoised) sample


def test_annealed_langevin_defaults_are_song_and_ermons():
    "T = 100 steps per level, epsilon = 2e-5 (Song & Ermon 2019): with a zero score, x = sum_i sqrt(alpha_i) (z_1 + ... + z_T)."
    calls = []

    def zero(x, sigma):
        calls.append(1)
        return torch.zeros_like(x)
    n = 4000
    x = annealed_langevin(zero, [2.0, 1.0], torch.zeros(n, 1, dtype=torch.float64), generator=torch.Generator().manual_seed(13))
    assert len(calls) == 2 * 100 + 1                          # 100 Langevin steps per level, then the denoising step
    predicted = 100 * 2e-5 * (2.0**2 + 1.0**2)                # sum_i T alpha_i with alpha_i = eps sigma_i^2 / sigma_L^2
    assert abs(x.var().item() / predicted - 1) < 4.5 * math.sqrt(2 / n)


def test_nonfinite_values_at_the_first_step_a_later_step_and_the_denoising_step_are_named():
    nan = lambda x, sigma: torch.full_like(x, float("nan"))
    with pytest.raises(FloatingPointError, match=r"NaN/inf at level 0 \(sigma = 2\), step 0"):
        annealed_langevin(nan, [2.0, 1.0], (4, 2), n_steps_each=3, step_lr=1e-3)
    with pytest.raises(FloatingPointError, match=r"NaN/inf at step 0 \(sigma = 2\)"):
        smld_reverse_diffusion(nan, [2.0, 1.0], (4, 2))

    def nan_after(m):    # finite for the first m calls
        calls = []

        def score(x, sigma):
            calls.append(1)
            return -x if len(calls) <= m else x * float("nan")
        return score
    with pytest.raises(FloatingPointError, match=r"NaN/inf at level 1 \(sigma = 1\), step 2"):     # call 7 of 4 per level
        annealed_langevin(nan_after(6), [2.0, 1.0], (4, 2), n_steps_each=4, step_lr=1e-3)
    with pytest.raises(FloatingPointError, match="the final denoising step"):             # call 5 of 2 levels x 2 steps
        annealed_langevin(nan_after(4), [2.0, 1.0], (4, 2), n_steps_each=2, step_lr=1e-3)



@pytest.mark.parametrize("k", [0, 5, 1100])   # 1100: past the watch's first chunk of 1024 per-step sums
def test_nan_injected_at_step_k_is_reported_as_step_k(k):
    "Step k of annealed Langevin is level k // n_steps_each, step k % n_steps_each; of the chain, step k."
    from sde_diffusion.core import NonFiniteError

    def nan_from_call(m):   # the exact score of N(0, I) data for calls 0 .. m - 1: the state after step m is the first NaN
        calls, exact = [], gaussian_ncsn_score(1.0)

        def score(x, sigma):
            calls.append(1)
            return exact(x, sigma) if len(calls) <= m else x * float("nan")
        return score
    sigmas = torch.logspace(1, -2, 12)   # 12 levels x 100 steps; the chain: 12 steps
    level, step = divmod(k, 100)
    with pytest.raises(NonFiniteError, match=rf"annealed Langevin became NaN/inf at level {level} "
                                             rf"\(sigma = {sigmas[level].item():.4g}\), step {step};"):
        annealed_langevin(nan_from_call(k), sigmas, (4, 2), n_steps_each=100, step_lr=1e-5,
                          generator=torch.Generator().manual_seed(0))
    if k < 12:
        with pytest.raises(NonFiniteError, match=rf"reverse-diffusion chain became NaN/inf at step {k} "
                                                 rf"\(sigma = {sigmas[k].item():.4g}\)"):
            smld_reverse_diffusion(nan_from_call(k), sigmas, (4, 2), generator=torch.Generator().manual_seed(0))


def test_the_nan_watch_runs_no_entrywise_test_per_step(monkeypatch):
    "The loops keep one sum per step (core.NonFiniteWatch): torch.isfinite runs a fixed number of times, not per step."
    calls, isfinite = [], torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda v: calls.append(v.numel()) or isfinite(v))
    annealed_langevin(gaussian_ncsn_score(1.0), torch.logspace(1, -2, 10), (4, 2), n_steps_each=30, step_lr=1e-5,
                      generator=torch.Generator().manual_seed(0))
    assert 0 < len(calls) <= 3, calls   # the levels' check, the 301 sums once after the loop
    calls.clear()
    smld_reverse_diffusion(gaussian_ncsn_score(1.0), torch.logspace(1, -2, 300), (4, 2), generator=torch.Generator().manual_seed(0))
    assert 0 < len(calls) <= 3, calls

def test_score_shape_is_checked_when_there_is_a_single_step():
    bad = lambda x, sigma: -x[:, :1]     # broadcasts against x: only the shape check catches it
    with pytest.raises(ValueError, match="`score_fn` must return a tensor of the shape of x"):
        annealed_langevin(bad, [1.0], (4, 2), n_steps_each=1, step_lr=1e-3)
    with pytest.raises(ValueError, match="`score_fn` must return a tensor of the shape of x"):
        smld_reverse_diffusion(bad, [1.0], (4, 2))
