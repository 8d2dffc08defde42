"""Municipal choropleths and station maps over cached geometry (the classification schemes and
palettes they colour by are in :mod:`pumamed.epi.classify`).

The web layer is the topology-preserving simplified municipal geometry of
:func:`pumamed.epi.geometry.load_municipalities`, converted once per process into a GeoJSON dict
(feature ``id`` = CVEGEO, coordinates rounded to ``decimals``, no properties) so each map only
sends codes and values next to it. Two renderers:

- ``"geo"`` (default): ``go.Choropleth`` on plotly's own projection; needs no internet and no WebGL,
  so it also works offline and in headless screenshots;
- ``"maplibre"``: ``go.Choroplethmap`` over a Carto basemap (no token, but tiles need internet).

Classed maps colour a class index with a stepped colour scale (one trace, a legend of class
ranges); unclassed maps colour the value itself. Municipalities without a value are drawn in grey
with "no data" on hover, so a gap in the data never looks like a gap in the country.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pumamed.errors import DataError, InputError

from pumamed.epi.classify import (  # noqa: F401 - the map's classification API, re-exported
    DIVERGING_PALETTES,
    PALETTES,
    SCHEMES,
    SEQUENTIAL_PALETTES,
    Classification,
    classify,
    diverging_colours,
    fisher_jenks_breaks,
    format_number,
    format_quantity,
    palette_colours,
    source_years_note,
    stepped_colorscale,
)

NO_DATA_COLOUR = "#d4d4d4"
BORDER_COLOUR = "rgba(255,255,255,0.6)"
RENDERERS = ("geo", "maplibre")
DEFAULT_DECIMALS = 3  # ~110 m at the equator: below the simplification tolerance, so invisible


# ---------------------------------------------------------------- geometry, cached once
@functools.lru_cache(maxsize=4)
def _geojson_cached(root: str, decimals: int):
    import shapely

    from pumamed.epi.geometry import load_municipalities

    frame = load_municipalities(root, simplified=True)
    features = tuple(
        {"type": "Feature", "id": code, "properties": {}, "geometry": _geometry_arrays(g, decimals)}
        for code, g in zip(frame["CVEGEO"], frame.geometry)
    )
    bounds = pd.DataFrame(shapely.bounds(frame.geometry.to_numpy()), columns=["minx", "miny", "maxx", "maxy"])
    names = pd.DataFrame({
        "CVEGEO": frame["CVEGEO"].to_numpy(),
        "CVE_ENT": frame["CVE_ENT"].to_numpy(),
        "NOMGEO": frame["NOMGEO"].to_numpy(),
        "NOM_ENT": frame["NOM_ENT"].to_numpy(),
    })
    names = pd.concat([names, bounds], axis=1)
    return features, names


def _geometry_arrays(geometry, decimals: int) -> dict:
    """GeoJSON geometry whose rings are rounded float arrays, not nested tuples.

    Plotly deep-copies a figure's data twice (on construction and serialisation) and walks
    every list it finds: one NumPy array per ring makes both steps ~10x cheaper than the
    point-by-point tuples of ``shapely.geometry.mapping``.
    """
    import shapely
    from shapely.geometry.polygon import orient

    def rings(polygon):
        # d3-geo (plotly's geo renderer) reads rings by their winding on the sphere: an
        # anticlockwise shell is "the whole globe minus this polygon" and floods the map. So
        # shells go clockwise and holes anticlockwise (the reverse of RFC 7946; MapLibre accepts both).
        polygon = orient(polygon, sign=-1.0)
        return [np.round(np.asarray(polygon.exterior.coords), decimals)] + [
            np.round(np.asarray(r.coords), decimals) for r in polygon.interiors
        ]

    parts = shapely.get_parts(geometry)
    if len(parts) == 1:
        return {"type": "Polygon", "coordinates": rings(parts[0])}
    return {"type": "MultiPolygon", "coordinates": [rings(p) for p in parts]}


@functools.lru_cache(maxsize=4)
def _state_lines_cached(root: str, decimals: int):
    """State borders as one polyline (lon, lat arrays, NaN between rings) for an outline trace."""
    import shapely

    from pumamed.epi.geometry import load_states

    states = load_states(root, simplified=True)
    pieces = []
    for geometry in states.geometry:
        for polygon in shapely.get_parts(geometry):
            pieces.append(np.round(np.asarray(polygon.exterior.coords), decimals))
            pieces.append(np.array([[np.nan, np.nan]]))  # plotly breaks the line at a gap
    lines = np.concatenate(pieces)
    lines.flags.writeable = False
    return lines[:, 0], lines[:, 1]


def _root(data_dir) -> str:
    from pumamed.epi.io import epi_dir

    return str(epi_dir(data_dir))


def municipal_features(data_dir=None, decimals: int = DEFAULT_DECIMALS) -> tuple[dict, ...]:
    """The simplified municipal GeoJSON features (id = CVEGEO), built once per process.

    The features are shared between calls: treat them as read-only.
    """
    return _geojson_cached(_root(data_dir), int(decimals))[0]


def municipal_names(data_dir=None) -> pd.DataFrame:
    """CVEGEO, CVE_ENT, NOMGEO (municipality), NOM_ENT (state) and bounding boxes, sorted by code."""
    return _geojson_cached(_root(data_dir), DEFAULT_DECIMALS)[1].copy()


def state_choices(data_dir=None) -> dict[str, str]:
    """``{CVE_ENT: state name}`` for state pickers."""
    names = _geojson_cached(_root(data_dir), DEFAULT_DECIMALS)[1]
    return dict(names.drop_duplicates("CVE_ENT").set_index("CVE_ENT")["NOM_ENT"].sort_index())


def clear_caches() -> None:
    """Forget the cached geometry (the benchmark's cold start; tests of other data directories)."""
    _geojson_cached.cache_clear()
    _state_lines_cached.cache_clear()


# ---------------------------------------------------------------- the map
@dataclass
class MapResult:
    figure: object  # plotly.graph_objects.Figure
    table: pd.DataFrame  # CVEGEO, municipality, state, value, class: what the map shows
    classification: Classification


def _zoom_for(bounds: tuple[float, float, float, float], width_px: int = 900, height_px: int = 560) -> float:
    """Web-mercator zoom that fits a lon/lat box into the figure (for the maplibre renderer)."""
    minx, miny, maxx, maxy = bounds
    span_x = max(maxx - minx, 1e-3)
    span_y = max(maxy - miny, 1e-3)
    zoom_x = math.log2(360 * width_px / 512 / span_x)
    zoom_y = math.log2(180 * height_px / 512 / span_y)
    return max(0.0, min(zoom_x, zoom_y) - 0.2)


def municipal_choropleth(
    data: pd.DataFrame,
    column: str,
    *,
    label: str | None = None,
    unit: str = "",
    scheme: str = "quantiles",
    k: int = 5,
    palette: str = "viridis",
    reverse: bool = False,
    states: list[str] | tuple[str, ...] | None = None,
    classify_within_selection: bool = True,
    renderer: str = "geo",
    state_borders: bool = True,
    title: str | None = None,
    data_dir=None,
    decimals: int = DEFAULT_DECIMALS,
) -> MapResult:
    """Choropleth of ``data[column]`` over the municipalities (``data`` has a CVEGEO column).

    ``states`` (CVE_ENT codes) restricts the map and zooms to them; the classes are computed
    over the municipalities shown unless ``classify_within_selection=False`` (then national
    classes, comparable between states). Municipalities absent from ``data`` show as "no data".
    Returns the figure and the table it shows (for downloads).
    """
    import plotly.graph_objects as go

    if renderer not in RENDERERS:
        raise InputError(f"renderer must be one of {', '.join(RENDERERS)}; got {renderer!r}")
    _check_map_table(data, column)
    label = label or column
    root = _root(data_dir)
    features, names = _geojson_cached(root, int(decimals))
    table, shown = _values_table(data, column, names, states)
    table, classification = _classes_shown(table, shown, scheme, k, classify_within_selection)

    shown_features = list(features) if shown.all() else [f for f, keep in zip(features, shown) if keep]
    has_value = np.isfinite(table["value"].to_numpy(dtype=float))
    value_text = [format_number(v, unit) for v in table["value"].to_numpy(dtype=float)]
    customdata = np.column_stack([table["NOMGEO"], table["NOM_ENT"], value_text, table["class"], table["CVEGEO"]])
    hover = ("<b>%{customdata[0]}</b>, %{customdata[1]}<br>" + f"{label}: " + "%{customdata[2]}"
             + ("<br>class %{customdata[3]}" if classification.scheme != "unclassed" else "")
             + "<br>CVEGEO %{customdata[4]}<extra></extra>")
    scale_args = _colour_scale(classification, table["value"].to_numpy(dtype=float), has_value, palette, reverse,
                               _colorbar_title(label, unit))

    codes_with = table["CVEGEO"].to_numpy()[has_value]
    codes_without = table["CVEGEO"].to_numpy()[~has_value]
    trace_cls = go.Choropleth if renderer == "geo" else go.Choroplethmap
    marker = dict(line=dict(width=0.15 if shown.all() else 0.4, color=BORDER_COLOUR))
    traces = []
    if renderer == "geo":
        traces.append(_outline_trace(root, int(decimals), visible=state_borders, zoomed=not shown.all()))

    def collection(mask):  # each trace carries only its own polygons
        return {"type": "FeatureCollection", "features": [f for f, keep in zip(shown_features, mask) if keep]}

    if len(codes_without):
        traces.append(trace_cls(
            geojson=collection(~has_value), locations=codes_without, z=np.zeros(len(codes_without)),
            colorscale=[[0, NO_DATA_COLOUR], [1, NO_DATA_COLOUR]], showscale=False, marker=marker,
            customdata=customdata[~has_value], hovertemplate=hover, name="no data",
        ))
    traces.append(trace_cls(geojson=collection(has_value), locations=codes_with, customdata=customdata[has_value],
                            hovertemplate=hover, marker=marker, name=label, **scale_args))
    figure = go.Figure(traces)
    _frame_view(figure, names.loc[shown, ["minx", "miny", "maxx", "maxy"]], renderer)
    figure.update_layout(
        title=dict(text=title or label),
        margin=dict(l=0, r=0, t=40, b=0),
        paper_bgcolor="rgba(0,0,0,0)",
        dragmode="pan" if renderer == "geo" else None,
    )
    out_table = table.rename(columns={"NOMGEO": "municipality", "NOM_ENT": "state", "value": column})
    return MapResult(figure, out_table[["CVEGEO", "CVE_ENT", "municipality", "state", column, "class"]],
                     classification)


def category_choropleth(data: pd.DataFrame, column: str, colours: dict, *, title: str = "", data_dir=None,
                        decimals: int = DEFAULT_DECIMALS):
    """Map of a categorical ``data[column]`` (e.g. LISA clusters): one trace per category in
    ``colours`` (category -> colour), so the legend names each with its count, over the state
    outlines, framed on the country."""
    import plotly.graph_objects as go

    if "CVEGEO" not in data.columns or column not in data.columns:
        raise DataError(f"the table to map needs CVEGEO and {column!r} columns")
    root = _root(data_dir)
    features, _ = _geojson_cached(root, int(decimals))
    geojson = {"type": "FeatureCollection", "features": list(features)}
    figure = go.Figure(_outline_trace(root, int(decimals)))
    for category, colour in colours.items():
        part = data[data[column] == category]
        if part.empty:
            continue
        figure.add_trace(go.Choropleth(
            geojson=geojson, locations=part["CVEGEO"], z=np.ones(len(part)), featureidkey="id",
            colorscale=[[0, colour], [1, colour]], showscale=False, name=f"{category} ({len(part)})",
            showlegend=True, marker_line_width=0.2, marker_line_color="white",
            hovertemplate=f"%{{location}}<br>{category}<extra></extra>"))
    figure.update_geos(visible=False, projection_type="mercator", lonaxis_range=list(MEXICO_LON),
                       lataxis_range=list(MEXICO_LAT), bgcolor="rgba(0,0,0,0)")
    figure.update_layout(title=title, legend=dict(orientation="h", y=-0.05))
    return figure


# ---------------------------------------------------------------- the choropleth's stages
def _check_map_table(data: pd.DataFrame, column: str) -> None:
    if "CVEGEO" not in data.columns:
        raise DataError("the table to map needs a CVEGEO column (5-character municipality code)")
    if column not in data.columns:
        raise DataError(f"column {column!r} is not in the table to map")
    if data["CVEGEO"].duplicated().any():
        raise DataError("the table to map has several rows per municipality; pick one year first")


def _values_table(data: pd.DataFrame, column: str, names: pd.DataFrame, states) -> tuple[pd.DataFrame, np.ndarray]:
    """Every municipality with its name and ``value`` (NaN where ``data`` has none), and the mask
    of those shown (the chosen states, or all)."""
    values = pd.to_numeric(data[column], errors="coerce")
    table = names[["CVEGEO", "CVE_ENT", "NOMGEO", "NOM_ENT"]].merge(
        pd.DataFrame({"CVEGEO": data["CVEGEO"].astype(str).to_numpy(), "value": values.to_numpy()}),
        on="CVEGEO", how="left",
    )
    shown = np.ones(len(table), dtype=bool)
    if states:
        wanted = {str(s).zfill(2) for s in states}
        unknown = wanted - set(table["CVE_ENT"])
        if unknown:
            raise InputError(f"unknown state codes: {', '.join(sorted(unknown))}")
        shown = table["CVE_ENT"].isin(wanted).to_numpy()
    return table, shown


def _classes_shown(table: pd.DataFrame, shown: np.ndarray, scheme: str, k: int,
                   within_selection: bool) -> tuple[pd.DataFrame, Classification]:
    """The shown rows with their class label, and the classification with counts over them."""
    basis = table["value"].to_numpy(dtype=float)
    if within_selection:
        basis = np.where(shown, basis, np.nan)
    everywhere = classify(basis, scheme, k)
    table = table.assign(**{"class": [everywhere.label_of(c) for c in everywhere.classes]})
    table = table[shown].reset_index(drop=True)
    classes = everywhere.classes[shown]
    # Counts over what is shown (national classes may leave some classes empty in one state).
    counts = tuple(int((classes == i).sum()) for i in range(everywhere.k))
    return table, Classification(everywhere.scheme, everywhere.k, everywhere.edges, classes, everywhere.labels,
                                 counts)


def _colour_scale(classification: Classification, values: np.ndarray, has_value: np.ndarray, palette: str,
                  reverse: bool, colorbar_title: str) -> dict:
    """The trace arguments that colour the municipalities shown that have a value (``has_value``):
    the value itself on a continuous scale (unclassed), else the class index on a stepped scale
    with one tick per class."""
    if classification.scheme == "unclassed" or classification.k == 1:
        import plotly.colors as pc

        palette_colours(palette, 2)  # validates the name
        colorscale = pc.get_colorscale(palette)
        if reverse:
            colorscale = [[1 - p, c] for p, c in reversed(colorscale)]
        lo, hi = classification.edges[0], classification.edges[-1]
        return dict(z=values[has_value], zmin=lo, zmax=hi if hi > lo else lo + 1, colorscale=colorscale,
                    colorbar=dict(title=dict(text=colorbar_title), thickness=14, len=0.75))
    if classification.scheme == "diverging":
        colours = diverging_colours(classification.edges, palette, reverse)
    else:
        colours = palette_colours(palette, classification.k, reverse)
    tick_text = [f"{lab}  (n={n})" for lab, n in zip(classification.labels, classification.counts)]
    return dict(
        z=classification.classes[has_value].astype(float), zmin=-0.5, zmax=classification.k - 0.5, colorscale=stepped_colorscale(colours),
        colorbar=dict(title=dict(text=colorbar_title), tickvals=list(range(classification.k)),
                      ticktext=tick_text, thickness=14, len=0.75),
    )


def _outline_trace(root: str, decimals: int, visible: bool = True, zoomed: bool = False):
    """The state borders as a line trace. It goes FIRST on a geo map: plotly.js decides whether
    to download its world topojson from the CDN by looking at the first trace of the geo subplot
    only, and a lon/lat trace needs none (with a choropleth first, offline browsers log an error
    and never draw the map). Invisible, it keeps that role with a single point."""
    import plotly.graph_objects as go

    lons, lats = _state_lines_cached(root, decimals)
    if not visible:
        lons, lats = lons[:1], lats[:1]
    return go.Scattergeo(lon=lons, lat=lats, mode="lines", hoverinfo="skip", showlegend=False,
                         opacity=1.0 if visible else 0.0,
                         line=dict(width=1.4 if zoomed else 0.8, color="rgba(60,60,60,0.8)"))


def _frame_view(figure, bounds: pd.DataFrame, renderer: str) -> None:
    """Fit the map to the bounding box of the municipalities shown."""
    box = (float(bounds.minx.min()), float(bounds.miny.min()), float(bounds.maxx.max()), float(bounds.maxy.max()))
    if renderer == "geo":
        pad_x = (box[2] - box[0]) * 0.02
        pad_y = (box[3] - box[1]) * 0.02
        figure.update_geos(
            visible=False, projection_type="mercator",
            lonaxis_range=[box[0] - pad_x, box[2] + pad_x], lataxis_range=[box[1] - pad_y, box[3] + pad_y],
            bgcolor="rgba(0,0,0,0)",
        )
    else:
        center = dict(lon=(box[0] + box[2]) / 2, lat=(box[1] + box[3]) / 2)
        figure.update_layout(map=dict(style="carto-positron", center=center, zoom=_zoom_for(box)))


def _colorbar_title(label: str, unit: str) -> str:
    # Wrap long labels so the colour bar does not eat the map.
    words, lines, line = label.split(), [], ""
    for word in words:
        if len(line) + len(word) > 18 and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    text = "<br>".join(lines)
    return f"{text}<br>({unit})" if unit and unit not in ("-", "index") else text


# ---------------------------------------------------------------- points (monitoring stations)
def state_outline(data_dir=None, decimals: int = DEFAULT_DECIMALS) -> tuple[np.ndarray, np.ndarray]:
    """State borders as (lon, lat) arrays with NaN between rings, for a line trace."""
    return _state_lines_cached(_root(data_dir), int(decimals))


# Mexico's extent (mainland, Baja California and the Yucatán peninsula), degrees.
MEXICO_LON = (-118.6, -86.5)
MEXICO_LAT = (14.3, 32.9)


def robust_range(values, low_pct: float = 2.0, high_pct: float = 98.0) -> tuple[float, float]:
    """Colour range from the 2nd to the 98th percentile, so that one extreme station does not
    stretch the scale over values nearly none has (the extremes take the end colours)."""
    data = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce").dropna(), dtype=float)
    if data.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(data, [low_pct, high_pct]))
    if high <= low:
        low, high = float(data.min()), float(data.max())
    return (low, high) if high > low else (low - 0.5, low + 0.5)


