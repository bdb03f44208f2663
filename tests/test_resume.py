"""Interrupted runs resume exactly: SIGKILL, SIGTERM and Ctrl-C mid-epoch, then --resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from config import Config
from conftest import ROOT
from cxr.errors import PipelineError
from cxr.training.checkpoint import RESUME_ONLY, load_checkpoint, member_payload, save_checkpoint, \
    saved_training, training_payload
from cxr.training.ema import make_ema
from cxr.training.state import Progress, RunRecords, RunState, Trainer
from dataset import EpochSampler

# 32 px, 2 epochs (1 frozen) of 8 micro-batches in 4 optimizer steps, a checkpoint every step.
TRAIN_ARGS = ["--pretrained", "false", "--image_size", "32", "--batch_size", "4",
              "--accumulation_steps", "2", "--epochs", "2", "--frozen_epochs", "1",
              "--warmup_steps", "2", "--checkpoint_every_steps", "1", "--deterministic", "true",
              "--early_stopping_patience", "0", "--min_positives", "1"]  # an 8-patient val split


def train_command(data_args, *extra):
    return [sys.executable, "train.py", *data_args[0], *TRAIN_ARGS, *extra]


def run_train(data_args, *extra, workers=0):
    result = subprocess.run(train_command(data_args, "--num_workers", str(workers), *extra),
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6, rtol=0), key


def interrupt_after_first_checkpoint(data_args, run_name, send, workers=0, extra=()):
    """Start a run in its own process group; once the first mid-epoch checkpoint exists,
    `send(process)` interrupts it. Returns (return code, stdout)."""
    last = data_args[1] / run_name / "last.pth"
    process = subprocess.Popen(
        train_command(data_args, "--run_name", run_name, "--num_workers", str(workers), *extra),
        cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be interrupted"
    send(process)
    stdout, _ = process.communicate(timeout=300)
    return process.returncode, stdout


@pytest.fixture(scope="module")
def reference(data_args):
    """The uninterrupted run's final weights."""
    run_train(data_args, "--run_name", "reference")
    return weights(data_args[1] / "reference" / "last.pth")


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(data_args, reference):
    code, _ = interrupt_after_first_checkpoint(data_args, "killed",
                                               lambda p: p.send_signal(signal.SIGKILL))
    assert code == -signal.SIGKILL
    last = data_args[1] / "killed" / "last.pth"
    position = torch.load(last, weights_only=True)["in_epoch"]
    assert position is not None and position["batches_done"] > 0  # killed mid-epoch
    stdout = run_train(data_args, "--run_name", "killed", "--resume", "auto")
    assert "resuming" in stdout and "train: wrote" in stdout
    assert_same_weights(weights(last), reference)
    final = torch.load(last, weights_only=True)  # 2 epochs x 4 optimizer steps, counted on
    assert final["in_epoch"] is None and final["epoch"] == 2 and final["global_step"] == 8
    assert_same_weights(weights(data_args[1] / "killed" / "best.pth"),
                        weights(data_args[1] / "reference" / "best.pth"))


def test_compiled_training_gives_the_eager_runs_weights(data_args, reference, monkeypatch):
    """--compile true: train.py's forward passes through torch.compile, across the frozen and
    the fine-tuning phase (a recompile), and writes the uncompiled model's weights.

    The graph is captured by dynamo and differentiated by AOTAutograd as for any backend, but
    run by "aot_eager" rather than inductor: inductor's C++ code generation takes minutes for
    DenseNet121 on this CPU (4 min for 2 steps at 32 px, with the suite's time limit in mind),
    and its kernels' rounding is PyTorch's to test. benchmarks/bench_train.py --compile times
    inductor itself."""
    import functools

    import train
    from cxr.cli import apply_overrides

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    cfg = apply_overrides(Config(), [*data_args[0], *TRAIN_ARGS, "--run_name", "compiled",
                                     "--compile", "true", "--num_workers", "0"], "train.py")
    train.main(cfg)
    assert_same_weights(weights(data_args[1] / "compiled" / "last.pth"), reference)


EMA_ARGS = ("--ema_decay", "0.9", "--keep_top_k", "2")


def test_with_ema_a_killed_run_resumes_to_the_same_average_and_weights(data_args):
    """--ema_decay: every checkpoint's model is the average, online_model the weights that
    train; both, and the average's update count, come back exactly after a SIGKILL."""
    run_train(data_args, "--run_name", "ema-reference", *EMA_ARGS)
    reference = torch.load(data_args[1] / "ema-reference" / "last.pth", weights_only=True)
    code, _ = interrupt_after_first_checkpoint(data_args, "ema-killed",
                                               lambda p: p.send_signal(signal.SIGKILL),
                                               extra=EMA_ARGS)
    assert code == -signal.SIGKILL
    run_dir = data_args[1] / "ema-killed"
    assert torch.load(run_dir / "last.pth", weights_only=True)["in_epoch"] is not None
    run_train(data_args, "--run_name", "ema-killed", "--resume", "auto", *EMA_ARGS)
    final = torch.load(run_dir / "last.pth", weights_only=True)
    assert final["ema"] == reference["ema"] == {"decay": 0.9, "updates": 8}
    assert_same_weights(final["model"], reference["model"])
    assert_same_weights(final["online_model"], reference["online_model"])
    head = "head.weight"
    assert not torch.allclose(final["model"][head], final["online_model"][head])
    best = torch.load(run_dir / "best.pth", weights_only=True)
    assert_same_weights(best["model"], weights(data_args[1] / "ema-reference" / "best.pth"))
    # --keep_top_k 2 of 2 epochs: both kept, weights and what consumers need only
    members = sorted(p.name for p in (run_dir / "top_k").iterdir())
    assert members == ["epoch_001.pth", "epoch_002.pth"]
    member = torch.load(run_dir / "top_k" / "epoch_002.pth", weights_only=True)
    assert "optimizer" not in member and "online_model" not in member and member["ema"]
    assert_same_weights(member["model"], final["model"])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_saves_says_how_to_resume_and_resumes_exactly(data_args, reference, signum):
    """The signal goes to the whole process group, as Ctrl-C in a terminal does, so the
    DataLoader worker receives it too."""
    name = f"stopped-{signal.Signals(signum).name}"
    code, stdout = interrupt_after_first_checkpoint(
        data_args, name, lambda p: os.killpg(p.pid, signum), workers=1)
    assert code == 128 + signum, stdout
    assert "Traceback" not in stdout
    last = data_args[1] / name / "last.pth"
    assert f"saved {last}. Resume with:" in stdout and f"--resume {last}" in stdout
    run_train(data_args, "--resume", str(last), workers=1)
    assert_same_weights(weights(last), reference)


