"""Batched, on-device denoising augmentation (pumamed.net.augment): exact geometry on known
inputs, the probabilities and ranges of every random part, seeding, and the same statistics on
real images as the reference torchvision v2 pipeline that the DataLoader path uses."""

from __future__ import annotations

import pytest
import torch

from pumamed.net.augment import BatchAugment
from pumamed.net.data import DenoisingDataset, load_arrays

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def brain_images(imaging_root):
    """256 real brain MRI training images at 64 px (uint8), via the data layer."""
    return load_arrays(["brain_tumor_mri"], "train", 64).subset(256, seed=0)


def _ramp(n=4, size=16) -> torch.Tensor:
    """uint8 images whose every pixel differs, so a wrong resampling cannot go unnoticed."""
    values = torch.arange(n * size * size) % 251
    return values.view(n, 1, size, size).to(torch.uint8)


def test_identity_and_flip_maps_resample_exactly():
    images = _ramp()
    x = images.float() / 255
    augment = BatchAugment("cpu")
    eye = torch.eye(3).expand(4, 3, 3).clone()
    augment.homographies = lambda n: eye[:n]
    torch.testing.assert_close(augment.warp(x), x, rtol=0, atol=1e-6)
    flip = eye.clone()
    flip[:, 0, 0] = -1
    augment.homographies = lambda n: flip[:n]
    torch.testing.assert_close(augment.warp(x), torch.flip(x, dims=[-1]), rtol=0, atol=1e-6)


def test_perspective_maps_the_moved_corners_back_to_the_corners():
    augment = BatchAugment("cpu")
    augment.reseed(3)
    torch.manual_seed(0)
    n = 64
    h = augment._perspective(n)
    # draw the same corner offsets again to know where the corners were moved
    augment.reseed(3)
    inward = augment._uniform(8 * n, 0.0, 0.2).view(n, 4, 2)
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    moved = corners - corners.sign() * inward
    points = torch.cat([moved, torch.ones(n, 4, 1)], dim=2) @ h.transpose(1, 2)
    torch.testing.assert_close(points[..., :2] / points[..., 2:], corners.expand(n, 4, 2), rtol=0, atol=1e-4)
    assert 0.0 < inward.min() and inward.max() <= 0.2


def test_switches_and_ranges():
    images = _ramp(8, 32)
    plain = BatchAugment("cpu", geometric=False, corrupt=False)
    source, target = plain(images)
    assert source.dtype == torch.float32 and source.shape == (8, 1, 32, 32)
    torch.testing.assert_close(target, images.float() / 255, rtol=0, atol=0)
    assert source is target
    geometric_only = BatchAugment("cpu", corrupt=False)
    source, target = geometric_only(images)
    assert source is target and not torch.equal(target, images.float() / 255)
    full = BatchAugment("cpu")
    source, target = full(images)
    assert source.min() >= 0 and source.max() <= 1 and target.min() >= 0 and target.max() <= 1
    assert not torch.equal(source, target)


def test_the_same_seed_draws_the_same_batch():
    images = _ramp(16, 32)
    a, b = BatchAugment("cpu"), BatchAugment("cpu")
    a.reseed(7)
    b.reseed(7)
    for _ in range(2):
        (sa, ta), (sb, tb) = a(images), b(images)
        assert torch.equal(sa, sb) and torch.equal(ta, tb)
    b.reseed(8)
    assert not torch.equal(a(images)[0], b(images)[0])


