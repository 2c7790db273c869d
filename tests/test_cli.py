"""`python -m sde_diffusion`: end to end in fresh interpreters, help, and argument errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "sde_diffusion", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=timeout)


def test_train_and_sample_digits_end_to_end(tmp_path):
    out = tmp_path / "run"
    p = cli("train", "--data", "digits", "--model", "unet", "--channels", "8,16", "--embed-dim", "16", "--steps", 20,
            "--batch-size", 8, "--ckpt-every", 10, "--log-every", 5, "--device", "cpu", "--out", out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "train" in p.stderr                                     # the tqdm bar
    for name in ("ckpt.pt", "config.json", "losses.csv"):
        assert (out / name).is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == "digits" and config["data_shape"] == [1, 8, 8] and config["model"] == "unet"
    assert len((out / "losses.csv").read_text().splitlines()) == 21
    png = tmp_path / "grid.png"
    p = cli("sample", "--ckpt", out / "ckpt.pt", "--n", 4, "--steps", 10, "--out", png, "--seed", 3,
            "--save-samples", tmp_path / "x.pt")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ReverseDiffusion" in p.stderr                          # the sampler's bar
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] == img.shape[1] > 16     # a 2x2 grid of zoomed 8x8 images
    # resuming to more steps continues the run; the same seed gives the same samples
    p = cli("train", "--data", "digits", "--model", "unet", "--channels", "8,16", "--embed-dim", "16", "--steps", 25,
            "--batch-size", 8, "--out", out, "--resume", "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    assert len((out / "losses.csv").read_text().splitlines()) == 26


def test_sample_2d_scatter_from_folder(tmp_path):
    out = tmp_path / "moons"
    p = cli("train", "--data", "moons", "--steps", 10, "--hidden", 16, "--batch-size", 32, "--out", out, "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    png = tmp_path / "moons.png"
    p = cli("sample", "--ckpt", out, "--n", 50, "--steps", 5, "--predictor", "ddim", "--out", png, "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    assert matplotlib.image.imread(png).shape[:2] == (500, 500)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["sample", "--help"]])
def test_help(argv):
    p = cli(*argv)
    assert p.returncode == 0 and p.stdout.startswith("usage: python -m sde_diffusion")
    if argv[0] == "train":
        assert "--batch-size" in p.stdout and "--resume" in p.stdout
    if argv[0] == "sample":
        assert "--predictor" in p.stdout and "--ckpt" in p.stdout


@pytest.mark.parametrize("argv,status,needle", [
    ([], 2, "the following arguments are required"),
    (["fit"], 2, "invalid choice: 'fit'"),
    (["train", "--out", "x"], 2, "--data"),
    (["train", "--data", "mnist", "--out", "x"], 2, "argument --data: invalid choice"),
    (["train", "--data", "moons", "--steps", "-1", "--out", "x"], 2, "argument --steps"),
    (["train", "--data", "moons", "--lr", "fast", "--out", "x"], 2, "argument --lr"),
    (["train", "--data", "moons", "--channels", "a,b", "--out", "x"], 2, "argument --channels"),
    (["train", "--data", "moons", "--sde-kwargs", "{bad", "--out", "x"], 2, "argument --sde-kwargs"),
    (["train", "--data", "moons", "--model", "unet", "--out", "x"], 1, "argument --model"),
    (["train", "--data", "moons", "--ema-decay", "1", "--out", "x"], 2, "argument --ema-decay"),
    (["train", "--data", "moons", "--sde-kwargs", '{"sigma_max": 5}', "--steps", "1", "--out", "x"], 1, "sde_kwargs"),
    (["train", "--data", "moons", "--device", "gpu7", "--out", "x"], 1, "argument --device"),
    (["sample", "--ckpt", "missing.pt", "--out", "x.png"], 1, "missing.pt"),
    (["sample", "--ckpt", "c.pt", "--out", "x.png", "--n", "0"], 2, "argument --n"),
    (["sample", "--ckpt", "c.pt", "--out", "x.png", "--predictor", "rk4"], 2, "argument --predictor"),
])
def test_bad_arguments_exit_nonzero_naming_them(argv, status, needle, tmp_path):
    argv = [str(tmp_path / a) if a in ("x", "x.png", "missing.pt", "c.pt") else a for a in argv]
    p = cli(*argv)
    assert p.returncode == status, (p.returncode, p.stderr)
    assert needle in p.stderr, p.stderr
    assert not (tmp_path / "x").exists()
