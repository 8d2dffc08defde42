"""``python -m pumamed data check|fetch``."""

from __future__ import annotations

import json

# How the data directory was chosen, as `data check` says it (see pumamed.config.data_source).
DATA_ORIGINS = {
    "argument": "--data-dir",
    "environment": "PUMAMED_DATA_DIR",
    "local": "data/ in the working directory",
    "demo": "the demo pack shipped with the package: a small sample; set PUMAMED_DATA_DIR for the full data",
    "none": "nothing found: no PUMAMED_DATA_DIR, no data/ here, no demo pack",
}


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect or fetch datasets in the data directory")
    data_sub = data.add_subparsers(dest="data_command", metavar="<action>")

    check = data_sub.add_parser("check", help="list known datasets found, with counts")
    check.add_argument("--data-dir", help="data directory (default: $PUMAMED_DATA_DIR, else ./data when it holds data, else the demo pack)")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(func=run_check)

    fetch = data_sub.add_parser("fetch", help="download public files into the data directory")
    fetch.add_argument("source", choices=["epi", "imaging"],
                       help="which group of public files (imaging: the MedMNIST archives)")
    fetch.add_argument("--data-dir", help="data directory (default: $PUMAMED_DATA_DIR, else ./data when it holds data, else the demo pack)")
    fetch.add_argument("--only", nargs="*", help="fetch only these dataset folders")
    fetch.add_argument("--dry-run", action="store_true", help="list what would be downloaded")
    fetch.set_defaults(func=run_fetch)

    build = data_sub.add_parser("build-demo", help="build the demo data pack from a full data directory")
    build.add_argument("--from", dest="source", required=True, help="the full data directory (holding imaging/, epi/)")
    build.add_argument("--out", default=None, help="the pack folder (default: pumamed/demo inside the package)")
    build.set_defaults(func=run_build_demo)

    data.set_defaults(func=lambda args: data.print_help() or 2)


def run_check(args) -> int:
    from pumamed.config import data_source
    from pumamed.datacheck import BROKEN, OK, check_data_dir

    root, origin = data_source(args.data_dir)
    reports = check_data_dir(root)
    broken = [r for r in reports if r.status == BROKEN]
    if args.json:
        print(json.dumps({"data_dir": str(root), "data_origin": origin, "datasets": [r.to_dict() for r in reports],
                          "n_ok": sum(r.status == OK for r in reports), "n_broken": len(broken)}, indent=2))
    else:
        print(f"data directory: {root} ({DATA_ORIGINS[origin]})")
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
    from pathlib import Path

    from pumamed.config import data_source

    root, origin = data_source(args.data_dir)
    if origin in ("demo", "none"):  # never download into the package's demo pack
        root = Path.cwd() / "data"
    if args.source == "imaging":
        from pumamed.imaging.fetch import fetch_imaging

        result = fetch_imaging(root, only=args.only, dry_run=args.dry_run)
    else:
        from pumamed.epi.fetch import fetch_epi

        result = fetch_epi(root, only=args.only, dry_run=args.dry_run)
    print("\n".join(fetch_report(result, args.source)))
    return 0 if result.ok else 1


def fetch_report(result, source: str) -> list[str]:
    """The lines ``data fetch`` prints for a :class:`pumamed.fetching.FetchResult`."""
    lines = [f"{source} data directory: {result.folder}"]
    if source == "epi":
        lines.append(f"{len(result.planned)} files: {result.count('ok')} verified, {result.count('missing')} missing, "
                     f"{result.count('corrupted')} corrupted ({result.download_bytes / 1e6:.1f} MB to download)")
        for planned in result.planned:
            if planned.state != "ok":
                marker = "not downloadable (derived locally)" if not planned.url else planned.url
                lines.append(f"  [{planned.state:9}] {planned.path}  <- {marker}")
    else:
        for planned in result.planned:
            note = {"ok": "verified", "missing": f"<- {planned.url}",
                    "differs": "present but not the published file; kept (remove it to fetch the published one)"}
            lines.append(f"  [{planned.state:7}] {planned.path} ({planned.licence})  {note[planned.state]}")
        lines.extend(f"  [manual ] {name}: {why}" for name, why in result.manual.items())
    for kind, path, detail in result.events:
        lines.append(f"  installed {path}" if kind == "installed" else f"  {kind.upper()} {path}: {detail}")
    if result.failures:
        lines.append(f"{len(result.failures)} file(s) failed; nothing unverified was installed")
    return lines


def run_build_demo(args) -> int:
    from pumamed.demopack import build_pack, default_out

    out = args.out or default_out()
    manifest = build_pack(args.source, out)
    print(f"demo pack: {out}: {manifest['images']} images, {len(manifest['files'])} files, "
          f"{manifest['bytes'] / 2**20:.1f} MB (sources and licences in SOURCES.md)")
    return 0
