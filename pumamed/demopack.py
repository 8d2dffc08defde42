"""The demo data pack: a small sample of the real public data shipped inside the package
(``pumamed/demo/``), so that a fresh install serves every page without a data directory.

``python -m pumamed data build-demo --from DIR --out pumamed/demo`` builds it from a full data
directory. The build is deterministic (same input files, same library versions -> same bytes):
samples are chosen by a hash of each image's name, PNG and gzip are written with fixed settings
and no timestamps, CSV with fixed column order, sorting and line endings.

What goes in (the layout is the full data directory's, so the usual loaders read it):

* imaging: for every registered dataset whose licence allows redistribution, a stratified sample
  of its *test* split as the registry defines it (:data:`IMAGES_PER_CLASS` per class, all of a
  class when it has fewer), grey PNG at most :data:`MAX_IMAGE_SIZE` px (never enlarged), or a
  MedMNIST ``.npz`` at its own 28 px. Every pack image comes from the test split, so no default
  model has trained on any of them; inside the pack they are split again (half test, a quarter
  each val and train, stratified, by patient where there are patient ids) so that every page
  finds the split it asks for.
* public health: the source files the pages read, copied unchanged where small, and two reduced
  forms the loaders accept explicitly: RAMA hourly files -> daily station means
  (:data:`pumamed.epi.pollutants.RAMA_DAILY_MEANS`), record-level outcomes -> per-municipality
  tables (:data:`pumamed.epi.outcomes.MUNICIPAL_TABLES`). No patient or death record is shipped.

Sources whose licence does not allow redistribution are left out (:data:`LEFT_OUT`), and
``SOURCES.md`` in the pack lists every file with its origin, licence and transformation.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pumamed.errors import DataError, InputError

PACK_VERSION = 1
IMAGES_PER_CLASS = 40
# NIH is the audit's dataset (sex, age, view): its subgroups must stay populated in each of the
# pack's splits, patients are kept whole, and its images are 64 px (4 KB each), so it gets more.
IMAGES_PER_CLASS_BY_DATASET = {"nih_cxr14_1000": 100}
MAX_IMAGE_SIZE = 128
# Shares of each stratum's patients (images without patient ids) in the pack's own splits.
PACK_SPLIT_SHARES = (("test", 0.5), ("val", 0.25), ("train", 0.25))
MAX_PACK_BYTES = 25 * 1024 * 1024
MAX_FILE_BYTES = 5 * 1024 * 1024
MANIFEST = "MANIFEST.json"
SOURCES = "SOURCES.md"
PNG_COMPRESS_LEVEL = 9
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can carry: no build time in the bytes


@dataclass(frozen=True)
class ImagingPlan:
    name: str
    licence: str
    origin: str


# Registered imaging datasets that go into the pack, with the licence that allows it.
IMAGING: tuple[ImagingPlan, ...] = (
    ImagingPlan("nih_cxr14_1000", "NIH Clinical Center: no restrictions on use; cite Wang et al., CVPR 2017 and "
                "acknowledge the NIH Clinical Center",
                "NIH ChestX-ray14 via github.com/dinbe0527/kcr2019d1 (images, 64 px) and the v2020 Data_Entry table"),
    ImagingPlan("pneumoniamnist", "CC BY 4.0 (MedMNIST v2; cite Yang et al. 2023 and Kermany et al. 2018)",
                "PneumoniaMNIST (MedMNIST v2), rebuilt from two public copies (see its SOURCE.txt)"),
    ImagingPlan("brain_tumor_mri", "CC0 1.0, as the Kaggle listing of the dataset (M. Nickparvar) states; "
                "the repository the copy came from states none",
                "Brain Tumor MRI Dataset (Kaggle, Nickparvar) via github.com/KomalChaudhari8/BRAIN_TUMOR_APP"),
    ImagingPlan("busi", "CC BY 4.0, as MedMNIST v2 relicenses its BUSI-derived BreastMNIST; cite Al-Dhabyani "
                "et al., Data in Brief 2020; the repository the copy came from states none",
                "BUSI via github.com/TongxinWang0405/BMI702_project (256 px copies)"),
    ImagingPlan("breastmnist", "CC BY 4.0 (MedMNIST v2; cite Yang et al. 2023 and Al-Dhabyani et al. 2020)",
                "BreastMNIST (MedMNIST v2) via github.com/KamalJain777/AMLS_25_26_SN24205421"),
)

# Public-health files copied unchanged: (path below epi/, licence, origin).
EPI_COPIES: tuple[tuple[str, str, str], ...] = (
    *((f"geo_mxmaps_2020/raw/data/{name}", "BSD-3-Clause (mxmaps, Diego Valle-Jones); data INEGI, free use",
       "github.com/diegovalle/mxmaps: simplified municipal and state polygons, census attributes 2020")
      for name in ("mxmunicipio.map.RData", "df_mxmunicipio_2020.RData", "mxstate.map.RData", "df_mxstate_2020.RData")),
    ("conapo_imm_2020/IMM_2020.csv", "CONAPO open data (Libre Uso MX); the copy's repository states none",
     "CONAPO Índice de marginación 2020 via github.com/mfql/IMM_2020"),
    ("conapo_imm_1990_2015/Base_Indice_de_marginacion_municipal_90-15.csv",
     "CONAPO open data (Libre Uso MX); the copy's repository states none",
     "CONAPO Índice de marginación 1990-2015 via github.com/javalmo/marginalizacion_mexico"),
    *((f"mucinoab_muni_indicators/{name}", "MIT (Bruno A. Muciño); data INEGI / CONEVAL / UNDP / CONAPO open data",
       "github.com/mucinoab/mucinoab.github.io extras/")
      for name in ("indicadores_de_pobreza_municipal_2015_porcentaje.csv", "IDH_Municipios.csv", "IAIM_Municipio.csv",
                   "poblacion_municipios.csv", "cuartiles_municipios_2020.csv", "defunciones_municipio_2019.csv",
                   "nacimientos.csv", "lat_lon_alt_municipios.csv")),
    ("inegi_mg_catalogs_isaacarroyov/conapo_pob_ent_gender_1950_2070.csv",
     "CONAPO open data (Libre Uso MX); the copy's repository states none",
     "CONAPO state population projections via github.com/isaacarroyov/datos_facil_acceso"),
    ("rama_cdmx_2024_hourly/stations_aire_zmvm.csv", "BSD-3-Clause (aire.zmvm, Diego Valle-Jones)",
     "RAMA station coordinates, github.com/diegovalle/aire.zmvm data-raw/stations.csv"),
    ("sinaica_stations_monthly/monthly_pollution.csv",
     "CC0 (the Kaggle SINAICA dataset it was made from); the copy's repository states none",
     "SINAICA monthly station means via github.com/LEPS1938/calidad-aire-mexico-shiny"),
    ("sinaica_stations_monthly/map_stations.csv",
     "CC0 (the Kaggle SINAICA dataset it was made from); the copy's repository states none",
     "SINAICA station network names via github.com/LEPS1938/calidad-aire-mexico-shiny"),
    ("sinaica_stations_monthly/stations_sinaica_rsinaica.csv", "MIT (rsinaica, Diego Valle-Jones)",
     "SINAICA station catalogue, github.com/diegovalle/rsinaica data-raw/stations_sinaica.csv"),
)

# Record-level outcome sources -> licence and origin of the per-municipality table built from them.
OUTCOME_TABLES: dict[str, tuple[str, str]] = {
    "covid_2020": ("SSA/DGE COVID-19 open data (datos abiertos, Libre Uso MX); the copy's repository states none",
                   "national release 2020-05-17 via github.com/kny5/covid19_datos_abiertos_mx"),
    "covid_2021_bc": ("MIT (covidmx authors); data SSA/DGE COVID-19 open data",
                      "Baja California (Sur) extract Jul-Aug 2021, github.com/RodrigoZepeda/covidmx"),
    "deaths_sonora": ("MIT (Fernando Luna Ponce); data INEGI defunciones registradas (open data)",
                      "Sonora residents 2017-2021, github.com/Fernando-LunaP/Proyecto_Integrador_Ing_Caracteristicas"),
    "ensanut_2018": ("MIT (M. E. Jaramillo-Molina); data INEGI small-area estimates from ENSANUT 2018",
                     "a_peq_prev_2018.xlsx, github.com/rojoneon/ensanut_mun"),
}

# Sources of the full data directory that the pack does not carry, and why.
LEFT_OUT: tuple[tuple[str, str], ...] = (
    ("imaging/mini_mias", "licence (Licence.txt): research use only, no right to redistribute; the audit's "
     "density attribute and the lesion masks therefore need the full data"),
    ("epi/era5_weekly_municipal_graphari", "GPL-3.0: a derived file would carry the GPL into the pack; the panel's "
     "climate variables are absent on the pack (53 MB as well)"),
    ("epi/outcomes/inegi_defun_dictionary_catalogs_2017_2018", "CC BY-NC 4.0 (non-commercial only); no page reads it"),
    ("epi/outcomes/*/ record-level files", "patient and death records never go into the pack: only the "
     "per-municipality tables built from them"),
    ("epi/rama_cdmx_daily_2015_2023", "no licence stated and no page reads it"),
    ("epi/geo_mxmaps_2020 census tabulations, reference GeoJSON; epi/inegi_mg_catalogs_isaacarroyov (other files); "
     "epi/outcomes/dgis_defun_catalogs_2019_2020", "no page or panel source reads them (only tests and `data check`)"),
)


# ------------------------------------------------------------------------------------- helpers

def _rank(*parts) -> int:
    """A stable pseudo-random rank: the same name always sorts the same way, on every machine."""
    return int.from_bytes(hashlib.sha1("\0".join(map(str, parts)).encode()).digest()[:8], "big")


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="L").save(
        buffer, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _csv_bytes(frame: pd.DataFrame, **kwargs) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n", **kwargs).encode("utf-8")


def _gzip_bytes(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as handle:
        handle.write(data)
    return buffer.getvalue()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (what ``np.savez_compressed`` writes) without the build time in its zip entries."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def _pack_splits(strata: pd.Series, groups: pd.Series, salt: str) -> np.ndarray:
    """The pack's own split of each sample: per stratum, :data:`PACK_SPLIT_SHARES` of its groups
    (patients, or single images), ordered by a stable hash; a group keeps one split."""
    frame = pd.DataFrame({"stratum": strata.astype(str).to_numpy(), "group": groups.astype(str).to_numpy()})
    # One stratum per group: its most frequent (ties: the first name), so patients are never split.
    first = (frame.value_counts(["group", "stratum"]).reset_index(name="n")
             .sort_values(["group", "n", "stratum"], ascending=[True, False, True], kind="stable")
             .drop_duplicates("group"))
    assignment = {}
    for _, members in first.groupby("stratum", sort=True):
        ordered = sorted(members["group"], key=lambda g: _rank(salt, "split", g))
        n = len(ordered)
        bounds, total = [], 0.0
        for split, share in PACK_SPLIT_SHARES:
            total += share
            bounds.append((split, int(round(total * n))))
        start = 0
        for split, end in bounds:
            for group in ordered[start:end]:
                assignment[group] = split
            start = end
    return frame["group"].map(assignment).to_numpy(dtype=object)


# ------------------------------------------------------------------------------------- imaging

def _imaging_sample(name: str, source: Path):
    """(sample table of the source, rows of its test split chosen for the pack, their strata)."""
    from pumamed.imaging.registry import _sample_table, split_assignment

    table, info = _sample_table(name, source, None, None)
    split, _ = split_assignment(table)
    frame = table.frame.reset_index(drop=True).assign(split=split, row=np.arange(len(table)))
    if table.task == "multilabel":  # NIH: stratify normal vs any finding, as the registry's carve does
        strata = pd.Series(np.where(table.labels.sum(axis=1) > 0, "abnormal", "normal"))
    else:
        strata = pd.Series([table.class_names[i] for i in table.labels])
    frame["stratum"] = strata.to_numpy()
    frame["key"] = [Path(p).name if not str(p).endswith(".npz") else f"{s}:{i}"
                    for p, s, i in zip(frame["path"], frame["official_split"], frame["source_index"])]
    test = frame[frame["split"] == "test"]
    chosen = []
    for _, block in test.groupby("stratum", sort=True):
        order = sorted(block.index, key=lambda i: _rank(name, block.at[i, "key"]))
        chosen += order[:IMAGES_PER_CLASS_BY_DATASET.get(name, IMAGES_PER_CLASS)]
    sample = frame.loc[sorted(chosen, key=lambda i: (frame.at[i, "stratum"], frame.at[i, "key"]))].reset_index(drop=True)
    groups = sample["patient_id"].where(sample["patient_id"].notna(), sample["key"])
    sample["pack_split"] = _pack_splits(sample["stratum"], groups, name)
    return table, info, sample


def _image_side(table, row: int) -> int:
    """The pack's side length: at most MAX_IMAGE_SIZE, never larger than the stored image."""
    frame = table.frame
    if "original_height" in frame and str(frame.at[row, "path"]).endswith(".npz"):
        return int(min(MAX_IMAGE_SIZE, frame.at[row, "original_height"], frame.at[row, "original_width"]))
    from PIL import Image

    with Image.open(frame.at[row, "path"]) as image:
        return int(min(MAX_IMAGE_SIZE, *image.size))


