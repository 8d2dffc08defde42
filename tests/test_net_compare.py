"""Paired comparison of two classifiers on the same images (``evaluate --against``): the
vectorised rank-sum AUC agrees with scikit-learn, and the paired bootstrap interval behaves as
it must at its edges (a model against itself, a perfect model against a random one)."""

from __future__ import annotations

import numpy as np
import pytest

from pumamed.net.metrics import _macro_auc_rows, _one_vs_rest, classification_metrics, paired_auc_bootstrap


def _data(task, n=120, k=3, seed=0):
    rng = np.random.default_rng(seed)
    if task == "multilabel":
        y = (rng.random((n, k)) < 0.4).astype(int)
        proba = np.clip(0.6 * y + rng.random((n, k)) * 0.7, 0, 1)
    elif task == "binary":
        y = (rng.random(n) < 0.3).astype(int)
        p = np.clip(0.4 * y + rng.random(n) * 0.8, 0, 1)
        proba = np.stack([1 - p, p], 1)
    else:
        y = rng.integers(0, k, n)
        logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
        proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    # rounded scores make ties, which the rank-sum identity must count as halves, like sklearn
    return y, np.round(proba, 1)


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_rank_sum_macro_auc_matches_scikit_learn(task):
    y, proba = _data(task)
    names = ["a", "b", "c"] if task != "binary" else ["neg", "pos"]
    expected = classification_metrics(y, proba, task, names)["auc"]["macro"]
    positive, scores = _one_vs_rest(y, proba, task)
    assert _macro_auc_rows(positive[None], scores[None])[0] == pytest.approx(expected, abs=1e-12)


def test_a_model_against_itself_differs_by_exactly_nothing():
    y, proba = _data("multiclass")
    out = paired_auc_bootstrap(y, proba, proba, "multiclass", n_boot=300)
    assert out["difference"] == 0 and out["ci95"] == [0.0, 0.0] and out["p_a_not_below_b"] == 1.0


def test_a_perfect_model_beats_a_random_one_and_the_interval_says_so():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 90)
    perfect = np.eye(3)[y] * 0.9 + 0.05
    noise = rng.random((90, 3))
    out = paired_auc_bootstrap(y, perfect, noise / noise.sum(1, keepdims=True), "multiclass", n_boot=500, seed=1)
    assert out["auc_a"] == 1.0 and out["ci95"][0] > 0.2 and out["p_a_not_below_b"] == 1.0
    reverse = paired_auc_bootstrap(y, noise / noise.sum(1, keepdims=True), perfect, "multiclass", n_boot=500, seed=1)
    assert reverse["ci95"][1] < -0.2 and reverse["difference"] == pytest.approx(-out["difference"])


def test_the_interval_covers_the_estimate_and_narrows_with_more_images():
    widths = []
    for n in (60, 960):
        y, a = _data("multiclass", n=n, seed=5)
        _, b = _data("multiclass", n=n, seed=6)
        b = np.array(b)
        out = paired_auc_bootstrap(y, a, b, "multiclass", n_boot=400, seed=0)
        low, high = out["ci95"]
        assert low <= out["difference"] <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # about 1/sqrt(16) as wide with 16 times the images


def test_stratified_resampling_keeps_a_rare_class_in_every_replicate():
    # 2 positives in 60 images: an unstratified bootstrap draws neither in (58/60)^60 = 13 % of
    # replicates, where the AUC is undefined and the replicate would be lost
    y = np.array([0] * 58 + [1] * 2)
    rng = np.random.default_rng(0)
    a, b = rng.random(60), rng.random(60)
    out = paired_auc_bootstrap(y, np.stack([1 - a, a], 1), np.stack([1 - b, b], 1), "binary", n_boot=300)
    assert out["n_boot"] == 300 and out["stratified"]
