"""Checkpoint I/O: round trip, atomic writes, refusal of mismatched or pickled weights."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from tests.conftest import TINY_PUMAMEDNET
from pumamed.catalog import describe_checkpoint
from pumamed.errors import CheckpointError
from pumamed.net import PumaMedNet, PumaMedNetConfig, load_model, save_checkpoint
from pumamed.net import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = TINY_PUMAMEDNET


def tiny_model(**kw) -> PumaMedNet:
    torch.manual_seed(1)
    return PumaMedNet(PumaMedNetConfig(**{**TINY, "num_classes": 3, "class_names": ["a", "b", "c"], **kw}))


def test_round_trip(tmp_path):
    model = tiny_model().eval()
    folder = save_checkpoint(tmp_path / "ck", model, {"data": {"datasets": ["x"]}, "kl_per_dim": [0.1] * 8},
                             {"val": {"auc": {"macro": 0.9}}}, "# card\n")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "metrics.json", "model.safetensors",
                                                       "model_card.md"]
    loaded = load_model(folder, device="cpu")
    assert loaded.class_names == ["a", "b", "c"] and loaded.task == "multiclass"
    assert loaded.metrics["val"]["auc"]["macro"] == 0.9
    assert loaded.card == "# card\n"
    np.testing.assert_allclose(loaded.kl_per_dim, [0.1] * 8)
    assert not loaded.model.training
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x).recon, model(x).recon)
        torch.testing.assert_close(loaded.model.predict_proba(x), model.predict_proba(x))
    assert describe_checkpoint(folder).usable  # the catalog (no torch) sees a complete checkpoint


def test_resnet_round_trip(tmp_path):
    from pumamed.net.baseline import ResNet18Classifier, ResNetConfig

    model = ResNet18Classifier(ResNetConfig(image_size=32, num_classes=2, task="binary", class_names=["n", "p"])).eval()
    save_checkpoint(tmp_path / "r", model, {}, {}, "card")
    loaded = load_model(tmp_path / "r", device="cpu")
    assert loaded.arch == "resnet18"
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(loaded.model.predict_proba(x), model.predict_proba(x))


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "ck"
    first = tiny_model()
    save_checkpoint(folder, first, {}, {"version": 1}, "one")
    before = (folder / "model.safetensors").read_bytes()

    import safetensors.torch

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")  # a half-written file, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    second = tiny_model()
    with torch.no_grad():
        for p in second.parameters():
            p.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, second, {}, {"version": 2}, "two")
    assert (folder / "model.safetensors").read_bytes() == before
    assert json.loads((folder / "metrics.json").read_text()) == {"version": 1}
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # temp files cleaned up
    monkeypatch.undo()
    loaded = load_model(folder, device="cpu")
    for (name, a), b in zip(first.state_dict().items(), loaded.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_wrong_shape_is_a_checkpoint_error(tmp_path):
    folder = save_checkpoint(tmp_path / "ck", tiny_model(), {}, {}, "card")
    config = json.loads((folder / "config.json").read_text())
    config["model"]["latent_dim"] = 16  # config and weights disagree
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_model(folder, device="cpu")


def test_other_architecture_is_a_checkpoint_error(tmp_path):
    folder = save_checkpoint(tmp_path / "ck", tiny_model(), {}, {}, "card")
    config = json.loads((folder / "config.json").read_text())
    config["arch"] = "vit_huge"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown architecture"):
        load_model(folder, device="cpu")
    config["arch"] = "resnet18"
    config["model"] = {"image_size": 32, "num_classes": 3, "task": "multiclass", "class_names": ["a", "b", "c"]}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(folder, device="cpu")


class _Exploit:
    """Unpickling this would create a file: proof that a loader executed the pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_disguised_as_safetensors_is_refused(tmp_path):
    folder = save_checkpoint(tmp_path / "ck", tiny_model(), {}, {}, "card")
    marker = tmp_path / "pwned"
    with open(folder / "model.safetensors", "wb") as fh:
        pickle.dump({"weights": _Exploit(marker)}, fh)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_model(folder, device="cpu")
    assert not marker.exists()
    torch.save(tiny_model().state_dict(), folder / "model.safetensors")  # a zip-based torch checkpoint
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_model(folder, device="cpu")


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "nowhere", device="cpu")
    folder = save_checkpoint(tmp_path / "ck", tiny_model(), {}, {}, "card")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(folder, device="cpu")
    folder = save_checkpoint(tmp_path / "ck2", tiny_model(), {}, {}, "card")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError):
        load_model(folder, device="cpu")


def test_training_state_round_trip(tmp_path):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(2, 1, 32, 32)).recon.sum().backward()
    opt.step()
    ckpt.save_training_state(tmp_path, opt, {"epoch": 3, "history": [{"loss": 1.0}]})
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    info = ckpt.load_training_state(tmp_path, fresh)
    assert info["epoch"] == 3
    a, b = opt.state_dict(), fresh.state_dict()
    assert json.loads(json.dumps(a["param_groups"])) == json.loads(json.dumps(b["param_groups"]))
    for pid, state in a["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(torch.as_tensor(b["state"][pid][key]), torch.as_tensor(value))
