"""Trust signals (issue 24): temperature scaling, calibration figures and the out-of-distribution
score (:mod:`pumamed.net.trust`), the ``calibrate`` and ``evaluate --ood`` commands, and the
explorer's warning on a cross-modality upload.

Known answers: temperature scaling recovers a planted temperature; probabilities that are
calibrated by construction have an ECE near 0 and overconfident ones do not; an image set
scored against itself has OOD AUROC 0.5; the threshold flags the stated share of validation
images. The command tests use a tiny random PumaMedNet on real BreastMNIST / PneumoniaMNIST
images; the page test uses the shipped ``breast`` model and a real brain MRI file."""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from pumamed.net import trust as T
from pumamed.net.calibration import calibrate_checkpoint, evaluate_trust

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(image_size=32, latent_dim=8, widths=(8, 16, 32), attention_resolution=8, groups=4)


# --- known answers on synthetic data ----------------------------------------------------------
def _sample(proba: np.ndarray, rng) -> np.ndarray:
    return (rng.random((len(proba), 1)) > proba.cumsum(1)).sum(1).clip(0, proba.shape[1] - 1)


@pytest.mark.parametrize("planted", [0.5, 2.5])
def test_temperature_scaling_recovers_a_planted_temperature(planted):
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2.0, (20000, 4))
    labels = _sample(T.logits_to_proba(true_logits, "multiclass"), rng)
    # a model whose logits are the true ones times `planted` is off by exactly that temperature
    fitted = T.fit_temperature(true_logits * planted, labels, "multiclass")
    assert fitted == pytest.approx(planted, rel=0.05)


def test_temperature_scaling_binary_and_decisions_unchanged():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2.0, (20000, 1))
    labels = (rng.random(20000) < 1 / (1 + np.exp(-z[:, 0]))).astype(int)
    fitted = T.fit_temperature(z * 3.0, labels, "binary")
    assert fitted == pytest.approx(3.0, rel=0.05)
    before = T.logits_to_proba(z * 3.0, "binary")
    after = T.logits_to_proba(z * 3.0, "binary", fitted)
    assert np.array_equal(before.argmax(1), after.argmax(1))
    assert np.allclose(after.sum(1), 1.0)


def test_logits_to_proba_matches_the_model_convention():
    from pumamed.net.model import logits_to_proba

    z = np.random.default_rng(2).normal(0, 3, (50, 3))
    for task in ("multiclass", "binary", "multilabel"):
        expected = logits_to_proba(torch.from_numpy(z), task).numpy()
        assert np.allclose(T.logits_to_proba(z, task), expected, atol=1e-6)


def test_ece_brier_nll_known_values():
    rng = np.random.default_rng(3)
    proba = rng.dirichlet([1, 1, 1], 50000)
    labels = _sample(proba, rng)  # calibrated by construction
    assert T.expected_calibration_error(proba, labels, "multiclass") < 0.01
    # the same labels with probabilities pushed towards the top class: overconfident
    sharp = T.logits_to_proba(np.log(proba) * 4, "multiclass")
    assert T.expected_calibration_error(sharp, labels, "multiclass") > 0.1
    onehot = np.eye(3)[labels]
    assert T.brier_score(onehot, labels, "multiclass") == 0.0
    assert T.negative_log_likelihood(onehot, labels, "multiclass") < 1e-9
    uniform = np.full((len(labels), 3), 1 / 3)
    assert T.negative_log_likelihood(uniform, labels, "multiclass") == pytest.approx(np.log(3))
    assert T.brier_score(uniform, labels, "multiclass") == pytest.approx(2 / 3)
    bins = T.reliability_bins(proba, labels, "multiclass")
    assert len(bins) == T.ECE_BINS and sum(b["n"] for b in bins) == len(labels)


def test_ece_noise_floor_shrinks_with_more_images():
    rng = np.random.default_rng(4)
    small = T.ece_noise_floor(rng.dirichlet([1, 1, 1], 93), "multiclass", draws=100)
    large = T.ece_noise_floor(rng.dirichlet([1, 1, 1], 5000), "multiclass", draws=50)
    assert small["mean"] > 0.04 > large["mean"]


def test_ood_auroc_known_answers():
    rng = np.random.default_rng(5)
    scores = rng.normal(size=300)
    assert T.ood_auroc(scores, scores) == pytest.approx(0.5)
    assert T.ood_auroc(scores, scores + 100) == 1.0
    assert T.ood_auroc(scores + 100, scores) == 0.0


