"""The plain ConvNet baseline (an independent reader) and the walk term of training: the pictures
of a walk between class centres must tell an independent classifier of real images what the
model's head reads on the walked code. Known answers on real images; tiny models, few steps."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import TINY_PUMAMEDNET, TRAIN_SIZE, tiny_model
from pumamed.cli import main
from pumamed.errors import InputError
from pumamed.net import checkpoint as ckpt
from pumamed.net.baseline import ConvNetClassifier, ResNetConfig
from pumamed.net.train import TrainConfig, TrainingObjective

SIZE = TRAIN_SIZE
TINY_CLI = ["--size", str(SIZE), "--widths", "8,16,32", "--latent", "8", "--quiet"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _hierarchical_model(data, seed: int = 0):
    from pumamed.net import PumaMedNet, PumaMedNetConfig

    torch.manual_seed(seed)
    return PumaMedNet(PumaMedNetConfig(**{**TINY_PUMAMEDNET, "image_size": SIZE}, detail_channels=2,
                                       detail_resolution=8, num_classes=len(data.class_names), task=data.task,
                                       class_names=list(data.class_names)))


def _reader(data, seed: int = 1):
    torch.manual_seed(seed)
    reader = ConvNetClassifier(ResNetConfig(image_size=SIZE, num_classes=len(data.class_names), task=data.task,
                                            class_names=list(data.class_names)))
    return reader.eval().requires_grad_(False)


def test_convnet_baseline_trains_saves_and_reloads(imaging_root, tmp_path, capsys):
    out = tmp_path / "convnet"
    assert main(["train", "--dataset", "breastmnist", "--arch", "convnet", "--size", str(SIZE), "--epochs", "1",
                 "--max-steps-per-epoch", "2", "--batch-size", "8", "--quiet", "--no-calibrate",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "convnet"
    assert "plain ConvNet baseline" in (out / "model_card.md").read_text()
    loaded = ckpt.load_model(out, device="cpu")
    assert isinstance(loaded.model, ConvNetClassifier) and loaded.arch == "convnet"
    x = torch.rand(3, 1, SIZE, SIZE)
    again = ckpt.load_model(out, device="cpu").model
    assert torch.equal(loaded.model.eval()(x), again.eval()(x))
    assert main(["evaluate", "--model", str(out), "--dataset", "breastmnist", "--json", "--latency-repeats", "2",
                 "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["arch"] == "convnet" and result["reconstruction_error"] is None
    # a separate family from the ResNet-18 judge, about a tenth of its parameters
    assert 1_000_000 < result["parameters"] < 1_300_000
    from pumamed.net.baseline import BASELINE_ARCHITECTURES

    assert ckpt.ARCHITECTURES == ("pumamednet", *BASELINE_ARCHITECTURES)  # every baseline loads


def test_class_centres_are_running_means_of_the_codes(real_images):
    objective = TrainingObjective(tiny_model(real_images), TrainConfig(), real_images)
    codes = torch.tensor([[0.0, 2.0], [2.0, 4.0], [10.0, 10.0]])
    centres = objective.update_centres(codes, torch.tensor([0, 0, 1])).clone()
    assert torch.allclose(centres, torch.tensor([[1.0, 3.0], [10.0, 10.0]]))  # first sight: the batch mean
    m = objective.CENTRE_MOMENTUM
    after = objective.update_centres(torch.tensor([[5.0, 5.0]]), torch.tensor([0]))
    assert torch.allclose(after[0], m * torch.tensor([1.0, 3.0]) + (1 - m) * torch.tensor([5.0, 5.0]))
    assert torch.allclose(after[1], torch.tensor([10.0, 10.0]))  # a class absent from the batch is kept


def test_walk_term_trains_the_decoder_only(real_images):
    """The gradient reaches the decoder; the encoder, the head and the reader are held."""
    model, reader = _hierarchical_model(real_images), _reader(real_images)
    model.train()
    cfg = TrainConfig(walk_weight=50.0, walk_span=2.0)
    objective = TrainingObjective(model, cfg, real_images, walk_reader=reader)
    x = real_images.images[:16].float() / 255
    label = real_images.labels[:16]
    mu, _, detail_mu, _ = model.encoder.forward_all(x)
    term = objective.walk_term(mu, model.classifier(mu), label, detail_mu)
    assert torch.isfinite(term) and term > 0
    term.backward()
    decoder_grad = sum(float(p.grad.abs().sum()) for p in model.decoder.parameters() if p.grad is not None)
    assert decoder_grad > 0
    for part in (model.encoder, model.classifier):
        assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in part.parameters())
    assert all(p.grad is None for p in reader.parameters())


class BrightnessReader(torch.nn.Module):
    """A reader with a known rule: its logit is the picture's mean brightness, centred and scaled."""

    def forward(self, pictures):
        return 20.0 * (pictures.mean((1, 2, 3)) - 0.5).unsqueeze(1)


