"""Sample metrics: sliced W2 and energy distance against closed forms and exact identities, the log-density gap,
noise floors, bad input, a dtype x device matrix."""
import math

import pytest
import torch

from sde_diffusion.distances import (EnergyReference, NoiseFloor, energy_distance, energy_distance_gaussian_1d, expected_log_prob,
                                   mean_logp_gap, noise_floor, random_directions, sample_metrics, sliced_wasserstein)
from sde_diffusion.toy import GaussianMixture, ring_of_gaussians


F64 = torch.float64


def _gauss(d):
    return lambda n, generator=None: torch.randn(n, d, generator=generator, dtype=F64)


def _gen(seed, device="cpu"):
    return torch.Generator(device).manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------------
# sliced Wasserstein

def test_random_directions_are_uniform_orthonormal_frames():
    d, n = 3, 3 * 4000
    th = random_directions(n, d, _gen(0), F64)
    assert th.shape == (n, d)
    torch.testing.assert_close(th.norm(dim=1), torch.ones(n, dtype=F64))
    frames = th.reshape(-1, d, d)
    torch.testing.assert_close(frames @ frames.mT, torch.eye(d, dtype=F64).expand_as(frames))
    # uniform on the sphere: mean 0 (se 1/sqrt(d n)), E theta theta^T = I/d
    assert (th.mean(0).abs() < 4 / math.sqrt(d * n)).all()
    assert random_directions(5, 2, _gen(0), F64).shape == (5, 2)


def test_sliced_w2_in_one_dimension_is_exact_w2_for_unequal_sizes():
    "In D = 1 every direction is +-1, so SW2 is W2; brute force on the quantile grid of spacing 1/(n m)."
    g = _gen(1)
    for n, m in ((7, 5), (12, 8), (30, 30), (1, 4)):
        x, y = torch.randn(n, 1, generator=g, dtype=F64), 2 + torch.randn(m, 1, generator=g, dtype=F64)
        u = (torch.arange(n * m, dtype=F64) + 0.5) / (n * m)
        qx = x.flatten().sort().values[(u * n).floor().long()]
        qy = y.flatten().sort().values[(u * m).floor().long()]
        exact = math.sqrt((qx - qy).square().mean().item())
        assert abs(sliced_wasserstein(x, y, 4, _gen(2)) - exact) < 1e-12


def test_sliced_w2_duplication_invariance_and_determinism():
    g = _gen(3)
    x, y = torch.randn(200, 3, generator=g, dtype=F64), torch.randn(150, 3, generator=g, dtype=F64) * 1.3
    a = sliced_wasserstein(x, y, 60, _gen(4))
    assert a == sliced_wasserstein(x, y, 60, _gen(4))
    assert abs(sliced_wasserstein(x.repeat(2, 1), y.repeat(3, 1), 60, _gen(4)) - a) < 1e-12
    assert abs(sliced_wasserstein(y, x, 60, _gen(4)) - a) < 1e-12      # symmetric
    assert sliced_wasserstein(x, x, 60, _gen(4)) == 0.0
    assert isinstance(a, float)


def test_sliced_w2_shift_identity_is_exact():
    "Equal sizes, whole frames: SW^2(x, y + m) = SW^2(x, y) - 2 m.(xbar - ybar)/D + |m|^2/D."
    D, n = 3, 500
    g = _gen(5)
    x, y = torch.randn(n, D, generator=g, dtype=F64), torch.randn(n, D, generator=g, dtype=F64)
    for m in (torch.tensor([0.3, -0.2, 1.0], dtype=F64), torch.tensor([5.0, 0.0, 0.0], dtype=F64)):
        lhs = sliced_wasserstein(x, y + m, 30, _gen(6)) ** 2
        rhs = sliced_wasserstein(x, y, 30, _gen(6)) ** 2 - 2 * (m @ (x.mean(0) - y.mean(0))).item() / D + (m @ m).item() / D
        assert abs(lhs - rhs) < 1e-11