def test_mahalanobis_of_gaussian_codes_is_about_the_dimension():
    rng = np.random.default_rng(6)
    codes = rng.normal(size=(4000, 6)) * 3 + 1
    mean, precision = T.fit_code_gaussian(codes)
    d2 = T.mahalanobis(rng.normal(size=(4000, 6)) * 3 + 1, mean, precision)
    assert d2.mean() == pytest.approx(6, rel=0.1)  # chi-square with 6 degrees of freedom


def test_near_and_far_relations():
    assert T.relation(["busi"], "brain_tumor_mri") == "far"
    assert T.relation(["busi"], "mini_mias") == "near"
    assert T.relation(["busi"], "breastmnist") == "near"
    assert T.relation(["pneumoniamnist"], "nih_cxr14_1000") == "near"
    assert T.relation(["pneumoniamnist"], "mini_mias") == "far"
    assert T.relation(["brain_tumor_mri"], "pneumoniamnist") == "far"


# --- calibrate and evaluate on real images with a tiny model ----------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from pumamed.net import PumaMedNet, PumaMedNetConfig, save_checkpoint

    folder = tmp_path_factory.mktemp("trust") / "breastmnist_tiny"
    torch.manual_seed(0)
    model = PumaMedNet(PumaMedNetConfig(num_classes=2, task="binary", class_names=["malignant", "normal+benign"],
                                        **TINY))
    save_checkpoint(folder, model, config={"data": {"datasets": ["breastmnist"], "size": 32}},
                    card_text="# breastmnist_tiny\n\nRandomly initialised, for tests.")
    return folder


def test_calibrate_writes_trust_and_the_threshold_flags_the_stated_share(imaging_root, tiny_checkpoint,
                                                                         one_torch_thread):
    from pumamed.net.checkpoint import load_model
    from pumamed.net.data import load_arrays

    report = calibrate_checkpoint(tiny_checkpoint, device="cpu", report_test=False, quantile=0.9,
                                    select_against=["pneumoniamnist"])
    assert (tiny_checkpoint / T.TRUST_FILE).is_file() and (tiny_checkpoint / T.TRUST_TENSORS).is_file()
    assert report["calibration"]["temperature"] > 0
    assert report["calibration"]["val"]["after"]["nll"] <= report["calibration"]["val"]["before"]["nll"] + 1e-9
    assert set(report["ood"]["features"]) <= set(T.FEATURES)
    assert "pneumoniamnist" in report["ood"]["selection"]["candidates_val_auroc"]["recon"]

    loaded = load_model(tiny_checkpoint, device="cpu")
    trust = loaded.trust
    assert trust is not None and trust.has_ood and trust.temperature == report["calibration"]["temperature"]
    val = load_arrays(["breastmnist"], "val", 32)
    scores = trust.ood_score(T.model_outputs(loaded.model, val.images, "cpu"))
    assert trust.threshold == pytest.approx(np.quantile(scores, 0.9))
    assert abs(trust.flagged(scores).mean() - 0.1) <= 1.5 / len(scores)
    assert T.ood_auroc(scores, scores) == pytest.approx(0.5)  # the model's own images against themselves
    # the mean training code of each class, for the centroid counterfactual
    train = load_arrays(["breastmnist"], "train", 32)
    mu = T.model_outputs(loaded.model, train.images, "cpu")["mu"]
    labels = train.labels.numpy()
    assert trust.class_centroids.shape == (2, loaded.model.config.latent_dim)
    np.testing.assert_allclose(trust.class_centroids[1], mu[labels == 1].mean(0), rtol=1e-5, atol=1e-6)


