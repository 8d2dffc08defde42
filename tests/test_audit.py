"""Known-answer tests of the bias audit: predictability, flagged dimensions, subgroup metrics,
mitigation, and the audit CLI on real data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pumamed.errors import InputError
from pumamed.explain.audit import (
    AttributeValues,
    LatentCodes,
    attribute_predictability,
    attribute_values,
    available_attributes,
    binary_target,
    expected_calibration_error,
    flag_dimensions,
    head_dependence,
    subgroup_performance,
)
from pumamed.explain.mitigation import (
    AttributeSubspaceRemover,
    attribute_leakage,
    compare_mitigations,
    reweighing_weights,
)


def _cat(values) -> AttributeValues:
    return AttributeValues("attr", np.asarray(values, dtype=object), "categorical")


# ----------------------------------------------------------------------------- attributes
def test_attribute_values_normalise_names_and_age_groups():
    meta = pd.DataFrame({"sex": ["M", "F", None, "F"], "age": [25, 45, 70, None],
                         "density": ["F", "G", "D", "G"], "view": ["PA", "AP", "PA", "PA"]})
    assert attribute_values(meta, "sex").values.tolist() == ["male", "female", None, "female"]
    assert attribute_values(meta, "density").values.tolist() == ["fatty", "fatty-glandular", "dense-glandular",
                                                                 "fatty-glandular"]
    age = attribute_values(meta, "age")
    assert age.kind == "continuous" and age.groups().tolist() == ["<40", "40-59", "60+", None]
    assert attribute_values(meta, "age_group").values.tolist() == ["<40", "40-59", "60+", None]
    with pytest.raises(InputError, match="no 'site' metadata"):
        attribute_values(meta, "site")


def test_available_attributes_need_two_groups_of_five():
    meta = pd.DataFrame({"sex": ["F"] * 20, "view": ["PA"] * 10 + ["AP"] * 10, "age": np.arange(20) * 4})
    assert available_attributes(meta) == ["age", "age_group", "view"]


# ----------------------------------------------------------------------------- predictability and flags
def test_predictability_is_one_when_encoded_and_chance_when_not():
    rng = np.random.default_rng(0)
    groups = rng.choice(["a", "b", "c"], 300)
    codes = rng.normal(size=(300, 8))
    codes[:, 2] += 4.0 * (groups == "a") - 4.0 * (groups == "b")
    encoded = attribute_predictability(codes, _cat(groups))
    assert encoded.metric == "auc" and encoded.score > 0.97
    assert encoded.groups == {"a": (groups == "a").sum(), "b": (groups == "b").sum(), "c": (groups == "c").sum()}
    noise = attribute_predictability(rng.normal(size=(300, 8)), _cat(groups))
    assert abs(noise.score - 0.5) < 0.1


def test_predictability_of_a_continuous_attribute_is_r2():
    rng = np.random.default_rng(1)
    age = rng.uniform(20, 80, 300)
    codes = rng.normal(size=(300, 5))
    codes[:, 0] = (age - 50) / 10 + rng.normal(0, 0.1, 300)
    result = attribute_predictability(codes, AttributeValues("age", age.astype(object), "continuous"))
    assert result.metric == "r2" and result.score > 0.95


def test_patient_grouped_folds_keep_a_patient_out_of_its_own_training_fold():
    # Each patient has 5 near-identical images whose attribute is random: only memorising the
    # patient predicts it. Grouped folds must see chance; ungrouped folds would cheat.
    rng = np.random.default_rng(2)
    patients = np.repeat(np.arange(60), 5)
    attribute = np.repeat(rng.choice(["x", "y"], 60), 5)
    codes = np.repeat(rng.normal(size=(60, 6)), 5, axis=0) + rng.normal(0, 0.01, (300, 6))
    grouped = attribute_predictability(codes, _cat(attribute), patient_ids=patients)
    assert abs(grouped.score - 0.5) < 0.15


def test_flag_dimensions_finds_the_planted_dimensions_only():
    rng = np.random.default_rng(3)
    groups = rng.choice(["F", "M"], 400)
    codes = rng.normal(size=(400, 12))
    codes[:, 4] += 1.5 * (groups == "M")
    codes[:, 9] -= 1.0 * (groups == "M")
    flags = flag_dimensions(codes, _cat(groups), n_permutations=100)
    assert flags.flagged[:2] == [4, 9]
    assert set(flags.flagged) == {4, 9}
    assert flags.mutual_information[4] > flags.mutual_information[[0, 1, 2, 3]].max()


def test_conditional_flags_ignore_dimensions_that_only_encode_the_label():
    # The attribute is confounded with the label; dim 0 encodes the label, dim 1 the attribute itself.
    rng = np.random.default_rng(4)
    label = rng.integers(0, 2, 600)
    attribute = np.where(rng.uniform(size=600) < np.where(label == 1, 0.85, 0.15), "token", "none")
    codes = rng.normal(size=(600, 6))
    codes[:, 0] += 3.0 * label
    codes[:, 1] += 1.5 * (attribute == "token")
    plain = flag_dimensions(codes, _cat(attribute), n_permutations=100)
    conditional = flag_dimensions(codes, _cat(attribute), n_permutations=100, strata=label)
    assert 0 in plain.flagged  # confounded
    assert conditional.flagged == [1]


def test_head_dependence_share():
    result = head_dependence(np.array([3.0, 1.0, 0.0, 0.0]), [0])
    assert result["weight_share_on_flagged"] == pytest.approx(0.75)
    assert result["flagged_fraction_of_dims"] == pytest.approx(0.25)
    assert result["top_weighted_dims"][0] == 0


# ----------------------------------------------------------------------------- subgroup metrics
def test_expected_calibration_error_known_values():
    y = np.array([1, 1, 1, 1, 0] * 20)
    assert expected_calibration_error(y, np.full(100, 0.8)) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.full(100, 0.3)) == pytest.approx(0.5)


def test_subgroup_performance_known_answer():
    # Group "good": scores separate the classes perfectly; group "bad": scores are reversed.
    y = np.array([0, 0, 0, 1, 1, 1] * 10)
    good = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9] * 10)
    bad = good[::-1].copy()
    report = subgroup_performance(np.concatenate([y, y]), np.concatenate([good, bad]),
                                  ["good"] * 60 + ["bad"] * 60, threshold=0.5, n_boot=100)
    table = report.table
    assert table.loc["good", "auc"] == pytest.approx(1.0)
    assert table.loc["bad", "auc"] == pytest.approx(0.0)
    assert table.loc["good", "tpr"] == 1.0 and table.loc["good", "fpr"] == 0.0
    assert table.loc["bad", "tpr"] == 0.0 and table.loc["bad", "fpr"] == 1.0
    assert table.loc["overall", "n"] == 120
    assert report.gaps["auc"]["gap"] == pytest.approx(1.0)
    assert report.gaps["auc"]["worst_group"] == "bad"
    assert report.gaps["fpr"]["worst_group"] == "bad"
    assert table.loc["good", "auc_lo"] <= 1.0 <= table.loc["good", "auc_hi"] + 1e-12
    as_dict = report.to_dict()
    assert {row["group"] for row in as_dict["groups"]} == {"good", "bad", "overall"}


def test_bootstrap_interval_covers_the_truth_and_narrows_with_n():
    rng = np.random.default_rng(5)

    def width(n):
        y = rng.integers(0, 2, n)
        s = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.25, n), 0, 1)
        g = np.where(np.arange(n) % 2, "a", "b")
        t = subgroup_performance(y, s, g, n_boot=150).table
        assert t.loc["overall", "auc_lo"] < t.loc["overall", "auc"] < t.loc["overall", "auc_hi"]
        return t.loc["overall", "auc_hi"] - t.loc["overall", "auc_lo"]

    assert width(2000) < width(200)


def test_subgroup_performance_needs_two_groups():
    with pytest.raises(InputError, match="two groups"):
        subgroup_performance([0, 1] * 10, [0.2, 0.8] * 10, ["a"] * 20)


def test_binary_target_for_each_task():
    meta = pd.DataFrame(index=range(4))
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]])
    codes = LatentCodes(np.zeros((4, 2)), np.zeros((4, 2)), np.array([0, 1, 2, 0]), probs, meta,
                        ["normal", "benign", "malignant"], ["normal", "benign", "malignant"], "multiclass")
    target = binary_target(codes)
    assert target.name == "not normal" and target.y.tolist() == [0, 1, 1, 0]
    assert target.head_score == pytest.approx(1 - probs[:, 0])
    assert binary_target(codes, positive="malignant").y.tolist() == [0, 0, 1, 0]
    codes.class_names = ["a", "b", "c"]  # head trained on other classes: no head score
    assert binary_target(codes).head_score is None


# ----------------------------------------------------------------------------- mitigation
def _confounded(seed=6, n=800):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    sex = np.where(rng.uniform(size=n) < 0.5, "F", "M")
    codes = rng.normal(size=(n, 6))
    codes[:, 0] += 1.2 * label  # the disease
    codes[:, 1] += 2.0 * (sex == "M")  # the attribute
    codes[:, 2] += 0.8 * (sex == "M") + 0.5 * label  # both
    return codes, label, sex.astype(object)


def test_orthogonal_projection_removes_linear_information_and_keeps_the_rest():
    codes, label, sex = _confounded()
    remover = AttributeSubspaceRemover("orthogonal").fit(codes, sex)
    assert remover.n_removed_ == 1
    projected = remover.transform(codes)
    assert projected.shape == codes.shape
    # group means now coincide: no linear classifier can tell the groups apart
    diff = projected[sex == "M"].mean(axis=0) - projected[sex == "F"].mean(axis=0)
    assert np.abs(diff).max() < 1e-8
    assert attribute_leakage(projected[:600], sex[:600], projected[600:], sex[600:]) < 0.6
    assert attribute_leakage(codes[:600], sex[:600], codes[600:], sex[600:]) > 0.9
    # the disease is still there
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    head = LogisticRegression().fit(projected[:600], label[:600])
    assert roc_auc_score(label[600:], head.predict_proba(projected[600:])[:, 1]) > 0.75


def test_inlp_and_drop_methods():
    codes, label, sex = _confounded()
    inlp = AttributeSubspaceRemover("inlp").fit(codes[:600], sex[:600])
    assert inlp.n_removed_ >= 1
    assert attribute_leakage(inlp.transform(codes[:600]), sex[:600], inlp.transform(codes[600:]), sex[600:]) < 0.6
    drop = AttributeSubspaceRemover("drop", dims=[1]).fit(codes)
    assert np.allclose(drop.transform(codes)[:, 1], codes[:, 1].mean())
    assert np.allclose(drop.transform(codes)[:, 0], codes[:, 0])
    with pytest.raises(InputError):
        AttributeSubspaceRemover("nonsense").fit(codes, sex)


def test_reweighing_weights_make_attribute_and_label_independent():
    groups = np.array(["a"] * 80 + ["b"] * 20)
    y = np.array([1] * 60 + [0] * 20 + [1] * 5 + [0] * 15)
    w = reweighing_weights(groups, y)
    assert w.mean() == pytest.approx(1.0)
    frame = pd.DataFrame({"g": groups, "y": y, "w": w})
    weighted_rate = frame.groupby("g").apply(lambda f: np.average(f["y"], weights=f["w"]), include_groups=False)
    assert weighted_rate["a"] == pytest.approx(weighted_rate["b"])


def test_compare_mitigations_closes_the_gap_of_a_biased_attribute():
    # The label signal is weaker for "M" and "M" is shifted along the label direction: a head on
    # raw codes uses the attribute; removing it must lower the leakage to about chance.
    codes, label, sex = _confounded(seed=7, n=1200)
    report = compare_mitigations(codes[:800], label[:800], sex[:800], codes[800:], label[800:], sex[800:],
                                 sex[800:], flagged_dims=[1], n_boot=30)
    table = report.table.set_index("strategy")
    assert list(table.index) == ["baseline", "orthogonal", "inlp", "drop flagged", "reweighting",
                                 "orthogonal + reweighting"]
    assert table.loc["baseline", "attribute_leakage"] > 0.9
    assert table.loc["orthogonal", "attribute_leakage"] < 0.6
    assert table.loc["orthogonal", "auc"] > 0.7
    assert report.to_dict()["strategies"][0]["strategy"] == "baseline"


def test_performance_verdict_refuses_gaps_of_a_classifier_at_chance():
    import pandas as pd

    from pumamed.explain.audit import SubgroupReport, performance_verdict

    def report(auc, lo, hi):
        table = pd.DataFrame({"n": [200, 100, 100], "auc": [auc, auc - 0.05, auc + 0.05],
                              "auc_lo": [lo, lo, lo], "auc_hi": [hi, hi, hi]}, index=["overall", "F", "M"])
        return SubgroupReport(table, {}, 0.5, 50)

    at_chance = performance_verdict(report(0.472, 0.405, 0.543), "logistic probe on mu")
    assert not at_chance.judgeable and "includes chance" in at_chance.reason and "0.472" in at_chance.reason
    weak_probe = performance_verdict(report(0.57, 0.52, 0.62), "logistic probe on mu")
    assert not weak_probe.judgeable and "floor" in weak_probe.reason
    # the same figures from the model's own head are above chance: judgeable
    assert performance_verdict(report(0.57, 0.52, 0.62), "model head").judgeable
    assert performance_verdict(report(0.85, 0.80, 0.90), "logistic probe on mu").judgeable
    assert not performance_verdict(None, "model head").judgeable
