"""PumaMedNet: a compact convolutional beta-VAE for 1xSxS medical images.

Layout (S = 64, widths (16, 32, 64, 128)):

    encoder  x 1x64x64 -> stem conv s2 -> 16x32x32
             -> [down conv s2 + GroupNorm/SiLU + residual block] x3 -> 128x4x4
                (self-attention block wherever the feature map is attention_resolution wide)
             -> flatten -> linear -> mu, logvar (latent_dim each)
    decoder  z -> linear -> 128x4x4 -> residual block -> [(attention) + transposed conv s2] x4
             -> 1x64x64 -> sigmoid
    weights  a small convolutional net on x (at a quarter of its resolution) predicting where the
             reconstruction is hard (learned), used as a per-pixel weight map in the reconstruction loss
    classifier  a linear head (or a small MLP) on mu

The decoder spends its compute where it is cheap: one residual block at the bottleneck, then a
4x4 stride-2 transposed convolution per stage (its 16 taps mix neighbours, so no 3x3 convolution
at full resolution is needed). The earlier decoder (``decoder="upsample"``: a residual block and a
nearest-upsample + 3x3 conv per stage) costs 3.5x the decoder FLOPs. Four epochs on brain MRI at
64 px reach the same validation MSE (0.0132) with either, in 88 s against 168 s on two CPU
cores; after 30 epochs of fine-tuning the lean decoder's error is about 16 % higher (0.0078 vs
0.0067) with the same classification AUC. It is kept so checkpoints saved with it still load
(config files without a ``decoder`` key).

The encoder downsamples early and stays narrow, like ResNet's stem, so the classification path
(encoder to mu + classifier) costs a fraction of a ResNet-18 at the same image size.
GroupNorm instead of BatchNorm: the statistics do not depend on the batch, so tiny batches,
DDP shards and single-image inference in the app behave the same.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from pumamed.errors import CheckpointError

TASKS = ("binary", "multiclass", "multilabel")
WEIGHT_MAP_KINDS = ("learned", "error", "none")
DECODERS = ("transposed", "upsample")
# What a config.json written before a field existed meant by it (first release: no such keys).
LEGACY_DEFAULTS = {"decoder": "upsample", "weight_net_downsample": 2}
DETAIL_MODES = ("image", "mean", "resampled")  # what the detail code is when the global code is edited
DETAIL_PRIORS = ("standard", "conditional")  # N(0, I), or N(m(z), s(z)^2) predicted from the global code


@dataclass
class PumaMedNetConfig:
    """Architecture of a PumaMedNet (saved as the ``model`` entry of ``config.json``)."""

    image_size: int = 64
    in_channels: int = 1
    latent_dim: int = 32
    widths: tuple[int, ...] = (16, 32, 64, 128)
    attention_resolution: int = 8  # self-attention where the feature map is this wide (0: none)
    attention_heads: int = 4
    groups: int = 8  # GroupNorm groups (capped by the channel count)
    weight_map: str = "learned"  # learned | error | none: per-pixel weights of the reconstruction loss
    decoder: str = "transposed"  # transposed (lean, default) | upsample (the first release's decoder)
    weight_net_downsample: int = 4  # the learned weight map is predicted at 1/4 (first release: 1/2) resolution
    weight_strength: float = 1.0  # 0: uniform weights; 1: weights range over [0, 2] around mean 1
    num_classes: int = 0  # 0: no classifier head
    task: str = "multiclass"  # binary | multiclass | multilabel
    classifier_hidden: int = 0  # 0: linear head on mu; >0: one hidden layer MLP
    class_names: list[str] = field(default_factory=list)
    aux_heads: dict[str, int] = field(default_factory=dict)  # name -> outputs, for weak supervision
    # Hierarchical latent (0: none, the single global code of the first releases): a spatial
    # detail code of detail_channels maps, detail_resolution px wide, with its own KL. The global
    # code (mu) still explains and classifies; the detail code carries the texture the global
    # code cannot. During training it is replaced by its prior mean (zeros) for a detail_dropout
    # share of the images, so the decoder must draw the anatomy and the lesion from the global
    # code alone as well, and an edit of the global code still changes the picture.
    detail_channels: int = 0
    detail_resolution: int = 16
    detail_dropout: float = 0.5
    # "standard": the detail code's prior is N(0, I), so an edit of the global code cannot move
    # it. "conditional" (NVAE / VDVAE style): the decoder predicts the prior N(m(z), s(z)^2) from
    # the global code's features at the detail code's width; the explanations then hold only the
    # image's *residual* detail (code - m(z)), and the part of the detail the global code
    # predicts (a lesion's texture, say) moves with the global code.
    detail_prior: str = "standard"

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        if self.image_size % (2 ** len(self.widths)) != 0:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2**len(widths) = {2 ** len(self.widths)}")
        if self.weight_map not in WEIGHT_MAP_KINDS:
            raise ValueError(f"weight_map must be one of {WEIGHT_MAP_KINDS}, got {self.weight_map!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.latent_dim < 1:
            raise ValueError("latent_dim must be positive")
        # Caps far above any sensible model, so a config.json from elsewhere cannot make the app
        # allocate a gigantic network before its weights are even checked.
        if not 8 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be 8-1024 px, got {self.image_size}")
        if self.latent_dim > 4096 or not 1 <= len(self.widths) <= 8 or not all(1 <= w <= 2048 for w in self.widths):
            raise ValueError(f"latent_dim <= 4096 and 1-8 widths of 1-2048 channels expected, got latent_dim "
                             f"{self.latent_dim}, widths {list(self.widths)}")
        if not 1 <= self.in_channels <= 16 or self.num_classes > 100_000:
            raise ValueError(f"in_channels must be 1-16 and num_classes at most 100,000, got {self.in_channels}, "
                             f"{self.num_classes}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.detail_channels:
            feature_sizes = [self.image_size // 2 ** k for k in range(2, len(self.widths) + 1)]
            if not 1 <= self.detail_channels <= 64 or self.detail_resolution not in feature_sizes:
                raise ValueError(f"detail_channels must be 1-64 and detail_resolution one of the encoder's feature-map "
                                 f"sizes {feature_sizes} below the stem, got {self.detail_channels} x "
                                 f"{self.detail_resolution}")
            if self.decoder != "transposed":
                raise ValueError("a detail code needs the transposed decoder")
            if not 0.0 <= self.detail_dropout < 1.0:
                raise ValueError(f"detail_dropout must be in [0, 1), got {self.detail_dropout}")
        if self.detail_prior not in DETAIL_PRIORS:
            raise ValueError(f"detail_prior must be one of {DETAIL_PRIORS}, got {self.detail_prior!r}")
        if self.weight_net_downsample not in (1, 2, 4, 8) or self.weight_net_downsample > self.image_size // 4:
            raise ValueError(f"weight_net_downsample must be 1, 2, 4 or 8 (at most image_size / 4), "
                             f"got {self.weight_net_downsample!r}")

    @property
    def bottleneck_size(self) -> int:
        return self.image_size // (2 ** len(self.widths))

    @property
    def classifier_outputs(self) -> int:
        """Logits of the head: one for a binary task, else one per class."""
        if self.num_classes <= 0:
            return 0
        return 1 if self.task == "binary" else self.num_classes

    def to_dict(self) -> dict:
        out = asdict(self)
        out["widths"] = list(self.widths)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "PumaMedNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CheckpointError(f"unknown PumaMedNet config keys {unknown}; was it saved by a newer version?")
        values = {**LEGACY_DEFAULTS, **values}
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid PumaMedNet config: {exc}") from exc


class VAEOutput(NamedTuple):
    recon: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor
    detail_mu: torch.Tensor | None = None  # B x C_d x R x R (hierarchical models only)
    detail_logvar: torch.Tensor | None = None


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    g = math.gcd(channels, max(1, groups))
    return nn.GroupNorm(g, channels)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm1 = _norm(channels, groups)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = _norm(channels, groups)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


# Sub-pixel form of a 4x4, stride-2, padding-1 transposed convolution: output phase p (row or
# column parity) at position m reads input m + tap - 1 through kernel index _PHASE_TAPS[p][tap]
# (-1: no tap). Derived from y = 2 * i - 1 + k for the transposed convolution.
_PHASE_TAPS = ((3, 1, -1), (-1, 2, 0))


def _subpixel_index() -> torch.Tensor:
    """Index (4 phases x 9 taps) into a flattened 4x4 kernel with a zero appended at position 16."""
    index = torch.full((2, 2, 3, 3), 16, dtype=torch.long)
    for py in range(2):
        for px in range(2):
            for dy in range(3):
                for dx in range(3):
                    ky, kx = _PHASE_TAPS[py][dy], _PHASE_TAPS[px][dx]
                    if ky >= 0 and kx >= 0:
                        index[py, px, dy, dx] = ky * 4 + kx
    return index.reshape(4, 9)


class UpsampleToImage(nn.ConvTranspose2d):
    """A 4x4 stride-2 transposed convolution (same parameters, same checkpoints) that, on the CPU,
    runs as the equivalent 3x3 convolution to 4 sub-pixel phases + pixel shuffle. With few output
    channels (the decoder's last layer, 16 -> 1), oneDNN's transposed kernel is the slow one: the
    sub-pixel form takes 10 ms instead of 19 ms forward + backward for a batch of 64 at 64 px on
    two Zen 3 cores; on two Zen 4 cores, 12 ms on channels_last input (23 ms on contiguous input)
    against 15 ms for the native kernel.
    Elsewhere (GPU, wide layers) the native kernel is used."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 4, stride=2, padding=1)
        self.register_buffer("_subpixel_index", _subpixel_index(), persistent=False)

    def subpixel_weight(self) -> torch.Tensor:
        """The 3x3 convolution weight (out * 4 phases, in, 3, 3) equivalent to ``self.weight``."""
        c_in, c_out = self.weight.shape[:2]
        taps = self.weight.transpose(0, 1).reshape(c_out, c_in, 16)
        taps = torch.cat([taps, taps.new_zeros(c_out, c_in, 1)], dim=2)
        phased = taps[:, :, self._subpixel_index]  # (out, in, 4, 9)
        return phased.permute(0, 2, 1, 3).reshape(c_out * 4, c_in, 3, 3)

    def forward(self, x, output_size=None):
        if x.device.type != "cpu" or output_size is not None:
            return super().forward(x, output_size)
        bias = self.bias.repeat_interleave(4) if self.bias is not None else None
        # channels_last input: oneDNN is fastest on NHWC here (with contiguous NCHW it reorders
        # each way): 12 instead of 23 ms forward + backward, 14 instead of 29 ms for the
        # explorer's 72-image grid at 128 px, on two Zen 4 cores.
        x = x.contiguous(memory_format=torch.channels_last)
        out = F.conv2d(x, self.subpixel_weight(), bias, padding=1)
        return F.pixel_shuffle(out.contiguous(), 2)


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the pixels of a low-resolution feature map (pre-norm,
    residual): gives every position the context of the whole image, transformer style."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        heads = max(1, heads)
        while channels % heads:
            heads -= 1
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        # (3, b, heads, tokens, dim), made contiguous: PyTorch's fused CPU attention kernel only
        # takes dense q/k/v (strided views fall back to the unfused math path: 1.3x slower per
        # block, forward + backward, at 8x8 x 64 channels on two cores).
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Encoder(nn.Module):
    def __init__(self, cfg: PumaMedNetConfig):
        super().__init__()
        w = cfg.widths
        self.stem = nn.Conv2d(cfg.in_channels, w[0], 3, stride=2, padding=1)
        layers = []
        size = cfg.image_size // 2
        self.detail_after = -1  # index in body after which the map is detail_resolution wide
        for c_in, c_out in zip(w[:-1], w[1:]):
            size //= 2
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), _norm(c_out, cfg.groups), nn.SiLU(),
                       ResidualBlock(c_out, cfg.groups)]
            if cfg.attention_resolution and size == cfg.attention_resolution:
                layers.append(SelfAttention2d(c_out, cfg.attention_heads, cfg.groups))
            if cfg.detail_channels and size == cfg.detail_resolution:
                self.detail_after = len(layers) - 1
                self.to_detail = nn.Sequential(_norm(c_out, cfg.groups), nn.SiLU(),
                                               nn.Conv2d(c_out, 2 * cfg.detail_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.out_norm = _norm(w[-1], cfg.groups)
        flat = w[-1] * cfg.bottleneck_size ** 2
        self.to_latent = nn.Linear(flat, 2 * cfg.latent_dim)

    def forward_all(self, x):
        """(mu, logvar, detail_mu, detail_logvar); the detail pair is None without a detail code."""
        h = self.stem(x)
        detail = None
        for index, layer in enumerate(self.body):
            h = layer(h)
            if index == self.detail_after:
                d_mu, d_logvar = self.to_detail(h).chunk(2, dim=1)
                detail = (d_mu, d_logvar.clamp(-12.0, 8.0))
        h = F.silu(self.out_norm(h)).flatten(1)
        mu, logvar = self.to_latent(h).chunk(2, dim=1)
        return (mu, logvar.clamp(-12.0, 8.0)) + (detail if detail is not None else (None, None))

    def forward(self, x):
        if self.detail_after < 0:
            h = self.body(self.stem(x))
            h = F.silu(self.out_norm(h)).flatten(1)
            mu, logvar = self.to_latent(h).chunk(2, dim=1)
            return mu, logvar.clamp(-12.0, 8.0)
        return self.forward_all(x)[:2]


class _SigmoidWithGradientFloor(torch.autograd.Function):
    """``sigmoid(x)`` whose backward slope is at least ``floor``.

    A pixel whose logit has been pushed deep into the sigmoid's tail gets (almost) no gradient back
    from any loss, however wrong the pixel is: on the 128-px breast models the decoder's
    bottom-right corner sat at logits near -28 (slope 7e-13), drawing a black notch the training
    could no longer remove. With a floor the tail still hears the loss; where the slope is above
    the floor the gradient is exactly the sigmoid's."""

    @staticmethod
    def forward(ctx, logits, floor: float):
        out = torch.sigmoid(logits)
        ctx.save_for_backward(out)
        ctx.floor = floor
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (out,) = ctx.saved_tensors
        return grad_out * (out * (1.0 - out)).clamp_min(ctx.floor), None


def to_pixels(logits: torch.Tensor, gradient_floor: float = 0.0) -> torch.Tensor:
    """The decoder's output nonlinearity: ``sigmoid``, with a floor on its backward slope when
    ``gradient_floor`` > 0 (training only; the forward value is the same either way)."""
    if gradient_floor > 0 and torch.is_grad_enabled():
        return _SigmoidWithGradientFloor.apply(logits, gradient_floor)
    return torch.sigmoid(logits)


class Decoder(nn.Module):
    def __init__(self, cfg: PumaMedNetConfig):
        super().__init__()
        # set by training (TrainConfig.output_gradient_floor), used in training mode only, never
        # saved: decoding, explanations and gradient walks see the plain sigmoid
        self.output_gradient_floor = 0.0
        w = cfg.widths[::-1]
        self.start_shape = (w[0], cfg.bottleneck_size, cfg.bottleneck_size)
        self.from_latent = nn.Linear(cfg.latent_dim, w[0] * cfg.bottleneck_size ** 2)
        self.detail_at = -1  # index in body whose output receives the detail code (-1: none)
        self.detail_shape = (cfg.detail_channels, cfg.detail_resolution, cfg.detail_resolution)
        if cfg.decoder == "upsample":
            self._build_upsample(cfg, w)
            return
        layers = [ResidualBlock(w[0], cfg.groups)]
        size = cfg.bottleneck_size
        for c_in, c_out in zip(w[:-1], w[1:]):
            if cfg.attention_resolution and size == cfg.attention_resolution:
                layers.append(SelfAttention2d(c_in, cfg.attention_heads, cfg.groups))
            size *= 2
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), _norm(c_out, cfg.groups), nn.SiLU()]
            if cfg.detail_channels and size == cfg.detail_resolution:
                # the detail code enters here and one residual block mixes it with the global
                # code's features before the upsampling stages draw them
                # (kept out of body, so body's layer names match a model without a detail code
                # and its weights transfer with --init)
                self.detail_at = len(layers) - 1
                self.from_detail = nn.Conv2d(cfg.detail_channels, c_out, 3, padding=1)
                self.detail_mix = ResidualBlock(c_out, cfg.groups)
                if cfg.detail_prior == "conditional":
                    self.detail_prior = nn.Sequential(_norm(c_out, cfg.groups), nn.SiLU(),
                                                      nn.Conv2d(c_out, 2 * cfg.detail_channels, 3, padding=1))
                    # starts as the standard prior N(0, I), so a model given a conditional prior
                    # with --init begins exactly where the pretrained model was
                    nn.init.zeros_(self.detail_prior[-1].weight)
                    nn.init.zeros_(self.detail_prior[-1].bias)
        if cfg.attention_resolution and size == cfg.attention_resolution:
            layers.append(SelfAttention2d(w[-1], cfg.attention_heads, cfg.groups))
        self.body = nn.Sequential(*layers)
        self.to_image = UpsampleToImage(w[-1], cfg.in_channels)

    def _build_upsample(self, cfg: PumaMedNetConfig, w: tuple[int, ...]) -> None:
        layers = []
        size = cfg.bottleneck_size
        outs = list(w[1:]) + [w[-1]]
        for c_in, c_out in zip(w, outs):
            layers.append(ResidualBlock(c_in, cfg.groups))
            if cfg.attention_resolution and size == cfg.attention_resolution:
                layers.append(SelfAttention2d(c_in, cfg.attention_heads, cfg.groups))
            size *= 2
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1),
                       _norm(c_out, cfg.groups), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.to_image = nn.Conv2d(w[-1], cfg.in_channels, 3, padding=1)

    def top_down(self, z):
        """The global code's features at the detail code's width (the body up to it)."""
        h = self.from_latent(z).reshape(z.shape[0], *self.start_shape)
        for layer in self.body[:self.detail_at + 1]:
            h = layer(h)
        return h

    def prior(self, features):
        """(mean, log-variance) of the detail code's prior given the top-down features: zeros for
        the standard prior N(0, I), else predicted from the global code."""
        if not hasattr(self, "detail_prior"):
            zeros = features.new_zeros(features.shape[0], *self.detail_shape)
            return zeros, zeros
        mean, logvar = self.detail_prior(features).chunk(2, dim=1)
        return mean, logvar.clamp(-8.0, 4.0)

    def bottom_up(self, features, code):
        """The picture from the top-down features and a detail code (the code itself, not a residual)."""
        h = self.detail_mix(features + self.from_detail(code.to(features.dtype)))
        for layer in self.body[self.detail_at + 1:]:
            h = layer(h)
        return to_pixels(self.to_image(h), self._gradient_floor())

    def _gradient_floor(self) -> float:
        return self.output_gradient_floor if self.training else 0.0

    def forward(self, z, detail=None):
        """``detail``: the residual detail code, added to the prior mean given ``z`` (for the
        standard prior, whose mean is zero, the code itself); None means the prior mean."""
        if self.detail_at < 0:
            h = self.from_latent(z).reshape(z.shape[0], *self.start_shape)
            return to_pixels(self.to_image(self.body(h)), self._gradient_floor())
        features = self.top_down(z)
        code = self.prior(features)[0]  # zeros for the standard prior
        if detail is not None:
            code = code + detail.to(features.dtype)
        return self.bottom_up(features, code)


