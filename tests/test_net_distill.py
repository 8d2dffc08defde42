"""Distillation from a trained classifier (``train --teacher``): the loss, its checks, and the
CLI end to end on real BreastMNIST images with a tiny ResNet-18 teacher."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from pumamed.cli import main
from pumamed.net.losses import distillation_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32
TINY_CLI = ["--size", str(SIZE), "--widths", "8,16,32", "--latent", "8", "--quiet"]


@pytest.mark.parametrize("task, outputs", [("multiclass", 3), ("binary", 1), ("multilabel", 4)])
def test_the_loss_is_flat_where_the_student_agrees_with_the_teacher(task, outputs):
    torch.manual_seed(0)
    teacher = torch.randn(16, outputs)
    same = teacher.clone().requires_grad_(True)
    distillation_loss(same, teacher, task, temperature=2.0).backward()
    assert same.grad.abs().max() < 1e-6
    other = torch.randn(16, outputs, requires_grad=True)
    distillation_loss(other, teacher, task, temperature=2.0).backward()
    assert other.grad.abs().max() > 1e-3


def test_multiclass_loss_is_the_tempered_kl_times_t_squared():
    torch.manual_seed(1)
    student, teacher, t = torch.randn(8, 3), torch.randn(8, 3), 3.0
    p_teacher = F.softmax(teacher / t, dim=1)
    by_hand = (p_teacher * (p_teacher.log() - F.log_softmax(student / t, dim=1))).sum(1).mean() * t * t
    torch.testing.assert_close(distillation_loss(student, teacher, "multiclass", t), by_hand)


def test_cli_distils_from_a_resnet_teacher_and_refuses_a_mismatched_one(imaging_root, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    common = ["--dataset", "breastmnist", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "8",
              "--no-test"]
    assert main(["train", "--arch", "resnet18", "--size", str(SIZE), "--quiet", *common, "--out", str(teacher)]) == 0
    student = tmp_path / "student"
    assert main(["train", *TINY_CLI, *common, "--teacher", str(teacher), "--distill-weight", "0.7",
                 "--out", str(student)]) == 0
    capsys.readouterr()
    config = json.loads((student / "config.json").read_text())
    assert config["data"]["teacher"]["arch"] == "resnet18"
    assert config["training"]["distill_weight"] == 0.7
    history = json.loads((student / "metrics.json").read_text())["history"]
    assert history[0]["distill"] >= 0 and "cls" in history[0]
    assert "distilled from ResNet-18" in (student / "model_card.md").read_text()
    # the student's checkpoint holds no teacher tensors
    from pumamed.net import checkpoint as ckpt

    assert not any(k.startswith(("_teacher", "layer", "fc.")) for k in ckpt.read_tensors(student / ckpt.WEIGHTS_FILE))

    # the comparison table from one command: both models on the same test images, paired bootstrap
    assert main(["evaluate", "--model", str(student), "--dataset", "breastmnist", "--against", str(teacher),
                 "--bootstrap", "200", "--latency-repeats", "2", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    other, diff = result["against"], result["difference"]
    assert other["arch"] == "resnet18" and other["parameters"] > 10 * result["parameters"]
    assert diff["macro_auc"] == pytest.approx(result["auc"]["macro"] - other["auc"]["macro"])
    assert diff["ci95"][0] <= diff["macro_auc"] <= diff["ci95"][1] and diff["n_boot"] == 200
    assert main(["evaluate", "--model", str(student), "--dataset", "breastmnist", "--against", str(teacher),
                 "--bootstrap", "10"]) == 2
    assert "at least 100" in capsys.readouterr().err

    # a teacher of another image size reads the student's images resized to its own
    bigger = tmp_path / "student64"
    assert main(["train", "--size", "64", "--widths", "8,16,32", "--latent", "8", "--quiet", *common,
                 "--teacher", str(teacher), "--out", str(bigger)]) == 0
    capsys.readouterr()
    assert f"resized to its {SIZE} px" in json.loads((bigger / "config.json").read_text())["data"]["teacher"][
        "description"]
    # a teacher of other classes, and a nonsense weight, are refused with one line
    other = tmp_path / "other_classes"
    assert main(["train", "--arch", "resnet18", "--size", str(SIZE), "--quiet", "--dataset", "pneumoniamnist",
                 "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "8", "--no-test",
                 "--out", str(other)]) == 0
    capsys.readouterr()
    assert main(["train", *TINY_CLI, *common, "--teacher", str(other), "--out", str(tmp_path / "bad")]) == 2
    assert "does not match this run" in capsys.readouterr().err
    assert main(["train", *TINY_CLI, *common, "--teacher", str(teacher), "--distill-weight", "1.5",
                 "--out", str(tmp_path / "bad2")]) == 2


def test_a_teacher_of_another_size_reads_the_images_resized_to_its_own():
    from pumamed.net.pipeline import ResizedInput

    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 3))
    images = torch.rand(2, 1, 32, 32)
    expected = teacher(torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear", antialias=True,
                                                       align_corners=False))
    torch.testing.assert_close(ResizedInput(teacher, 16)(images), expected)


def test_an_ensemble_teacher_is_the_mean_of_its_members_logits():
    from pumamed.net.pipeline import TeacherEnsemble

    torch.manual_seed(2)
    members = [torch.nn.Linear(5, 3) for _ in range(3)]
    x = torch.randn(4, 5)
    ensemble = TeacherEnsemble(members)
    torch.testing.assert_close(ensemble(x), sum(m(x) for m in members) / 3)
    # one member's output alone is not the ensemble's (the test would pass if only one were read)
    assert not torch.allclose(ensemble(x), members[0](x))


def test_cli_distils_from_an_ensemble_of_teachers(imaging_root, tmp_path, capsys):
    common = ["--dataset", "breastmnist", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "8",
              "--no-test"]
    teachers = []
    for seed in (0, 1):
        folder = tmp_path / f"teacher{seed}"
        assert main(["train", "--arch", "resnet18", "--size", str(SIZE), "--quiet", "--seed", str(seed), *common,
                     "--out", str(folder)]) == 0
        teachers.append(str(folder))
    student = tmp_path / "student"
    assert main(["train", *TINY_CLI, *common, "--teacher", ",".join(teachers), "--out", str(student)]) == 0
    capsys.readouterr()
    teacher = json.loads((student / "config.json").read_text())["data"]["teacher"]
    assert teacher["paths"] == teachers and len(teacher["members"]) == 2 and teacher["arch"] == "resnet18"
    assert "an ensemble of 2 ResNet-18 runs" in (student / "model_card.md").read_text()
    # naming one teacher twice is refused with one line
    assert main(["train", *TINY_CLI, *common, "--teacher", f"{teachers[0]},{teachers[0]}",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "same folder twice" in capsys.readouterr().err
