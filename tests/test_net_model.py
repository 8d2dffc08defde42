"""PumaMedNet architecture: shapes, ranges, probabilities, weight maps, cost against ResNet-18."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_PUMAMEDNET
from pumamed.errors import CheckpointError
from pumamed.net import ClassificationPath, PumaMedNet, PumaMedNetConfig, count_parameters

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = TINY_PUMAMEDNET


def tiny(**kw) -> PumaMedNet:
    torch.manual_seed(0)
    return PumaMedNet(PumaMedNetConfig(**{**TINY, **kw}))


@pytest.mark.parametrize("size,widths", [(32, (8, 16, 32)), (64, (16, 32, 64, 128))])
def test_shapes_and_ranges(size, widths):
    model = tiny(image_size=size, widths=widths, num_classes=4, class_names=list("abcd")).eval()
    x = torch.rand(3, 1, size, size)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, 8)
    with torch.no_grad():
        x_hat = model.decode(torch.randn(3, 8))
    assert x_hat.shape == (3, 1, size, size)
    assert float(x_hat.min()) >= 0.0 and float(x_hat.max()) <= 1.0
    out = model(x)
    assert out.recon.shape == x.shape and out.z.shape == (3, 8)
    assert torch.equal(out.z, out.mu)  # eval mode: z = mu
    model.train()
    assert not torch.equal(model(x).z, model(x).mu)  # training mode samples z


def test_attention_is_used_at_low_resolution():
    from pumamed.net.model import SelfAttention2d

    model = tiny()
    assert any(isinstance(m, SelfAttention2d) for m in model.encoder.modules())
    assert any(isinstance(m, SelfAttention2d) for m in model.decoder.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("task,k,width", [("binary", 2, 2), ("multiclass", 4, 4), ("multilabel", 5, 5)])
def test_predict_proba_shapes(task, k, width):
    model = tiny(num_classes=k, task=task, class_names=[str(i) for i in range(k)]).eval()
    probs = model.predict_proba(torch.rand(6, 1, 32, 32))
    assert probs.shape == (6, width)
    assert float(probs.min()) >= 0 and float(probs.max()) <= 1
    if task != "multilabel":
        torch.testing.assert_close(probs.sum(1), torch.ones(6))
    if task == "binary":
        assert model.classifier.out_features == 1  # one logit, two probability columns


def test_model_without_classifier_refuses_to_classify():
    model = tiny()
    assert model.classifier is None
    with pytest.raises(CheckpointError):
        model.predict_proba(torch.rand(1, 1, 32, 32))


@pytest.mark.parametrize("kind", ["learned", "error", "none"])
def test_reconstruction_weights_mean_one(kind):
    model = tiny(weight_map=kind).eval()
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        w = model.reconstruction_weights(x)
    assert w.shape == (4, 1, 32, 32)
    assert float(w.min()) >= 0
    torch.testing.assert_close(w.mean(dim=(1, 2, 3)), torch.ones(4), atol=1e-4, rtol=0)
    if kind == "none":
        assert torch.equal(w, torch.ones_like(w))
    else:
        assert float(w.std()) > 0  # actually prioritises some pixels


def test_config_round_trip_and_validation():
    cfg = PumaMedNetConfig(**TINY, num_classes=3, class_names=["a", "b", "c"], aux_heads={"mix": 7})
    again = PumaMedNetConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(CheckpointError):
        PumaMedNetConfig.from_dict({**cfg.to_dict(), "unknown_key": 1})
    with pytest.raises(ValueError):
        PumaMedNetConfig(image_size=30, widths=(8, 16, 32))
    with pytest.raises(ValueError):
        PumaMedNetConfig(weight_map="magic")
    # a config.json from elsewhere cannot request a gigantic network
    for huge in ({"image_size": 65536, "widths": (16,)}, {"latent_dim": 10**7}, {"widths": (16, 10**6)}):
        with pytest.raises(CheckpointError):
            PumaMedNetConfig.from_dict({**cfg.to_dict(), **huge})


def test_classification_path_is_a_fifth_of_resnet18():
    """The issue's budget: the classification path costs at most 1/5 of ResNet-18's parameters and
    FLOPs at the same image size (64 px, default widths, 4 classes)."""
    from pumamed.net.baseline import ResNet18Classifier, ResNetConfig
    from pumamed.net.metrics import count_flops

    ours = ClassificationPath(PumaMedNet(PumaMedNetConfig(image_size=64, num_classes=4, class_names=list("abcd"))))
    resnet = ResNet18Classifier(ResNetConfig(image_size=64, num_classes=4, class_names=list("abcd")))
    x = torch.rand(1, 1, 64, 64)
    assert count_parameters(ours) * 5 <= count_parameters(resnet)
    assert count_flops(ours, x) * 5 <= count_flops(resnet, x)


def test_flop_counts_include_self_attention():
    """The 8x8 attention block's two matrix products (scores and weighted values: 2 x 64 tokens^2
    x 64 channels multiply-adds) are counted, whichever attention kernel runs."""
    from pumamed.net.metrics import count_flops

    def encoder_flops(resolution):
        model = PumaMedNet(PumaMedNetConfig(image_size=64, attention_resolution=resolution))
        return count_flops(model.encode, torch.rand(1, 1, 64, 64))

    products = 2 * 2 * 64 * 64 * 64  # FLOPs = 2 x multiply-adds
    projections = 2 * (64 * 192 + 64 * 64) * 64
    assert encoder_flops(8) - encoder_flops(0) >= products + projections


def test_configs_saved_before_the_lean_decoder_keep_their_architecture():
    """A config.json without the ``decoder`` / ``weight_net_downsample`` keys (first release)
    rebuilds the same modules, so its safetensors weights load strictly; new configs default to
    the lean decoder and save the keys."""
    old_style = {k: v for k, v in PumaMedNetConfig(**TINY).to_dict().items()
                 if k not in ("decoder", "weight_net_downsample")}
    legacy = PumaMedNetConfig.from_dict(old_style)
    assert (legacy.decoder, legacy.weight_net_downsample) == ("upsample", 2)
    assert (PumaMedNetConfig().decoder, PumaMedNetConfig().weight_net_downsample) == ("transposed", 4)
    model = PumaMedNet(legacy)
    assert any(isinstance(m, torch.nn.Upsample) for m in model.decoder.modules())
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.decoder.modules())
    again = PumaMedNet(PumaMedNetConfig.from_dict(legacy.to_dict()))
    again.load_state_dict(model.state_dict(), strict=True)
    with pytest.raises(CheckpointError):
        PumaMedNetConfig.from_dict({**old_style, "decoder": "pixelshuffle"})


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_weight_net_resolution_keeps_parameters_and_output_size(factor):
    model = tiny(image_size=64, widths=(8, 16, 32, 64), weight_net_downsample=factor)
    reference = tiny(image_size=64, widths=(8, 16, 32, 64), weight_net_downsample=2)
    assert [p.shape for p in model.weight_net.parameters()] == [p.shape for p in reference.weight_net.parameters()]
    assert model.weight_logits(torch.rand(2, 1, 64, 64)).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError):
        PumaMedNetConfig(**{**TINY, "weight_net_downsample": 3})


def test_lean_decoder_costs_a_fraction_of_the_first_release():
    """The training-throughput work (issue 11): at 64 px with the default widths the transposed
    decoder plus the quarter-resolution weight net cost under 30 % of the first release's."""
    from pumamed.net.metrics import count_flops

    def generative_flops(**kw):
        model = PumaMedNet(PumaMedNetConfig(image_size=64, **kw))
        return (count_flops(model.decode, torch.zeros(1, 32))
                + count_flops(model.weight_logits, torch.zeros(1, 1, 64, 64)))

    lean = generative_flops()
    first = generative_flops(decoder="upsample", weight_net_downsample=2)
    assert lean < 0.3 * first, (lean, first)