def test_sliced_w2_shift_closed_form_in_expectation():
    "E SW^2(x, y + m) - E SW^2(x, y) = |m|^2 / D for N(0, I) vs N(m, I)."
    D, n, R = 2, 1000, 20
    g = _gen(7)
    sw2 = lambda x, y: sliced_wasserstein(x, y, 32, _gen(8)) ** 2
    floor, floor_vals = noise_floor(sw2, _gauss(D), n, R, g, return_values=True)
    m = torch.tensor([0.3, 0.4], dtype=F64)                           # |m| = 0.5
    vals = torch.tensor([sw2(_gauss(D)(n, g), _gauss(D)(n, g) + m) for _ in range(R)])
    excess = vals.mean().item() - floor.mean
    se = math.sqrt(vals.var().item() / R + floor.std**2 / R)
    assert abs(excess - 0.25 / D) < 4 * se


def test_sliced_w2_scale_closed_form():
    "SW2(N(0, I), N(0, s^2 I)) = |1 - s| in any dimension; with n points a side E SW^2(x, sy) = (1 - s)^2 + s E SW^2(x, y)."
    from scipy.stats import t as student_t
    D, s, n, R = 3, 2.0, 4000, 20
    g = _gen(9)
    sw2 = lambda x, y: sliced_wasserstein(x, y, 30, _gen(10)) ** 2
    floor = noise_floor(sw2, _gauss(D), n, R, g)
    vals = torch.tensor([sw2(_gauss(D)(n, g), s * _gauss(D)(n, g)) for _ in range(R)], dtype=F64)
    # exact for every n (A2_metrics, the scale exercise: order statistics with (1/n) sum mu_i^2 = 1 - floor/2), so
    # vals.mean - s floor.mean estimates (1 - s)^2 without bias; Student's t at the Welch df of the two independent sets,
    # 4-sigma two-sided level (W2^2 = (1 - s)^2 D would be ~100 se away)
    var_v, var_f = vals.var().item() / R, s**2 * floor.std**2 / R
    df = (var_v + var_f) ** 2 / ((var_v**2 + var_f**2) / (R - 1))
    t = (vals.mean().item() - s * floor.mean - (1 - s) ** 2) / math.sqrt(var_v + var_f)
    assert abs(t) < student_t.isf(math.erfc(4 / math.sqrt(2)) / 2, df), t


# ---------------------------------------------------------------------------------------------------------------------
# energy distance

