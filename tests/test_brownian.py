"""Brownian motion: exact increments, quadratic variation, Itô and Stratonovich sums."""
import math

import pytest
import torch

from sde_diffusion.brownian import (brownian_increments, brownian_path, coarsen_increments, increments_to_path,
                                    ito_sum, quadratic_variation, stratonovich_sum, time_grid)



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_increments_are_exact(device, dtype):
    "Non-uniform grid: each increment's variance equals its dt (chi-square test on the normalized sum of squares)."
    ts = torch.tensor([0.0, 0.01, 0.1, 0.5, 2.0], dtype=dtype, device=device)
    M = 50_000
    dW = brownian_increments(ts, (M,), torch.Generator(device).manual_seed(0))
    assert dW.shape == (4, M) and dW.dtype == dtype and dW.device.type == device
    var = dW.double().pow(2).mean(1) / ts.diff().double()
    assert ((var - 1).abs() < 4 * math.sqrt(2 / M)).all()
    corr = (dW[0] * dW[3]).double().mean() / math.sqrt(0.01 * 1.5)
    assert abs(corr) < 4 / math.sqrt(M)


def test_same_seed_same_path_and_coarsening():
    ts = time_grid(0.0, 1.0, 64)
    a = brownian_path(ts, (3, 2), torch.Generator().manual_seed(5))
    b = brownian_path(ts, (3, 2), torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (65, 3, 2) and (a[0] == 0).all()
    dW = a.diff(dim=0)
    coarse = increments_to_path(coarsen_increments(dW, 8))
    torch.testing.assert_close(coarse, a[::8])   # the same path, seen every 8th step


def test_quadratic_variation_and_sums():
    T, N, M = 2.0, 4096, 2000
    W = brownian_path(time_grid(0.0, T, N, dtype=torch.float64), (M,), torch.Generator().manual_seed(3))
    qv = quadratic_variation(W)
    dt = T / N
    assert abs(qv.mean() - T) < 4 * math.sqrt(2 * T * dt / M)             # E = T, Var = 2 T dt
    assert abs(qv.std() / math.sqrt(2 * T * dt) - 1) < 4 / math.sqrt(2 * M)
    ito, strat = ito_sum(W, W), stratonovich_sum(W, W)
    torch.testing.assert_close(ito, 0.5 * W[-1] ** 2 - 0.5 * qv)          # telescoping identity
    torch.testing.assert_close(strat, 0.5 * W[-1] ** 2)
    assert abs(ito.mean()) < 4 * math.sqrt(T**2 / 2 / M)                  # Itô integral has mean 0


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="`factor`=3 must divide"):
        coarsen_increments(torch.zeros(8, 2), 3)
    with pytest.raises(ValueError, match="`factor` must be a positive integer"):
        coarsen_increments(torch.zeros(8, 2), 0)
    with pytest.raises(ValueError, match="`h` and `W` must be sampled on the same grid"):
        ito_sum(torch.zeros(5), torch.zeros(6))
    with pytest.raises(TypeError, match="`ts` must be a floating-point tensor"):
        brownian_increments(torch.arange(4), (2,))
