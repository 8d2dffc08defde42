"""``python -m pumamed bench <what>``: benchmarks that print ratios against a named baseline
measured in the same run (never timed assertions in tests)."""

from pumamed.commands._lazy import add_lazy_subcommands

BENCHMARKS = (
    ("loading", "image loading throughput vs torchvision ImageFolder", "pumamed.commands.bench.loading"),
    ("explorer", "explorer latency (decode, traversal grid, masked reconstruction) vs a naive path", "pumamed.commands.bench.explorer"),
    ("train", "PumaMedNet training throughput vs MONAI VarAutoEncoder / Pythae BetaVAE", "pumamed.commands.bench.train"),
    ("augment", "denoising augmentation batched on the device vs torchvision v2 in DataLoader workers",
     "pumamed.commands.bench.augment"),
    ("map", "national choropleth build time, warm vs cold", "pumamed.commands.bench.map"),
    ("epi", "the diabetes-models page pipeline for all municipalities", "pumamed.commands.bench.epi"),
    ("load", "concurrent browser sessions on one server: exceptions, memory, model loads", "pumamed.commands.bench.load"),
)


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks with ratios against a baseline")
    add_lazy_subcommands(bench.add_subparsers(dest="bench_command", metavar="<benchmark>"), BENCHMARKS)
    bench.set_defaults(func=lambda args: bench.print_help() or 2)
