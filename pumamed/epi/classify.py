"""Classification schemes, colour-blind-safe palettes and number labels for maps: what a
choropleth's classes are, apart from drawing it (:mod:`pumamed.epi.mapping` builds the figures).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pumamed.errors import DataError, InputError

SCHEMES: dict[str, str] = {
    "quantiles": "Quantiles (equal counts)",
    "natural_breaks": "Natural breaks (Fisher-Jenks)",
    "equal_interval": "Equal intervals",
    "unclassed": "Unclassed (continuous)",
    "diverging": "Diverging at zero (quantiles on each side)",
}
# Perceptually uniform and colour-blind safe (viridis family) or ColorBrewer schemes marked
# colour-blind safe; the diverging ones suit signed data such as factor scores.
SEQUENTIAL_PALETTES = ("viridis", "cividis", "plasma", "magma", "inferno", "YlGnBu", "YlOrRd", "Blues")
DIVERGING_PALETTES = ("RdBu", "PuOr", "BrBG")
PALETTES = SEQUENTIAL_PALETTES + DIVERGING_PALETTES


# ---------------------------------------------------------------- classification
@dataclass(frozen=True)
class Classification:
    """Classes of a variable: ``classes[i]`` is the class of value ``i`` (-1 = missing)."""

    scheme: str
    k: int
    edges: np.ndarray  # k + 1 class boundaries, from the minimum to the maximum
    classes: np.ndarray
    labels: tuple[str, ...]
    counts: tuple[int, ...]

    def label_of(self, index: int) -> str:
        return self.labels[index] if index >= 0 else "no data"


def format_quantity(value: float, unit: str = "") -> str:
    """A number with its unit, in the singular for exactly one counted thing: "1 patient",
    "2 patients", "20.8 µg/m³" (units that are not plural nouns are left as they are)."""
    text = format_number(value, unit)
    if unit and np.isfinite(value) and float(value) == 1.0:
        words = unit.split()
        last = words[-1]
        if last.isalpha() and last.endswith("s") and not last.endswith("ss") and len(last) > 3:
            singular = last[:-3] + "y" if last.endswith("ies") else last[:-1]
            text = format_number(value, " ".join(words[:-1] + [singular]))
    return text


def source_years_note(source_years, shown_year: int) -> str:
    """The year a map shows, with the source's span when that differs ("2020; the source covers
    2000-2024"), so the line under a map titled 2020 does not read as another year."""
    span = str(source_years or "").strip()
    if not span or span == str(shown_year):
        return f"year shown {shown_year}"
    return f"year shown {shown_year}; the source covers {span}"


def format_number(value: float, unit: str = "") -> str:
    """Compact human number: 3 significant digits, thousands separators for large values."""
    if value is None or not np.isfinite(value):
        return "no data"
    magnitude = abs(value)
    if magnitude >= 1000:
        text = f"{value:,.0f}"
    elif magnitude >= 100:
        text = f"{value:.0f}"
    elif magnitude >= 1 or magnitude == 0:
        text = f"{value:.3g}" if magnitude < 10 else f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip() if unit and unit not in ("-", "index") else text