def station_map(stations: pd.DataFrame, value: str | None = None, *, label: str = "", unit: str = "",
                palette: str = "viridis", renderer: str = "geo", title: str | None = None, data_dir=None,
                outline: bool = True):
    """Stations as points (``lon``, ``lat``, ``station_name``, ``network``), coloured by ``value``.

    Stations whose ``value`` is missing are drawn as small grey rings, so the network's extent
    stays visible. ``renderer="geo"`` works offline over the state borders; ``"maplibre"`` uses
    ``go.Scattermap`` over Carto tiles (no token; tiles need internet).
    """
    import plotly.graph_objects as go

    if renderer not in RENDERERS:
        raise InputError(f"renderer must be one of {', '.join(RENDERERS)}; got {renderer!r}")
    needed = {"lon", "lat", "station_name", "network"}
    if not needed <= set(stations.columns):
        raise DataError(f"the station table needs columns {sorted(needed)}")
    palette_colours(palette, 2)
    frame = stations.dropna(subset=["lon", "lat"]).reset_index(drop=True)
    has = frame[value].notna().to_numpy() if value else np.ones(len(frame), dtype=bool)
    text = [format_number(v, unit) for v in frame[value]] if value else [""] * len(frame)
    custom = np.column_stack([frame["station_name"].astype(str), frame["network"].astype(str), text])
    hover = ("<b>%{customdata[0]}</b><br>%{customdata[1]}"
             + (f"<br>{label or value}: " + "%{customdata[2]}" if value else "") + "<extra></extra>")
    scatter = go.Scattergeo if renderer == "geo" else go.Scattermap
    traces = []
    if outline and renderer == "geo":
        lons, lats = state_outline(data_dir)
        traces.append(go.Scattergeo(lon=lons, lat=lats, mode="lines", hoverinfo="skip", showlegend=False,
                                    line=dict(width=0.7, color="rgba(90,90,90,0.7)")))
    if (~has).any():
        traces.append(scatter(lon=frame["lon"][~has], lat=frame["lat"][~has], mode="markers", name="no valid value",
                              marker=dict(size=6, color=NO_DATA_COLOUR, opacity=0.9),
                              customdata=custom[~has], hovertemplate=hover))
    if has.any():
        marker = dict(size=10, opacity=0.9)
        if value:
            low, high = robust_range(frame[value][has])
            marker.update(color=frame[value][has], colorscale=palette, showscale=True, cmin=low, cmax=high,
                          colorbar=dict(title=dict(text=_colorbar_title(label or value, unit)), thickness=14, len=0.75))
        traces.append(scatter(lon=frame["lon"][has], lat=frame["lat"][has], mode="markers", name=label or "stations",
                              marker=marker, customdata=custom[has], hovertemplate=hover))
    figure = go.Figure(traces)
    lon, lat = frame["lon"], frame["lat"]
    if renderer == "geo":
        pad_x = max(0.5, (lon.max() - lon.min()) * 0.05) if len(frame) else 1
        pad_y = max(0.5, (lat.max() - lat.min()) * 0.05) if len(frame) else 1
        lon_range = [lon.min() - pad_x, lon.max() + pad_x] if len(frame) else list(MEXICO_LON)
        lat_range = [lat.min() - pad_y, lat.max() + pad_y] if len(frame) else list(MEXICO_LAT)
        if outline:  # the state outlines are drawn: show the whole country, not just the stations' box
            lon_range = [min(lon_range[0], MEXICO_LON[0]), max(lon_range[1], MEXICO_LON[1])]
            lat_range = [min(lat_range[0], MEXICO_LAT[0]), max(lat_range[1], MEXICO_LAT[1])]
        figure.update_geos(visible=False, projection_type="mercator", bgcolor="rgba(0,0,0,0)",
                           lonaxis_range=lon_range, lataxis_range=lat_range)
    else:
        box = (lon.min(), lat.min(), lon.max(), lat.max()) if len(frame) else (-118.5, 14.4, -86.5, 32.8)
        figure.update_layout(map=dict(style="carto-positron", center=dict(lon=(box[0] + box[2]) / 2,
                                                                         lat=(box[1] + box[3]) / 2),
                                      zoom=_zoom_for(box)))
    figure.update_layout(title=dict(text=title or label), margin=dict(l=0, r=0, t=40, b=0),
                         paper_bgcolor="rgba(0,0,0,0)", legend=dict(orientation="h", y=-0.02))
    return figure
