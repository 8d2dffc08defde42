"""``python -m pumamed epi panel``: assemble the municipal panel and print its data-quality report."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--data-dir", help="data directory (default: $PUMAMED_DATA_DIR or ./data)")
    parser.add_argument("--year", type=int, help="keep one year (cross-section of the 2,469 municipalities)")
    parser.add_argument("--out", help="write the panel to FILE.csv or FILE.parquet")
    parser.add_argument("--json", action="store_true", help="print the quality report as JSON")
    parser.add_argument("--max-unmatched", type=int, default=40,
                        help="codes that failed to join listed in the text report (all of them in --json)")


def run(args) -> int:
    from pumamed.epi.panel import build_panel, write_panel
    from pumamed.errors import InputError

    panel, quality = build_panel(args.data_dir)
    if args.year is not None:
        if args.year not in quality.years:
            raise InputError(f"--year {args.year}: the panel has years {', '.join(map(str, quality.years))}")
        panel = panel[panel["year"] == args.year].reset_index(drop=True)
    if args.out:
        path = write_panel(panel, args.out)
        written = f"wrote {len(panel):,} rows x {panel.shape[1]} columns to {path}"
    else:
        written = ""
    if args.json:
        import json

        report = quality.to_dict()
        report["rows"] = int(len(panel))
        report["columns"] = list(panel.columns)
        if args.out:
            report["out"] = str(args.out)
        print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    else:
        print(f"panel: {len(panel):,} rows x {panel.shape[1]} columns")
        print(quality.to_text(max_unmatched=args.max_unmatched))
        if written:
            print(written)
    broken = quality.sources["status"].eq("error").any()
    return 1 if broken else 0
