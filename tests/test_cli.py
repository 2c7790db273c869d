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


pytestmark = pytest.mark.slow   # every test here starts `python -m sde_diffusion` (~5 s of imports each)

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
    assert "UniPC" in p.stderr                                     # the bar of the default sampler at 10 steps
    # the default is `sample`'s own (predictor "auto", its end time): the same samples in this interpreter (one
    # thread, as the CLI ran)
    import torch
    from sde_diffusion.sampling import sample
    from sde_diffusion.training import load_trained
    trained = load_trained(out / "ckpt.pt", device="cpu")
    with torch.inference_mode():
        run = lambda **kw: sample(trained.sde, trained.model, (4, 1, 8, 8), steps=10,
                                  generator=torch.Generator("cpu").manual_seed(3), **kw).samples
        assert torch.equal(torch.load(tmp_path / "x.pt"), run())
        assert not torch.equal(run(), run(predictor="reverse_diffusion"))
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
    (["train", "--data", "moons", "--model", "unet", "--out", "x"], 2, "argument --model"),
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


# ----------------------------------------------------------------------------------- faults: in-process, then signals

from sde_diffusion.cli import build_parser, main  # noqa: E402

TINY_2D = ["--data", "ring", "--hidden", "16", "--depth", "2", "--embed-dim", "16", "--batch-size", "32",
           "--device", "cpu", "--no-progress"]


def run_main(argv, capsys):
    "main(argv) in this process -> (exit status, stdout lines, stderr lines); an escaping KeyboardInterrupt is a status."
    try:
        status = main([str(a) for a in argv])
    except SystemExit as e:
        status = e.code
    except KeyboardInterrupt:
        status = "KeyboardInterrupt escaped"
    out, err = capsys.readouterr()
    return status, out.strip().splitlines(), err.strip().splitlines()


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory):
    "A 2-D checkpoint of 5 steps, trained through main."
    out = tmp_path_factory.mktemp("ring") / "run"
    assert main(["train", *TINY_2D, "--steps", "5", "--out", str(out)]) == 0
    return out


SAMPLE_FAST = ["--n", "8", "--steps", "4", "--predictor", "euler_maruyama", "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("where", ["folder", "parent is a file", "samples to a folder"])
def test_sample_os_errors_are_one_line(where, ring_run, tmp_path, capsys):
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "file").write_text("")
    extra = {"folder": ["--out", tmp_path / "dir.png"],
             "parent is a file": ["--out", tmp_path / "file" / "x.png"],
             "samples to a folder": ["--out", tmp_path / "ok.png", "--save-samples", tmp_path]}[where]
    status, out, err = run_main(["sample", "--ckpt", ring_run, *SAMPLE_FAST, *extra], capsys)
    assert status == 1 and len(err) == 1 and err[0].startswith("python -m sde_diffusion sample: error:"), err
    assert not (tmp_path / "ok.png").exists()          # refused before sampling: nothing half done


@pytest.mark.parametrize("name", ["x.jpg", "x.pdf", "x"])
def test_sample_refuses_a_suffix_it_would_not_honour(name, tmp_path, capsys):
    status, out, err = run_main(["sample", "--ckpt", tmp_path / "c.pt", "--out", tmp_path / name], capsys)
    assert status == 2 and "argument --out" in err[-1] and ".png" in err[-1], err
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("argv,needle", [
    (["--data", "moons", "--size", "16"], "argument --size"),
    (["--data", "moons", "--channels", "8,16"], "argument --channels"),
    (["--data", "moons", "--dropout", "0.1"], "argument --dropout"),
    (["--data", "digits", "--hidden", "16"], "argument --hidden"),
    (["--data", "digits", "--depth", "2"], "argument --depth"),
    (["--data", "moons", "--conditional"], "argument --conditional"),
    (["--data", "moons", "--model", "unet"], "argument --model"),
    (["--data", "digits", "--model", "mlp"], "argument --model"),
    (["--data", "moons", "--amp", "--dtype", "float64"], "argument --amp"),
    (["--data", "moons", "--hidden", "16", "--model-kwargs", '{"hidden": 8}'], "argument --model-kwargs"),
    (["--data", "moons", "--resume", "--overwrite"], "argument --overwrite"),
    (["--data", "moons", "--allow-data-change"], "argument --allow-data-change"),
])
def test_train_options_that_do_not_apply_are_usage_errors(argv, needle, tmp_path, capsys):
    status, out, err = run_main(["train", *argv, "--steps", "0", "--out", tmp_path / "run", "--no-progress"], capsys)
    assert status == 2 and err[-1].startswith("python -m sde_diffusion train: error: " + needle), err
    assert not (tmp_path / "run").exists()


def test_sample_snr_without_corrector_is_a_usage_error(tmp_path, capsys):
    status, out, err = run_main(["sample", "--ckpt", tmp_path / "c.pt", "--out", tmp_path / "x.png", "--snr", "0.2"], capsys)
    assert status == 2 and "argument --snr" in err[-1], err


def test_existing_run_names_the_command_line_options(ring_run, capsys):
    status, out, err = run_main(["train", *TINY_2D, "--steps", "5", "--out", ring_run], capsys)
    assert status == 1 and len(err) == 1 and "--resume" in err[0] and "--overwrite" in err[0], err
    assert "resume=True" not in err[0] and "overwrite=True" not in err[0]


