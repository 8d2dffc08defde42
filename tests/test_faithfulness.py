"""Faithfulness of PumaMedNet's pictures (``evaluate --judge``): every metric on a case whose
answer is known, on real images, then the command end to end.

* PSNR and SSIM against scikit-image's reference implementation;
* the judge's faithfulness ratio: 1 for an identity "reconstruction", 0 for a constant image;
* decision counterfactuals: the walk stops where the model's decision changed, and the detail
  code of a hierarchical model is held at the image's own value;
* lesion localisation on masks with a known ratio.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pumamed.cli import main
from pumamed.errors import InputError
from pumamed.explain.faithfulness import (
    faithfulness_ratio,
    lesion_localisation,
    other_class_donors,
    score_faithfulness,
    stratified_subset,
)
from pumamed.net.image_quality import psnr, ssim

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32
TINY_CLI = ["--size", str(SIZE), "--widths", "8,16,32", "--latent", "8", "--quiet"]


@pytest.fixture(scope="module")
def brain_images(imaging_root):
    from pumamed.imaging import load_dataset

    ds = load_dataset("brain_tumor_mri", split="val", size=64)
    return torch.from_numpy(ds.uint8_images()[:12].astype(np.float32) / 255.0)[:, None]


@pytest.fixture(scope="module")
def chest_judge(imaging_root):
    """The shipped chest model (PneumoniaMNIST, validation AUC 0.99) as a judge with real skill."""
    from pumamed.config import models_dir
    from pumamed.net.checkpoint import load_model

    return load_model(models_dir() / "chest", device="cpu")


def test_ssim_and_psnr_match_scikit_image_on_real_images(brain_images):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    noisy = (brain_images + torch.from_numpy(rng.normal(0, 0.05, brain_images.shape).astype(np.float32))).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(brain_images, 3, stride=1, padding=1)
    for other in (noisy, blurred):
        ours_ssim, ours_psnr = ssim(other, brain_images).numpy(), psnr(other, brain_images).numpy()
        for k in range(len(brain_images)):
            a, b = brain_images[k, 0].double().numpy(), other[k, 0].double().numpy()
            reference = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False)
            assert ours_ssim[k] == pytest.approx(reference, abs=2e-4)
            assert ours_psnr[k] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-3)
    assert torch.allclose(ssim(brain_images, brain_images), torch.ones(len(brain_images)), atol=1e-5)
    assert float(psnr(brain_images, brain_images)[0]) == pytest.approx(100.0)  # capped, not infinite
    unrelated = torch.from_numpy(rng.random(brain_images.shape).astype(np.float32))
    assert float(ssim(unrelated, brain_images).mean()) < 0.1


def test_the_ratio_is_one_for_identity_and_zero_for_a_constant_picture(chest_judge):
    from pumamed.imaging import load_dataset

    ds = load_dataset("pneumoniamnist", split="val", size=64)
    keep = stratified_subset(ds.labels, 120, seed=0)
    images = torch.from_numpy(ds.uint8_images()[keep].astype(np.float32) / 255.0)[:, None]
    labels = np.asarray(ds.labels)[keep]
    judge = chest_judge.model

    class Identity(torch.nn.Module):  # an autoencoder that keeps every pixel
        def reconstruct(self, x):
            return x

    class Constant(torch.nn.Module):  # one that keeps nothing
        def reconstruct(self, x):
            return torch.full_like(x, 0.5)

    kept, proba_original, proba_identity = score_faithfulness(Identity(), judge, images, labels, "binary",
                                                              ds.class_names, "cpu", 32)
    assert kept["auc_original"] > 0.9 and kept["ratio"] == pytest.approx(1.0) and kept["judge_agreement"] == 1.0
    np.testing.assert_allclose(proba_identity, proba_original)
    lost, _, _ = score_faithfulness(Constant(), judge, images, labels, "binary", ds.class_names, "cpu", 32)
    assert lost["auc_reconstruction"] == pytest.approx(0.5) and lost["ratio"] == pytest.approx(0.0, abs=1e-9)
    # a judge at chance makes the ratio undefined rather than a division by noise
    assert faithfulness_ratio(0.7, 0.5) is None and faithfulness_ratio(None, 0.9) is None
    assert "global_code" not in kept  # no detail code: the reconstruction is the global code's picture

    class GlobalCodeKeepsAll(Identity):  # a hierarchical stand-in whose global code alone draws the image
        has_detail = True

        def encode(self, x):
            return x, None

        def encode_all(self, x):  # the "codes" are the image itself
            return x, None, x, None

        def decode(self, mu, detail=None):
            return mu

    class GlobalCodeKeepsNothing(GlobalCodeKeepsAll):  # ... and one whose detail code carries everything
        def decode(self, mu, detail=None):
            return torch.full_like(mu, 0.5) if detail is None else detail

    alone, _, _ = score_faithfulness(GlobalCodeKeepsAll(), judge, images, labels, "binary", ds.class_names, "cpu", 32)
    assert alone["global_code"]["ratio"] == pytest.approx(1.0) and alone["ratio"] == pytest.approx(1.0)
    none, _, _ = score_faithfulness(GlobalCodeKeepsNothing(), judge, images, labels, "binary", ds.class_names,
                                    "cpu", 32)
    assert none["global_code"]["ratio"] == pytest.approx(0.0, abs=1e-9) and none["ratio"] == pytest.approx(1.0)
    # with the detail of an image of the other class: the global code decides (1), or the detail,
    # whose picture the judge reads as the other class (about -1 on two classes)
    assert alone["global_code"]["ratio_other_detail"] == pytest.approx(1.0)
    assert none["global_code"]["ratio_other_detail"] == pytest.approx(-1.0, abs=0.05)  # donors drawn with replacement
    donors = other_class_donors(labels)
    assert (labels[donors] != labels).all() and len(set(donors.tolist())) > len(labels) // 3
    assert (other_class_donors(np.zeros(5, dtype=int)) == -1).all()


def test_the_decision_counterfactual_stops_where_the_models_decision_changed(chest_judge):
    from pumamed.explain.counterfactual import decision_counterfactuals
    from pumamed.imaging import load_dataset

    model = chest_judge.model  # here the model explained, not a judge
    ds = load_dataset("pneumoniamnist", split="val", size=64)
    images = torch.from_numpy(ds.uint8_images()[:10].astype(np.float32) / 255.0)[:, None]
    out = decision_counterfactuals(model, images, max_shift=20.0, n_search=21)
    with torch.no_grad():
        np.testing.assert_allclose(out["reconstruction"], model.reconstruct(images)[:, 0].numpy(), atol=1e-5)
        predicted = model.predict_proba(images).argmax(1).numpy()
        on_counterfactual = model.predict_proba(torch.from_numpy(out["counterfactual"])[:, None]).argmax(1).numpy()
    np.testing.assert_array_equal(out["predicted"], predicted)
    assert out["flipped"].any(), "a trained binary model should change its mind within 20 latent units"
    flipped = out["flipped"]
    np.testing.assert_array_equal(on_counterfactual[flipped], out["decision"][flipped])
    assert (out["decision"][flipped] != predicted[flipped]).all()
    assert (out["shift"][~flipped] == 20.0).all() and (out["shift"][flipped] <= 20.0).all()
    # asking the model to be sure of its new class walks at least as far, and reaches it no more often
    sure = decision_counterfactuals(model, images, max_shift=20.0, n_search=21, min_confidence=0.9)
    assert (sure["shift"] >= out["shift"]).all() and not (sure["flipped"] & ~out["flipped"]).any()
    with torch.no_grad():
        proba = model.predict_proba(torch.from_numpy(sure["counterfactual"])[:, None]).numpy()
    assert (proba.max(1)[sure["flipped"]] >= 0.9 - 1e-4).all()


def test_the_centroid_walk_moves_from_the_predicted_class_towards_the_runner_up(chest_judge):
    """The walk mu + f (centroid_t - centroid_c) with planted centroids: its frames are the
    decoded codes along that line, it stops at the first change of the model's decision, and its
    shift is f times the centroids' distance."""
    from pumamed.explain.counterfactual import decision_counterfactuals
    from pumamed.imaging import load_dataset

    model = chest_judge.model
    ds = load_dataset("pneumoniamnist", split="val", size=64)
    images = torch.from_numpy(ds.uint8_images()[:8].astype(np.float32) / 255.0)[:, None]
    with torch.no_grad():
        mu = model.encode(images)[0]
        predicted = model.predict_proba(images).argmax(1).numpy()
    # the centroids 5 latent units apart along the head's weight, class 1 on its positive side
    weight = model.classifier.weight[-1].detach() if hasattr(model.classifier, "weight") else None
    direction = (weight / weight.norm()).numpy() if weight is not None else np.eye(mu.shape[1])[0]
    centroids = np.stack([-2.5 * direction, 2.5 * direction])
    out = decision_counterfactuals(model, images, n_search=41, centroids=centroids, centroid_span=3.0)
    assert out["flipped"].any()
    fractions = out["shift"] / 5.0
    runner_up = 1 - predicted
    with torch.no_grad():
        codes = mu + torch.from_numpy(fractions[:, None] * (centroids[runner_up] - centroids[predicted])).float()
        np.testing.assert_allclose(out["counterfactual"], model.decode(codes)[:, 0].numpy(), atol=1e-4)
        on_counterfactual = model.predict_proba(torch.from_numpy(out["counterfactual"])[:, None]).argmax(1).numpy()
    flipped = out["flipped"]
    np.testing.assert_array_equal(on_counterfactual[flipped], runner_up[flipped])
    assert np.allclose(fractions[~flipped], 3.0) and (fractions[flipped] <= 3.0 + 1e-6).all()
    with pytest.raises(InputError, match="centroids"):
        decision_counterfactuals(model, images, centroids=centroids[:1])
    # the per-class walk of the pages follows the same line, towards the chosen class
    from pumamed.explain.counterfactual import latent_shift

    cf = latent_shift(model, images[0, 0], 1, direction="increase", centroids=centroids, n_frames=3)
    with torch.no_grad():
        expected = model.decode(mu[:1] + torch.from_numpy(cf.lambdas[:, None] * direction[None]).float())
    np.testing.assert_allclose(cf.frames, expected[:, 0].clamp(0, 1).numpy(), atol=1e-4)