def _build_medmnist(name: str, table, sample: pd.DataFrame, source_file: Path, out: Path) -> dict:
    with np.load(source_file, allow_pickle=False) as archive:
        label_ndim = next(archive[k].ndim for k in sorted(archive.files) if k.endswith("_labels"))
    arrays = {}
    for split, _ in PACK_SPLIT_SHARES:
        rows = sample.loc[sample["pack_split"] == split, "row"].to_numpy()
        side = _image_side(table, int(rows[0])) if len(rows) else 28
        images = np.stack([table.decode(int(r), side) for r in rows]).astype(np.uint8)
        labels = table.labels[rows].astype(np.uint8)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.reshape(len(rows), 1) if label_ndim == 2 else labels
    target = out / "imaging" / f"{name}.npz"
    _write_bytes(target, _npz_bytes(arrays))
    return {"images": int(len(sample))}


def _build_folder(name: str, table, sample: pd.DataFrame, out: Path) -> dict:
    root = out / "imaging" / name
    for row in sample.itertuples():
        side = _image_side(table, int(row.row))
        folder = row.folder_class if name == "nih_cxr14_1000" else row.class_name
        target = root / row.pack_split / str(folder) / (Path(row.path).stem + ".png")
        _write_bytes(target, _png_bytes(table.decode(int(row.row), side)))
    if name == "nih_cxr14_1000":
        # The reader takes labels, patient, age, sex and view from labels.csv (the NIH columns).
        labels = pd.DataFrame({
            "Image Index": sample["image_index"], "Finding Labels": sample["findings"],
            "Follow-up #": sample["follow_up"].astype("Int64"), "Patient ID": sample["patient_id"],
            "Patient Age": sample["age"].astype("Int64"), "Patient Gender": sample["sex"],
            "View Position": sample["view"],
        }).sort_values("Image Index")
        _write_bytes(root / "labels.csv", _csv_bytes(labels))
    return {"images": int(len(sample))}


