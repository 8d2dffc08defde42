"""The demo pack shipped in ``pumamed/demo``: rebuilt from the full data it must match the committed
files byte for byte (so it never drifts from its builder), stay within its size limits, carry no
record-level outcome rows, and serve the panel and the diabetes models."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from pumamed import config, demopack
from pumamed.epi.outcomes import MUNICIPAL_TABLES, MUNICIPAL_TABLE_SOURCES

PACK = config.DEMO_DATA_DIR


def test_pack_is_within_its_size_limits():
    files = [p for p in PACK.rglob("*") if p.is_file()]
    assert files, f"no demo pack at {PACK}"
    sizes = {p.relative_to(PACK).as_posix(): p.stat().st_size for p in files}
    assert sum(sizes.values()) <= demopack.MAX_PACK_BYTES, f"{sum(sizes.values()) / 2**20:.1f} MB"
    big = {name: size for name, size in sizes.items() if size >= demopack.MAX_FILE_BYTES}
    assert not big, big
    manifest = demopack.read_manifest()
    assert set(manifest["files"]) == set(sizes) - {demopack.MANIFEST, demopack.SOURCES}
    assert "mini_mias" not in " ".join(sizes), "mini-MIAS may not be redistributed"


def test_pack_matches_a_rebuild_from_the_full_data(data_root, tmp_path):
    rebuilt = tmp_path / "demo"
    demopack.build_pack(data_root, rebuilt)
    problems = demopack.compare_packs(PACK, rebuilt)
    assert not problems, ("the committed pack differs from its builder; rebuild it with "
                          f"`python -m pumamed data build-demo --from {data_root}`: {problems[:10]}")


def test_outcome_tables_are_aggregates_not_records():
    for source in MUNICIPAL_TABLE_SOURCES:
        table = pd.read_csv(PACK / "epi" / MUNICIPAL_TABLES / f"{source}.csv", dtype={"CVEGEO": str})
        keys = [c for c in ("CVEGEO", "year") if c in table.columns]
        assert not table.duplicated(keys).any(), f"{source}: more than one row per municipality and year"
        record_columns = {"ID_REGISTRO", "FECHA_DEF", "EDAD", "SEXO", "causa_def", "edad", "sexo"}
        assert not record_columns & set(table.columns), source
    assert not list((PACK / "epi").rglob("*.zip")) and not list((PACK / "epi").rglob("*.parquet"))


def test_pack_images_come_from_the_test_split_only(data_root):
    """Every pack image is a test-split image of the full data, so no default model saw it."""
    from pumamed.imaging.registry import dataset_splits

    for plan in demopack.IMAGING:
        full = dataset_splits(plan.name, data_dir=data_root)
        pack = dataset_splits(plan.name, data_dir=PACK)
        if str(full["path"].iloc[0]).endswith(".npz"):
            continue  # archives carry no file names; the builder reads their test rows only
        test_names = {Path(p).stem for p in full.loc[full["split"] == "test", "path"]}
        names = {Path(p).stem for p in pack["path"]}
        assert names <= test_names, (plan.name, sorted(names - test_names)[:5])
        assert set(pack["split"]) == {"train", "val", "test"}


def test_panel_and_diabetes_models_on_the_pack():
    from pumamed.epi.modeling import ModelSpec, run_models
    from pumamed.epi.panel import load_panel

    panel = load_panel(PACK)
    assert panel["CVEGEO"].nunique() == 2469
    assert panel["covid_diabetic_hospitalized"].sum() > 10_000, "the outcome counts are missing"
    spec = ModelSpec.of(outcome="covid_diabetic_hospitalized", data_dir=str(PACK))
    run_models(spec)  # the first fit also reads the geometry and builds the spatial weights
    start = time.perf_counter()
    result = run_models(spec)
    elapsed = time.perf_counter() - start
    assert len(result.data) > 2000
    # Speed is a benchmark's business, not an assertion's (``python -m pumamed bench epi``): the
    # figure is printed for the record only.
    print(f"diabetes models on the pack: {elapsed:.2f} s")


def test_the_comparison_sees_content_not_compression(tmp_path):
    """Re-encoding a PNG at another compression level is no drift; one changed pixel is."""
    import shutil

    import numpy as np
    from PIL import Image

    copy = tmp_path / "demo"
    shutil.copytree(PACK, copy)
    name = next(p.relative_to(copy).as_posix() for p in sorted(copy.rglob("*.png")))
    with Image.open(copy / name) as image:
        pixels = np.asarray(image).copy()
        mode = image.mode
    Image.fromarray(pixels, mode).save(copy / name, compress_level=1)
    assert demopack.compare_packs(PACK, copy) == []
    pixels.flat[0] = 255 - pixels.flat[0]
    Image.fromarray(pixels, mode).save(copy / name, compress_level=1)
    assert demopack.compare_packs(PACK, copy) == [f"differs: {name}"]
