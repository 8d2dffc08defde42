"""Trust signals of a checkpoint: an out-of-distribution (OOD) score and calibrated probabilities.

Both are fitted after training on the *validation* split only and stored beside the weights:

* ``trust.json``: the temperature of the classifier's logits (temperature scaling, Guo et al.
  2017), the OOD score's definition (which features, their standardisation), its threshold, and
  the figures measured when it was fitted (validation) and reported once (test);
* ``trust.safetensors``: the mean and precision matrix of the training codes ``mu`` (for the
  Mahalanobis feature) and of a hierarchical model's pooled detail codes, and, for a classifier,
  the mean code of each class on the training split (``class_centroids``, what the centroid
  counterfactual walks between).

**OOD score.** Per image, from what the model computes anyway: ``recon``, the reconstruction
error weighted by the model's own loss-weight map (``model.reconstruct`` = posterior mean, so
hierarchical models are scored the same way); ``kl``, the KL of the posterior from the prior
(global code plus any detail code); ``mahalanobis``, the squared Mahalanobis distance of ``mu``
to the training codes (one Gaussian, Ledoit-Wolf shrinkage); ``detail_mahalanobis``, the same for
a hierarchical model's residual detail code average-pooled to a 4 x 4 grid per channel (texture,
which tells modalities apart where global codes lie close). Each is log-transformed and
standardised by its mean and standard deviation on the model's validation images; the score is
the mean of the standardised features in the chosen subset. The subset is chosen on validation
data: the one whose worst AUROC against the validation splits of the other registered modalities
is highest. The threshold is the ``quantile`` (default 0.975) of the score on the validation
images, so about 2.5 % of in-distribution images are flagged by construction.

Nothing here imports Streamlit. Fitting and evaluating these signals on a checkpoint folder
(:func:`pumamed.net.calibration.calibrate_checkpoint`, what ``python -m pumamed calibrate`` and
the end of a training run call) is in :mod:`pumamed.net.calibration`, above this module.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pumamed.errors import CheckpointError

TRUST_FILE = "trust.json"
TRUST_TENSORS = "trust.safetensors"
TRUST_FORMAT = "pumamed-trust"
FEATURES = ("recon", "kl", "mahalanobis", "detail_mahalanobis")
# A hierarchical model's detail code (C x R x R) is average-pooled to C x DETAIL_POOL x DETAIL_POOL
# before its Gaussian is fitted: the code is where the model keeps texture, which differs between
# modalities (ultrasound speckle, X-ray grain) even where the global codes lie close; pooling keeps
# the covariance small enough to estimate from a few thousand training images (64 numbers at C = 4).
DETAIL_POOL = 4
DEFAULT_QUANTILE = 0.975
ECE_BINS = 15
# Pairs of modalities counted as *near* OOD (same organ, another imaging technique); any other
# pair of different modalities is far OOD, and another dataset of the same modality is near.
NEAR_MODALITY_PAIRS = ({"breast_ultrasound", "mammography"},)


# --- per-image outputs -------------------------------------------------------------------------
@torch.no_grad()
def model_outputs(model, images_uint8: torch.Tensor, device=None, batch_size: int = 128) -> dict:
    """Logits (when the model has a classifier) and, for PumaMedNet, ``mu``, ``logvar``, the
    weighted reconstruction error (``recon``), the plain one (``recon_mse``), the posterior's
    KL (``kl``, nats, global + detail code) and, for a hierarchical model, its (residual) detail
    code pooled to C x DETAIL_POOL x DETAIL_POOL (``detail_pooled``) of uint8 N x 1 x S x S images,
    as NumPy arrays."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    parts: dict[str, list] = {}
    for start in range(0, len(images_uint8), batch_size):
        x = images_uint8[start:start + batch_size].to(device).float().div_(255.0)
        for name, value in batch_outputs(model, x).items():
            parts.setdefault(name, []).append(value)
    return {k: np.concatenate(v) for k, v in parts.items()}


