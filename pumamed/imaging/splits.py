"""Deterministic train / val / test assignment, patient-wise whenever patient ids exist.

Rules (applied to every dataset, known or user folder):

1. A dataset's own split is kept where the source has one (folder ``train/``, ``valid/``,
   ``test/``; MedMNIST keys; ChestX-ray14 ``train_val_list.txt`` / ``test_list.txt``).
2. Patient-wise: when the source's own split puts one patient in two splits (NIH1000 does, for
   15 patients), all of that patient's images go to the *most held-out* split they appear in
   (test > val > train), so no patient is ever in two splits.
3. Missing splits are carved deterministically, stratified by label, by whole patients:
   - own train + val, no test (held back): **test := the own val split**; val := 15 % of train;
   - own train + test, no val: val := 15 % of train;
   - no own split at all (or train only): test := 15 %, then val := 15 % of the total.
   The carve orders patients by a hash of ``(seed, patient)``, not by a random generator, so a
   sample's split does not change when other files are added or when global seeds change.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from pumamed.errors import DataError

SPLITS = ("train", "val", "test")
HOLDOUT_RANK = {"train": 0, "val": 1, "test": 2}
DEFAULT_HOLDOUT_FRACTION = 0.15

# Spellings of split folders / keys found in the wild, mapped to our three names.
SPLIT_ALIASES = {
    "train": "train", "training": "train", "tr": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "ts": "test",
}


def canonical_split(name: str | None) -> str | None:
    if name is None or (isinstance(name, float) and np.isnan(name)):
        return None
    return SPLIT_ALIASES.get(str(name).strip().lower())


def _stable_hash(seed: int, key) -> int:
    digest = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _carve(groups: pd.DataFrame, fraction: float, seed: int, salt: str) -> set:
    """Pick about ``fraction`` of the groups in each stratum (at least one if the stratum has 2+)."""
    chosen = set()
    for _, members in groups.groupby("stratum", sort=True):
        keys = sorted(members["group"].tolist(), key=lambda g: _stable_hash(seed, f"{salt}:{g}"))
        n_take = int(round(fraction * len(keys)))
        if n_take == 0 and len(keys) >= 2 and fraction > 0:
            n_take = 1
        chosen.update(keys[:n_take])
    return chosen


def assign_splits(official: pd.Series, groups: pd.Series, strata: pd.Series, seed: int = 0,
                  fraction: float = DEFAULT_HOLDOUT_FRACTION) -> tuple[np.ndarray, str]:
    """Return (split per sample as an array of "train"/"val"/"test", a sentence describing the rule).

    ``official``: the source's own split per sample (train/val/test or None).
    ``groups``: patient id per sample (NaN -> the sample is its own group).
    ``strata``: a hashable label per sample used for stratification.
    """
    n = len(official)
    official = official.map(canonical_split).reset_index(drop=True)
    groups = groups.reset_index(drop=True)
    own_group = groups.isna()
    group_key = groups.astype(object).where(~own_group, pd.Series([f"__sample{i}" for i in range(n)]))
    group_key = group_key.astype(str)
    strata = strata.reset_index(drop=True).astype(str)

    # Rule 2: a group takes its most held-out official split.
    present = set(official.dropna().unique())
    rank = official.map(HOLDOUT_RANK)
    if present:
        group_rank = rank.groupby(group_key).transform("max")
        moved = int(((group_rank != rank) & rank.notna()).sum())
        resolved = group_rank.map({v: k for k, v in HOLDOUT_RANK.items()})
    else:
        moved = 0
        resolved = pd.Series([None] * n, dtype=object)
    resolved = resolved.astype(object).where(resolved.notna(), None)

    # Group table for carving: one stratum per group (its most common stratum value).
    def group_table(mask: pd.Series) -> pd.DataFrame:
        frame = pd.DataFrame({"group": group_key[mask], "stratum": strata[mask]})
        counts = frame.value_counts(["group", "stratum"]).reset_index(name="n")
        counts = counts.sort_values(["group", "n", "stratum"], ascending=[True, False, True], kind="stable")
        return counts.drop_duplicates("group")[["group", "stratum"]]

    split = resolved.copy()
    notes = []
    if present >= {"train", "val", "test"}:
        notes.append("own train/val/test splits")
    elif present == {"train", "val"}:
        split[split == "val"] = "test"
        pool = split == "train"
        val_groups = _carve(group_table(pool), fraction, seed, "val")
        split[pool & group_key.isin(val_groups)] = "val"
        notes.append("own val split used as test (own test held back); val = "
                     f"{fraction:.0%} of own train, carved by patient")
    elif present == {"train", "test"}:
        pool = split.isna() | (split == "train")
        split[pool] = "train"
        val_groups = _carve(group_table(pool), fraction, seed, "val")
        split[pool & group_key.isin(val_groups)] = "val"
        notes.append(f"own test split; val = {fraction:.0%} of own train, carved by patient")
    elif present <= {"train"}:
        pool = pd.Series(True, index=split.index)
        test_groups = _carve(group_table(pool), fraction, seed, "test")
        split[:] = "train"
        split[group_key.isin(test_groups)] = "test"
        pool = split == "train"
        val_groups = _carve(group_table(pool), fraction / (1 - fraction), seed, "val")
        split[pool & group_key.isin(val_groups)] = "val"
        notes.append(f"no own test split: test = {fraction:.0%}, val = {fraction:.0%}, "
                     "carved deterministically, stratified by label, by patient")
    else:
        # e.g. val + test only: nothing to train on is a valid state for an evaluation set.
        split[split.isna()] = "train"
        notes.append("own splits as found (" + ", ".join(sorted(present)) + ")")
    if moved:
        notes.append(f"{moved} image(s) moved to a more held-out split so that no patient is in two splits")
    if not groups.notna().any():
        notes = [note.replace("by patient", "by image (no patient ids)") for note in notes]
    return split.to_numpy(dtype=object), "; ".join(notes)


def assert_patient_disjoint(split: np.ndarray, groups: pd.Series) -> None:
    """Raise DataError if any patient id appears in two splits (used by tests and loaders)."""
    frame = pd.DataFrame({"split": split, "group": groups.to_numpy()}).dropna()
    per_group = frame.groupby("group")["split"].nunique()
    leaking = per_group[per_group > 1]
    if len(leaking):
        raise DataError(f"{len(leaking)} patient(s) appear in more than one split, e.g. {leaking.index[0]}")