def test_energy_distance_gaussian_1d_closed_form_properties():
    assert energy_distance_gaussian_1d(0.3, 1.2, 0.3, 1.2) == pytest.approx(0.0, abs=1e-15)
    assert energy_distance_gaussian_1d(0.0, 1.0, 0.7, 2.0) == pytest.approx(energy_distance_gaussian_1d(0.7, 2.0, 0.0, 1.0))
    d = 1e-3   # small shift of unit Gaussians: ~ delta^2 / sqrt(pi)
    assert energy_distance_gaussian_1d(0.0, 1.0, d, 1.0) == pytest.approx(d**2 / math.sqrt(math.pi), rel=1e-5)
    # large shift: 2|delta| - 2(s1 + s2)/sqrt(pi)
    assert energy_distance_gaussian_1d(0.0, 1.0, 50.0, 1.0) == pytest.approx(100 - 4 / math.sqrt(math.pi))
    with pytest.raises(ValueError, match="std"):
        energy_distance_gaussian_1d(0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize("mu, s", [(0.0, 1.0), (0.3, 1.0), (1.0, 1.0), (0.0, 1.5), (0.5, 0.5)])
def test_energy_distance_unbiased_against_closed_form(mu, s):
    n, R = 300, 40
    g = _gen(11)
    est = torch.tensor([energy_distance(torch.randn(n, 1, generator=g, dtype=F64),
                                        mu + s * torch.randn(n, 1, generator=g, dtype=F64)) for _ in range(R)])
    exact = energy_distance_gaussian_1d(0.0, 1.0, mu, s)
    assert abs(est.mean().item() - exact) < 4 * est.std().item() / math.sqrt(R)


def test_energy_distance_blocks_and_brute_force_agree():
    g = _gen(12)
    x, y = torch.randn(301, 3, generator=g, dtype=F64), 0.5 + torch.randn(177, 3, generator=g, dtype=F64)
    dist = lambda a, b: (a[:, None] - b[None]).norm(dim=-1)
    n, m = len(x), len(y)
    u = 2 * dist(x, y).mean() - dist(x, x).sum() / (n * (n - 1)) - dist(y, y).sum() / (m * (m - 1))
    v = 2 * dist(x, y).mean() - dist(x, x).mean() - dist(y, y).mean()
    for block in (1, 1000, 2**22):        # one row at a time, ~3 rows, everything at once
        assert abs(energy_distance(x, y, block_entries=block) - u.item()) < 1e-12
        assert abs(energy_distance(x, y, unbiased=False, block_entries=block) - v.item()) < 1e-12
    assert energy_distance(x, x, unbiased=False) == pytest.approx(0.0, abs=1e-14)


def test_energy_reference_reuses_the_within_set_term_and_agrees():
    g = _gen(15)
    y = 0.5 + torch.randn(177, 3, generator=g, dtype=F64)
    ref = EnergyReference(y, block_entries=1000)          # different blocks from the calls: a different summation order
    assert len(ref) == 177 and ref.self_sum.dtype == F64
    dist = lambda a, b: (a[:, None] - b[None]).norm(dim=-1)
    assert abs(ref.self_sum.item() - dist(y, y).sum().item()) < 1e-9      # sums of ~3e4 distances of order 2: rounding only
    for x in (torch.randn(301, 3, generator=g, dtype=F64), torch.randn(2, 3, generator=g, dtype=F64)):
        for unbiased in (True, False):
            assert abs(energy_distance(x, ref, unbiased) - energy_distance(x, y, unbiased)) < 1e-12
    # float32 reference: values of order 1 summed in float64 from float32 distances, so rounding of float32 size
    y32, x32 = y.float(), torch.randn(50, 3, generator=g)
    assert abs(energy_distance(x32, EnergyReference(y32)) - energy_distance(x32, y32)) < 1e-6
    # x in float64 promotes the float32 reference: the within-set term is recomputed in float64, exactly as uncached
    assert energy_distance(x32.double(), EnergyReference(y32)) == energy_distance(x32.double(), y32)
    with pytest.raises(ValueError, match="`block_entries`"):
        EnergyReference(y, block_entries=0)
    with pytest.raises(ValueError, match="`y`"):
        EnergyReference(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(TypeError, match="`y`"):
        EnergyReference(torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="same number of dimensions"):
        energy_distance(torch.randn(5, 2, dtype=F64), ref)


def test_energy_v_statistic_is_twice_the_integrated_squared_cdf_difference():
    g = _gen(13)
    x, y = torch.randn(120, 1, generator=g, dtype=F64), 0.5 + 2 * torch.randn(80, 1, generator=g, dtype=F64)
    z = torch.cat([x, y]).flatten().sort().values
    F = torch.searchsorted(x.flatten().sort().values, z, right=True).double() / len(x)
    G = torch.searchsorted(y.flatten().sort().values, z, right=True).double() / len(y)
    assert abs(energy_distance(x, y, unbiased=False) - 2 * ((F - G)[:-1] ** 2 * z.diff()).sum().item()) < 1e-12


# ---------------------------------------------------------------------------------------------------------------------
# log-density gap, expected log-density, floors

def test_mean_logp_gap_sign_and_size():
    "Samples of N(0, c I) scored by N(0, I): gap = (D/2)(1 - c); > 0 too concentrated, < 0 too spread."
    d, n = 2, 40_000
    log_prob = lambda x: -0.5 * (x.square().sum(1) + d * math.log(2 * math.pi))
    exact = -0.5 * d * (1 + math.log(2 * math.pi))
    for c in (0.8, 1.0, 1.25):
        x = math.sqrt(c) * torch.randn(n, d, generator=_gen(14), dtype=F64)
        gap, se = mean_logp_gap(x, log_prob, exact, return_se=True)
        assert abs(gap - d / 2 * (1 - c)) < 4 * se
    ref = torch.randn(n, d, generator=_gen(15), dtype=F64)
    gap_num = mean_logp_gap(x, log_prob, log_prob(ref).mean().item())
    gap_ref, se_ref = mean_logp_gap(x, log_prob, ref, return_se=True)
    assert gap_num == pytest.approx(gap_ref) and se_ref > se
    assert mean_logp_gap(x, log_prob, torch.tensor(exact, dtype=F64)) == pytest.approx(d / 2 * (1 - 1.25), abs=4 * se)


def test_expected_log_prob_is_minus_the_entropy():
    ring = ring_of_gaussians(dtype=F64, std=0.05)    # well separated: E log p = log(1/8) - log(2 pi s^2) - 1
    mean, se = expected_log_prob(ring.log_prob, ring.sample, 200_000, _gen(16), batch_size=50_000)
    exact = math.log(1 / 8) - math.log(2 * math.pi * 0.05**2) - 1
    assert abs(mean - exact) < 4 * se and se < 0.01


def test_noise_floor_is_deterministic_and_uses_the_reference():
    gm = ring_of_gaussians(dtype=F64)
    metric = lambda x, y: sliced_wasserstein(x, y, 16, _gen(17))
    a = noise_floor(metric, gm.sample, 500, 4, _gen(18))
    assert isinstance(a, NoiseFloor) and a == noise_floor(metric, gm.sample, 500, 4, _gen(18))
    mean, std = a
    assert mean > 0 and std > 0
    ref = gm.sample(500, generator=_gen(19), stratified=True)
    b, vals = noise_floor(metric, gm.sample, 500, 4, _gen(18), reference=ref, return_values=True)
    assert vals.shape == (4,) and b.mean == pytest.approx(vals.mean().item())
    # the floor of a metric that ignores its second argument sees the reference only through `reference`
    c = noise_floor(lambda x, y: float(y is ref), gm.sample, 10, 3, _gen(20), reference=ref)
    assert c == (1.0, 0.0)


def test_sample_metrics_reports_all_three():
    gm = ring_of_gaussians(dtype=F64)
    ref = gm.sample(800, generator=_gen(21), stratified=True)
    out = sample_metrics(gm.sample(800, generator=_gen(22)), ref, gm.log_prob, generator=_gen(23))
    assert set(out) == {"sw2", "energy", "dlogp"} and all(isinstance(v, float) for v in out.values())
    assert set(sample_metrics(ref, ref)) == {"sw2", "energy"}


def test_two_percent_variance_error_visible_only_to_dlogp():
    "PITFALLS' claim at reduced cost: 4,000 samples, a 5 % variance error (dlogp shift 0.05 = 3 resolutions)."
    ring = ring_of_gaussians(dtype=F64)
    n, g = 4000, _gen(24)
    ref = ring.sample(n, generator=g, stratified=True)
    ref_lp, _ = expected_log_prob(ring.log_prob, ring.sample, 200_000, g)
    wide = GaussianMixture(ring.weights, ring.means, 1.05 * ring.covs)
    sw = lambda x, y: sliced_wasserstein(x, y, 32, _gen(25))
    floor, floor_vals = noise_floor(sw, ring.sample, n, 6, g, reference=ref, return_values=True)
    vals = torch.tensor([sw(wide.sample(n, generator=g), ref) for _ in range(6)])
    t = (vals.mean() - floor_vals.mean()) / math.sqrt(vals.var() / 6 + floor_vals.var() / 6)
    assert abs(t) < 3
    gaps = torch.tensor([mean_logp_gap(wide.sample(n, generator=g), ring.log_prob, ref_lp) for _ in range(6)])
    resolution = math.sqrt(ring.log_prob(ref).var().item() / n)
    # In 2-D a variance scaled by c moves dlogp by 1 - c = -0.05 (separated components). The mean of 6 independent gaps
    # has se resolution / sqrt(6) (0.0063 here): within 4 se of -0.05 (+1.1 se measured, -0.043), and below zero by
    # more than 4 se (the direction: -6.8 se measured; it replaces a picked -0.03). Halving the measured gaps (-0.021,
    # -3.4 se) fails the second; doubling them (-0.086, 5.7 se off) or a sign flip fails the first.
    se = resolution / math.sqrt(6)
    assert abs(gaps.mean() - (-0.05)) < 4 * se and gaps.mean() < -4 * se


# ---------------------------------------------------------------------------------------------------------------------
# bad input, dtype x device

def test_bad_input():
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="dimensions"):
        sliced_wasserstein(x, torch.randn(10, 3))
    with pytest.raises(ValueError, match="dimensions"):
        energy_distance(x, torch.randn(10, 3))
    with pytest.raises(TypeError, match="x"):
        sliced_wasserstein(x.numpy(), x)
    with pytest.raises(TypeError, match="y"):
        energy_distance(x, torch.ones(10, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="n >= 1"):
        sliced_wasserstein(torch.zeros(0, 2), x)
    with pytest.raises(ValueError, match="n_projections"):
        sliced_wasserstein(x, x, n_projections=0)
    with pytest.raises(ValueError, match="at least 2"):
        energy_distance(x[:1], x)
    assert energy_distance(x[:1], x, unbiased=False) >= 0
    with pytest.raises(ValueError, match="log_prob"):
        mean_logp_gap(x, lambda y: y.sum(), 0.0)
    with pytest.raises(ValueError, match="reference"):
        mean_logp_gap(x, lambda y: y.sum(1), float("nan"))
    with pytest.raises(ValueError, match="repeats"):
        noise_floor(energy_distance, _gauss(2), 10, repeats=1)
    with pytest.raises(ValueError, match="n"):
        expected_log_prob(lambda y: y.sum(1), _gauss(2), n=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_device_matrix(device, dtype):
    g = _gen(26)
    x64, y64 = torch.randn(300, 1, 2, 2, generator=g, dtype=F64), 0.3 + torch.randn(200, 1, 2, 2, generator=g, dtype=F64)
    x, y = x64.to(device, dtype), y64.to(device, dtype)
    tol = 1e-10 if dtype == F64 else 1e-4
    sw = sliced_wasserstein(x, y, 16, _gen(27, device))
    sw_ref = sliced_wasserstein(x64, y64, 16, _gen(27))
    assert isinstance(sw, float) and sw > 0
    if device == "cpu" and dtype == F64:
        assert sw == sw_ref
    else:   # other random directions (a float32 or CUDA draw): equal up to the direction noise
        assert abs(sw - sw_ref) < 0.1 * sw_ref
    e, e_ref = energy_distance(x, y), energy_distance(x64, y64)
    assert isinstance(e, float) and abs(e - e_ref) < tol * 10
    gm = ring_of_gaussians(dtype=dtype, device=device)
    pts = gm.sample(100, generator=_gen(28, device))
    gap = mean_logp_gap(pts, gm.log_prob, gm.sample(100, generator=_gen(29, device)))
    assert isinstance(gap, float) and math.isfinite(gap)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sets_on_different_devices():
    with pytest.raises(ValueError, match="device|on"):
        energy_distance(torch.randn(4, 2), torch.randn(4, 2, device="cuda"))


# ------------------------------------------------------------------ regressions found by tests/test_properties.py
def test_half_precision_samples_are_measured_in_float32():
    "float16 failed inside torch ('geqrf_cpu' / 'cdist' not implemented for 'Half'); now computed in float32."
    from sde_diffusion.distances import energy_distance, sliced_wasserstein
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 2, generator=g), torch.randn(40, 2, generator=g) + 0.5
    for dtype in (torch.float16, torch.bfloat16):
        xh, yh = x.to(dtype), y.to(dtype)
        sw = sliced_wasserstein(xh, yh, 8, torch.Generator().manual_seed(1))
        assert sw == sliced_wasserstein(xh.float(), yh.float(), 8, torch.Generator().manual_seed(1))
        assert energy_distance(xh, yh) == energy_distance(xh.float(), yh.float())


def test_metric_argument_errors_name_the_argument():
    "NaN samples gave NaN distances; n < 2 and a zero-width sample raised unnamed errors (or ZeroDivisionError)."
    from sde_diffusion.distances import energy_distance, energy_distance_gaussian_1d, sliced_wasserstein
    x = torch.randn(5, 2)
    bad = x.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="`x`"):
        sliced_wasserstein(bad, x)
    with pytest.raises(ValueError, match="`y`"):
        energy_distance(x, bad)
    with pytest.raises(ValueError, match="`unbiased`"):
        energy_distance(x[:1], x)
    with pytest.raises(ValueError, match="`x`"):
        sliced_wasserstein(torch.zeros(5, 0), torch.zeros(5, 0))
    for args in ((None, 1.0, 0.0, 1.0), (math.nan, 1.0, 0.0, 1.0), (0.0, True, 0.0, 1.0)):
        with pytest.raises(ValueError, match="`mean1`|`std1`"):
            energy_distance_gaussian_1d(*args)


def test_gaussian_energy_distance_far_apart_is_finite():
    "Means 1e300 apart with std 1e-300: delta**2 raised OverflowError; the exact value is 2|delta| - 2(s1 + s2)/sqrt(pi)."
    from sde_diffusion.distances import energy_distance_gaussian_1d
    e = energy_distance_gaussian_1d(1e300, 1e-300, 0.0, 1.0)
    assert e == pytest.approx(2e300, rel=1e-15)


# ------------------------------------------------------------------ glue: measured numbers handed to the prose
def test_glue_returns_the_value_and_refuses_what_cannot_be_quoted():
    from sde_diffusion.core import glue
    assert glue("x", 1.5) == 1.5 and glue("n", 7) == 7 and glue("s", "DDIM") == "DDIM"
    v = glue("t", torch.tensor([0.25], dtype=torch.float64))
    assert v == 0.25 and isinstance(v, float)
    import numpy as np   # numpy scalars become Python numbers: their repr, np.float64(0.5), is not a number myst-nb can format
    for value, kind in ((np.float64(0.5), float), (np.float32(0.5), float), (np.int64(3), int)):
        out = glue("np", value)
        assert type(out) is kind and out == value and repr(out) in ("0.5", "3")
    for name, value, err, match in [("a b", 1.0, ValueError, "`name`"), (3, 1.0, ValueError, "`name`"),
                                    ("x", float("nan"), ValueError, "non-finite"), ("x", math.inf, ValueError, "non-finite"),
                                    ("x", torch.tensor(float("nan")), ValueError, "non-finite"),
                                    ("x", torch.ones(2), ValueError, "shape"), ("x", True, TypeError, "`value`"),
                                    ("x", [1.0], TypeError, "`value`")]:
        with pytest.raises(err, match=match):
            glue(name, value)


def test_glue_records_the_value_for_myst_nb_in_a_kernel():
    "Inside IPython, the value is displayed under myst-nb's glue mime type with its name, and not shown as text."
    pytest.importorskip("myst_nb")
    from IPython.core.interactiveshell import InteractiveShell
    from sde_diffusion.core import glue
    shell = InteractiveShell.instance()
    shown = []
    shell.display_pub.publish = lambda data, metadata=None, **kw: shown.append((data, metadata))
    try:
        assert glue("sw2_floor", 0.0123) == 0.0123
    finally:
        InteractiveShell.clear_instance()
    (data, metadata), = shown
    assert data == {"application/papermill.record/text/plain": "0.0123"}
    assert metadata["scrapbook"] == {"name": "sw2_floor", "mime_prefix": "application/papermill.record/"}
