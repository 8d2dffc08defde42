"""What ``python -m pumamed train`` does, as a library function.

* one dataset, no ``init``: PumaMedNet (beta-VAE + classifier head on mu) from scratch;
* several datasets: pretraining on the mix, with one auxiliary head over the concatenated label
  space (weak supervision, each sample scored on its own dataset's slice);
* one dataset with ``init``: transfer from a pretrained PumaMedNet, reporting both
  (a) the frozen encoder + logistic regression on mu and (b) fine-tuning (the saved model);
* ``arch="resnet18"``: the ResNet-18 baseline on the same data, size and splits;
  ``arch="convnet"``: a plain VGG-style classifier, likewise (:mod:`pumamed.net.baseline`).
"""

from __future__ import annotations

import logging
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pumamed.errors import CheckpointError, InputError
from pumamed.net import checkpoint as ckpt
from pumamed.net.baseline import BASELINE_ARCHITECTURES, BASELINE_NAMES
from pumamed.net.card import make_card
from pumamed.net.data import ArrayData, load_arrays
from pumamed.net.train import TrainConfig, fit

_LOG = logging.getLogger(__name__)  # where messages go when no `log` is given


@dataclass
class RunSpec:
    datasets: list[str]
    out: Path
    arch: str = "pumamednet"
    size: int = 64
    latent: int = 32
    widths: tuple[int, ...] = (16, 32, 64, 128)
    weight_map: str = "learned"
    decoder: str | None = None  # None: the --init model's decoder, else "transposed"
    architecture_given: tuple[str, ...] = ()  # latent / widths / weight_map set by the user (checked against --init)
    attention_resolution: int = 8
    classifier_hidden: int = 0
    detail_channels: int = 0  # > 0: a hierarchical model with a spatial detail code (see the model)
    detail_resolution: int = 16
    detail_dropout: float = 0.5
    detail_prior: str | None = None  # None: the --init model's, else "standard"
    init: Path | None = None
    keep_head: bool = False  # with init on the same dataset and classes: continue its classifier head
    teacher: tuple[Path, ...] = ()  # trained classifiers (e.g. ResNet-18 baselines) to distil from, as one ensemble
    # the reading terms' independent classifier(s) (TrainConfig.walk_weight, global_read_weight):
    # a folder, or several (a panel: each must read the pictures)
    walk_reader: Path | tuple[Path, ...] | None = None
    resume: bool = False
    data_dir: str | None = None
    report_test: bool = True
    calibrate: bool = True  # fit trust.json (temperature, OOD score) at the end, see pumamed.net.trust
    train: TrainConfig = field(default_factory=TrainConfig)


