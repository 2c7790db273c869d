"""The digits: deterministic stratified splits, the [-1, 1] scale, upsampling, the 8-bit bins shared with the
likelihood chapter, loaders with a DistributedSampler, image grids and PNGs, and the optional MNIST loader's errors."""
import builtins
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from sde_diffusion.data import (DigitsDataset, _mnist_tensors, digits_loader, from_uint8, image_grid, load_digits, load_mnist,
                                save_image_grid, stratified_split, to_uint8)
from sde_diffusion.likelihood import dequantize



@pytest.fixture(scope="module")
def digits():
    return {split: load_digits(split) for split in ("all", "train", "test")}


# ---------------------------------------------------------------------------------------------------------------------
# splits


def test_split_sizes_disjoint_and_complete(digits):
    (x_all, y_all), (x_tr, y_tr), (x_te, y_te) = digits["all"], digits["train"], digits["test"]
    assert x_all.shape == (1797, 1, 8, 8) and y_all.shape == (1797,) and y_all.dtype == torch.long
    assert len(x_tr) + len(x_te) == 1797
    train, test = stratified_split(y_all)
    assert len(set(train.tolist()) & set(test.tolist())) == 0
    assert torch.equal(torch.cat([train, test]).sort().values, torch.arange(1797))
    assert torch.equal(x_tr, x_all[train]) and torch.equal(y_te, y_all[test])
    # no test image is also a training image (the digits contain no exact duplicates across the split)
    tr_rows = {tuple(r) for r in x_tr.flatten(1).tolist()}
    assert not any(tuple(r) in tr_rows for r in x_te.flatten(1).tolist())


@pytest.mark.parametrize("f", [0.1, 0.2, 0.5, 0.77])
def test_stratified_counts(digits, f):
    y_all = digits["all"][1]
    n_c = torch.bincount(y_all, minlength=10).double()
    _, y_te = load_digits("test", test_fraction=f)
    assert torch.equal(torch.bincount(y_te, minlength=10), torch.floor(f * n_c + 0.5).long())
    share = torch.bincount(y_te, minlength=10).double() / n_c
    assert ((share - f).abs() <= 0.5 / n_c + 1e-12).all()          # only the rounding of eq. (data-split)