def test_resume_with_another_image_size_is_a_clear_error(data_args, reference):
    last = data_args[1] / "reference" / "last.pth"
    result = subprocess.run(train_command(data_args, "--resume", str(last), "--image_size", "48"),
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "was trained with --image_size 32; this command asks --image_size 48" in result.stderr


def test_resume_of_a_checkpoint_for_other_labels_is_a_clear_error(data_args, reference, tmp_path):
    import train
    checkpoint = torch.load(data_args[1] / "reference" / "last.pth", weights_only=True)
    checkpoint["labels"] = ["No Finding", "Pneumonia"]
    (tmp_path / "run").mkdir()
    save_checkpoint(checkpoint, tmp_path / "run" / "last.pth")
    cfg = Config(resume=str(tmp_path / "run" / "last.pth"))
    with pytest.raises(PipelineError, match="trained for labels"):
        train.main(cfg)


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"model": {"w": torch.ones(2)}, "config": {}, "labels": [],
                     "normalization": {}}, path)

    def crash(obj, file):
        open(file, "wb").write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint({"model": {"w": torch.zeros(2)}}, path)
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temporary file left


def test_a_training_payload_reads_back_as_written_and_a_top_k_member_cannot_resume(tmp_path):
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    records = RunRecords({"mean": 0.5, "std": 0.25}, {}, {}, {"head": 2, "backbone": 1}, [], {})
    trainer = Trainer(model, model, None, optimizer,
                      torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
                      torch.amp.GradScaler("cpu", enabled=False), Config(ema_decay=0.9),
                      torch.device("cpu"), None, records=records, ema=make_ema(model, 0.9))
    trainer.state = RunState([{"epoch": 1}], 0.7, 1, {"Edema": 0.7})
    progress = Progress(epoch=2, batches_done=3, global_step=5, loss_sum=1.5, seen=12)
    payload = training_payload(trainer, progress, 1, rng=[])
    save_checkpoint(payload, tmp_path / "last.pth")
    saved = saved_training(load_checkpoint(tmp_path / "last.pth"), tmp_path / "last.pth")
    assert saved.in_epoch == progress and saved.next_epoch == Progress(epoch=2, global_step=5)
    assert saved.state == trainer.state and saved.warmup == records.warmup
    assert saved.ema[1] == {"decay": 0.9, "updates": 0}
    assert saved.weights.keys() == {"weight", "bias"}
    # an older checkpoint: what it lacks reads as a fresh run's
    older = {key: value for key, value in payload.items() if key not in (
        "history", "epochs_without_improvement", "in_epoch", "nonfinite_total", "rng",
        "world_size", "warmup")}
    saved = saved_training(older, tmp_path / "last.pth")
    assert saved.in_epoch is None and saved.state == RunState([], 0.7, 0, {"Edema": 0.7})
    assert (saved.warmup, saved.world_size, saved.rng) == (None, 1, [])
    member = member_payload(payload)
    assert not set(RESUME_ONLY) & member.keys() and member["ema"]
    with pytest.raises(PipelineError, match="cannot be resumed"):
        saved_training(member, tmp_path / "top_k" / "epoch_001.pth")


def test_early_stopping_ends_the_run_and_keeps_the_best_checkpoint(data_args):
    # learning rates of 0 and BatchNorm frozen: the val AUC never improves after epoch 1
    stdout = run_train(data_args, "--run_name", "early", "--epochs", "5", "--frozen_epochs", "5",
                       "--lr_head", "0", "--lr_backbone", "0", "--early_stopping_patience", "2")
    assert "early stop: no better val mean AUC for 2 epochs" in stdout
    run = data_args[1] / "early"
    assert len([l for l in stdout.splitlines() if l.startswith("epoch ")]) == 3
    assert torch.load(run / "best.pth", weights_only=True)["history"][-1]["epoch"] == 1


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_epoch_sampler_covers_every_image_once_and_resumes_mid_epoch(world_size):
    shards = [list(EpochSampler(10, seed=0, rank=r, world_size=world_size))
              for r in range(world_size)]
    assert len({len(shard) for shard in shards}) == 1  # the same number of batches everywhere
    real = sorted(index for shard in shards for index, _, keep in shard if keep)
    assert real == list(range(10))  # every image exactly once; padding is masked
    sampler = EpochSampler(10, seed=0, rank=0, world_size=world_size)
    sampler.set_epoch(1, start=2)
    assert list(sampler) == shards[0][2:]
    sampler.set_epoch(2)
    assert [i for i, _, _ in sampler] != [i for i, _, _ in shards[0]]  # a new order per epoch
