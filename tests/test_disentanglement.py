"""Known-answer tests of MIG, DCI and SAP (definitions of disentanglement_lib)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pumamed.errors import InputError
from pumamed.explain.disentanglement import (
    dci,
    disentanglement_scores,
    factors_from_metadata,
    histogram_discretize,
    mig,
    sap,
)

N = 1500


def _factors(seed: int = 0, levels=(4, 5, 3)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, k, N) for k in levels], axis=1)


def _perfect_codes(factors: np.ndarray, seed: int = 1, noise_dims: int = 3) -> np.ndarray:
    """One code per factor (plus tiny jitter), and pure-noise codes: the textbook disentangled case."""
    rng = np.random.default_rng(seed)
    signal = factors + rng.normal(0, 0.05, factors.shape)
    return np.concatenate([signal, rng.normal(0, 1, (len(factors), noise_dims))], axis=1)


def _rotated_codes(factors: np.ndarray, seed: int = 2) -> np.ndarray:
    """The same information, but every code mixes every factor equally (a 45-degree style rotation)."""
    centred = (factors - factors.mean(axis=0)) / factors.std(axis=0)
    # Every code is an equal-weight mix of all three factors (signs differ, so the information
    # is all there and invertible), i.e. no code belongs to one factor.
    mixing = np.array([[1, 1, 1], [1, -1, 1], [1, 1, -1]], dtype=float) / np.sqrt(3)
    rng = np.random.default_rng(seed)
    return np.concatenate([centred @ mixing, rng.normal(0, 1, (len(factors), 3))], axis=1)


def test_histogram_discretize_bins_each_dimension_separately():
    codes = np.stack([np.linspace(0, 1, 100), np.linspace(-50, 50, 100)], axis=1)
    binned = histogram_discretize(codes, num_bins=10)
    assert binned.min() == 1 and binned.max() == 10
    assert np.array_equal(binned[:, 0], binned[:, 1])  # scale-free: same bins for both dims


def test_mig_is_about_one_for_perfect_codes_and_low_for_rotated():
    factors = _factors()
    perfect, per_factor, mi = mig(_perfect_codes(factors), factors)
    assert perfect > 0.9
    assert per_factor.shape == (3,) and mi.shape == (6, 3)
    assert np.argmax(mi, axis=0).tolist() == [0, 1, 2]  # each factor found in its own code
    rotated, _, _ = mig(_rotated_codes(factors), factors)
    assert rotated < 0.35
    assert rotated < perfect - 0.5


def test_mig_of_a_code_duplicated_in_two_dimensions_is_zero_for_that_factor():
    factors = _factors()
    codes = _perfect_codes(factors)
    codes[:, 3] = codes[:, 0]  # factor 0 now lives in two codes: no gap
    _, per_factor, _ = mig(codes, factors)
    assert per_factor[0] == pytest.approx(0.0, abs=1e-9)
    assert per_factor[1] > 0.9


def test_dci_perfect_codes_score_one_and_rotated_codes_lose_disentanglement():
    factors = _factors()
    good = dci(_perfect_codes(factors), factors, n_estimators=30)
    assert good["disentanglement"] > 0.9
    assert good["completeness"] > 0.9
    assert good["informativeness"] > 0.95
    importance = good["importance"]
    assert np.argmax(importance, axis=0).tolist() == [0, 1, 2]
    bad = dci(_rotated_codes(factors), factors, n_estimators=30)
    assert bad["disentanglement"] < good["disentanglement"] - 0.3
    assert bad["completeness"] < good["completeness"] - 0.3


def test_dci_noise_codes_are_uninformative():
    factors = _factors()
    noise = np.random.default_rng(5).normal(size=(N, 6))
    result = dci(noise, factors, n_estimators=30)
    chance = np.mean([np.bincount(f).max() / N for f in factors.T])
    assert result["informativeness"] < chance + 0.1


def test_sap_continuous_scores_are_r_squared():
    factors = _factors()
    score, per_factor, matrix = sap(_perfect_codes(factors), factors, continuous_factors=True)
    assert score > 0.95
    assert np.diag(matrix[:3]) == pytest.approx(np.ones(3), abs=0.02)
    rotated, _, _ = sap(_rotated_codes(factors), factors, continuous_factors=True)
    assert rotated < 0.3


def test_sap_discrete_binary_factors_reach_one_minus_chance():
    rng = np.random.default_rng(3)
    factors = rng.integers(0, 2, (N, 2))
    codes = np.concatenate([factors + rng.normal(0, 0.05, factors.shape), rng.normal(0, 1, (N, 2))], axis=1)
    score, _, matrix = sap(codes, factors)
    # the right code classifies perfectly (1.0), the next best only at chance (about 0.5)
    assert matrix[0, 0] > 0.99 and matrix[1, 1] > 0.99
    assert score == pytest.approx(0.5, abs=0.06)


def test_disentanglement_scores_bundle_and_metadata_factors():
    metadata = pd.DataFrame({
        "sex": np.where(np.arange(400) % 2, "M", "F"),
        "view": np.where(np.arange(400) % 3 == 0, "AP", "PA"),
        "age": np.arange(400) % 80 + 10,
        "modality": ["chest_xray"] * 400,  # constant: dropped
    })
    factors, names, keep = factors_from_metadata(metadata, ["sex", "view", "age", "modality"])
    assert names == ["sex", "view", "age"]
    assert factors.shape == (400, 3) and keep.all()
    assert set(np.unique(factors[:, 2])) == {0, 1, 2, 3}  # age in quartiles
    codes = _perfect_codes(factors, noise_dims=2)
    scores = disentanglement_scores(codes, factors, names, n_estimators=20)
    assert scores.mig > 0.8 and scores.dci_disentanglement > 0.8
    as_dict = scores.to_dict()
    assert set(as_dict) >= {"mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap"}


def test_bad_inputs_raise_input_errors():
    with pytest.raises(InputError):
        mig(np.zeros((5, 3)), np.zeros((5, 1)))
    with pytest.raises(InputError):
        mig(np.zeros((20, 3)), np.zeros((19, 1)))
    with pytest.raises(InputError):
        factors_from_metadata(pd.DataFrame({"sex": ["F"] * 20}), ["sex"])