@torch.no_grad()
def batch_outputs(model, x: torch.Tensor) -> dict:
    """:func:`model_outputs` of one batch of float images B x 1 x S x S in [0, 1]."""
    from pumamed.config import autocast

    out = {}

    def add(name, value):
        out[name] = value.detach().float().cpu().numpy().astype(np.float64)

    is_vae = hasattr(model, "decode")
    with autocast(x.device):
        if not is_vae:
            add("logits", model.classify(x))
            return out
        mu, logvar, d_mu, d_logvar = model.encode_all(x)
        recon = model.reconstruct(x).float()
        try:
            weights = model.reconstruction_weights(x, recon).float()
        except TypeError:
            weights = model.reconstruction_weights(x).float()
        sq = (recon - x.float()).pow(2)
        kl = kl_divergence(mu.float(), logvar.float())
        if d_mu is not None:
            kl = kl + model.detail_kl(mu, d_mu, d_logvar)
        add("mu", mu)
        add("logvar", logvar)
        add("recon", (weights * sq).flatten(1).mean(1))
        add("recon_mse", sq.flatten(1).mean(1))
        add("kl", kl)
        if d_mu is not None:
            add("detail_pooled", F.adaptive_avg_pool2d(d_mu.float(), DETAIL_POOL).flatten(1))
        if getattr(model, "classifier", None) is not None:
            add("logits", model.classifier(mu))
    return out


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, summed over dimensions (nats)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def mahalanobis(mu: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = np.asarray(mu, dtype=np.float64) - mean[None, :]
    return np.einsum("ij,jk,ik->i", d, precision, d)


def fit_code_gaussian(mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, precision) of the training codes, covariance with Ledoit-Wolf shrinkage."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(np.asarray(mu, dtype=np.float64))
    return lw.location_.astype(np.float64), lw.precision_.astype(np.float64)


# --- the stored calibration --------------------------------------------------------------------
@dataclass
class Trust:
    """What ``trust.json`` / ``trust.safetensors`` hold, with the functions that apply them."""

    task: str | None = None
    temperature: float | None = None
    features: tuple[str, ...] = ()
    center: dict = field(default_factory=dict)
    scale: dict = field(default_factory=dict)
    threshold: float | None = None
    code_mean: np.ndarray | None = None
    code_precision: np.ndarray | None = None
    detail_mean: np.ndarray | None = None  # of the pooled detail codes (hierarchical models)
    detail_precision: np.ndarray | None = None
    class_centroids: np.ndarray | None = None  # classes x latent_dim, mean training code per class
    report: dict = field(default_factory=dict)

    @property
    def has_ood(self) -> bool:
        return bool(self.features) and self.threshold is not None

    def feature_values(self, outputs: dict) -> dict:
        """The raw features of :data:`FEATURES` from :func:`model_outputs`-style arrays."""
        values = {}
        if "recon" in outputs:
            values["recon"] = np.asarray(outputs["recon"], dtype=np.float64)
        if "kl" in outputs:
            values["kl"] = np.asarray(outputs["kl"], dtype=np.float64)
        if "mu" in outputs and self.code_mean is not None and self.code_precision is not None:
            values["mahalanobis"] = mahalanobis(outputs["mu"], self.code_mean, self.code_precision)
        if "detail_pooled" in outputs and self.detail_mean is not None and self.detail_precision is not None:
            values["detail_mahalanobis"] = mahalanobis(outputs["detail_pooled"], self.detail_mean,
                                                       self.detail_precision)
        return values

    def standardised(self, outputs: dict) -> dict:
        raw = self.feature_values(outputs)
        return {name: (safe_log(raw[name]) - self.center[name]) / self.scale[name]
                for name in self.center if name in raw}

    def ood_score(self, outputs: dict) -> np.ndarray:
        """The OOD score of each image (higher = less like the training data)."""
        if not self.features:
            raise CheckpointError("this checkpoint has no OOD score (run python -m pumamed calibrate --model DIR)")
        z = self.standardised(outputs)
        missing = [f for f in self.features if f not in z]
        if missing:
            raise CheckpointError(f"the OOD score needs {', '.join(missing)}, which this model does not compute")
        return combine(z, self.features)

    def flagged(self, scores) -> np.ndarray:
        return np.asarray(scores) > float(self.threshold)

    def calibrated_proba(self, logits) -> np.ndarray:
        return logits_to_proba(logits, self.task or "multiclass", self.temperature or 1.0)

    def figures(self) -> dict:
        """The short summary the model cards show (test figures when reported, else validation)."""
        return summary(self.report)


def image_verdict(model, trust: Trust, x: torch.Tensor, task: str | None = None):
    """(uncalibrated probabilities, OOD verdict, calibrated probabilities) of one image tensor
    1 x 1 x S x S on the model's device. The verdict is a dict (``score``, ``threshold``,
    ``flagged``, the standardised ``features``, ``score_of``), None when the checkpoint has no OOD
    score; the probabilities are None without a calibrated classifier."""
    with torch.inference_mode():
        outputs = batch_outputs(model, x)
    raw = calibrated = None
    if "logits" in outputs and trust.temperature is not None:
        raw = logits_to_proba(outputs["logits"], task or trust.task or "multiclass")[0]
        calibrated = trust.calibrated_proba(outputs["logits"])[0]
    ood = None
    if trust.has_ood and "mu" in outputs:
        score = float(trust.ood_score(outputs)[0])
        ood = {"score": score, "threshold": float(trust.threshold), "flagged": score > float(trust.threshold),
               "features": {k: float(v[0]) for k, v in trust.standardised(outputs).items()},
               "score_of": " + ".join(trust.features)}
    return raw, ood, calibrated


def safe_log(values: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(values, dtype=np.float64), 1e-12))


