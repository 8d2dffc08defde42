"""``python -m pumamed calibrate``: fit the trust signals of a checkpoint on its validation split.

Writes ``trust.json`` (temperature, OOD score definition and threshold, figures) and
``trust.safetensors`` (training-code mean and precision) into the checkpoint folder; an old
checkpoint gets them from this one command. See ``docs/trust.md``.
"""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("calibrate", help="fit temperature scaling and the out-of-distribution score of a "
                                                "checkpoint on its validation split (writes trust.json)")
    p.add_argument("--model", required=True, help="checkpoint folder (e.g. models/breast)")
    p.add_argument("--dataset", help="the model's own dataset (default: the one in its config.json)")
    p.add_argument("--data-dir", help="data directory (default: $PUMAMED_DATA_DIR or ./data)")
    p.add_argument("--device", help="cpu, cuda, mps (default: automatic)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--quantile", type=float, default=0.975,
                   help="OOD threshold: this quantile of the score on the model's validation images (default 0.975)")
    p.add_argument("--no-test", action="store_true", help="fit only; do not report the test figures")
    p.add_argument("--json", action="store_true", help="print the trust report as one JSON object")
    p.set_defaults(func=run_calibrate)


def run_calibrate(args) -> int:
    import sys

    from pumamed.errors import InputError
    from pumamed.net.calibration import calibrate_checkpoint
    from pumamed.net.trust import TRUST_FILE, summary, to_json

    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    log = (lambda message: print(message, file=sys.stderr)) if not args.json else None
    report = calibrate_checkpoint(args.model, dataset=args.dataset, data_dir=args.data_dir, device=args.device,
                                  batch_size=args.batch_size, quantile=args.quantile,
                                  report_test=not args.no_test, log=log)
    if args.json:
        print(to_json(report))
        return 0
    print(f"wrote {args.model}/{TRUST_FILE}")
    cal = report.get("calibration")
    if cal:
        print(f"  temperature {cal['temperature']:.3f}; validation ECE {cal['val']['before']['ece']:.4f} -> "
              f"{cal['val']['after']['ece']:.4f}")
    ood = report.get("ood")
    if ood:
        print(f"  OOD score {' + '.join(ood['features'])}, threshold {ood['threshold']:.3f} "
              f"(validation false alarms {ood['val']['false_alarm_rate']:.1%})")
    for name, value in summary(report).items():
        print(f"  test {name}: {value:.4f}" if isinstance(value, float) else f"  test {name}: {value}")
    return 0