def test_a_hierarchical_model_holds_the_images_own_detail_code(brain_images):
    from pumamed.explain.counterfactual import decision_counterfactuals
    from pumamed.net.model import PumaMedNet, PumaMedNetConfig

    torch.manual_seed(0)
    model = PumaMedNet(PumaMedNetConfig(image_size=64, latent_dim=8, widths=(8, 16, 32, 32), groups=4,
                                        detail_channels=2, detail_resolution=16, num_classes=4)).eval()
    x = brain_images[:3]
    with torch.no_grad():
        mu, _, d_mu, _ = model.encode_all(x)
        assert d_mu.shape == (3, 2, 16, 16)
        # no detail code is the prior mean: zeros
        torch.testing.assert_close(model.decode(mu), model.decode(mu, torch.zeros_like(d_mu)))
        assert not torch.allclose(model.reconstruct(x), model.decode(mu))
    held = decision_counterfactuals(model, x, max_shift=4.0, n_search=3, detail="image")
    at_mean = decision_counterfactuals(model, x, max_shift=4.0, n_search=3, detail="mean")
    with torch.no_grad():
        np.testing.assert_allclose(held["reconstruction"], model.reconstruct(x)[:, 0].numpy(), atol=1e-5)
        np.testing.assert_allclose(at_mean["reconstruction"], model.decode(mu)[:, 0].numpy(), atol=1e-5)


