"""``python -m pumamed epi <action>``: the municipal diabetes analysis."""

from pumamed.commands._lazy import add_lazy_subcommands

ACTIONS = (
    ("panel", "assemble the municipal panel and its data-quality report", "pumamed.commands.epi_panel"),
    ("model", "penalised count regression, boosting and spatial checks for one outcome", "pumamed.commands.epi_model"),
    ("simulate", "simulate an outcome with planted effects from the real covariates", "pumamed.commands.epi_simulate"),
)


def register(subparsers) -> None:
    epi = subparsers.add_parser("epi", help="municipal diabetes analysis (panel, models)")
    add_lazy_subcommands(epi.add_subparsers(dest="epi_command", metavar="<action>"), ACTIONS)
    epi.set_defaults(func=lambda args: epi.print_help() or 2)