def test_corruption_probabilities_and_sizes():
    """Each corruption hits about as often as v2's RandomApply / p says, with its own size range."""
    n, size = 4000, 32
    augment = BatchAugment("cpu")
    augment.reseed(0)
    erased = augment.erasing_masks((n, 1, size, size), 0.5, (0.01, 0.06))
    area = erased.flatten(1).float().mean(1)
    hit = area > 0
    assert abs(hit.float().mean().item() - 0.5) < 0.04
    assert area[hit].min() >= 0.005 and area[hit].max() <= 0.08  # 1-6 % of the image, after rounding
    for mask in erased[hit][:50]:  # one filled rectangle
        rows, cols = mask[0].any(1), mask[0].any(0)
        assert mask[0].sum() == rows.sum() * cols.sum()

    grey = torch.full((n, 1, size, size), 0.5)
    blurred = augment.blur(grey)
    torch.testing.assert_close(blurred, grey)  # a normalised kernel with reflected borders keeps a flat image
    edge = torch.zeros(n, 1, size, size)
    edge[..., size // 2:] = 1.0
    changed = (augment.blur(edge) - edge).abs().flatten(1).amax(1) > 1e-3
    assert abs(changed.float().mean().item() - 0.3) < 0.04

    no_blur = BatchAugment("cpu", geometric=False)
    no_blur.reseed(1)
    corrupted = no_blur.corruption(grey).flatten(1)
    kept = corrupted != 0  # erased pixels are exactly 0; noise around 0.5 never reaches it
    spread = torch.stack([row[keep].std() for row, keep in zip(corrupted, kept)])
    with_noise = spread > 0.02
    assert abs(with_noise.float().mean().item() - 0.5) < 0.04
    assert abs(spread[with_noise].median().item() - 0.04) < 0.005


def test_matches_the_v2_pipeline_statistics_on_real_images(brain_images):
    """Mean change made by the geometry (target vs original) and by the corruption (source vs
    target), batched vs torchvision v2 image by image: the same within 25 %."""
    torch.manual_seed(0)
    original = brain_images.images.float() / 255
    reference = DenoisingDataset(brain_images)
    pairs = [reference[i] for i in range(len(reference))]
    v2_source = torch.stack([p[0] for p in pairs])
    v2_target = torch.stack([p[1] for p in pairs])
    augment = BatchAugment("cpu")
    augment.reseed(0)
    source, target = augment(brain_images.images)

    def change(a, b):
        return (a - b).abs().mean().item()

    for ours, theirs, what in ((change(target, original), change(v2_target, original), "geometry"),
                               (change(source, target), change(v2_source, v2_target), "corruption")):
        assert 0.75 < ours / theirs < 1.25, f"{what}: batched {ours:.4f} vs v2 {theirs:.4f}"
    # the geometry keeps the image's brightness (zeros come in only at the borders)
    assert abs(target.mean().item() - v2_target.mean().item()) < 0.02


def test_where_train_augments():
    from pumamed.errors import InputError
    from pumamed.net.train import augment_on_device

    assert augment_on_device("auto", "cuda") and augment_on_device("device", "cpu")
    assert not augment_on_device("auto", "cpu") and not augment_on_device("loader", "cuda")
    with pytest.raises(InputError, match="augment_on"):
        augment_on_device("gpu", "cpu")


def test_training_targets_mark_the_fill_both_pipelines(brain_images):
    """With ``mark_fill`` (what training uses) the target pixels the warp brought in from outside
    the image are NaN, and only those: on a uniformly grey image every other target pixel stays
    grey (no black blended in), the source keeps the black fill, and the draws are those of the
    unmarked pipeline (same seeds, same pictures)."""
    grey = torch.full((64, 1, 32, 32), 128, dtype=torch.uint8)
    marked, plain = BatchAugment("cpu", corrupt=False, mark_fill=True), BatchAugment("cpu", corrupt=False)
    marked.reseed(0)
    plain.reseed(0)
    source, target = marked(grey)
    plain_source, plain_target = plain(grey)
    fill = torch.isnan(target)
    assert 0.02 < fill.float().mean() < 0.5  # rotation, shift, scale and perspective bring fill in
    assert torch.allclose(target[~fill], torch.tensor(128 / 255), atol=0.01)
    assert torch.equal(source, plain_source) and torch.equal(target[~fill], plain_target[~fill])
    assert (plain_target[fill] < 128 / 255 - 0.005).all()  # what is marked was black or blended with black
    assert not torch.isnan(BatchAugment("cpu", geometric=False, mark_fill=True)(grey)[1]).any()

    from pumamed.net.data import ArrayData

    torch.manual_seed(0)
    dataset = DenoisingDataset(ArrayData(grey, None), denoise=False, mark_fill=True)
    pairs = [dataset[i] for i in range(len(dataset))]
    v2_source, v2_target = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    v2_fill = torch.isnan(v2_target)
    assert 0.02 < v2_fill.float().mean() < 0.5
    assert torch.allclose(v2_target[~v2_fill], torch.tensor(128 / 255), atol=0.01)
    assert not torch.isnan(v2_source).any() and (v2_source[v2_fill] < 128 / 255 - 0.005).all()
    # on real images the marked share is the same in both pipelines (the same families of warps)
    torch.manual_seed(0)
    real = DenoisingDataset(brain_images, mark_fill=True)
    v2_share = torch.stack([torch.isnan(real[i][1]) for i in range(64)]).float().mean()
    marked.reseed(1)
    share = torch.isnan(marked(brain_images.images[:64])[1]).float().mean()
    assert 0.5 < share / v2_share < 2.0