def test_resume_with_nothing_to_do_says_so_and_writes_nothing(ring_run, capsys):
    before = {p.name: p.read_bytes() for p in ring_run.iterdir()}
    status, out, err = run_main(["train", *TINY_2D, "--steps", "3", "--out", ring_run, "--resume"], capsys)
    assert status == 0 and not any("wrote" in line for line in out) and any("nothing" in line for line in out), out
    assert {p.name: p.read_bytes() for p in ring_run.iterdir()} == before


def test_resume_on_changed_data_names_the_option(tmp_path, capsys):
    from sde_diffusion.training import CKPT_NAME, load_checkpoint, save_checkpoint
    out = tmp_path / "run"
    assert run_main(["train", *TINY_2D, "--steps", "3", "--out", out], capsys)[0] == 0
    state = load_checkpoint(out / CKPT_NAME)
    state["config"] = state["config"].to_dict()
    state["data_fingerprint"] = {**state.get("data_fingerprint", {}), "sha256": "0" * 64}    # as if the data changed
    save_checkpoint(out / CKPT_NAME, state)
    status, _, err = run_main(["train", *TINY_2D, "--steps", "4", "--out", out, "--resume"], capsys)
    assert status == 1 and len(err) == 1 and "--allow-data-change" in err[0] and "allow_data_change" not in err[0], err
    status, _, err = run_main(["train", *TINY_2D, "--steps", "4", "--out", out, "--resume", "--allow-data-change"], capsys)
    assert status == 0 and load_checkpoint(out / CKPT_NAME)["step"] == 4


@pytest.mark.parametrize("fault,status,needle", [("ctrl-c", 130, "interrupted"), ("oom", 1, "out of memory")])
def test_sample_faults_are_one_line(fault, status, needle, ring_run, tmp_path, capsys, monkeypatch):
    import torch
    import sde_diffusion.sampling

    def failing(*args, **kwargs):
        raise KeyboardInterrupt if fault == "ctrl-c" else torch.OutOfMemoryError("CUDA out of memory. Tried to allocate")
    monkeypatch.setattr(sde_diffusion.sampling, "sample", failing)
    got, out, err = run_main(["sample", "--ckpt", ring_run, *SAMPLE_FAST, "--out", tmp_path / "x.png"], capsys)
    assert got == status and len(err) == 1 and needle in err[0], (got, err)
    assert not (tmp_path / "x.png").exists()


def test_sample_from_a_checkpoint_train_did_not_write(tmp_path, capsys):
    from sde_diffusion.training import save_checkpoint
    import torch
    save_checkpoint(tmp_path / "other.pt", {"weights": torch.zeros(3)})
    status, out, err = run_main(["sample", "--ckpt", tmp_path / "other.pt", "--out", tmp_path / "x.png"], capsys)
    assert status == 1 and len(err) == 1 and "other.pt" in err[0], err


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_during_train_saves_and_resumes_exactly(sig, tmp_path, capsys):
    """Ctrl-C or SIGTERM to a real `python -m sde_diffusion train`: exit 130, one line, the checkpoint of the step
    reached; --resume continues it to the same weights, EMA and losses as one uninterrupted run."""
    import signal
    import time
    import torch
    from sde_diffusion.cli import _config, _training_data
    from sde_diffusion.training import CKPT_NAME, load_checkpoint, train
    out = tmp_path / "run"
    argv = ["train", *TINY_2D, "--lr-warmup", "10", "--ckpt-every", "10", "--log-every", "7", "--out", out]
    proc = subprocess.Popen([sys.executable, "-m", "sde_diffusion", *map(str, argv), "--steps", "1000000"], env=ENV,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / CKPT_NAME).exists():          # the checkpoint of step 10: it is training
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.02)
        time.sleep(0.05)
        proc.send_signal(getattr(signal, sig))
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    lines = stderr.strip().splitlines()
    assert proc.returncode == 130 and len(lines) == 1 and sig in lines[0] and "--resume" in lines[0], (proc.returncode, stderr)
    step = load_checkpoint(out / CKPT_NAME)["step"]
    assert step >= 10 and f"step {step}:" in lines[0] and not (out / (CKPT_NAME + ".tmp")).exists()
    assert len((out / "losses.csv").read_text().splitlines()) == step + 1
    more = [str(a) for a in argv] + ["--steps", str(step + 13)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                            # as in the child (OMP_NUM_THREADS=1): the same arithmetic
    try:
        assert run_main(more + ["--resume"], capsys)[0] == 0
        args = build_parser().parse_args(more)
        straight = train(_config(args), _training_data(args, torch.device("cpu")))
    finally:
        torch.set_num_threads(threads)
    resumed = load_checkpoint(out / CKPT_NAME)
    assert resumed["step"] == step + 13 and resumed["losses"] == straight.losses
    assert all(torch.equal(v, resumed["model"][k]) for k, v in straight.model.state_dict().items())
    assert all(torch.equal(v, resumed["ema"]["shadow"][k]) for k, v in straight.ema.shadow.items())
