"""The assembled municipal panel, its catalogue, its quality report and the CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from pumamed.epi import panel as P
from pumamed.commands import epi_panel as panel_cli
from pumamed.errors import DataError

# Assembling the panel from every real source takes ~20-50 s of CPU on a 2-core machine (once per
# session; later tests reuse it).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(epi_root):
    return P.build_panel(epi_root)


def test_catalogue_describes_every_column(built):
    panel, _ = built
    catalog = P.variable_catalog()
    assert list(catalog.columns) == ["name", "group", "label", "unit", "source", "year", "kind"]
    assert catalog["name"].is_unique
    assert set(catalog["group"]) == set(P.GROUPS)
    assert set(catalog["name"]) == set(panel.columns)
    assert catalog["label"].str.len().gt(3).all()
    expected = {"ses_illiteracy_pct": "socioeconomic", "pm25_ugm3": "pollutant", "population": "population",
                "covid_diabetic_hospitalized": "outcome", "diabetes_prev_pct": "outcome",
                "diabetes_deaths": "outcome", "municipality_name": "geography"}
    groups = catalog.set_index("name")["group"]
    assert {name: groups[name] for name in expected} == expected


def test_cross_section_2020(epi_root, built):
    _, quality = built
    cross = P.load_panel(epi_root, year=2020)
    assert len(cross) == 2469 and cross["CVEGEO"].is_unique
    assert (cross["year"] == 2020).all()
    row = cross.set_index("CVEGEO").loc["12001"]
    assert row["municipality_name"] == "Acapulco de Juárez" and row["state_name"] == "Guerrero"
    assert row["population"] == 779566
    assert row["ses_illiteracy_pct"] == pytest.approx(5.85)
    assert row["ses_poverty_pct"] == pytest.approx(56.6)
    assert row["ses_marginalization_degree"] == "Bajo"
    ags = cross.set_index("CVEGEO").loc["01001"]
    assert (ags["population_male"], ags["population_female"]) == (462073, 486917)  # fixed 100x columns
    assert ags["diabetes_prev_pct"] == pytest.approx(7.495861, abs=1e-5)
    with pytest.raises(DataError, match="no data for year 1850"):
        P.load_panel(epi_root, year=1850)
    assert 2020 in quality.years and 2024 in quality.years


def test_outcomes_in_the_panel(built, epi_root):
    panel, quality = built
    covid = panel[panel["year"] == 2020]
    # All diabetic patients except those with a residence code outside the 2,469 (xx999, 3 old codes).
    from pumamed.epi.outcomes import covid_by_municipality, load_covid_national_2020

    by_code = covid_by_municipality(load_covid_national_2020(epi_root))
    joined = by_code[by_code["CVEGEO"].isin(set(covid["CVEGEO"]))]
    assert covid["covid_diabetic_patients"].sum() == joined["patients"].sum() > 22700
    assert covid["covid_diabetic_hospitalized"].sum() == joined["hospitalized"].sum()
    # National release: a municipality without any record is a true zero, not missing.
    assert covid["covid_diabetic_patients"].notna().all()
    # Sonora deaths: zero where Sonora had none, missing outside Sonora (not covered by the source).
    deaths = panel[panel["year"].between(2017, 2021)]
    sonora = deaths[deaths["state_code"] == "26"]
    assert sonora["diabetes_deaths"].notna().all()
    assert deaths.loc[deaths["state_code"] != "26", "diabetes_deaths"].isna().all()
    unmatched = quality.unmatched
    lost = unmatched.loc[unmatched["source"] == "deaths_sonora", "CVEGEO"].tolist()
    assert lost == ["26999"]
    assert int(sonora["diabetes_deaths"].sum()) == 9039 - 4  # four diabetes deaths with municipality 999
    hermosillo = sonora[(sonora["CVEGEO"] == "26030") & (sonora["year"] == 2020)].iloc[0]
    assert hermosillo["population_est"] == hermosillo["population"]  # 2020: the census itself
    assert hermosillo["diabetes_mortality_per_100k"] == pytest.approx(
        1e5 * hermosillo["diabetes_deaths"] / hermosillo["population"])
    # Other years: the 2020 count scaled by Sonora's CONAPO projection (mid-year) relative to 2020.
    from pumamed.epi.socio import read_state_projections

    sonora_mid = read_state_projections(epi_root).query("CVE_ENT == '26'").set_index("year")["population_mid"]
    h2017 = sonora[(sonora["CVEGEO"] == "26030") & (sonora["year"] == 2017)].iloc[0]
    assert h2017["population_est"] == pytest.approx(936263 * sonora_mid[2017] / sonora_mid[2020])
    assert h2017["diabetes_mortality_per_100k"] == pytest.approx(1e5 * h2017["diabetes_deaths"] / h2017["population_est"])
    assert panel.loc[panel["year"] < 2010, "population_est"].isna().all()
    # 2021 COVID-19 extract only covers Baja California and Baja California Sur.
    covid21 = panel[panel["year"] == 2021]
    assert covid21.loc[covid21["state_code"].isin(["02", "03"]), "covid_diabetic_patients"].notna().all()
    assert covid21.loc[~covid21["state_code"].isin(["02", "03"]), "covid_diabetic_patients"].isna().all()


def test_pollutants_in_the_panel(built):
    panel, _ = built
    year = panel[panel["year"] == 2019]
    assert set(year["pm25_coverage"]) == {"in_municipality", "idw", "none"}
    assert year.loc[year["pm25_coverage"] == "none", "pm25_ugm3"].isna().all()
    assert year.loc[year["pm25_coverage"] != "none", "pm25_ugm3"].notna().all()
    assert (year.loc[year["pm25_coverage"] == "none", "pm25_n_stations"] == 0).all()
    monterrey = year.set_index("CVEGEO").loc["19039"]
    assert monterrey["pm25_coverage"] == "in_municipality" and 10 < monterrey["pm25_ugm3"] < 60


def test_quality_report(built):
    panel, quality = built
    sources = quality.sources.set_index("source")
    assert sources.loc["imm_2020", "status"] == "ok" and sources.loc["imm_2020", "joined"] == 2469
    assert sources.loc["egresos", "status"] == "missing"
    assert (sources.drop(index="egresos")["status"] == "ok").all(), sources["message"].to_dict()
    unmatched = quality.unmatched
    covid_lost = unmatched[unmatched["source"] == "covid_2020"]
    assert {"17056", "17063", "19066"} <= set(covid_lost["CVEGEO"])
    assert covid_lost["records"].sum() == 16  # patients whose residence code does not join
    deaths_lost = unmatched[unmatched["source"] == "deaths_sonora"].set_index("CVEGEO")
    assert deaths_lost.loc["26999", "records"] == 4  # diabetes deaths with unknown municipality
    assert unmatched["reason"].str.contains("xx999").any()
    missing = quality.missingness.set_index("name")
    assert missing.loc["ses_illiteracy_pct", "pct_missing"] == 0
    assert missing.loc["ses_hdi", "n_missing"] == 13 * len(quality.years)  # created after 2015
    text = quality.to_text(max_unmatched=len(unmatched))
    assert "codes that failed to join" in text and "17056" in text
    assert json.loads(quality.to_json())["n_municipalities"] == 2469
    assert not panel.duplicated(["CVEGEO", "year"]).any()
    assert len(panel) == 2469 * len(quality.years)


def test_panel_from_a_partial_data_dir(tmp_path, epi_root):
    target = tmp_path / "epi" / "conapo_imm_2020"
    target.mkdir(parents=True)
    (target / "IMM_2020.csv").write_bytes((epi_root / "conapo_imm_2020" / "IMM_2020.csv").read_bytes())
    panel, quality = P.build_panel(tmp_path)
    assert len(panel) == 2469 and quality.years == [2020]
    statuses = quality.sources.set_index("source")["status"]
    assert statuses["imm_2020"] == "ok" and statuses["geography"] == "missing"
    assert panel["ses_illiteracy_pct"].notna().all() and panel["pm25_ugm3"].isna().all()
    assert set(P.variable_catalog()["name"]) == set(panel.columns)


def test_cli(tmp_path, epi_root, capsys):
    parser = argparse.ArgumentParser()
    panel_cli.add_arguments(parser)
    out = tmp_path / "panel.parquet"
    code = panel_cli.run(parser.parse_args(["--data-dir", str(epi_root.parent), "--year", "2020", "--out", str(out)]))
    assert code == 0
    written = pd.read_parquet(out)
    assert len(written) == 2469 and written["CVEGEO"].str.len().eq(5).all()
    assert "codes that failed to join" in capsys.readouterr().out
    csv = tmp_path / "panel.csv"
    assert panel_cli.run(parser.parse_args(["--data-dir", str(epi_root), "--json", "--year", "2019",
                                            "--out", str(csv)])) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 2469 and 2019 in report["years"]
    assert pd.read_csv(csv, dtype={"CVEGEO": str}, nrows=5)["CVEGEO"].str.len().eq(5).all()
    with pytest.raises(DataError, match=".csv or .parquet"):
        panel_cli.run(parser.parse_args(["--data-dir", str(epi_root), "--out", str(tmp_path / "p.xlsx")]))
    from pumamed.errors import InputError

    with pytest.raises(InputError):
        panel_cli.run(parser.parse_args(["--data-dir", str(epi_root), "--year", "1850"]))
    assert np.isfinite(written["ses_marginalization_index"]).all()
