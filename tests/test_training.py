"""sde_diffusion.training: exact resumption, checkpoint safety, config checks, RNG independence, DDP = one process."""
import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import signal
import time
import torch
from torch.utils.data import DataLoader, TensorDataset

from sde_diffusion.data import load_digits
from sde_diffusion.toy import ring_of_gaussians
from sde_diffusion.training import (CKPT_NAME, EMA, TrainConfig, build_model, learning_rate, load_checkpoint,
                                    load_trained, save_checkpoint, shard, train)

RING = ring_of_gaussians()
TINY = TrainConfig(model_kwargs=dict(hidden=16, depth=2, embed_dim=16), batch_size=32, steps=40, log_every=10, seed=1)


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _resumed(config, data_fn, tmp_path, split=20, **kw):
    "Train `split` steps with a checkpoint, then resume to `config.steps` in a fresh call."
    train(dataclasses.replace(config, steps=split), data_fn(), ckpt_dir=tmp_path, **kw)
    return train(config, data_fn(), ckpt_dir=tmp_path, resume=True, **kw)


# ---------------------------------------------------------------------------------------------------------- resume

def _tensor_data():
    return RING.sample(500, generator=torch.Generator().manual_seed(0))


def _labelled_loader(generator: bool):
    x = RING.sample(100, generator=torch.Generator().manual_seed(0))
    ds = TensorDataset(x, torch.arange(100) % 3)
    return lambda: DataLoader(ds, batch_size=32, shuffle=True, drop_last=True,
                              generator=torch.Generator().manual_seed(5) if generator else None)


@pytest.mark.parametrize("kind", ["sampler", "tensor", "loader", "loader-no-generator"])
def test_resume_is_bit_identical(kind, tmp_path):
    data_fn = {"sampler": lambda: RING.sample, "tensor": _tensor_data,
               "loader": _labelled_loader(True), "loader-no-generator": _labelled_loader(False)}[kind]
    config = dataclasses.replace(TINY, lr_warmup=5, lr_decay_steps=40)
    straight = train(config, data_fn())
    # 100 samples / 32 per batch = 3 batches per epoch: the split at 20 falls inside an epoch
    resumed = _resumed(config, data_fn, tmp_path)
    assert _same(straight.model, resumed.model) and _same(straight.ema_model, resumed.ema_model)
    assert straight.losses == resumed.losses and resumed.steps == 40 and len(resumed.losses) == 40
    assert resumed.ema.num_updates == 40


def test_resume_after_crash_between_checkpoints(tmp_path):
    config = dataclasses.replace(TINY, ckpt_every=10)
    straight = train(config, RING.sample)

    def crash(step, loss, model, ema):
        if step == 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, RING.sample, ckpt_dir=tmp_path, callback=crash)
    assert load_checkpoint(tmp_path / CKPT_NAME)["step"] == 20      # the checkpoint of step 30 was never written
    resumed = train(config, RING.sample, ckpt_dir=tmp_path, resume=True)
    assert _same(straight.model, resumed.model) and straight.losses == resumed.losses


def test_resume_with_more_steps_and_done_run(tmp_path):
    train(TINY, RING.sample, ckpt_dir=tmp_path)
    again = train(dataclasses.replace(TINY, steps=30), RING.sample, ckpt_dir=tmp_path, resume=True)   # already past 30
    assert again.steps == 40 and len(again.losses) == 40
    longer = train(dataclasses.replace(TINY, steps=50, log_every=7), RING.sample, ckpt_dir=tmp_path, resume=True)
    assert longer.steps == 50 and load_checkpoint(tmp_path / CKPT_NAME)["step"] == 50
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 50
    rows = (tmp_path / "losses.csv").read_text().splitlines()
    assert rows[0] == "step,loss" and len(rows) == 51 and rows[-1].startswith("50,")


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    a = train(TINY, RING.sample, ckpt_dir=tmp_path / "new", resume=True)
    b = train(TINY, RING.sample)
    assert _same(a.model, b.model)


# ------------------------------------------------------------------------------------------------ checkpoint safety

@pytest.fixture()
def good_ckpt(tmp_path):
    train(dataclasses.replace(TINY, steps=10), RING.sample, ckpt_dir=tmp_path)
    path = tmp_path / CKPT_NAME
    return path, path.read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "flipped", "garbage", "empty"])