def fisher_jenks_breaks(values, k: int, max_points: int = 4000) -> np.ndarray:
    """Upper bounds of the ``k`` Fisher-Jenks classes (exact optimum of within-class squares).

    Dynamic programming over the sorted distinct values, weighted by their counts, vectorised
    with NumPy. It gives mapclassify's ``FisherJenks`` answer without importing mapclassify,
    whose numba compilation at import costs 5-20 s on the first page view. Above
    ``max_points`` distinct values, evenly spaced quantiles stand in for the data (as
    ``FisherJenksSampled`` does).
    """
    observed = np.asarray(values, dtype=float)
    observed = observed[np.isfinite(observed)]
    points, weights = np.unique(observed, return_counts=True)
    if len(points) > max_points:
        points = np.unique(np.quantile(observed, np.linspace(0, 1, max_points)))
        weights = np.ones(len(points))
    n = len(points)
    k = int(min(k, n))
    if k <= 1:
        return np.array([points[-1]])
    weights = weights.astype(float)
    cum_w = np.concatenate([[0.0], np.cumsum(weights)])
    cum_x = np.concatenate([[0.0], np.cumsum(weights * points)])
    cum_x2 = np.concatenate([[0.0], np.cumsum(weights * points**2)])

    def within(starts, ends):  # within-class sum of squares of points[a:e], a x e grid
        w = cum_w[ends][None, :] - cum_w[starts][:, None]
        sx = cum_x[ends][None, :] - cum_x[starts][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            return (cum_x2[ends][None, :] - cum_x2[starts][:, None]) - sx * sx / w

    def column_minima(previous, starts, ends):
        total = previous[starts][:, None] + within(starts, ends)
        total[~(starts[:, None] < ends[None, :])] = np.inf
        arg = np.argmin(total, axis=0)
        return total[arg, np.arange(len(ends))], starts[arg]

    # best[e]: least within-class sum of squares of points[:e] in j + 1 classes (best[0] unused).
    all_ends = np.arange(n + 1)
    best = np.concatenate([[np.inf], within(np.array([0]), all_ends[1:])[0]])
    back = np.zeros((k, n + 1), dtype=int)
    block_size = 128
    for j in range(1, k):
        # previous[a]: best split of points[:a] into j classes, so the last class starts at a.
        previous = best.copy()
        previous[:j] = np.inf
        new_best = np.full(n + 1, np.inf)
        # The squared-error cost is a Monge matrix, so the optimal start of the last class never
        # moves left as the end moves right: solve the blocks' edge columns over every start,
        # then each block only over the starts between its edges' optima (~5x less work).
        firsts = all_ends[1::block_size]
        lasts = np.minimum(firsts + block_size - 1, n)
        edges = np.unique(np.concatenate([firsts, lasts]))
        edge_best, edge_arg = column_minima(previous, np.arange(n), edges)
        new_best[edges], back[j, edges] = edge_best, edge_arg
        edge_opt = dict(zip(edges.tolist(), edge_arg.tolist()))
        for first, last in zip(firsts.tolist(), lasts.tolist()):
            inner = np.arange(first + 1, last)
            if len(inner) == 0:
                continue
            starts = np.arange(edge_opt[first], edge_opt[last] + 1)
            new_best[inner], back[j, inner] = column_minima(previous, starts, inner)
        best = new_best
    n_end = n
    # Walk back from the full range to the class starts.
    uppers, end = [], n_end
    for j in range(k - 1, 0, -1):
        start = back[j, end]
        uppers.append(points[end - 1])
        end = start
    uppers.append(points[end - 1])
    return np.array(sorted(uppers))


def classify(values, scheme: str = "quantiles", k: int = 5) -> Classification:
    """Put values into ``k`` classes: quantiles, natural breaks (Fisher-Jenks), equal intervals.

    ``k`` is reduced when there are fewer distinct values (or, for quantiles, distinct
    quantiles) than classes, so no class is empty by construction. ``"unclassed"`` gives one
    class spanning the range (the colour then shows the value itself).
    """
    if scheme not in SCHEMES:
        raise InputError(f"unknown classification scheme {scheme!r}; choose from {', '.join(SCHEMES)}")
    if not 2 <= int(k) <= 12:
        raise InputError(f"the number of classes must be between 2 and 12; got {k}")
    array = np.asarray(values, dtype=float)
    finite = np.isfinite(array)
    if not finite.any():
        raise DataError("no values to map: every municipality is missing this variable")
    observed = array[finite]
    low, high = float(observed.min()), float(observed.max())
    classes = np.full(array.shape, -1, dtype=int)
    n_distinct = len(np.unique(observed))
    if scheme == "unclassed" or n_distinct == 1:
        classes[finite] = 0
        edges = np.array([low, high])
        return Classification("unclassed" if scheme == "unclassed" else scheme, 1, edges, classes,
                              (f"{format_number(low)} – {format_number(high)}",), (int(finite.sum()),))

    k = min(int(k), n_distinct)
    if scheme == "quantiles":
        # Ties can merge quantiles: use the distinct ones (np.unique also sorts them).
        upper = np.quantile(observed, np.linspace(0, 1, k + 1)[1:])
    elif scheme == "diverging":
        # Zero is always a class boundary, so a class never mixes signs (signed effects such as
        # SHAP values: the colour's hue then says the sign); quantiles on each side.
        side = max(1, k // 2)
        negative, positive = observed[observed < 0], observed[observed > 0]
        upper = []
        if negative.size:
            upper += list(np.quantile(negative, np.linspace(0, 1, side + 1)[1:-1])) + [0.0]
        if positive.size:
            upper += list(np.quantile(positive, np.linspace(0, 1, side + 1)[1:]))
        upper = np.asarray(upper if upper else [high], dtype=float)
    elif scheme == "natural_breaks":
        upper = fisher_jenks_breaks(observed, k)
    else:
        upper = low + (high - low) * np.arange(1, k + 1) / k
    upper = np.unique(upper)
    upper[-1] = high
    edges = np.concatenate([[low], upper])
    # Class i holds (edges[i], edges[i+1]]; the first class also holds the minimum.
    index = np.searchsorted(upper, observed, side="left")
    classes[finite] = np.minimum(index, len(upper) - 1)
    labels = []
    for i in range(len(upper)):
        opener = "[" if i == 0 else "("
        labels.append(f"{opener}{format_number(edges[i])} – {format_number(edges[i + 1])}]")
    counts = tuple(int((classes == i).sum()) for i in range(len(upper)))
    return Classification(scheme, len(upper), edges, classes, tuple(labels), counts)


# ---------------------------------------------------------------- colours
def palette_colours(palette: str, n: int, reverse: bool = False) -> list[str]:
    """``n`` colours sampled evenly from a plotly named colour scale."""
    import plotly.colors as pc

    if palette not in PALETTES:
        raise InputError(f"unknown palette {palette!r}; choose from {', '.join(PALETTES)}")
    points = [0.5] if n == 1 else list(np.linspace(0, 1, n))
    colours = pc.sample_colorscale(pc.get_colorscale(palette), points)
    return colours[::-1] if reverse else colours


def diverging_colours(edges, palette: str, reverse: bool = False) -> list[str]:
    """One colour per class of a ``diverging`` classification: classes below zero from the
    palette's first half, classes above zero from its second half, so the hue gives the sign
    and the same depth of colour means the same rank on either side."""
    uppers = np.asarray(edges, dtype=float)[1:]
    n_negative = int((uppers <= 0).sum())
    n_positive = len(uppers) - n_negative
    half = max(n_negative, n_positive, 1)
    full = palette_colours(palette, 2 * half, reverse)
    return full[half - n_negative:half] + full[half:half + n_positive]


def stepped_colorscale(colours: list[str]) -> list[list]:
    """A colour scale with flat steps, so class index ``i`` (on ``[-0.5, k-0.5]``) gets colour ``i``."""
    k = len(colours)
    scale = []
    for i, colour in enumerate(colours):
        scale.append([i / k, colour])
        scale.append([(i + 1) / k, colour])
    return scale