def test_split_determinism_and_seed():
    a, b = load_digits("test", seed=3), load_digits("test", seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    labels = load_digits("all")[1]
    assert not torch.equal(stratified_split(labels, seed=3)[1], stratified_split(labels, seed=4)[1])
    state = torch.random.get_rng_state()
    stratified_split(labels, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())        # the global generator is left alone


def test_stratified_split_generic_labels():
    labels = torch.tensor([5, 5, 5, 5, 2, 2, 2, 2, 2, 2, 9, 9])
    train, test = stratified_split(labels, 0.5, seed=0)
    assert torch.bincount(labels[test], minlength=10).tolist() == torch.bincount(labels[train], minlength=10).tolist()
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(torch.tensor([0, 0, 1]), 0.5)             # class 1 has one item
    with pytest.raises(ValueError, match="labels"):
        stratified_split(torch.tensor([0.0, 1.0]))


# ---------------------------------------------------------------------------------------------------------------------
# values, dtype, device, upsampling


def test_value_range_and_levels(digits):
    x = digits["all"][0]
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert torch.equal(x.unique(), torch.arange(17, dtype=torch.float32) / 8 - 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device(device, dtype):
    x, y = load_digits("test", size=16, dtype=dtype, device=device)
    assert x.dtype == dtype and x.device.type == device and y.device.type == device and y.dtype == torch.long
    loader = digits_loader(32, "test", device=device, dtype=dtype, generator=torch.Generator().manual_seed(0))
    xb, yb = next(iter(loader))
    assert xb.shape == (32, 1, 8, 8) and xb.device.type == device and xb.dtype == dtype


@pytest.mark.parametrize("size", [12, 16, 28, 32])
def test_upsampling_keeps_mean_intensity(digits, size):
    x8 = digits["all"][0].double()
    x = load_digits("all", size=size, dtype=torch.float64)[0]
    assert x.shape == (1797, 1, size, size) and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x.mean((1, 2, 3)), x8.mean((1, 2, 3)), rtol=0, atol=1e-12)


def test_upsampling_other_sizes_close(digits):
    x8 = digits["all"][0].double()
    for size in (9, 13, 27):
        x = load_digits("all", size=size, dtype=torch.float64)[0]
        assert (x.mean((1, 2, 3)) - x8.mean((1, 2, 3))).abs().max() < 0.05 and x.min() >= -1 and x.max() <= 1


def test_upsampling_is_bilinear_of_the_8x8(digits):
    x8 = digits["train"][0]
    x16 = load_digits("train", size=16)[0]
    ref = torch.nn.functional.interpolate(x8.double(), size=(16, 16), mode="bilinear", align_corners=False).float()
    torch.testing.assert_close(x16, ref)


# ---------------------------------------------------------------------------------------------------------------------
# 8-bit bins


def test_uint8_round_trip_exact():
    k = torch.arange(256, dtype=torch.uint8)
    for dtype in (torch.float32, torch.float64):
        x = from_uint8(k, dtype)
        assert x.dtype == dtype and torch.equal(to_uint8(x), k)
        torch.testing.assert_close(x, (k.double() + 0.5) / 128 - 1, check_dtype=False)
    assert to_uint8(torch.tensor([-1.0, 1.0, -5.0, 5.0])).tolist() == [0, 255, 0, 255]


def test_uint8_quantization_error_and_dequantize_bins():
    x = torch.rand(100_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    assert (from_uint8(to_uint8(x), torch.float64) - x).abs().max() <= 1 / 256
    k = torch.randint(0, 256, (50_000,), generator=torch.Generator().manual_seed(1))
    y = dequantize(k, torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.equal(to_uint8(y).long(), k)                      # the bins of likelihood.dequantize


def test_digit_levels_and_mnist_scaling(digits):
    assert to_uint8(torch.arange(17) / 8.0 - 1).tolist() == [16 * v for v in range(16)] + [255]
    k = torch.arange(256, dtype=torch.uint8)
    x, y = _mnist_tensors(k.reshape(1, 16, 16).expand(3, 16, 16), torch.tensor([1, 2, 3]), torch.float32, None)
    assert x.shape == (3, 1, 16, 16) and x.min() == -1 and x.max() == 1 and y.dtype == torch.long
    assert torch.equal(to_uint8(x)[:, 0], k.reshape(1, 16, 16).expand(3, 16, 16))


@pytest.mark.parametrize("bad, match", [
    (lambda: to_uint8(torch.tensor([float("nan")])), "NaN"),
    (lambda: to_uint8(torch.tensor([1, 2])), "images"),
    (lambda: to_uint8(np.zeros(3)), "images"),
    (lambda: from_uint8(torch.tensor([-1])), "k"),
    (lambda: from_uint8(torch.tensor([0.5])), "k"),
    (lambda: from_uint8(torch.tensor([0]), dtype=torch.long), "dtype"),
])
def test_uint8_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


# ---------------------------------------------------------------------------------------------------------------------
# datasets and loaders


def test_dataset_and_loader_epoch(digits):
    ds = DigitsDataset("train", size=16)
    assert len(ds) == len(digits["train"][1]) and ds[3][0].shape == (1, 16, 16)
    batches = list(digits_loader(100, "train", size=16, generator=torch.Generator().manual_seed(0)))
    labels = torch.cat([b[1] for b in batches])
    assert len(labels) == len(ds) and torch.equal(torch.bincount(labels), torch.bincount(ds.labels))
    again = list(digits_loader(100, "train", size=16, generator=torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    other = next(iter(digits_loader(100, "train", size=16, generator=torch.Generator().manual_seed(1))))
    assert not torch.equal(other[1], batches[0][1])
    assert all(len(b[1]) == 100 for b in digits_loader(100, drop_last=True))
    unshuffled = next(iter(digits_loader(50, "test", shuffle=False)))
    assert torch.equal(unshuffled[0], digits["test"][0][:50])


@pytest.mark.parametrize("drop_last", [False, True])
def test_distributed_sampler_partitions(drop_last):
    ds = DigitsDataset("test")                                      # 359 images: odd, so padding or dropping matters
    n = len(ds)
    per_rank = []
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0, drop_last=drop_last)
        sampler.set_epoch(1)
        loader = digits_loader(64, "test", sampler=sampler)
        images = torch.cat([b[0] for b in loader])
        idx = list(sampler)
        assert torch.equal(images, ds.images[idx])
        per_rank.append(idx)
    a, b = map(set, per_rank)
    assert len(per_rank[0]) == len(per_rank[1])
    if drop_last:
        assert not a & b and len(a | b) == n - 1
    else:
        assert a | b == set(range(n)) and len(per_rank[0]) + len(per_rank[1]) - len(a | b) == 1
    # a new epoch reshuffles, the same on both ranks
    s0 = DistributedSampler(ds, num_replicas=2, rank=0, shuffle=True, seed=0)
    s0.set_epoch(2)
    assert list(s0) != per_rank[0]


@pytest.mark.parametrize("bad, match", [
    (lambda: digits_loader(0), "batch_size"),
    (lambda: digits_loader(8, shuffle=True, sampler=DistributedSampler(DigitsDataset(), num_replicas=2, rank=0)), "sampler"),
    (lambda: digits_loader(8, "test", sampler=DistributedSampler(DigitsDataset("train"), num_replicas=2, rank=0)), "sampler"),
    (lambda: load_digits("validation"), "split"),
    (lambda: load_digits(size=7), "size"),
    (lambda: load_digits(size=True), "size"),
    (lambda: load_digits(test_fraction=0), "test_fraction"),
    (lambda: load_digits(test_fraction=float("nan")), "test_fraction"),
    (lambda: load_digits(seed=1.0), "seed"),
    (lambda: load_digits(dtype=torch.int32), "dtype"),
    (lambda: DigitsDataset("dev"), "split"),
])
def test_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


# ---------------------------------------------------------------------------------------------------------------------
# grids and PNGs


def test_image_grid_layout():
    x = torch.arange(5 * 4 * 3, dtype=torch.float32).reshape(5, 1, 4, 3)
    g = image_grid(x, nrow=2, padding=1, pad_value=-7.0)
    assert g.shape == (3 * 5 - 1, 2 * 4 - 1) and isinstance(g, np.ndarray)
    np.testing.assert_array_equal(g[5:9, 4:7], x[3, 0].numpy())      # row 1, column 1
    assert (g[10:, 4:] == -7).all()                                  # the empty sixth cell
    assert image_grid(np.zeros((3, 4, 4)), nrow=8).shape == (4, 3 * 5 - 1)
    assert image_grid(torch.zeros(2, 3, 4, 4)).shape == (4, 9, 3)
    for bad in (lambda: image_grid(torch.zeros(2, 2, 4, 4)), lambda: image_grid(torch.zeros(2, 1, 4, 4), nrow=0)):
        with pytest.raises(ValueError):
            bad()


def test_save_image_grid_round_trip(tmp_path, digits):
    import matplotlib.image
    x = digits["train"][0][:12]
    path = save_image_grid(x, tmp_path / "grid.png", nrow=4, zoom=3)
    png = matplotlib.image.imread(path)
    expected = (image_grid(x, nrow=4) + 1) / 2
    assert png.shape[:2] == (3 * expected.shape[0], 3 * expected.shape[1])
    assert np.abs(png[1::3, 1::3, 0] - expected).max() <= 1 / 255 + 1e-6
    with pytest.raises(ValueError, match="zoom"):
        save_image_grid(x, tmp_path / "bad.png", zoom=0)


# ---------------------------------------------------------------------------------------------------------------------
# MNIST: never downloads, clear errors


def test_load_mnist_without_torchvision(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name == "torchvision" or name.startswith("torchvision."):
            raise ImportError("No module named 'torchvision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    with pytest.raises(ImportError, match=r"sde_diffusion\[mnist\]"):
        load_mnist(tmp_path)
    assert not any(tmp_path.iterdir())


def test_load_mnist_missing_files_no_download(tmp_path):
    pytest.importorskip("torchvision")
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_mnist(tmp_path)


def test_load_mnist_bad_split(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, split="all")