def test_lesion_localisation_has_the_known_ratio():
    masks = np.zeros((3, 8, 8), bool)
    masks[:, 2:4, 2:4] = True
    change = np.ones((3, 8, 8))
    change[1][masks[1]] = 3.0  # three times the change inside the lesion
    change[2] = -change[2]  # the sign of the change does not matter
    ratios = lesion_localisation(change, masks)
    np.testing.assert_allclose(ratios, [1.0, 3.0, 1.0])
    assert np.isnan(lesion_localisation(change[:1], np.zeros((1, 8, 8), bool))[0])


def test_evaluate_judge_end_to_end_and_its_user_errors(imaging_root, tmp_path, capsys):
    common = ["--dataset", "breastmnist", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "8",
              "--no-test"]
    judge, model = tmp_path / "judge", tmp_path / "model"
    assert main(["train", "--arch", "resnet18", "--size", str(SIZE), "--quiet", *common, "--out", str(judge)]) == 0
    assert main(["train", *TINY_CLI, *common, "--detail-channels", "2", "--detail-resolution", "8",
                 "--ssim-weight", "0.1", "--detail-swap", "10", "--out", str(model)]) == 0
    config = json.loads((model / "config.json").read_text())
    assert config["model"]["detail_channels"] == 2 and config["training"]["ssim_weight"] == 0.1
    assert config["training"]["detail_swap_weight"] == 10
    history = json.loads((model / "metrics.json").read_text())["history"]
    assert history[0]["detail_swap"] > 0 and history[0]["kl_detail"] > 0 and history[0]["ssim_loss"] > 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--dataset", "breastmnist", "--judge", str(judge),
                 "--counterfactual-limit", "12", "--latency-repeats", "2", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    quality, faithful, cf = result["reconstruction"], result["faithfulness"], result["counterfactuals"]
    assert 0 < quality["psnr_db"]["mean"] < 100 and -1 <= quality["ssim"]["mean"] <= 1
    assert faithful["judge_arch"] == "resnet18" and faithful["n"] == result["n"]
    assert faithful["ratio"] is None or np.isfinite(faithful["ratio"])
    assert cf["n"] == 12 and 0 <= cf["validity"]["share"] <= 1 and cf["settings"]["detail"] == "image"
    low, high = cf["validity"]["ci95"]
    assert low <= cf["validity"]["share"] <= high
    # a valid counterfactual reached its goal and changed the judge's mind: never more than either
    assert cf["validity"]["share"] <= min(cf["judge_changed"]["share"], cf["model_decision_changed"]["share"])
    assert cf["localisation"] is None  # BreastMNIST has no lesion masks
    # the centroid walk reads the class centroids training stored with the calibration
    assert main(["evaluate", "--model", str(model), "--dataset", "breastmnist", "--judge", str(judge),
                 "--counterfactual-limit", "6", "--counterfactual-direction", "centroid", "--latency-repeats", "2",
                 "--device", "cpu", "--json"]) == 0
    walked = json.loads(capsys.readouterr().out)["counterfactuals"]
    assert walked["settings"]["walk"] == "centroid" and walked["n"] == 6
    assert walked["settings"]["centroid_span"] == 3.0 and walked["settings"]["max_shift"] is None
    assert walked["settings"]["n_search"] == 61
    # a longer walk keeps the grid step, so it only adds points beyond the shorter one's end
    assert main(["evaluate", "--model", str(model), "--dataset", "breastmnist", "--judge", str(judge),
                 "--counterfactual-limit", "6", "--counterfactual-direction", "centroid", "--counterfactual-span", "5",
                 "--latency-repeats", "2", "--device", "cpu", "--json"]) == 0
    longer = json.loads(capsys.readouterr().out)["counterfactuals"]
    assert longer["settings"]["centroid_span"] == 5.0 and longer["settings"]["n_search"] == 101
    assert longer["model_decision_changed"]["share"] >= walked["model_decision_changed"]["share"]
    assert main(["evaluate", "--model", str(model), "--dataset", "breastmnist", "--judge", str(judge),
                 "--counterfactual-limit", "6", "--counterfactual-direction", "centroid", "--latency-repeats", "2",
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "counterfactuals (n = 6, centroid walk): validity" in text and "faithfulness" in text

    # user errors: one line, exit 2
    assert main(["evaluate", "--model", str(model), "--dataset", "breastmnist", "--counterfactual-limit", "5"]) == 2
    assert "--judge" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(model), "--dataset", "breastmnist", "--judge", str(model)]) == 2
    assert "another model" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(judge), "--dataset", "breastmnist", "--judge", str(model)]) == 2
    assert "not a PumaMedNet" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(model), "--dataset", "breastmnist", "--judge", str(judge),
                 "--counterfactual-span", "5"]) == 2
    assert "centroid walk" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(model), "--dataset", "breastmnist", "--judge", str(judge),
                 "--counterfactual-direction", "centroid", "--counterfactual-span", "0"]) == 2
    assert "positive multiple" in capsys.readouterr().err
    (model / "trust.safetensors").unlink()
    (model / "trust.json").unlink()
    assert main(["evaluate", "--model", str(model), "--dataset", "breastmnist", "--judge", str(judge),
                 "--counterfactual-direction", "centroid"]) == 2
    assert "calibrate --model" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(model), "--dataset", "breastmnist",
                 "--counterfactual-direction", "centroid"]) == 2
    assert "--judge" in capsys.readouterr().err


