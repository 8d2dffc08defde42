"""Counterfactual latent shift, pixel saliency/occlusion and latent attributions on a real, briefly
trained PumaMedNet (PneumoniaMNIST at 32 px, a few seconds on a CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pumamed.errors import CheckpointError, InputError
from pumamed.explain.attributions import head_probabilities, latent_attributions, traverse_dimensions
from pumamed.explain.counterfactual import counterfactual_gif, latent_shift
from pumamed.explain.saliency import gradient_saliency, normalise_map, occlusion_sensitivity, pixel_explanations
from pumamed.net import PumaMedNet, PumaMedNetConfig


@pytest.fixture(scope="module")
def shortcut(imaging_root):
    """The planted-shortcut experiment at test size: a token in 95% of the pneumonia training
    images, an 8-d PumaMedNet trained 4 epochs on 400 real PneumoniaMNIST images (~40 s)."""
    from pumamed.explain.shortcut import ShortcutConfig, run_shortcut_experiment

    torch.manual_seed(0)
    return run_shortcut_experiment(ShortcutConfig(max_train=400, epochs=4, latent_dim=8, n_boot=0))


@pytest.fixture(scope="module")
def trained(shortcut):
    """(model, clean test images, labels) of the shortcut experiment's model, whose binary head
    is the logistic head fitted on its codes."""
    return shortcut.model, torch.from_numpy(shortcut.test_images["clean"][:96]), shortcut.test_labels[:96]


# ----------------------------------------------------------------------------- planted shortcut
@pytest.mark.slow  # shares one ~40 s training run (module fixture)
def test_the_planted_shortcut_is_learned_found_and_mitigated(shortcut):
    result = shortcut.to_dict()
    auc = result["head_auc"]
    # 1. the classifier relies on the token: near-perfect with it, collapses when it is swapped
    assert auc["aligned"] > auc["clean"] > 0.6
    assert auc["swapped"] < auc["clean"] - 0.3
    # 2. the audit finds the token in the latent space, in a few dimensions the head listens to
    assert result["marker_predictability"] > 0.9
    assert 0 < len(result["flagged_dims"]) < 8
    assert result["head_weight_share_on_flagged"] > 0.3
    ablated = result["head_auc_flagged_ablated"]
    assert ablated["aligned"] - ablated["swapped"] < auc["aligned"] - auc["swapped"]
    # 3. removing the token subspace restores the swapped AUC to about the clean one
    rows = {row["strategy"]: row for row in result["mitigation"]}
    baseline, projected = rows["logistic head (no mitigation)"], rows["orthogonal projection"]
    assert baseline["reliance"] > 0.5
    assert abs(projected["reliance"]) < 0.15
    assert projected["auc_swapped"] > baseline["auc_swapped"] + 0.3
    assert projected["auc_clean"] > auc["clean"] - 0.1
    json.dumps(result)  # serialisable for the CLI and the page


def test_burn_marker_places_the_token_only_where_asked():
    from pumamed.explain.shortcut import burn_marker

    images = np.full((3, 1, 32, 32), 0.5, dtype=np.float32)
    marked = burn_marker(images, [True, False, True], size=6, corner="bottom_right")
    assert np.array_equal(marked[1], images[1])
    assert marked[0, 0, -7:-1, -7:-1].max() == 1.0 and marked[0, 0, -5:-3, -5:-3].max() == 0.0
    assert np.array_equal(marked[0, 0, :20, :20], images[0, 0, :20, :20])
    assert np.array_equal(images, np.full((3, 1, 32, 32), 0.5))  # the input is not modified
    with pytest.raises(InputError):
        burn_marker(images, [True] * 3, size=20)


# ----------------------------------------------------------------------------- explanations
def _image_near(trained, probability: float, label: int | None = None):
    """A test image whose predicted probability is closest to ``probability`` (not saturated:
    a saturated sigmoid has almost no gradient)."""
    model, images, labels = trained
    with torch.no_grad():
        p = model.predict_proba(images)[:, 1].numpy()
    allowed = np.ones_like(p, dtype=bool) if label is None else labels == label
    index = int(np.argmin(np.where(allowed, np.abs(p - probability), np.inf)))
    return images[index], p[index]


def _a_pneumonia_image(trained):
    return _image_near(trained, 0.6, label=1)


@pytest.mark.slow  # shares one ~40 s training run (module fixture)
def test_latent_shift_removes_the_class_evidence(trained):
    model, _, _ = trained
    image, p = _a_pneumonia_image(trained)
    cf = latent_shift(model, image, 1, target_change=0.2, direction="decrease", n_frames=7,
                      class_names=["normal", "pneumonia"])
    assert cf.frames.shape == (7, 32, 32)
    assert np.all(np.diff(cf.lambdas) > 0) and cf.lambdas[-1] == pytest.approx(0.0)  # ordered, ends at 0
    assert cf.start_probability == pytest.approx(cf.probabilities[-1], abs=1e-5)
    assert cf.reached, cf.summary()
    assert cf.start_probability - cf.end_probability >= 0.15
    assert cf.class_name == "pneumonia"
    np.testing.assert_allclose(cf.difference, cf.counterfactual - cf.reconstruction, atol=1e-6)
    assert cf.frames.min() >= 0 and cf.frames.max() <= 1
    gif = counterfactual_gif(cf)
    assert gif[:6] in (b"GIF87a", b"GIF89a")


@pytest.mark.slow  # shares one ~40 s training run (module fixture)
def test_counterfactual_of_a_swapped_image_erases_the_token(shortcut):
    """A normal image with the token looks like pneumonia to the shortcut model; the counterfactual
    that removes the pneumonia evidence must change the token corner most."""
    model = shortcut.model
    swapped = shortcut.test_images["swapped"]
    labels = shortcut.test_labels
    has_token = (swapped[:, 0, 1:7, 1:7] == 1.0).any(axis=(1, 2)) & (labels == 0)
    index = int(np.flatnonzero(has_token)[0])
    cf = latent_shift(model, swapped[index], 1, target_change=0.3, direction="decrease")
    change = np.abs(cf.difference)
    corner = change[0:8, 0:8].mean()  # the token sits at rows/columns 1-6
    rest = (change.sum() - change[0:8, 0:8].sum()) / (change.size - 64)
    assert cf.reached and cf.end_probability < cf.start_probability
    assert corner > 1.3 * rest, (corner, rest)  # measured 1.7x


@pytest.mark.slow  # shares one ~40 s training run (module fixture)
def test_latent_shift_both_directions(trained):
    model, _, _ = trained
    image, p = _image_near(trained, 0.5)
    cf = latent_shift(model, image, 1, target_change=0.1, direction="both", n_frames=9)
    zero = int(np.argmin(np.abs(cf.lambdas)))
    assert cf.lambdas[0] < 0 < cf.lambdas[-1] and cf.lambdas[zero] == pytest.approx(0.0)
    # walking against the gradient lowers p, along it raises p
    assert cf.probabilities[0] < cf.probabilities[zero] < cf.probabilities[-1]
    via_head = latent_shift(model, image, 1, target_change=0.1, direction="increase", through="head")
    assert via_head.lambdas[0] == 0 and via_head.lambdas[-1] > 0


@pytest.mark.slow  # shares one ~40 s training run (module fixture)
def test_latent_shift_rejects_bad_requests(trained):
    model, images, _ = trained
    with pytest.raises(InputError):
        latent_shift(model, images[0], 5)
    with pytest.raises(InputError):
        latent_shift(model, images[0], 1, direction="sideways")
    with pytest.raises(InputError):
        latent_shift(model, images[0], 1, target_change=1.5)
    headless = PumaMedNet(PumaMedNetConfig(image_size=32, latent_dim=8, widths=(8, 16, 32, 64)))
    with pytest.raises(CheckpointError, match="no classifier"):
        latent_shift(headless, images[0], 0)


@pytest.mark.slow  # shares one ~40 s training run (module fixture)
def test_saliency_equals_the_autograd_gradient(trained):
    model, images, _ = trained
    x = images[:1].clone().requires_grad_(True)
    mu, _ = model.encode(x)
    head_probabilities(model, mu)[0, 1].backward()
    expected = x.grad[0, 0].abs().numpy()
    np.testing.assert_allclose(gradient_saliency(model, images[0], 1), expected, rtol=1e-4, atol=1e-7)


@pytest.mark.slow  # shares one ~40 s training run (module fixture)
def test_occlusion_of_a_uniform_image_with_its_own_value_changes_nothing(trained):
    model, _, _ = trained
    flat = torch.full((1, 32, 32), 0.4)
    assert np.abs(occlusion_sensitivity(model, flat, 1, window=8, stride=4)).max() < 1e-4  # float noise only
    # a black patch on the same image does change the prediction somewhere
    assert np.abs(occlusion_sensitivity(model, flat, 1, window=8, stride=4, baseline=0.0)).max() > 0


@pytest.mark.slow  # shares one ~40 s training run (module fixture)
def test_pixel_explanations_bundle(trained):
    model, images, _ = trained
    result = pixel_explanations(model, images[3], 1, with_integrated_gradients=True)
    assert result.saliency.shape == result.occlusion.shape == result.integrated_gradients.shape == (32, 32)
    assert result.window == 4 and result.stride == 2
    assert 0 <= result.probability <= 1
    shown = normalise_map(result.occlusion, signed=True)
    assert shown.min() >= -1 and shown.max() <= 1


def test_latent_attributions_rank_the_dimension_the_head_listens_to():
    torch.manual_seed(1)
    model = PumaMedNet(PumaMedNetConfig(image_size=32, latent_dim=6, widths=(8, 16, 32, 64), num_classes=2,
                                        task="binary"))
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor([[0.1, 0.0, 2.0, 0.0, -0.5, 0.0]]))
        model.classifier.bias.zero_()
    mu = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    result = latent_attributions(model, mu, 1, class_names=["no", "yes"])
    assert result.top(2) == [2, 4]
    row = result.table.set_index("dim")
    assert row.loc[2, "weight_x_sd"] == pytest.approx(2.0 * mu[:, 2].std(), rel=1e-4)
    negative = latent_attributions(model, mu, 0).table.set_index("dim")
    assert negative.loc[2, "weight_x_sd"] == pytest.approx(-row.loc[2, "weight_x_sd"])
    thumbs = traverse_dimensions(model, mu[0], [2, 4], scale=mu.std(axis=0), target_class=1, n_steps=5)
    assert thumbs.images.shape == (2, 5, 32, 32)
    assert thumbs.probabilities.shape == (2, 5)
