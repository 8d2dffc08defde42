"""Municipal and state polygons of Mexico (INEGI 2020, as simplified by the R package mxmaps).

The source is ``epi/geo_mxmaps_2020/raw/data/mxmunicipio.map.RData``: a *fortified* ggplot2
data.frame, one row per vertex (``long, lat, order, hole, piece, group, id``). Each ``group`` is
one closed ring; ``hole`` marks inner rings; ``id`` is the CVEGEO. :func:`rings_to_polygons`
rebuilds real polygons: shells per id, every hole put into the shell that contains it, invalid
rings repaired with ``make_valid`` (keeping only polygonal parts).

``mun_2020_mxmaps.geojson`` beside it was rebuilt independently from the same file; the tests
check that our areas agree with it.

``simplified=True`` gives a lighter layer for web maps made with :func:`shapely.coverage_simplify`,
which simplifies each shared border once, so neighbours still meet without gaps or overlaps.

Rebuilt layers are cached in memory and on disk (GeoParquet in :func:`pumamed.epi.io.cache_dir`),
so pages and tests pay the rebuild once.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pumamed.epi.io import epi_dir, file_fingerprint, normalize_cvegeo, parquet_cached, require_file
from pumamed.errors import DataError

log = logging.getLogger(__name__)

CRS = "EPSG:4326"
N_MUNICIPALITIES = 2469
N_STATES = 32
# Default tolerance of the web-map layer, in degrees (~1 km): keeps every municipality visible
# at national zoom while cutting the vertex count roughly in half.
DEFAULT_SIMPLIFY_TOLERANCE = 0.01
# Equal-area projection used for areas (INEGI's Lambert conformal is conformal, not equal-area).
EQUAL_AREA_CRS = "ESRI:102008"  # North America Albers Equal Area Conic

_MXMAPS = Path("geo_mxmaps_2020") / "raw" / "data"
MUNICIPALITY_RDATA = _MXMAPS / "mxmunicipio.map.RData"
MUNICIPALITY_ATTRS_RDATA = _MXMAPS / "df_mxmunicipio_2020.RData"
STATE_RDATA = _MXMAPS / "mxstate.map.RData"
STATE_ATTRS_RDATA = _MXMAPS / "df_mxstate_2020.RData"
REFERENCE_GEOJSON = Path("geo_mxmaps_2020") / "mun_2020_mxmaps.geojson"
REFERENCE_STATES_GEOJSON = Path("geo_mxmaps_2020") / "ent_mxmaps.geojson"

_CACHE_VERSION = "geometry-v1"


# --------------------------------------------------------------------------------- RData -> rings

def read_rdata_frame(path: Path) -> pd.DataFrame:
    """The single data.frame stored in an ``.RData`` file (via pyreadr)."""
    import pyreadr

    try:
        result = pyreadr.read_r(str(path))
    except Exception as exc:  # pyreadr raises its own LibrdataError etc.
        raise DataError(f"cannot read the R data file {path}: {exc}") from exc
    if not result:
        raise DataError(f"{path} holds no data.frame")
    return next(iter(result.values()))


def rings_to_polygons(fortified: pd.DataFrame, id_col: str = "id"):
    """Rebuild one (Multi)Polygon per ``id`` from a fortified ggplot2 data.frame.

    Returns a ``pandas.Series`` of shapely geometries indexed by id (sorted). Holes are assigned to
    the shell that contains their first vertex's interior point; holes whose shell cannot be found
    are dropped with a warning (they would otherwise become spurious islands).
    """
    import shapely

    required = {"long", "lat", "order", "hole", "group", id_col}
    missing = required - set(fortified.columns)
    if missing:
        raise DataError(f"fortified polygon table lacks columns {sorted(missing)}")
    frame = fortified[["long", "lat", "order", "hole", "group", id_col]].copy()
    frame["group"] = frame["group"].astype(str)
    frame[id_col] = frame[id_col].astype(str)
    frame = frame.sort_values(["group", "order"], kind="stable")
    group_codes, group_index = np.unique(frame["group"].to_numpy(), return_inverse=True)
    coords = frame[["long", "lat"]].to_numpy(dtype=float)
    # One ring per group; shapely closes rings that are not closed already.
    rings = shapely.linearrings(coords, indices=group_index)
    per_group = frame.groupby("group", sort=True).agg(ident=(id_col, "first"), hole=("hole", "first"))
    per_group = per_group.loc[group_codes]

    geometries = {}
    for ident, block in per_group.assign(ring=list(rings)).groupby("ident", sort=True):
        shells = [shapely.Polygon(ring) for ring in block.loc[~block["hole"].astype(bool), "ring"]]
        holes = list(block.loc[block["hole"].astype(bool), "ring"])
        shell_holes: list[list] = [[] for _ in shells]
        for hole in holes:
            probe = shapely.Polygon(hole).representative_point()
            owner = next((i for i, shell in enumerate(shells) if shell.contains(probe)), None)
            if owner is None:
                log.warning("hole of %s lies in no shell; dropped", ident)
                continue
            shell_holes[owner].append(hole)
        parts = [shapely.Polygon(shell.exterior, shell_holes[i]) for i, shell in enumerate(shells)]
        geometry = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
        geometries[ident] = _polygonal(shapely.make_valid(geometry)) if not geometry.is_valid else geometry
    return pd.Series(geometries, name="geometry")


def _polygonal(geometry):
    """Keep only polygonal parts (make_valid may return a GeometryCollection with slivers as lines)."""
    import shapely

    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        return geometry
    parts = [g for g in shapely.get_parts(geometry) if g.geom_type in ("Polygon", "MultiPolygon")]
    flat = []
    for part in parts:
        flat.extend(shapely.get_parts(part))
    return flat[0] if len(flat) == 1 else shapely.MultiPolygon(flat)


# ----------------------------------------------------------------------------------- public API

def load_municipalities(data_dir=None, simplified: bool = False,
                        tolerance: float = DEFAULT_SIMPLIFY_TOLERANCE):
    """The 2,469 municipalities of the 2020 census as a GeoDataFrame in EPSG:4326.

    Columns: ``CVEGEO`` (5 chars), ``CVE_ENT`` (2), ``CVE_MUN`` (3), ``NOMGEO`` (municipality),
    ``NOM_ENT`` (state), ``geometry`` (valid Polygon/MultiPolygon). Sorted by CVEGEO.

    ``simplified=True`` returns the topology-preserving web-map layer (shared borders simplified
    once, ``tolerance`` in degrees). A fresh copy is returned on every call.
    """
    root = epi_dir(data_dir)
    frame = _municipalities_cached(str(root), bool(simplified), float(tolerance) if simplified else 0.0)
    return frame.copy()


def load_states(data_dir=None, simplified: bool = False, tolerance: float = DEFAULT_SIMPLIFY_TOLERANCE):
    """The 32 states (``CVE_ENT``, ``NOM_ENT``, ``geometry``), EPSG:4326, from mxmaps' state map."""
    root = epi_dir(data_dir)
    frame = _states_cached(str(root), bool(simplified), float(tolerance) if simplified else 0.0)
    return frame.copy()


