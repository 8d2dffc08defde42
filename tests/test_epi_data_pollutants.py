"""Pollutants: RAMA hourly and SINAICA monthly readers, harmonisation, annual means, exposure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pumamed.epi import pollutants as P
from pumamed.errors import DataError


@pytest.fixture(scope="module")
def monthly(epi_root):
    return P.load_sinaica_monthly(epi_root)


def test_station_catalogue_fixes_lost_minus_signs(epi_root):
    stations = P.load_stations(epi_root)
    assert stations["station_key"].is_unique
    assert set(stations["network"]) == {"RAMA", "SINAICA"}
    assert stations["lon"].lt(0).all()
    raw = pd.read_csv(epi_root / P.SINAICA_DIR / "stations_sinaica_rsinaica.csv")
    assert raw.set_index("station_id").loc[397, "lon"] > 0  # the published quirk
    cenica = stations.set_index("station_key").loc["SINAICA:397"]
    assert cenica["lon_sign_fixed"] and cenica["lon"] == pytest.approx(-98.801083, abs=1e-5)
    assert int(stations["lon_sign_fixed"].sum()) == 7
    # Every SINAICA station with monthly data has coordinates.
    monthly_ids = set(pd.read_csv(epi_root / P.SINAICA_DIR / "monthly_pollution.csv")["station_id"].astype(int).astype(str))
    assert monthly_ids <= set(stations.loc[stations["network"] == "SINAICA", "station_id"])


def test_rama_hourly_drops_minus_99_and_keeps_values(epi_root):
    hourly = P.load_rama_hourly(epi_root, pollutants=["pm25", "o3"])
    assert (hourly["value"] >= 0).all()
    raw = pd.read_csv(epi_root / P.RAMA_DIR / "2024PM25.csv")
    assert (raw["AJM"] == -99).any()
    ajm = hourly[(hourly["station_code"] == "AJM") & (hourly["pollutant"] == "pm25")]
    assert len(ajm) == int((raw["AJM"] != -99).sum())
    first = ajm.sort_values(["date", "hour"]).iloc[0]
    assert (str(first["date"].date()), first["hour"], first["value"]) == ("2024-01-01", 1, 21.0)
    assert set(hourly.loc[hourly["pollutant"] == "o3", "unit"]) == {"ppb"}
    with pytest.raises(DataError, match="unknown pollutant"):
        P.load_rama_hourly(epi_root, pollutants=["pm1"])


def test_sinaica_units_harmonised_with_rama(epi_root, monthly):
    assert set(monthly["flag"]) <= {"ok", "unit_rescaled", "out_of_range", "station_outlier", "pm25_gt_pm10"}
    # Gases published in ppm are converted to ppb: 0.0189 ppm ozone -> 18.9 ppb.
    aguascalientes = monthly[(monthly["station_id"] == "33") & (monthly["pollutant"] == "o3")].set_index(["year", "month"])
    assert aguascalientes.loc[(2015, 1), "raw_value"] == pytest.approx(0.018851, abs=1e-6)
    assert aguascalientes.loc[(2015, 1), "value"] == pytest.approx(18.851, abs=1e-3)
    # From 2017 that station wrote ppb in the ppm column: recognised and not multiplied again.
    assert aguascalientes.loc[(2018, 1), "flag"] == "unit_rescaled"
    assert aguascalientes.loc[(2018, 1), "value"] == pytest.approx(22.277088, abs=1e-4)
    # After harmonisation both networks measure ozone and NO2 on the same scale.
    rama = P.station_annual_means(epi_root, pollutants=["o3", "no2"], valid_only=True)
    for pollutant in ("o3", "no2"):
        sinaica_median = monthly.loc[monthly["pollutant"] == pollutant, "value"].median()
        rama_median = rama.loc[(rama["network"] == "RAMA") & (rama["pollutant"] == pollutant), "value"].median()
        assert 0.5 < sinaica_median / rama_median < 2, pollutant


def test_sinaica_outliers_removed(monthly):
    kept = monthly.dropna(subset=["value"])
    for key, pollutant in P.POLLUTANTS.items():
        values = kept.loc[kept["pollutant"] == key, "value"]
        if len(values):
            low, high = pollutant.monthly_range
            assert values.between(low, high).all(), key
    dropped = monthly[monthly["value"].isna()]
    assert len(dropped) > 1000 and set(dropped["flag"]) == {"out_of_range", "station_outlier", "pm25_gt_pm10"}
    pm = kept[kept["pollutant"].isin(["pm25", "pm10"])].pivot_table(
        index=["station_key", "year", "month"], columns="pollutant", values="value")
    both = pm.dropna()
    assert (both["pm25"] <= 1.05 * both["pm10"]).all()
    # Piedras Negras (306) reported PM2.5 monthly means of 200+ ug/m3: never kept above the range.
    assert kept.loc[(kept["station_id"] == "306") & (kept["pollutant"] == "pm25"), "value"].max() <= 150


def test_annual_means_and_completeness_rule(epi_root):
    annual = P.station_annual_means(epi_root, pollutants=["pm25"])
    rama = annual[annual["network"] == "RAMA"].set_index("station_key")
    # Independent computation from the raw file: days with >= 18 valid hours, then their mean.
    raw = pd.read_csv(epi_root / P.RAMA_DIR / "2024PM25.csv")
    ajm = raw[["FECHA", "AJM"]].replace(-99, np.nan)
    daily = ajm.groupby("FECHA")["AJM"].agg(["mean", "count"])
    daily = daily[daily["count"] >= 18]
    assert rama.loc["RAMA:AJM", "value"] == pytest.approx(daily["mean"].mean())
    assert rama.loc["RAMA:AJM", "n_periods"] == len(daily)
    assert rama.loc["RAMA:AJM", "valid"]
    # Nezahualcoyotl measured PM2.5 on about a third of the days of 2024: not a valid annual mean.
    assert rama.loc["RAMA:NEZ", "completeness"] < 0.5 and not rama.loc["RAMA:NEZ", "valid"]
    sinaica = annual[annual["network"] == "SINAICA"]
    assert ((sinaica["n_periods"] >= 9) | ~sinaica["valid"]).all()
    # Poza Rica's PM2.5 (~100 ug/m3 a year, Delhi levels) passes the monthly checks but is flagged.
    poza_rica = sinaica[(sinaica["station_key"] == "SINAICA:291") & (sinaica["year"] == 2019)].iloc[0]
    assert poza_rica["valid"] and not poza_rica["plausible"]
    assert annual.loc[annual["value"] <= 75, "plausible"].all()
    stricter = P.station_annual_means(epi_root, pollutants=["pm25"], min_year_fraction=0.9)
    assert stricter["valid"].sum() < annual["valid"].sum()


def test_idw_and_distance():
    distances = np.array([[1.0, 3.0, 80.0], [60.0, 70.0, 90.0]])
    values = np.array([10.0, 20.0, 100.0])
    estimate, used = P.idw(distances, values, radius_km=50, power=2)
    expected = (10 / 1 + 20 / 9) / (1 + 1 / 9)
    assert estimate[0] == pytest.approx(expected) and used.tolist() == [2, 0]
    assert np.isnan(estimate[1])
    # Mexico City to Guadalajara: about 460 km.
    assert P.haversine_km([-99.13], [19.43], [-103.35], [20.67])[0, 0] == pytest.approx(461, abs=10)


def test_municipal_exposure(epi_root):
    exposure = P.municipal_exposure(epi_root, pollutants=["o3"], years=2024)
    assert not exposure.duplicated(["CVEGEO", "year", "pollutant"]).any()
    assert set(exposure["coverage"]) == {"in_municipality", "idw"}
    by_code = exposure.set_index("CVEGEO")
    # Iztapalapa (09007) holds a RAMA ozone station: its own measurement, not a weighted blend.
    assert by_code.loc["09007", "coverage"] == "in_municipality"
    annual = P.station_annual_means(epi_root, pollutants=["o3"], valid_only=True)
    stations = P.load_stations(epi_root).set_index("station_key")
    # Every municipality is within the radius of a station it used.
    assert (exposure["nearest_km"] <= P.DEFAULT_RADIUS_KM).all()
    used = P.municipal_exposure(epi_root, pollutants=["pm25"], years=2019)
    assert used["value"].max() <= P.POLLUTANTS["pm25"].annual_max  # implausible station-years not used
    # IDW stays within the range of the station values of that year.
    year_values = annual.loc[annual["year"] == 2024, "value"]
    assert exposure["value"].between(year_values.min() - 1e-9, year_values.max() + 1e-9).all()
    # Far from Mexico City there is no 2024 ozone exposure (only RAMA reports 2024).
    assert "26030" not in by_code.index  # Hermosillo
    wider = P.municipal_exposure(epi_root, pollutants=["o3"], years=2024, radius_km=100)
    assert len(wider) > len(exposure)
    only_idw = P.municipal_exposure(epi_root, pollutants=["o3"], years=2024, method="idw")
    assert set(only_idw["coverage"]) == {"idw"}
    assert stations.loc["RAMA:UIZ", "lat"] == pytest.approx(19.36, abs=0.05)
    with pytest.raises(DataError):
        P.municipal_exposure(epi_root, method="kriging")


def test_station_series_keep_complete_days_and_date_months_mid_month(epi_root):
    from pumamed.epi.pollutants import MIN_DAY_HOURS, exposure_by_pollutant, rama_station_daily, station_series

    daily = station_series(epi_root, "o3", network="rama", resolution="daily")
    assert list(daily.columns) == ["station_key", "time", "value"] and len(daily) > 0
    every_day = rama_station_daily(epi_root, pollutants=["o3"])
    assert len(daily) == int((every_day["hours"] >= MIN_DAY_HOURS).sum()) < len(every_day)
    monthly = station_series(epi_root, "pm25", network="sinaica")
    assert (monthly["time"].dt.day == 15).all() and monthly["value"].notna().all()
    wide = exposure_by_pollutant(pd.DataFrame({"CVEGEO": ["01001", "01001"], "year": [2020, 2020],
                                               "pollutant": ["pm25", "o3"], "value": [10.0, 30.0]}))
    assert wide.loc[0, "pm25"] == 10.0 and wide.loc[0, "o3"] == 30.0


def test_comparable_pollutants_need_values_and_the_common_set_is_measured_together():
    from pumamed.epi.pollutants import comparable_pollutants

    n = 40
    wide = pd.DataFrame({"pm25": np.arange(n, dtype=float), "o3": np.r_[np.arange(30.0), [np.nan] * 10],
                         "so2": np.r_[np.arange(12.0), [np.nan] * 28], "co": np.r_[np.arange(5.0), [np.nan] * 35]})
    columns, common = comparable_pollutants(wide)
    assert set(columns) == {"pm25", "o3", "so2"}  # co has fewer than 10 values
    assert set(common) == {"pm25", "o3"}  # so2 is measured in 30 % of the rows, under half of pm25's 100 %
