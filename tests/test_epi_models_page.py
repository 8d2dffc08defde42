"""The diabetes-models page through the real router: outcomes, family and settings change without errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.apptest import open_page

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGE = "views/epi_models.py"
TIMEOUT = 300


def _open(presentation=False) -> AppTest:
    return open_page(PAGE, presentation, timeout=TIMEOUT)


def _no_errors(at: AppTest):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.mark.slow
def test_models_page_outcomes_and_settings(epi_root):
    at = _open()
    _no_errors(at)
    labels = [m.label for m in at.metric]
    assert "Covariates selected" in labels and "Moran's I (residuals)" in labels
    assert any("post-selection" in w.value for w in at.warning), "the post-selection caveat is missing"

    # Simulated outcome with planted effects: the recovery table appears and every planted one is found.
    at.slider(key="models_resamples").set_value(10)
    at.radio(key="models_outcome_kind").set_value("Simulated (planted effects)").run()
    _no_errors(at)
    recovery = [d.value for d in at.dataframe if "outcome" in getattr(d.value, "columns", [])]
    assert recovery, "no planted-versus-recovered table"
    planted = recovery[0][recovery[0]["planted"]]
    assert (planted["outcome"] == "found").all(), planted

    # Poisson family and the minimum-CV rule.
    at.radio(key="models_family").set_value("poisson")
    at.radio(key="models_rule").set_value("min").run()
    _no_errors(at)

    # Severity proportions (binomial): odds ratios.
    at.radio(key="models_outcome_kind").set_value("Severity (proportion)").run()
    _no_errors(at)
    assert any("OR per SD" in s.value for s in at.subheader)

    # Another covariate in the explanations fragment.
    feature = at.selectbox(key="models_pdp_feature")
    feature.set_value(feature.options[-1]).run()
    _no_errors(at)

    # Upload mode without a file says what to do.
    at.radio(key="models_outcome_kind").set_value("Upload a table").run()
    _no_errors(at)
    assert any("CVEGEO" in i.value for i in at.info)


@pytest.mark.slow
def test_models_page_in_presentation_mode_without_covariates(epi_root):
    at = _open(presentation=True)
    _no_errors(at)
    # covariates without any 2020 value are not offered; the others show their coverage
    options = at.multiselect(key="models_covariates").options
    assert options and all(" covered" in o for o in options)
    assert not any(o.endswith("· 0% covered") for o in options), [o for o in options if "· 0%" in o]
    assert len(options) < 55, "covariates without coverage are still offered"
    at.multiselect(key="models_covariates").set_value([]).run()
    _no_errors(at)
    assert any("at least one covariate" in i.value for i in at.info)


@pytest.mark.slow
def test_severity_outcomes_fit_and_say_what_an_empty_selection_means(epi_root):
    at = _open()
    at.slider(key="models_resamples").set_value(10)
    at.radio(key="models_outcome_kind").set_value("Severity (proportion)").run()
    _no_errors(at)
    # the default pair: nothing survives the penalty, so no caveat about a refit that did not happen
    selected = next(m.value for m in at.metric if m.label == "Covariates selected")
    assert selected.startswith("0 /"), selected  # hospitalised among diabetic patients, 2020 covariates
    assert any("No covariate survives" in i.value and "not proof" in i.value for i in at.info)
    assert not any("post-selection" in w.value for w in at.warning)
    # deaths among the hospitalised: municipalities with more deaths than hospitalisations are left out
    pairs = at.selectbox(key="models_severity")
    hospitalised_deaths = next(i for i, label in enumerate(pairs.options)
                               if label.startswith("Deaths among hospitalised"))
    pairs.set_value(hospitalised_deaths).run()
    _no_errors(at)
    notes = " ".join(c.value for c in at.caption)
    assert "exceeds covid_diabetic_hospitalized" in notes and "inconsistent" in notes
    assert int(next(m.value for m in at.metric if m.label == "Municipalities").replace(",", "")) > 500
    # the LISA cluster map carries the state outlines, as the residual map does
    import json

    figures = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    lisa = next(f for f in figures if "LISA clusters" in json.dumps(f["layout"].get("title", "")))
    outlines = [t for t in lisa["data"] if t["type"] == "scattergeo" and t.get("mode") == "lines"]
    assert outlines, "no state outlines on the LISA map"
    # charts speak in labels, on the binomial model's scale, and no two covariates share a colour
    path = next(f for f in figures if "Coefficient path" in json.dumps(f["layout"].get("title", "")))
    assert "log odds" in json.dumps(path["layout"]["title"]) and "rate" not in json.dumps(path["layout"]["title"])
    names = [t["name"] for t in path["data"] if t.get("name")]
    assert names and not [n for n in names if n.startswith("ses_")], names
    looks = [(t["line"]["color"], t["line"].get("dash")) for t in path["data"] if t.get("name")]
    assert len(set(looks)) == len(looks), "two covariates share a colour in the coefficient path"
    dependence = next(f for f in figures if "SHAP dependence" in json.dumps(f["layout"].get("title", "")))
    assert "ses_" not in json.dumps(dependence["layout"]["xaxis"].get("title", ""))


def test_a_missing_panel_says_where_it_goes_and_a_broken_one_says_what_is_wrong(tmp_path, monkeypatch):
    (tmp_path / "epi").mkdir()
    monkeypatch.setenv("PUMAMED_DATA_DIR", str(tmp_path))
    at = _open()
    assert not at.exception, [e.value for e in at.exception]
    assert any("was not found" in i.value for i in at.info), [i.value for i in at.info]

    import pumamed.epi.panel as panel
    from pumamed.errors import DataError

    def broken(data_dir=None):
        raise DataError("IMM_2020.csv: the file is corrupt (not a CSV table)")

    monkeypatch.setattr(panel, "load_panel", broken)
    monkeypatch.setenv("PUMAMED_DATA_DIR", str(tmp_path / "epi"))  # another cache key for the catalogue
    at = _open()
    assert not at.exception, [e.value for e in at.exception]
    assert not any("was not found" in i.value for i in at.info)
    assert any("the file is corrupt (not a CSV table)" in e.value for e in at.error), [e.value for e in at.error]
