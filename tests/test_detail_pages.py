"""Both imaging pages with a hierarchical PumaMedNet (a detail code beside the global code):
the traversal, the latent edit and the counterfactual hold the detail code the user chooses
(this image / resampled / mean), and the pictures differ accordingly.

A tiny randomly initialised model stands in for a trained one (fast, independent of the default
checkpoints); the images are real (brain MRI validation split)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.apptest import open_page

EXPLORER, EXPLAIN = "views/image_explorer.py", "views/explain_audit.py"


@pytest.fixture(scope="module")
def detail_models(tmp_path_factory) -> Path:
    from pumamed.net import PumaMedNet, PumaMedNetConfig, save_checkpoint

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = PumaMedNet(PumaMedNetConfig(image_size=64, latent_dim=8, widths=(8, 16, 16, 16), num_classes=4,
                                        class_names=["glioma", "meningioma", "notumor", "pituitary"],
                                        detail_channels=2, detail_resolution=16))
    with torch.no_grad():  # make the detail code visible in the pictures of an untrained model
        model.decoder.from_detail.weight.mul_(20.0)
    save_checkpoint(root / "brain_detail", model, config={"data": {"datasets": ["brain_tumor_mri"]},
                                                          "kl_per_dim": [1.0] * 8},
                    card_text="# brain_detail\n\nRandomly initialised, for tests.")
    return root


def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.mark.slow
def test_the_explorer_holds_the_chosen_detail_code(monkeypatch, detail_models, imaging_root):
    monkeypatch.setenv("PUMAMED_MODELS_DIR", str(detail_models))
    at = open_page(EXPLORER)
    _ok(at)
    choice = at.radio(key="ie_detail")
    assert choice.value == "image" and set(choice.options) == {"this image", "resampled", "mean"}
    grids = {}
    for mode in ("image", "mean"):
        at.radio(key="ie_detail").set_value(mode)
        at.run()
        _ok(at)
        # the grid's PNG export is served as a media file named by a hash of its bytes
        grids[mode] = next(b.proto.url for b in at.get("download_button") if b.proto.label == "Grid as PNG")
    assert grids["image"] != grids["mean"], "the traversal must change with the detail code it holds"


@pytest.mark.slow
def test_the_explain_page_offers_the_detail_code_for_the_counterfactual(monkeypatch, detail_models, imaging_root):
    monkeypatch.setenv("PUMAMED_MODELS_DIR", str(detail_models))
    at = open_page(EXPLAIN)
    _ok(at)
    assert at.radio(key="ea_detail").value == "image"
    at.radio(key="ea_detail").set_value("mean")
    at.run()
    _ok(at)
    assert any("What would have to change" in s.value for s in at.subheader)


def test_a_model_without_a_detail_code_offers_no_choice(monkeypatch, imaging_root, tmp_path):
    from pumamed.net import PumaMedNet, PumaMedNetConfig, save_checkpoint

    model = PumaMedNet(PumaMedNetConfig(image_size=64, latent_dim=8, widths=(8, 16, 16, 16), num_classes=4,
                                        class_names=["glioma", "meningioma", "notumor", "pituitary"]))
    save_checkpoint(tmp_path / "flat", model, config={"data": {"datasets": ["brain_tumor_mri"]}},
                    card_text="# flat\n\nRandomly initialised, for tests.")
    monkeypatch.setenv("PUMAMED_MODELS_DIR", str(tmp_path))
    at = open_page(EXPLORER)
    _ok(at)
    assert not [r for r in at.radio if r.key == "ie_detail"]


@pytest.mark.slow
def test_the_explain_page_walks_between_class_centres_when_the_model_stores_them(monkeypatch, imaging_root,
                                                                               tmp_path):
    """The shipped brain model's calibration stores each class's mean training code: the page
    offers the walk between class centres (the default) and the classifier's gradient."""
    import shutil

    root = Path(__file__).resolve().parent.parent
    shutil.copytree(root / "models" / "brain", tmp_path / "brain")
    monkeypatch.setenv("PUMAMED_MODELS_DIR", str(tmp_path))
    at = open_page(EXPLAIN)
    _ok(at)
    assert at.radio(key="ea_walk").value == "centroids"
    captions = " ".join(c.value for c in at.caption)
    assert "between the class centres" in captions
    at.radio(key="ea_walk").set_value("gradient")
    at.run()
    _ok(at)
    assert "along the classifier's gradient" in " ".join(c.value for c in at.caption)
