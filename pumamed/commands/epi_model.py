"""``python -m pumamed epi model``: penalised count regression, boosting and spatial checks.

Prints the selected covariates with incidence-rate ratios (per SD) and intervals, the
cross-validated deviance, the deviance comparison with LightGBM, boosting importances and
Moran's I of the residuals (``--json``: one JSON object).
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--outcome", required=True,
                        help="a count outcome of the panel (e.g. covid_diabetic_hospitalized), 'simulated', "
                             "or a CSV/xlsx file with CVEGEO and a count column")
    parser.add_argument("--data-dir", help="data directory (default: $PUMAMED_DATA_DIR or ./data)")
    parser.add_argument("--covariates", nargs="+", help="panel columns to use (default: a curated socioeconomic set)")
    parser.add_argument("--family", choices=["negbin", "poisson"], default="negbin", help="count family")
    parser.add_argument("--severity-denominator",
                        help="a count column: model outcome/denominator as a binomial proportion (severity)")
    parser.add_argument("--year", type=int, help="panel year (default: the year with most municipalities)")
    parser.add_argument("--count-col", default="count", help="count column of a CSV outcome")
    parser.add_argument("--population-col", help="population column of a CSV outcome (default: census 2020)")
    parser.add_argument("--code-col", default="CVEGEO", help="municipality code column of a CSV outcome")
    parser.add_argument("--year-col", help="year column of a CSV outcome (the latest year is used)")
    parser.add_argument("--l1-ratio", type=float, default=1.0, help="elastic-net mix: 1 = lasso")
    parser.add_argument("--no-adaptive", action="store_true", help="plain instead of adaptive lasso weights")
    parser.add_argument("--rule", choices=["1se", "min"], default="1se", help="penalty choice rule")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--resamples", type=int, default=50, help="bootstrap resamples for stability selection")
    parser.add_argument("--permutations", type=int, default=999, help="Moran's I / LISA permutations")
    parser.add_argument("--no-boosting", action="store_true", help="skip LightGBM")
    parser.add_argument("--no-spatial", action="store_true", help="skip Moran's I and LISA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--effects", nargs="*", metavar="NAME=IRR",
                        help="simulated outcome: planted IRRs per SD (default: three drawn at random)")
    parser.add_argument("--sim-seed", type=int, default=0, help="simulated outcome: random seed")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def parse_effects(items) -> tuple[tuple[str, float], ...]:
    from pumamed.errors import InputError

    out = []
    for item in items or ():
        name, sep, value = item.partition("=")
        try:
            out.append((name.strip(), float(value)))
        except ValueError:
            raise InputError(f"--effects expects NAME=RATIO, got {item!r}") from None
        if not sep or not name.strip():
            raise InputError(f"--effects expects NAME=RATIO, got {item!r}")
    return tuple(out)


def spec_from_args(args):
    from pathlib import Path

    from pumamed.epi.modeling import ModelSpec

    common = dict(
        covariates=tuple(args.covariates) if args.covariates else None, family=args.family, year=args.year,
        severity_denominator=args.severity_denominator, l1_ratio=args.l1_ratio, adaptive=not args.no_adaptive,
        rule=args.rule, n_folds=args.folds, n_resamples=args.resamples, permutations=args.permutations,
        run_boosting=not args.no_boosting, run_spatial=not args.no_spatial, seed=args.seed,
        sim_effects=parse_effects(args.effects), sim_seed=args.sim_seed, data_dir=args.data_dir,
    )
    outcome = args.outcome
    looks_like_file = Path(outcome).suffix.lower() in (".csv", ".txt", ".xlsx", ".parquet") or Path(outcome).is_file()
    if looks_like_file:
        from pumamed.errors import InputError

        if not Path(outcome).is_file():
            raise InputError(f"outcome file not found: {outcome}")
        return ModelSpec.of(outcome="table", table_path=str(Path(outcome).resolve()), table_name=Path(outcome).name,
                         count_col=args.count_col, population_col=args.population_col, code_col=args.code_col,
                         year_col=args.year_col, **common)
    return ModelSpec.of(outcome=outcome, **common)


def run(args) -> int:
    import json

    from pumamed.epi.modeling import run_models
    from pumamed.jsonsafe import to_jsonable

    result = run_models(spec_from_args(args))
    summary = result.to_dict()
    if args.json:
        print(json.dumps(to_jsonable(summary), indent=2, ensure_ascii=False, default=str))
        return 0
    print(f"outcome: {summary['outcome']}  family: {summary['family']}  municipalities: "
          f"{summary['n_municipalities']} (dropped {summary['n_dropped']})")
    for note in summary["notes"]:
        print(f"  note: {note}")
    cvd = summary["cv_deviance"]
    print(f"\npenalty ({summary['penalty']['rule']} rule): lambda={summary['penalty']['lambda_chosen']:.4g}; "
          f"{cvd['n_folds']}-fold CV deviance {cvd['chosen']:.4g} ± {cvd['chosen_se']:.2g} (minimum {cvd['minimum']:.4g})")
    ratio = summary["ratio"]
    print(f"\nselected covariates: {ratio} per SD [95% CI] from the unpenalised refit, stability")
    for row in summary["selected_table"] or []:
        print(f"  {row['variable']:34} {row['ratio_per_sd']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
              f"  p={row['p_value']:.2g}  stability={row.get('selection_frequency', float('nan')):.2f}")
    if not summary["selected_table"]:
        print("  (none: the rate-only model is preferred)")
    print(f"  caveat: {summary['caveat']}")
    if summary["deviance_comparison"]:
        print("\nheld-out deviance (same folds):")
        for row in summary["deviance_comparison"]:
            print(f"  {row['model']:28} {row['heldout_deviance']:.4g} ± {row['se']:.2g}"
                  f"  explained {row.get('deviance_explained', float('nan')):.1%}")
    if summary["boosting_importance"]:
        print("\nboosting importance (mean |SHAP|, log relative rate):")
        for row in summary["boosting_importance"][:8]:
            print(f"  {row['variable']:34} {row['mean_abs_shap']:.4f}")
    if summary["moran_residuals"]:
        m = summary["moran_residuals"]
        print(f"\nMoran's I of Pearson residuals: {m['I']:.4f} (E={m['expected']:.4f}, "
              f"permutation p={m['p_value']:.3g}, {m['permutations']} permutations)")
    if summary["truth_recovery"]:
        print("\nplanted vs estimated:")
        for row in summary["truth_recovery"]:
            if row["planted"] or row["selected"]:
                print(f"  {row['variable']:34} true {row['true_ratio']:.3f}  estimated {row['estimated_ratio']:.3f}"
                      f"  {row['outcome']}")
    return 0