def test_corrupted_checkpoint_is_refused_and_kept(good_ckpt, damage):
    path, good = good_ckpt
    bad = {"truncated": good[: len(good) // 3], "flipped": good[:-3000] + bytes([good[-3000] ^ 0x40]) + good[-2999:],
           "garbage": os.urandom(1000), "empty": b""}[damage]
    path.write_bytes(bad)
    with pytest.raises(ValueError, match=str(path).replace(".", r"\.")):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="ckpt.pt"):
        train(dataclasses.replace(TINY, steps=20), RING.sample, ckpt_dir=path.parent, resume=True)
    assert path.read_bytes() == bad                     # nothing was written over it


def test_foreign_and_future_files_are_refused(tmp_path):
    torch.save({"model": {}}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not an sde_diffusion training checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    save_checkpoint(tmp_path / "a.pt", {"x": 1})
    blob = torch.load(tmp_path / "a.pt", weights_only=True)
    torch.save({**blob, "version": 99}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="version 99"):
        load_checkpoint(tmp_path / "future.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("change", [dict(model_kwargs=dict(hidden=32, depth=2, embed_dim=16)), dict(sde="ve"),
                                    dict(sde_kwargs={"beta_max": 10.0}), dict(lr=1e-3), dict(dtype="float64")])
def test_mismatched_config_is_refused_and_kept(good_ckpt, change):
    path, good = good_ckpt
    with pytest.raises(ValueError) as info:
        train(dataclasses.replace(TINY, steps=20, **change), RING.sample, ckpt_dir=path.parent, resume=True)
    msg = str(info.value)
    assert str(path) in msg and next(iter(change)) in msg
    assert path.read_bytes() == good


def test_stale_tmp_is_ignored(good_ckpt):
    path, good = good_ckpt
    straight = train(dataclasses.replace(TINY, steps=20), RING.sample)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"\x00" * 100)                       # an interrupted write
    with pytest.warns(UserWarning, match="interrupted write"):
        resumed = train(dataclasses.replace(TINY, steps=20), RING.sample, ckpt_dir=path.parent, resume=True)
    assert _same(straight.model, resumed.model) and not tmp.exists()


def test_crash_while_saving_keeps_the_good_file(good_ckpt, monkeypatch):
    path, good = good_ckpt
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        if hasattr(f, "name") and str(f.name).endswith(".tmp"):
            f.write(b"partial")
            raise OSError("disk full")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        train(dataclasses.replace(TINY, steps=20), RING.sample, ckpt_dir=path.parent, resume=True)
    assert path.read_bytes() == good and not path.with_name(path.name + ".tmp").exists()
    assert load_checkpoint(path)["step"] == 10


def test_existing_checkpoint_needs_resume_or_overwrite(good_ckpt):
    path, good = good_ckpt
    with pytest.raises(FileExistsError, match="resume=True"):
        train(TINY, RING.sample, ckpt_dir=path.parent)
    assert path.read_bytes() == good
    train(dataclasses.replace(TINY, steps=5), RING.sample, ckpt_dir=path.parent, overwrite=True)
    assert load_checkpoint(path)["step"] == 5


def test_load_trained_restores_the_ema_network(tmp_path):
    res = train(TINY, RING.sample, ckpt_dir=tmp_path)
    restored = load_trained(tmp_path / CKPT_NAME)
    assert _same(restored.model, res.ema_model) and restored.step == 40 and restored.config == res.config
    raw = load_trained(tmp_path / CKPT_NAME, ema=False)
    assert all(torch.equal(a, b) for a, b in zip(raw.model.parameters(), res.model.parameters()))
    assert not restored.model.training and type(restored.sde).__name__ == "VPSDE"


# ---------------------------------------------------------------------------------------------------- config, misc

@pytest.mark.parametrize("field,value", [("sde", "vq"), ("model", "resnet"), ("lr", -1.0), ("lr", float("nan")),
                                         ("batch_size", 0), ("steps", -1), ("ema_decay", 1.0), ("grad_clip", 0.0),
                                         ("eps", 1.0), ("weighting", "sigma"), ("seed", -1), ("dtype", "float16"),
                                         ("log_every", 0), ("amp", "yes"), ("data_shape", (2, 0)),
                                         ("label_dropout", 1.0), ("model_kwargs", {"x": object()})])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}"):
        TrainConfig(**{field: value})


