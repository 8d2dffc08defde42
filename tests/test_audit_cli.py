"""``python -m pumamed audit`` on real data: JSON keys, text output, user errors."""

from __future__ import annotations

import json

import pytest
import torch

from pumamed.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, imaging_root):
    from pumamed.net import PumaMedNet, PumaMedNetConfig, save_checkpoint

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "chest_tiny"
    model = PumaMedNet(PumaMedNetConfig(image_size=64, latent_dim=12, widths=(8, 16, 32, 64), num_classes=2,
                                        task="binary", class_names=["normal", "abnormal"]))
    save_checkpoint(folder, model, {"data": {"datasets": ["nih_cxr14_1000"]}}, {}, "# test checkpoint\n")
    return folder


def test_audit_json_on_nih(checkpoint, capsys):
    code = main(["audit", "--model", str(checkpoint), "--dataset", "nih_cxr14_1000", "--attribute", "sex,view",
                 "--n-boot", "20", "--max-images", "200", "--disentanglement", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"model", "dataset", "split", "n_test", "n_train", "audits", "attributes_available",
                        "mutual_information_matrix", "disentanglement"}
    assert set(out["audits"]) == {"sex", "view"}
    assert {"sex", "age", "view"} <= set(out["attributes_available"])
    sex = out["audits"]["sex"]
    assert set(sex) >= {"predictability", "flagged_dimensions", "mutual_information", "subgroups", "mitigation",
                        "head_dependence", "classifier", "positive"}
    assert sex["predictability"]["metric"] == "auc" and 0 <= sex["predictability"]["score"] <= 1
    assert sex["classifier"] == "model head" and sex["positive"] == "abnormal"
    groups = {row["group"] for row in sex["subgroups"]["groups"]}
    assert groups == {"female", "male", "overall"}
    row = sex["subgroups"]["groups"][0]
    assert {"n", "auc", "auc_lo", "auc_hi", "tpr", "fpr", "ece"} <= set(row)
    assert "auc" in sex["subgroups"]["gaps"]
    strategies = [s["strategy"] for s in sex["mitigation"]["strategies"]]
    assert strategies[0] == "baseline" and "orthogonal" in strategies and "reweighting" in strategies
    assert len(out["mutual_information_matrix"]["sex"]) == 12
    assert {"mig", "dci_disentanglement", "sap"} <= set(out["disentanglement"])


def test_audit_text_output_on_mini_mias_density(checkpoint, capsys):
    code = main(["audit", "--model", str(checkpoint), "--dataset", "mini_mias", "--attribute", "density",
                 "--n-boot", "0", "--max-images", "60"])
    assert code == 0
    text = capsys.readouterr().out
    assert "== density (categorical) ==" in text
    assert "logistic probe" in text  # a chest model's head does not predict mammography classes


def test_audit_user_errors_are_one_line(checkpoint, tmp_path, capsys):
    assert main(["audit", "--dataset", "nih_cxr14_1000"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["audit", "--model", str(tmp_path / "nope"), "--dataset", "nih_cxr14_1000"]) == 2
    assert main(["audit", "--model", str(checkpoint), "--dataset", "nih_cxr14_1000", "--attribute", "density",
                 "--max-images", "40"]) == 2
    assert "no 'density' metadata" in capsys.readouterr().err
    assert main(["audit", "shortcut", "--size", "30"]) == 2
    assert "multiple of 16" in capsys.readouterr().err
