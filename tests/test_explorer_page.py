"""The image explorer page through the real router (AppTest): choose an image, move a latent
slider, place a mask, upload files (a bad one must give a message), use the prior, and the
messages for missing models and for a checkpoint that does not fit its architecture.

A tiny randomly initialised PumaMedNet (64 px, 8 latent dimensions) stands in for a trained
model, so the test is fast and independent of the default checkpoints; the images are real
(mini-MIAS validation split, 36 images)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.conftest import save_tiny_checkpoint

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGE = "views/image_explorer.py"
TIMEOUT = 180
MASK_TAB = ":material/ink_eraser: Masked reconstruction"
MAP_TAB = ":material/scatter_plot: Latent map"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_tiny_checkpoint(root / "mias_tiny", ["normal", "benign", "malignant"], ["mini_mias"],
                         [0.5, 0.0, 2.0, 0.1, 0.0, 0.0, 1.0, 0.0], "# mias_tiny\n\nRandomly initialised, for tests.")
    return root


def _open(monkeypatch, models: Path) -> AppTest:
    monkeypatch.setenv("PUMAMED_MODELS_DIR", str(models))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page(PAGE)
    at.run()
    return at


def _texts(at: AppTest) -> str:
    return " ".join([e.value for e in at.error] + [i.value for i in at.info] + [w.value for w in at.warning])


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.mark.slow
def test_dataset_image_slider_and_mask(monkeypatch, tiny_models, imaging_root):
    at = _open(monkeypatch, tiny_models)
    _ok(at)
    assert [h.value for h in at.header] == ["Reconstruction and attention weights"]
    assert at.selectbox(key="ie_dataset").value == "mini_mias"  # the model's own dataset first
    labels = {m.label for m in at.metric}
    assert {"MAE", "PSNR", "Classifier on mu"} <= labels
    # KL ranking from the checkpoint: z2 (2.0) first, then z6 (1.0), z0 (0.5)
    sliders = [s for s in at.slider if s.key and s.key.startswith("ie_slide_")]
    assert [s.label.split()[0] for s in sliders[:3]] == ["z2", "z6", "z0"]
    grid_caption = at.caption
    assert any("Ranking: checkpoint" in c.value for c in grid_caption)
    assert at.get("download_button"), "the PNG / GIF exports are missing"

    # choose another image
    before = [c.value for c in at.caption if c.value.startswith("mini_mias")]
    at.number_input(key="ie_position").set_value(3)
    at.run()
    _ok(at)
    after = [c.value for c in at.caption if c.value.startswith("mini_mias")]
    assert after and after != before

    # move a latent slider: the edited code decodes (no exception, still one figure set)
    first = next(s for s in at.slider if s.key and s.key.startswith("ie_slide_"))
    first.set_value(2.0)
    at.run()
    _ok(at)
    assert next(s for s in at.slider if s.key == first.key).value == 2.0

    # the mask tab (stateful tabs: only the open one runs)
    assert not [s for s in at.slider if s.key == "ie_mask_x0"]
    at.session_state["ie_tab"] = MASK_TAB
    at.run()
    _ok(at)
    # place a mask: x 10-40 % of 64 px -> columns 6..25 (20), y 20-50 % -> rows 13..31 (19)
    at.slider(key="ie_mask_x0").set_value((10, 40))
    at.slider(key="ie_mask_y0").set_value((20, 50))
    at.run()
    _ok(at)
    table = at.dataframe[-1].value
    assert set(table["method"]) >= {"decoder fill-in", "harmonic baseline", "border mean baseline"}
    assert int(table["hidden px"].iloc[0]) == 20 * 19

    # random patches with a seed
    at.radio(key="ie_mask_mode").set_value("Random patches")
    at.run()
    _ok(at)
    at.number_input(key="ie_mask_seed").set_value(5)
    at.run()
    _ok(at)

    # filter by class
    at.multiselect(key="ie_classes_mini_mias").set_value(["benign"])
    at.run()
    _ok(at)
    assert any("benign" in c.value for c in at.caption if c.value.startswith("mini_mias"))

    # latent map coloured by a metadata field; picking an image from the list shows it
    at.session_state["ie_tab"] = MAP_TAB
    at.run()
    _ok(at)
    assert at.selectbox(key="ie_map_colour").value == "class"
    at.selectbox(key="ie_map_colour").set_value("density")
    at.run()
    _ok(at)
    pick = next(s for s in at.selectbox if s.key and s.key.startswith("ie_map_pick"))
    last = int(pick.options[-1].split()[0].lstrip("#"))  # options read "#<number from 1> · <class>"
    pick.set_value(last - 1)  # the value is the 0-based index in the split
    at.run()
    _ok(at)
    at.button(key="ie_map_use").click()
    at.run()
    _ok(at)
    # the picked image becomes the page's image, with the filters cleared so it is reachable
    assert not at.multiselect(key="ie_classes_mini_mias").value
    # one numbering everywhere: position N, caption #N, map #N
    assert at.number_input(key="ie_position").value == last
    assert any(c.value.startswith(f"mini_mias · val #{last} of ") for c in at.caption)

    # another modality (28-px ultrasound upscaled to the model's 64 px): only on request, with a warning
    assert "breastmnist" not in at.selectbox(key="ie_dataset").options
    at.checkbox(key="ie_show_all_datasets").check()
    at.run()
    at.selectbox(key="ie_dataset").set_value("breastmnist")
    at.run()
    assert not at.exception and not at.error
    assert any(c.value.startswith("breastmnist · val #") for c in at.caption)
    assert "meaningless" in " ".join(w.value for w in at.warning)


def test_uploads_bad_and_good_and_prior(monkeypatch, tiny_models):
    at = _open(monkeypatch, tiny_models)
    assert not at.exception
    at.radio(key="ie_source").set_value("Upload")
    at.run()
    assert not at.exception
    assert "Upload an image" in _texts(at)

    at.file_uploader(key="ie_upload").set_value(("scan.png", b"this is not a png at all", "image/png"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    message = " ".join(e.value for e in at.error)
    assert "scan.png" in message and "corrupt or of another kind" in message

    truncated = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (100, 100), dtype=np.uint8)  # incompressible
    Image.fromarray(noise).save(truncated, format="PNG")
    data = truncated.getvalue()
    at.file_uploader(key="ie_upload").set_value(("cut.png", data[: len(data) // 2], "image/png"))
    at.run()
    assert not at.exception
    assert at.error, "a truncated PNG must give a message"

    good = io.BytesIO()
    ramp = np.tile(np.linspace(0, 255, 80, dtype=np.uint8), (60, 1))  # not square, not 64 px
    Image.fromarray(ramp).save(good, format="PNG")
    at.file_uploader(key="ie_upload").set_value(("ramp.png", good.getvalue(), "image/png"))
    at.run()
    _ok(at)
    assert any("upload · ramp.png" in c.value for c in at.caption)

    at.radio(key="ie_source").set_value("Prior sample")
    at.run()
    _ok(at)
    at.number_input(key="ie_prior_seed").set_value(7)
    at.run()
    _ok(at)
    assert any("prior sample · seed 7" in c.value for c in at.caption)


def test_no_model_and_mismatched_checkpoint_messages(monkeypatch, tmp_path, tiny_models):
    at = _open(monkeypatch, tmp_path / "empty")
    assert not at.exception
    assert "python -m pumamed train" in _texts(at)

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.safetensors", "model_card.md", "metrics.json"):
        (broken / name).write_bytes((tiny_models / "mias_tiny" / name).read_bytes())
    config = json.loads((tiny_models / "mias_tiny" / "config.json").read_text())
    config["model"]["latent_dim"] = 16  # weights hold 8 dimensions
    (broken / "config.json").write_text(json.dumps(config))
    at.text_input(key="ie_custom_path").set_value(str(broken))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "do not fit" in " ".join(e.value for e in at.error)

    at.text_input(key="ie_custom_path").set_value(str(tmp_path / "nowhere"))
    at.run()
    assert not at.exception
    assert "does not exist" in " ".join(e.value for e in at.error)


@pytest.fixture(scope="module")
def two_modality_models(tmp_path_factory) -> Path:
    """A brain-MRI and a chest X-ray checkpoint (tiny, untrained): switching the model must switch
    the dataset list."""
    from pumamed.net import PumaMedNet, PumaMedNetConfig, save_checkpoint

    root = tmp_path_factory.mktemp("two_models")
    for name, dataset, classes in (("brain_tiny", "brain_tumor_mri", ["glioma", "meningioma", "none", "pituitary"]),
                                   ("chest_tiny", "pneumoniamnist", ["normal", "pneumonia"])):
        torch.manual_seed(0)
        model = PumaMedNet(PumaMedNetConfig(image_size=64, latent_dim=8, widths=(8, 16, 16, 16),
                                            num_classes=len(classes), class_names=classes))
        save_checkpoint(root / name, model, config={"data": {"datasets": [dataset]}}, card_text=f"# {name}")
    return root


@pytest.mark.slow
def test_dataset_list_follows_the_models_modality(monkeypatch, two_modality_models, imaging_root):
    at = _open(monkeypatch, two_modality_models)
    _ok(at)
    at.selectbox(key="ie_model").set_value(str(two_modality_models / "brain_tiny"))
    at.run()
    _ok(at)
    assert at.selectbox(key="ie_dataset").value == "brain_tumor_mri"
    assert at.selectbox(key="ie_dataset").options == ["brain_tumor_mri"]
    # choosing the chest model (as the Modality control does) must not leave a brain MRI selected
    at.selectbox(key="ie_model").set_value(str(two_modality_models / "chest_tiny"))
    at.run()
    _ok(at)
    options = at.selectbox(key="ie_dataset").options
    assert at.selectbox(key="ie_dataset").value == "pneumoniamnist"
    assert set(options) <= {"pneumoniamnist", "nih_cxr14_1000"}, options
    assert not at.warning


@pytest.mark.slow
def test_latent_map_colours_one_finding_and_starts_on_the_current_image(monkeypatch, two_modality_models,
                                                                         imaging_root):
    at = _open(monkeypatch, two_modality_models)
    at.selectbox(key="ie_model").set_value(str(two_modality_models / "chest_tiny"))
    at.run()
    at.selectbox(key="ie_dataset").set_value("nih_cxr14_1000")
    at.run()
    at.number_input(key="ie_position").set_value(5)
    at.session_state["ie_tab"] = MAP_TAB
    at.run()
    _ok(at)
    colours = at.selectbox(key="ie_map_colour").options
    # multi-label NIH: one finding at a time, not ~30 combinations of findings
    assert "class" not in colours and any(c.startswith("finding: Effusion") for c in colours), colours
    at.selectbox(key="ie_map_colour").set_value(next(c for c in colours if c.startswith("finding: Effusion")))
    at.run()
    _ok(at)
    pick = next(s for s in at.selectbox if s.key and s.key.startswith("ie_map_pick"))
    assert pick.value == 4, pick.value  # image 5 of the page is index 4 of the split
    assert at.caption and any(c.value.startswith("nih_cxr14_1000 · val #5 of ") for c in at.caption)