def test_config_round_trip_and_unknown_keys():
    c = TrainConfig(model="unet", model_kwargs={"channels": (8, 16)}, data_shape=[1, 8, 8], amp=True)
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="unknown TrainConfig keys \\['colour'\\]"):
        TrainConfig.from_dict({**c.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="model_kwargs"):
        build_model(TrainConfig(model_kwargs={"widht": 3}, data_shape=(2,)))
    with pytest.raises(ValueError, match="needs images"):
        build_model(TrainConfig(model="unet", data_shape=(2,)))


def test_learning_rate_schedule():
    c = TrainConfig(lr=1.0, lr_warmup=10, lr_decay_steps=100)
    assert learning_rate(c, 0) == pytest.approx(0.1 * 0.5 * (1 + math.cos(0)))
    assert learning_rate(c, 50) == pytest.approx(0.5)
    assert learning_rate(c, 100) == pytest.approx(0.0) and learning_rate(c, 500) == pytest.approx(0.0)
    assert learning_rate(TrainConfig(lr=0.3), 7) == 0.3


def test_training_ignores_and_keeps_the_global_rng():
    torch.manual_seed(123)
    a = train(TINY, RING.sample)
    state = torch.get_rng_state()
    torch.manual_seed(999)
    state2 = torch.get_rng_state()
    b = train(TINY, RING.sample)
    assert _same(a.model, b.model) and torch.equal(torch.get_rng_state(), state2) and not torch.equal(state, state2)


def test_bad_data_and_nan_losses():
    with pytest.raises(TypeError, match="`data`"):
        train(TINY, "ring")
    with pytest.raises(ValueError, match="data_shape"):
        train(dataclasses.replace(TINY, data_shape=(3,)), RING.sample)
    with pytest.raises(FloatingPointError, match="NaN/inf at step 1"):
        train(TINY, torch.full((10, 2), float("nan")))
    with pytest.raises(ValueError, match="multiple of"):
        shard(10, 0, 3)


def test_amp_on_cpu_warns_and_trains():
    with pytest.warns(UserWarning, match="amp"):
        res = train(dataclasses.replace(TINY, amp=True, steps=10), RING.sample)
    assert all(math.isfinite(v) for v in res.losses)


def test_unet_dropout_labels_float64_resume(tmp_path):
    "A class-conditional U-Net with dropout in float64 on (images, labels): deterministic, resumable, independent of torch's RNG."
    x, y = load_digits("train", dtype=torch.float64)
    config = TrainConfig(model="unet", model_kwargs=dict(channels=[8, 16], embed_dim=16, groups=4, num_classes=10, dropout=0.2),
                         dtype="float64", batch_size=8, steps=6, log_every=2)
    torch.manual_seed(0)
    a = train(config, (x, y))
    b = _resumed(config, lambda: (x, y), tmp_path, split=3)
    assert _same(a.model, b.model) and a.losses == b.losses
    assert a.model.label.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="gives no labels"):
        train(config, x)


def test_ema_state_round_trip():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, 0.9)
    ema.update(net)
    other = EMA(torch.nn.Linear(2, 2), 0.5, warmup=False)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and other.decay == 0.9 and other.warmup
    assert all(torch.equal(ema.shadow[k], other.shadow[k]) for k in ema.shadow)
    with pytest.raises(ValueError, match="does not match"):
        ema.update(torch.nn.Linear(2, 3, bias=False))


# ------------------------------------------------------------------------------------------------------------- DDP

