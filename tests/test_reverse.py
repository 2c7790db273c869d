"""Reverse-time SDE and probability-flow ODE with exact Gaussian-mixture scores."""
import math

import pytest
import torch
from torchdiffeq import odeint

from sde_diffusion.distances import energy_distance, mean_logp_gap, expected_log_prob
from sde_diffusion.reverse import probability_flow, reversed_clock, sample_reverse_sde
from sde_diffusion.sde import SubVPSDE, VESDE, VPSDE
from sde_diffusion.toy import GaussianMixture, ring_of_gaussians



def test_reversed_clock_formula():
    sde = VPSDE()
    score = lambda x, t: -x * (1 + t[:, None])
    drift, diffusion = reversed_clock(sde, score)
    y, s = torch.randn(7, 2, dtype=torch.float64), torch.rand(7, dtype=torch.float64)
    t = 1.0 - s
    f, g = sde.sde(y, t)
    torch.testing.assert_close(drift(y, s), -(f - g**2 * score(y, t)))
    torch.testing.assert_close(diffusion(y, s), g)
    drift_ode, diffusion_ode = reversed_clock(sde, score, ode=True)
    torch.testing.assert_close(drift_ode(y, s), -(f - 0.5 * g**2 * score(y, t)))
    assert (diffusion_ode(y, s) == 0).all()


def test_reverse_sde_calls_the_score_once_per_step():
    "Euler-Maruyama needs the score for the drift only: the diffusion g(t) must not evaluate it (it once did, twice the cost)."
    calls = []

    def score(x, t):
        calls.append(1)
        return -x
    sample_reverse_sde(VPSDE(), score, (5, 2), steps=17, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 17
    calls.clear()
    _, diffusion = reversed_clock(VESDE(), score)
    diffusion(torch.zeros(3, 2), torch.full((3,), 0.5))
    assert not calls


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_reverse_sde_recovers_the_mixture(sde):
    "Exact score: the reversed samples' mean log-density matches the data's within 4 standard errors (+ EM bias)."
    data, n = ring_of_gaussians(), 4000
    x0 = sample_reverse_sde(sde, data.score_fn(sde), (n, 2), steps=500, generator=torch.Generator().manual_seed(0))
    E, E_se = expected_log_prob(data.log_prob, data.sample, n=100_000, generator=torch.Generator().manual_seed(1))
    gap, se = mean_logp_gap(x0, data.log_prob, E, return_se=True)
    assert abs(gap) < 4 * math.hypot(se, E_se) + 0.02, gap     # 0.02 nats: EM bias allowance at 500 steps
    # and it is not trivially true: the prior itself is far away
    prior_gap = mean_logp_gap(sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(2)), data.log_prob, E)
    assert prior_gap < -1.0