def combine(z: dict, features) -> np.ndarray:
    return np.mean([z[f] for f in features], axis=0)


def load_trust(folder) -> Trust | None:
    """The calibration stored in a checkpoint folder, or None when it has none yet."""
    folder = Path(folder)
    path = folder / TRUST_FILE
    if not path.is_file():
        return None
    from pumamed.catalog import read_json_object

    try:
        report = read_json_object(path)
    except ValueError as exc:
        raise CheckpointError(f"{folder}: {exc}") from exc
    if report.get("format") != TRUST_FORMAT:
        raise CheckpointError(f"{path} is not a PumaMed trust file (format {report.get('format')!r})")
    ood = report.get("ood") or {}
    trust = Trust(task=report.get("task"), temperature=(report.get("calibration") or {}).get("temperature"),
                  features=tuple(ood.get("features") or ()), center=dict(ood.get("center") or {}),
                  scale=dict(ood.get("scale") or {}), threshold=ood.get("threshold"), report=report)
    if "mahalanobis" in trust.center:
        from pumamed.net.files import read_tensors

        tensors = read_tensors(folder / TRUST_TENSORS)
        try:
            trust.code_mean = tensors["code_mean"].double().numpy()
            trust.code_precision = tensors["code_precision"].double().numpy()
        except KeyError as exc:
            raise CheckpointError(f"{folder / TRUST_TENSORS} lacks {exc}") from exc
        if "class_centroids" in tensors:  # checkpoints calibrated before centroids have none
            trust.class_centroids = tensors["class_centroids"].double().numpy()
        if "detail_mahalanobis" in trust.center:
            try:
                trust.detail_mean = tensors["detail_mean"].double().numpy()
                trust.detail_precision = tensors["detail_precision"].double().numpy()
            except KeyError as exc:
                raise CheckpointError(f"{folder / TRUST_TENSORS} lacks {exc}") from exc
    return trust


