"""Image explorer: reconstructions, attention weights, latent traversals, masked reconstructions
and a latent map of a PumaMedNet model.

Thin page: widgets, caching and plots. All computation is in :mod:`pumamed.explain`
(``ExplorerSession`` batches every model call). Models load once per process
(``st.cache_resource`` keyed by checkpoint path + modification time); everything derived from an
image is cached by value (``st.cache_data``), and the traversal, mask and map sections are
fragments, so moving one of their sliders reruns only that section.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from views._frame import cached_session as _session
from views._frame import checkpoint_stamp as _stamp
from views._frame import controls, data_dir, guarded, is_presentation, missing_data_message, \
    modality_dataset_options, models_dir, show_error, style_figure
from pumamed.catalog import CONFIG_FILE, WEIGHTS_FILE, describe_checkpoint, list_checkpoints
from pumamed.errors import CheckpointError, InputError, PumaMedError
from pumamed.imaging.matching import modality_mismatch_warning
from views._trust import show_trust

SOURCES = ("Dataset", "Upload", "Prior sample")
MODALITY_NAMES = {"chest_xray": "Chest X-ray", "brain_mri": "Brain MRI", "breast_ultrasound": "Breast ultrasound",
                  "mammography": "Mammography", "unknown": "Other"}
# Columns that identify files or people, or repeat the label: never offered as filters/colours.
HIDDEN_COLUMNS = {"dataset", "modality", "split", "path", "patient_id", "source_index", "image_index", "refnum",
                  "label", "findings", "original_width", "original_height"}
MAP_MAX_POINTS = 2000


# =============================================================================== cached work
@st.cache_data(ttl=60, show_spinner=False)
def _checkpoints(root: str) -> list[dict]:
    rows = []
    for info in list_checkpoints(Path(root)):
        rows.append(info.summary())
    return rows


@st.cache_resource(max_entries=6, show_spinner="Reading the dataset…")
def _dataset(name: str, split: str, size: int, root: str):
    from pumamed.imaging import load_dataset

    return load_dataset(name, split=split, size=size, data_dir=root)


@st.cache_data(max_entries=64, show_spinner=False)
def _analysis(path: str, stamp: float, image: np.ndarray):
    return _session(path, stamp).analyse(image)


@st.cache_data(max_entries=16, show_spinner="Encoding the dataset…")
def _encodings(path: str, stamp: float, name: str, split: str, root: str, n: int, seed: int):
    """mu and logvar of up to ``n`` images of a split (a fixed random subset), with their indices."""
    session = _session(path, stamp)
    dataset = _dataset(name, split, session.image_size, root)
    indices = np.arange(len(dataset))
    if n < len(dataset):
        indices = np.sort(np.random.default_rng(seed).choice(len(dataset), size=n, replace=False))
    mu, logvar = session.encode_dataset(dataset, indices)
    return indices, mu, logvar


@st.cache_data(max_entries=32, show_spinner=False)
def _traversal(path: str, stamp: float, base: np.ndarray, dims: tuple, steps: int, span: float,
               scale: np.ndarray | None, labels: tuple, detail: np.ndarray | None = None):
    from pumamed.explain.export import grid_png

    grid = _session(path, stamp).traverse(base, list(dims), n_steps=steps, span=span, scale=scale, detail=detail)
    png = grid_png(grid.images, list(labels), grid.column_labels(), scale=2 if grid.images.shape[-1] <= 64 else 1)
    return grid, png


@st.cache_data(max_entries=32, show_spinner=False)
def _gif(frames: np.ndarray, label: str, frame_labels: tuple, duration_ms: int) -> bytes:
    from pumamed.explain.export import traversal_gif

    scale = 4 if frames.shape[-1] <= 64 else 2
    return traversal_gif(frames, duration_ms=duration_ms, scale=scale, label=label, frame_labels=list(frame_labels))


@st.cache_data(max_entries=32, show_spinner=False)
def _masked(path: str, stamp: float, image: np.ndarray, mask: np.ndarray, fill: str, baseline: str, seed: int):
    return _session(path, stamp).masked(image, mask, fill=fill, baseline=baseline, seed=seed)


@st.cache_data(max_entries=16, show_spinner=False)
def _upload(data: bytes, filename: str, size: int, slice_index: int | None = None, axis: int = 2):
    """(image S x S, metadata safe to show, one-line description) of an uploaded file."""
    from pumamed.imaging.uploads import read_upload

    uploaded = read_upload(data, filename, size, slice_index=slice_index, axis=axis)
    image = np.asarray(uploaded.image, dtype=np.float32)
    return image.reshape(image.shape[-2:]), dict(uploaded.metadata or {}), uploaded.description


@st.cache_data(max_entries=8, show_spinner=False)
def _training_weight_maps(path: str, stamp: float):
    """Reference images with their loss-weight maps at the start of training and in the saved
    model (``weight_maps.safetensors``, written by training), or None."""
    from pumamed.net.checkpoint import load_weight_maps

    maps = load_weight_maps(path)
    if maps is None:
        return None
    return {k: (v.numpy()[:, 0] if hasattr(v, "numpy") else v) for k, v in maps.items()}


@st.cache_data(max_entries=16, show_spinner=False)
def _projection(codes: np.ndarray, method: str, standardize: bool, extra: np.ndarray | None):
    from pumamed.explain.latent_map import LatentProjector

    projector = LatentProjector(method=method, standardize=standardize).fit(codes)
    placed = projector.transform(extra) if (extra is not None and method == "pca") else None
    return projector.embedding_, projector.axis_labels(), projector.dominant_dimensions(), placed


# =============================================================================== figures
def _png_bytes(image: np.ndarray) -> bytes:
    from pumamed.explain.export import image_png

    return image_png(image)


def _scale(name: str) -> list:
    """A named plotly colour scale with rgb() stops: the browser mis-draws some hex stops (Inferno's
    '#000004' shows as pink), rgb() strings render exactly."""
    from plotly.colors import get_colorscale, hex_to_rgb

    return [[pos, f"rgb{hex_to_rgb(c)}" if c.startswith("#") else c] for pos, c in get_colorscale(name)]


def _panel_png(array, kind: str, vmax: float | None = None) -> bytes:
    """One panel as PNG: grey image, |error| (Inferno from 0), signed difference (blue-red around
    0) or loss weights over the image (Turbo, blended); maps carry a labelled colour strip."""
    from pumamed.explain.export import colourize, overlay, panel_png

    display = 360 if is_presentation() else 256
    if kind == "grey":
        return panel_png(np.asarray(array, np.float32), display)
    if kind == "error":
        top = float(vmax if vmax is not None else max(float(np.max(array)), 1e-3))
        return panel_png(colourize(array, "Inferno", 0.0, top), display, ("Inferno", 0.0, top))
    if kind == "signed":
        top = float(vmax if vmax is not None else max(float(np.max(np.abs(array))), 0.02))
        return panel_png(colourize(array, "RdBu_r", -top, top), display, ("RdBu_r", -top, top))
    if kind == "overlay":  # (image, weights) or (image, weights, low, high) for a shared range
        image, weights = array[:2]
        low, high = array[2:] if len(array) == 4 else (float(np.min(weights)), float(np.max(weights)))
        return panel_png(overlay(image, weights, "Turbo", 0.5, low, high), display, ("Turbo", low, high))
    raise ValueError(kind)


def _show_panels(panels: list[tuple], columns: int | None = None) -> None:
    """Image panels side by side: (title, array, kind[, vmax]); see :func:`_panel_png`.

    Panels are PNGs rather than plotly heatmaps: a rerun that changes an image costs
    milliseconds, not the hundreds a plotly figure takes to build and ship."""
    columns = columns or len(panels)
    for start in range(0, len(panels), columns):
        cells = st.columns(columns)
        for cell, panel in zip(cells, panels[start:start + columns]):
            title, array, kind = panel[:3]
            cell.image(_panel_png(array, kind, panel[3] if len(panel) > 3 else None), caption=title,
                       width="stretch")


def _presentation_width(png: bytes, max_height: int = 860) -> int:
    """Display width at which a tall image (a traversal grid of many rows) fits one screen."""
    from PIL import Image
    import io

    width, height = Image.open(io.BytesIO(png)).size
    return max(200, min(1800, int(max_height * width / max(height, 1))))


@contextmanager
def _settings(label: str = "Settings"):
    """Section settings: inline normally; folded into an expander in presentation mode."""
    if is_presentation():
        with st.expander(label, expanded=False):
            yield
    else:
        with st.container():
            yield


def _class_label(meta: pd.DataFrame, i: int) -> str:
    for column in ("class_name", "label"):
        if column in meta.columns:
            return str(meta[column].iloc[i])
    return ""


# =============================================================================== the current image
@dataclass
class CurrentImage:
    image: np.ndarray  # S x S in [0, 1] at the model's size
    caption: str
    code: np.ndarray | None = None  # the latent code, when the image was decoded from one (prior)
    lesion_mask: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    index: int | None = None  # position in the dataset's split, when the image comes from one


def _key(array: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=6).hexdigest()


def _image_from_dataset(dataset, indices: np.ndarray) -> CurrentImage | None:
    n = len(indices)
    if n == 0:
        st.warning("No image matches the filters.", icon=":material/filter_alt_off:")
        return None
    if st.session_state.get("ie_position", 1) > n:
        st.session_state["ie_position"] = 1

    def pick_random():
        st.session_state["ie_position"] = int(np.random.default_rng().integers(1, n + 1))

    col_pos, col_dice = st.columns([3, 1], vertical_alignment="bottom")
    label = f"Image (1–{n})" if n == len(dataset) else f"Image (1–{n} of the filtered set)"
    position = col_pos.number_input(label, min_value=1, max_value=n, step=1, key="ie_position")
    col_dice.button(":material/casino:", on_click=pick_random, help="a random image of the filtered set")
    index = int(indices[int(position) - 1])
    image, _ = dataset[index]
    row = dataset.metadata.iloc[index]
    meta = {k: row[k] for k in dataset.metadata.columns
            if k not in {"path", "patient_id", "source_index"} and pd.notna(row[k]) and str(row[k]) != "None"}
    lesion = dataset.lesion_mask(index) if callable(getattr(dataset, "lesion_mask", None)) else None
    if lesion is not None and not np.asarray(lesion).any():
        lesion = None
    label = row.get("class_name", row.get("label", ""))
    caption = f"{dataset.name} · {dataset.split} #{index + 1} of {len(dataset)} · {label}"
    return CurrentImage(np.asarray(image, dtype=np.float32).reshape(image.shape[-2:]), caption,
                        lesion_mask=lesion, metadata=meta, index=index)


def _filter_dataset(dataset) -> np.ndarray:
    """Indices of the dataset that pass the class and metadata filters chosen in the sidebar."""
    keep = np.ones(len(dataset), dtype=bool)
    meta = dataset.metadata
    # Filter keys are per dataset: another dataset's classes must not linger as invalid choices.
    classes = st.multiselect("Classes", dataset.class_names, key=f"ie_classes_{dataset.name}",
                             help="keep images of these classes (any of them, for multi-label data)")
    if classes:
        chosen = [dataset.class_names.index(c) for c in classes]
        labels = np.asarray(dataset.labels)
        keep &= labels[:, chosen].sum(axis=1) > 0 if labels.ndim == 2 else np.isin(labels, chosen)
    fields = [c for c in meta.columns if c not in HIDDEN_COLUMNS | {"class_name"} and 1 < meta[c].nunique() <= 200]
    if fields:
        field_name = st.selectbox("Filter by metadata", ["(none)", *fields], key=f"ie_meta_field_{dataset.name}")
        if field_name != "(none)":
            column = meta[field_name]
            if pd.api.types.is_numeric_dtype(column) and column.nunique() > 12:
                lo, hi = float(column.min()), float(column.max())
                low, high = st.slider(field_name, lo, hi, (lo, hi), key=f"ie_meta_range_{field_name}")
                keep &= column.between(low, high).fillna(False).to_numpy()
            else:
                values = sorted(column.dropna().astype(str).unique())
                wanted = st.multiselect(field_name, values, key=f"ie_meta_values_{field_name}")
                if wanted:
                    keep &= column.astype(str).isin(wanted).to_numpy()
    return np.flatnonzero(keep)


def _dataset_choice(model_row: dict):
    """Datasets present in the data directory, split into the model's modality (its own first)
    and the others (offered only behind "show all", with a warning)."""
    from pumamed.imaging import available_datasets
    from pumamed.imaging.matching import datasets_for_model

    present = available_datasets(str(data_dir()))
    return datasets_for_model(model_row["datasets"], model_row["modality"], present)


# =============================================================================== page
st.title("Image explorer")
st.caption("What a PumaMedNet model sees, imagines and fills in: reconstructions and the weights its loss "
           "gives to each pixel, walks along single latent dimensions, hidden patches filled from context "
           "next to a non-learned baseline, and a map of the latent space.")

session = None
model_row: dict = {}
dataset = None
current: CurrentImage | None = None
problems: list[tuple[str, Exception]] = []  # user errors met in Controls, shown in the main area
cautions: list[str] = []  # warnings met in Controls, shown in the main area

with controls():
    # ---------------------------------------------------------------- model
    with guarded("Listing models"):
        rows = [r for r in _checkpoints(str(models_dir()))]
        usable = [r for r in rows if not r["problem"] and r["arch"] == "pumamednet"]
        modalities = sorted({r["modality"] for r in usable})
        if len(modalities) > 1:
            modality = st.segmented_control("Modality", ["All", *modalities], default="All", key="ie_modality",
                                            format_func=lambda m: MODALITY_NAMES.get(m, m.replace("_", " ").title()))
            if modality and modality != "All":
                usable = [r for r in usable if r["modality"] == modality]
        custom = st.text_input("Checkpoint folder (optional)", key="ie_custom_path",
                               placeholder="path/to/checkpoint", help="a folder with model.safetensors and "
                               "config.json, or a folder of such folders")
        if custom.strip():
            folder = Path(custom.strip()).expanduser()
            if (folder / CONFIG_FILE).is_file() or (folder / WEIGHTS_FILE).is_file():
                usable = [describe_checkpoint(folder).summary()]
            elif folder.is_dir():
                usable = [c.summary() for c in list_checkpoints(folder)]
                if not usable:
                    st.error(f"No checkpoint in `{folder}`.", icon=":material/error:")
            else:
                st.error(f"`{folder}` does not exist.", icon=":material/folder_off:")
                usable = []
        labels = {r["path"]: f"{r['name']} · {MODALITY_NAMES.get(r['modality'], r['modality'])} · "
                             f"{r['image_size']} px, {r['latent_dim']} dims" for r in usable}
        if usable:
            chosen = st.selectbox("Model", list(labels), format_func=labels.get, key="ie_model")
            model_row = next(r for r in usable if r["path"] == chosen)
            if model_row["problem"] or model_row["arch"] != "pumamednet":
                why = model_row["problem"] or f"a {model_row['arch']} classifier has no decoder"
                raise CheckpointError(f"{model_row['name']} cannot be explored: {why}")
            try:
                session = _session(model_row["path"], _stamp(model_row["path"]))
            except PumaMedError as exc:  # shown in the main area, where it cannot be missed
                problems.append(("Loading the model", exc))

    # ---------------------------------------------------------------- image
    if session is not None:
        source = st.radio("Image", SOURCES, horizontal=True, key="ie_source")
        with guarded("Reading the dataset"):
            choice = _dataset_choice(model_row)
            options = modality_dataset_options(
                choice, "ie", "the model's predictions on another modality are meaningless; for reconstructions only")
            if not options:
                if not choice.others:
                    missing_data_message("No imaging dataset", "imaging/")
            else:
                name = st.selectbox("Dataset", options, key="ie_dataset")
                if choice.is_foreign(name):
                    cautions.append(modality_mismatch_warning(model_row["name"], choice.modality, name))
                split = st.selectbox("Split", ["val", "test", "train", "all"], key="ie_split",
                                     help="val: the split used for model selection (some official test "
                                          "splits are held back)")
                dataset = _dataset(name, split, session.image_size, str(data_dir()))
                if source == "Dataset":
                    indices = _filter_dataset(dataset)
                    current = _image_from_dataset(dataset, indices)
        if source == "Upload":
            # No type filter: DICOM files often have no extension; the reader sniffs the content
            # and explains what it cannot read.
            upload = st.file_uploader("PNG, JPEG, TIFF, DICOM or NIfTI", key="ie_upload",
                                      help="resized to the model's size (padded to a square, never cropped); "
                                           "patient-identifying DICOM tags are never shown")
            if upload is not None:
                with guarded(f"Reading {upload.name}"):
                    try:
                        image, meta, description = _upload(upload.getvalue(), upload.name, session.image_size)
                        if meta.get("format") == "NIfTI":
                            axes = {0: "sagittal", 1: "coronal", 2: "axial"}
                            axis = st.selectbox("Plane", list(axes), index=2, format_func=axes.get, key="ie_nii_axis")
                            if axis != meta.get("axis"):
                                _, meta, _ = _upload(upload.getvalue(), upload.name, session.image_size, None, axis)
                            n_slices = int(meta.get("n_slices", 1))
                            if n_slices > 1:
                                index = st.slider("Slice", 0, n_slices - 1, n_slices // 2, key=f"ie_nii_slice_{axis}")
                                image, meta, description = _upload(upload.getvalue(), upload.name,
                                                                   session.image_size, int(index), axis)
                    except ImportError as exc:
                        raise InputError(f"uploads are not available in this installation ({exc})") from exc
                    except PumaMedError as exc:
                        problems.append((f"Reading {upload.name}", exc))
                    else:
                        current = CurrentImage(image, f"upload · {upload.name} · {description}", metadata=meta)
        elif source == "Prior sample":
            seed = st.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="ie_prior_seed")
            temperature = st.slider("Temperature (sd of the prior)", 0.0, 2.0, 1.0, 0.1, key="ie_temperature",
                                    help="scale of the N(0, I) draw: below 1 gives more typical images")
            with guarded("Sampling from the prior"):
                code = session.sample_prior(1, int(seed))[0] * float(temperature)
                current = CurrentImage(session.decode(code)[0], f"prior sample · seed {seed} · T {temperature:.1f}",
                                       code=code)

# ------------------------------------------------------------------------- no model / no image
for context, problem in problems:
    show_error(problem, context)
for caution in cautions:
    st.warning(caution, icon=":material/warning:")
if session is None:
    if not model_row:
        st.info(
            f"No PumaMedNet checkpoint found in `{models_dir()}`. Train one with\n\n"
            "`python -m pumamed train --dataset brain_tumor_mri --out models/brain`\n\n"
            "or give a checkpoint folder in *Controls* (or set `PUMAMED_MODELS_DIR`).",
            icon=":material/model_training:",
        )
    st.stop()

st.caption(f":material/memory: {session.describe()}")
if current is None:
    if st.session_state.get("ie_source") == "Upload" and not problems:
        st.info("Upload an image (PNG, JPEG, TIFF, DICOM or NIfTI) in *Controls*, or choose another source.",
                icon=":material/upload_file:")
    elif dataset is None:
        st.info("Choose an upload or a prior sample in *Controls*: no dataset is available.", icon=":material/info:")
    st.stop()

path, stamp = model_row["path"], _stamp(model_row["path"])

# ------------------------------------------------------------------------- 1. reconstruction
st.header("Reconstruction and attention weights")
with guarded("Reconstructing"):
    analysis = _analysis(path, stamp, current.image)
    # trust: the out-of-distribution warning and the calibrated probabilities (issue 24)
    flagged = bool(analysis.ood and analysis.ood["flagged"])
    show_trust(analysis.ood, analysis.probabilities, analysis.raw_probabilities, session.class_names, path,
               what="upload" if current.caption.startswith("upload") else "image")
    _show_panels([
        ("original", analysis.image, "grey"),
        ("reconstruction", analysis.reconstruction, "grey"),
        ("|error|", analysis.error, "error"),
        ("loss weights over the image", (analysis.image, analysis.weights), "overlay"),
    ])
    cols = st.columns(5 if analysis.probabilities is not None else 3)
    cols[0].metric("MAE", f"{analysis.metrics['mae']:.4f}")
    cols[1].metric("PSNR", f"{analysis.metrics['psnr_db']:.1f} dB")
    cols[2].metric("Weight range", f"{analysis.weights.min():.2f}–{analysis.weights.max():.2f}",
                   help="per-pixel weights of the reconstruction loss (mean 1): where the model is pushed "
                        "hardest to be accurate")
    if analysis.probabilities is not None:
        names = session.class_names or [str(i) for i in range(len(analysis.probabilities))]
        top = int(np.argmax(analysis.probabilities))
        # The probability is its own figure, not a delta: an arrow would read as an improvement.
        cols[3].metric("Classifier on mu" + (" (unreliable)" if flagged else ""),
                       (names[top] if top < len(names) else str(top)) + (" ⚠" if flagged else ""),
                       help="the class with the highest probability, from the latent mean mu"
                            + ("; unreliable: the image is outside the training distribution" if flagged else ""))
        cols[4].metric("Probability of that class" + (" (calibrated)" if analysis.raw_probabilities is not None
                                                      else ""), f"{analysis.probabilities[top]:.2f}")
    st.caption(current.caption + (" · " + ", ".join(f"{k}: {v}" for k, v in current.metadata.items()
                                                   if k not in {"dataset", "split", "label", "class_name"})
                                  if current.metadata else ""))

with guarded("Reading the training weight maps"):
    maps = _training_weight_maps(path, stamp)
    if maps is not None and len(maps.get("images", [])):
        labels = maps.get("labels", {})
        with st.expander(f"Loss weights before and after training ({labels.get('before', 'before')} vs "
                         f"{labels.get('now', 'now')}), on the training run's reference images"):
            n_show = min(4, len(maps["images"]))
            low = float(min(maps["before"][:n_show].min(), maps["now"][:n_show].min()))
            high = float(max(maps["before"][:n_show].max(), maps["now"][:n_show].max()))
            panels = []
            for i in range(n_show):
                panels += [(f"reference {i + 1}", maps["images"][i], "grey"),
                           ("weights before", (maps["images"][i], maps["before"][i], low, high), "overlay"),
                           ("weights now", (maps["images"][i], maps["now"][i], low, high), "overlay")]
            _show_panels(panels, columns=6)
            st.caption("One colour scale for both moments: where the weights moved is where training "
                       "learned to put its effort.")

base_code = current.code if current.code is not None else analysis.mu
dataset_ref = (dataset.name, dataset.split) if dataset is not None else None
MAP_DEFAULT_N = 600


def _dataset_codes(path: str, stamp: float, dataset_ref, n: int | None = None):
    """(indices, mu, logvar) of a fixed random subset of the chosen split (cached by value)."""
    name, split = dataset_ref
    size = len(_dataset(name, split, _session(path, stamp).image_size, str(data_dir())))
    n = min(size, int(n or st.session_state.get("ie_map_n", MAP_DEFAULT_N)))
    return _encodings(path, stamp, name, split, str(data_dir()), n, 0)


# Stateful tabs: only the open tab's section runs, so the page costs what is on screen.
tabs = st.tabs([":material/swap_horiz: Latent traversals", ":material/ink_eraser: Masked reconstruction",
                ":material/scatter_plot: Latent map"], key="ie_tab", on_change="rerun")
tab_traverse, tab_mask, tab_map = tabs


# ------------------------------------------------------------------------- 2. traversals
DETAIL_LABELS = {"image": "this image", "resampled": "resampled", "mean": "mean"}


@st.cache_data(max_entries=32, show_spinner=False)
def _detail(path: str, stamp: float, image: np.ndarray, mode: str) -> np.ndarray | None:
    return _session(path, stamp).detail_code(image, mode)


def detail_choice(path: str, stamp: float, image: np.ndarray) -> np.ndarray | None:
    """A hierarchical model's detail code, held while the global code moves (None: the prior mean,
    or a model without a detail code)."""
    session = _session(path, stamp)
    if not session.has_detail:
        return None
    mode = st.radio("Detail", list(DETAIL_LABELS), format_func=DETAIL_LABELS.get, horizontal=True, key="ie_detail",
                    help="The model has a spatial detail code beside the global code. Traversals and edits move "
                         "the global code and hold the detail at the image's own value, a draw from its "
                         "posterior, or the prior mean (what the global code alone draws). Where the model's "
                         "detail prior follows the global code, the held part is the image's residual detail, "
                         "and the detail the global code predicts moves with it.")
    return _detail(path, stamp, image, mode)


@st.fragment
def traversal_section(path: str, stamp: float, base: np.ndarray, kl: np.ndarray, order: np.ndarray, kl_source: str,
                      dataset_ref: tuple | None, detail: np.ndarray | None = None):
    session = _session(path, stamp)
    latent_dim = session.latent_dim
    with _settings("Traversal settings"):
        c1, c2, c3, c4 = st.columns(4)
        k = c1.number_input("Dimensions (rows)", 1, min(16, latent_dim), min(8, latent_dim), key="ie_k")
        steps = c2.number_input("Steps (columns)", 3, 21, 9, step=2, key="ie_steps")
        span = c3.number_input("Range ± sd", 0.5, 8.0, 3.0, 0.5, key="ie_span")
        scale_choice = c4.selectbox("sd of", ["prior (1)", "dataset codes"] if dataset_ref else ["prior (1)"],
                                    key="ie_scale", help="the unit of a step: the N(0,1) prior's sd, or the spread "
                                                         "of mu over the chosen dataset")
        ranked = [int(d) for d in order]
        dims = st.multiselect("Dimensions (default: highest KL first)", ranked, default=ranked[:int(k)],
                              format_func=lambda d: f"z{d} · KL {kl[d]:.2f}", key=f"ie_dims_{int(k)}_{_key(order)}")
    n_active = int((kl > 0.01).sum())
    st.caption(f"Ranking: {kl_source}. {n_active} of {latent_dim} dimensions are active (KL > 0.01 nats); "
               "inactive ones decode to the same image at every step.")
    if not dims:
        st.info("Choose at least one dimension.", icon=":material/info:")
        return
    scale = None
    if scale_choice == "dataset codes" and dataset_ref:
        scale = _dataset_codes(path, stamp, dataset_ref)[1].std(axis=0).astype(np.float32)
    labels = tuple(f"z{d} KL {kl[d]:.2f}" for d in dims)
    grid, png = _traversal(path, stamp, base, tuple(dims), int(steps), float(span), scale, labels, detail)
    st.image(png, caption=f"{len(dims)} x {int(steps)} traversal grid: each row walks one dimension from "
                          f"−{span:g} to +{span:g} sd around the image's code (one batched decoder call).",
             width=_presentation_width(png) if is_presentation() else "stretch")
    c1, c2, c3 = st.columns([1, 1, 2], vertical_alignment="bottom")
    c1.download_button("Grid as PNG", png, file_name=f"traversal_{session.name}.png", mime="image/png",
                       icon=":material/download:", key="ie_grid_png")
    gif_dim = c2.selectbox("Animate", [int(d) for d in grid.dims], format_func=lambda d: f"z{d}", key="ie_gif_dim")
    gif = _gif(grid.row(int(gif_dim)), f"{session.name} z{gif_dim}", tuple(grid.column_labels()), 120)
    c3.download_button(f"z{gif_dim} as animated GIF", gif, file_name=f"traversal_{session.name}_z{gif_dim}.gif",
                       mime="image/gif", icon=":material/animated_images:", key="ie_gif_download")
    with st.expander("Preview the GIF", expanded=False):
        st.image(gif, caption=f"z{gif_dim}, forward and back")


@st.fragment
def slider_section(path: str, stamp: float, base: np.ndarray, kl: np.ndarray, order: np.ndarray, span: float,
                   detail: np.ndarray | None = None):
    """Sliders for the top dimensions; only this fragment reruns when one moves (one decode)."""
    session = _session(path, stamp)
    top = [int(d) for d in order[:min(6, session.latent_dim)]]
    token = _key(base)
    keys = [f"ie_slide_{d}_{token}" for d in top]

    def reset():
        for key in keys:
            st.session_state[key] = 0.0

    left, right = st.columns([2, 3])
    with left:
        values = [st.slider(f"z{d} (KL {kl[d]:.2f})", -float(span), float(span), 0.0, 0.1, key=key,
                            format="%+.1f sd") for d, key in zip(top, keys)]
        st.button("Reset", on_click=reset, icon=":material/restart_alt:", key="ie_slide_reset")
    code = np.asarray(base, dtype=np.float32).copy()
    code[top] += np.asarray(values, dtype=np.float32)
    images = session.decode(np.stack([base, code]), detail)
    with right:
        _show_panels([("from the image's code", images[0], "grey"), ("edited code", images[1], "grey"),
                      ("edited − original", images[1] - images[0], "signed")])


if tab_traverse.open:
    with tab_traverse, guarded("Traversing the latent space"):
        kl, order, kl_source = session.dimension_ranking()
        if session.kl_per_dim is None and dataset_ref:  # no training statistics: rank on the dataset
            _, ref_mu, ref_logvar = _dataset_codes(path, stamp, dataset_ref)
            kl, order, kl_source = session.dimension_ranking((ref_mu, ref_logvar))
        held = detail_choice(path, stamp, current.image) if current.code is None else None
        traversal_section(path, stamp, np.asarray(base_code, np.float32), kl, order, kl_source, dataset_ref, held)
        st.subheader("Edit the code")
        slider_section(path, stamp, np.asarray(base_code, np.float32), kl, order,
                       float(st.session_state.get("ie_span", 3.0)), held)


# ------------------------------------------------------------------------- 3. masked reconstruction
@st.fragment
def mask_section(path: str, stamp: float, image: np.ndarray, lesion: np.ndarray | None):
    from pumamed.explain.masking import BASELINES, FILL_VALUES, Box, random_erasing_mask, rectangle_mask

    session = _session(path, stamp)
    size = session.image_size
    modes = ["Rectangles", "Random patches"] + (["Lesion (annotation)"] if lesion is not None else [])
    with _settings("Mask settings"):
        c1, c2, c3 = st.columns(3)
        mode = c1.radio("Mask", modes, key="ie_mask_mode", horizontal=False)
        fill = c2.selectbox("Hidden pixels become", FILL_VALUES, key="ie_mask_fill",
                            help="zero: as the random erasing in training; mean: the visible mean; noise: uniform")
        baseline = c3.selectbox("Baseline", BASELINES, key="ie_mask_baseline",
                                format_func=lambda b: {"harmonic": "harmonic (Laplace) inpainting",
                                                       "border_mean": "mean of the hole's border"}[b])
        if mode == "Rectangles":
            n_boxes = st.number_input("Rectangles", 1, 4, 1, key="ie_mask_n")
            boxes = []
            box_cols = st.columns(int(n_boxes))
            for i, col in enumerate(box_cols):
                with col:
                    x = st.slider(f"#{i + 1} x (% of width)", 0, 100, (35 + 10 * i, 60 + 10 * i) if i < 4 else (0, 10),
                                  key=f"ie_mask_x{i}")
                    y = st.slider(f"#{i + 1} y (% of height)", 0, 100, (35, 60), key=f"ie_mask_y{i}")
                    boxes.append(Box(x[0] / 100, y[0] / 100, (x[1] - x[0]) / 100, (y[1] - y[0]) / 100))
            mask = rectangle_mask(size, boxes)
        elif mode == "Random patches":
            d1, d2, d3 = st.columns(3)
            n_patches = d1.number_input("Patches", 1, 20, 4, key="ie_mask_patches")
            largest = d2.slider("Largest patch (% of image)", 1, 25, 6, key="ie_mask_largest")
            seed = d3.number_input("Seed", 0, 10_000, 0, key="ie_mask_seed")
            mask = random_erasing_mask(size, int(n_patches), scale=(min(0.01, largest / 100), largest / 100),
                                       seed=int(seed))
        else:
            mask = np.asarray(lesion, dtype=bool)
    result = _masked(path, stamp, image, mask, fill, baseline, 0)
    err_top = float(max(result.error_in_mask.max(), result.baseline_error_in_mask.max(), 1e-6))
    base_name = {"harmonic": "harmonic", "border_mean": "border mean"}[baseline]
    _show_panels([
        ("masked input", result.masked_input, "grey"),
        ("decoder fill-in", result.fill_in, "grey"),
        (f"{base_name} fill-in", result.baseline, "grey"),
        ("original", result.original, "grey"),
        ("decoder output (whole)", result.decoder_output, "grey"),
        ("fill-in − original", result.difference, "signed"),
        ("|error| in mask: decoder", result.error_in_mask, "error", err_top),
        (f"|error| in mask: {base_name}", result.baseline_error_in_mask, "error", err_top),
    ], columns=4)
    table = pd.DataFrame(result.metrics_rows()).rename(columns={
        "pixels": "hidden px", "mae": "MAE", "rmse": "RMSE", "psnr_db": "PSNR (dB)", "correlation": "r"})
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.4f") for c in ("MAE", "RMSE", "r")}
                 | {"PSNR (dB)": st.column_config.NumberColumn(format="%.2f")})
    decoder = result.metrics["decoder fill-in"]["mae"]
    base_mae = result.metrics[f"{baseline.replace('_', ' ')} baseline"]["mae"]
    verdict = "better than" if decoder < base_mae else "worse than"
    st.caption(f"Metrics over the {int(mask.sum())} hidden pixels only ({100 * mask.mean():.1f} % of the image). "
               f"The decoder's fill-in is {verdict} the {base_name} baseline (MAE {decoder:.4f} vs {base_mae:.4f}); "
               "the last row is the decoder's error in the same region when nothing is hidden, the floor "
               "set by its reconstruction quality.")


if tab_mask.open:
    with tab_mask, guarded("Masked reconstruction"):
        mask_section(path, stamp, current.image, current.lesion_mask)


# ------------------------------------------------------------------------- 4. latent map
def _use_map_image(dataset_name: str, position_in_filtered: int):
    """Make the picked map point the current image (clears the filters so it is reachable)."""
    st.session_state["ie_source"] = "Dataset"
    st.session_state[f"ie_classes_{dataset_name}"] = []
    st.session_state[f"ie_meta_field_{dataset_name}"] = "(none)"
    st.session_state["ie_position"] = position_in_filtered


@st.fragment
def map_section(path: str, stamp: float, name: str, split: str, current_code: np.ndarray,
                current_index: int | None = None):
    from pumamed.explain.latent_map import colour_values

    session = _session(path, stamp)
    dataset = _dataset(name, split, session.image_size, str(data_dir()))
    with _settings("Map settings"):
        c1, c2, c3, c4 = st.columns(4)
        n_total = len(dataset)
        n = c1.number_input("Images", min(3, n_total), min(n_total, MAP_MAX_POINTS), min(n_total, MAP_DEFAULT_N), step=50,
                            key="ie_map_n", help="a fixed random subset of the split")
        method = c2.selectbox("Projection", ["pca", "tsne"], key="ie_map_method",
                              format_func={"pca": "PCA", "tsne": "t-SNE"}.get)
        labels = np.asarray(dataset.labels)
        multilabel = labels.ndim == 2
        # Multi-label data: one finding at a time (their combinations would fill the legend).
        classes = [f"finding: {c}" for c in dataset.class_names] if multilabel else ["class"]
        fields = classes + [c for c in dataset.metadata.columns
                              if c not in HIDDEN_COLUMNS | {"class_name"} and dataset.metadata[c].nunique() > 1]
        colour = c3.selectbox("Colour by", fields, key="ie_map_colour")
        standardize = c4.toggle("Standardise dims", key="ie_map_std",
                                help="unit variance per latent dimension before projecting")
    indices, mu, _ = _dataset_codes(path, stamp, (name, split), int(n))
    embedding, axis_labels, dominant, placed = _projection(mu, method, bool(standardize),
                                                           np.asarray(current_code, np.float64)[None])
    meta = dataset.metadata.iloc[indices].reset_index(drop=True)
    if colour == "class":
        values = np.array([_class_label(meta, j) for j in range(len(meta))], dtype=object)
        numeric = False
    elif colour.startswith("finding: "):
        finding = colour.removeprefix("finding: ")
        has = labels[indices, dataset.class_names.index(finding)] > 0
        values = np.where(has, finding, f"no {finding}").astype(object)
        numeric = False
    else:
        values, numeric = colour_values(meta, colour)
    hover = [f"#{i + 1} · {_class_label(meta, j)}" for j, i in enumerate(indices)]
    fig = go.Figure()
    if numeric:
        fig.add_trace(go.Scattergl(x=embedding[:, 0], y=embedding[:, 1], mode="markers", customdata=indices,
                                   text=hover, hovertemplate="%{text}<extra></extra>",
                                   marker=dict(color=values, colorscale=_scale("Viridis"), size=7, showscale=True,
                                               colorbar=dict(title=colour))))
    else:
        from plotly.colors import qualitative

        palette = qualitative.Safe + qualitative.Dark24  # colour-blind-safe first; distinct hues per class
        for k, value in enumerate(sorted(pd.unique(values), key=str)):
            where = np.flatnonzero(values == value)
            fig.add_trace(go.Scattergl(x=embedding[where, 0], y=embedding[where, 1], mode="markers", name=str(value),
                                       customdata=indices[where], text=[hover[j] for j in where],
                                       hovertemplate="%{text}<extra></extra>",
                                       marker=dict(size=7, opacity=0.85, color=palette[k % len(palette)])))
    if placed is not None:
        fig.add_trace(go.Scatter(x=placed[:, 0], y=placed[:, 1], mode="markers", name="current image",
                                 marker=dict(symbol="star", size=18, color="black", line=dict(color="white", width=1)),
                                 hoverinfo="name"))
    dims_text = ""
    if dominant:
        dims_text = "; ".join(f"PC{i + 1} ≈ " + ", ".join(f"z{d}" for d in ds) for i, ds in enumerate(dominant))
    fig.update_layout(xaxis_title=axis_labels[0], yaxis_title=axis_labels[1], legend_title=colour,
                      title=f"{method.upper() if method == 'pca' else 't-SNE'} of mu, {len(indices)} images of "
                            f"{name} / {split}", dragmode="select")
    style_figure(fig, base_height=480)
    left, right = st.columns([3, 2])
    with left:
        event = st.plotly_chart(fig, key="ie_map_fig", on_select="rerun", selection_mode=("points", "box", "lasso"),
                                config={"displaylogo": False})
        if dims_text:
            st.caption(f"Largest loadings: {dims_text}. Click a point (or box-select) to see it.")
    picked = None
    points = (event.selection.points if event and getattr(event, "selection", None) else []) or []
    if points:
        custom = points[0].get("customdata")
        picked = int(custom[0] if isinstance(custom, (list, tuple)) else custom) if custom is not None else None
    with right:
        options = [int(i) for i in indices]
        # the picked point, else the page's current image when the map holds it
        shown = picked if picked in options else current_index
        default = options.index(shown) if shown in options else 0
        chosen = st.selectbox("Image on the map", options, index=default,
                              format_func=lambda i: f"#{i + 1} · {_class_label(dataset.metadata, i)}",
                              key=f"ie_map_pick_{shown}")
        image = np.asarray(dataset[chosen][0], dtype=np.float32).reshape(session.image_size, session.image_size)
        recon = session.reconstruct_batch(image[None])[0]
        _show_panels([("image", image, "grey"), ("reconstruction", recon, "grey")])
        if st.button("Explore this image", icon=":material/arrow_upward:", key="ie_map_use",
                     on_click=_use_map_image, args=(name, chosen + 1)):
            st.rerun()  # the whole page, not just this fragment


if tab_map.open:
    with tab_map:
        if dataset is None:
            st.info("The latent map needs a dataset: none is available in the data directory.",
                    icon=":material/info:")
        else:
            with guarded("Latent map"):
                map_section(path, stamp, dataset.name, dataset.split, np.asarray(analysis.mu), current.index)