@pytest.mark.parametrize("c_in,c_out,batch,size", [(16, 1, 5, 8), (8, 3, 1, 5), (4, 2, 2, 6)])
def test_cpu_subpixel_upsample_matches_the_transposed_convolution(c_in, c_out, batch, size):
    """The decoder's last layer runs on the CPU as a sub-pixel 3x3 convolution on channels_last
    input; outputs and gradients must be those of the 4x4 stride-2 transposed convolution whose
    parameters (and checkpoints) it shares."""
    from torch.nn import functional as F

    from pumamed.net.model import UpsampleToImage

    torch.manual_seed(0)
    layer = UpsampleToImage(c_in, c_out)
    x = torch.randn(batch, c_in, size, size, requires_grad=True)
    fast = layer(x)
    reference = F.conv_transpose2d(x, layer.weight, layer.bias, stride=2, padding=1)
    assert fast.shape == reference.shape == (batch, c_out, 2 * size, 2 * size)
    assert fast.is_contiguous()
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(reference)
    grads_fast = torch.autograd.grad(fast, (x, layer.weight, layer.bias), upstream)
    grads_reference = torch.autograd.grad(reference, (x, layer.weight, layer.bias), upstream)
    for got, want in zip(grads_fast, grads_reference):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_output_gradient_floor_keeps_saturated_pixels_trainable():
    """The decoder's output is a sigmoid. A pixel pushed deep into its tail gets almost no gradient
    back (the black-corner notch of the 128-px breast models, logits near -28); with a floor on the
    backward slope it still does. The forward value never changes, and decoding in eval mode (the
    explorer, gradient walks) uses the plain sigmoid."""
    from pumamed.net.model import to_pixels

    logits = torch.tensor([-30.0, -4.0, 0.0, 3.0, 30.0], requires_grad=True)
    plain = torch.sigmoid(logits)
    floored = to_pixels(logits, 0.01)
    assert torch.equal(floored, plain)
    (slope,) = torch.autograd.grad(floored.sum(), logits)
    expected = plain.detach() * (1 - plain.detach())
    assert torch.allclose(slope[1:4], expected[1:4])  # above the floor: exactly the sigmoid's
    assert torch.allclose(slope[[0, 4]], torch.full((2,), 0.01))  # in the tails: the floor
    (no_floor,) = torch.autograd.grad(to_pixels(logits, 0.0).sum(), logits)
    assert torch.allclose(no_floor, expected) and no_floor[0] < 1e-12

    for detail in (0, 2):
        model = tiny(detail_channels=detail, detail_resolution=8) if detail else tiny()
        with torch.no_grad():
            model.decoder.to_image.bias.fill_(-30.0)  # every pixel saturated black
        model.decoder.output_gradient_floor = 0.01

        def bias_gradient(training: bool) -> float:
            model.train(training)
            model.zero_grad()
            z = torch.zeros(2, TINY["latent_dim"])
            loss = (model.decode(z) - 0.5).pow(2).mean()  # a grey target: the pixels must come back
            loss.backward()
            return float(model.decoder.to_image.bias.grad.abs().sum())

        assert bias_gradient(True) > 1e-3  # training: the loss reaches the saturated pixels
        assert bias_gradient(False) < 1e-9  # eval mode: the plain sigmoid, unchanged