def class_centroids(mu: np.ndarray, labels, task: str | None) -> np.ndarray | None:
    """The mean code of each class (classes x latent_dim) for a binary or multiclass task; None
    for other tasks or a class without training images."""
    if labels is None or task not in ("binary", "multiclass"):
        return None
    labels = np.asarray(labels).reshape(len(mu), -1)[:, 0].astype(int)
    present = np.unique(labels)
    classes = int(labels.max()) + 1
    if len(present) != classes or classes < 2:
        return None
    return np.stack([np.asarray(mu, dtype=np.float64)[labels == k].mean(0) for k in range(classes)])


# --- temperature scaling and calibration figures -----------------------------------------------
def logits_to_proba(logits, task: str, temperature: float = 1.0) -> np.ndarray:
    """Probabilities N x classes (binary: [1 - p, p] from the last logit) of logits / temperature."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    if task == "multiclass":
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)
    if task == "binary":
        p = _sigmoid(z[:, -1])
        return np.stack([1 - p, p], axis=1)
    return _sigmoid(z)


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


def negative_log_likelihood(proba: np.ndarray, labels: np.ndarray, task: str) -> float:
    eps = 1e-12
    proba = np.clip(np.asarray(proba, dtype=np.float64), eps, 1 - eps)
    labels = np.asarray(labels)
    if task == "multilabel":
        y = labels.astype(np.float64)
        return float(-(y * np.log(proba) + (1 - y) * np.log(1 - proba)).mean())
    y = labels.astype(int)
    return float(-np.log(proba[np.arange(len(y)), y]).mean())


def brier_score(proba: np.ndarray, labels: np.ndarray, task: str) -> float:
    """Multiclass: mean over images of sum over classes (p_k - y_k)^2; binary: mean (p - y)^2 of
    the positive class; multilabel: mean over images and labels."""
    proba = np.asarray(proba, dtype=np.float64)
    labels = np.asarray(labels)
    if task == "multilabel":
        return float(((proba - labels.astype(np.float64)) ** 2).mean())
    if task == "binary":
        return float(((proba[:, 1] - labels.astype(np.float64)) ** 2).mean())
    onehot = np.eye(proba.shape[1])[labels.astype(int)]
    return float(((proba - onehot) ** 2).sum(1).mean())


def _confidence_and_correct(proba: np.ndarray, labels: np.ndarray, task: str):
    proba = np.asarray(proba, dtype=np.float64)
    labels = np.asarray(labels)
    if task == "multilabel":
        p = proba.ravel()
        y = labels.astype(bool).ravel()
        return np.maximum(p, 1 - p), (p >= 0.5) == y
    return proba.max(1), proba.argmax(1) == labels.astype(int)


def reliability_bins(proba, labels, task: str, bins: int = ECE_BINS) -> list[dict]:
    """Equal-width bins of top-label confidence: count, mean confidence and accuracy per bin."""
    conf, correct = _confidence_and_correct(proba, labels, task)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": n,
                     "confidence": float(conf[members].mean()) if n else None,
                     "accuracy": float(correct[members].mean()) if n else None})
    return rows


def expected_calibration_error(proba, labels, task: str, bins: int = ECE_BINS) -> float:
    """ECE of the top-label confidence, equal-width bins (Guo et al. 2017): sum over bins of
    (share of images) x |accuracy - mean confidence|. Multilabel: every label as a binary call."""
    rows = reliability_bins(proba, labels, task, bins)
    total = sum(r["n"] for r in rows)
    return float(sum(r["n"] / total * abs(r["accuracy"] - r["confidence"]) for r in rows if r["n"]))


def calibration_figures(proba, labels, task: str, bins: int = ECE_BINS) -> dict:
    return {"ece": expected_calibration_error(proba, labels, task, bins), "brier": brier_score(proba, labels, task),
            "nll": negative_log_likelihood(proba, labels, task)}


def ece_noise_floor(proba, task: str, bins: int = ECE_BINS, draws: int = 200, seed: int = 0) -> dict:
    """The ECE a *perfectly* calibrated model with these probabilities would show on this many
    images: labels drawn from the probabilities themselves, ``draws`` times (seeded). On a small
    split (e.g. 93 images) this floor is well above zero, so an ECE below it is no evidence of
    miscalibration."""
    proba = np.asarray(proba, dtype=np.float64)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        if task == "multiclass":
            cumulative = proba.cumsum(1)
            labels = (rng.random((len(proba), 1)) > cumulative).sum(1).clip(0, proba.shape[1] - 1)
        elif task == "binary":
            labels = (rng.random(len(proba)) < proba[:, 1]).astype(int)
        else:
            labels = (rng.random(proba.shape) < proba).astype(int)
        values.append(expected_calibration_error(proba, labels, task, bins))
    return {"mean": float(np.mean(values)), "p90": float(np.quantile(values, 0.9)), "draws": draws}


def fit_temperature(logits, labels, task: str) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of softmax / sigmoid
    (logits / T) on the given (validation) labels. Monotone for binary and multilabel tasks and
    argmax-preserving for multiclass, so decisions do not change."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)

    def loss(log_t):
        return negative_log_likelihood(logits_to_proba(logits, task, math.exp(log_t)), labels, task)

    best = minimize_scalar(loss, bounds=(math.log(0.02), math.log(50.0)), method="bounded",
                           options={"xatol": 1e-5})
    return float(math.exp(best.x))


# --- OOD figures -------------------------------------------------------------------------------
def ood_auroc(in_scores, out_scores) -> float:
    """AUROC of separating out-of-distribution images (positives, higher score) from in-distribution
    ones; 0.5 = no separation."""
    from sklearn.metrics import roc_auc_score

    in_scores, out_scores = np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)
    y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(roc_auc_score(y, np.r_[in_scores, out_scores]))


def relation(own_datasets, other: str) -> str:
    """'far' (another modality), 'near' (the same modality, or a same-organ pair such as breast
    ultrasound and mammography) of a registered dataset relative to the model's own datasets."""
    from pumamed.imaging.registry import DATASETS

    own_modalities = {DATASETS[n].modality for n in own_datasets if n in DATASETS}
    modality = DATASETS[other].modality if other in DATASETS else None
    if modality is None:
        return "unknown"
    if modality in own_modalities:
        return "near"
    if any(modality in pair and own_modalities & pair for pair in NEAR_MODALITY_PAIRS):
        return "near"
    return "far"


