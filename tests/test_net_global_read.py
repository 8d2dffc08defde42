"""The global read of training (``train --global-read W --walk-reader DIR``): the picture of the
global code alone (the detail code at its prior mean) must show an independent reader the image's
class, since the walks move only the global code. And ``--keep-epoch last``. Known answers on real
images; tiny models, few steps."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import TRAIN_SIZE
from tests.test_net_walk import _hierarchical_model as _model, _reader
from pumamed.cli import main
from pumamed.errors import InputError
from pumamed.net.losses import classification_loss
from pumamed.net.train import TrainConfig, TrainingObjective

SIZE = TRAIN_SIZE
TINY_CLI = ["--size", str(SIZE), "--widths", "8,16,32", "--latent", "8", "--quiet"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(data):
    x = data.images.float() / 255
    return (x, x, data.labels, torch.zeros(len(x), dtype=torch.long), 1.0, 0.0)


def test_global_read_reaches_encoder_and_decoder_not_the_reader(real_images):
    model, reader = _model(real_images), _reader(real_images)
    model.train()

    def gradients(weight: float):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        objective = TrainingObjective(model, TrainConfig(global_read_weight=weight), real_images, walk_reader=reader)
        loss, stats = objective(*_batch(real_images))
        loss.backward()
        assert (weight > 0) == ("global_read" in stats)
        return [torch.cat([p.grad.flatten() for p in part.parameters() if p.grad is not None])
                for part in (model.encoder, model.decoder)]

    with_term, without = gradients(1e3), gradients(0.0)
    for part_with, part_without in zip(with_term, without):
        assert not torch.allclose(part_with, part_without)
    assert all(p.grad is None for p in reader.parameters())


class ThresholdReader(torch.nn.Module):
    """A reader with a known rule: class 1 when the picture's mean brightness is above a threshold."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, pictures):
        return 50.0 * (pictures.mean((1, 2, 3)) - self.threshold).unsqueeze(1)


def test_training_on_the_global_read_draws_the_class_from_the_global_code(real_images):
    """Known answer: the real images labelled by their own brightness (above the median: class 1)
    and a reader that reads brightness against that median. A model trained on the term alone
    draws, from the global code alone (detail at the prior mean), pictures on the right side of the
    median for nearly every image; untrained, it draws them all alike (one class, half right)."""
    model = _model(real_images)
    x = real_images.images.float() / 255
    brightness = x.mean((1, 2, 3))
    median = float(brightness.median())
    label = (brightness > median).float()
    reader = ThresholdReader(median)

    def reading() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            logits = reader(model.decode(model.encode(x)[0]))
        model.train()
        right = float(((logits[:, -1] > 0).float() == label).float().mean())
        return float(classification_loss(logits, label, "binary")), right

    before, right_before = reading()
    objective = TrainingObjective(model, TrainConfig(global_read_weight=1.0, recon_weight=0.0, beta=0.0,
                                                     detail_beta=0.0, cls_weight=0.0, sample_latent=False),
                                  real_images, walk_reader=reader)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = (x, x, label, torch.zeros(len(x), dtype=torch.long), 1.0, 0.0)
    for _ in range(350):  # the pictures first collapse to the threshold, then part by brightness
        optimizer.zero_grad()
        objective(*batch)[0].backward()
        optimizer.step()
    after, right_after = reading()
    assert after < before - 0.3, (before, after)
    assert right_before <= 0.6 and right_after >= 0.9, (right_before, right_after)


def test_cli_global_read_keep_last_and_refusals(real_images, tmp_path, capsys):
    common = ["--dataset", "breastmnist", "--size", str(SIZE), "--max-steps-per-epoch", "2", "--batch-size", "8",
              "--quiet", "--no-test", "--no-calibrate"]
    reader = tmp_path / "reader"
    assert main(["train", "--arch", "convnet", *common, "--epochs", "1", "--out", str(reader)]) == 0
    out = tmp_path / "global"
    assert main(["train", *common, "--widths", "8,16,32", "--latent", "8", "--detail-channels", "2",
                 "--detail-resolution", "8", "--epochs", "2", "--global-read", "40", "--reader", str(reader),
                 "--keep-epoch", "last", "--out", str(out)]) == 0
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["global_read_weight"] == 40.0 and config["training"]["keep_epoch"] == "last"
    assert config["data"]["walk_reader"]["arch"] == "convnet"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["history"][-1]["global_read"] > 0
    assert metrics["best_epoch"] == 2  # the last, whatever the validation AUC
    card = (out / "model_card.md").read_text()
    assert "global read (weight 40.0)" in card and "last epoch's weights were kept" in card
    refused = tmp_path / "refused"
    assert main(["train", *common, *TINY_CLI[2:], "--epochs", "1", "--global-read", "10", "--out", str(refused)]) == 2
    assert "--global-read needs --walk-reader" in capsys.readouterr().err
    assert not (refused / "model.safetensors").exists()
    with pytest.raises(InputError, match="keep_epoch"):
        TrainConfig(keep_epoch="worst")
    with pytest.raises(InputError, match="must not be negative"):
        TrainConfig(global_read_weight=-1.0)
    with pytest.raises(InputError, match="needs a reader"):
        TrainingObjective(_model(real_images), TrainConfig(global_read_weight=1.0), real_images)


