"""Refitting a PumaMedNet's classifier head on its frozen codes (:mod:`pumamed.net.head_refit`,
``python -m pumamed refit-head``).

Known answers: a head fitted on separable codes separates them; on real BUSI images a
head whose weights were zeroed (AUC 0.5) on the shipped ``breast`` encoder is replaced by the validation-best candidate, and only the
head changes; the command writes a new checkpoint and never touches the source."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pumamed.cli import main
from pumamed.net.head_refit import fit_head, refit_head

ROOT = Path(__file__).resolve().parent.parent


def test_fit_head_separates_separable_codes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    centres = np.array([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    mu = centres[labels] + rng.normal(0, 0.3, (300, 4))
    for hidden in (0, 16):
        head = fit_head(mu, labels, "multiclass", 3, hidden=hidden, weight_decay=1e-4, steps=200)
        with torch.no_grad():
            predicted = head(torch.as_tensor(mu, dtype=torch.float32)).argmax(1).numpy()
        assert (predicted == labels).mean() > 0.98
        assert isinstance(head, torch.nn.Linear) == (hidden == 0)


def _breast_with_a_silent_head():
    """The shipped ``breast`` model with its head zeroed (validation AUC 0.5), and its config."""
    from pumamed.net.checkpoint import load_model

    loaded = load_model(ROOT / "models" / "breast", device="cpu")
    with torch.no_grad():
        for parameter in loaded.model.classifier.parameters():
            parameter.zero_()
    return loaded.model, loaded.config


def test_refit_replaces_an_uninformative_head_and_nothing_else(imaging_root, one_torch_thread):
    """The shipped ``breast`` encoder with its head zeroed: the refit must find the class
    information its codes carry (the jointly trained head reads them at validation AUC ~0.9)."""
    from pumamed.net.data import load_arrays

    model, _ = _breast_with_a_silent_head()
    size = model.config.image_size
    train, val = load_arrays(["busi"], "train", size), load_arrays(["busi"], "val", size)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    report = refit_head(model, train, val, hidden_options=(0, 16), weight_decays=(1e-3,), steps=200)

    assert report["val_before"]["auc"]["macro"] == pytest.approx(0.5)
    best = max(c["val_auc"] for c in report["candidates"])
    assert report["val_after"]["auc"]["macro"] == pytest.approx(best)
    assert best > 0.8 and not report["kept_current_head"]
    assert model.config.classifier_hidden == report["hidden"]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # encoder, decoder, weight net: unchanged


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_refit_head_command_writes_a_new_checkpoint(imaging_root, tmp_path, one_torch_thread, capsys):
    from pumamed.net import save_checkpoint
    from pumamed.net.checkpoint import load_model

    source = tmp_path / "breast_silent"
    model, config = _breast_with_a_silent_head()
    save_checkpoint(source, model, config={k: v for k, v in config.items() if k not in ("arch", "model")},
                    card_text="# breast, head zeroed\n")
    (source / "weight_maps.safetensors").write_bytes((Path(__file__).parent / "__init__.py").read_bytes())
    untouched = _digest(source)
    out = tmp_path / "refit"
    code = main(["refit-head", "--model", str(source), "--out", str(out), "--hidden", "0,16", "--weight-decay",
                 "1e-3", "--steps", "100", "--no-test", "--no-calibrate"])
    assert code == 0, capsys.readouterr().err
    assert _digest(source) == untouched
    loaded = load_model(out, device="cpu")
    refit = loaded.config["data"]["head_refit"]
    assert refit["from"] == str(source) and refit["val_macro_auc_after"] > 0.8 > refit["val_macro_auc_before"]
    assert loaded.model.config.classifier_hidden == refit["hidden"]
    assert "test" not in loaded.metrics and loaded.metrics["val"]["auc"]["macro"] == refit["val_macro_auc_after"]
    assert "refit-head" in loaded.card and (out / "weight_maps.safetensors").is_file()

    # nothing already saved is overwritten; bad options are one clear line
    capsys.readouterr()
    assert main(["refit-head", "--model", str(source), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["refit-head", "--model", str(source), "--out", str(tmp_path / "x"), "--hidden", "a,b"]) == 2
    assert "--hidden" in capsys.readouterr().err