def build_imaging(source: Path, out: Path) -> dict:
    counts = {}
    for plan in IMAGING:
        from pumamed.imaging.registry import DATASETS

        info = DATASETS[plan.name]
        if not info.path(source).exists():
            raise DataError(f"{plan.name} not found at {info.path(source)}: the demo pack is built from a full "
                            "data directory")
        table, info, sample = _imaging_sample(plan.name, source)
        if info.reader == "medmnist":
            counts[plan.name] = _build_medmnist(plan.name, table, sample, info.path(source), out)
        else:
            counts[plan.name] = _build_folder(plan.name, table, sample, out)
        counts[plan.name]["per_class"] = {k: int(v) for k, v in sample["stratum"].value_counts().sort_index().items()}
        counts[plan.name]["per_split"] = {s: int((sample["pack_split"] == s).sum()) for s, _ in PACK_SPLIT_SHARES}
    return counts


# ------------------------------------------------------------------------------------- public health

def build_epi(source: Path, out: Path) -> dict:
    from pumamed.epi.io import epi_dir
    from pumamed.epi.outcomes import MUNICIPAL_TABLES, municipal_outcome_table
    from pumamed.epi.pollutants import RAMA_DAILY_MEANS, RAMA_DIR, rama_station_daily

    src = epi_dir(source)
    dst = out / "epi"
    for relative, _, _ in EPI_COPIES:
        path = src / relative
        if not path.is_file():
            raise DataError(f"{path} not found: the demo pack is built from a full data directory")
        target = dst / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    daily = rama_station_daily(src)
    daily = daily.assign(date=daily["date"].dt.strftime("%Y-%m-%d"))
    daily = daily[["pollutant", "station_code", "date", "mean", "hours"]].sort_values(
        ["pollutant", "station_code", "date"], kind="stable")
    # Six significant digits: below every instrument's resolution, and a third of the file size.
    _write_bytes(dst / RAMA_DIR / RAMA_DAILY_MEANS, _gzip_bytes(_csv_bytes(daily, float_format="%.6g")))
    tables = {}
    for name in OUTCOME_TABLES:
        table = municipal_outcome_table(name, src)
        keys = [c for c in ("CVEGEO", "year") if c in table.columns]
        table = table.sort_values(keys, kind="stable")
        _write_bytes(dst / MUNICIPAL_TABLES / f"{name}.csv", _csv_bytes(table))
        tables[name] = int(len(table))
    return {"rama_station_days": int(len(daily)), "outcome_tables": tables}


