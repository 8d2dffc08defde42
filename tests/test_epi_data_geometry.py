"""Municipal and state polygons rebuilt from the mxmaps RData (real files)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pumamed.epi import geometry
from pumamed.errors import DataError


@pytest.fixture(scope="module")
def municipalities(epi_root):
    return geometry.load_municipalities(epi_root)


def test_municipalities_shape_codes_and_crs(municipalities):
    frame = municipalities
    assert len(frame) == 2469
    assert list(frame.columns) == ["CVEGEO", "CVE_ENT", "CVE_MUN", "NOMGEO", "NOM_ENT", "geometry"]
    assert frame.crs.to_epsg() == 4326
    assert frame["CVEGEO"].str.fullmatch(r"\d{5}").all()
    assert frame["CVEGEO"].is_unique
    assert (frame["CVE_ENT"] == frame["CVEGEO"].str[:2]).all()
    assert frame["CVE_ENT"].nunique() == 32
    assert frame.geometry.is_valid.all()
    assert not frame.geometry.is_empty.any()
    assert set(frame.geom_type) <= {"Polygon", "MultiPolygon"}
    row = frame.set_index("CVEGEO").loc["26030"]
    assert (row["NOMGEO"], row["NOM_ENT"]) == ("Hermosillo", "Sonora")
    # Hermosillo's city centre lies inside its polygon.
    from shapely.geometry import Point

    assert row["geometry"].contains(Point(-110.96, 29.07))


def test_areas_agree_with_reference_geojson(municipalities, epi_root):
    import geopandas as gpd

    reference = gpd.read_file(epi_root / geometry.REFERENCE_GEOJSON).sort_values("CVEGEO").reset_index(drop=True)
    assert reference["CVEGEO"].tolist() == municipalities["CVEGEO"].tolist()
    ours = geometry.area_km2(municipalities).to_numpy()
    theirs = geometry.area_km2(reference).to_numpy()
    relative = np.abs(ours - theirs) / theirs
    # The reference GeoJSON rounds coordinates to 5 decimals; beyond that the areas must match.
    assert relative.max() < 0.005, municipalities["CVEGEO"].iloc[int(relative.argmax())]
    assert np.median(relative) < 1e-4
    assert 1.9e6 < ours.sum() < 2.0e6  # Mexico: about 1.96 million km²
    assert (municipalities["NOMGEO"].to_numpy() == reference["NOMGEO"].to_numpy()).all()


def test_holes_are_rebuilt():
    """A fortified table with a shell and a hole (ggplot2 layout) becomes a polygon with a hole."""
    shell = [(0, 0), (4, 0), (4, 4), (0, 4), (0, 0)]
    hole = [(1, 1), (2, 1), (2, 2), (1, 2), (1, 1)]
    island = [(10, 10), (11, 10), (11, 11), (10, 10)]
    rows = []
    for group, ring, is_hole in (("A.1", shell, False), ("A.2", hole, True), ("A.3", island, False)):
        rows += [{"long": x, "lat": y, "order": i, "hole": is_hole, "group": group, "id": "A"}
                 for i, (x, y) in enumerate(ring, start=1)]
    polygons = geometry.rings_to_polygons(pd.DataFrame(rows))
    shape = polygons["A"]
    assert shape.geom_type == "MultiPolygon"
    assert shape.area == pytest.approx(16 - 1 + 0.5)


def test_simplified_layer_keeps_shared_borders(municipalities, epi_root):
    import shapely

    simple = geometry.load_municipalities(epi_root, simplified=True)
    assert simple["CVEGEO"].tolist() == municipalities["CVEGEO"].tolist()
    assert simple.geometry.is_valid.all() and not simple.geometry.is_empty.any()
    before = shapely.get_num_coordinates(municipalities.geometry.to_numpy()).sum()
    after = shapely.get_num_coordinates(simple.geometry.to_numpy()).sum()
    assert after < 0.8 * before
    # Coverage simplification must not open gaps or create overlaps between neighbours: the total
    # area changes by well under 1 %, while the sum of pairwise overlaps stays tiny (the source
    # itself has ~9 km² of overlaps in 2 million km²).
    projected = simple.to_crs(geometry.EQUAL_AREA_CRS).geometry
    overlap_km2 = (projected.area.sum() - shapely.union_all(projected.to_numpy()).area) / 1e6
    assert overlap_km2 < 50
    assert abs(geometry.area_km2(simple).sum() / geometry.area_km2(municipalities).sum() - 1) < 0.01
    # Cached: a second call returns an equal, independent copy.
    again = geometry.load_municipalities(epi_root, simplified=True)
    again.loc[0, "NOMGEO"] = "changed"
    assert geometry.load_municipalities(epi_root, simplified=True).loc[0, "NOMGEO"] != "changed"


def test_states(epi_root, municipalities):
    states = geometry.load_states(epi_root)
    assert len(states) == 32
    assert list(states.columns) == ["CVE_ENT", "NOM_ENT", "geometry"]
    assert states.geometry.is_valid.all()
    assert states.set_index("CVE_ENT").loc["26", "NOM_ENT"] == "Sonora"
    by_state = geometry.area_km2(municipalities).groupby(municipalities["CVE_ENT"]).sum()
    state_area = geometry.area_km2(states).set_axis(states["CVE_ENT"])
    assert np.allclose(by_state.sort_index(), state_area.sort_index(), rtol=0.03)


def test_user_geometry_file(tmp_path, municipalities):
    subset = municipalities[municipalities["CVE_ENT"] == "01"][["CVEGEO", "NOMGEO", "geometry"]].copy()
    subset["CVEGEO"] = subset["CVEGEO"].astype(int)  # as some shapefiles store it: no zero padding
    path = tmp_path / "ags.gpkg"
    subset.to_file(path, driver="GPKG")
    loaded = geometry.read_user_geometry(path)
    assert loaded["CVEGEO"].tolist() == municipalities.loc[municipalities["CVE_ENT"] == "01", "CVEGEO"].tolist()
    assert loaded.crs.to_epsg() == 4326

    doubled = pd.concat([subset, subset.iloc[:1]])
    doubled.to_file(tmp_path / "dup.gpkg", driver="GPKG")
    with pytest.raises(DataError, match="duplicated municipality codes"):
        geometry.read_user_geometry(tmp_path / "dup.gpkg")
    subset.rename(columns={"CVEGEO": "code"}).to_file(tmp_path / "nocode.gpkg", driver="GPKG")
    with pytest.raises(DataError, match="no CVEGEO column"):
        geometry.read_user_geometry(tmp_path / "nocode.gpkg")


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="mxmunicipio.map.RData"):
        geometry.load_municipalities(tmp_path)