def test_detail_options_are_checked(tmp_path, capsys):
    from pumamed.net.model import PumaMedNetConfig

    with pytest.raises(ValueError, match="detail_resolution"):
        PumaMedNetConfig(image_size=64, detail_channels=4, detail_resolution=12)
    with pytest.raises(ValueError, match="transposed"):
        PumaMedNetConfig(image_size=64, detail_channels=4, detail_resolution=16, decoder="upsample")
    assert main(["train", "--dataset", "breastmnist", "--ssim-weight", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "must not be negative" in capsys.readouterr().err


def test_the_swap_loss_reads_pictures_with_the_classifier_held():
    """The decoder is trained to draw evidence the reader finds on real images: the gradient of
    the swap loss reaches the pictures, never the encoder or the head."""
    from pumamed.net.model import PumaMedNet, PumaMedNetConfig
    from pumamed.net.train import frozen_reader_logits

    torch.manual_seed(0)
    model = PumaMedNet(PumaMedNetConfig(image_size=32, latent_dim=8, widths=(8, 16, 32), detail_channels=2,
                                        detail_resolution=8, num_classes=3))
    pictures = torch.rand(2, 1, 32, 32, requires_grad=True)
    logits = frozen_reader_logits(model, pictures)
    torch.testing.assert_close(logits, model.classifier(model.encode(pictures)[0]))  # the same reader
    logits.sum().backward()
    assert float(pictures.grad.abs().sum()) > 0
    assert all(p.grad is None for p in [*model.encoder.parameters(), *model.classifier.parameters()])


def test_a_conditional_detail_prior_holds_the_residual_and_moves_the_predicted_detail(brain_images):
    """With the prior N(m(z), s(z)^2) predicted from the global code, explanations hold only the
    image's residual detail: decode(z', residual) draws m(z') + residual, so the part of the detail
    the global code predicts moves with it; at initialisation the prior is N(0, I), so the model
    decodes exactly as the same weights with the standard prior."""
    from pumamed.net.losses import kl_gaussians, kl_per_dim
    from pumamed.net.model import PumaMedNet, PumaMedNetConfig

    kwargs = dict(image_size=64, latent_dim=8, widths=(8, 16, 32, 32), groups=4, detail_channels=2,
                  detail_resolution=16, num_classes=4)
    torch.manual_seed(0)
    standard = PumaMedNet(PumaMedNetConfig(**kwargs)).eval()
    conditional = PumaMedNet(PumaMedNetConfig(**kwargs, detail_prior="conditional")).eval()
    missing, unexpected = conditional.load_state_dict(standard.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("decoder.detail_prior.") for name in missing) and missing
    x = brain_images[:3]
    with torch.no_grad():
        torch.testing.assert_close(conditional.reconstruct(x), standard.reconstruct(x))
        mu, _, residual, logvar = standard.encode_all(x)
        torch.testing.assert_close(standard.detail_kl(mu, residual, logvar),
                                   kl_per_dim(residual.flatten(1), logvar.flatten(1)).sum(1))

        conditional.decoder.detail_prior[-1].weight.normal_(0, 0.05)  # a prior that depends on z
        conditional.decoder.detail_prior[-1].bias.normal_(0, 0.5)
        mu, _, residual, logvar = conditional.encode_all(x)
        code = conditional.encoder.forward_all(x)[2]
        prior_mean, prior_logvar = conditional.detail_prior(mu)
        torch.testing.assert_close(residual, code - prior_mean)
        # the reconstruction draws the encoder's own code, whatever the prior
        torch.testing.assert_close(conditional.reconstruct(x),
                                   conditional.decoder.bottom_up(conditional.decoder.top_down(mu), code))
        torch.testing.assert_close(conditional.detail_kl(mu, residual, logvar),
                                   kl_gaussians(code, logvar, prior_mean, prior_logvar).flatten(1).sum(1))
        # an edit of the global code with the residual held draws the new code's predicted detail
        edited = mu + 3.0
        expected = conditional.decoder.bottom_up(conditional.decoder.top_down(edited),
                                                 conditional.detail_prior(edited)[0] + residual)
        torch.testing.assert_close(conditional.decode(edited, residual), expected)
        assert not torch.allclose(conditional.detail_prior(edited)[0], prior_mean)
        # "mean": the prior mean given the global code
        torch.testing.assert_close(conditional.decode(mu),
                                   conditional.decoder.bottom_up(conditional.decoder.top_down(mu), prior_mean))


def test_training_with_a_conditional_detail_prior_and_adding_it_with_init(imaging_root, tmp_path):
    common = ["--dataset", "breastmnist", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "8",
              "--no-test", "--no-calibrate"]
    standard, conditional = tmp_path / "standard", tmp_path / "conditional"
    assert main(["train", *TINY_CLI, *common, "--detail-channels", "2", "--detail-resolution", "8",
                 "--detail-swap", "10", "--out", str(standard)]) == 0
    assert json.loads((standard / "config.json").read_text())["model"]["detail_prior"] == "standard"
    assert main(["train", "--size", str(SIZE), "--quiet", *common, "--init", str(standard),
                 "--detail-prior", "conditional", "--detail-swap", "10", "--out", str(conditional)]) == 0
    config = json.loads((conditional / "config.json").read_text())
    assert config["model"]["detail_prior"] == "conditional" and config["model"]["detail_channels"] == 2
    history = json.loads((conditional / "metrics.json").read_text())["history"]
    assert np.isfinite(history[0]["kl_detail"]) and history[0]["kl_detail"] > 0 and history[0]["detail_swap"] > 0
    card = (conditional / "model_card.md").read_text()
    assert "conditional on the global code" in card
