"""Audit attributes: which metadata column an attribute comes from, its cleaned values, the
groups it forms, and the one rule for whether it is continuous.

Below both :mod:`pumamed.explain.audit` and :mod:`pumamed.explain.mitigation` (which import it),
so their dependencies point one way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pumamed.errors import InputError

# Canonical attribute names and the metadata columns they may come from (first one present wins).
ATTRIBUTE_COLUMNS: dict[str, tuple[str, ...]] = {
    "sex": ("sex", "Patient Gender", "gender"),
    "age": ("age", "Patient Age"),
    "age_group": ("age", "Patient Age"),
    "view": ("view", "View Position", "view_position"),
    "density": ("density", "background_tissue", "tissue_density"),
    "dataset": ("dataset", "source"),
    "modality": ("modality",),
    "site": ("site", "hospital", "institution"),
}
CONTINUOUS_ATTRIBUTES = {"age"}
#: Age groups used for subgroup analysis (clinical convention: young adult / middle age / older).
AGE_BINS = (0, 40, 60, 200)
AGE_LABELS = ("<40", "40-59", "60+")
DENSITY_NAMES = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}
SEX_NAMES = {"M": "male", "F": "female", "m": "male", "f": "female"}
#: Columns that never make sense as audit attributes (identifiers, file names, labels).
NON_ATTRIBUTES = {"patient_id", "path", "file", "image", "label", "labels", "index", "image_id", "refnum",
                  "split", "x", "y", "radius"}


@dataclass
class AttributeValues:
    """One attribute per image: ``values`` (object array; None where unknown) and its kind."""

    name: str
    values: np.ndarray
    kind: str  # "categorical" or "continuous"

    @property
    def known(self) -> np.ndarray:
        return pd.Series(self.values, dtype="object").notna().to_numpy()

    def groups(self) -> np.ndarray:
        """Categorical labels for subgroup analysis (continuous values are cut into age groups)."""
        if self.kind == "categorical":
            return self.values
        return age_groups(self.values)


def _column_for(metadata: pd.DataFrame, attribute: str) -> str:
    candidates = ATTRIBUTE_COLUMNS.get(attribute, (attribute,))
    for column in candidates:
        if column in metadata.columns:
            return column
    usable = ", ".join(available_attributes(metadata)) or "none"
    raise InputError(f"this dataset has no '{attribute}' metadata (attributes it has: {usable})")


def clean_value(value):
    """A metadata value, or None for the spellings of unknown ('', 'nan', 'unknown', '?', ...)."""
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    text = str(value).strip()
    return None if text in {"", "nan", "None", "NaN", "unknown", "?"} else value


def attribute_values(metadata: pd.DataFrame, attribute: str) -> AttributeValues:
    """The attribute of every row of ``metadata``, cleaned, with readable group names."""
    attribute = attribute.strip().lower().replace(" ", "_")
    column = _column_for(metadata, attribute)
    raw = [clean_value(v) for v in metadata[column].tolist()]
    if all(v is None for v in raw):
        usable = ", ".join(available_attributes(metadata)) or "none"
        raise InputError(f"this dataset has no '{attribute}' metadata (attributes it has: {usable})")
    if is_continuous(raw, attribute):
        numeric = pd.to_numeric(pd.Series(raw, dtype="object"), errors="coerce").to_numpy(dtype=float)
        values = np.array([None if np.isnan(v) else float(v) for v in numeric], dtype=object)
        return AttributeValues("age", values, "continuous")
    if attribute == "age_group":
        return AttributeValues("age_group", age_groups(raw), "categorical")
    names = {"sex": SEX_NAMES, "density": DENSITY_NAMES}.get(attribute, {})
    values = np.array([None if v is None else names.get(str(v).strip(), str(v).strip()) for v in raw], dtype=object)
    return AttributeValues(attribute, values, "categorical")


def available_attributes(metadata: pd.DataFrame, max_groups: int = 12) -> list[str]:
    """Attributes of ``metadata`` usable in an audit: at least two groups of at least 5 images each."""
    found = []
    seen_columns = set()
    for attribute, columns in ATTRIBUTE_COLUMNS.items():
        column = next((c for c in columns if c in metadata.columns), None)
        if column is None:
            continue
        if attribute != "age_group" and column in seen_columns:
            continue
        seen_columns.add(column)
        if all(clean_value(v) is None for v in metadata[column].tolist()):
            continue  # the column exists but is empty for this dataset (e.g. density on chest X-rays)
        values = attribute_values(metadata, attribute)
        if values.kind == "continuous":
            if pd.to_numeric(pd.Series(values.values), errors="coerce").nunique() >= 5:
                found.append(attribute)
            continue
        counts = pd.Series(values.values, dtype="object").dropna().value_counts()
        if (counts >= 5).sum() >= 2 and len(counts) <= max_groups:
            found.append(attribute)
    return found


#: A numeric attribute with more distinct values than this, and no declared kind, is continuous.
CONTINUOUS_MIN_DISTINCT = 12


def is_continuous(values, name: str | None = None) -> bool:
    """The one rule for "is this attribute continuous?".

    A named attribute is continuous when it is one of :data:`CONTINUOUS_ATTRIBUTES` (age, in
    years). Values without a name (what the mitigations receive) are continuous when every known
    value is a number and there are more than :data:`CONTINUOUS_MIN_DISTINCT` distinct ones (so
    0/1 codes and small ordinal classes stay groups).
    """
    if name is not None:
        return name in CONTINUOUS_ATTRIBUTES
    series = pd.Series(np.asarray(values, dtype=object))
    known = series.notna()
    numeric = pd.to_numeric(series, errors="coerce")
    return bool(known.any() and numeric.notna().sum() == known.sum()
                and numeric[known].nunique() > CONTINUOUS_MIN_DISTINCT)


def age_groups(values) -> np.ndarray:
    """Age in years cut into :data:`AGE_LABELS` (None where unknown)."""
    numeric = pd.to_numeric(pd.Series(np.asarray(values, dtype=object)), errors="coerce")
    cut = pd.cut(numeric, bins=AGE_BINS, labels=AGE_LABELS, right=False)
    return np.array([None if pd.isna(v) else str(v) for v in cut], dtype=object)
