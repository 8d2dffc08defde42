"""Training survives SIGKILL, and no half-written checkpoint file is ever read.

1. ``python -m pumamed train`` on a tiny real run (BreastMNIST at 32 px, a small network, whole
   epochs of 34 steps, about a second each, so the kill lands inside an epoch on a fast machine
   too) is killed with SIGKILL after its first checkpoint, then continued with ``--resume``. It
   must end with a loadable checkpoint, a complete ``metrics.json`` (every epoch once) and metrics
   no worse than the same run left uninterrupted (run side by side).
2. Atomic writes: a forked writer saves two different checkpoints into one folder in a loop while
   this process reads it; the writer is SIGKILLed at random moments. Every read, during and after,
   sees one complete checkpoint (exactly model A or model B, never a torn file).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 3
TRAIN_ARGS = ["train", "--dataset", "breastmnist", "--size", "32", "--widths", "8,16", "--latent", "8",
              "--epochs", str(EPOCHS), "--batch-size", "16", "--quiet", "--no-test",
              "--seed", "3"]


def _start(out: Path, env: dict, *extra: str) -> subprocess.Popen:
    log = open(out.with_suffix(".log"), "a")
    return subprocess.Popen([sys.executable, "-m", "pumamed", *TRAIN_ARGS, "--out", str(out), *extra],
                            cwd=out.parent, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, timeout: float, what: str) -> None:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{what} did not finish within {timeout:.0f} s")
    assert code == 0, f"{what} exited with {code}"


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, data_root):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PUMAMED_DATA_DIR=str(data_root))
    straight_out, killed_out = tmp_path / "straight", tmp_path / "killed"
    straight = _start(straight_out, env)
    killed = _start(killed_out, env)
    try:
        _interrupt_and_resume(straight, killed, straight_out, killed_out, env)
    finally:
        for proc in (straight, killed):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _interrupt_and_resume(straight, killed, straight_out: Path, killed_out: Path, env: dict) -> None:
    from pumamed.net import checkpoint as ckpt
    from pumamed.net import load_model

    state = killed_out / "resume" / ckpt.RESUME_FILE
    deadline = time.time() + 150
    while not state.exists():
        assert killed.poll() is None, "training ended before its first checkpoint: " + \
            killed_out.with_suffix(".log").read_text()[-2000:]
        assert time.time() < deadline, "no checkpoint within 150 s"
        time.sleep(0.05)
    # Freeze it at once, so a fast machine cannot finish the run (and delete its resume state)
    # between our look and the kill; then let it run a little into the next epoch and kill it.
    killed.send_signal(signal.SIGSTOP)
    assert killed.poll() is None, "the run finished before it could be interrupted"
    killed.send_signal(signal.SIGCONT)
    time.sleep(0.15)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert state.exists(), "the run finished before it could be interrupted (its resume state is gone)"
    done = ckpt.read_resume_state(state.parent)[1]["info"]["epoch"] + 1
    assert done < EPOCHS, "the run finished before it could be interrupted"
    leftovers = [p.name for p in killed_out.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert all(name.startswith(".") for name in leftovers), leftovers  # never under a real name

    resumed = _start(killed_out, env, "--resume")
    try:
        _wait(resumed, 240, "the resumed run")
    finally:
        if resumed.poll() is None:
            resumed.kill()
    _wait(straight, 240, "the uninterrupted run")
    assert "resuming after epoch" in killed_out.with_suffix(".log").read_text()
    ours = [p.name for p in killed_out.rglob(".*.tmp") if p.name.split(".")[1] in ("model", "config", "metrics",
                                                                                     "training_state", "resume_state",
                                                                                     "weight_maps")]
    assert not ours, ours  # the resumed run cleared what the killed save left behind

    results = {}
    for name, out in (("straight", straight_out), ("resumed", killed_out)):
        loaded = load_model(out, device="cpu")
        metrics = json.loads((out / "metrics.json").read_text())
        epochs = [h["epoch"] for h in metrics["history"]]
        assert epochs == list(range(1, EPOCHS + 1)), f"{name}: epochs {epochs}"
        assert loaded.config["training"]["epochs_done"] >= metrics["best_epoch"]
        assert 1 <= metrics["best_epoch"] <= EPOCHS
        assert not (out / "resume").exists(), f"{name}: resume state left behind after a finished run"
        results[name] = metrics
    straight_val, resumed_val = results["straight"]["val"], results["resumed"]["val"]
    assert resumed_val["auc"]["macro"] >= straight_val["auc"]["macro"] - 0.02, (resumed_val, straight_val)
    last_straight = results["straight"]["history"][-1]["loss"]
    last_resumed = results["resumed"]["history"][-1]["loss"]
    assert last_resumed <= last_straight * 1.05, (last_resumed, last_straight)


# =============================================================================== atomic writes
def _model(seed: int):
    from pumamed.net import PumaMedNet, PumaMedNetConfig

    torch.manual_seed(seed)
    return PumaMedNet(PumaMedNetConfig(image_size=32, latent_dim=4, widths=(4, 8, 8), num_classes=2))


def _fingerprint(model) -> float:
    return float(sum(p.double().sum() for p in model.state_dict().values() if p.is_floating_point()))


def test_killed_saves_never_leave_a_torn_checkpoint(tmp_path):
    from pumamed.net import load_model, save_checkpoint

    torch.set_num_threads(1)
    models = {"A": _model(1), "B": _model(2)}
    expected = {_fingerprint(m): name for name, m in models.items()}
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, models["A"], metrics={"model": "A"})
    counter = tmp_path / "saves"
    rng = random.Random(0)
    reads, trials = 0, 6
    for trial in range(trials):
        pid = os.fork()
        if pid == 0:  # the writer: alternate A and B as fast as it can until killed
            try:
                n = 0
                while True:
                    name = "AB"[n % 2]
                    save_checkpoint(folder, models[name], metrics={"model": name, "n": n})
                    n += 1
                    with open(counter, "a") as fh:
                        fh.write(".")
            finally:
                os._exit(0)
        deadline = time.time() + rng.uniform(0.2, 0.8)
        while time.time() < deadline:  # read while the writer writes
            loaded = load_model(folder, device="cpu")
            assert _fingerprint(loaded.model) in expected
            reads += 1
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        loaded = load_model(folder, device="cpu")  # after the kill: old or new, complete
        assert _fingerprint(loaded.model) in expected, f"trial {trial}: torn weights"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["model"] in models
    saves = len(counter.read_text()) if counter.exists() else 0
    assert saves >= trials, f"the writer barely wrote ({saves} saves): the test proves little"
    assert reads > trials
    # interrupted writes leave only hidden temporary files (ours: ".<name>.*.tmp"; safetensors' own
    # writer: ".tmpXXXXXX"), never a file under a real name
    for path in folder.iterdir():
        assert path.name in {"model.safetensors", "config.json", "metrics.json", "model_card.md"} or \
            path.name.startswith("."), path.name


def test_checkpoint_files_are_readable_like_other_files(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the final files must follow the umask like any
    other file, so a lab's shared server (another account) can read models and metrics."""
    from pumamed.net import save_checkpoint

    folder = save_checkpoint(tmp_path / "ckpt", _model(0))
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "config.json", "metrics.json", "model_card.md"):
        mode = (folder / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~umask, f"{name}: mode {oct(mode)}"


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    from pumamed.net.checkpoint import remove_stale_temporaries

    folder = tmp_path / "run"
    folder.mkdir()
    stale = [".model.safetensors.k2j3.tmp", ".config.json.x9.tmp", ".training_state.json.a1.tmp"]
    kept = ["model.safetensors", "config.json", ".notes.tmp", "user.tmp", ".model.safetensors.bak"]
    for name in stale + kept:
        (folder / name).write_text("x")
    assert sorted(remove_stale_temporaries(folder)) == sorted(stale)
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept)
    assert remove_stale_temporaries(tmp_path / "missing") == []