def read_user_geometry(path_or_buffer, code_col: str | None = None, layer: str | None = None):
    """A user's municipal layer (shapefile .zip/.shp, GeoPackage, GeoJSON), e.g. INEGI's Marco
    Geoestadístico, normalised to ``CVEGEO`` + ``geometry`` in EPSG:4326.

    The code column is ``code_col`` if given, else ``CVEGEO``, else built from ``CVE_ENT`` +
    ``CVE_MUN``. Raises :class:`DataError` if no code can be found, codes are duplicated, or the
    layer has no CRS.
    """
    import geopandas as gpd

    try:
        frame = gpd.read_file(path_or_buffer, layer=layer) if layer else gpd.read_file(path_or_buffer)
    except Exception as exc:
        raise DataError(f"cannot read the geometry file: {exc}") from exc
    if frame.crs is None:
        raise DataError("the geometry file has no coordinate reference system (.prj missing?)")
    columns = {c.upper(): c for c in frame.columns}
    if code_col:
        if code_col not in frame.columns:
            raise DataError(f"column {code_col!r} not in the geometry file (columns: {list(frame.columns)})")
        codes = normalize_cvegeo(frame[code_col], name=code_col)
    elif "CVEGEO" in columns:
        codes = normalize_cvegeo(frame[columns["CVEGEO"]], name="CVEGEO")
    elif "CVE_ENT" in columns and "CVE_MUN" in columns:
        from pumamed.epi.io import cvegeo_from_parts

        codes = cvegeo_from_parts(frame[columns["CVE_ENT"]], frame[columns["CVE_MUN"]])
    else:
        raise DataError("the geometry file has no CVEGEO column (nor CVE_ENT + CVE_MUN); "
                        f"columns: {list(frame.columns)}")
    frame = frame.assign(CVEGEO=codes.to_numpy())
    duplicated = frame["CVEGEO"][frame["CVEGEO"].duplicated()].unique()
    if len(duplicated):
        raise DataError(f"{len(duplicated)} duplicated municipality codes in the geometry file, "
                        f"e.g. {', '.join(map(str, duplicated[:5]))}")
    frame = frame.to_crs(CRS)
    invalid = ~frame.geometry.is_valid
    if invalid.any():
        frame.loc[invalid, "geometry"] = frame.geometry[invalid].make_valid()
    keep = ["CVEGEO"] + [c for c in frame.columns if c not in ("CVEGEO", "geometry")] + ["geometry"]
    return frame[keep].sort_values("CVEGEO").reset_index(drop=True)


