"""The digits: deterministic stratified splits, the [-1, 1] scale, upsampling, the 8-bit bins shared with the
likelihood chapter, loaders with a DistributedSampler, image grids and PNGs, and the optional MNIST loader's errors."""
import builtins
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from sde_diffusion.data import (DigitsDataset, _mnist_tensors, data_fingerprint, data_source, digits_loader, from_uint8,
                                image_grid, load_digits, load_mnist, save_image_grid, stratified_split, to_uint8)
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


# ---------------------------------------------------------------------------------------------------------------------
# data sources: what `train` draws its batches from (issue 17: mutation testing of `data_source`)

def _sha256(*values):
    "The fingerprint's hash as checkpoints store it: each tensor's dtype, shape and bytes, anything else by its repr."
    import hashlib
    h = hashlib.sha256()
    for v in values:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        else:
            h.update(f"{v!r};".encode())
    return h.hexdigest()


def test_tensor_source_draws_with_replacement_from_the_training_generator():
    "N = 10 samples of D = 3 (N != D): each step's rows are x[randint(N, (B,), generator=g)], sliced per process."
    x = torch.arange(30, dtype=torch.float64).reshape(10, 3)
    y = torch.arange(10) % 4
    src = data_source((x, y))
    assert src.shape == (3,) and src.has_labels and src.device == x.device
    xb, yb, B, rows = src.draw(8, torch.Generator().manual_seed(1), 1, 2)
    idx = torch.randint(10, (8,), generator=torch.Generator().manual_seed(1))
    assert B == 8 and rows == slice(4, 8)
    assert torch.equal(xb, x[idx[4:]]) and torch.equal(yb, y[idx[4:]])
    assert data_fingerprint((x, y)) == {"kind": "tensor", "n": 10, "shape": [3], "sha256": _sha256(x, y)}
    assert data_fingerprint(x)["sha256"] == _sha256(x, None)


def test_sampler_source_probes_with_two_draws_and_fingerprints_64_draws_at_seed_0():
    """A sampler is called once to learn the sample shape (2 draws from a generator seeded with 0, never the training
    generator) and fingerprinted by 64 draws from a generator seeded with 0: the hash checkpoints store, so that a
    resumed run can tell whether `data` changed."""
    calls = []

    def sampler(n, generator):
        calls.append((n, generator.initial_seed()))
        return (torch.randn(n, 2, generator=generator, dtype=torch.float64),)    # a 1-tuple (x,): no labels

    src = data_source(sampler)
    assert calls == [(2, 0)] and src.shape == (2,) and not src.has_labels
    fp = src.fingerprint()
    assert calls[1] == (64, 0)
    x64 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert fp == {"kind": "sampler", "n": None, "shape": [2], "sha256": _sha256(x64, None)}
    xb, yb, B, rows = src.draw(6, torch.Generator().manual_seed(3), 0, 3)
    assert calls[2] == (6, 3) and yb is None and B == 6 and rows == slice(0, 2)
    assert torch.equal(xb, torch.randn(6, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)[:2])


def test_data_shapes_at_their_boundaries():
    "One sample of one dimension, (1, 1), is data; a (N,) tensor and an empty (0, D) set are refused by name."
    src = data_source(torch.ones(1, 1))
    assert src.shape == (1,) and src.draw(3, torch.Generator().manual_seed(0), 0, 1)[0].shape == (3, 1)
    for bad in (torch.ones(5), torch.ones(0, 3)):
        with pytest.raises(ValueError, match=r"`data` must give samples x of shape \(N, \*D\)"):
            data_source(bad)
    with pytest.raises(ValueError, match=r"`data`\(n, generator\) must give samples x"):
        data_source(lambda n, generator: torch.ones(n))


def _loader(n=12, batch_size=4, seed=None, labels=True, **kw):
    from torch.utils.data import DataLoader, TensorDataset
    x = torch.arange(n * 3, dtype=torch.float64).reshape(n, 3)
    ds = TensorDataset(x, torch.arange(n) % 5) if labels else TensorDataset(x)
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, generator=gen, **kw)


def _epoch(loader, seed, epoch):
    "The batches of one epoch of a generator-less shuffling loader, as `data_source(loader, seed)` seeds it."
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed((seed * 1_000_003 + epoch) % 2**63)
        return list(loader)


@pytest.mark.parametrize("seed", [5, 2**62 + 7])   # the second wraps around 2**63
def test_loader_source_reshuffles_each_epoch_from_its_documented_seed(seed):
    """A DataLoader without a generator shuffles from torch's global generator: epoch e is seeded with
    (seed * 1_000_003 + e) mod 2**63 (a resumed run must see the same order), and the global state is put back."""
    loader = _loader(shuffle=True)
    src = data_source(loader, seed)
    assert src.shape == (3,) and src.has_labels and src.state_dict() == {"kind": "loader", "epoch": 0, "batch": 0, "gen_state": None}
    before = torch.get_rng_state()
    g = torch.Generator().manual_seed(0)
    for epoch in range(3):
        for want_x, want_y in _epoch(loader, seed, epoch):      # 3 batches per epoch
            x, y, B, rows = src.draw(4, g, 0, 1)
            assert B == 4 and rows == slice(0, 4) and torch.equal(x, want_x) and torch.equal(y, want_y)
        assert src.state_dict()["epoch"] == epoch + 1 and src.state_dict()["batch"] == 0
    assert torch.equal(torch.get_rng_state(), before)


