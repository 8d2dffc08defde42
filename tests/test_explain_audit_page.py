"""The Explain & audit page through the real router (AppTest): default view, interactions, the
audit and disentanglement buttons, the shortcut experiment, and the no-model message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from tests.apptest import open_page

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGE = "views/explain_audit.py"
TIMEOUT = 240


@pytest.fixture(scope="module")
def models_root(tmp_path_factory, imaging_root):
    """A models directory holding one small PumaMedNet checkpoint for the NIH chest set."""
    from pumamed.net import PumaMedNet, PumaMedNetConfig, save_checkpoint

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    model = PumaMedNet(PumaMedNetConfig(image_size=64, latent_dim=16, widths=(8, 16, 32, 64), num_classes=2,
                                        task="binary", class_names=["normal", "abnormal"]))
    save_checkpoint(root / "chest_tiny", model, {"data": {"datasets": ["nih_cxr14_1000"]}}, {},
                    "# chest_tiny\nAn untrained test checkpoint.\n")
    return root


def _open(monkeypatch, models: Path, presentation: bool = False) -> AppTest:
    monkeypatch.setenv("PUMAMED_MODELS_DIR", str(models))
    at = open_page(PAGE, presentation, timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    return at


def _no_errors(at: AppTest, allow_ood: bool = False):
    """No exception and no error; ``allow_ood``: except the out-of-distribution warning (issue 24),
    which is right when a model is shown images of another population (e.g. NIH on the chest model)."""
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error if not (allow_ood and "Outside what this model was trained on" in e.value)]
    assert not errors, errors


def test_default_view_explains_an_image_and_reacts_to_controls(monkeypatch, models_root):
    at = _open(monkeypatch, models_root)
    _no_errors(at)
    headers = " ".join(s.value for s in at.subheader)
    # the counterfactual's question names the class in quotes: “abnormal” is not “normal”
    assert "“abnormal”" in headers and "Pixel-space explanations" in headers
    assert any(b.label == "Run audit" for b in at.button)
    at.selectbox(key="ea_target").set_value(0)
    at.radio(key="ea_dir").set_value("both")
    at.number_input(key="ea_index").set_value(5)
    at.run()
    _no_errors(at)
    headers = " ".join(s.value for s in at.subheader)
    assert "“normal”" in headers and "“abnormal”" not in headers, headers


def test_audit_and_disentanglement_buttons(monkeypatch, models_root):
    at = _open(monkeypatch, models_root)
    at.selectbox(key="ea_attribute").set_value("view")
    at.select_slider(key="ea_nboot").set_value(50)
    next(b for b in at.button if b.label == "Run audit").click()
    at.run()
    _no_errors(at)
    labels = [m.label for m in at.metric]
    assert "view from mu (AUC)" in labels
    # an untrained head (or a probe at chance) has no subgroup performance worth showing
    assert ("Largest AUC gap" in labels) != any("cannot be judged" in w.value for w in at.warning)
    at.button(key="ea_dis_button").click()
    at.run()
    _no_errors(at)
    assert {"MIG", "DCI disentanglement", "SAP"} <= {m.label for m in at.metric}


def test_presentation_mode_with_a_model(monkeypatch, models_root):
    at = _open(monkeypatch, models_root, presentation=True)
    _no_errors(at)
    assert at.expander, "controls should fold into an expander in presentation mode"


def test_without_models_the_page_says_how_to_train(monkeypatch, tmp_path, imaging_root):
    at = _open(monkeypatch, tmp_path / "no_models")
    _no_errors(at)
    text = " ".join(i.value for i in at.info)
    assert "python -m pumamed train" in text


@pytest.mark.slow
def test_shortcut_experiment_runs_from_the_page(monkeypatch, tmp_path, imaging_root):
    at = _open(monkeypatch, tmp_path / "no_models")
    at.slider(key="ea_sc_epochs").set_value(2)
    at.select_slider(key="ea_sc_n").set_value(300)
    next(b for b in at.button if b.label.startswith("Run the experiment")).click()
    at.run()
    _no_errors(at)
    labels = [m.label for m in at.metric]
    assert "AUC, token swapped" in labels and "Token found in mu (AUC)" in labels
    assert any(c.value.startswith("Showing the run made here") for c in at.caption)


def test_shortcut_tab_never_shows_the_servers_absolute_path(monkeypatch, tmp_path):
    import shutil

    from pumamed import config

    shipped = config.models_dir() / "shortcut_experiment.json"
    if not shipped.is_file():
        pytest.skip("no precomputed shortcut experiment in the models directory")
    outside = tmp_path / "server" / "checkout" / "models"
    outside.mkdir(parents=True)
    shutil.copy(shipped, outside / shipped.name)
    at = _open(monkeypatch, outside)
    texts = [c.value for c in at.caption] + [m.value for m in at.markdown]
    shown = next(t for t in texts if t.startswith("Showing the precomputed experiment"))
    assert "$PUMAMED_MODELS_DIR/shortcut_experiment.json" in shown
    assert not [t for t in texts if str(tmp_path) in t], "an absolute server path is on the page"


def test_datasets_follow_the_models_modality_and_numbering_agrees(monkeypatch, models_root):
    at = _open(monkeypatch, models_root)
    _no_errors(at)
    # a chest model: only chest datasets, its own first
    assert at.selectbox(key="ea_dataset").options == ["nih_cxr14_1000", "pneumoniamnist"]
    # images counted from 1 (as on the image explorer), and both probabilities named apart
    assert at.number_input(key="ea_index").value == 1
    caption = next(c.value for c in at.caption if c.value.startswith("Image 1 of "))
    assert "of the input" in caption and "reconstruction" in caption
    # another modality only on request, with a plain warning
    at.checkbox(key="ea_show_all_datasets").check()
    at.run()
    at.selectbox(key="ea_dataset").set_value("brain_tumor_mri")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "meaningless" in " ".join(w.value for w in at.warning)
    # unticking it must not leave the brain MRI selected
    at.checkbox(key="ea_show_all_datasets").uncheck()
    at.run()
    assert at.selectbox(key="ea_dataset").value == "nih_cxr14_1000"
    assert not at.warning


@pytest.mark.slow
def test_audit_of_a_classifier_at_chance_says_so_and_keeps_the_attribute_part(monkeypatch):
    """The shipped chest model (PneumoniaMNIST) on NIH: the stand-in probe scores an AUC whose
    interval includes 0.5, so no subgroup gap may be shown; sex is still readable from mu."""
    from pumamed import config

    models = config.models_dir()
    if not (models / "chest" / "model.safetensors").is_file():
        pytest.skip("the default chest model is not in the models directory")
    at = _open(monkeypatch, models)
    at.selectbox(key="ea_model").set_value("chest")
    at.run()
    at.selectbox(key="ea_dataset").set_value("nih_cxr14_1000")
    at.run()
    at.selectbox(key="ea_attribute").set_value("sex")
    at.select_slider(key="ea_nboot").set_value(50)
    at.run()
    at.button(key="ea_audit_run").click()
    at.run()
    _no_errors(at, allow_ood=True)
    warning = " ".join(w.value for w in at.warning)
    assert "cannot be judged" in warning and "includes chance" in warning
    labels = [m.label for m in at.metric]
    assert "sex from mu (AUC)" in labels and "Largest AUC gap" not in labels
    assert not any(s.value.startswith("Mitigation") for s in at.subheader)
    score = float(next(m.value for m in at.metric if m.label == "sex from mu (AUC)"))
    assert score > 0.65, score  # the attribute part stands on its own: sex is encoded in mu
    # another attribute: the sex results leave the screen until the audit is run again
    at.selectbox(key="ea_attribute").set_value("view")
    at.run()
    _no_errors(at, allow_ood=True)
    assert not [m for m in at.metric if m.label.endswith("from mu (AUC)")]
    assert any("Run audit" in c.value and "view" in c.value for c in at.caption)
