"""``python -m pumamed audit``: bias audit of a PumaMedNet's latent space, and the planted shortcut.

    python -m pumamed audit --model models/chest --dataset nih_cxr14_1000 --attribute sex,view --json
    python -m pumamed audit shortcut --dataset pneumoniamnist --rate 0.9 --json
"""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    audit = subparsers.add_parser(
        "audit", help="bias audit of a model's latent space (attribute predictability, subgroups, mitigation)",
        description="Audit a PumaMedNet for a metadata attribute: how predictable it is from mu, which latent "
                    "dimensions carry it, per-group AUC/TPR/FPR/calibration with bootstrap CIs, and the gap "
                    "and AUC before/after removing the attribute subspace or reweighting. "
                    "Subcommand 'shortcut' runs the planted-shortcut experiment.")
    audit.add_argument("--model", help="checkpoint folder, or a name under the models directory (e.g. chest)")
    audit.add_argument("--dataset", help="registered dataset name (e.g. nih_cxr14_1000, mini_mias) or a path")
    audit.add_argument("--attribute", default="all",
                       help="metadata attribute(s), comma-separated: sex, age, age_group, view, density, dataset, "
                            "modality... or 'all' (every attribute the dataset has; default)")
    audit.add_argument("--data-dir", help="data directory (default: $PUMAMED_DATA_DIR or ./data)")
    audit.add_argument("--split", default="test", help="split the classifier is evaluated on (default: test)")
    audit.add_argument("--train-split", default="train", help="split the mitigated heads are fitted on")
    audit.add_argument("--positive", help="positive class for subgroup metrics (name or index; default: "
                                          "class 1, or 'not normal' for multiclass sets with a normal class)")
    audit.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates for the CIs (default 200)")
    audit.add_argument("--max-images", type=int, default=None, help="encode at most this many images per split")
    audit.add_argument("--disentanglement", action="store_true",
                       help="also compute MIG, DCI and SAP with the metadata attributes as factors")
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--device", help="cpu, cuda, mps (default: automatic)")
    audit.add_argument("--json", action="store_true", help="print one JSON object")
    audit.set_defaults(func=run_audit_command)

    sub = audit.add_subparsers(dest="audit_command", metavar="<experiment>")
    shortcut = sub.add_parser("shortcut", help="planted-shortcut experiment: plant a corner token, train, audit, mitigate")
    shortcut.add_argument("--dataset", default="pneumoniamnist", help="dataset (default: pneumoniamnist)")
    shortcut.add_argument("--data-dir", help="data directory (default: $PUMAMED_DATA_DIR or ./data)")
    shortcut.add_argument("--size", type=int, default=32, help="image size, a multiple of 16 (default 32)")
    shortcut.add_argument("--rate", type=float, default=0.95, help="fraction of the marker class's training "
                                                                   "images with the token (default 0.95)")
    shortcut.add_argument("--marker-class", type=int, default=1, help="class index that gets the token (default 1)")
    shortcut.add_argument("--marker-size", type=int, default=0, help="token size in pixels (default size/5)")
    shortcut.add_argument("--corner", default="top_left",
                          choices=["top_left", "top_right", "bottom_left", "bottom_right"])
    shortcut.add_argument("--epochs", type=int, default=4)
    shortcut.add_argument("--latent", type=int, default=16, help="latent dimensions (default 16)")
    shortcut.add_argument("--max-train", type=int, default=400, help="training images (0: all; default 400)")
    shortcut.add_argument("--cls-weight", type=float, default=0.0,
                          help="0: unsupervised VAE + logistic head on mu (default); >0: joint classifier training")
    shortcut.add_argument("--seed", type=int, default=0)
    shortcut.add_argument("--device", help="cpu, cuda, mps (default: cpu, so results do not depend on the box)")
    shortcut.add_argument("--out", help="also write the JSON result to this file")
    shortcut.add_argument("--json", action="store_true", help="print one JSON object")
    shortcut.set_defaults(func=run_shortcut_command)


def _resolve_model(name: str):
    from pathlib import Path

    from pumamed.config import models_dir
    from pumamed.errors import InputError

    path = Path(name).expanduser()
    if path.is_dir():
        return path
    candidate = models_dir() / name
    if candidate.is_dir():
        return candidate
    raise InputError(f"no checkpoint folder at {path} or {candidate}")


def run_audit_command(args) -> int:
    from pumamed.config import select_device
    from pumamed.errors import InputError
    from pumamed.explain.audit import available_attributes, codes_for, mutual_information_matrix, run_audit
    from pumamed.net import load_model

    if not args.model or not args.dataset:
        raise InputError("pass --model DIR and --dataset NAME (or run 'python -m pumamed audit shortcut')")
    if args.n_boot < 0:
        raise InputError("--n-boot must be 0 or more")
    loaded = load_model(_resolve_model(args.model), device=select_device(args.device))
    test = codes_for(loaded, args.dataset, args.split, args.data_dir, args.max_images, args.seed)
    train = codes_for(loaded, args.dataset, args.train_split, args.data_dir, args.max_images, args.seed)
    found = available_attributes(test.metadata)
    wanted = found if args.attribute.strip().lower() == "all" else [a.strip() for a in args.attribute.split(",") if a.strip()]
    if not wanted:
        raise InputError(f"{args.dataset} has no metadata attribute with two groups of 5+ images to audit")
    reports = {}
    for attribute in wanted:
        reports[attribute] = run_audit(train, test, attribute, positive=args.positive, n_boot=args.n_boot,
                                       seed=args.seed).to_dict()
    out = {"model": str(loaded.path or args.model), "dataset": args.dataset, "split": args.split,
           "train_split": args.train_split, "n_test": len(test), "n_train": len(train),
           "classifier_classes": loaded.class_names, "attributes_available": found, "audits": reports}
    if found:
        matrix = mutual_information_matrix(test.mu, test.metadata, found, seed=args.seed)
        out["mutual_information_matrix"] = {a: [round(float(v), 5) for v in row] for a, row in matrix.iterrows()}
    if args.disentanglement:
        out["disentanglement"] = _disentanglement(train, test, found, args.seed)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_text(out)
    return 0


