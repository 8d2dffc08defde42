"""``python -m pumamed evaluate``: metrics and cost of a checkpoint on one split of a dataset."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="AUC, accuracy, reconstruction error, parameters, FLOPs and "
                                               "CPU latency of a checkpoint on a dataset split")
    p.add_argument("--model", required=True, help="checkpoint folder (e.g. models/brain)")
    p.add_argument("--dataset", required=True, help="dataset name (e.g. brain_tumor_mri)")
    p.add_argument("--data-dir", help="data directory (default: $PUMAMED_DATA_DIR or ./data)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--device", help="cpu, cuda, mps (default: automatic)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--latency-repeats", type=int, default=30, help="timed single-image runs for the CPU latency")
    p.add_argument("--threads", type=int, help="torch CPU threads for the latency measurement (default: torch's)")
    p.add_argument("--against", help="a second checkpoint (e.g. the ResNet-18 baseline) to compare with on the "
                                     "same images: adds its figures and the macro-AUC difference with a paired "
                                     "bootstrap 95 %% interval")
    p.add_argument("--bootstrap", type=int, default=2000, help="with --against: bootstrap replicates")
    p.add_argument("--seed", type=int, default=0, help="with --against: bootstrap seed")
    p.add_argument("--judge", help="a classifier trained on original images (e.g. the ResNet-18 baseline): adds "
                                   "how faithful the reconstructions and counterfactuals are to the judge "
                                   "(the faithfulness and counterfactuals blocks)")
    p.add_argument("--counterfactual-limit", type=int, default=None,
                   help="with --judge: counterfactuals for at most this many images, stratified by class "
                        "(default: every image of the split)")
    p.add_argument("--max-shift", type=float, default=30.0,
                   help="with --judge: longest counterfactual walk, in latent units")
    p.add_argument("--counterfactual-confidence", type=float, default=0.0, metavar="P",
                   help="with --judge: walk on until the model gives its new class at least this probability "
                        "(default 0: stop where the decision changes)")
    p.add_argument("--counterfactual-direction", choices=["gradient", "centroid"], default="gradient",
                   help="with --judge: walk the global code along the classifier's gradient (default), or from "
                        "the predicted class's mean training code towards the runner-up class's (stored by "
                        "calibrate; up to --counterfactual-span times that distance)")
    p.add_argument("--counterfactual-span", type=float, default=3.0, metavar="F",
                   help="with --counterfactual-direction centroid: the longest walk, in multiples of the distance "
                        "between the two classes' mean codes (default 3; 20 grid points per multiple)")
    p.add_argument("--detail", choices=["image", "mean", "resampled"], default="image",
                   help="with --judge, hierarchical models: the detail code held during the walk")
    p.add_argument("--ood", help="other datasets, comma-separated (e.g. brain_tumor_mri,mini_mias): the AUROC of "
                                 "telling the model's images from theirs by its OOD score, and its false alarms")
    p.add_argument("--reliability", metavar="FILE.png", help="write a reliability diagram (before / after "
                                                             "calibration) to this PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args) -> int:
    import json
    from pathlib import Path

    from pumamed.errors import InputError
    from pumamed.net.evaluate import evaluate_checkpoint

    if args.threads is not None:
        if args.threads < 1:
            raise InputError("--threads must be at least 1")
        import torch

        torch.set_num_threads(args.threads)

    if args.judge is None and (args.counterfactual_limit is not None or args.detail != "image"
                               or args.counterfactual_confidence or args.counterfactual_direction != "gradient"
                               or args.counterfactual_span != 3.0):
        raise InputError("--counterfactual-limit, --counterfactual-confidence, --counterfactual-direction, "
                         "--counterfactual-span and --detail apply with --judge only")
    if args.counterfactual_span != 3.0 and args.counterfactual_direction != "centroid":
        raise InputError("--counterfactual-span applies to the centroid walk (--counterfactual-direction centroid); "
                         "the gradient walk's length is --max-shift")
    if not 0.0 < args.counterfactual_span <= 50.0:
        raise InputError("--counterfactual-span is a positive multiple of the distance between class means, "
                         "at most 50")
    if not 0.0 <= args.counterfactual_confidence < 1.0:
        raise InputError("--counterfactual-confidence is a probability in [0, 1)")
    if args.max_shift <= 0:
        raise InputError("--max-shift must be positive")
    if args.judge is not None and args.counterfactual_direction == "centroid" and Path(args.model).is_dir():
        from pumamed.net.trust import load_trust

        trust = load_trust(args.model)  # said before the minutes of evaluation, not after
        if trust is None or trust.class_centroids is None:
            raise InputError(f"{args.model} stores no class centroids for the centroid walk: run python -m pumamed "
                             f"calibrate --model {args.model}")
    result = evaluate_checkpoint(args.model, args.dataset, split=args.split, data_dir=args.data_dir,
                                 device=args.device, batch_size=args.batch_size,
                                 latency_repeats=args.latency_repeats, against=args.against,
                                 bootstrap=args.bootstrap, seed=args.seed)
    from pumamed.net.calibration import evaluate_trust  # calibration before/after, OOD AUROC (--ood)

    result.update(evaluate_trust(args.model, args.dataset, split=args.split,
                                 ood=args.ood.split(",") if args.ood else None, data_dir=args.data_dir,
                                 device=args.device, batch_size=min(args.batch_size, 128),
                                 reliability=args.reliability))
    if args.judge is not None:
        from pumamed.explain.faithfulness import faithfulness_report

        result.update(faithfulness_report(args.model, args.dataset, args.judge, split=args.split,
                                          data_dir=args.data_dir, device=args.device,
                                          batch_size=min(args.batch_size, 64),
                                          counterfactual_limit=args.counterfactual_limit,
                                          max_shift=args.max_shift, detail=args.detail, seed=args.seed,
                                          min_confidence=args.counterfactual_confidence,
                                          direction=args.counterfactual_direction,
                                          centroid_span=args.counterfactual_span))
    if args.json:
        print(json.dumps(result))
        return 0
    auc = result.get("auc") or {}
    print(f"{result['model']} on {result['dataset']} [{result['split']}], n = {result['n']}")
    if auc:
        print(f"  macro AUC {auc['macro']:.4f}  accuracy {result['accuracy']:.4f}  "
              f"balanced accuracy {result['balanced_accuracy']:.4f}")
        for name, value in (auc.get("per_class") or {}).items():
            print(f"    {name:24} AUC {value:.4f}" if value is not None else f"    {name:24} AUC n/a")
    if result.get("reconstruction_error") is not None:
        print(f"  reconstruction MSE {result['reconstruction_error']:.5f}")
    quality = result.get("reconstruction")
    if quality:
        ssim_text = f", SSIM {quality['ssim']['mean']:.3f}" if quality.get("ssim") else ""
        print(f"  reconstruction PSNR {quality['psnr_db']['mean']:.2f} dB{ssim_text}")
    faithful = result.get("faithfulness")
    if faithful:
        ratio = faithful["ratio"]
        print(f"  judge {faithful['judge']} ({faithful['judge_arch']}, {faithful['judge_image_size']} px): macro AUC "
              f"{faithful['auc_original']:.4f} on originals, {faithful['auc_reconstruction']:.4f} on "
              f"reconstructions; faithfulness {'n/a' if ratio is None else f'{ratio:.3f}'}")
        alone = faithful.get("global_code")
        if alone and alone.get("auc") is not None:
            alone_ratio = "n/a" if alone["ratio"] is None else f"{alone['ratio']:.3f}"
            print(f"    the global code alone (detail at its prior mean): judge macro AUC {alone['auc']:.4f}, "
                  f"ratio {alone_ratio}")
            if alone.get("auc_other_detail") is not None:
                print(f"    the global code with the detail of an image of another class: judge macro AUC "
                      f"{alone['auc_other_detail']:.4f} for the global code's class")
    cf = result.get("counterfactuals")
    if cf and "validity" in cf:
        walk = (cf.get("settings") or {}).get("walk", "gradient")
        print(f"  counterfactuals (n = {cf['n']}, {walk} walk): validity {cf['validity']['share']:.1%} (the model's "
              f"and the judge's decisions both changed; the model's alone {cf['model_decision_changed']['share']:.1%}), "
              f"proximity SSIM {cf['proximity_ssim']['mean']:.3f}")
        if cf.get("localisation"):
            print(f"    lesion localisation ratio {cf['localisation']['ratio']['mean']:.2f} "
                  f"({cf['localisation']['n_with_lesion']} images with a lesion)")
    elif cf:
        print(f"  counterfactuals: {cf['skipped']}")
    cal = result.get("calibration") or {}
    if "before" in cal:
        b, a = cal["before"], cal["after"]
        print(f"  calibration (temperature {cal['temperature']:.3f}): ECE {b['ece']:.4f} -> {a['ece']:.4f}, "
              f"Brier {b['brier']:.4f} -> {a['brier']:.4f}, NLL {b['nll']:.4f} -> {a['nll']:.4f}")
    elif cal.get("skipped"):
        print(f"  calibration: {cal['skipped']}")
    ood = result.get("ood")
    if ood:
        print(f"  OOD score {ood['score']}: false alarms {ood['false_alarm_rate']:.1%} of {ood['n']} images")
        for name, row in ood["datasets"].items():
            print(f"    {name:18} ({row['relation']}) AUROC {row['auroc']:.4f}, flagged {row['flagged']:.1%}")
    print(f"  {result['cost_of']}: {result['parameters']:,} parameters, {result['flops'] / 1e6:.1f} MFLOPs, "
          f"{result['cpu_latency_ms']:.2f} ms per image on CPU ({result['cpu_threads']} threads)")
    other, diff = result.get("against"), result.get("difference")
    if other:
        print(f"against {other['model']} ({other['arch']}): macro AUC {other['auc']['macro']:.4f}, "
              f"{other['parameters']:,} parameters, {other['flops'] / 1e6:.1f} MFLOPs, "
              f"{other['cpu_latency_ms']:.2f} ms per image")
        low, high = diff["ci95"]
        print(f"  difference in macro AUC {diff['macro_auc']:+.4f} (95 % CI {low:+.4f} to {high:+.4f}; "
              f"{diff['n_boot']} paired bootstrap replicates)")
    return 0
