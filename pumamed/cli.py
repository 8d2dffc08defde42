"""Command-line entry point: ``python -m pumamed <command> ...``.

Each command lives in its own module exposing ``register(subparsers)``; the module adds its
parser and sets ``func`` (called with the parsed args, returns an exit code). Modules import
their heavy dependencies inside ``func`` so that ``--help`` stays fast.

Errors a user can cause are :class:`pumamed.errors.PumaMedError`: printed as one line on stderr,
exit code 2. Anything else is printed as one line too (exit 1); ``--debug`` shows the traceback.
The library names a setting by its parameter in backquotes (```init```); :func:`cli_message`
shows it as the flag that sets it (``--init``).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from pumamed.errors import PumaMedError

# Command modules, in help order.
COMMAND_MODULES = (
    "pumamed.commands.data",
    "pumamed.commands.train",
    "pumamed.commands.evaluate",
    "pumamed.commands.calibrate",
    "pumamed.commands.refit_head",
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




_PARAMETER = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def parameter_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each parameter (an option's ``dest``) of ``parser`` and its sub-commands, with the long flag
    that sets it (``--name-with-dashes`` where there is one)."""
    flags: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                for dest, flag in parameter_flags(sub).items():
                    flags.setdefault(dest, flag)
        else:
            long = [o for o in action.option_strings if o.startswith("--")]
            natural = "--" + action.dest.replace("_", "-")
            if long:
                flags.setdefault(action.dest, natural if natural in long else long[0])
    return flags


def cli_message(message: str, flags: dict[str, str]) -> str:
    """A library message for the command line: every backquoted parameter (```init```) that a
    flag sets becomes that flag (``--init``); other backquoted names stay as they are."""
    return _PARAMETER.sub(lambda m: flags.get(m.group(1), m.group(0)), message)


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
        print(f"error: {cli_message(str(exc), parameter_flags(parser))}", file=sys.stderr)
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