def test_training_on_the_walk_term_makes_the_reader_agree_with_the_head(real_images):
    """The term does what it says: a decoder trained on it alone draws walked pictures whose
    brightness (what this reader reads) follows the head's reading of the walked codes, so the
    term falls on fresh walks, towards its floor (the entropy of the head's soft readings)."""
    model = _hierarchical_model(real_images)
    with torch.no_grad():  # a decisive head, so its reading changes along the walks
        model.classifier.weight.mul_(20.0)
    cfg = TrainConfig(walk_weight=1.0, walk_span=2.0)
    objective = TrainingObjective(model, cfg, real_images, walk_reader=BrightnessReader())
    x = real_images.images.float() / 255
    label = real_images.labels
    with torch.no_grad():
        mu, _, detail_mu, _ = model.encoder.forward_all(x)
        head = model.classifier(mu)

    def mean_term(draws: int = 8) -> float:
        torch.manual_seed(123)
        with torch.no_grad():
            return sum(float(objective.walk_term(mu, head, label, detail_mu)) for _ in range(draws)) / draws

    before = mean_term()
    optimizer = torch.optim.Adam(model.decoder.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        objective.walk_term(mu, head, label, detail_mu).backward()
        optimizer.step()
    after = mean_term()
    assert after < before - 0.5, (before, after)


def test_walk_settings_are_checked(real_images, imaging_root, tmp_path, capsys):
    with pytest.raises(InputError, match="walk_span"):
        TrainConfig(walk_span=0.0)
    with pytest.raises(InputError, match="must not be negative"):
        TrainConfig(walk_weight=-1.0)
    with pytest.raises(InputError, match="needs a reader"):
        TrainingObjective(tiny_model(real_images), TrainConfig(walk_weight=1.0), real_images)
    common = ["train", "--dataset", "breastmnist", *TINY_CLI, "--epochs", "1", "--max-steps-per-epoch", "1",
              "--batch-size", "8", "--no-test", "--no-calibrate"]
    out = tmp_path / "refused"
    assert main([*common, "--walk-weight", "10", "--out", str(out)]) == 2
    assert "--walk-weight needs --walk-reader" in capsys.readouterr().err
    assert main([*common, "--walk-reader", str(tmp_path), "--out", str(out)]) == 2
    assert "give --walk-weight too" in capsys.readouterr().err
    assert main([*common, "--walk-weight", "10", "--walk-reader", str(tmp_path / "absent"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (out / "model.safetensors").exists()


def test_cli_trains_with_a_walk_reader_and_records_it(imaging_root, tmp_path, capsys):
    reader = tmp_path / "reader"
    common = ["--dataset", "breastmnist", "--size", str(SIZE), "--epochs", "1", "--max-steps-per-epoch", "2",
              "--batch-size", "8", "--quiet", "--no-test", "--no-calibrate"]
    assert main(["train", "--arch", "convnet", *common, "--out", str(reader)]) == 0
    out = tmp_path / "walked"
    assert main(["train", *common, "--widths", "8,16,32", "--latent", "8", "--detail-channels", "2",
                 "--detail-resolution", "8", "--walk-weight", "10", "--walk-span", "1.5",
                 "--walk-reader", str(reader), "--out", str(out)]) == 0
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["walk_reader"]["arch"] == "convnet"
    assert config["training"]["walk_weight"] == 10.0 and config["training"]["walk_span"] == 1.5
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert history[-1]["walk"] > 0
    assert "walk term (weight 10.0, span 1.5)" in (out / "model_card.md").read_text()
    # the reader is not part of the saved model
    saved = ckpt.read_tensors(out / "model.safetensors")
    assert saved and not any("reader" in name for name in saved)


def test_decoder_only_training_holds_the_encoder_and_head(imaging_root, tmp_path, capsys):
    """``--train-only decoder``: every encoder and head tensor is the --init model's, bit for bit,
    the decoder learns, and the last epoch is kept; without --init or --keep-head it is refused."""
    common = ["--dataset", "breastmnist", *TINY_CLI, "--batch-size", "8", "--no-test", "--no-calibrate"]
    base = tmp_path / "base"
    assert main(["train", *common, "--epochs", "1", "--max-steps-per-epoch", "2", "--out", str(base)]) == 0
    out = tmp_path / "decoder"
    assert main(["train", *common, "--epochs", "2", "--max-steps-per-epoch", "2", "--init", str(base), "--keep-head",
                 "--train-only", "decoder", "--lr", "1e-2", "--out", str(out)]) == 0
    before = ckpt.read_tensors(base / "model.safetensors")
    after = ckpt.read_tensors(out / "model.safetensors")
    held = [k for k in before if not k.startswith(("decoder.", "weight_net."))]
    assert any(k.startswith("encoder.") for k in held) and any(k.startswith("classifier.") for k in held)
    assert all(torch.equal(before[k], after[k]) for k in held)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] == 2  # the last, whatever the (unchanged) validation AUC
    capsys.readouterr()
    assert main(["train", *common, "--epochs", "1", "--init", str(base), "--train-only", "decoder",
                 "--out", str(tmp_path / "no_head")]) == 2
    assert "--keep-head" in capsys.readouterr().err
    with pytest.raises(InputError, match="train_only"):
        TrainConfig(train_only="encoder")