def simplify_coverage(frame, tolerance: float = DEFAULT_SIMPLIFY_TOLERANCE):
    """Simplify a polygon coverage so shared borders stay shared (no gaps or overlaps appear)."""
    import shapely

    geoms = frame.geometry.to_numpy()
    simplified = shapely.coverage_simplify(geoms, tolerance, simplify_boundary=True)
    simplified = np.array([g if g.is_valid else _polygonal(shapely.make_valid(g)) for g in simplified])
    out = frame.copy()
    out["geometry"] = simplified
    return out


def area_km2(frame) -> pd.Series:
    """Area of each polygon in km² (equal-area projection)."""
    return frame.geometry.to_crs(EQUAL_AREA_CRS).area / 1e6


# ----------------------------------------------------------------------------------- internals

def _load_or_build(kind: str, sources: list[Path], extra: str, builder):
    import geopandas as gpd

    key = file_fingerprint(*sources, extra=f"{_CACHE_VERSION}|{extra}")
    return parquet_cached(f"{kind}-{key}", builder, read=gpd.read_parquet,
                          write=lambda frame, tmp: frame.to_parquet(tmp))


@functools.lru_cache(maxsize=8)
def _municipalities_cached(root: str, simplified: bool, tolerance: float):
    root_path = Path(root)
    rdata = require_file(root_path / MUNICIPALITY_RDATA, "mxmaps municipal polygons (mxmunicipio.map.RData)")
    attrs = require_file(root_path / MUNICIPALITY_ATTRS_RDATA, "mxmaps municipal attributes (df_mxmunicipio_2020.RData)")
    if simplified:
        return _load_or_build("municipalities-simplified", [rdata, attrs], f"tol={tolerance}",
                              lambda: simplify_coverage(_municipalities_cached(root, False, 0.0), tolerance))
    return _load_or_build("municipalities", [rdata, attrs], "", lambda: _build_municipalities(rdata, attrs))


def _build_municipalities(rdata: Path, attrs: Path):
    import geopandas as gpd

    geometry = rings_to_polygons(read_rdata_frame(rdata))
    table = read_rdata_frame(attrs)
    names = pd.DataFrame({
        "CVEGEO": normalize_cvegeo(table["region"]).to_numpy(),
        "NOMGEO": table["municipio_name"].astype(str).to_numpy(),
        "NOM_ENT": table["state_name"].astype(str).to_numpy(),
    }).drop_duplicates("CVEGEO")
    frame = pd.DataFrame({"CVEGEO": normalize_cvegeo(pd.Series(geometry.index)).to_numpy(),
                          "geometry": geometry.to_numpy()})
    frame = frame.merge(names, on="CVEGEO", how="left", validate="one_to_one")
    unnamed = frame["NOMGEO"].isna()
    if unnamed.any():
        raise DataError(f"{unnamed.sum()} polygons have no name in df_mxmunicipio_2020 "
                        f"(e.g. {frame.loc[unnamed, 'CVEGEO'].head().tolist()})")
    frame["CVE_ENT"] = frame["CVEGEO"].str[:2]
    frame["CVE_MUN"] = frame["CVEGEO"].str[2:]
    frame = frame[["CVEGEO", "CVE_ENT", "CVE_MUN", "NOMGEO", "NOM_ENT", "geometry"]]
    return gpd.GeoDataFrame(frame.sort_values("CVEGEO").reset_index(drop=True), geometry="geometry", crs=CRS)


@functools.lru_cache(maxsize=4)
def _states_cached(root: str, simplified: bool, tolerance: float):
    root_path = Path(root)
    rdata = require_file(root_path / STATE_RDATA, "mxmaps state polygons (mxstate.map.RData)")
    attrs = require_file(root_path / STATE_ATTRS_RDATA, "mxmaps state attributes (df_mxstate_2020.RData)")
    if simplified:
        return _load_or_build("states-simplified", [rdata, attrs], f"tol={tolerance}",
                              lambda: simplify_coverage(_states_cached(root, False, 0.0), tolerance))
    return _load_or_build("states", [rdata, attrs], "", lambda: _build_states(rdata, attrs))


def _build_states(rdata: Path, attrs: Path):
    import geopandas as gpd

    geometry = rings_to_polygons(read_rdata_frame(rdata))
    table = read_rdata_frame(attrs)
    names = dict(zip(table["region"].astype(str).str.zfill(2), table["state_name"].astype(str)))
    codes = pd.Series(geometry.index).astype(str).str.zfill(2)
    frame = pd.DataFrame({"CVE_ENT": codes.to_numpy(), "NOM_ENT": codes.map(names).to_numpy(),
                          "geometry": geometry.to_numpy()})
    if frame["NOM_ENT"].isna().any():
        raise DataError("some state polygons have no name in df_mxstate_2020")
    return gpd.GeoDataFrame(frame.sort_values("CVE_ENT").reset_index(drop=True), geometry="geometry", crs=CRS)