from pumamed.trust_figures import calibration_rows, ood_rows  # noqa: E402,F401 (re-exported)


def summary(report: dict) -> dict:
    """Flat figures for a model card: temperature, test ECE before/after, false alarms, worst far
    and near AUROC."""
    test = report.get("test") or {}
    out = {}
    cal = test.get("calibration") or {}
    if cal:
        out["temperature"] = cal.get("temperature")
        out["ECE before"] = cal["before"]["ece"]
        out["ECE after"] = cal["after"]["ece"]
    ood = test.get("ood") or {}
    if ood:
        out["OOD false alarms"] = ood.get("false_alarm_rate")
        for kind in ("far", "near"):
            values = [v["auroc"] for v in ood.get("datasets", {}).values() if v["relation"] == kind]
            if values:
                out[f"worst {kind}-OOD AUROC"] = min(values)
    return out


def reliability_diagram(proba_before, proba_after, labels, task: str, path, title: str = "",
                        bins: int = ECE_BINS) -> Path:
    """A PNG reliability diagram (accuracy against confidence per bin, before and after calibration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=120)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    for proba, name, colour in ((proba_before, "before", "#d95f02"), (proba_after, "after", "#1b9e77")):
        rows = [r for r in reliability_bins(proba, labels, task, bins) if r["n"]]
        ece = expected_calibration_error(proba, labels, task, bins)
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o", color=colour,
                label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title or "reliability diagram", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def to_json(report: dict) -> str:
    from pumamed.net.files import _jsonable

    return json.dumps(_jsonable(report))