def test_a_hierarchical_model_offers_its_detail_code_as_an_ood_feature(imaging_root, tmp_path, one_torch_thread):
    """A model with a detail code gets ``detail_mahalanobis`` among the candidates; its Gaussian is
    stored beside the code's, reloads, and gives the same distances as the pooled codes it was fitted
    on (the training images' mean distance is about the pooled code's size, 4 x 4 per channel)."""
    from pumamed.net import PumaMedNet, PumaMedNetConfig, save_checkpoint
    from pumamed.net.checkpoint import load_model
    from pumamed.net.data import load_arrays

    folder = tmp_path / "breastmnist_tiny_detail"
    torch.manual_seed(0)
    model = PumaMedNet(PumaMedNetConfig(num_classes=2, task="binary", class_names=["malignant", "normal+benign"],
                                        detail_channels=2, detail_resolution=8, **TINY))
    save_checkpoint(folder, model, config={"data": {"datasets": ["breastmnist"], "size": 32}},
                    card_text="# breastmnist_tiny_detail\n\nRandomly initialised, for tests.")
    report = calibrate_checkpoint(folder, device="cpu", report_test=False, select_against=["pneumoniamnist"])
    table = report["ood"]["selection"]["candidates_val_auroc"]
    assert "detail_mahalanobis" in table and "mahalanobis+detail_mahalanobis" in table
    assert "detail_mahalanobis" in report["ood"]["center"]

    trust = load_model(folder, device="cpu").trust
    pooled_size = 2 * T.DETAIL_POOL * T.DETAIL_POOL
    assert trust.detail_mean.shape == (pooled_size,) and trust.detail_precision.shape == (pooled_size, pooled_size)
    train = load_arrays(["breastmnist"], "train", 32)
    outputs = T.model_outputs(load_model(folder, device="cpu").model, train.images, "cpu")
    assert outputs["detail_pooled"].shape == (len(train.images), pooled_size)
    distances = trust.feature_values(outputs)["detail_mahalanobis"]
    assert 0.5 * pooled_size < distances.mean() < 1.5 * pooled_size

    # a trust file whose score names the detail feature but whose tensors lack it is refused in words
    from pumamed.errors import CheckpointError
    from pumamed.net.files import read_tensors
    from safetensors.torch import save_file

    tensors = read_tensors(folder / T.TRUST_TENSORS)
    save_file({k: v for k, v in tensors.items() if not k.startswith("detail_")}, str(folder / T.TRUST_TENSORS))
    with pytest.raises(CheckpointError, match="detail_mean"):
        T.load_trust(folder)


def test_class_centroids_known_answer():
    mu = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]])
    np.testing.assert_allclose(T.class_centroids(mu, [0, 0, 1, 1], "multiclass"), [[1.0, 0.0], [0.0, 5.0]])
    assert T.class_centroids(mu, [0, 0, 2, 2], "multiclass") is None  # class 1 has no images
    assert T.class_centroids(mu, np.eye(4)[:, :2], "multilabel") is None


def test_evaluate_reports_calibration_and_ood(imaging_root, tiny_checkpoint, tmp_path, one_torch_thread):
    from pumamed.cli import main

    if not (tiny_checkpoint / T.TRUST_FILE).is_file():
        calibrate_checkpoint(tiny_checkpoint, device="cpu", report_test=False, select_against=["pneumoniamnist"])
    png = tmp_path / "reliability.png"
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["evaluate", "--model", str(tiny_checkpoint), "--dataset", "breastmnist", "--ood",
                     "pneumoniamnist", "--latency-repeats", "1", "--reliability", str(png), "--json"])
    assert code == 0
    result = json.loads(out.getvalue())
    cal = result["calibration"]
    assert {"before", "after", "temperature", "macro_auc", "ece_if_perfectly_calibrated"} <= set(cal)
    assert {"ece", "brier", "nll"} <= set(cal["after"])
    assert cal["accuracy_unchanged"] is True
    # binary: temperature scaling is monotone, so the AUC does not move at all
    assert cal["macro_auc"]["after"] == pytest.approx(cal["macro_auc"]["before"], abs=1e-12)
    ood = result["ood"]
    assert 0 <= ood["false_alarm_rate"] <= 1
    row = ood["datasets"]["pneumoniamnist"]
    assert row["relation"] == "far" and 0 <= row["auroc"] <= 1 and row["n"] > 0
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # user errors: the model's own dataset as OOD, an unknown name
    for bad in ("breastmnist", "no_such_dataset"):
        assert main(["evaluate", "--model", str(tiny_checkpoint), "--dataset", "breastmnist", "--ood", bad,
                     "--latency-repeats", "1", "--json"]) == 2


def test_evaluate_without_trust_says_how_to_calibrate(imaging_root, tmp_path, one_torch_thread):
    from pumamed.net import PumaMedNet, PumaMedNetConfig, save_checkpoint

    folder = tmp_path / "uncalibrated"
    save_checkpoint(folder, PumaMedNet(PumaMedNetConfig(num_classes=2, task="binary",
                                                        class_names=["malignant", "normal+benign"], **TINY)),
                    config={"data": {"datasets": ["breastmnist"]}})
    block = evaluate_trust(folder, "breastmnist", split="val", device="cpu")
    assert "calibrate --model" in block["calibration"]["skipped"]
    from pumamed.errors import InputError

    with pytest.raises(InputError, match="calibrate"):
        evaluate_trust(folder, "breastmnist", split="val", ood=["pneumoniamnist"], device="cpu")


