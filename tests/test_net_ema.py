"""The weight average (``train --ema``): the arithmetic, what is validated and saved, and resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import TRAIN_SIZE as SIZE
from tests.conftest import interrupted_fit, tiny_model
from pumamed.cli import main
from pumamed.errors import CheckpointError, InputError
from pumamed.net import checkpoint as ckpt
from pumamed.net.train import RESUME_DIR, TrainConfig, WeightAverage, fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_average_follows_the_warmed_up_decay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.9)
    expected = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    for n in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(4, 3))  # moves the batch-norm statistics and its integer counter
        decay = min(0.9, (1 + n) / (10 + n))
        for key, value in model.state_dict().items():
            if key in expected:
                expected[key] = decay * expected[key] + (1 - decay) * value
        average.update(model)
    own = average.module.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(own[key], value, msg=key)
    assert int(own["1.num_batches_tracked"]) == 30  # counters are copied, not averaged
    assert not torch.allclose(own["0.weight"], model[0].weight)  # an average, not the last weights
    with pytest.raises(InputError, match="decay"):
        WeightAverage(model, decay=1.0)


def test_fit_validates_and_saves_the_average(real_images, tmp_path):
    # one epoch, so the saved (best) epoch is the last one, whose average the resume state holds
    cfg = TrainConfig(epochs=1, batch_size=8, lr=3e-3, progress=False, keep_resume_state=True, ema=0.9)
    fit(tiny_model(real_images), real_images, real_images, cfg, tmp_path / "run", device="cpu",
        log=lambda *_: None)
    tensors, state = ckpt.read_resume_state(tmp_path / "run" / RESUME_DIR)
    trained = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    averaged = {k[len("averaged."):]: v for k, v in tensors.items() if k.startswith("averaged.")}
    assert state["info"]["averaged_updates"] == 4  # 32 images, batches of 8
    saved = ckpt.read_tensors(tmp_path / "run" / ckpt.WEIGHTS_FILE)
    assert saved.keys() == averaged.keys() == trained.keys()
    key = "encoder.to_latent.weight"
    assert not torch.equal(trained[key], averaged[key])
    for name in saved:
        torch.testing.assert_close(saved[name], averaged[name], rtol=0, atol=0, msg=name)


def test_the_cli_records_the_average_in_config_and_card(imaging_root, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "breastmnist", "--size", str(SIZE), "--widths", "8,16,32", "--latent", "8",
                 "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "16", "--ema", "0.95", "--quiet",
                 "--out", str(out)]) == 0
    assert ckpt.read_config(out)["training"]["ema"] == 0.95
    assert "exponential moving average" in (out / ckpt.CARD_FILE).read_text()


def test_resume_with_an_average_is_exact_and_must_match(real_images, tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=2, batch_size=16, progress=False, keep_resume_state=True, ema=0.8)
    quiet = dict(device="cpu", log=lambda *_: None)
    fit(tiny_model(real_images), real_images, real_images, cfg, tmp_path / "straight", **quiet)

    interrupted_fit(monkeypatch, lambda: fit(tiny_model(real_images), real_images, real_images, cfg,
                                             tmp_path / "resumed", **quiet))

    # the same run without its average cannot resume it (nor the reverse): the average would restart
    without = TrainConfig(**{**cfg.to_dict(), "ema": 0.0})
    with pytest.raises(CheckpointError, match="`ema`"):
        fit(tiny_model(real_images), real_images, real_images, without, tmp_path / "resumed", resume=True, **quiet)
    fit(tiny_model(real_images, seed=9), real_images, real_images, cfg, tmp_path / "resumed", resume=True, **quiet)

    a, info_a = ckpt.read_resume_state(tmp_path / "straight" / RESUME_DIR)
    b, info_b = ckpt.read_resume_state(tmp_path / "resumed" / RESUME_DIR)
    assert a.keys() == b.keys() and any(k.startswith("averaged.") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    assert info_a["info"]["averaged_updates"] == info_b["info"]["averaged_updates"] == 4


def test_cli_refuses_a_decay_outside_zero_one(imaging_root, tmp_path, capsys):
    assert main(["train", "--dataset", "breastmnist", "--ema", "1.5", "--quiet", "--out", str(tmp_path / "x")]) == 2
    assert "--ema must be 0 (off) or a decay between 0 and 1" in capsys.readouterr().err
