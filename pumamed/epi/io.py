"""Shared plumbing of the epi data layer: where the files are, CVEGEO codes, caches, CSV reading.

Every reader in :mod:`pumamed.epi` takes ``data_dir=None``. It may be the project's data directory
(the folder holding ``epi/``), the ``epi/`` folder itself, or ``None`` for
:func:`pumamed.config.data_dir` (``$PUMAMED_DATA_DIR``). :func:`epi_dir` resolves all three.

Derived artefacts (rebuilt polygons, simplified geometry) are cached on disk in
:func:`cache_dir` -- never inside the data directory, which may be read-only and shared.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pandas as pd

from pumamed.errors import DataError, MissingDataError

CACHE_DIR_ENV = "PUMAMED_CACHE_DIR"

# Subfolders of epi/ that identify an epi folder when the caller passes it directly.
_EPI_MARKERS = ("geo_mxmaps_2020", "conapo_imm_2020", "mucinoab_muni_indicators", "outcomes")

# Encodings tried in order by :func:`read_text_table`; cp1252 before latin-1 because it is a
# superset for printable text (latin-1 never fails, so it must come last).
FALLBACK_ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")


def epi_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The ``epi/`` folder for ``data_dir`` (data root, the epi folder itself, or ``None``)."""
    from pumamed.config import data_dir as configured_data_dir

    root = configured_data_dir(data_dir)
    if (root / "epi").is_dir():
        return root / "epi"
    if root.name == "epi" or any((root / marker).exists() for marker in _EPI_MARKERS):
        return root
    return root / "epi"


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` or raise a :class:`MissingDataError` naming the dataset and the expected place."""
    path = Path(path)
    if not path.exists():
        raise MissingDataError(
            f"{what} not found at {path}. Point PUMAMED_DATA_DIR (or `data_dir`) at the data folder "
            f"holding epi/, or run `python -m pumamed data fetch epi`."
        )
    return path


def cache_dir() -> Path | None:
    """Writable cache folder (``$PUMAMED_CACHE_DIR``, else ``$XDG_CACHE_HOME/pumamed``, else
    ``~/.cache/pumamed``), created on demand; ``None`` when nothing writable is available."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        base = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "pumamed"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return base if os.access(base, os.W_OK) else None


def file_fingerprint(*paths: Path, extra: str = "") -> str:
    """Short key that changes when any source file changes (path, size, mtime) or ``extra`` does."""
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        stat = Path(path).stat()
        digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def disk_cached(kind: str, sources, builder, *, extra: str = "", version: str = "1"):
    """``builder()``'s DataFrame, cached as parquet in :func:`cache_dir` under a key made of the
    source files' fingerprints; rebuilt when a source changes or the cache is unreadable.

    Used for slow reads (the ENSANUT workbook takes ~9 s through openpyxl). Caching never fails
    a read: an unwritable cache only costs time.
    """
    key = file_fingerprint(*sources, extra=f"{kind}|{version}|{extra}")
    return parquet_cached(f"{kind}-{key}", builder)


def _write_frame(frame, path: Path) -> None:
    frame.to_parquet(path, index=False)


def parquet_cached(name: str, builder, *, read=None, write=None):
    """The one disk cache of the epi layer: ``builder()``'s result kept as ``<name>.parquet`` in
    :func:`cache_dir` (``name`` carries the key of what it was built from).

    ``read(path)`` and ``write(result, tmp_path)`` default to a pandas frame without its index
    (geometry passes GeoParquet's, the panel adds its quality report beside the file). A cache
    that cannot be read is rebuilt, never trusted; one that cannot be written only costs time; the
    file is written under a temporary name and renamed, so a reader never sees half of it.
    """
    import logging

    log = logging.getLogger(__name__)
    base = cache_dir()
    path = None if base is None else base / f"{name}.parquet"
    if path is not None and path.exists():
        try:
            return (read or pd.read_parquet)(path)
        except Exception as exc:  # noqa: BLE001 - a truncated cache is rebuilt, never trusted
            log.warning("ignoring unreadable cache %s: %s", path, exc)
    result = builder()
    if path is not None:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            (write or _write_frame)(result, tmp)
            tmp.replace(path)
        except Exception as exc:  # noqa: BLE001 - caching is an optimisation; read-only homes must work
            log.warning("could not write cache %s: %s", path, exc)
            tmp.unlink(missing_ok=True)
    return result


# ----------------------------------------------------------------------------------------- codes

_NON_DIGIT = re.compile(r"\D")


def normalize_cvegeo(values, *, name: str = "CVEGEO") -> pd.Series:
    """Municipality codes as 5-character text: ``1001``, ``1001.0``, ``' 01001'`` -> ``'01001'``.

    Missing values stay missing; anything that is not 1-5 digits after cleaning raises a
    :class:`DataError` listing a few offenders, because a silently mangled code never joins.
    """
    series = pd.Series(values, copy=True)
    as_text = series.astype("string").str.strip()
    # Integer codes read as floats ("1001.0") lose nothing but the ".0".
    as_text = as_text.str.replace(r"\.0+$", "", regex=True)
    valid = as_text.str.fullmatch(r"\d{1,5}").fillna(False)
    present = as_text.notna() & (as_text != "")
    bad = present & ~valid
    if bad.any():
        examples = ", ".join(repr(v) for v in as_text[bad].unique()[:5])
        raise DataError(f"column {name!r} holds values that are not municipality codes (e.g. {examples}); "
                        "expected up to 5 digits (2-digit state + 3-digit municipality)")
    return as_text.where(present).str.zfill(5).astype("str")


def cvegeo_from_parts(state, municipality) -> pd.Series:
    """CVEGEO from separate state and municipality codes (integers or text, padded or not)."""
    state = pd.Series(state).astype("string").str.strip().str.replace(r"\.0+$", "", regex=True)
    mun = pd.Series(municipality).astype("string").str.strip().str.replace(r"\.0+$", "", regex=True)
    # Some INEGI extracts write 4-digit municipality codes ('0460' for 046): strip, then pad.
    state = state.str.lstrip("0").replace("", "0").str.zfill(2)
    mun = mun.str.lstrip("0").replace("", "0").str.zfill(3)
    return (state + mun).astype("str")


def to_number(values) -> pd.Series:
    """Numbers from official text: spaces/commas as thousands separators, dashes/'NA'/'*' as missing."""
    series = pd.Series(values, copy=True)
    if pd.api.types.is_numeric_dtype(series):
        return series.astype(float)
    text = series.astype("string").str.strip()
    text = text.str.replace("\u00a0", "", regex=False).str.replace(" ", "", regex=False)
    text = text.str.replace(",", "", regex=False)
    text = text.mask(text.isin(["", "\u2014", "\u2013", "-", "--", "NA", "N/A", "n.d.", "ND", "*", "nan"]))
    return pd.to_numeric(text, errors="coerce").astype(float)


# ------------------------------------------------------------------------------------ text files

def decode_bytes(raw: bytes, encoding: str | None = None) -> tuple[str, str, str]:
    """Decode file bytes: the given encoding, else UTF-8 then cp1252 then latin-1.

    Returns ``(text, encoding_used, note)``; ``note`` is non-empty when a fallback was needed, so
    callers can tell the user their file was not UTF-8.
    """
    if encoding:
        try:
            return raw.decode(encoding), encoding, ""
        except (UnicodeDecodeError, LookupError) as exc:
            raise DataError(f"the file cannot be decoded as {encoding}: {exc}") from exc
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 with BOM (Excel's "Unicode text")
        try:
            return raw.decode("utf-16"), "utf-16", "file is UTF-16; decoded as utf-16"
        except UnicodeDecodeError:
            pass
    for candidate in FALLBACK_ENCODINGS:
        try:
            text = raw.decode(candidate)
        except UnicodeDecodeError:
            continue
        note = "" if candidate == "utf-8-sig" else f"file is not UTF-8; decoded as {candidate}"
        return text, candidate, note
    raise DataError("the file cannot be decoded as text")  # pragma: no cover - latin-1 never fails


def read_bytes(path_or_buffer) -> tuple[bytes, str]:
    """Raw bytes and a display name from a path, bytes, or a binary/text file-like object."""
    if isinstance(path_or_buffer, (bytes, bytearray)):
        return bytes(path_or_buffer), "<bytes>"
    if isinstance(path_or_buffer, (str, os.PathLike)):
        path = Path(path_or_buffer)
        if not path.exists():
            raise DataError(f"file not found: {path}")
        return path.read_bytes(), path.name
    name = getattr(path_or_buffer, "name", "<upload>")
    if hasattr(path_or_buffer, "seek"):
        try:
            path_or_buffer.seek(0)
        except (OSError, ValueError):
            pass
    data = path_or_buffer.read()
    if isinstance(data, str):
        data = data.encode("utf-8")
    return data, str(name)