def test_probability_flow_matches_direct_torchdiffeq_call():
    data, sde = ring_of_gaussians(dtype=torch.float64), VPSDE()
    score = data.score_fn(sde)
    z = sde.prior_sampling((256, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours, nfe = probability_flow(sde, score, z, 1.0, 1e-3, rtol=1e-7, atol=1e-7)
    rsde = sde.reverse(score, ode=True)
    ref = odeint(lambda t, y: rsde.drift(y, t.expand(256)), z, torch.tensor([1.0, 1e-3], dtype=torch.float64),
                 method="dopri5", rtol=1e-7, atol=1e-7,
                 options={"step_t": torch.tensor([1e-3], dtype=torch.float64), "first_step": 1e-2 * (1.0 - 1e-3)})[-1]
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    # without a first step, torchdiffeq's automatic choice probes the field far outside [0, T] (PITFALLS)
    with pytest.raises(ValueError, match="`t` must lie in"):
        odeint(lambda t, y: rsde.drift(y, t.expand(256)), z, torch.tensor([1.0, 1e-3], dtype=torch.float64), method="dopri5")
    assert 20 < nfe < 2000
    back, _ = probability_flow(sde, score, ours, 1e-3, 1.0, rtol=1e-9, atol=1e-9)
    assert (back - z).abs().max() < 1e-5                              # a bijection


def test_probability_flow_fixed_step_and_ts():
    sde = VESDE()
    gauss = GaussianMixture(torch.ones(1), torch.zeros(1, 3), torch.tensor([0.5]), dtype=torch.float64)
    x0 = torch.randn(100, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * math.sqrt(0.5)
    ts = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    path, nfe = probability_flow(sde, gauss.score_fn(sde), x0, 0.0, 1.0, ts=ts, method="rk4", options={"step_size": 0.01})
    assert path.shape == (11, 100, 3) and nfe == 4 * 100
    v = 0.5 + sde.marginal_coeffs(ts)[1] ** 2                       # Gaussian data: x_t = x_0 sqrt(v_t / v_0)
    torch.testing.assert_close(path, x0 * (v / 0.5).sqrt()[:, None, None], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtypes_devices_and_seeds(device, dtype):
    sde = VPSDE()
    gauss = GaussianMixture(torch.ones(1), torch.zeros(1, 8), torch.tensor([0.3]), dtype=dtype, device=device)
    score = gauss.score_fn(sde)
    shape = (6, 2, 2, 2)
    gen = lambda: torch.Generator(device).manual_seed(5)
    a = sample_reverse_sde(sde, score, shape, steps=20, generator=gen(), dtype=dtype, device=device)
    b = sample_reverse_sde(sde, score, shape, steps=20, generator=gen(), dtype=dtype, device=device)
    assert a.shape == shape and a.dtype == dtype and a.device.type == device and torch.equal(a, b)
    path = sample_reverse_sde(sde, score, shape, steps=20, generator=gen(), dtype=dtype, device=device, return_path=True)
    assert path.shape == (21, *shape) and torch.equal(path[-1], a)
    x, nfe = probability_flow(sde, score, a, 1e-3, 1.0)
    assert x.shape == shape and x.dtype == dtype and x.device.type == device


def test_errors():
    sde, score = VPSDE(), (lambda x, t: -x)
    with pytest.raises(ValueError, match="`eps` must lie in"):
        sample_reverse_sde(sde, score, (4, 2), eps=1.0)
    with pytest.raises(ValueError, match="`x_T` has shape"):
        sample_reverse_sde(sde, score, (4, 2), x_T=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="`t0` must lie in"):
        probability_flow(sde, score, torch.zeros(4, 2), 1.5, 0.0)
    with pytest.raises(ValueError, match="`t0` and `t1` must differ"):
        probability_flow(sde, score, torch.zeros(4, 2), 0.5, 0.5)
    with pytest.raises(ValueError, match="`score_fn` must return a tensor of the shape of x"):
        sample_reverse_sde(sde, lambda x, t: x[:, :1], (4, 2), steps=3)


# ---------------------------------------------------------------- silent wrong answers (reliability issue, part 2)
def test_reverse_samplers_build_no_graph_and_check_every_score_call():
    net = torch.nn.Linear(2, 2)
    sde, score = VPSDE(), (lambda x, t: net(x) - x)
    out = sample_reverse_sde(sde, score, (16, 2), steps=10, generator=torch.Generator().manual_seed(0))
    assert out.grad_fn is None and not out.requires_grad
    x, _ = probability_flow(sde, score, out, 1e-3, 1.0, rtol=1e-3, atol=1e-3)
    assert x.grad_fn is None
    assert sample_reverse_sde(sde, score, (16, 2), steps=3, enable_grad=True).requires_grad
    calls = [0]

    def late(x, t):   # float64 from the 3rd call on: it would promote the float32 state silently
        calls[0] += 1
        return -x if calls[0] < 3 else -x.double()
    with pytest.raises(TypeError, match="`score_fn`"):
        sample_reverse_sde(sde, late, (4, 2), steps=5)
    with pytest.raises(ValueError, match="`x_T`.*`dtype`"):
        sample_reverse_sde(sde, lambda x, t: -x, x_T=torch.zeros(4, 2), dtype=torch.float64, steps=2)


def test_probability_flow_refuses_one_step_and_names_nan_and_tolerances():
    sde, x = VPSDE(), torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="`options`"):   # torchdiffeq would take ONE rk4 step over [0, 1]
        probability_flow(sde, lambda x, t: -x, x, 1.0, 1e-3, method="rk4")
    for tol in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="`rtol`"):
            probability_flow(sde, lambda x, t: -x, x, 1.0, 1e-3, rtol=tol)
    bad = lambda x, t: torch.where((t < 0.3)[:, None], torch.nan, -x)
    with pytest.raises(ValueError, match="`score_fn`") as info:   # not torchdiffeq's AssertionError: underflow in dt
        probability_flow(sde, bad, x, 1.0, 1e-3)
    assert isinstance(info.value, FloatingPointError)
    assert 0.0 < float(str(info.value).split("t = ")[1].split(" ")[0]) < 0.3   # the first time the field was NaN


# ------------------------------------------------------------------ mutation survivors (bench/MUTATION.md)
def test_reverse_sde_time_grid_and_default_steps():
    """Euler–Maruyama in the reversed clock s = T - t on [0, T - eps]: the score is called at t = T - k (T - eps)/N,
    k = 0..N-1, exactly (a grid to T + eps would pass every distributional test at eps = 1e-3); N = 1000 by default."""
    sde, seen = VPSDE(), []
    score = lambda x, t: (seen.append(t[0].item()), -x)[1]
    for eps, steps in ((0.3, 7), (1e-3, None)):
        seen.clear()
        kw = {} if steps is None else {"steps": steps}
        sample_reverse_sde(sde, score, (3, 2), eps=eps, dtype=torch.float64, generator=torch.Generator().manual_seed(0), **kw)
        n = steps or 1000
        assert len(seen) == n
        want = [sde.T - k * (sde.T - eps) / n for k in range(n)]
        assert max(abs(a - b) for a, b in zip(seen, want)) < 1e-12


def test_reverse_sde_overflow_of_a_low_precision_dtype_is_named():
    "Computed in float32, returned in float16: samples beyond 65504 are an error naming `dtype`, not inf."
    from sde_diffusion.reverse import NonFiniteError
    sde = VESDE(sigma_max=1e6)
    with pytest.raises(NonFiniteError, match="overflow `dtype` torch.float16"):
        sample_reverse_sde(sde, lambda x, t: torch.zeros_like(x), (20, 2), steps=3, dtype=torch.float16,
                           generator=torch.Generator().manual_seed(0))
    out = sample_reverse_sde(VPSDE(), lambda x, t: -x, (20, 2), steps=3, dtype=torch.float16,
                             generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_x_T_and_x_boundaries():
    "One-dimensional batches (B,) and one-element ones are valid starts; 0-d and empty tensors are refused by name."
    sde = VPSDE()
    for x_T in (torch.randn(4, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)):
        assert sample_reverse_sde(sde, lambda x, t: -x, x_T=x_T, steps=2).shape == x_T.shape
        assert probability_flow(sde, lambda x, t: -x, x_T, 1.0, 0.5)[0].shape == x_T.shape
    for bad in (torch.tensor(0.5, dtype=torch.float64), torch.zeros(0, 2, dtype=torch.float64)):
        with pytest.raises((TypeError, ValueError), match="`x_T`"):
            sample_reverse_sde(sde, lambda x, t: -x, x_T=bad, steps=2)
    with pytest.raises(TypeError, match="`x`"):
        probability_flow(sde, lambda x, t: -x, torch.tensor(0.5, dtype=torch.float64), 1.0, 0.5)


def test_probability_flow_default_tolerances():
    "rtol = atol = 1e-5 by default: the default solve equals the explicit one and differs from 2e-5."
    sde, x = VPSDE(), torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    score = lambda y, t: -y / 1.5
    a, b = probability_flow(sde, score, x, 1.0, 1e-3), probability_flow(sde, score, x, 1.0, 1e-3, rtol=1e-5, atol=1e-5)
    c = probability_flow(sde, score, x, 1.0, 1e-3, rtol=2e-5, atol=2e-5)
    assert a[1] == b[1] and torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_unavailable_accelerator_is_named():
    "A device whose backend is not available (CUDA on a CPU machine) is refused by name before any work."
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="`device` 'cuda' is not available"):
        sample_reverse_sde(VPSDE(), lambda x, t: -x, (4, 2), steps=2, device="cuda")


def test_x_T_agrees_with_any_spelling_of_its_device(device):
    """A tensor made on 'cpu:0' reports 'cpu': x_T on the CPU with device='cpu' or 'cpu:0' is accepted (it once was
    refused). On an accelerator, 'cuda' and 'cuda:0' both name the device of a tensor on cuda:0 (this case needs a GPU)."""
    x_T = torch.randn(3, 2, dtype=torch.float64, device=f"{device}:0")
    for spelling in (device, f"{device}:0", torch.device(device, 0)):
        out = sample_reverse_sde(VPSDE(), lambda x, t: -x, x_T=x_T, steps=2, device=spelling)
        assert out.device == x_T.device


def test_probability_flow_path_times_do_not_change_the_end_point():
    """Asking for the states at intermediate times `ts` interpolates inside the adaptive steps: the steps, the NFE and the
    state at t1 are bit for bit those of the solve without `ts` (only the final time is a step boundary; a mutant that
    made every output time one changed the steps, and the end point within the tolerance)."""
    data, sde = ring_of_gaussians(dtype=torch.float64), VPSDE()
    score = data.score_fn(sde)
    z = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    end, nfe = probability_flow(sde, score, z, 1.0, 1e-3)
    ts = torch.tensor([1.0, 0.7, 0.3, 0.1, 1e-3], dtype=torch.float64)
    path, nfe_path = probability_flow(sde, score, z, 1.0, 1e-3, ts=ts)
    assert path.shape == (5, 64, 2) and torch.equal(path[0], z)
    assert nfe_path == nfe and torch.equal(path[-1], end)