def _option_text(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def _check_names(names: list[str]) -> list[str]:
    names = [n.strip() for n in names if n and n.strip()]
    if not names:
        raise InputError("give at least one dataset in `dataset` (names separated by commas)")
    if len(set(names)) != len(names):
        raise InputError(f"a dataset is listed twice in {names}")
    return names


# Layers whose shape depends on the image size (flattened bottleneck <-> latent): the only ones
# allowed to start fresh when a model pretrained at one size is transferred to another.
SIZE_DEPENDENT = ("encoder.to_latent.", "decoder.from_latent.")


def transfer_weights(target: torch.nn.Module, source: torch.nn.Module, *, new_size: bool = False,
                     keep_head: bool = False) -> list[str]:
    """Copy every tensor of ``source`` whose name and shape match ``target`` (encoder, decoder,
    weight net); the new classifier stays freshly initialised, unless ``keep_head`` (a run that
    continues training on the same classes), where the classifier's tensors are copied too and
    must all fit. Returns the copied names.

    Every encoder tensor must transfer, except, with ``new_size`` (fine-tuning at another image
    size than the pretraining), the latent projection, whose input is the flattened bottleneck:
    convolution filters do not depend on the image size. A detail code added to a model that had
    none (its encoder head, ``encoder.to_detail``) starts fresh too."""
    src = source.state_dict()
    own = target.state_dict()
    heads = ("aux_heads",) if keep_head else ("classifier", "aux_heads")
    copied = [k for k, v in src.items() if k in own and own[k].shape == v.shape and not k.startswith(heads)]
    if keep_head:
        head = [k for k in own if k.startswith("classifier")]
        if not head or any(k not in copied for k in head):
            raise CheckpointError("`keep_head`: the `init` model's classifier head does not fit this model "
                                  "(another number of classes, latent dimensions or hidden units)")
    encoder = [k for k in own if k.startswith("encoder.") and not (new_size and k.startswith(SIZE_DEPENDENT))
               and not (k.startswith("encoder.to_detail.") and not any(n.startswith("encoder.to_detail.") for n in src))]
    missing = [k for k in encoder if k not in copied]
    if missing:
        raise CheckpointError(f"the `init` model does not fit: {len(missing)} encoder tensors differ "
                              f"(e.g. {missing[0]}); use the same `size`, `latent` and widths as its pretraining")
    with torch.no_grad():
        target.load_state_dict({**own, **{k: src[k] for k in copied}})
    return copied


def linear_probe(model, train: ArrayData, val: ArrayData, test: ArrayData | None, device) -> dict:
    """(a) Frozen encoder: standardised mu -> logistic regression, C chosen on validation AUC.
    Returns metrics on val (and test) plus the chosen C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    from pumamed.net.metrics import batched_outputs, classification_metrics

    def features(data):
        return batched_outputs(model, data.images, device, want_recon=False)["mu"]

    x_train, x_val = features(train), features(val)
    scaler = StandardScaler().fit(x_train)
    x_train, x_val = scaler.transform(x_train), scaler.transform(x_val)
    y_train = train.labels.numpy()
    best = None
    for c in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0):
        base = LogisticRegression(C=c, max_iter=2000)
        clf = OneVsRestClassifier(base) if train.task == "multilabel" else base
        clf.fit(x_train, y_train)
        proba = _probe_proba(clf, x_val, train.task)
        val_metrics = classification_metrics(val.labels.numpy(), proba, val.task, val.class_names)
        score = (val_metrics["auc"] or {}).get("macro") or 0.0
        if best is None or score > best[0]:
            best = (score, c, clf, val_metrics)
    out = {"method": "frozen encoder + logistic regression on standardised mu", "C": best[1], "val": best[3]}
    if test is not None:
        x_test = scaler.transform(features(test))
        out["test"] = classification_metrics(test.labels.numpy(), _probe_proba(best[2], x_test, test.task),
                                             test.task, test.class_names)
    return out


def _probe_proba(clf, x, task):
    proba = clf.predict_proba(x)
    if task == "binary" and proba.ndim == 2 and proba.shape[1] == 2:
        return proba
    return np.asarray(proba)


class TeacherEnsemble(nn.Module):
    """Several trained classifiers read as one teacher: the mean of their logits (for softmax
    outputs the normalised geometric mean of the members' probabilities, for sigmoid outputs the
    geometric mean of their odds). The averaged soft labels carry less of any one run's seed
    noise; whether that makes a better student is an empirical question (docs/pumamed_net.md)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = [m.classify(images) if hasattr(m, "classify") else m(images) for m in self.members]
        return torch.stack(logits).mean(0)


class ResizedInput(nn.Module):
    """A classifier trained at another image size, reading each batch resized to its own
    (bilinear, antialiased): a 64-px model can teach a 128-px student."""

    def __init__(self, model: nn.Module, size: int):
        super().__init__()
        self.model = model
        self.size = int(size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = nn.functional.interpolate(images, size=(self.size, self.size), mode="bilinear",
                                           antialias=True, align_corners=False)
        return self.model.classify(images) if hasattr(self.model, "classify") else self.model(images)


def _load_one_teacher(folder: Path, train: ArrayData, size: int, role: str = "teacher"):
    """One trained classifier checked against the run (``role`` names the option in messages)."""
    loaded = ckpt.load_model(folder, device="cpu")
    model_cfg = loaded.config.get("model", {})
    has_head = loaded.arch in BASELINE_ARCHITECTURES or getattr(loaded.model, "classifier", None) is not None
    if not has_head:
        raise InputError(f"the `{role}` model in {folder} has no classifier head")
    problems = []
    if list(model_cfg.get("class_names", [])) != list(train.class_names):
        problems.append(f"classes {model_cfg.get('class_names')} (this run: {list(train.class_names)})")
    if model_cfg.get("task") != train.task:
        problems.append(f"task {model_cfg.get('task')!r} (this run: {train.task!r})")
    if problems:
        raise InputError(f"the `{role}` model in {folder} does not match this run: " + "; ".join(problems))
    val_auc = None
    try:
        metrics = json.loads((Path(folder) / ckpt.METRICS_FILE).read_text(encoding="utf-8"))
        val_auc = ((metrics.get("val") or {}).get("auc") or {}).get("macro")
    except (OSError, ValueError):
        pass
    name = BASELINE_NAMES.get(loaded.arch, "PumaMedNet")
    description = f"{name} from {Path(folder).name}" + (f" (val macro AUC {val_auc:.4f})" if val_auc else "")
    teacher, teacher_size = loaded.model, int(model_cfg.get("image_size", size))
    if teacher_size != size:
        teacher = ResizedInput(teacher, teacher_size)
        description += f", reading the {size}-px images resized to its {teacher_size} px"
    return teacher, {"path": str(folder), "arch": loaded.arch, "val_auc": val_auc, "description": description,
                     "image_size": teacher_size}


def _load_classifiers(folders, train: ArrayData, size: int, role: str):
    """(folders as Paths, [(model, info), ...]) for one folder or several, each checked against the run."""
    folders = [Path(f) for f in ([folders] if isinstance(folders, (str, Path)) else folders)]
    if len(set(folders)) != len(folders):
        raise InputError(f"`{role}` names the same folder twice")
    return folders, [_load_one_teacher(folder, train, size, role=role) for folder in folders]


def load_teacher(folders, train: ArrayData, size: int):
    """Trained classifier checkpoints (safetensors, never a pickle) for distillation, each checked
    against the run: same classes in the same order, same task; a teacher of another image size
    reads the images resized to its own (:class:`ResizedInput`). Several folders
    make one ensemble teacher (mean logits). Returns (model, a description for config.json and
    the model card)."""
    if train.task not in ("binary", "multiclass", "multilabel"):
        raise InputError("`teacher` distils a classifier: train on one labelled dataset, not on a mix")
    folders, loaded = _load_classifiers(folders, train, size, role="teacher")
    if len(loaded) == 1:
        return loaded[0]
    members = [info for _, info in loaded]
    archs = sorted({info["arch"] for info in members})
    names = " + ".join(BASELINE_NAMES.get(a, "PumaMedNet") for a in archs)
    aucs = [info["val_auc"] for info in members if info["val_auc"] is not None]
    description = (f"an ensemble of {len(members)} {names} runs ({', '.join(Path(f).name for f in folders)}; "
                   f"mean logits" + (f"; members' val macro AUC {min(aucs):.4f}-{max(aucs):.4f}" if aucs else "")
                   + ")")
    return TeacherEnsemble([model for model, _ in loaded]), {
        "paths": [str(f) for f in folders], "arch": archs[0] if len(archs) == 1 else "+".join(archs),
        "members": members, "description": description}


def load_readers(folders, train: ArrayData, size: int):
    """The reading terms' independent classifiers (walk term, global read): one checkpoint folder,
    or several as a panel (:class:`TeacherEnsemble` as the container; the terms ask *each* member
    to read the picture, the mean of their losses, so no one reader's cues satisfy them). Each is
    checked against the run like a teacher. Returns (module, a description for config.json)."""
    folders, loaded = _load_classifiers(folders, train, size, role="walk-reader")
    if len(loaded) == 1:
        return loaded[0]
    members = [info for _, info in loaded]
    description = (f"panel of {len(members)} classifiers ({'; '.join(info['description'] for info in members)}; "
                   f"each one's loss counted)")
    return TeacherEnsemble([model for model, _ in loaded]), {
        "paths": [str(f) for f in folders], "arch": "+".join(info["arch"] for info in members),
        "members": members, "description": description}


def build_model(spec: RunSpec, train: ArrayData):
    from pumamed.net.baseline import ResNetConfig, baseline_class
    from pumamed.net.model import PumaMedNet, PumaMedNetConfig

    if spec.arch in BASELINE_ARCHITECTURES:
        if train.task not in ("binary", "multiclass", "multilabel"):
            raise InputError(f"the {BASELINE_NAMES[spec.arch]} baseline trains on one labelled dataset, not on a mix")
        return baseline_class(spec.arch)(ResNetConfig(image_size=spec.size, num_classes=len(train.class_names),
                                                      task=train.task, class_names=list(train.class_names)))
    if spec.arch != "pumamednet":
        raise InputError(f"unknown `arch` {spec.arch!r} (pumamednet, {', '.join(BASELINE_ARCHITECTURES)})")
    try:
        if train.task == "mix":
            aux = {"mix": int(train.labels.shape[1])} if spec.train.aux_weight > 0 else {}
            head = dict(aux_heads=aux)
        else:
            head = dict(num_classes=len(train.class_names), task=train.task, class_names=list(train.class_names),
                        classifier_hidden=spec.classifier_hidden)
        cfg = PumaMedNetConfig(image_size=spec.size, latent_dim=spec.latent, widths=spec.widths,
                               attention_resolution=spec.attention_resolution,
                               weight_map=spec.weight_map, decoder=spec.decoder,
                               detail_channels=spec.detail_channels, detail_resolution=spec.detail_resolution,
                               detail_dropout=spec.detail_dropout, detail_prior=spec.detail_prior or "standard",
                               **head)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    return PumaMedNet(cfg)


def run(spec: RunSpec, log=None) -> dict:
    from pumamed.config import select_device
    from pumamed.net.metrics import batched_outputs, classification_metrics, model_cost

    log = log or _LOG.info
    names = _check_names(spec.datasets)
    spec.out = Path(spec.out)
    log(f"loading {', '.join(names)} at {spec.size} px ...")
    train = load_arrays(names, "train", spec.size, spec.data_dir)
    val = load_arrays(names, "val", spec.size, spec.data_dir)
    is_mix = len(names) > 1
    test = None
    if spec.report_test and not is_mix:
        test = load_arrays(names, "test", spec.size, spec.data_dir)

    init_loaded, init_size = None, None
    if spec.train.train_only == "decoder" and (spec.init is None or (train.task != "mix" and not spec.keep_head)):
        raise InputError("--train-only decoder trains the decoder of an --init model with its encoder and classifier "
                         "held: give --init DIR, and --keep-head when the dataset has classes")
    if spec.init is not None:
        if spec.arch != "pumamednet":
            raise InputError(f"`init` transfers a pretrained PumaMedNet; it does not apply to `arch` {spec.arch}")
        init_loaded = ckpt.load_model(spec.init, device="cpu")
        init_model_cfg = init_loaded.config.get("model", {})
        init_size = int(init_model_cfg.get("image_size", spec.size))
        spec.attention_resolution = int(init_model_cfg.get("attention_resolution", spec.attention_resolution))
        if init_size != spec.size:
            # Keep self-attention at the same stage of the network, so every layer keeps its shape.
            spec.attention_resolution = spec.attention_resolution * spec.size // init_size
            log(f"the initial model was trained at {init_size} px, this run is at {spec.size} px: its convolution "
                f"filters transfer (self-attention stays at the same stage, now {spec.attention_resolution} px wide), "
                f"the latent projections (encoder.to_latent, decoder.from_latent) start fresh")
        pretrained = {"latent": int(init_model_cfg.get("latent_dim", spec.latent)),
                      "widths": tuple(init_model_cfg.get("widths", spec.widths)),
                      "weight_map": init_model_cfg.get("weight_map", spec.weight_map),
                      "detail_channels": int(init_model_cfg.get("detail_channels", 0))}
        if not pretrained["detail_channels"] and "detail_channels" in spec.architecture_given:
            pretrained["detail_channels"] = spec.detail_channels  # a new detail code may be added to any model
        if init_size != spec.size and "latent" in spec.architecture_given:
            # the latent projections start fresh at a new size anyway, so --latent is free there
            pretrained["latent"] = spec.latent
        conflicts = [f"`{name}` {_option_text(getattr(spec, name))} (pretrained: "
                     f"{_option_text(value)})" for name, value in pretrained.items()
                     if name in spec.architecture_given and getattr(spec, name) != value]
        if conflicts:
            raise InputError("`init` fixes the architecture, and " + "; ".join(conflicts) + " differs: leave "
                             "these options out, or pretrain with them")
        spec.latent, spec.widths, spec.weight_map = pretrained["latent"], pretrained["widths"], pretrained["weight_map"]
        init_detail = int(init_model_cfg.get("detail_channels", 0))
        if "detail_channels" not in spec.architecture_given:
            spec.detail_channels = init_detail
        elif spec.detail_channels and not init_detail:
            log(f"adding a detail code ({spec.detail_channels} x {spec.detail_resolution} px) to the pretrained "
                f"model: its encoder head and decoder input start fresh")
        if spec.detail_channels and init_detail:
            # the detail code sits at the same stage of the network at any image size
            init_resolution = int(init_model_cfg.get("detail_resolution", 16))
            spec.detail_resolution = init_resolution * spec.size // init_size
            spec.detail_dropout = float(init_model_cfg.get("detail_dropout", spec.detail_dropout))
        if spec.decoder is None:
            spec.decoder = init_loaded.model.config.decoder
        if spec.detail_prior is None:
            spec.detail_prior = init_model_cfg.get("detail_prior", "standard")
        elif spec.detail_prior != init_model_cfg.get("detail_prior", "standard") and spec.detail_channels:
            log(f"the detail code's prior becomes {spec.detail_prior}: its prior network starts as N(0, I)")

    from pumamed.config import seed_everything

    seed_everything(spec.train.seed)  # the initial weights depend on the seed, not on the process
    spec.decoder = spec.decoder or "transposed"
    model = build_model(spec, train)
    device = select_device()
    meta = {"data": {"datasets": names, "size": spec.size, "n_train": len(train), "n_val": len(val),
                     "n_test": len(test) if test is not None else None, "data_dir_name": "PUMAMED_DATA_DIR",
                     "init": str(spec.init) if spec.init else None,
                     "init_size": init_size if spec.init else None,
                     "init_datasets": (init_loaded.config.get("data", {}).get("datasets", []) if init_loaded else [])}}
    transfer = {}
    if init_loaded is not None:
        if spec.keep_head:
            # A head reads the global code: it only carries over to the same classes at the same size.
            init_data = init_loaded.config.get("data", {})
            if list(init_data.get("datasets", [])) != list(names) or init_size != spec.size \
                    or list(init_loaded.class_names) != list(train.class_names):
                raise InputError("--keep-head continues a run on the same dataset, classes and image size; "
                                 f"the --init model was trained on {init_data.get('datasets')} at {init_size} px")
        copied = transfer_weights(model, init_loaded.model, new_size=init_size != spec.size, keep_head=spec.keep_head)
        log(f"initialised {len(copied)} tensors from {spec.init}")
        if train.task in ("binary", "multiclass", "multilabel") and not spec.resume:
            transfer["frozen_encoder_probe"] = linear_probe(model.to(device), train, val, test, device)
            auc = transfer["frozen_encoder_probe"]["val"]["auc"]["macro"]
            log(f"(a) frozen encoder + logistic regression: val macro AUC {auc:.4f}")

    teacher = None
    if spec.teacher:
        teacher, meta["data"]["teacher"] = load_teacher(spec.teacher, train, spec.size)
        log(f"distilling from {meta['data']['teacher']['description']} (weight {spec.train.distill_weight}, "
            f"temperature {spec.train.distill_temperature})")

    walk_reader = None
    reading_terms = [flag for flag, weight in (("--walk-weight", spec.train.walk_weight),
                                               ("--global-read", spec.train.global_read_weight)) if weight > 0]
    if reading_terms:
        if spec.walk_reader is None:
            raise InputError(f"{reading_terms[0]} needs --walk-reader DIR: a classifier trained on the original "
                             "images (not the judge that will score the counterfactuals)")
        if spec.arch != "pumamednet" or train.task not in ("binary", "multiclass"):
            raise InputError(f"{reading_terms[0]} trains a PumaMedNet with a binary or multiclass head on one dataset")
        walk_reader, meta["data"]["walk_reader"] = load_readers(spec.walk_reader, train, spec.size)
        if spec.train.walk_weight > 0:
            log(f"walk term: {meta['data']['walk_reader']['description']} reads the walked pictures "
                f"(weight {spec.train.walk_weight}, span {spec.train.walk_span})")
        if spec.train.global_read_weight > 0:
            log(f"global read: {meta['data']['walk_reader']['description']} reads the global code's pictures "
                f"(weight {spec.train.global_read_weight})")
    elif spec.walk_reader is not None:
        raise InputError("--walk-reader is read by the walk term or the global read: give --walk-weight too "
                         "(e.g. 50) or --global-read")
    if spec.train.global_read_detail == "other" and (spec.train.global_read_weight <= 0 or not model.has_detail):
        raise InputError("--global-read-detail other decodes each global code with another image's detail code: it "
                         "needs --global-read and a model with a detail code (--detail-channels)")
    if spec.train.detail_independence_weight > 0 and (
            spec.arch != "pumamednet" or not model.has_detail or train.task not in ("binary", "multiclass")):
        raise InputError("--detail-independence trains a PumaMedNet with a detail code (--detail-channels) and a "
                         "binary or multiclass head")

    def card_fn(metrics, config):
        return make_card(config, metrics)

    metrics = fit(model, train, val, spec.train, spec.out, resume=spec.resume, device=device, meta=meta,
                  card_fn=card_fn, teacher=teacher, walk_reader=walk_reader, log=log)
    from pumamed.net.distributed import is_main_process

    if not is_main_process():
        return metrics
    # Final report on the selected (best-on-validation) checkpoint.
    loaded = ckpt.load_model(spec.out, device=device)
    final = dict(metrics)
    if spec.resume and (spec.out / ckpt.METRICS_FILE).is_file():
        previous = json.loads((spec.out / ckpt.METRICS_FILE).read_text())
        transfer = transfer or previous.get("transfer", {})
    if test is not None and train.task in ("binary", "multiclass", "multilabel"):
        out = batched_outputs(loaded.model, test.images, device)
        final["test"] = classification_metrics(test.labels.numpy(), out["proba"], test.task, test.class_names)
        if "recon_mse" in out:
            final["test"]["recon_mse"] = float(out["recon_mse"].mean())
    if transfer:
        transfer["finetune"] = {"method": "encoder, decoder and head trained jointly (classification + VAE loss)",
                                "val": final.get("val"), "test": final.get("test")}
        final["transfer"] = transfer
    if loaded.arch == "pumamednet" or train.task != "mix":
        if getattr(loaded.model, "classifier", None) is not None or loaded.arch in BASELINE_ARCHITECTURES:
            final["cost"] = model_cost(loaded.model, spec.size)
    ckpt.atomic_write_json(spec.out / ckpt.METRICS_FILE, final)
    ckpt.atomic_write_text(spec.out / ckpt.CARD_FILE, make_card(loaded.config, final))
    if spec.calibrate:
        # trust signals (temperature, OOD threshold) on the validation split: what `calibrate` does
        from pumamed.net.calibration import calibrate_checkpoint

        calibrate_checkpoint(spec.out, data_dir=spec.data_dir, device=device,
                             report_test=spec.report_test and not is_mix, log=log)
    return final