class WeightNet(nn.Module):
    """Predicts, from the input alone, where the reconstruction error will be high (a per-pixel
    logit map). Trained on the detached error map, never on the weighted loss it feeds, so it
    cannot learn to hide errors by down-weighting them."""

    def __init__(self, cfg: PumaMedNetConfig, width: int = 16):
        super().__init__()
        # Difficulty is a smooth, region-level property, so a coarse map suffices: average-pool
        # first (free), then one stride-2 conv; the parameters are the same at every factor.
        self.pool = cfg.weight_net_downsample // 2 if cfg.weight_net_downsample > 1 else 1
        stride = 2 if cfg.weight_net_downsample > 1 else 1
        self.net = nn.Sequential(
            nn.Conv2d(cfg.in_channels, width, 3, stride=stride, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2), _norm(width, cfg.groups), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=4, dilation=4), _norm(width, cfg.groups), nn.SiLU(),
            nn.Conv2d(width, 1, 3, padding=1),
        )

    def forward(self, x):
        small = F.avg_pool2d(x, self.pool) if self.pool > 1 else x
        return F.interpolate(self.net(small), size=x.shape[-2:], mode="bilinear", align_corners=False)


def _make_head(latent_dim: int, outputs: int, hidden: int) -> nn.Module:
    if hidden > 0:
        return nn.Sequential(nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Dropout(0.1), nn.Linear(hidden, outputs))
    return nn.Linear(latent_dim, outputs)