def test_jitter_blurs_and_noises_within_its_bounds(real_images):
    from pumamed.net.train import jitter

    x = (real_images.images.float() / 255).requires_grad_(True)
    torch.manual_seed(0)
    out = jitter(x, 0.5)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0  # the reader's gradient reaches the decoder
    with torch.no_grad():
        change = (out - x).flatten(1)
        # the noise's spread is at most 0.1 and the blur keeps each picture's mean brightness
        assert float((out - x).mean((1, 2, 3)).abs().max()) < 0.05
        assert float(change.std(1).max()) < 0.1 + 0.2
        assert float(change.abs().mean()) > 0.005
        torch.manual_seed(1)
        assert not torch.allclose(jitter(x, 0.5), out)  # drawn afresh each time
    with pytest.raises(InputError, match="global_read_jitter"):
        TrainConfig(global_read_jitter=1.0)


class RecordingReader(torch.nn.Module):
    """Reads every picture as class 0 and keeps the last pictures it was shown."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes, self.seen = classes, None

    def forward(self, pictures):
        self.seen = pictures.detach().clone()
        return torch.zeros(len(pictures), self.classes) + pictures.mean() * 0.0


@pytest.mark.parametrize("carrier", ["prior", "other"])
def test_global_read_shows_the_reader_the_chosen_detail(real_images, carrier):
    """Known answer: with ``global_read_detail="other"`` the reader sees each global code drawn
    with the next image's detail code (torch.roll by one over the batch), with "prior" the global
    code alone; the same pictures the model decodes from those codes outside training."""
    model = _model(real_images)
    x = real_images.images.float()[:6] / 255
    classes = max(2, int(model.config.num_classes))
    reader = RecordingReader(classes)
    cfg = TrainConfig(global_read_weight=1.0, global_read_detail=carrier, sample_latent=False, detail_swap_weight=1.0)
    objective = TrainingObjective(model, cfg, real_images, walk_reader=reader)
    model.train()
    loss, stats = objective(x, x, real_images.labels[:6], torch.zeros(6, dtype=torch.long), 1.0, 0.0)
    assert "global_read" in stats and "detail_swap" in stats
    model.eval()
    with torch.no_grad():
        mu, _, detail, _ = model.encode_all(x)
        expected = model.decode(mu, torch.roll(detail, shifts=1, dims=0) if carrier == "other" else None)
        other = model.decode(mu, torch.roll(detail, shifts=1, dims=0) if carrier == "prior" else None)
    assert torch.allclose(reader.seen, expected, atol=1e-5)
    assert not torch.allclose(reader.seen, other, atol=1e-3)
    with pytest.raises(InputError, match="global_read_detail"):
        TrainConfig(global_read_detail="own")


def test_cli_refuses_another_images_detail_without_the_global_read(tmp_path, capsys):
    out = tmp_path / "refused"
    code = main(["train", "--dataset", "breastmnist", *TINY_CLI, "--detail-channels", "2", "--detail-resolution", "8",
                 "--epochs", "1", "--max-steps-per-epoch", "1", "--global-read-detail", "other", "--no-test",
                 "--no-calibrate", "--out", str(out)])
    assert code == 2
    assert "--global-read-detail other" in capsys.readouterr().err
    assert not (out / "model.safetensors").exists()


def test_a_panel_of_readers_asks_each_reader(real_images):
    """Known answer: two readers with opposite rules (brightness above / below a threshold). On the
    mean of their logits they cancel, whatever the picture (the loss stays log 2); the panel's loss
    is the mean of each reader's, so a picture satisfies it only if both read it."""
    from pumamed.net.pipeline import TeacherEnsemble
    from pumamed.net.train import panel_loss

    x = real_images.images.float()[:8] / 255
    label = torch.ones(8)
    up, down = ThresholdReader(0.3), ThresholdReader(0.3)
    down.forward = lambda pictures: -ThresholdReader.forward(up, pictures)
    panel = TeacherEnsemble([up, down])
    loss = lambda logits: classification_loss(logits, label, "binary")  # noqa: E731
    assert float(loss(panel(x))) == pytest.approx(float(torch.log(torch.tensor(2.0))), abs=1e-6)
    expected = 0.5 * (float(loss(up(x))) + float(loss(down(x))))
    assert float(panel_loss(panel, x, loss)) == pytest.approx(expected, rel=1e-6)
    assert float(panel_loss(panel, x, loss)) > float(loss(panel(x))) + 1.0  # both readers must read it
    assert float(panel_loss(up, x, loss)) == pytest.approx(float(loss(up(x))))


def test_cli_global_read_with_a_panel_of_readers(real_images, tmp_path, capsys):
    common = ["--dataset", "breastmnist", "--size", str(SIZE), "--max-steps-per-epoch", "2", "--batch-size", "8",
              "--quiet", "--no-test", "--no-calibrate"]
    readers = [tmp_path / "reader_a", tmp_path / "reader_b"]
    for seed, reader in enumerate(readers):
        assert main(["train", "--arch", "convnet", *common, "--epochs", "1", "--seed", str(seed),
                     "--out", str(reader)]) == 0
    out = tmp_path / "panel"
    assert main(["train", *common, "--widths", "8,16,32", "--latent", "8", "--detail-channels", "2",
                 "--detail-resolution", "8", "--epochs", "1", "--global-read", "10", "--global-read-detail", "other",
                 "--reader", ",".join(map(str, readers)), "--out", str(out)]) == 0
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["walk_reader"]["paths"] == [str(r) for r in readers]
    assert config["training"]["global_read_detail"] == "other"
    card = (out / "model_card.md").read_text()
    assert "panel of 2 classifiers" in card and "the next training image's detail code" in card
    assert main(["train", *common, *TINY_CLI[2:], "--epochs", "1", "--global-read", "10",
                 "--reader", f"{readers[0]},{readers[0]}", "--out", str(tmp_path / "twice")]) == 2
    assert "same folder twice" in capsys.readouterr().err
