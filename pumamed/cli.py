"""Command-line entry point: ``python -m pumamed <command> ...``.

Each command lives in its own module exposing ``register(subparsers)``; the module adds its
parser and sets ``func`` (called with the parsed args, returns an exit code). Modules import
their heavy dependencies inside ``func`` so that ``--help`` stays fast.

Errors a user can cause are :class:`pumamed.errors.PumaMedError`: printed as one line on stderr,
exit code 2. Anything else is printed as one line too (exit 1); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pumamed.errors import PumaMedError

# Command modules, in help order.
COMMAND_MODULES = (
    "pumamed.commands.data",
    "pumamed.commands.train",
    "pumamed.commands.evaluate",
    "pumamed.commands.calibrate",
    "pumamed.commands.audit",
    "pumamed.commands.epi",
    "pumamed.commands.bench",
)


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (``error: ...``, exit 2), like every other CLI error."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="python -m pumamed",
        description="PumaMed Explorer: PumaMedNet imaging models and municipal diabetes analysis.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # a real missing dependency, not an absent command
                raise
            continue
        module.register(subparsers)
    return parser




def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PumaMedError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI promises one readable line, not a traceback
        if args.debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
