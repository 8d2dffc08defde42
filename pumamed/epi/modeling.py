"""The diabetes-models pipeline in one call, shared by the page, the CLI and the benchmark.

``run_models(ModelSpec(...))`` resolves the outcome (a count outcome of the municipal panel with
population as exposure, a severity proportion with its denominator, the simulated outcome with
planted effects, or a user's table), assembles the design (covariates of the panel's
cross-section, skewed ones log-transformed, rows with missing values dropped and counted), and
runs:

1. the penalised GLM (Poisson / negative binomial with a log-population offset, or binomial for
   severity): coefficient path, K-fold cross-validated deviance, penalty by the 1-SE (or
   minimum) rule, adaptive lasso by default;
2. the unpenalised refit of the selected covariates (ratios per SD with Wald intervals, with the
   post-selection caveat), VIFs, stability selection over bootstrap resamples;
3. LightGBM with the offset, on the same folds: held-out deviance against the penalised model and
   the rate-only model, partial dependence + ICE, ALE and SHAP values for the top covariates;
4. Moran's I of the residuals (queen contiguity) and LISA clusters.

Everything returned is plain data (DataFrames, floats, fitted estimators) so results pickle for
Streamlit's cache and serialise to JSON for the CLI.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pumamed.errors import DataError, InputError

SIMULATED = "simulated"
COUNT_FAMILIES = ("negbin", "poisson")
# A sensible default design: the nine CONAPO 2020 indicators, CONEVAL deprivations that are not
# sums of each other, income, schooling, demography and density. Composite indices and shares
# that add up to 100 % are left out (exact collinearity).
DEFAULT_COVARIATES = (
    "ses_illiteracy_pct", "ses_no_basic_education_pct", "ses_no_drainage_pct", "ses_no_electricity_pct",
    "ses_no_piped_water_pct", "ses_dirt_floor_pct", "ses_overcrowding_pct", "ses_small_localities_pct",
    "ses_low_wage_pct", "ses_poverty_pct", "ses_no_health_access_pct", "ses_no_social_security_pct",
    "ses_no_food_access_pct", "ses_income_per_capita_usd", "ses_mean_schooling_years",
    "population_density_km2", "age_median", "indigenous_language_pct", "altitude_m",
)
MIN_ROWS = 30
SKEW_THRESHOLD = 2.0

COUNT_DEVIANCE_NOTE = ("Held-out deviance is the Poisson deviance per municipality on the same folds for every "
                       "model (for the negative binomial the predicted means are scored as Poisson), so the "
                       "columns are comparable; lower is better.")


@dataclass(frozen=True)
class OutcomeSpec:
    """What is modelled: ``outcome`` is a count column of the panel, ``"simulated"``, or
    ``"table"`` (a user's table, see :class:`UserTable`); ``severity_denominator`` (a count column)
    turns it into a binomial model of ``outcome / denominator``. Covariates of the panel's
    cross-section of ``year``, skewed ones log1p-transformed with ``log_skewed``."""

    outcome: str = SIMULATED
    covariates: tuple[str, ...] | None = None
    year: int | None = None
    severity_denominator: str | None = None
    log_skewed: bool = True
    data_dir: str | None = None


@dataclass(frozen=True)
class PenaltySpec:
    """The penalised GLM: family, elastic-net mix, adaptive weights, the penalty rule and the
    cross-validation and stability-selection resamples."""

    family: str = "negbin"
    l1_ratio: float = 1.0
    adaptive: bool = True
    rule: str = "1se"
    n_folds: int = 5
    n_lambdas: int = 40
    n_resamples: int = 50
    resampling: str = "bootstrap"


@dataclass(frozen=True)
class DiagnosticsSpec:
    """What runs after the GLM: boosting with explanations of its ``top_features``, and the
    spatial checks of the residuals (with ``permutations``)."""

    run_boosting: bool = True
    run_spatial: bool = True
    top_features: int = 4
    permutations: int = 999


@dataclass(frozen=True)
class UserTable:
    """A user's outcome table (``outcome="table"``): a file path or the uploaded bytes, and its
    columns."""

    path: str | None = None
    data: bytes | None = field(default=None, repr=False)
    name: str = "table"
    count_col: str = "count"
    population_col: str | None = None
    code_col: str = "CVEGEO"
    year_col: str | None = None


@dataclass(frozen=True)
class SimulationSpec:
    """The simulated outcome (``outcome="simulated"``): planted ratios per SD (empty: ``n_planted``
    drawn at random), baseline rate, dispersion and the severity part."""

    effects: tuple[tuple[str, float], ...] = ()
    n_planted: int = 3
    baseline_rate: float = 1e-3
    dispersion: float = 0.1
    severity_effects: tuple[tuple[str, float], ...] = ()
    severity_baseline: float = 0.15
    seed: int = 0


#: The flat names of the settings (the page's and the CLI's vocabulary, and the JSON ``spec``), in
#: order, with the part of :class:`ModelSpec` and the field each one sets.
SETTINGS: dict[str, tuple[str, str]] = {
    "outcome": ("outcome", "outcome"), "covariates": ("outcome", "covariates"), "family": ("penalty", "family"),
    "year": ("outcome", "year"), "severity_denominator": ("outcome", "severity_denominator"),
    "l1_ratio": ("penalty", "l1_ratio"), "adaptive": ("penalty", "adaptive"), "rule": ("penalty", "rule"),
    "n_folds": ("penalty", "n_folds"), "n_lambdas": ("penalty", "n_lambdas"),
    "n_resamples": ("penalty", "n_resamples"), "resampling": ("penalty", "resampling"),
    "log_skewed": ("outcome", "log_skewed"), "run_boosting": ("diagnostics", "run_boosting"),
    "run_spatial": ("diagnostics", "run_spatial"), "top_features": ("diagnostics", "top_features"),
    "permutations": ("diagnostics", "permutations"), "seed": ("", "seed"),
    "table_path": ("table", "path"), "table_bytes": ("table", "data"), "table_name": ("table", "name"),
    "count_col": ("table", "count_col"), "population_col": ("table", "population_col"),
    "code_col": ("table", "code_col"), "year_col": ("table", "year_col"),
    "sim_effects": ("simulation", "effects"), "sim_n_planted": ("simulation", "n_planted"),
    "sim_baseline_rate": ("simulation", "baseline_rate"), "sim_dispersion": ("simulation", "dispersion"),
    "sim_severity_effects": ("simulation", "severity_effects"),
    "sim_severity_baseline": ("simulation", "severity_baseline"), "sim_seed": ("simulation", "seed"),
    "data_dir": ("outcome", "data_dir"),
}


@dataclass(frozen=True)
class ModelSpec:
    """What to model, by concern (outcome, penalty, diagnostics, user table, simulation) and one
    ``seed`` for folds, resamples, boosting and permutations. Hashable, so it can key caches.
    Build it from flat settings with :meth:`of` (``ModelSpec.of(outcome=..., n_folds=5)``)."""

    outcome: OutcomeSpec = OutcomeSpec()
    penalty: PenaltySpec = PenaltySpec()
    diagnostics: DiagnosticsSpec = DiagnosticsSpec()
    table: UserTable = UserTable()
    simulation: SimulationSpec = SimulationSpec()
    seed: int = 0

    @classmethod
    def of(cls, **settings) -> "ModelSpec":
        """A spec from flat settings (names of :data:`SETTINGS`; the others keep their defaults)."""
        unknown = [k for k in settings if k not in SETTINGS]
        if unknown:
            raise InputError(f"unknown model setting(s): {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
        parts: dict[str, dict] = {}
        for name, value in settings.items():
            part, key = SETTINGS[name]
            parts.setdefault(part, {})[key] = value
        top = parts.pop("", {})
        groups = {"outcome": OutcomeSpec, "penalty": PenaltySpec, "diagnostics": DiagnosticsSpec,
                  "table": UserTable, "simulation": SimulationSpec}
        return cls(**{part: groups[part](**values) for part, values in parts.items()}, **top)

    def settings(self) -> dict:
        """The flat settings, in :data:`SETTINGS` order (what :meth:`of` takes back)."""
        return {name: getattr(getattr(self, part) if part else self, key) for name, (part, key) in SETTINGS.items()}


@dataclass
class PenalizedFit:
    """Stage 1-2: the penalised GLM, its unpenalised refit, VIFs and stability selection."""

    cv: object  # PenalizedGLMCV
    path: pd.DataFrame
    cv_curve: pd.DataFrame
    selected: list[str]
    ratio_table: pd.DataFrame
    ratio_name: str  # "IRR" or "OR"
    caveat: str
    vif: pd.DataFrame
    stability: pd.DataFrame
    refit: object | None
    fitted: np.ndarray  # fitted means (the refit's, else the rate-only model's), for residuals
    dispersion: float


@dataclass
class BoostingFit:
    """Stage 3: LightGBM with the offset, its held-out deviance against the GLM, explanations."""

    booster: object
    importance: pd.DataFrame
    deviance: pd.DataFrame
    pdp: pd.DataFrame
    ale: pd.DataFrame
    shap: pd.DataFrame
    shap_expected: float
    fitted: np.ndarray


@dataclass
class SpatialFit:
    """Stage 4: Moran's I of the residuals (GLM and boosting) and LISA clusters."""

    residuals: pd.DataFrame
    moran: dict
    moran_boosting: dict | None
    lisa: pd.DataFrame


def _part(stage: str, name: str):
    """A read-only attribute of the result that lives in one stage (None when it did not run)."""
    def get(self):
        part = getattr(self, stage)
        return None if part is None else getattr(part, name)

    return property(get, doc=f"``{stage}.{name}``")


@dataclass
class ModelResult:
    """What :func:`run_models` returns: the spec, the design and each stage's typed result. The
    stages' fields read directly too (``result.cv``, ``result.shap``, ``result.moran``...)."""

    spec: ModelSpec
    design: "Design"
    penalized: PenalizedFit
    boosting_fit: BoostingFit | None = None
    spatial: SpatialFit | None = None
    recovery: pd.DataFrame | None = None  # planted against estimated effects (simulated outcomes)
    timings: dict = field(default_factory=dict)

    # the design
    data = _part("design", "frame")  # CVEGEO, y, exposure (or trials), covariates as modelled
    outcome_label = _part("design", "outcome_label")
    family = _part("design", "family")
    covariates = _part("design", "covariates")
    transformed = _part("design", "transformed")  # covariate -> transform applied ("log1p")
    notes = _part("design", "notes")
    n_dropped = _part("design", "n_dropped")
    truth = _part("design", "truth")
    # the penalised GLM
    cv = _part("penalized", "cv")
    path = _part("penalized", "path")
    cv_curve = _part("penalized", "cv_curve")
    selected = _part("penalized", "selected")
    ratio_table = _part("penalized", "ratio_table")
    ratio_name = _part("penalized", "ratio_name")
    caveat = _part("penalized", "caveat")
    vif = _part("penalized", "vif")
    stability = _part("penalized", "stability")
    refit = _part("penalized", "refit")
    # boosting
    boosting = _part("boosting_fit", "booster")
    importance = _part("boosting_fit", "importance")
    deviance = _part("boosting_fit", "deviance")
    pdp = _part("boosting_fit", "pdp")
    ale = _part("boosting_fit", "ale")
    shap = _part("boosting_fit", "shap")
    shap_expected = _part("boosting_fit", "shap_expected")
    # spatial checks
    residuals = _part("spatial", "residuals")
    moran = _part("spatial", "moran")
    moran_boosting = _part("spatial", "moran_boosting")
    lisa = _part("spatial", "lisa")

    def to_dict(self) -> dict:
        """JSON-ready summary (what the CLI prints)."""
        def records(frame):
            return None if frame is None else frame.replace({np.inf: None, -np.inf: None}).to_dict(orient="records")

        spec = {k: v for k, v in self.spec.settings().items() if k != "table_bytes"}
        out = {
            "outcome": self.outcome_label, "family": self.family, "n_municipalities": int(len(self.data)),
            "n_dropped": int(self.n_dropped), "covariates": self.covariates, "transformed": self.transformed,
            "notes": self.notes, "spec": spec,
            "penalty": {"rule": self.spec.penalty.rule, "lambda_chosen": self.cv.alpha_,
                        "lambda_min": self.cv.lambda_min_,
                        "lambda_1se": self.cv.lambda_1se_, "l1_ratio": self.spec.penalty.l1_ratio,
                        "adaptive": self.spec.penalty.adaptive, "dispersion": self.cv.dispersion_},
            "cv_deviance": {"chosen": float(self.cv.cv_mean_[self.cv.chosen_index_]),
                            "chosen_se": float(self.cv.cv_se_[self.cv.chosen_index_]),
                            "minimum": float(self.cv.cv_mean_.min()), "n_folds": self.spec.penalty.n_folds},
            "selected": self.selected, "ratio": self.ratio_name,
            "selected_table": records(self.ratio_table), "caveat": self.caveat,
            "vif": records(self.vif), "stability": records(self.stability),
            "deviance_comparison": records(self.deviance),
            "boosting_importance": records(self.importance),
            "moran_residuals": self.moran, "moran_boosting_residuals": self.moran_boosting,
            "lisa_counts": None if self.lisa is None else self.lisa["cluster"].value_counts().to_dict(),
            "truth_recovery": records(self.recovery), "timings_s": self.timings,
        }
        return out


# ---------------------------------------------------------------- outcome catalogue
def count_outcomes(catalog: pd.DataFrame | None = None) -> pd.DataFrame:
    """Count outcomes of the panel: name, label, unit, year (from the variable catalogue)."""
    from pumamed.epi.panel import variable_catalog

    catalog = variable_catalog() if catalog is None else catalog
    rows = catalog[(catalog["group"] == "outcome") & (catalog["kind"] == "count")].copy()
    rows["label"] = [_standalone_label(n, lab) for n, lab in zip(rows["name"], rows["label"])]
    return rows[["name", "label", "unit", "source", "year"]].reset_index(drop=True)


def _standalone_label(name: str, label: str) -> str:
    """Catalogue labels such as "… of them hospitalized" read as sub-items of the line above;
    outside that list they need their subject back."""
    text = str(label).strip()
    if text.startswith("…") and name.startswith("covid_diabetic_"):
        rest = text.lstrip("… ").removeprefix("of them").strip()
        return f"Diabetic COVID-19 patients {rest}"
    return text


def candidate_covariates(catalog: pd.DataFrame | None = None) -> pd.DataFrame:
    """Numeric socioeconomic, population, geography and pollutant columns usable as covariates."""
    from pumamed.epi.panel import variable_catalog

    catalog = variable_catalog() if catalog is None else catalog
    keep = catalog["group"].isin(["socioeconomic", "pollutant", "population", "geography"]) & \
        catalog["kind"].isin(["continuous", "share"])
    drop = {"population", "centroid_lon", "centroid_lat"}
    rows = catalog[keep & ~catalog["name"].isin(drop)]
    return rows[["name", "group", "label", "unit", "source", "year"]].reset_index(drop=True)


# (numerator, denominator, label): severity proportions among the panel's counts, defined as the
# outcome readers define their shares (ICU and intubation among the hospitalised, deaths among
# all diabetic patients).
SEVERITY_PAIRS = (
    ("covid_diabetic_hospitalized", "covid_diabetic_patients", "Hospitalised among diabetic COVID-19 patients"),
    ("covid_diabetic_icu", "covid_diabetic_hospitalized", "ICU among hospitalised diabetic COVID-19 patients"),
    ("covid_diabetic_intubated", "covid_diabetic_hospitalized", "Intubated among hospitalised diabetic COVID-19 patients"),
    ("covid_diabetic_deaths", "covid_diabetic_patients", "Deaths among diabetic COVID-19 patients"),
    ("covid_diabetic_deaths", "covid_diabetic_hospitalized", "Deaths among hospitalised diabetic COVID-19 patients"),
    ("diabetes_deaths", "deaths_all_causes_records", "Diabetes deaths among all deaths (Sonora)"),
    ("diabetes_discharge_deaths", "diabetes_discharges", "In-hospital deaths among diabetes discharges"),
)


def severity_pairs(catalog: pd.DataFrame | None = None) -> list[tuple[str, str, str]]:
    """(numerator, denominator, label) severity proportions whose counts are in the panel."""
    names = set(count_outcomes(catalog)["name"])
    return [(a, b, label) for a, b, label in SEVERITY_PAIRS if a in names and b in names]


# ---------------------------------------------------------------- design
def _cross_section(data_dir, outcome_cols, year):
    from pumamed.epi.panel import load_panel

    panel = load_panel(data_dir)
    if year is None:
        if outcome_cols:
            with_data = panel.dropna(subset=outcome_cols).groupby("year").size()
            if with_data.empty:
                raise DataError(f"the panel has no values of {', '.join(outcome_cols)} in any year")
            year = int(with_data.idxmax())
        else:
            year = 2020
    section = panel[panel["year"] == int(year)].reset_index(drop=True)
    if section.empty:
        raise DataError(f"the panel has no rows for {year}")
    return section, int(year)


def _read_user_table(spec: ModelSpec) -> pd.DataFrame:
    try:
        from pumamed.epi.outcomes import read_outcome_table
    except ImportError as exc:  # pragma: no cover - the data layer ships it
        raise DataError("reading outcome tables needs pumamed.epi.outcomes") from exc
    source = io.BytesIO(spec.table.data) if spec.table.data is not None else spec.table.path
    if spec.table.data is not None:
        source.name = spec.table.name  # messages name the file; .xlsx is recognised by name
    if source is None:
        raise InputError("a table outcome needs a CSV file")
    table = read_outcome_table(source, count_col=spec.table.count_col, code_col=spec.table.code_col,
                               population_col=spec.table.population_col, year_col=spec.table.year_col)
    if spec.table.year_col and table["year"].nunique() > 1:
        year = spec.outcome.year or int(table["year"].max())
        table = table[table["year"] == year]
        if table.empty:
            raise DataError(f"the outcome table has no rows for {year}")
    if table["CVEGEO"].duplicated().any():
        raise DataError("the outcome table has several rows per municipality; keep one year")
    return table


def _resolve_covariates(spec: ModelSpec, section: pd.DataFrame) -> list[str]:
    wanted = spec.outcome.covariates
    covariates = list(wanted) if wanted else [c for c in DEFAULT_COVARIATES if c in section.columns]
    unknown = [c for c in covariates if c not in section.columns]
    if unknown:
        raise DataError(f"unknown covariates: {', '.join(unknown)}")
    not_numeric = [c for c in covariates if not pd.api.types.is_numeric_dtype(section[c])]
    if not_numeric:
        raise DataError(f"covariates must be numeric: {', '.join(not_numeric)}")
    if not covariates:
        raise DataError("choose at least one covariate")
    return list(dict.fromkeys(covariates))


def _log_skewed(X: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """log1p for non-negative covariates whose skewness exceeds :data:`SKEW_THRESHOLD` (density,
    income, altitude ...), so one metropolis does not set the slope of a linear predictor."""
    out = X.copy()
    done = {}
    for col in X.columns:
        values = X[col].to_numpy(float)
        finite = values[np.isfinite(values)]
        if len(finite) > 2 and finite.min() >= 0 and pd.Series(finite).skew() > SKEW_THRESHOLD:
            out[col] = np.log1p(values)
            done[col] = "log1p"
    return out, done


def simulate_from_spec(spec: ModelSpec):
    """Draw the simulated outcome of ``spec`` from the real covariates of the panel's cross-section.

    Returns (SimulatedOutcome, complete rows, covariates as simulated, covariate names,
    transforms, planted effects, rows dropped, year)."""
    from pumamed.epi import simulate

    section, year = _cross_section(spec.outcome.data_dir, [], spec.outcome.year or 2020)
    covariates = _resolve_covariates(spec, section)
    base = section[["CVEGEO", "population"] + covariates]
    complete = base.dropna()
    complete = complete[complete["population"] > 0]
    n_dropped = len(base) - len(complete)
    X, transformed = _log_skewed(complete[covariates]) if spec.outcome.log_skewed else (complete[covariates], {})
    sim_spec = spec.simulation
    effects = dict(sim_spec.effects) or simulate.default_effects(covariates, sim_spec.n_planted, sim_spec.seed)
    sim = simulate.simulate_outcome(
        X, complete["population"], effects=effects, baseline_rate=spec.simulation.baseline_rate,
        dispersion=spec.simulation.dispersion, severity_effects=dict(spec.simulation.severity_effects),
        severity_baseline=spec.simulation.severity_baseline, codes=complete["CVEGEO"], seed=spec.simulation.seed)
    return sim, complete, X, covariates, transformed, effects, n_dropped, year


@dataclass
class Design:
    frame: pd.DataFrame  # CVEGEO + y + exposure/trials + covariates (complete rows)
    covariates: list[str]
    family: str
    outcome_label: str
    transformed: dict
    notes: list[str]
    n_dropped: int
    truth: pd.DataFrame | None = None
    exposure_col: str | None = "population"
    trials_col: str | None = None


def build_design(spec: ModelSpec) -> Design:
    """Resolve outcome and covariates into complete rows (see module doc)."""
    from pumamed.epi import simulate

    notes: list[str] = []
    severity = spec.outcome.severity_denominator is not None
    family = "binomial" if severity else spec.penalty.family
    if family not in COUNT_FAMILIES + ("binomial",):
        raise InputError(f"family must be one of {', '.join(COUNT_FAMILIES)}; got {spec.penalty.family!r}")

    truth = None
    if spec.outcome.outcome == SIMULATED:
        sim, complete, X, covariates, transformed, effects, n_dropped, year = simulate_from_spec(spec)
        frame = pd.DataFrame({"CVEGEO": complete["CVEGEO"].to_numpy()})
        if severity:
            frame["y"] = sim.data[simulate.SEVERE_COLUMN].to_numpy()
            frame["trials"] = sim.data[simulate.COUNT_COLUMN].to_numpy()
            label = "Simulated severity (severe among simulated cases)"
        else:
            frame["y"] = sim.data[simulate.COUNT_COLUMN].to_numpy()
            label = "Simulated count (planted effects)"
        frame["population"] = complete["population"].to_numpy(float)
        for c in covariates:
            frame[c] = X[c].to_numpy(float)
        if severity:
            no_cases = frame["trials"] <= 0
            if no_cases.any():
                notes.append(f"{int(no_cases.sum())} municipalities without simulated cases left out (no denominator)")
                frame = frame[~no_cases]
                n_dropped += int(no_cases.sum())
        truth = sim.truth
        notes.append(f"simulated from the real {year} covariates: planted IRRs per SD "
                     + ", ".join(f"{k} {v:.3g}" for k, v in effects.items())
                     + f"; dispersion {spec.simulation.dispersion:g}; baseline rate {spec.simulation.baseline_rate:g}")
    else:
        if spec.outcome.outcome == "table":
            table = _read_user_table(spec)
            section, year = _cross_section(spec.outcome.data_dir, [], spec.outcome.year or 2020)
            covariates = _resolve_covariates(spec, section)
            table = table[["CVEGEO", "count"] + (["population"] if "population" in table.columns else [])]
            table = table.rename(columns={"count": "table_count", "population": "table_population"})
            merged = table.merge(section[["CVEGEO", "population"] + covariates], on="CVEGEO", how="left",
                                 indicator=True)
            unmatched = merged["_merge"] == "left_only"
            if unmatched.all():
                raise DataError("no code of the table matches a municipality of the panel (CVEGEO, 5 digits)")
            if unmatched.any():
                notes.append(f"{int(unmatched.sum())} table rows have codes outside the 2,469 municipalities, "
                             f"e.g. {', '.join(merged.loc[unmatched, 'CVEGEO'].head(3))}")
            merged = merged[~unmatched]
            if "table_population" in merged.columns:
                merged["population"] = merged["table_population"]  # the table's own exposure wins
            else:
                notes.append("exposure: census 2020 population of each municipality")
            y_col = "table_count"
            label = f"{spec.table.name}: {spec.table.count_col}"
        else:
            catalog_counts = count_outcomes()
            if spec.outcome.outcome not in set(catalog_counts["name"]):
                raise DataError(f"unknown count outcome {spec.outcome.outcome!r}; choose one of "
                                f"{', '.join(catalog_counts['name']) or '(none in the panel)'}, 'simulated' or a CSV")
            cols = [spec.outcome.outcome] + ([spec.outcome.severity_denominator] if severity else [])
            section, year = _cross_section(spec.outcome.data_dir, cols, spec.outcome.year)
            covariates = _resolve_covariates(spec, section)
            merged = section
            y_col = spec.outcome.outcome
            label = catalog_counts.set_index("name").loc[spec.outcome.outcome, "label"] + f" ({year})"
        needed = ["CVEGEO", y_col] + covariates
        if severity:
            if spec.outcome.severity_denominator not in merged.columns:
                raise DataError(f"denominator column {spec.outcome.severity_denominator!r} not found")
            needed.append(spec.outcome.severity_denominator)
            label = f"{label} / {spec.outcome.severity_denominator}"
        else:
            needed.append("population")
        base = merged[list(dict.fromkeys(needed))].copy()
        n_outcome = int(base[y_col].notna().sum())
        complete = base.dropna()
        lost_cov = n_outcome - len(complete)  # rows with the outcome but a missing covariate
        if severity:
            denominator = spec.outcome.severity_denominator
            zero = complete[denominator] <= 0
            if zero.any():
                notes.append(f"{int(zero.sum()):,} municipalities with a zero denominator ({denominator} = 0) "
                             "left out: the proportion is undefined there")
            complete = complete[~zero]
            # Events outside the denominator (e.g. deaths of patients never hospitalised, counted
            # against the hospitalised) make a proportion above 1: those rows are inconsistent.
            over = complete[y_col] > complete[denominator]
            if over.any():
                notes.append(f"{int(over.sum()):,} municipalities where {y_col} exceeds {denominator} left out "
                             "as inconsistent (events counted outside the denominator)")
            complete = complete[~over]
        else:
            complete = complete[complete["population"] > 0]
        n_dropped = len(base) - len(complete)
        if n_outcome < len(base):
            notes.append(f"{len(base) - n_outcome} municipalities have no value of the outcome "
                         "(outside the source's coverage)")
        if lost_cov > 0:
            missing_by = base.loc[base[y_col].notna(), covariates].isna().sum()
            worst = missing_by[missing_by > 0].sort_values(ascending=False).head(4)
            notes.append(f"{lost_cov} municipalities with the outcome dropped for missing covariates"
                         + (" (most missing: " + ", ".join(f"{k} {v}" for k, v in worst.items()) + ")"
                            if len(worst) else ""))
        X, transformed = _log_skewed(complete[covariates]) if spec.outcome.log_skewed else (complete[covariates], {})
        frame = pd.DataFrame({"CVEGEO": complete["CVEGEO"].to_numpy(), "y": complete[y_col].to_numpy(float)})
        if severity:
            frame["trials"] = complete[spec.outcome.severity_denominator].to_numpy(float)
        else:
            frame["population"] = complete["population"].to_numpy(float)
        for c in covariates:
            frame[c] = X[c].to_numpy(float)
        if np.any(frame["y"] != np.round(frame["y"])):
            raise DataError("the outcome must hold whole counts (events), not rates or percentages")
    if transformed:
        notes.append("log1p applied to skewed covariates: " + ", ".join(transformed))
    if len(frame) < MIN_ROWS:
        raise DataError(f"only {len(frame)} municipalities have the outcome and every covariate; at least "
                        f"{MIN_ROWS} are needed (choose fewer covariates or another outcome)")
    if frame["y"].sum() == 0:
        raise DataError("the outcome is zero in every municipality: nothing to model")
    return Design(frame.reset_index(drop=True), covariates, family, label, transformed, notes, int(n_dropped),
                  truth, None if severity else "population", "trials" if severity else None)


def empty_selection_message(family: str, rule: str, n_rows: int) -> str:
    """What "no covariate survives the penalty" means, in words a reader can act on."""
    target = "proportion" if family == "binomial" else "rate"
    by = "the 1-SE rule" if rule == "1se" else "the minimum cross-validated deviance"
    return (f"No covariate survives the penalty: at the λ chosen by {by}, cross-validation finds that no "
            f"chosen covariate predicts the {target} in these {n_rows:,} municipalities better than the overall "
            f"{target} alone. This is about predictive value at this sample size, not proof that no association "
            "exists; there is no refit and hence no interval to show. Try the minimum-deviance rule, other "
            "covariates, or the boosting tab.")


# ---------------------------------------------------------------- the pipeline
def run_models(spec: ModelSpec, weights=None) -> ModelResult:
    """Run the whole pipeline for ``spec`` (see module doc). ``weights``: precomputed spatial
    weights for the design's municipalities (the page and the benchmark cache them)."""
    from threadpoolctl import threadpool_limits

    # Small matrices throughout: one BLAS thread is fastest (see penalized.single_thread_blas).
    with threadpool_limits(limits=1, user_api="blas"):
        return _run_models(spec, weights)


def _run_models(spec: ModelSpec, weights=None) -> ModelResult:
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 4)
        clock = now

    design = build_design(spec)
    lap("design")
    arrays = _DesignArrays.of(design)
    from pumamed.epi import penalized as pen

    folds = pen.make_folds(len(design.frame), spec.penalty.n_folds, spec.seed)
    penalized = fit_penalized(design, arrays, spec, folds, lap)
    result = ModelResult(spec=spec, design=design, penalized=penalized, timings=timings)
    if design.truth is not None:
        result.recovery = _recovery(design.truth, penalized.ratio_table, design.covariates, design.family)
    if spec.diagnostics.run_boosting:
        result.boosting_fit = fit_boosting(design, arrays, spec, folds, penalized, lap)
    if spec.diagnostics.run_spatial:
        result.spatial = spatial_checks(design, arrays, spec, penalized, result.boosting_fit, weights, lap)
    result.timings["total"] = round(sum(v for k, v in result.timings.items() if k != "total"), 4)
    return result


@dataclass
class _DesignArrays:
    """The design as the estimators take it."""

    X: pd.DataFrame
    y: np.ndarray
    exposure: np.ndarray | None
    trials: np.ndarray | None

    @classmethod
    def of(cls, design: "Design") -> "_DesignArrays":
        from pumamed.epi import penalized as pen

        frame = design.frame
        arrays = cls(frame[design.covariates], frame["y"].to_numpy(float),
                     frame["population"].to_numpy(float) if design.exposure_col else None,
                     frame["trials"].to_numpy(float) if design.trials_col else None)
        pen.check_design(arrays.X, arrays.y, exposure=arrays.exposure, trials=arrays.trials, family=design.family)
        return arrays


def fit_penalized(design: "Design", arrays: _DesignArrays, spec: ModelSpec, folds, lap=lambda name: None
                  ) -> PenalizedFit:
    """Stages 1-2 (module doc): path and cross-validation, refit, VIFs, stability selection."""
    from pumamed.epi import penalized as pen

    covs, family, penalty = design.covariates, design.family, spec.penalty
    X, y, exposure, trials = arrays.X, arrays.y, arrays.exposure, arrays.trials
    cv = pen.PenalizedGLMCV(family=family, l1_ratio=penalty.l1_ratio, n_lambdas=penalty.n_lambdas,
                            n_folds=penalty.n_folds, rule=penalty.rule, adaptive=penalty.adaptive,
                            random_state=spec.seed)
    cv.fit(X, y, exposure=exposure, trials=trials, folds=folds)
    lap("penalised_path_cv")
    ratio_table, refit = pen.refit_table(X, y, cv.selected_, exposure=exposure, trials=trials, family=family)
    if len(ratio_table):
        chosen = dict(zip(covs, cv.coef_))
        ratio_table.insert(1, "penalised_ratio_per_sd", [float(np.exp(chosen[v])) for v in ratio_table["variable"]])
    lap("refit")
    vif = pen.variance_inflation(X).rename_axis("variable").reset_index()
    vif["selected"] = vif["variable"].isin(cv.selected_)
    lap("vif")
    stability = pen.stability_selection(X, y, exposure=exposure, trials=trials, family=family,
                                        l1_ratio=penalty.l1_ratio, alpha=cv.alpha_, n_resamples=penalty.n_resamples,
                                        method=penalty.resampling, dispersion=cv.dispersion_, random_state=spec.seed,
                                        warm_start=(cv.intercept_, cv.coef_), penalty_factor=cv.penalty_factor_)
    stability = stability.rename_axis("variable").reset_index()
    stability["selected"] = stability["variable"].isin(cv.selected_)
    stability = stability.sort_values("selection_frequency", ascending=False).reset_index(drop=True)
    if len(ratio_table):
        stab_lookup = stability.set_index("variable")["selection_frequency"]
        ratio_table["selection_frequency"] = ratio_table["variable"].map(stab_lookup).to_numpy()
    lap("stability")
    # Fitted means for residuals: the unpenalised refit (or the rate-only model if nothing was kept).
    if refit is not None:
        fitted = refit.predict(X[cv.selected_], exposure=exposure)
        dispersion = refit.dispersion_
    else:
        fitted = (np.full(len(y), y.sum() / trials.sum()) if family == "binomial"
                  else exposure * y.sum() / exposure.sum())
        dispersion = cv.dispersion_
    return PenalizedFit(cv=cv, path=cv.path_.to_frame(), cv_curve=cv.cv_frame(), selected=list(cv.selected_),
                        ratio_table=ratio_table, ratio_name="OR" if family == "binomial" else "IRR",
                        caveat=pen.POST_SELECTION_CAVEAT, vif=vif, stability=stability, refit=refit, fitted=fitted,
                        dispersion=dispersion)


def fit_boosting(design: "Design", arrays: _DesignArrays, spec: ModelSpec, folds, penalized: PenalizedFit,
                 lap=lambda name: None) -> BoostingFit:
    """Stage 3 (module doc): LightGBM with the offset, held-out deviance on the GLM's folds,
    importance, partial dependence, ALE and SHAP for the top covariates."""
    from pumamed.epi import boosting as boost

    frame, covs, family = design.frame, design.covariates, design.family
    X, y, exposure, trials = arrays.X, arrays.y, arrays.exposure, arrays.trials
    boost_family = "binomial" if family == "binomial" else "poisson"
    booster = boost.OffsetBoosting(family=boost_family, random_state=spec.seed)
    booster.fit(X, y, exposure=exposure, trials=trials)
    fitted = booster.predict(X, exposure=exposure if family != "binomial" else None)
    lap("boosting_fit")
    # The folds reuse the number of trees chosen by early stopping on the full data (one probe
    # instead of five); a mild optimism in the boosting column, stated in the docs.
    fold_model = boost.OffsetBoosting(family=boost_family, random_state=spec.seed,
                                      n_estimators=booster.n_trees_, early_stopping_rounds=0)
    held_out = boost.cross_validated_predictions(fold_model, X, y, folds, exposure=exposure, trials=trials)
    lap("boosting_cv")
    preds = {"null (overall rate)": boost.null_predictions(y, folds, exposure=exposure, trials=trials),
             f"penalised {family} GLM": penalized.cv.fold_predictions_, "LightGBM (offset)": held_out}
    deviance = boost.deviance_table(y, folds, preds, family=family, trials=trials)
    shap_frame, expected = boost.shap_values(booster, X)
    shap_frame.index = frame["CVEGEO"].to_numpy()
    lap("shap")
    importance = pd.DataFrame({"variable": covs, "gain": booster.feature_importances_,
                               "mean_abs_shap": shap_frame.abs().mean().to_numpy()})
    importance["gain_share"] = importance["gain"] / max(importance["gain"].sum(), 1e-12)
    importance = importance.sort_values("mean_abs_shap", ascending=False).reset_index(drop=True)
    top = importance["variable"].head(spec.diagnostics.top_features).tolist()
    Xi = X.set_axis(frame["CVEGEO"].to_numpy(), axis=0)
    pdp = boost.partial_dependence(booster, Xi, top, random_state=spec.seed)
    ale = pd.concat([boost.accumulated_local_effects(booster, Xi, f) for f in top], ignore_index=True)
    lap("pdp_ale")
    return BoostingFit(booster=booster, importance=importance, deviance=deviance, pdp=pdp, ale=ale, shap=shap_frame,
                       shap_expected=expected, fitted=fitted)


def spatial_checks(design: "Design", arrays: _DesignArrays, spec: ModelSpec, penalized: PenalizedFit,
                   boosting: BoostingFit | None, weights=None, lap=lambda name: None) -> SpatialFit:
    """Stage 4 (module doc): Pearson residuals of the GLM (and of boosting), Moran's I, LISA."""
    from pumamed.epi import spatial

    frame, family = design.frame, design.family
    y, trials = arrays.y, arrays.trials
    permutations = spec.diagnostics.permutations
    if weights is None:
        weights = spatial.municipal_weights(frame["CVEGEO"].tolist(), spec.outcome.data_dir)
    lap("weights")
    resid = spatial.pearson_residuals(y, penalized.fitted, family, penalized.dispersion, trials)
    residuals = pd.DataFrame({"CVEGEO": frame["CVEGEO"], "observed": y, "fitted_glm": penalized.fitted,
                              "pearson_glm": resid})
    moran = spatial.morans_i(resid, weights, permutations, spec.seed).to_dict()
    moran_boosting = None
    if boosting is not None:
        resid_b = spatial.pearson_residuals(y, boosting.fitted, "binomial" if family == "binomial" else "poisson",
                                            0.0, trials)
        residuals["fitted_boosting"] = boosting.fitted
        residuals["pearson_boosting"] = resid_b
        moran_boosting = spatial.morans_i(resid_b, weights, permutations, spec.seed).to_dict()
    lisa = spatial.lisa_clusters(resid, weights, permutations, seed=spec.seed)
    lap("spatial")
    return SpatialFit(residuals=residuals, moran=moran, moran_boosting=moran_boosting, lisa=lisa)


def _recovery(truth: pd.DataFrame, ratio_table: pd.DataFrame, covariates, family) -> pd.DataFrame:
    """Planted versus estimated ratios per SD, and whether each covariate was selected."""
    col_true = "severity_or_per_sd" if family == "binomial" else "irr_per_sd"
    col_planted = "severity_planted" if family == "binomial" else "planted"
    est = ratio_table.set_index("variable") if len(ratio_table) else pd.DataFrame(columns=["ratio_per_sd"])
    rows = []
    for row in truth.itertuples(index=False):
        d = row._asdict()
        selected = d["variable"] in est.index
        estimate = float(est.loc[d["variable"], "ratio_per_sd"]) if selected else 1.0
        rows.append({"variable": d["variable"], "planted": bool(d[col_planted]), "true_ratio": float(d[col_true]),
                     "selected": selected, "estimated_ratio": estimate,
                     "relative_error": abs(estimate - d[col_true]) / d[col_true]})
    out = pd.DataFrame(rows)
    out["outcome"] = np.select([out["planted"] & out["selected"], out["planted"] & ~out["selected"],
                                ~out["planted"] & out["selected"]],
                               ["found", "missed", "false positive"], "correctly left out")
    return out.sort_values(["planted", "true_ratio"], ascending=[False, False]).reset_index(drop=True)


def result_json(result: ModelResult) -> dict:
    return result.to_dict()


def user_table_spec(path: str | Path, **kwargs) -> ModelSpec:
    """A :class:`ModelSpec` for a user's CSV at ``path``."""
    return ModelSpec.of(outcome="table", table_path=str(path), table_name=Path(path).name, **kwargs)
