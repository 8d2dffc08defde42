"""The detail independence term of training (``train --detail-independence``): the maximum mean
discrepancy between the classes' residual detail codes, which the encoder is trained to remove, so
what tells the classes apart is drawn from the global code that the walks move. Known answers on
real images; tiny models, few steps."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import TRAIN_SIZE
from tests.test_net_walk import _hierarchical_model
from pumamed.cli import main
from pumamed.errors import InputError
from pumamed.net.train import TrainConfig, TrainingObjective, class_discrepancy, detail_statistics

SIZE = TRAIN_SIZE
TINY_CLI = ["--size", str(SIZE), "--widths", "8,16,32", "--latent", "8", "--quiet"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def many_images(imaging_root):
    """200 real BreastMNIST training images at 32 px (binary labels, about three quarters one class)."""
    from pumamed.net.data import load_arrays

    return load_arrays(["breastmnist"], "train", SIZE).subset(200, seed=0)


def _class_marked_codes(data) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual codes made from the real images (pooled to 2 x 8 x 8) with the class written into
    them: an offset of +-1 on every value, which any classifier reads without fail."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(data.images.float() / 255, 8)
    label = data.labels.long()
    sign = (2.0 * label.float() - 1.0).view(-1, 1, 1, 1)
    return torch.cat([pooled, pooled], 1) + sign, label


def _held_out_accuracy(codes: torch.Tensor, label: torch.Tensor) -> float:
    """A fresh small ConvNet trained on the first half of the codes, scored on the second half."""
    torch.manual_seed(7)
    reader = torch.nn.Sequential(torch.nn.Conv2d(codes.shape[1], 8, 3, stride=2, padding=1), torch.nn.SiLU(),
                                 torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.SiLU(),
                                 torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 2))
    optimizer = torch.optim.Adam(reader.parameters(), lr=1e-2)
    half = len(codes) // 2
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(reader(codes[:half]), label[:half]).backward()
        optimizer.step()
    with torch.no_grad():
        return float((reader(codes[half:]).argmax(1) == label[half:]).float().mean())


def test_discrepancy_known_answers(many_images):
    codes, label = _class_marked_codes(many_images)
    features = detail_statistics(codes)
    assert features.shape == (len(codes), 2 * 18)
    same = features[:1].expand_as(features)
    assert float(class_discrepancy(same, label, 2)) == pytest.approx(0.0, abs=1e-5)  # one distribution
    marked = float(class_discrepancy(features[:64], label[:64], 2))
    assert marked > 0.5
    # labels drawn at random: zero on average (the unbiased estimate)
    torch.manual_seed(0)
    shuffled = [float(class_discrepancy(features[:64], label[:64][torch.randperm(64)], 2)) for _ in range(40)]
    assert abs(sum(shuffled) / len(shuffled)) < 0.1 * marked
    # one class only in the batch, or a class with a single image: nothing to compare
    ones = torch.ones(64, dtype=torch.long)
    assert float(class_discrepancy(features[:64], ones, 2)) == 0.0
    lonely = ones.clone()
    lonely[0] = 0
    assert float(class_discrepancy(features[:64], lonely, 3)) == 0.0


def test_minimising_it_removes_the_class_from_the_codes(many_images):
    """Known answer: codes that carry the class outright are trained on the term alone until a fresh
    classifier, trained on half of them, reads the other half hardly better than the majority share."""
    codes, label = _class_marked_codes(many_images)
    assert _held_out_accuracy(codes, label) >= 0.95
    residual = codes.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([residual], lr=3e-2)
    torch.manual_seed(0)
    for _ in range(600):
        batch = torch.randperm(len(codes))[:64]
        optimizer.zero_grad()
        class_discrepancy(detail_statistics(residual[batch]), label[batch], 2).backward()
        optimizer.step()
    majority = float(torch.bincount(label[len(label) // 2:]).max()) / (len(label) - len(label) // 2)
    after = _held_out_accuracy(residual.detach(), label)
    assert after <= majority + 0.1, (after, majority)


def test_the_term_reaches_the_encoder(real_images):
    model = _hierarchical_model(real_images)
    x = real_images.images.float() / 255
    label = real_images.labels
    args = (x, x, label, torch.zeros(len(x), dtype=torch.long), 1.0, 0.0)

    def encoder_gradient(weight: float) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss, stats = TrainingObjective(model, TrainConfig(detail_independence_weight=weight), real_images)(*args)
        loss.backward()
        assert (weight > 0) == ("detail_discrepancy" in stats)
        return torch.cat([p.grad.flatten() for p in model.encoder.parameters() if p.grad is not None])

    assert not torch.allclose(encoder_gradient(1e3), encoder_gradient(0.0))


def test_cli_trains_with_it_and_records_it(imaging_root, tmp_path, capsys):
    out = tmp_path / "independent"
    assert main(["train", "--dataset", "breastmnist", *TINY_CLI, "--detail-channels", "2", "--detail-resolution", "8",
                 "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "16", "--no-test", "--no-calibrate",
                 "--detail-independence", "300", "--out", str(out)]) == 0
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["detail_independence_weight"] == 300.0
    assert "detail_discrepancy" in json.loads((out / "metrics.json").read_text())["history"][-1]
    assert "detail independence (weight 300.0)" in (out / "model_card.md").read_text()


def test_its_settings_are_checked(imaging_root, tmp_path, capsys):
    with pytest.raises(InputError, match="must not be negative"):
        TrainConfig(detail_independence_weight=-1.0)
    with pytest.raises(InputError, match="holds"):
        TrainConfig(detail_independence_weight=1.0, train_only="decoder")
    base = ["train", "--dataset", "breastmnist", "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "8",
            "--no-test", "--no-calibrate", "--detail-independence", "10"]
    out = tmp_path / "refused"
    assert main([*base, *TINY_CLI, "--out", str(out)]) == 2  # no detail code
    assert "--detail-independence trains a PumaMedNet with a detail code" in capsys.readouterr().err
    assert main([*base, "--arch", "convnet", "--size", str(SIZE), "--quiet", "--out", str(out)]) == 2
    assert "--detail-independence" in capsys.readouterr().err
    assert not (out / "model.safetensors").exists()