_DDP_SCRIPT = """
import os, sys, torch
from sde_diffusion.toy import ring_of_gaussians
from sde_diffusion.training import TrainConfig, train
out = sys.argv[1]
results = {}
for dtype in ("float32", "float64"):
    ring = ring_of_gaussians(dtype=getattr(torch, dtype))
    config = TrainConfig(model_kwargs=dict(hidden=32, depth=2), batch_size=64, steps=30, log_every=10, lr=5e-3,
                         dtype=dtype, seed=7)
    res = train(config, ring.sample, ckpt_dir=os.path.join(out, dtype))
    results[dtype] = {"model": res.model.state_dict(), "losses": res.losses}
if int(os.environ["RANK"]) == 0:
    torch.save(results, os.path.join(out, "ddp.pt"))
# a SIGINT to process 1 alone, at step 10: the processes agree on it at the next logging step, 15, and stop there
import signal
from sde_diffusion.training import TrainingInterrupted
rank = int(os.environ["RANK"])
def ctrl_c(step, loss, model, ema):
    if step == 10 and rank == 1:
        os.kill(os.getpid(), signal.SIGINT)
try:
    train(TrainConfig(model_kwargs=dict(hidden=8, depth=1), batch_size=8, steps=40, log_every=5, seed=7),
          ring_of_gaussians().sample, ckpt_dir=os.path.join(out, "stop"), callback=ctrl_c)
except TrainingInterrupted as e:
    with open(os.path.join(out, f"stopped{rank}"), "w") as f:
        f.write(f"{e.step} {e.signal_name}")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the workers import the package this test imported (the repository's, or a mutation tester's copy of it)
PKG_ROOT = Path(sys.modules["sde_diffusion"].__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PKG_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
# A test's processes must not outlive it, even when it is killed outright (SIGKILL: no finally, no atexit). Linux's
# PR_SET_PDEATHSIG makes the kernel send a signal to a process when its parent dies. torchrun gets it from
# `_torchrun` (set between fork and exec); each worker, which torchrun starts in a session of its own, sets it at the
# top of its script (`_DIE_WITH_PARENT`). Each checks afterwards that its parent had not died already.
_PR_SET_PDEATHSIG = 1
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):   # SIGKILL when torchrun dies; exit now if it died before this line
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)   # 1 = PR_SET_PDEATHSIG
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            alive = b"torch.distributed.run" in f.read()
    except OSError:
        alive = False
    if not alive:
        os._exit(1)
"""


def _die_with(parent: int):
    "A `preexec_fn`: the child gets SIGKILL when process `parent` (the caller) dies (Linux; elsewhere nothing)."
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec():
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:          # the parent died between fork and prctl
            os._exit(1)
    return preexec


def _torchrun(script, args, timeout):
    "Run `script` (which starts with `_DIE_WITH_PARENT`) under torchrun with 2 processes, all tied to this process."
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), *map(str, args)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, preexec_fn=_die_with(os.getpid()))


