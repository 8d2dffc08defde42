"""Planted-shortcut experiment: proof that the latent audit finds a bias it was not told about.

Recipe (Geirhos et al. 2020 call this a "shortcut"; DeGrave et al. 2021 found real ones in chest
X-ray models: markers and text tokens that give away the hospital):

1. Take a real labelled dataset (default: the NIH chest X-rays, normal vs abnormal) and burn a
   small token (a bright square with a dark core) into a corner of the *training* images of one
   class, at a chosen rate. The token carries label information that real anatomy carries only
   weakly, so a model that is free to use it will.
2. Train a small PumaMedNet with its classifier head on these images (the project's own training
   loop, short, CPU-sized).
3. Test three ways on held-out images: **clean** (no token), **aligned** (the token follows the
   training rule) and **swapped** (the token is burnt into the *other* class). A classifier that
   relies on the token scores well on aligned and badly (below chance) on swapped images.
4. Audit with the attribute "token present": it must be predictable from ``mu``, the flagged
   dimensions must carry the head's weight, and ablating them must close the aligned-swapped gap.
5. Mitigate: remove the token subspace (orthogonal projection / INLP) or reweight, refit the head,
   and show that the swapped AUC recovers towards the clean one.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from pumamed.errors import InputError
from pumamed.jsonsafe import to_jsonable

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


@dataclass
class ShortcutConfig:
    # PneumoniaMNIST: real chest X-rays with a learnable signal (clean AUC ~0.93 in a minute), so
    # a shortcut shows as a drop from that level rather than from chance. NIH (task "binary")
    # works too, but its normal-vs-abnormal signal is too weak for a CPU-minute model.
    dataset: str = "pneumoniamnist"
    task: str | None = None
    size: int = 32  # must be divisible by 16 (the encoder downsamples 4 times)
    marker_class: int = 1  # the class whose training images carry the token
    rate: float = 0.95  # fraction of that class's training images with the token
    marker_size: int = 0  # pixels; 0: size // 5 (6 px at 32 px: a token a radiologist would see)
    corner: str = "top_left"
    latent_dim: int = 16
    widths: tuple = (8, 16, 32, 64)  # half the default PumaMedNet widths: CPU-minute training
    epochs: int = 4
    batch_size: int = 32
    lr: float = 3e-3
    beta: float = 1.0
    # 0: an unsupervised beta-VAE, then a logistic head on mu (frozen-encoder transfer); > 0: the
    # classifier head is trained jointly with the encoder (the encoder itself then learns to map
    # the token onto the label direction, which no subspace removal on mu can fully undo).
    cls_weight: float = 0.0
    max_train: int = 400  # 0: the whole training split
    n_boot: int = 100
    seed: int = 0
    data_dir: str | None = None

    def validate(self) -> "ShortcutConfig":
        if self.size % 16 or not 16 <= self.size <= 256:
            raise InputError(f"size must be a multiple of 16 between 16 and 256 (got {self.size})")
        if not 0.0 < self.rate <= 1.0:
            raise InputError(f"the marker rate must be in (0, 1] (got {self.rate})")
        if self.corner not in CORNERS:
            raise InputError(f"corner must be one of {', '.join(CORNERS)} (got {self.corner!r})")
        if self.epochs < 1:
            raise InputError("train for at least one epoch")
        return self


def marker_pixels(cfg: ShortcutConfig) -> int:
    return int(cfg.marker_size or max(3, cfg.size // 5))


def burn_marker(images, mask, size: int, corner: str = "top_left", margin: int = 1) -> np.ndarray:
    """Copy of ``images`` (N x 1 x S x S or N x S x S, [0, 1]) with a token where ``mask`` is True.

    The token is a white ``size`` x ``size`` square with a black core (half its width): high
    contrast at any brightness of the underlying image, and not something anatomy produces.
    """
    out = np.array(images, dtype=np.float32, copy=True)
    mask = np.asarray(mask, dtype=bool)
    if out.shape[0] != mask.shape[0]:
        raise InputError("one marker flag per image is needed")
    s = out.shape[-1]
    if not 2 <= size <= s // 2:
        raise InputError(f"the marker must be between 2 px and half the image ({s // 2} px); got {size}")
    top = margin if corner.startswith("top") else s - margin - size
    left = margin if corner.endswith("left") else s - margin - size
    core = max(1, size // 2)
    offset = (size - core) // 2
    view = out[mask]
    view[..., top:top + size, left:left + size] = 1.0
    view[..., top + offset:top + offset + core, left + offset:left + offset + core] = 0.0
    out[mask] = view
    return out


def _marker_mask(labels: np.ndarray, marker_class: int, rate: float, seed: int) -> np.ndarray:
    """Exactly round(rate * n) of the images of ``marker_class`` get the token (seeded)."""
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(labels == marker_class)
    chosen = rng.choice(candidates, size=int(round(rate * candidates.size)), replace=False)
    mask = np.zeros(labels.shape[0], dtype=bool)
    mask[chosen] = True
    return mask


@dataclass
class ShortcutResult:
    config: dict
    n_train: int
    n_test: int
    marker_fraction_train: float
    # the model's own head
    head_auc: dict  # clean / aligned / swapped
    # the audit
    marker_predictability: float  # CV AUC of "token present" from mu, within the marker class
    flagged_dims: list[int]
    head_weight_share_on_flagged: float
    flagged_fraction_of_dims: float
    top_head_dims: list[int]
    head_auc_flagged_ablated: dict  # clean / aligned / swapped with flagged dims set to their mean
    # mitigation with a refitted logistic head
    mitigation: list[dict]
    mutual_information: list[float] = field(default_factory=list)
    effect: list[float] = field(default_factory=list)  # per-dim rank effect of the token (within class)
    effect_threshold: float = 0.0
    train_seconds: float = 0.0
    examples: np.ndarray | None = None  # a few training images with the token (k x S x S)
    model: object = None  # the trained PumaMedNet (not serialised), for explanations of its decisions
    test_images: dict | None = None  # clean / aligned / swapped test images (not serialised)
    test_labels: np.ndarray | None = None

    @property
    def reliance(self) -> float:
        """AUC(aligned) - AUC(swapped) of the model head: how much of its skill is the token."""
        return float(self.head_auc["aligned"] - self.head_auc["swapped"])

    def to_dict(self) -> dict:
        skip = {"examples", "model", "test_images", "test_labels"}
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        out["config"] = dict(out["config"])
        out["config"]["widths"] = list(out["config"]["widths"])
        out["reliance"] = self.reliance
        return to_jsonable(out, digits=4)


#: The mitigations the experiment compares (those of the audit, :mod:`pumamed.explain.mitigation`).
SHORTCUT_STRATEGIES = ("baseline", "orthogonal", "inlp", "drop flagged", "reweighting")


def _auc(y, score) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if np.unique(y).size == 2 else float("nan")


def _encode(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    from pumamed.net.inference import encode_dataset

    return encode_dataset(model, images, batch_size=batch_size)[0]


def _head_positive(model, codes: np.ndarray, positive: int) -> np.ndarray:
    import torch

    from pumamed.explain.attributions import head_probabilities, model_device

    with torch.inference_mode():
        mu = torch.as_tensor(codes, dtype=torch.float32, device=model_device(model))
        return head_probabilities(model, mu)[:, positive].float().cpu().numpy()


def run_shortcut_experiment(cfg: ShortcutConfig | None = None, log=None, device=None) -> ShortcutResult:
    """Plant, train, audit, mitigate (module doc). CPU cost: ~1 min at the defaults."""
    import time

    import torch

    from pumamed.config import seed_everything
    from pumamed.explain.attributes import AttributeValues
    from pumamed.explain.probes import attribute_predictability, flag_dimensions, head_dependence
    from pumamed.explain.mitigation import STRATEGY_LABELS, fit_head, mitigated_heads
    from pumamed.imaging import load_dataset
    from pumamed.net import PumaMedNet, PumaMedNetConfig
    from pumamed.net.data import ArrayData
    from pumamed.net.train import TrainConfig, fit

    cfg = (cfg or ShortcutConfig()).validate()
    log = log or (lambda *_: None)
    seed_everything(cfg.seed)
    train_ds = load_dataset(cfg.dataset, split="train", size=cfg.size, data_dir=cfg.data_dir, task=cfg.task)
    test_ds = load_dataset(cfg.dataset, split="test", size=cfg.size, data_dir=cfg.data_dir, task=cfg.task)
    if train_ds.task not in ("binary", "multiclass"):
        raise InputError(f"the shortcut experiment needs single-label classes ({cfg.dataset} is {train_ds.task}; "
                         "for NIH pass task='binary')")
    x_train, y_train = train_ds.as_tensors()
    x_test, y_test = test_ds.as_tensors()
    x_train, y_train = x_train.numpy(), y_train.numpy().astype(int)
    x_test, y_test = x_test.numpy(), y_test.numpy().astype(int)
    if cfg.max_train and len(x_train) > cfg.max_train:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(x_train), cfg.max_train, replace=False))
        x_train, y_train = x_train[keep], y_train[keep]
    n_classes = len(train_ds.class_names)
    if not 0 <= cfg.marker_class < n_classes:
        raise InputError(f"marker_class must be a class index below {n_classes}")
    positive = cfg.marker_class
    y_test_bin = (y_test == positive).astype(int)
    y_train_bin = (y_train == positive).astype(int)
    size = marker_pixels(cfg)

    train_mask = _marker_mask(y_train, cfg.marker_class, cfg.rate, cfg.seed)
    marked_train = burn_marker(x_train, train_mask, size, cfg.corner)
    aligned_mask = _marker_mask(y_test, cfg.marker_class, cfg.rate, cfg.seed + 1)
    swapped_mask = _marker_mask((y_test != cfg.marker_class).astype(int), 1, cfg.rate, cfg.seed + 2)
    tests = {"clean": x_test, "aligned": burn_marker(x_test, aligned_mask, size, cfg.corner),
             "swapped": burn_marker(x_test, swapped_mask, size, cfg.corner)}

    model = PumaMedNet(PumaMedNetConfig(
        image_size=cfg.size, latent_dim=cfg.latent_dim, widths=tuple(cfg.widths), num_classes=n_classes,
        task=train_ds.task, class_names=list(train_ds.class_names), weight_map="none"))
    train_arrays = ArrayData(
        torch.from_numpy(np.round(marked_train * 255).astype(np.uint8)),
        torch.from_numpy(y_train).long(), train_ds.task, tuple(train_ds.class_names), names=(cfg.dataset,))
    # No geometric augmentation or corruption: flips would move the token between corners and
    # random erasing would delete it; the experiment is about what the model learns from the data.
    train_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, beta=cfg.beta,
                            cls_weight=cfg.cls_weight, augment=False, denoise=False, seed=cfg.seed,
                            progress=False, kl_warmup=0.3)
    start = time.time()
    log(f"training a {cfg.latent_dim}-d PumaMedNet on {len(x_train)} images ({int(train_mask.sum())} with the token)")
    with tempfile.TemporaryDirectory(prefix="pumamed_shortcut_") as out_dir:
        fit(model, train_arrays, None, train_cfg, out_dir, device=device or torch.device("cpu"), log=lambda *_: None)
    train_seconds = time.time() - start
    model.eval()

    codes_train = _encode(model, marked_train)
    codes_test = {name: _encode(model, images) for name, images in tests.items()}
    if cfg.cls_weight > 0:
        head_scores = lambda c: _head_positive(model, c, positive)  # noqa: E731
        weights = _head_weights(model, codes_train, positive)
    else:
        probe = fit_head(codes_train, y_train_bin, seed=cfg.seed)
        head_scores = lambda c: probe.predict_proba(c)[:, 1]  # noqa: E731
        weights = probe.named_steps["logisticregression"].coef_[0]  # standardised codes: per-sd units
        _install_probe(model, probe)
    head_auc = {name: _auc(y_test_bin, head_scores(c)) for name, c in codes_test.items()}
    log(f"head AUC clean {head_auc['clean']:.3f} aligned {head_auc['aligned']:.3f} swapped {head_auc['swapped']:.3f}")

    # --- the audit, told only "some images carry something": attribute = token present
    # The token is planted in one class only, so "token present" is confounded with the label;
    # predictability and flags are measured within the marker class (token vs no token among
    # images of the same class), and mitigation estimates the token directions within classes.
    token = AttributeValues("token", np.where(train_mask, "token", "none").astype(object), "categorical")
    in_class = y_train == cfg.marker_class
    if cfg.rate < 1.0:
        predictability = attribute_predictability(
            codes_train[in_class], AttributeValues("token", token.values[in_class], "categorical"), seed=cfg.seed).score
    else:  # every image of the class has the token: only the confounded comparison exists
        predictability = attribute_predictability(codes_train, token, seed=cfg.seed).score
    strata = y_train if cfg.rate < 1.0 else None
    flags = flag_dimensions(codes_train, token, seed=cfg.seed, strata=strata)
    dependence = head_dependence(weights, flags.flagged)
    ablated = {}
    for name, c in codes_test.items():
        c = c.copy()
        if flags.flagged:
            c[:, flags.flagged] = codes_train[:, flags.flagged].mean(axis=0)
        ablated[name] = _auc(y_test_bin, head_scores(c))

    # --- mitigation: refit a logistic head on the (transformed) training codes
    mitigation = []
    for name, remover, head in mitigated_heads(codes_train, y_train_bin, token.values, flagged_dims=flags.flagged,
                                               strategies=SHORTCUT_STRATEGIES, strata=strata, seed=cfg.seed):
        transform = remover.transform if remover is not None else (lambda c: c)
        row = {"strategy": STRATEGY_LABELS[name],
               "directions_removed": int(remover.n_removed_) if remover is not None else 0}
        for test_name, c in codes_test.items():
            row[f"auc_{test_name}"] = _auc(y_test_bin, head.predict_proba(transform(c))[:, 1])
        row["reliance"] = row["auc_aligned"] - row["auc_swapped"]
        mitigation.append(row)
    examples = marked_train[np.flatnonzero(train_mask)[:4], 0]
    return ShortcutResult(
        config=asdict(cfg), n_train=len(x_train), n_test=len(x_test), marker_fraction_train=float(train_mask.mean()),
        head_auc=head_auc, marker_predictability=predictability, flagged_dims=flags.flagged,
        head_weight_share_on_flagged=dependence["weight_share_on_flagged"],
        flagged_fraction_of_dims=dependence["flagged_fraction_of_dims"], top_head_dims=dependence["top_weighted_dims"],
        head_auc_flagged_ablated=ablated, mitigation=mitigation,
        mutual_information=[float(v) for v in flags.mutual_information],
        effect=[float(v) for v in flags.effect], effect_threshold=flags.null_threshold,
        train_seconds=train_seconds, examples=examples, model=model, test_images=tests, test_labels=y_test,
    )


def _install_probe(model, probe) -> None:
    """Write the logistic probe into the model's linear binary head, so the returned model is a
    complete PumaMedNet + classifier (counterfactuals and saliency of *this* decision work)."""
    import torch

    head = model.classifier
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        return
    scaler = probe.named_steps["standardscaler"]
    logistic = probe.named_steps["logisticregression"]
    weight = logistic.coef_[0] / scaler.scale_
    bias = logistic.intercept_[0] - float(np.sum(weight * scaler.mean_))
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype)[None])
        head.bias.fill_(float(bias))


def _head_weights(model, codes: np.ndarray, positive: int) -> np.ndarray:
    """Per-dimension weight of the head for the positive class, in units of one sd of each code.

    Linear head: ``w * sd``. Otherwise: mean |gradient| of the probability times sd.
    """
    import torch

    from pumamed.explain.attributions import head_probabilities, model_device

    spread = codes.std(axis=0)
    head = model.classifier
    if isinstance(head, torch.nn.Linear):
        w = head.weight.detach().cpu().numpy()
        return (w[-1] if w.shape[0] == 1 else w[positive]) * spread
    mu = torch.as_tensor(codes, dtype=torch.float32, device=model_device(model)).requires_grad_(True)
    (grad,) = torch.autograd.grad(head_probabilities(model, mu)[:, positive].sum(), mu)
    return np.abs(grad.cpu().numpy()).mean(axis=0) * spread
