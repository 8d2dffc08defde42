"""``python -m pumamed data check|fetch``."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect or fetch datasets in the data directory")
    data_sub = data.add_subparsers(dest="data_command", metavar="<action>")

    check = data_sub.add_parser("check", help="list known datasets found, with counts")
    check.add_argument("--data-dir", help="data directory (default: $PUMAMED_DATA_DIR or ./data)")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(func=run_check)

    fetch = data_sub.add_parser("fetch", help="download public files into the data directory")
    fetch.add_argument("source", choices=["epi"], help="which group of public files")
    fetch.add_argument("--data-dir", help="data directory (default: $PUMAMED_DATA_DIR or ./data)")
    fetch.add_argument("--only", nargs="*", help="fetch only these dataset folders")
    fetch.add_argument("--dry-run", action="store_true", help="list what would be downloaded")
    fetch.set_defaults(func=run_fetch)

    data.set_defaults(func=lambda args: data.print_help() or 2)


def run_check(args) -> int:
    from pumamed.config import data_dir
    from pumamed.datacheck import BROKEN, OK, check_data_dir

    root = data_dir(args.data_dir)
    reports = check_data_dir(root)
    broken = [r for r in reports if r.status == BROKEN]
    if args.json:
        print(json.dumps({"data_dir": str(root), "datasets": [r.to_dict() for r in reports],
                          "n_ok": sum(r.status == OK for r in reports), "n_broken": len(broken)}, indent=2))
    else:
        print(f"data directory: {root}")
        for r in reports:
            counts = ", ".join(f"{k}={v}" for k, v in r.counts.items())
            line = f"  [{r.status:7}] {r.group:7} {r.name:32} {counts}"
            if r.message:
                line += f"  ({r.message})"
            print(line)
        print(f"{sum(r.status == OK for r in reports)} ok, {len(broken)} broken, "
              f"{sum(r.status not in (OK, BROKEN) for r in reports)} missing")
    return 1 if broken else 0


def run_fetch(args) -> int:
    from pumamed.config import data_dir
    from pumamed.epi.fetch import fetch_epi

    return fetch_epi(data_dir(args.data_dir), only=args.only, dry_run=args.dry_run)