def _alive(pid: int) -> bool:
    "Whether process `pid` exists and is not a zombie (Linux /proc)."
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PR_SET_PDEATHSIG (Linux)")
def test_ddp_workers_die_with_the_test_process(tmp_path):
    "SIGKILL (no cleanup runs) a process that launched torchrun as the DDP test does: torchrun and its workers go too."
    worker = tmp_path / "worker.py"
    worker.write_text(_DIE_WITH_PARENT + textwrap.dedent("""
        import os, sys, time
        tmp = os.path.join(sys.argv[1], f"worker{os.environ['RANK']}.tmp")
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()} {os.getppid()}")
        os.replace(tmp, tmp[:-4])
        time.sleep(300)
    """))
    launcher = tmp_path / "launcher.py"
    launcher.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_training import _torchrun
        _torchrun({str(worker)!r}, [{str(tmp_path)!r}], timeout=300)
    """))
    parent = subprocess.Popen([sys.executable, str(launcher)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = []
    try:
        files = [tmp_path / f"worker{r}" for r in (0, 1)]
        deadline = time.monotonic() + 120
        while not all(f.exists() for f in files):
            assert parent.poll() is None and time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        pids = [int(v) for f in files for v in f.read_text().split()]       # worker, torchrun, worker, torchrun
        assert pids[1] == pids[3] and _alive(pids[1]) and pids[1] != parent.pid
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while any(map(_alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, pids)), f"still running 5 s after their parent was killed: {[p for p in pids if _alive(p)]}"
    finally:
        parent.kill()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(tmp_path):
    "torchrun with 2 gloo processes, global batch 64 split 32 + 32, equals one process on the same global batches."
    script = tmp_path / "ddp_train.py"
    script.write_text(_DIE_WITH_PARENT + textwrap.dedent(_DDP_SCRIPT))
    proc = _torchrun(script, [tmp_path], timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    for dtype, tol in (("float32", 1e-6), ("float64", 1e-13)):
        ring = ring_of_gaussians(dtype=getattr(torch, dtype))
        config = TrainConfig(model_kwargs=dict(hidden=32, depth=2), batch_size=64, steps=30, log_every=10, lr=5e-3,
                             dtype=dtype, seed=7)
        single = train(config, ring.sample)
        a, b = ddp[dtype]["model"], single.model.state_dict()
        err = math.sqrt(sum((a[k] - b[k]).double().square().sum().item() for k in b))
        size = math.sqrt(sum(b[k].double().square().sum().item() for k in b))
        assert err / size < tol, f"{dtype}: relative difference {err / size:.2e}"
        assert ddp[dtype]["losses"] == pytest.approx(single.losses, rel=10 * tol)
        # rank 0 wrote the checkpoint, and it holds the trained weights
        saved = load_checkpoint(tmp_path / dtype / CKPT_NAME)
        assert saved["step"] == 30 and all(torch.equal(saved["model"][k], a[k]) for k in a)
        assert not (tmp_path / dtype / (CKPT_NAME + ".tmp")).exists()
    assert (tmp_path / "stopped0").read_text() == "15 a signal to another process"
    assert (tmp_path / "stopped1").read_text() == "15 SIGINT"
    assert load_checkpoint(tmp_path / "stop" / CKPT_NAME)["step"] == 15


# ------------------------------------------------------------------------------------------------------------ CUDA

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_and_resume(tmp_path):
    x = RING.sample(1000, generator=torch.Generator().manual_seed(0)).cuda()
    config = dataclasses.replace(TINY, amp=True)
    res = train(config, x)
    assert next(res.model.parameters()).is_cuda and all(math.isfinite(v) for v in res.losses)
    plain = dataclasses.replace(TINY, amp=False)
    a = train(plain, x)
    b = _resumed(plain, lambda: x, tmp_path)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------- faults: signals, data, nothing to do

def test_sigint_saves_the_step_reached_and_resumes_exactly(tmp_path):
    "A SIGINT at step 20 (no periodic checkpoints) writes the checkpoint of step 20; resuming from it is bit-exact."
    import signal
    config = dataclasses.replace(TINY, ckpt_every=0)
    straight = train(config, RING.sample)

    def interrupt(step, loss, model, ema):
        if step == 20:
            os.kill(os.getpid(), signal.SIGINT)        # as Ctrl-C would: the handler runs right after this call

    before = signal.getsignal(signal.SIGINT)   # default_int_handler, or SIG_IGN in a pytest-xdist worker
    with pytest.raises(KeyboardInterrupt) as info:
        train(config, RING.sample, ckpt_dir=tmp_path, callback=interrupt)
    assert getattr(info.value, "step", None) == 20 and getattr(info.value, "signal_name", None) == "SIGINT"
    assert load_checkpoint(tmp_path / CKPT_NAME)["step"] == 20
    assert not (tmp_path / (CKPT_NAME + ".tmp")).exists()
    assert signal.getsignal(signal.SIGINT) is before     # the handler that was there is put back
    resumed = train(config, RING.sample, ckpt_dir=tmp_path, resume=True)
    assert _same(straight.model, resumed.model) and _same(straight.ema_model, resumed.ema_model)
    assert straight.losses == resumed.losses


def test_second_sigint_stops_at_once_keeping_the_last_checkpoint(tmp_path):
    import signal

    def impatient(step, loss, model, ema):
        if step == 20:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)        # the second one raises here, in the middle of step 20's logging

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="a second SIGINT") as info:
        train(dataclasses.replace(TINY, ckpt_every=10), RING.sample, ckpt_dir=tmp_path, callback=impatient)
    assert not hasattr(info.value, "step") and load_checkpoint(tmp_path / CKPT_NAME)["step"] == 10
    assert signal.getsignal(signal.SIGINT) is before


def test_resume_with_nothing_to_do_writes_nothing(tmp_path):
    train(TINY, RING.sample, ckpt_dir=tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    again = train(dataclasses.replace(TINY, steps=30), RING.sample, ckpt_dir=tmp_path, resume=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before      # config.json still says 40 steps
    assert getattr(again, "written", None) == () and getattr(again, "resumed_from", None) == 40
    fresh = train(dataclasses.replace(TINY, steps=5), RING.sample, ckpt_dir=tmp_path / "new", resume=True)
    assert fresh.resumed_from is None and [p.name for p in fresh.written] == ["config.json", CKPT_NAME, "losses.csv"]


def test_zero_steps_still_writes_the_checkpoint_it_reports(tmp_path):
    res = train(dataclasses.replace(TINY, steps=0), RING.sample, ckpt_dir=tmp_path)
    assert load_checkpoint(tmp_path / CKPT_NAME)["step"] == 0 and CKPT_NAME in [p.name for p in res.written]
    assert _same(load_trained(tmp_path / CKPT_NAME, ema=False).model, res.model)


def _ring_tensor(seed):
    return RING.sample(200, generator=torch.Generator().manual_seed(seed))


def _loader_of(seed):
    return DataLoader(TensorDataset(_ring_tensor(seed)), batch_size=32, shuffle=True,
                      generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("kind", ["tensor", "sampler", "loader"])
def test_resume_refuses_changed_data(kind, tmp_path):
    "The checkpoint stores a fingerprint of the data; resuming on other data is refused unless allowed explicitly."
    from sde_diffusion.toy import grid_of_gaussians
    old, new = {"tensor": (lambda: _ring_tensor(0), lambda: _ring_tensor(1)),
                "sampler": (lambda: RING.sample, lambda: grid_of_gaussians().sample),
                "loader": (lambda: _loader_of(0), lambda: _loader_of(1))}[kind]
    train(dataclasses.replace(TINY, steps=10), old(), ckpt_dir=tmp_path)
    path = tmp_path / CKPT_NAME
    good = path.read_bytes()
    with pytest.raises(ValueError, match="allow_data_change") as info:
        train(dataclasses.replace(TINY, steps=20), new(), ckpt_dir=tmp_path, resume=True)
    assert str(path) in str(info.value) and "data" in str(info.value)
    assert path.read_bytes() == good
    train(dataclasses.replace(TINY, steps=15), old(), ckpt_dir=tmp_path, resume=True)       # the same data: fine
    res = train(dataclasses.replace(TINY, steps=20), new(), ckpt_dir=tmp_path, resume=True, allow_data_change=True)
    assert res.steps == 20 and load_checkpoint(path)["step"] == 20


def test_checkpoint_without_data_fingerprint_resumes_with_a_warning(tmp_path):
    train(dataclasses.replace(TINY, steps=10), RING.sample, ckpt_dir=tmp_path)
    state = load_checkpoint(tmp_path / CKPT_NAME)
    state["config"] = state["config"].to_dict()
    state.pop("data_fingerprint", None)                # as written before fingerprints existed
    save_checkpoint(tmp_path / CKPT_NAME, state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # nothing to do: the data go unused, no warning
        train(dataclasses.replace(TINY, steps=10), RING.sample, ckpt_dir=tmp_path, resume=True)
    with pytest.warns(UserWarning, match="fingerprint"):
        train(dataclasses.replace(TINY, steps=20), RING.sample, ckpt_dir=tmp_path, resume=True)
    assert load_checkpoint(tmp_path / CKPT_NAME)["data_fingerprint"]["kind"] == "sampler"   # stored from now on


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    with pytest.raises(ValueError, match="`resume`.*`overwrite`"):
        train(TINY, RING.sample, ckpt_dir=tmp_path, resume=True, overwrite=True)


@pytest.mark.parametrize("content", [b"\x00" * 4096, b"PK\x03\x04" + b"\x00" * 200, b"\x80\x02garbage"])
def test_unreadable_checkpoint_message_does_not_suggest_unsafe_loading(tmp_path, content):
    path = tmp_path / CKPT_NAME
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "weights_only" not in str(info.value) and "\n" not in str(info.value)


def test_load_trained_refuses_a_checkpoint_that_train_did_not_write(tmp_path):
    save_checkpoint(tmp_path / "other.pt", {"weights": torch.zeros(3)})
    with pytest.raises(ValueError, match="other.pt.*not one of `train`"):
        load_trained(tmp_path / "other.pt")


# ------------------------------------------------------------- the steps' draws and bookkeeping (issue 17, mutation testing)

class _Recording(torch.nn.Module):
    "A score network that records what `train` feeds it: the times, and the seed torch's generator holds (dropout)."

    def __init__(self, net, p=0.0, nan_at=None):
        super().__init__()
        self.net, self.sde, self.drop, self.nan_at = net, net.sde, torch.nn.Dropout(p), nan_at
        self.times, self.seeds = [], []

    def forward(self, x, t):
        self.times.append(t.detach().clone())
        self.seeds.append(torch.initial_seed())
        out = self.drop(self.net(x, t))
        return out * math.nan if len(self.times) == self.nan_at else out


@pytest.mark.parametrize("p", [0.0, 0.5], ids=["no-dropout", "dropout"])
def test_each_step_draws_the_batch_t_z_and_a_dropout_seed_from_the_seed_plus_1_generator(p):
    """The draws of a step come from one generator seeded with `seed + 1`, in the documented order: the batch indices,
    t = eps + (T - eps) u, z, and a dropout seed in [0, 2**62) only when the model has dropout with p > 0 (p = 0 draws
    nothing: the run equals one without the layer). float64, eps = 0.1: every time is compared exactly."""
    config = dataclasses.replace(TINY, steps=3, eps=0.1, dtype="float64", log_every=1)
    x = RING.sample(50, generator=torch.Generator().manual_seed(0)).double()
    model = _Recording(build_model(dataclasses.replace(config, data_shape=(2,))), p)
    train(config, x, model=model)
    g, T = torch.Generator().manual_seed(config.seed + 1), model.sde.T
    for step in range(3):
        torch.randint(50, (32,), generator=g)                                             # the batch
        t = 0.1 + (T - 0.1) * torch.rand(32, generator=g, dtype=torch.float64)
        torch.randn((32, 2), generator=g, dtype=torch.float64)                           # z
        assert torch.equal(model.times[step], t)
        if p > 0:
            assert model.seeds[step] == int(torch.randint(0, 2**62, (), generator=g))    # torch.manual_seed(seed + rank 0)


def test_a_model_built_for_another_sde_is_refused():
    config = dataclasses.replace(TINY, steps=1, data_shape=(2,))
    other = build_model(dataclasses.replace(config, sde_kwargs={"beta_max": 10.0}))
    with pytest.raises(ValueError, match="`model` was built with VPSDE"):
        train(config, RING.sample, model=other)


def test_amp_on_cpu_is_ignored_with_its_own_warning_and_changes_nothing():
    config = dataclasses.replace(TINY, steps=5)
    with pytest.warns(UserWarning, match=r"`amp`=True is ignored on cpu"):
        a = train(dataclasses.replace(config, amp=True), RING.sample)
    assert a.losses == train(config, RING.sample).losses


def test_the_decay_warning_needs_steps_beyond_the_decay():
    config = dataclasses.replace(TINY, steps=4, lr_decay_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(config, RING.sample)                                   # steps == lr_decay_steps: the schedule ends on time
    with pytest.warns(UserWarning, match="`steps` = 5 > `lr_decay_steps` = 4"):
        train(dataclasses.replace(config, steps=5), RING.sample)


def test_a_nan_loss_is_reported_at_its_own_step_inside_a_logging_window():
    config = dataclasses.replace(TINY, steps=10, log_every=10)
    model = _Recording(build_model(dataclasses.replace(config, data_shape=(2,))), nan_at=5)
    with pytest.raises(FloatingPointError, match="NaN/inf at step 5:"):
        train(config, RING.sample, model=model)


def test_callback_progress_bar_config_file_checkpoint_rng_and_wall_time(tmp_path, capsys):
    """Logging at steps 10, 20 and the last, 25, with the mean loss of the steps since the previous log; a progress bar
    that counts every step; config.json indented by 2; a CPU run's checkpoint holds no CUDA generator state; `seconds`
    is this call's wall time."""
    config = dataclasses.replace(TINY, steps=25, log_every=10)
    logs = []
    start = time.perf_counter()
    res = train(config, RING.sample, ckpt_dir=tmp_path, progress=True,
                callback=lambda step, loss, model, ema: logs.append((step, loss)))
    elapsed = time.perf_counter() - start
    assert [s for s, _ in logs] == [10, 20, 25]
    windows = (res.losses[:10], res.losses[10:20], res.losses[20:])
    assert [v for _, v in logs] == [sum(w) / len(w) for w in windows]
    assert "25/25" in capsys.readouterr().err
    text = (tmp_path / "config.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"
    assert set(load_checkpoint(tmp_path / CKPT_NAME)["rng"]) == {"generator", "torch"}
    assert 0 < res.seconds <= elapsed