# --- the default models carry their trust signals ---------------------------------------------
@pytest.mark.parametrize("name", ["brain", "chest", "breast"])
def test_default_models_are_calibrated(name):
    folder = ROOT / "models" / name
    trust = T.load_trust(folder)
    assert trust is not None, f"models/{name} has no trust.json: python -m pumamed calibrate --model models/{name}"
    assert trust.temperature and trust.temperature > 0 and trust.has_ood
    test = trust.report.get("test") or {}
    # The target is 5 % false alarms (the threshold is the validation 97.5 % quantile). On BUSI's
    # 93 test images one image is 1.1 points, so the check is that the test split does not show
    # the rate above the target: the lower end of its 95 % interval is at most 5 % (6 of 93, the
    # 2026-12-07 breast model, passes at 3.0 %; 12 of 93 would fail at 7.5 %).
    ood = test.get("ood", {})
    assert ood.get("false_alarm_ci95", [1.0, 1.0])[0] <= 0.05, ood.get("false_alarm_rate")
    assert ood.get("false_alarm_rate", 1.0) <= 0.10
    far = [v["auroc"] for v in test["ood"]["datasets"].values() if v["relation"] == "far"]
    assert far and min(far) >= 0.98


# --- the explorer: a brain MRI uploaded to the breast model -----------------------------------
def _explorer_with_breast(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(ROOT / "models" / "breast", models / "breast")
    monkeypatch.setenv("PUMAMED_MODELS_DIR", str(models))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
    at.run()
    at.switch_page("views/image_explorer.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.radio(key="ie_source").set_value("Upload")
    at.run()
    return at


def _upload(at, path: Path):
    at.file_uploader(key="ie_upload").set_value((path.name, path.read_bytes(), "image/jpeg" if path.suffix == ".jpg"
                                                 else "image/png"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]


@pytest.mark.slow
def test_cross_modality_upload_is_flagged(monkeypatch, tmp_path, imaging_root, one_torch_thread):
    from pumamed.imaging import load_dataset

    if T.load_trust(ROOT / "models" / "breast") is None:
        pytest.fail("models/breast has no trust.json")
    at = _explorer_with_breast(monkeypatch, tmp_path)

    brain = sorted((imaging_root / "brain_tumor_mri" / "Training" / "glioma").glob("*.jpg"))[0]
    _upload(at, brain)
    errors = " ".join(e.value for e in at.error)
    assert "Outside what this model was trained on" in errors, errors
    assert "threshold" in errors and "unreliable" in errors
    labels = {m.label for m in at.metric}
    assert "Classifier on mu (unreliable)" in labels  # the class is shown, marked unreliable
    assert any(label.startswith("Probability of that class (calibrated)") for label in labels)

    # a breast ultrasound of the model's own test split, typical for it (median score): no warning
    busi = load_dataset("busi", split="test", size=128)
    from pumamed.net.checkpoint import load_model

    loaded = load_model(ROOT / "models" / "breast", device="cpu")
    images = torch.from_numpy(busi.uint8_images())
    images = images.unsqueeze(1) if images.ndim == 3 else images
    scores = loaded.trust.ood_score(T.model_outputs(loaded.model, images, "cpu"))
    typical = int(np.argsort(scores)[len(scores) // 2])
    path = Path(busi.metadata.iloc[typical]["path"])
    if not path.is_absolute():
        path = imaging_root / "busi" / path
    _upload(at, path)
    assert not any("Outside what this model" in e.value for e in at.error), [e.value for e in at.error]
    assert any("looks like the model's training data" in c.value for c in at.caption)


def test_training_calibrates_at_the_end_unless_told_not_to(imaging_root, tmp_path, one_torch_thread):
    from pumamed.cli import main

    common = ["train", "--dataset", "breastmnist", "--size", "32", "--latent", "8", "--widths", "8,16,32",
              "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "16", "--quiet"]
    with redirect_stdout(io.StringIO()):
        assert main([*common, "--out", str(tmp_path / "calibrated")]) == 0
        assert main([*common, "--no-calibrate", "--out", str(tmp_path / "plain")]) == 0
    trust = T.load_trust(tmp_path / "calibrated")
    assert trust is not None and trust.temperature > 0 and trust.has_ood
    assert trust.report["test"]["ood"]["datasets"], "the run reports the OOD figures on the test splits"
    assert T.load_trust(tmp_path / "plain") is None