def test_loader_source_with_a_generator_starts_at_its_first_batch_and_continues_its_stream():
    loader, reference = _loader(shuffle=True, seed=9), _loader(shuffle=True, seed=9)
    src = data_source(loader, 0)
    want = list(reference) + list(reference)                   # two epochs of the same generator stream
    got = [src.draw(4, torch.Generator(), 0, 1)[0] for _ in range(6)]
    assert all(torch.equal(a, b[0]) for a, b in zip(got, want))


def test_loader_source_slices_the_global_batch_or_takes_a_distributed_sampler_s_share():
    """Without a DistributedSampler a loader's batch is the global batch and each process takes its slice (eq.
    `eq-train-shard`); with one, each process's batch is its own share and the global batch is world times larger."""
    x, y, B, rows = data_source(_loader(batch_size=6)).draw(6, torch.Generator(), 1, 2)
    full = torch.arange(18, dtype=torch.float64).reshape(6, 3)
    assert B == 6 and rows == slice(3, 6) and torch.equal(x, full[3:]) and y.tolist() == [3, 4, 0]
    loader = _loader(batch_size=5, sampler=DistributedSampler(_loader().dataset, num_replicas=2, rank=1, shuffle=False))
    x, y, B, rows = data_source(loader).draw(10, torch.Generator(), 1, 2)
    assert x.shape == (5, 3) and B == 10 and rows == slice(5, 10)


def test_loader_source_labels_scalars_and_datasets_without_a_length():
    from torch.utils.data import DataLoader, TensorDataset
    assert not data_source(_loader(labels=False)).has_labels      # items (x,): no labels
    with pytest.raises(TypeError, match="must give floating tensors x of shape"):
        data_source(DataLoader(TensorDataset(torch.randn(6)), batch_size=2))    # items are 0-d

    class NoLength:                                             # map-style, but without __len__: only item 0 is read
        def __init__(self, second):
            self.second = second

        def __getitem__(self, i):
            return torch.full((2,), float(i if i == 0 else self.second))

    a, b = (data_source(DataLoader(NoLength(s), batch_size=1)).fingerprint() for s in (1.0, 7.0))
    assert a["n"] is None and a == b and a["sha256"] == _sha256(torch.zeros(2))


@pytest.mark.parametrize("n,items", [
    (100, [0, 7, 13, 20, 26, 33, 40, 46, 53, 59, 66, 73, 79, 86, 92, 99]),   # round(i * 99 / 15), i = 0..15
    (12, list(range(12))),                                                   # 16 spacings of 11/15: every item
])
def test_loader_fingerprint_hashes_16_evenly_spaced_items(n, items):
    loader = _loader(n=n, batch_size=4)
    ds = loader.dataset
    want = _sha256(*(v for i in items for v in ds[i]))                       # each item (x_i, y_i), in order
    assert data_fingerprint(loader) == {"kind": "loader", "n": n, "shape": [3], "batch_size": 4, "sha256": want}


def test_loader_fingerprint_of_randomly_augmented_items_is_drawn_at_seed_0_and_default_seed_is_0():
    from torch.utils.data import DataLoader

    class Noisy:                                                # an item with a random augmentation
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.full((2,), float(i)) + torch.randn(2)

    loader = DataLoader(Noisy(), batch_size=3, shuffle=True)
    before = torch.get_rng_state()
    fp = data_fingerprint(loader)
    assert torch.equal(torch.get_rng_state(), before) and data_fingerprint(loader) == fp
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        want = _sha256(*(Noisy()[i] for i in range(3)))
    assert fp["sha256"] == want
    src = data_source(_loader(shuffle=True))                   # the default seed is 0
    assert torch.equal(src.draw(4, torch.Generator(), 0, 1)[0], _epoch(_loader(shuffle=True), 0, 0)[0][0])


def test_a_pair_with_no_labels_is_unconditional_data():
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    src = data_source((x, None))
    assert not src.has_labels and src.draw(3, torch.Generator().manual_seed(1), 0, 1)[1] is None
    assert data_fingerprint((x, None)) == data_fingerprint(x)
    tagged = data_source(lambda n, generator: (torch.randn(n, 2, generator=generator), "tag"))   # (x, y, ...): y a tensor
    assert not tagged.has_labels and tagged.draw(4, torch.Generator().manual_seed(2), 0, 1)[1] is None
