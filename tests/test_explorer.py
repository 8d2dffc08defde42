"""Library code behind the image explorer: traversals, masked reconstruction and inpainting
baselines, exports, the latent map and the cached inference session (tiny models, no data)."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pumamed.errors import CheckpointError, InputError
from pumamed.explain.export import grid_image, grid_png, image_png, to_uint8, traversal_gif
from pumamed.explain.latent_map import LatentProjector, colour_values
from pumamed.explain.masking import (Box, apply_mask, border_mean_inpaint, harmonic_inpaint, masked_metrics,
                                     masked_reconstruction, random_erasing_mask, rectangle_mask)
from pumamed.explain.session import ExplorerSession, load_session
from pumamed.explain.traversal import (active_dimensions, kl_per_dimension, rank_dimensions, traversal_latents,
                                       traversal_offsets, traverse)


# ------------------------------------------------------------------------------ a known linear model
class LinearVAE(torch.nn.Module):
    """decode(z) = 0.5 + B z (reshaped), encode(x) = A x: every output is known in closed form."""

    def __init__(self, size: int = 8, latent: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.config = SimpleNamespace(image_size=size, latent_dim=latent)
        basis = torch.zeros(size * size, latent)
        basis[:, 0] = 0.05  # dimension 0 brightens every pixel
        basis[: size * size // 2, 1] = 0.05  # dimension 1 brightens the top half only
        # dimension 2 (and beyond) does nothing: an inactive unit
        self.B = torch.nn.Parameter(basis, requires_grad=False)
        self.A = torch.nn.Parameter(torch.randn(latent, size * size, generator=g) * 0.01, requires_grad=False)

    def encode(self, x):
        mu = x.flatten(1) @ self.A.T
        return mu, torch.zeros_like(mu)

    def decode(self, z):
        s = self.config.image_size
        return (0.5 + z @ self.B.T).reshape(-1, 1, s, s)


def test_rank_and_active_dimensions():
    kl = [0.001, 2.0, 0.5, 0.0, 0.5]
    assert rank_dimensions(kl).tolist() == [1, 2, 4, 0, 3]  # ties keep the natural order
    assert active_dimensions(kl).tolist() == [1, 2, 4]
    assert rank_dimensions(np.zeros(4)).tolist() == [0, 1, 2, 3]
    with pytest.raises(InputError):
        rank_dimensions([])


def test_kl_per_dimension_matches_closed_form():
    mu = np.array([[0.0, 2.0], [0.0, -2.0]])
    logvar = np.array([[0.0, np.log(0.25)], [0.0, np.log(0.25)]])
    kl = kl_per_dimension(mu, logvar)
    expected_dim1 = 0.5 * (4 + 0.25 - 1 - np.log(0.25))
    assert kl[0] == pytest.approx(0.0)
    assert kl[1] == pytest.approx(expected_dim1)


def test_traversal_latents_change_only_the_traversed_dimension():
    z = np.array([0.1, -0.2, 0.3], np.float32)
    offsets = traversal_offsets(5, 2.0)
    assert offsets.tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]
    codes = traversal_latents(z, [2, 0], offsets, scale=np.array([1.0, 1.0, 0.5]))
    assert codes.shape == (10, 3)
    grid = codes.reshape(2, 5, 3)
    np.testing.assert_allclose(grid[0, :, 2], 0.3 + 0.5 * offsets, rtol=1e-6)
    np.testing.assert_allclose(grid[0, :, :2], np.tile(z[:2], (5, 1)))
    np.testing.assert_allclose(grid[1, :, 0], 0.1 + offsets, rtol=1e-6)
    with pytest.raises(InputError):
        traversal_latents(z, [3], offsets)
    with pytest.raises(InputError):
        traversal_offsets(1)


def test_traverse_linear_decoder_known_case():
    model = LinearVAE()
    session = ExplorerSession(model, device="cpu")
    calls = []
    decode = session.decode

    def counting_decode(codes):
        calls.append(len(codes))
        return decode(codes)

    z = np.zeros(3, np.float32)
    grid = traverse(counting_decode, z, [0, 1, 2], n_steps=7, span=3.0)
    assert calls == [21]  # the whole 3 x 7 grid in one decoder call
    assert grid.images.shape == (3, 7, 8, 8)
    offsets = np.linspace(-3, 3, 7)
    # dimension 0: every pixel is 0.5 + 0.05 t, strictly increasing along the row
    np.testing.assert_allclose(grid.images[0, :, 3, 3], 0.5 + 0.05 * offsets, atol=1e-6)
    assert np.all(np.diff(grid.images[0].mean(axis=(1, 2))) > 0)
    # dimension 1: top half moves, bottom half stays
    np.testing.assert_allclose(grid.images[1, :, 0, 0], 0.5 + 0.05 * offsets, atol=1e-6)
    np.testing.assert_allclose(grid.images[1, :, 7, 7], 0.5, atol=1e-6)
    # dimension 2 is inactive: the same image at every step
    assert np.ptp(grid.images[2], axis=0).max() < 1e-6
    assert grid.row(1).shape == (7, 8, 8)
    assert grid.column_labels() == ["-3 sd", "-2 sd", "-1 sd", "0 sd", "+1 sd", "+2 sd", "+3 sd"]
    assert grid.row_labels([0.5, 0.2, 0.0])[0] == "z0 (KL 0.50)"


def test_session_batches_match_single_decodes_and_cache():
    torch.manual_seed(0)
    from pumamed.net import PumaMedNet, PumaMedNetConfig

    model = PumaMedNet(PumaMedNetConfig(image_size=32, latent_dim=8, widths=(8, 16, 16, 16), num_classes=3))
    session = ExplorerSession(model, device="cpu", batch_size=4)
    codes = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    batched = session.decode(codes)
    assert batched.shape == (10, 32, 32)
    single = np.stack([session.decode(c)[0] for c in codes])  # served from the cache now
    np.testing.assert_allclose(batched, single, atol=1e-6)
    with torch.inference_mode():
        direct = model.decode(torch.from_numpy(codes[:3]))[:, 0].numpy()
    np.testing.assert_allclose(batched[:3], direct, atol=1e-5)
    batched[0, 0, 0] = 5.0  # callers may edit what they get; the cache must not change
    assert session.decode(codes[:1])[0, 0, 0] != 5.0

    image = np.random.default_rng(1).uniform(size=(32, 32)).astype(np.float32)
    analysis = session.analyse(image)
    assert analysis.reconstruction.shape == (32, 32)
    assert analysis.weights.mean() == pytest.approx(1.0, abs=1e-3)  # the loss weights have mean 1
    assert analysis.probabilities.shape == (3,) and analysis.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(analysis.error, np.abs(analysis.reconstruction - image), atol=1e-6)
    np.testing.assert_allclose(session.reconstruct_batch(image[None])[0], analysis.reconstruction, atol=1e-5)

    grid = session.traverse(analysis.mu, [1, 4], n_steps=5, span=2.0)
    # the centre column (offset 0) is the reconstruction itself
    np.testing.assert_allclose(grid.images[0, 2], analysis.reconstruction, atol=1e-5)

    with pytest.raises(InputError, match="32x32"):
        session.analyse(np.zeros((64, 64), np.float32))
    with pytest.raises(InputError):
        session.decode(np.zeros((2, 7), np.float32))

    class Folder:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.full((1, 32, 32), i / 10), i

    mu, logvar = session.encode_dataset(Folder(), [0, 2, 4])
    assert mu.shape == logvar.shape == (3, 8)
    np.testing.assert_allclose(mu[1], session.encode(np.full((1, 32, 32), 0.2, np.float32))[0][0], atol=1e-5)
    kl, order, source = session.dimension_ranking((mu, logvar))
    assert kl.shape == (8,) and sorted(order.tolist()) == list(range(8)) and "encodings" in source


def test_session_refuses_a_model_without_decoder():
    class ClassifierOnly(torch.nn.Module):
        config = SimpleNamespace(image_size=32, latent_dim=0)

        def forward(self, x):
            return x

    with pytest.raises(CheckpointError, match="generative model"):
        ExplorerSession(ClassifierOnly(), device="cpu")


def test_load_session_reports_bad_checkpoints(tmp_path):
    from pumamed.net import PumaMedNet, PumaMedNetConfig, save_checkpoint

    good = save_checkpoint(tmp_path / "good", PumaMedNet(PumaMedNetConfig(image_size=32, latent_dim=8,
                                                                          widths=(8, 16, 16, 16))))
    session = load_session(good, device="cpu")
    assert session.image_size == 32 and session.latent_dim == 8 and session.name == "good"

    # a checkpoint whose config promises another latent size than its weights hold
    config = json.loads((good / "config.json").read_text())
    config["model"]["latent_dim"] = 16
    (good / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError):
        load_session(good, device="cpu")
    with pytest.raises(CheckpointError):
        load_session(tmp_path / "nowhere", device="cpu")


# ------------------------------------------------------------------------------ masks and inpainting
def test_rectangle_and_random_masks():
    mask = rectangle_mask(10, [Box(0.2, 0.3, 0.5, 0.2)])
    assert mask.sum() == 5 * 2
    assert mask[3:5, 2:7].all()
    tiny = rectangle_mask(10, [(0.5, 0.5, 0.0, 0.0)])
    assert tiny.sum() == 1  # at least one pixel
    a = random_erasing_mask(64, 3, seed=7)
    b = random_erasing_mask(64, 3, seed=7)
    c = random_erasing_mask(64, 3, seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0 < a.mean() <= 3 * 0.08 + 0.01
    with pytest.raises(InputError):
        random_erasing_mask(64, 0)


def test_apply_mask_fills():
    image = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    assert apply_mask(image, mask, "zero")[mask].tolist() == [0, 0, 0, 0]
    np.testing.assert_allclose(apply_mask(image, mask, "mean")[mask], image[~mask].mean())
    noisy = apply_mask(image, mask, "noise", seed=1)
    assert np.array_equal(noisy[~mask], image[~mask]) and not np.allclose(noisy[mask], image[mask])
    with pytest.raises(InputError):
        apply_mask(image, mask, "paint")


def test_harmonic_inpainting_is_exact_on_linear_and_constant_images():
    rows, cols = np.mgrid[0:32, 0:32]
    ramp = (0.1 + 0.01 * rows + 0.015 * cols).astype(np.float32)
    mask = rectangle_mask(32, [Box(0.25, 0.3, 0.4, 0.35), Box(0.7, 0.1, 0.1, 0.1)])
    filled = harmonic_inpaint(ramp * ~mask, mask)  # hidden pixels are zero: they must not matter
    np.testing.assert_allclose(filled, ramp, atol=1e-5)
    constant = np.full((16, 16), 0.42, np.float32)
    corner = rectangle_mask(16, [Box(0.0, 0.0, 0.5, 0.5)])  # touching the border: zero-flux edge
    np.testing.assert_allclose(harmonic_inpaint(constant, corner), constant, atol=1e-6)
    np.testing.assert_allclose(border_mean_inpaint(constant, corner), constant, atol=1e-6)
    # the harmonic fill is smooth where the mean fill is flat: it beats it on a ramp
    assert masked_metrics(filled, ramp, mask)["mae"] < masked_metrics(border_mean_inpaint(ramp, mask), ramp, mask)["mae"]
    with pytest.raises(InputError):
        harmonic_inpaint(constant, np.ones((16, 16), bool))


def test_masked_metrics_only_count_hidden_pixels():
    target = np.zeros((8, 8), np.float32)
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    target[2:4, 2:4] = [[0.1, 0.2], [0.3, 0.4]]
    prediction = target.copy()
    prediction[mask] += 0.1
    m1 = masked_metrics(prediction, target, mask)
    prediction[~mask] = 0.9  # errors outside the mask do not count
    m2 = masked_metrics(prediction, target, mask)
    assert m1 == m2
    assert m1["pixels"] == 4
    assert m1["mae"] == pytest.approx(0.1, abs=1e-6)
    assert m1["rmse"] == pytest.approx(0.1, abs=1e-6)
    assert m1["psnr_db"] == pytest.approx(20.0, abs=1e-3)
    assert m1["correlation"] == pytest.approx(1.0)
    assert np.isnan(masked_metrics(prediction, target, np.zeros((8, 8), bool))["mae"])


def test_masked_reconstruction_with_an_identity_model():
    """A 'model' that returns its input fills the hole with the fill value: errors are known."""
    rows, cols = np.mgrid[0:16, 0:16]
    image = (0.2 + 0.02 * rows + 0.01 * cols).astype(np.float32)
    mask = rectangle_mask(16, [Box(0.25, 0.25, 0.5, 0.25)])
    calls = []

    def identity(batch):
        calls.append(batch.shape)
        return batch

    result = masked_reconstruction(identity, image, mask, fill="zero")
    assert calls == [(2, 16, 16)]  # masked and unmasked image in one batch
    np.testing.assert_array_equal(result.fill_in[~mask], image[~mask])
    np.testing.assert_allclose(result.fill_in[mask], 0.0)
    assert result.metrics["decoder fill-in"]["mae"] == pytest.approx(float(image[mask].mean()), abs=1e-6)
    assert result.metrics["harmonic baseline"]["mae"] < 1e-5  # linear image: exact
    assert result.metrics["decoder, nothing hidden (floor)"]["mae"] == pytest.approx(0.0)
    assert result.error_in_mask[~mask].max() == 0
    np.testing.assert_allclose(result.difference[mask], -image[mask], atol=1e-6)
    rows_ = result.metrics_rows()
    assert {r["method"] for r in rows_} >= {"decoder fill-in", "harmonic baseline", "border mean baseline"}
    with pytest.raises(InputError):
        masked_reconstruction(identity, image, np.zeros_like(mask))


# ------------------------------------------------------------------------------ exports
def test_grid_png_decodes_back_pixel_exact():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(2, 3, 8, 8)).astype(np.float32)
    data = grid_png(images, ["z0", "z5"], ["-1", "0", "+1"], scale=2)
    picture = Image.open(io.BytesIO(data))
    assert picture.format == "PNG" and picture.mode == "L"
    unlabeled = np.asarray(grid_image(images, scale=2, pad=4))
    # tile (1, 2) starts at pad + j * (16 + pad), pad + i * (16 + pad); nearest upscaling repeats pixels
    tile = unlabeled[4 + 1 * 20: 4 + 1 * 20 + 16, 4 + 2 * 20: 4 + 2 * 20 + 16]
    np.testing.assert_array_equal(tile[::2, ::2], to_uint8(images[1, 2]))
    assert picture.size[0] > unlabeled.shape[1]  # room for the row labels
    single = Image.open(io.BytesIO(image_png(images[0, 0], scale=3)))
    assert single.size == (24, 24)


def test_traversal_gif_decodes_back():
    frames = np.stack([np.full((8, 8), v, np.float32) for v in np.linspace(0, 1, 5)])
    data = traversal_gif(frames, duration_ms=80, scale=2, bounce=True)
    gif = Image.open(io.BytesIO(data))
    assert gif.format == "GIF" and gif.size == (16, 16)
    assert gif.n_frames == 8  # 5 forward + 3 back
    assert gif.info.get("loop") == 0
    levels = []
    for k in range(gif.n_frames):
        gif.seek(k)
        levels.append(int(np.asarray(gif.convert("L"))[4, 4]))
    assert levels[:5] == sorted(levels[:5]) and levels[0] < levels[4]
    assert levels[5:] == levels[3:0:-1]
    labelled = Image.open(io.BytesIO(traversal_gif(frames, label="z3", frame_labels=[str(i) for i in range(5)])))
    assert labelled.size[1] > 16
    with pytest.raises(InputError):
        traversal_gif(frames[:1])


# ------------------------------------------------------------------------------ latent map
def test_latent_projector_pca_finds_the_varying_dimension():
    rng = np.random.default_rng(0)
    codes = rng.normal(scale=0.05, size=(200, 6))
    codes[:, 3] += np.linspace(-3, 3, 200)
    codes[:, 1] += rng.normal(scale=0.8, size=200)
    projector = LatentProjector(method="pca").fit(codes)
    assert projector.embedding_.shape == (200, 2)
    assert projector.explained_variance_ratio_[0] > 0.7
    assert projector.dominant_dimensions(top=1) == [[3], [1]]
    np.testing.assert_allclose(projector.transform(codes[:5]), projector.embedding_[:5], atol=1e-9)
    assert projector.axis_labels()[0].startswith("PC1 (")
    assert LatentProjector().fit_transform(codes).shape == (200, 2)
    with pytest.raises(InputError):
        LatentProjector().fit(codes[:2])
    with pytest.raises(InputError):
        LatentProjector(method="umap").fit(codes)
    with pytest.raises(InputError):
        projector.transform(codes[:, :3])


def test_latent_projector_tsne_small():
    rng = np.random.default_rng(0)
    codes = np.concatenate([rng.normal(0, 0.1, (20, 4)), rng.normal(3, 0.1, (20, 4))])
    embedding = LatentProjector(method="tsne", random_state=0).fit_transform(codes)
    assert embedding.shape == (40, 2)
    # the two clusters stay apart
    a, b = embedding[:20].mean(0), embedding[20:].mean(0)
    spread = max(embedding[:20].std(0).max(), embedding[20:].std(0).max())
    assert np.linalg.norm(a - b) > 3 * spread


def test_colour_values():
    import pandas as pd

    meta = pd.DataFrame({"age": np.arange(30, 60), "sex": ["F", "M", None] * 10})
    values, numeric = colour_values(meta, "age")
    assert numeric and values.dtype == float
    values, numeric = colour_values(meta, "sex")
    assert not numeric and "unknown" in set(values)
    with pytest.raises(InputError):
        colour_values(meta, "height")
