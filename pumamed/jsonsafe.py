"""JSON-safe copies of results: the one conversion of NumPy, PyTorch and NaN values for JSON.

Every ``to_dict``, checkpoint file and ``--json`` output goes through :func:`to_jsonable`.
"""

from __future__ import annotations

import math
from pathlib import PurePath

import numpy as np

_KEY_TYPES = (str, int, float, bool, type(None))


def to_jsonable(value, *, digits: int | None = None, finite: bool = True, str_keys: bool = False):
    """A copy of ``value`` that :func:`json.dumps` writes as strict JSON.

    Dicts (keys that JSON cannot hold become strings; every key with ``str_keys``), lists and
    tuples are copied recursively; NumPy arrays and tensors become lists, NumPy scalars Python
    ones, paths strings. With ``finite`` (the default) NaN and infinities become ``None``; floats
    are rounded to ``digits`` when given. Anything else is returned as it is.
    """
    def convert(item):
        if isinstance(item, dict):
            return {(k if isinstance(k, _KEY_TYPES) and not str_keys else str(k)): convert(v)
                    for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [convert(v) for v in item]
        if isinstance(item, np.ndarray):
            return convert(item.tolist())
        if hasattr(item, "detach") and hasattr(item, "cpu") and hasattr(item, "tolist"):  # a torch tensor
            return convert(item.detach().cpu().tolist())
        if isinstance(item, (np.bool_, bool)):
            return bool(item)
        if isinstance(item, (np.integer, int)):
            return int(item)
        if isinstance(item, (np.floating, float)):
            number = float(item)
            if not math.isfinite(number):
                return None if finite else number
            return round(number, digits) if digits is not None else number
        if isinstance(item, PurePath):
            return str(item)
        return item

    return convert(value)