def _disentanglement(train, test, attributes, seed: int) -> dict:
    from pumamed.explain.disentanglement import metadata_disentanglement
    from pumamed.jsonsafe import to_jsonable

    return to_jsonable(metadata_disentanglement([train, test], attributes, seed=seed).to_dict(), digits=5)


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _print_text(out: dict) -> None:
    print(f"model {out['model']} on {out['dataset']} ({out['split']}: {out['n_test']} images, "
          f"{out['train_split']}: {out['n_train']})")
    for attribute, report in out["audits"].items():
        p = report["predictability"]
        print(f"\n== {attribute} ({report['kind']}) ==")
        print(f"  predictable from mu: {p['metric'].upper()} {_fmt(p['score'])} +- {_fmt(p['score_sd'])} "
              f"(chance {p['chance']}; n={p['n']})")
        print(f"  flagged dimensions: {report['flagged_dimensions'] or 'none'}")
        if report.get("head_dependence"):
            d = report["head_dependence"]
            print(f"  head weight on flagged dims: {_fmt(d['weight_share_on_flagged'])} "
                  f"(they are {_fmt(d['flagged_fraction_of_dims'])} of the dims)")
        if report.get("subgroups"):
            print(f"  classifier: {report['classifier']}, positive = {report['positive']}")
            for row in report["subgroups"]["groups"]:
                print(f"    {str(row['group']):>12}  n={row['n']:<4} AUC {_fmt(row.get('auc'))} "
                      f"[{_fmt(row.get('auc_lo'))}, {_fmt(row.get('auc_hi'))}]  TPR {_fmt(row.get('tpr'))} "
                      f"FPR {_fmt(row.get('fpr'))}  ECE {_fmt(row.get('ece'))}")
            for metric, gap in report["subgroups"]["gaps"].items():
                print(f"    gap {metric}: {_fmt(gap.get('gap'))} [{_fmt(gap.get('lo'))}, {_fmt(gap.get('hi'))}] "
                      f"(worst: {gap.get('worst_group')})")
        if report.get("mitigation"):
            print("  mitigation (logistic head refitted on the codes):")
            for row in report["mitigation"]["strategies"]:
                print(f"    {row['strategy']:>26}: AUC {_fmt(row['auc'])}  AUC gap {_fmt(row['auc_gap'])}  "
                      f"TPR gap {_fmt(row['tpr_gap'])}  attribute leakage {_fmt(row['attribute_leakage'])}")
        for note in report.get("notes", []):
            print(f"  note: {note}")
    if "disentanglement" in out:
        d = out["disentanglement"]
        print(f"\ndisentanglement over {d['factor_names']}: MIG {_fmt(d['mig'])}  DCI D {_fmt(d['dci_disentanglement'])} "
              f"C {_fmt(d['dci_completeness'])} I {_fmt(d['dci_informativeness'])}  SAP {_fmt(d['sap'])}")


def run_shortcut_command(args) -> int:
    from pathlib import Path

    import torch

    from pumamed.explain.shortcut import ShortcutConfig, run_shortcut_experiment

    cfg = ShortcutConfig(dataset=args.dataset, size=args.size, rate=args.rate, marker_class=args.marker_class,
                         marker_size=args.marker_size, corner=args.corner, epochs=args.epochs,
                         latent_dim=args.latent, max_train=args.max_train, cls_weight=args.cls_weight,
                         seed=args.seed, data_dir=args.data_dir)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    device = torch.device(args.device) if args.device else torch.device("cpu")
    result = run_shortcut_experiment(cfg, log=log, device=device)
    out = result.to_dict()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2), encoding="utf-8")
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"token in {out['marker_fraction_train']:.0%} of {out['n_train']} training images; "
          f"trained in {out['train_seconds']:.0f} s")
    h = out["head_auc"]
    print(f"head AUC: clean {_fmt(h['clean'])}  aligned {_fmt(h['aligned'])}  swapped {_fmt(h['swapped'])}  "
          f"(reliance on the token = aligned - swapped = {_fmt(out['reliance'])})")
    print(f"audit: token predictable from mu with AUC {_fmt(out['marker_predictability'])}; flagged dims "
          f"{out['flagged_dims'] or 'none'} hold {_fmt(out['head_weight_share_on_flagged'])} of the head's weight")
    a = out["head_auc_flagged_ablated"]
    print(f"flagged dims ablated: clean {_fmt(a['clean'])}  aligned {_fmt(a['aligned'])}  swapped {_fmt(a['swapped'])}")
    print("mitigation (logistic head refitted):")
    for row in out["mitigation"]:
        print(f"  {row['strategy']:>30}: clean {_fmt(row['auc_clean'])}  aligned {_fmt(row['auc_aligned'])}  "
              f"swapped {_fmt(row['auc_swapped'])}  reliance {_fmt(row['reliance'])}")
    return 0