# ------------------------------------------------------------------------------------- the pack

def build_pack(source, out) -> dict:
    """Build the pack from the full data directory ``source`` into ``out`` (replaced entirely).

    Returns the manifest (also written to ``out/MANIFEST.json``). Raises :class:`DataError`
    when a source is missing and :class:`InputError` when ``out`` would hold more than the size
    limits allow.
    """
    source, out = Path(source).expanduser().resolve(), Path(out).expanduser().resolve()
    if not source.is_dir():
        raise InputError(f"`source` {source}: not a folder (give the full data directory holding imaging/ and epi/)")
    if out == source or source in out.parents:
        raise InputError("`out` must not be inside the source data directory")
    if out.exists():
        stray = [p for p in out.iterdir() if p.name not in {"imaging", "epi", MANIFEST, SOURCES}]
        if stray:
            raise InputError(f"`out` {out} holds other files ({stray[0].name}); give an empty folder or the pack")
        shutil.rmtree(out)
    staging = out.with_name(out.name + ".building")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        imaging = build_imaging(source, staging)
        epi = build_epi(source, staging)
        files = _inventory(staging)
        manifest = {
            "pack_version": PACK_VERSION,
            "images": sum(v["images"] for v in imaging.values()),
            "imaging": imaging,
            "epi": epi,
            "bytes": sum(f["bytes"] for f in files.values()),
            "files": files,
        }
        _check_limits(files)
        _write_bytes(staging / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
        _write_bytes(staging / SOURCES, sources_markdown(manifest).encode("utf-8"))
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _inventory(folder: Path) -> dict:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        files[path.relative_to(folder).as_posix()] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return files


def _check_limits(files: dict) -> None:
    big = [f"{name} ({info['bytes'] / 2**20:.1f} MB)" for name, info in files.items() if info["bytes"] >= MAX_FILE_BYTES]
    if big:
        raise InputError(f"demo pack files over {MAX_FILE_BYTES / 2**20:.0f} MB: {', '.join(big)}")
    total = sum(info["bytes"] for info in files.values())
    if total > MAX_PACK_BYTES:
        raise InputError(f"the demo pack would hold {total / 2**20:.1f} MB, over {MAX_PACK_BYTES / 2**20:.0f} MB")


def read_manifest(folder=None) -> dict | None:
    """The pack's manifest (``None`` when ``folder``, default the shipped pack, has none)."""
    from pumamed.config import DEMO_DATA_DIR

    path = Path(folder or DEMO_DATA_DIR) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pack_summary(folder=None) -> str:
    """One line for the page banner: how much the pack holds."""
    manifest = read_manifest(folder)
    if manifest is None:
        return "Demo sample"
    return f"Demo sample ({manifest['images']:,} images, aggregated counts)"


def sources_markdown(manifest: dict) -> str:
    from pumamed.epi.outcomes import MUNICIPAL_TABLES
    from pumamed.epi.pollutants import RAMA_DAILY_MEANS, RAMA_DIR

    lines = [
        "# Demo data pack: sources, licences, transformations",
        "",
        "Written by `python -m pumamed data build-demo --from DIR --out pumamed/demo` "
        f"(pack version {PACK_VERSION}); do not edit by hand: `tests/test_demo_pack.py` rebuilds the pack",
        "from the full data and fails when a file here differs.",
        "",
        f"{manifest['images']} images and {len(manifest['files'])} files, "
        f"{manifest['bytes'] / 2**20:.1f} MB in all. Every image comes from the *test* split of its dataset",
        "as `pumamed/imaging/registry.py` defines it (`docs/imaging_data.md`); inside the pack they are split",
        "again (half test, a quarter val, a quarter train, stratified, by patient for NIH), so no default",
        "model was trained on any of them. Per dataset, at most "
        f"{IMAGES_PER_CLASS} images per class, chosen by a hash of the file name;",
        f"grey PNG at most {MAX_IMAGE_SIZE} px (never enlarged), MedMNIST at its own 28 px.",
        "",
        "## Imaging",
        "",
        "| path | origin | licence | transformation | images (per class) |",
        "|---|---|---|---|---|",
    ]
    for plan in IMAGING:
        from pumamed.imaging.registry import DATASETS

        info = DATASETS[plan.name]
        counts = manifest["imaging"][plan.name]
        per_class = ", ".join(f"{k} {v}" for k, v in counts["per_class"].items())
        if info.reader == "medmnist":
            how = "test split (= own val split) sampled; `.npz` with train/val/test keys, 28 px"
        elif plan.name == "nih_cxr14_1000":
            how = ("test split (own valid/ folder + its patients) sampled; PNG 64 px grey; labels.csv = the "
                   "NIH columns (findings, patient, age, sex, view) of these images")
        else:
            how = "test split (15 % carve) sampled; PNG 128 px grey, `<split>/<class>/`"
        lines.append(f"| `imaging/{Path(info.relative_path).name}` | {plan.origin} | {plan.licence} | {how} | "
                     f"{counts['images']} ({per_class}) |")
    lines += [
        "",
        "## Public health (`epi/`)",
        "",
        "| path | origin | licence | transformation |",
        "|---|---|---|---|",
    ]
    for relative, licence, origin in EPI_COPIES:
        lines.append(f"| `epi/{relative}` | {origin} | {licence} | copied unchanged |")
    lines.append(
        f"| `epi/{(RAMA_DIR / RAMA_DAILY_MEANS).as_posix()}` | RAMA hourly 2024 (SEDEMA) via github.com/ingridca8/EcoAware | "
        "MIT (Ingrid Camargo Alejos); data SEDEMA CDMX open data | the nine hourly files reduced to one row per "
        "station, pollutant and day: mean of the valid hours (6 significant digits) and their number; "
        f"{manifest['epi']['rama_station_days']:,} rows, gzip |")
    for name, (licence, origin) in OUTCOME_TABLES.items():
        rows = manifest["epi"]["outcome_tables"][name]
        lines.append(f"| `epi/{(MUNICIPAL_TABLES / name).as_posix()}.csv` | {origin} | {licence} | "
                     f"aggregated per municipality (and year) as the panel does "
                     f"(`pumamed.epi.outcomes.municipal_outcome_table('{name}')`); {rows:,} rows, no record-level row |")
    lines += [
        "",
        "## Left out",
        "",
        "| source | why |",
        "|---|---|",
    ]
    lines += [f"| `{what}` | {why} |" for what, why in LEFT_OUT]
    lines += [
        "",
        "## Files",
        "",
        "| file | bytes | sha256 |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | {info['bytes']:,} | `{info['sha256'][:16]}…` |" for name, info in manifest["files"].items()]
    return "\n".join(lines) + "\n"


def compare_packs(expected, actual) -> list[str]:
    """Differences between two pack folders (file names and contents), as sentences; empty if equal.

    Files are equal when their bytes are; where they are not, compressed files are compared by
    what they hold (PNG pixels, ``.npz`` arrays, gzip text), since another zlib or Pillow release
    may compress the same content into other bytes, and the manifest (which lists those bytes'
    hashes) by its file names."""
    expected_dir, actual_dir = Path(expected), Path(actual)
    expected, actual = _inventory(expected_dir), _inventory(actual_dir)
    problems = [f"missing: {name}" for name in sorted(set(expected) - set(actual))]
    problems += [f"unexpected: {name}" for name in sorted(set(actual) - set(expected))]
    problems += [f"differs: {name}" for name in sorted(set(expected) & set(actual))
                 if expected[name]["sha256"] != actual[name]["sha256"]
                 and not _same_content(expected_dir / name, actual_dir / name)]
    return problems


def _same_content(a: Path, b: Path) -> bool:
    """Whether two files that differ in bytes hold the same content (see :func:`compare_packs`)."""
    import gzip

    suffix = a.name.lower()
    if suffix.endswith(".png"):
        from PIL import Image

        with Image.open(a) as first, Image.open(b) as second:
            return first.mode == second.mode and np.array_equal(np.asarray(first), np.asarray(second))
    if suffix.endswith(".npz"):
        with np.load(a, allow_pickle=False) as first, np.load(b, allow_pickle=False) as second:
            return set(first.files) == set(second.files) and all(
                np.array_equal(first[k], second[k]) for k in first.files)
    if suffix.endswith(".gz"):
        return gzip.decompress(a.read_bytes()) == gzip.decompress(b.read_bytes())
    if a.name == MANIFEST:
        first, second = json.loads(a.read_text(encoding="utf-8")), json.loads(b.read_text(encoding="utf-8"))
        return set(first.get("files", {})) == set(second.get("files", {}))
    return False


def default_out() -> Path:
    from pumamed.config import DEMO_DATA_DIR

    return DEMO_DATA_DIR
