"""``python -m pumamed refit-head``: a new classifier head on a trained PumaMedNet's clean codes.

The encoder and decoder are copied unchanged (the pictures stay the same); the head that reads
``mu`` is refitted on the posterior means of the clean training images and chosen on the
validation split (:mod:`pumamed.net.head_refit`). The result is a new checkpoint folder: the
source is never modified. Trust signals are recalibrated for the new head unless told not to.
"""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("refit-head", help="refit a PumaMedNet's classifier head on its frozen encoder's codes "
                                                 "of the clean training images (writes a new checkpoint)")
    p.add_argument("--model", required=True, help="checkpoint folder of a trained PumaMedNet with a classifier")
    p.add_argument("--out", required=True, help="new checkpoint folder (must not exist yet, or be empty)")
    p.add_argument("--dataset", help="the model's own dataset (default: the one in its config.json)")
    p.add_argument("--data-dir", help="data directory (default: $PUMAMED_DATA_DIR or ./data)")
    p.add_argument("--hidden", default="0,64,128,256",
                   help="hidden units of the candidate heads, comma-separated (0: linear; default 0,64,128,256)")
    p.add_argument("--weight-decay", default="1e-4,1e-2", help="candidate weight decays, comma-separated")
    p.add_argument("--steps", type=int, default=600, help="full-batch optimisation steps per candidate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, mps (default: automatic)")
    p.add_argument("--no-test", action="store_true", help="do not report test figures (select on validation only)")
    p.add_argument("--no-calibrate", action="store_true", help="do not refit the trust signals for the new head")
    p.set_defaults(func=run_refit_head)


def _numbers(text: str, kind, flag: str) -> tuple:
    from pumamed.errors import InputError

    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise InputError(f"{flag} takes comma-separated numbers, got {text!r}") from exc
    if not values or any(v < 0 for v in values):
        raise InputError(f"{flag} takes non-negative numbers, got {text!r}")
    return values


def run_refit_head(args) -> int:
    import json
    import shutil
    from pathlib import Path

    from pumamed.config import select_device
    from pumamed.errors import InputError
    from pumamed.net import checkpoint as ckpt
    from pumamed.net.card import make_card
    from pumamed.net.data import load_arrays
    from pumamed.net.head_refit import refit_head
    from pumamed.net.metrics import batched_outputs, classification_metrics, model_cost
    from pumamed.net.trust import TRUST_FILE, TRUST_TENSORS

    hidden = _numbers(args.hidden, int, "--hidden")
    decays = _numbers(args.weight_decay, float, "--weight-decay")
    if args.steps < 1:
        raise InputError("--steps must be at least 1")
    source, out = Path(args.model), Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not empty: choose a new folder (nothing is overwritten)")
    if out.resolve() == source.resolve():
        raise InputError("--out must be a new folder, not the model's own")
    device = select_device(args.device)
    loaded = ckpt.load_model(source, device=device)
    if loaded.arch != "pumamednet":
        raise InputError(f"{source} is a {loaded.arch}; refit-head applies to a PumaMedNet's head on its codes")
    names = [args.dataset] if args.dataset else list(loaded.config.get("data", {}).get("datasets", []))
    if len(names) != 1:
        raise InputError(f"{source} was trained on {names or 'no recorded dataset'}: name one dataset with --dataset")
    size = int(loaded.model.config.image_size)
    train = load_arrays(names, "train", size, data_dir=args.data_dir)
    val = load_arrays(names, "val", size, data_dir=args.data_dir)
    print(f"refitting the head of {source} on {len(train)} {names[0]} training codes ({size} px)")
    report = refit_head(loaded.model, train, val, hidden_options=hidden, weight_decays=decays, steps=args.steps,
                        seed=args.seed, device=device, log=print)

    config = json.loads(json.dumps(loaded.config))
    config.setdefault("data", {})["head_refit"] = {
        "from": str(source), "hidden": report["hidden"], "weight_decay": report["weight_decay"],
        "kept_current_head": report["kept_current_head"],
        "val_macro_auc_before": (report["val_before"].get("auc") or {}).get("macro"),
        "val_macro_auc_after": (report["val_after"].get("auc") or {}).get("macro")}
    metrics = {k: v for k, v in loaded.metrics.items() if k not in ("test", "transfer")}  # the old head's figures
    # keep the reconstruction figures of the validation split; the classification ones are the new head's
    metrics["val"] = {**(loaded.metrics.get("val") or {}), **report["val_after"]}
    metrics["head_refit"] = report
    if not args.no_test:
        test = load_arrays(names, "test", size, data_dir=args.data_dir)
        outputs = batched_outputs(loaded.model, test.images, device)
        metrics["test"] = classification_metrics(test.labels.numpy(), outputs["proba"], test.task, test.class_names)
        if "recon_mse" in outputs:
            metrics["test"]["recon_mse"] = float(outputs["recon_mse"].mean())
    metrics["cost"] = model_cost(loaded.model, size)

    out.mkdir(parents=True, exist_ok=True)
    own_files = {ckpt.WEIGHTS_FILE, ckpt.CONFIG_FILE, ckpt.METRICS_FILE, ckpt.CARD_FILE, TRUST_FILE, TRUST_TENSORS}
    for item in source.iterdir():  # e.g. the weight maps the explorer shows; not the resume state
        if item.is_file() and item.name not in own_files:
            shutil.copy2(item, out / item.name)
    ckpt.save_checkpoint(out, loaded.model, config, metrics, make_card(config, metrics))
    after = (report["val_after"].get("auc") or {}).get("macro")
    before = (report["val_before"].get("auc") or {}).get("macro")
    chosen = "the current head stays" if report["kept_current_head"] else f"hidden units {report['hidden']}"
    print(f"wrote {out}: validation macro AUC {before:.4f} -> {after:.4f} ({chosen})")
    if not args.no_calibrate:
        from pumamed.net.calibration import calibrate_checkpoint

        calibrate_checkpoint(out, dataset=names[0], data_dir=args.data_dir, device=device,
                             report_test=not args.no_test, log=print)
        print(f"recalibrated the trust signals of {out}")
    return 0
