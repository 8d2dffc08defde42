"""``python -m pumamed epi simulate --out FILE.csv``: an outcome with planted effects, drawn from
the real municipal covariates, written as a table ``epi model --outcome FILE.csv`` can read
(columns CVEGEO, population, sim_count, sim_severe and the covariates); the planted truth goes
to ``FILE.truth.json`` (and to stdout with ``--json``)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output CSV")
    parser.add_argument("--data-dir", help="data directory (default: $PUMAMED_DATA_DIR or ./data)")
    parser.add_argument("--covariates", nargs="+", help="panel columns (default: the models' curated set)")
    parser.add_argument("--effects", nargs="*", metavar="NAME=IRR",
                        help="planted incidence-rate ratios per SD (default: --n-planted drawn at random)")
    parser.add_argument("--severity-effects", nargs="*", metavar="NAME=OR", help="planted severity odds ratios per SD")
    parser.add_argument("--n-planted", type=int, default=3, help="random planted effects when --effects is absent")
    parser.add_argument("--baseline-rate", type=float, default=1e-3, help="cases per person at average covariates")
    parser.add_argument("--dispersion", type=float, default=0.1, help="negative-binomial dispersion (0 = Poisson)")
    parser.add_argument("--severity-baseline", type=float, default=0.15, help="severe share at average covariates")
    parser.add_argument("--no-log-skewed", action="store_true", help="use skewed covariates untransformed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the planted truth as JSON")


def run(args) -> int:
    import json
    from pathlib import Path

    from pumamed.epi import simulate
    from pumamed.commands.epi_model import parse_effects
    from pumamed.epi.modeling import ModelSpec, simulate_from_spec

    spec = ModelSpec.of(outcome="simulated", covariates=tuple(args.covariates) if args.covariates else None,
                     sim_effects=parse_effects(args.effects), sim_severity_effects=parse_effects(args.severity_effects),
                     sim_n_planted=args.n_planted, sim_baseline_rate=args.baseline_rate,
                     sim_dispersion=args.dispersion, sim_severity_baseline=args.severity_baseline,
                     sim_seed=args.seed, log_skewed=not args.no_log_skewed, data_dir=args.data_dir)
    sim, _, _, _, transformed, _, _, _ = simulate_from_spec(spec)
    table = sim.data
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    truth = {
        "planted_irr_per_sd": {r.variable: r.irr_per_sd for r in sim.truth.itertuples() if r.planted},
        "planted_severity_or_per_sd": {r.variable: r.severity_or_per_sd for r in sim.truth.itertuples()
                                       if r.severity_planted},
        "null_covariates": [r.variable for r in sim.truth.itertuples() if not r.planted],
        "covariates_scale": "per standard deviation over the simulated municipalities (after log1p where noted)",
        "transformed": transformed, "baseline_rate": args.baseline_rate, "dispersion": args.dispersion,
        "severity_baseline": args.severity_baseline, "seed": args.seed, "rows": int(len(table)), "out": str(out),
    }
    truth_path = out.with_suffix(".truth.json")
    truth_path.write_text(json.dumps(truth, indent=2))
    if args.json:
        print(json.dumps(truth, indent=2))
    else:
        print(f"wrote {len(table):,} municipalities to {out} (truth in {truth_path})")
        for name, irr in truth["planted_irr_per_sd"].items():
            print(f"  planted IRR per SD: {name} = {irr:.3f}")
        print(f"  then: python -m pumamed epi model --outcome {out} --count-col {simulate.COUNT_COLUMN} "
              f"--population-col population")
    return 0
