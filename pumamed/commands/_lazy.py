"""Sub-commands whose implementation lives in another module, imported only when chosen."""

from __future__ import annotations

import importlib


def add_lazy_subcommands(subparsers, specs) -> None:
    """``specs``: iterable of (name, help, "module"). The module provides ``add_arguments(parser)``
    (light: no heavy imports at module level) and ``run(args) -> int``. A module that is not
    there yet leaves its sub-command out rather than breaking the whole CLI."""
    for name, help_text, module_name in specs:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        parser = subparsers.add_parser(name, help=help_text)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)