def error_map(x_hat: torch.Tensor, target: torch.Tensor, smooth: int = 5) -> torch.Tensor:
    """Squared reconstruction error smoothed over a small window (Bx1xSxS), as a target for the
    weight net and as the 'error' weight map."""
    err = (x_hat - target).pow(2).mean(1, keepdim=True)
    if smooth > 1:
        err = F.avg_pool2d(err, smooth, stride=1, padding=smooth // 2, count_include_pad=False)
    return err



def normalise_weights(score: torch.Tensor, strength: float) -> torch.Tensor:
    """Turn a non-negative per-pixel score into weights with mean 1 per image:
    ``w = 1 - strength + strength * score / mean(score)``, then rescaled to mean 1."""
    score = score.clamp_min(0)
    rel = score / score.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
    w = (1.0 - strength) + strength * rel
    return w / w.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)


class PumaMedNet(nn.Module):
    def __init__(self, config: PumaMedNetConfig):
        super().__init__()
        if isinstance(config, dict):
            config = PumaMedNetConfig.from_dict(config)
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.weight_net = WeightNet(config) if config.weight_map == "learned" else None
        outputs = config.classifier_outputs
        self.classifier = _make_head(config.latent_dim, outputs, config.classifier_hidden) if outputs else None
        self.aux_heads = nn.ModuleDict({name: nn.Linear(config.latent_dim, n) for name, n in config.aux_heads.items()})

    # --- the generative path -------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: Bx1xSxS in [0, 1] -> (mu, logvar), each B x latent_dim."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor, detail: torch.Tensor | None = None) -> torch.Tensor:
        """z: B x latent_dim (and, for a hierarchical model, the residual detail code
        B x C_d x R x R, added to the prior mean given z, which is zero for the standard prior;
        None means the prior mean) -> Bx1xSxS in [0, 1]."""
        return self.decoder(z, detail)

    def detail_prior(self, z: torch.Tensor):
        """(mean, log-variance) of the detail code's prior given the global code ``z``."""
        return self.decoder.prior(self.decoder.top_down(z))

    @property
    def has_detail(self) -> bool:
        return self.config.detail_channels > 0

    def encode_all(self, x: torch.Tensor):
        """(mu, logvar, detail_mu, detail_logvar); the detail pair is None without a detail code.
        ``detail_mu`` is the posterior mean of the *residual* detail code (the code minus its
        prior mean given mu), what ``decode(mu, detail_mu)`` and the explanations hold; for the
        standard prior that is the code itself."""
        if not self.has_detail:
            return (*self.encoder(x), None, None)
        mu, logvar, d_mu, d_logvar = self.encoder.forward_all(x)
        if self.config.detail_prior == "conditional":
            d_mu = d_mu - self.detail_prior(mu)[0]
        return mu, logvar, d_mu, d_logvar

    def detail_kl(self, mu: torch.Tensor, residual_mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL of the detail code's posterior from its prior given ``mu``, per image (nats), from
        ``encode_all``'s residual mean and log-variance."""
        from pumamed.net.losses import kl_gaussians  # losses imports this module

        prior_logvar = self.detail_prior(mu)[1].float() if self.config.detail_prior == "conditional" else 0.0
        return kl_gaussians(residual_mu.float(), logvar.float(), 0.0, prior_logvar).flatten(1).sum(1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior-mean reconstruction D(mu, detail_mu): what the pages show as 'the model's
        picture of this image'."""
        mu, _, d_mu, _ = self.encode_all(x)
        return self.decode(mu, d_mu)

    def encode_for_explanation(self, x: torch.Tensor, detail: str = "image"):
        """(mu, detail code to hold while the global code is edited): the image's own detail
        (``"image"``), the prior mean (``"mean"``: None) or a draw from its posterior
        (``"resampled"``); None for models without a detail code."""
        if detail not in DETAIL_MODES:
            raise ValueError(f"detail must be one of {DETAIL_MODES}, got {detail!r}")
        mu, _, d_mu, d_logvar = self.encode_all(x)
        if d_mu is None or detail == "mean":
            return mu, None
        if detail == "resampled":
            return mu, self.reparameterize(d_mu, d_logvar)
        return mu, d_mu

    @staticmethod
    def reparameterize(mu, logvar):
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor, sample: bool | None = None) -> VAEOutput:
        """Encode, sample z (training) or take z = mu (eval, unless ``sample``), decode."""
        mu, logvar, d_mu, d_logvar = self.encode_all(x)
        sample = self.training if sample is None else sample
        z = self.reparameterize(mu, logvar) if sample else mu
        detail = None
        if d_mu is not None:
            detail = self.reparameterize(d_mu, d_logvar) if sample else d_mu
        return VAEOutput(self.decode(z, detail), mu, logvar, z, d_mu, d_logvar)

    # --- the attention map of the reconstruction loss ----------------------------------------
    def weight_logits(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.weight_net(x) if self.weight_net is not None else None

    def reconstruction_weights(self, x: torch.Tensor, recon: torch.Tensor | None = None) -> torch.Tensor:
        """Per-pixel weights (Bx1xSxS, mean 1 per image) the reconstruction loss gives to x.

        learned: the weight net's predicted difficulty; error: the current (smoothed) error of
        the reconstruction; none: all ones. High weight = the model prioritises that area."""
        kind = self.config.weight_map
        if kind == "none":
            return torch.ones_like(x[:, :1])
        if kind == "learned":
            score = torch.sigmoid(self.weight_net(x))
        else:
            if recon is None:
                recon = self.forward(x, sample=False).recon
            score = error_map(recon.detach(), x)
        return normalise_weights(score, self.config.weight_strength)

    # --- classification path: encoder -> mu -> classifier ------------------------------------
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            raise CheckpointError("this PumaMedNet has no classifier head (it was trained without labels)")
        mu, _ = self.encode(x)
        return self.classifier(mu)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, always B x num_classes: softmax for multiclass; for binary the
        two columns [1 - p, p] from one sigmoid logit; independent sigmoids for multilabel."""
        return logits_to_proba(self.classify(x), self.config.task)


def logits_to_proba(logits: torch.Tensor, task: str) -> torch.Tensor:
    logits = logits.float()
    if task == "multiclass":
        return torch.softmax(logits, dim=1)
    if task == "binary":
        p = torch.sigmoid(logits[:, -1])
        return torch.stack([1 - p, p], dim=1)
    return torch.sigmoid(logits)


class ClassificationPath(nn.Module):
    """encoder -> mu -> classifier as one module (for FLOP counting, latency, export)."""

    def __init__(self, model: PumaMedNet):
        super().__init__()
        self.encoder = model.encoder
        self.classifier = model.classifier

    def forward(self, x):
        mu, _ = self.encoder(x)
        return self.classifier(mu)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
