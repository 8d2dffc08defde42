"""The public-health pages (map, socioeconomic factors, air pollutants) through the real router.

They render on the real data, react to their widgets without an exception, and say what is
missing (never a traceback) when the data directory is empty.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.apptest import open_page

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 300  # the first run of a process assembles the panel (tens of seconds on 2 busy cores)


def _open(page: str, presentation: bool = False) -> AppTest:
    return open_page(page, presentation, timeout=TIMEOUT)


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _metric(at: AppTest, label_start: str) -> str:
    for metric in at.metric:
        if metric.label.startswith(label_start):
            return metric.value
    raise AssertionError(f"no metric starting {label_start!r}: {[m.label for m in at.metric]}")


def test_map_page_changes_variable_scheme_and_state(epi_root):
    at = _open("views/epi_map.py")
    _ok(at)
    assert at.selectbox(key="map_variable").value == "ses_marginalization_index"
    assert _metric(at, "Municipalities with data") == "2,469 / 2,469"
    source = next(c.value for c in at.caption if c.value.startswith("**Source:**"))
    assert "year shown 2020" in source, source

    at.selectbox(key="map_variable").set_value("ses_illiteracy_pct")
    at.selectbox(key="map_scheme").set_value("natural_breaks")
    at.selectbox(key="map_palette").set_value("cividis")
    at.run()
    _ok(at)
    at.multiselect(key="map_states").set_value(["20"])  # Oaxaca: 570 municipalities
    at.run()
    _ok(at)
    assert _metric(at, "Municipalities with data").endswith("/ 570")
    shown = at.dataframe[0].value
    assert len(shown) == 570 and set(shown["CVE_ENT"]) == {"20"}
    assert {"municipality", "state", "ses_illiteracy_pct", "class"} <= set(shown.columns)
    assert at.get("download_button"), "the table download is missing"


def test_map_page_other_theme(epi_root):
    at = _open("views/epi_map.py", presentation=True)
    _ok(at)
    at.selectbox(key="map_group").set_value("pollutant")
    at.run()
    _ok(at)
    # Pollutant exposure exists only near stations: the map says so by its count.
    count = _metric(at, "Municipalities with data")
    assert int(count.split("/")[0].replace(",", "")) < 2469


def test_factors_page_reproduces_conapo_with_one_factor(epi_root):
    at = _open("views/epi_factors.py")
    _ok(at)
    assert len(at.multiselect(key="fa_indicators").value) == 9
    assert float(_metric(at, "KMO")) > 0.7
    assert at.success, "the adequacy verdict is missing"

    at.toggle(key="fa_follow").set_value(False)
    at.run()  # the number of factors is enabled once the toggle is off
    # ... and starts from the suggestion (2 factors for CONAPO's nine indicators), not from 1
    assert at.number_input(key="fa_k").value == 2
    assert not at.warning
    at.number_input(key="fa_k").set_value(8)  # 8 factors from 9 indicators: not identified
    at.run()
    _ok(at)
    assert any("8 factors from 9 indicators" in w.value and "At most 5" in w.value for w in at.warning)
    at.number_input(key="fa_k").set_value(1)
    at.run()
    _ok(at)
    r = float(_metric(at, "r(F1, IM_2020)"))
    assert abs(r) >= 0.95, r

    at.selectbox(key="fa_method").set_value("ml")
    at.selectbox(key="fa_rotation").set_value("oblimin")
    at.number_input(key="fa_k").set_value(3)
    at.run()
    _ok(at)
    # With three factors the page still reports the one-factor reference: a single ML factor of
    # the same indicators, as the library computes it.
    from pumamed.epi.factors import VALIDATION_VARIABLE, SocioeconomicFactors, indicator_table

    table, _ = indicator_table(str(epi_root))
    columns = list(at.multiselect(key="fa_indicators").value)
    single = SocioeconomicFactors(n_factors=1, method="ml").fit(table[columns])
    expected = single.scores_frame(table[columns], index=table.index)["F1"].corr(table[VALIDATION_VARIABLE])
    assert abs(expected) >= 0.9, expected
    assert float(_metric(at, "r(one factor, IM_2020)")) == pytest.approx(expected, abs=1e-3)
    assert at.selectbox(key="fa_factor").options == ["F1", "F2", "F3"]

    # Poverty = extreme + moderate poverty (rounded): a doubtful set is flagged in words.
    at.selectbox(key="fa_method").set_value("minres")
    at.number_input(key="fa_k").set_value(1)
    at.multiselect(key="fa_indicators").set_value(
        ["ses_poverty_pct", "ses_extreme_poverty_pct", "ses_moderate_poverty_pct", "ses_hdi"])
    at.run()
    _ok(at)
    verdict = " ".join(w.value for w in at.warning)
    assert "Doubtful" in verdict and "collinear" in verdict, verdict
    assert "Heywood" in verdict, verdict


def test_pollutants_page_switches_pollutant_and_network(epi_root):
    at = _open("views/epi_pollutants.py")
    _ok(at)
    assert int(_metric(at, "Stations with a valid annual mean")) > 0
    # the exposure classes count the states drawn; the caption accounts for the rest of the 2,469
    classes = sum(int(_metric(at, label).replace(",", "")) for label in
                  ("Station in the municipality", "Inverse-distance within 50 km", "No station in range"))
    accounted = next(c.value for c in at.caption if "not drawn" in c.value)
    assert f"{classes:,} municipalities" in accounted and f"{2469 - classes:,} of the 2,469" in accounted
    at.selectbox(key="pol_pollutant").set_value("o3")
    at.run()
    _ok(at)
    networks = at.radio(key="pol_network").options
    assert any(n.startswith("SINAICA") for n in networks) and any(n.startswith("RAMA") for n in networks)
    at.radio(key="pol_network").set_value([n for n in networks if n.startswith("SINAICA")][0])
    at.radio(key="pol_method").set_value("spearman")
    at.run()
    _ok(at)
    assert any(df.value.columns.tolist()[:2] == ["variable", "vif"] for df in at.dataframe)


@pytest.mark.parametrize("page", ["views/epi_map.py", "views/epi_factors.py", "views/epi_pollutants.py"])
def test_pages_without_data_say_what_is_missing(page, tmp_path, monkeypatch):
    monkeypatch.setenv("PUMAMED_DATA_DIR", str(tmp_path))
    at = _open(page)
    assert not at.exception, [e.value for e in at.exception]
    text = " ".join(i.value for i in at.info)
    assert "PUMAMED_DATA_DIR" in text and "was not found" in text


def test_station_map_shows_the_whole_country_and_a_robust_colour_range(epi_root):
    import numpy as np
    import pandas as pd

    from pumamed.epi.mapping import MEXICO_LON, robust_range, station_map

    # stations in central Mexico only, one of them extreme
    stations = pd.DataFrame({"lon": [-99.1, -99.2, -100.3, -98.2, -99.0], "lat": [19.4, 19.5, 20.6, 19.0, 19.3],
                             "station_name": list("abcde"), "network": ["x"] * 5,
                             "value": [18.0, 22.0, 25.0, 20.0, 104.0]})
    figure = station_map(stations, "value", label="PM2.5", unit="µg/m³", data_dir=epi_root.parent)
    lon_range = figure.layout.geo.lonaxis.range
    assert lon_range[1] >= MEXICO_LON[1], "the Yucatán peninsula is cut off"
    marker = next(t.marker for t in figure.data if t.marker is not None and t.marker.cmax is not None)
    assert marker.cmax < 100, "one extreme station stretches the scale"
    low, high = robust_range(np.r_[np.linspace(10, 30, 60), 104.0])
    assert 10 <= low < 12 and 28 < high < 35, (low, high)


def test_diverging_classes_split_at_zero_and_colour_by_sign():
    import numpy as np

    from pumamed.epi.mapping import classify, diverging_colours

    rng = np.random.default_rng(0)
    values = np.r_[-rng.exponential(0.02, 300), rng.exponential(0.2, 700)]  # skewed: mostly positive
    result = classify(values, "diverging", k=8)
    assert 0.0 in result.edges
    for i in range(result.k):
        members = values[result.classes == i]
        assert (members <= 0).all() or (members > 0).all(), f"class {i} mixes signs"
    colours = diverging_colours(result.edges, "RdBu", reverse=True)  # reversed RdBu: blue low, red high

    def rgb(c):
        return [float(x) for x in c[c.index("(") + 1:-1].split(",")]

    uppers = result.edges[1:]
    for colour, upper in zip(colours, uppers):
        r, _, b = rgb(colour)
        assert (r > b) == (upper > 0), (colour, upper)


def test_ledermann_bound_on_the_number_of_factors():
    from pumamed.epi.factors import max_identified_factors, too_many_factors_message

    assert [max_identified_factors(p) for p in (3, 4, 5, 9, 10)] == [1, 1, 2, 5, 6]
    assert too_many_factors_message(5, 9) is None
    assert "negative degrees of freedom" in too_many_factors_message(6, 9)


def test_quantities_and_source_years_read_as_sentences():
    from pumamed.epi.mapping import format_quantity, source_years_note

    assert format_quantity(1, "patients") == "1 patient"
    assert format_quantity(2, "patients") == "2 patients"
    assert format_quantity(1, "municipalities") == "1 municipality"
    assert format_quantity(1, "µg/m³") == "1 µg/m³"
    assert source_years_note("2000-2024", 2020) == "year shown 2020; the source covers 2000-2024"
    assert source_years_note("2020", 2020) == "year shown 2020"
