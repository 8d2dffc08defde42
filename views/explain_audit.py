"""Explain & audit: counterfactuals, pixel saliency, latent attributions, bias audit, planted
shortcut and disentanglement metrics, all read from a PumaMedNet's latent space.

Thin page: every computation lives in :mod:`pumamed.explain`. Models are cached with
``st.cache_resource``; encodings and results with ``st.cache_data``. The default view (one
counterfactual and the pixel maps of one image) takes a few seconds on a CPU; the audit, the
disentanglement metrics and the shortcut experiment run only when their button is pressed.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from views._frame import (
    checkpoint_stamp,
    controls,
    data_dir,
    guarded,
    is_presentation,
    missing_data_message,
    modality_dataset_options,
    model_session,
    models_dir,
    style_figure,
)
from pumamed.catalog import list_checkpoints
from views._trust import show_trust

SHORTCUT_RESULT_FILE = "shortcut_experiment.json"  # precomputed by `python -m pumamed audit shortcut --out ...`
DEFAULT_DATASETS = ("nih_cxr14_1000", "brain_tumor_mri", "busi", "mini_mias", "pneumoniamnist", "breastmnist")


# ----------------------------------------------------------------------------- cached resources
def _load_model(path: str):
    """The checkpoint's session, from the cache the image explorer shares (path and modification
    time: a retrained model is reloaded, and one copy sits in memory)."""
    return model_session(path)


@st.cache_resource(show_spinner="Reading the dataset…")
def _dataset(name: str, split: str, size: int, task: str | None):
    from pumamed.imaging import load_dataset

    return load_dataset(name, split=split, size=size, task=task)


@st.cache_data(show_spinner=False)
def _available_datasets(data_root: str) -> list[str]:
    from pumamed.imaging import available_datasets

    return available_datasets(data_root)


@st.cache_data(show_spinner=False, ttl=60)
def _checkpoints(root: str) -> list[tuple[str, str, dict]]:
    return [(c.name, str(c.path), c.summary()) for c in list_checkpoints(root) if c.usable and c.arch == "pumamednet"]


@st.cache_data(show_spinner="Encoding the images…", max_entries=8)
def _codes(model_path: str, dataset: str, split: str, max_items: int | None):
    from pumamed.explain.audit import codes_for

    return codes_for(_load_model(model_path), dataset, split, max_items=max_items)


@st.cache_data(show_spinner="Searching the counterfactual…", max_entries=32)
def _counterfactual(model_path: str, dataset: str, split: str, index: int, target: int, direction: str,
                    change: float, detail: str = "image", walk: str = "gradient"):
    from pumamed.explain.counterfactual import counterfactual_gif, latent_shift

    loaded = _load_model(model_path)
    ds = _dataset(dataset, split, loaded.image_size, _task(loaded, dataset))
    centroids = _class_centroids(model_path) if walk == "centroids" else None
    cf = latent_shift(loaded.model, ds[index][0], target, target_change=change, direction=direction,
                      class_names=loaded.class_names, task=loaded.task, detail=detail, centroids=centroids)
    return cf, counterfactual_gif(cf)


@st.cache_data(show_spinner=False, max_entries=16)
def _class_centroids(model_path: str):
    """The mean training code of each class, stored with the calibration (None before it)."""
    trust = _load_model(model_path).trust
    return None if trust is None else trust.class_centroids


@st.cache_data(show_spinner=False, max_entries=64)
def _trust_verdict(model_path: str, dataset: str, split: str, index: int):
    """(uncalibrated probabilities, OOD verdict, calibrated probabilities) of one image, or Nones
    for a checkpoint without trust.json (see pumamed.net.trust)."""
    from pumamed.net.trust import image_verdict

    loaded = _load_model(model_path)
    trust = loaded.trust
    if trust is None:
        return None, None, None
    ds = _dataset(dataset, split, loaded.image_size, _task(loaded, dataset))
    return image_verdict(loaded.model, trust, ds[index][0][None].to(loaded.device), loaded.task)


@st.cache_data(show_spinner="Computing saliency and occlusion…", max_entries=32)
def _pixel_maps(model_path: str, dataset: str, split: str, index: int, target: int):
    from pumamed.explain.saliency import pixel_explanations

    loaded = _load_model(model_path)
    ds = _dataset(dataset, split, loaded.image_size, _task(loaded, dataset))
    return pixel_explanations(loaded.model, ds[index][0], target, class_names=loaded.class_names, task=loaded.task)


@st.cache_data(show_spinner="Ranking latent dimensions…", max_entries=16)
def _attributions(model_path: str, dataset: str, split: str, target: int, index: int, k: int):
    from pumamed.explain.attributions import latent_attributions, traverse_dimensions
    from pumamed.net.inference import encode_dataset

    loaded = _load_model(model_path)
    codes = _codes(model_path, dataset, split, 300)
    kl = loaded.kl_per_dim if loaded.kl_per_dim is not None and loaded.kl_per_dim.size == codes.mu.shape[1] else None
    attribution = latent_attributions(loaded.model, codes.mu, target, loaded.class_names, kl, task=loaded.task)
    ds = _dataset(dataset, split, loaded.image_size, _task(loaded, dataset))
    base = encode_dataset(loaded.model, ds, indices=[index])[0][0]
    thumbs = traverse_dimensions(loaded.model, base, attribution.top(k), scale=codes.mu.std(axis=0),
                                 target_class=target, n_steps=7, span=2.5, task=loaded.task)
    return attribution, thumbs


@st.cache_data(show_spinner="Auditing…", max_entries=16)
def _audit(model_path: str, dataset: str, split: str, train_split: str, attribute: str, n_boot: int):
    from pumamed.explain.audit import run_audit

    test = _codes(model_path, dataset, split, None)
    train = _codes(model_path, dataset, train_split, None)
    return run_audit(train, test, attribute, n_boot=n_boot)


@st.cache_data(show_spinner="Mutual information per dimension…", max_entries=16)
def _mi_matrix(model_path: str, dataset: str, split: str):
    from pumamed.explain.audit import available_attributes, mutual_information_matrix

    codes = _codes(model_path, dataset, split, None)
    attributes = available_attributes(codes.metadata)
    return mutual_information_matrix(codes.mu, codes.metadata, attributes) if attributes else pd.DataFrame()


@st.cache_data(show_spinner="Disentanglement metrics (gradient-boosted trees per factor)…", max_entries=8)
def _disentanglement(model_path: str, dataset: str, split: str, train_split: str):
    from pumamed.explain.disentanglement import metadata_disentanglement

    frames = [_codes(model_path, dataset, s, None) for s in (train_split, split)]
    return metadata_disentanglement(frames, n_estimators=50)


@st.cache_data(show_spinner="Planting the token, training, auditing (about a minute)…", max_entries=4)
def _shortcut(rate: float, epochs: int, max_train: int, marker_size: int, seed: int):
    import torch

    from pumamed.explain.shortcut import ShortcutConfig, run_shortcut_experiment

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    result = run_shortcut_experiment(ShortcutConfig(rate=rate, epochs=epochs, max_train=max_train,
                                                    marker_size=marker_size, seed=seed))
    return result.to_dict(), result.examples


@st.cache_resource
def _stamps_seen() -> dict:
    """The modification time under which each checkpoint's results were cached (one per process)."""
    return {}


def _forget_results_of_older_weights(model_path: str) -> None:
    """The results above are cached under the checkpoint's path; when the checkpoint changes on
    disk (retrained, recalibrated) they belong to other weights and are dropped."""
    stamp = checkpoint_stamp(model_path)
    seen = _stamps_seen()
    if seen.get(model_path, stamp) != stamp:
        for cached in (_codes, _counterfactual, _trust_verdict, _pixel_maps, _attributions, _audit, _mi_matrix,
                       _disentanglement):
            cached.clear()
    seen[model_path] = stamp


def _task(loaded, dataset: str):
    from pumamed.explain.audit import dataset_task_for

    return dataset_task_for(loaded, dataset)


# ----------------------------------------------------------------------------- small views
def _fmt_ci(value, lo, hi) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if lo is None or hi is None or not np.isfinite(lo) or not np.isfinite(hi):
        return f"{value:.3f}"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def _heatmap(array, title: str, signed: bool = True, height: int = 300):
    limit = float(np.abs(array).max()) or 1.0
    fig = px.imshow(array, color_continuous_scale="RdBu_r" if signed else "inferno",
                    zmin=-limit if signed else 0, zmax=limit, title=title)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return style_figure(fig, height)


def _grey(array, title: str, height: int = 300):
    fig = px.imshow(np.asarray(array), color_continuous_scale="gray", zmin=0, zmax=1, title=title)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(coloraxis_showscale=False)
    return style_figure(fig, height)


def _frame_strip(cf) -> bytes:
    """The counterfactual frames as one pixel-exact PNG strip, each column labelled with its p."""
    from pumamed.explain.export import grid_png

    labels = [f"p={p:.2f}" for p in cf.probabilities]
    scale = 2 if cf.frames.shape[-1] >= 64 else 3
    return grid_png(np.clip(cf.frames, 0, 1)[None], None, labels, scale=scale)


def _show_audit(report, index: int) -> None:
    """The audit: what mu encodes about the attribute (always), then the classifier per group and
    mitigation, only when the classifier is better than chance (else its gaps are noise)."""
    verdict = report.verdict()
    p = report.predictability
    if not verdict.judgeable:
        st.warning(f"**Subgroup performance cannot be judged:** {verdict.reason}. Gaps between groups and the "
                   "ranking of mitigations would be noise, so they are not shown. What the latent space encodes "
                   f"about {report.attribute} (below) does not depend on the classifier and stands on its own.",
                   icon=":material/block:")
    elif "probe" in report.classifier:
        st.info("The model's classifier does not predict this dataset's classes: a logistic probe fitted on the "
                "training codes stands in for it, so the per-group figures describe the probe.",
                icon=":material/info:")
    st.subheader(f"What the latent space encodes about {report.attribute}")
    m1, m2, m3, m4 = st.columns(4)
    m1.metric(f"{report.attribute} from mu ({p.metric.upper()})", f"{p.score:.3f}",
              help=f"5-fold cross-validated (patient-grouped when ids exist); chance {p.chance}")
    m2.metric("Flagged dimensions", len(report.flags.flagged),
              help="rank effect above the family-wise 99% permutation threshold, within labels")
    if verdict.judgeable and report.subgroups is not None and "auc" in report.subgroups.gaps:
        gap = report.subgroups.gaps["auc"]
        m3.metric("Largest AUC gap", f"{gap['gap']:.3f}",
                  help=f"worst group: {gap['worst_group']}; 95% CI "
                       f"[{gap.get('lo', float('nan')):.3f}, {gap.get('hi', float('nan')):.3f}]")
    dep = report.head_dependence
    if verdict.judgeable and dep:
        m4.metric("Head weight on flagged dims", f"{dep['weight_share_on_flagged']:.0%}",
                  help=f"flagged dims are {dep['flagged_fraction_of_dims']:.0%} of all dims")
    st.markdown(f"**Flagged dimensions:** {', '.join(f'z{d}' for d in report.flags.flagged) or 'none'}")
    matrix = _mi_matrix(selection["model"], selection["dataset"], selection["split"])
    if not matrix.empty:
        fig = px.imshow(matrix, color_continuous_scale="viridis", aspect="auto",
                        title="mutual information (nats) between attributes and latent dimensions",
                        labels=dict(color="MI"))
        st.plotly_chart(style_figure(fig, 260), width="stretch")
    if report.flags.flagged:
        from pumamed.explain.attributions import traverse_dimensions
        from pumamed.explain.export import grid_png

        codes = _codes(selection["model"], selection["dataset"], selection["split"], None)
        dims = report.flags.flagged[:6]
        grid = traverse_dimensions(loaded.model, codes.mu[index % len(codes)], dims,
                                   scale=codes.mu.std(axis=0), n_steps=7)
        st.image(grid_png(grid.images, [f"z{d}" for d in dims], [f"{o:+.1f}" for o in grid.offsets]),
                 caption=f"traversals of the dimensions that encode {report.attribute} "
                         "(columns: shift in sd of the dimension)",
                 width=900 if is_presentation() else 620)
    for note in report.notes:
        st.caption(f"Note: {note}")
    if not verdict.judgeable:
        return
    if report.subgroups is not None:
        t = report.subgroups.table
        st.subheader(f"Classifier per {report.attribute} group ({report.classifier}; positive = "
                     f"{report.positive})")
        shown = pd.DataFrame({
            "n": t["n"].astype(int),
            **{m.upper(): [_fmt_ci(v, lo, hi) for v, lo, hi in
                           zip(t[m], t.get(f"{m}_lo", t[m] * np.nan), t.get(f"{m}_hi", t[m] * np.nan))]
               for m in ("auc", "tpr", "fpr", "ece", "brier")},
            "prevalence": t["prevalence"].round(3),
        }, index=t.index)
        st.dataframe(shown, width="stretch")
        groups = t.drop(index="overall")
        fig = go.Figure(go.Bar(
            x=groups.index, y=groups["auc"],
            error_y=dict(type="data", symmetric=False,
                         array=(groups.get("auc_hi", groups["auc"]) - groups["auc"]).fillna(0),
                         arrayminus=(groups["auc"] - groups.get("auc_lo", groups["auc"])).fillna(0))))
        fig.add_hline(y=float(t.loc["overall", "auc"]), line_dash="dot", annotation_text="overall")
        fig.update_layout(title="AUC per group with 95% bootstrap CI", yaxis_range=[0, 1])
        st.plotly_chart(style_figure(fig, 300), width="stretch")
    if report.mitigation is not None:
        st.subheader("Mitigation (logistic head refitted on the codes)")
        mt = report.mitigation.table
        st.dataframe(mt[["strategy", "directions_removed", "auc", "auc_gap", "tpr_gap", "fpr_gap",
                         "attribute_leakage"]].round(3), hide_index=True, width="stretch")
        fig = px.scatter(mt, x="auc_gap", y="auc", color="strategy", symbol="strategy",
                         title="overall AUC vs largest AUC gap (up-left is better)",
                         labels={"auc_gap": "largest AUC gap between groups", "auc": "overall AUC"})
        fig.update_traces(marker_size=14)
        st.plotly_chart(style_figure(fig, 340), width="stretch")
        for note in report.mitigation.notes:
            st.caption(f"Note: {note}")


def _shown_path(path) -> str:
    """A path as the page may show it: relative to the project, else under $PUMAMED_MODELS_DIR,
    never the server's absolute path (it says nothing to the audience and exposes the checkout)."""
    from pathlib import Path

    from views._frame import ROOT

    path = Path(path)
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return f"$PUMAMED_MODELS_DIR/{path.name}"


# ----------------------------------------------------------------------------- page
st.title("Explain & audit")
st.caption("Why did PumaMedNet decide this, and does its latent space encode who the patient is? "
           "Counterfactuals and attributions read from the latent space, pixel saliency for comparison, "
           "bias audits with mitigation, a planted-shortcut proof, and disentanglement metrics.")

data_root = data_dir()
checkpoints = []
with guarded("Listing models"):
    checkpoints = _checkpoints(str(models_dir()))
datasets = []
with guarded("Listing datasets"):
    datasets = _available_datasets(str(data_root)) if data_root.is_dir() else []

selection = {}
modality_warning = ""  # set when the chosen dataset is of another modality than the model
with controls("Model and data"):
    if checkpoints:
        names = [c[0] for c in checkpoints]
        model_name = st.selectbox("Model", names, key="ea_model",
                                  help="PumaMedNet checkpoints in the models directory")
        model_path, model_summary = next((p, c) for n, p, c in checkpoints if n == model_name)
        from pumamed.imaging.matching import datasets_for_model, modality_mismatch_warning

        present = [d for d in DEFAULT_DATASETS if d in datasets]
        choice = datasets_for_model(model_summary["datasets"], model_summary["modality"], present)
        options = modality_dataset_options(choice, "ea",
                                           "the classifier's explanations on another modality are meaningless")
        if options:
            dataset = st.selectbox("Dataset", options, key="ea_dataset",
                                   help="Images to explain and audit (metadata: sex, age, view, density...)")
            if choice.is_foreign(dataset):
                modality_warning = modality_mismatch_warning(model_name, choice.modality, dataset)
            split = st.selectbox("Split", ["test", "val", "train"], key="ea_split")
            selection = {"model": model_path, "dataset": dataset, "split": split}
            _forget_results_of_older_weights(model_path)
    else:
        st.caption("No PumaMedNet checkpoint found.")

if modality_warning:
    st.warning(modality_warning, icon=":material/warning:")
tab_explain, tab_attr, tab_audit, tab_shortcut, tab_dis = st.tabs(
    ["Counterfactual & saliency", "Latent attributions", "Bias audit", "Planted shortcut", "Disentanglement"])

loaded = None
dataset_obj = None
if selection:
    with guarded("Loading the model"):
        loaded = _load_model(selection["model"])
    if loaded is not None:
        with guarded("Reading the dataset"):
            dataset_obj = _dataset(selection["dataset"], selection["split"], loaded.image_size,
                                   _task(loaded, selection["dataset"]))
    if loaded is not None and loaded.model.classifier is None:
        loaded = None
        with tab_explain:
            st.warning("This checkpoint has no classifier head, so there is no decision to explain. "
                       "Pick a model trained with labels.", icon=":material/warning:")


def _no_model_message():
    if not data_root.is_dir() or not datasets:
        missing_data_message("Imaging data", "imaging")
    else:
        st.info(f"No trained PumaMedNet with a classifier in `{models_dir()}`. Train one with\n\n"
                "`python -m pumamed train --dataset brain_tumor_mri --out models/brain`\n\n"
                "or set `PUMAMED_MODELS_DIR`. The planted-shortcut experiment (its own tab) trains its own "
                "small model and works without one.", icon=":material/model_training:")


ready = loaded is not None and dataset_obj is not None and len(dataset_obj) > 0
class_names = (loaded.class_names or [f"class {i}" for i in range(2)]) if loaded is not None else []
if ready:
    with controls("Explanation"):
        # Counted from 1, as on the image explorer; ``index`` is the 0-based position in the split.
        index = int(st.number_input(f"Image (1–{len(dataset_obj)})", 1, len(dataset_obj), 1, key="ea_index",
                                    help=f"position in the {selection['split']} split ({len(dataset_obj)} images)"))
        index -= 1
        n_classes = max(2, len(class_names))
        default_target = 1 if n_classes == 2 else 0
        target = st.selectbox("Class to explain", range(n_classes), index=default_target, key="ea_target",
                              format_func=lambda i: class_names[i] if i < len(class_names) else f"class {i}")
        direction = st.radio("Counterfactual", ["decrease", "increase", "both"], horizontal=True, key="ea_dir",
                             help="decrease: remove the evidence for the class (Gifsplanation); increase: add it")
        change = st.slider("Stop when the probability moved by", 0.05, 0.8, 0.3, 0.05, key="ea_change")
        walk = "gradient"
        if _class_centroids(selection["model"]) is not None:
            walk = st.radio("Walk", ["centroids", "gradient"], horizontal=True, key="ea_walk",
                            format_func={"centroids": "between class centres", "gradient": "classifier gradient"}.get,
                            help="Between class centres: along the line from the most likely other class's mean "
                                 "training code to this class's (what separates the classes in the data; its "
                                 "counterfactuals change a second classifier's decision far more often). "
                                 "Classifier gradient: the fastest way to move this model's probability, often by "
                                 "edits that only this model reads.")
        detail = "image"
        if getattr(getattr(loaded, "model", None), "has_detail", False):
            detail = st.radio("Detail", ["image", "resampled", "mean"], horizontal=True, key="ea_detail",
                              format_func={"image": "this image", "resampled": "resampled", "mean": "mean"}.get,
                              help="The model has a spatial detail code beside the global code: the counterfactual "
                                   "walks the global code and holds the detail at the image's own value, a draw "
                                   "from its posterior, or the prior mean (where the model's detail prior follows "
                                   "the global code, the held part is the residual detail).")

# --- tab 1: counterfactual + saliency ---------------------------------------------------------
with tab_explain:
    if not ready:
        if loaded is None:
            _no_model_message()
    else:
        with guarded("Checking the image against the training distribution"):
            raw_p, ood, calibrated_p = _trust_verdict(selection["model"], selection["dataset"], selection["split"],
                                                      index)
            show_trust(ood, calibrated_p, raw_p, class_names, selection["model"])
            if calibrated_p is not None:
                st.caption("The counterfactual walk below follows the classifier's own (uncalibrated) probability.")
        with guarded("Counterfactual"):
            cf, gif = _counterfactual(selection["model"], selection["dataset"], selection["split"], index, target,
                                      direction, change, detail, walk)
            meta = dataset_obj.metadata.iloc[index]
            truth = meta.get("class_name", meta.get("label", "?"))
            st.subheader(f"What would have to change for the model to be {'less' if direction != 'increase' else 'more'} "
                         f"sure of “{cf.class_name}”?")
            maps = _pixel_maps(selection["model"], selection["dataset"], selection["split"], index, target)
            # Two probabilities, said apart: the input's own, and that of its reconstruction re-encoded,
            # where the walk starts (every frame is a decoded image, so the curve uses the latter).
            st.caption(f"Image {index + 1} of {len(dataset_obj)} (true label: {truth}). p({cf.class_name}) of the "
                       f"input: {maps.probability:.3f}. The walk starts from its reconstruction, re-encoded "
                       f"(p = {cf.start_probability:.3f}), and ends at p = {cf.end_probability:.3f} after a latent "
                       "shift of "
                       f"{float(cf.lambdas[np.argmax(np.abs(cf.lambdas))]):+.2f} "
                       + ("along the line between the class centres" if walk == "centroids"
                          else "along the classifier's gradient")
                       + ("" if cf.reached else f" (the requested change of {change:.2f} was not reached)") + ".")
            # the reconstruction beside the input: the walk starts there, so the difference map is
            # read against it, and it shows what the model's picture keeps of the lesion
            left, recon_col, mid, right = st.columns(4)
            left.plotly_chart(_grey(cf.original, "input"), width="stretch")
            recon_col.plotly_chart(_grey(cf.reconstruction, "reconstruction"), width="stretch")
            mid.plotly_chart(_grey(cf.counterfactual, "counterfactual"), width="stretch")
            right.plotly_chart(_heatmap(cf.difference, "counterfactual − reconstruction"),
                               width="stretch")
            frames_col, curve_col = st.columns([3, 2])
            with frames_col:
                st.image(_frame_strip(cf), width="stretch",
                         caption="frames along the latent shift, λ from "
                                 f"{cf.lambdas[0]:+.1f} to {cf.lambdas[-1]:+.1f} (left to right)")
                st.download_button("Download GIF", gif,
                                   file_name=f"counterfactual_{selection['dataset']}_{index + 1}.gif",
                                   mime="image/gif", icon=":material/download:")
            with curve_col:
                fig = go.Figure(go.Scatter(x=cf.lambdas, y=cf.probabilities, mode="lines+markers"))
                fig.add_hline(y=cf.start_probability, line_dash="dot", annotation_text="reconstruction",
                              annotation_position="top left")
                fig.add_hline(y=maps.probability, line_dash="dash", line_color="grey", annotation_text="input",
                              annotation_position="bottom right")
                fig.update_layout(title=f"p({cf.class_name}) per frame", xaxis_title="latent shift λ",
                                  yaxis_title="probability", yaxis_range=[0, 1])
                st.plotly_chart(style_figure(fig, 300), width="stretch")
        with guarded("Saliency and occlusion"):
            maps = _pixel_maps(selection["model"], selection["dataset"], selection["split"], index, target)
            from pumamed.explain.saliency import normalise_map

            st.subheader("Pixel-space explanations of the same decision")
            st.caption(f"Gradient saliency |∂p/∂x| and occlusion sensitivity (a {maps.window}px patch, stride "
                       f"{maps.stride}, filled with the image mean; red = covering it lowers p). "
                       "Compare with the counterfactual: saliency says where p is sensitive, the counterfactual "
                       "shows what a plausible change looks like.")
            a, b, c = st.columns(3)
            a.plotly_chart(_grey(cf.original, f"input, p({cf.class_name}) = {maps.probability:.3f}"),
                           width="stretch")
            b.plotly_chart(_heatmap(normalise_map(maps.saliency), "gradient saliency", signed=False), width="stretch")
            c.plotly_chart(_heatmap(normalise_map(maps.occlusion, signed=True), "occlusion sensitivity"),
                           width="stretch")

# --- tab 2: latent attributions -----------------------------------------------------------------
with tab_attr:
    if not ready:
        _no_model_message()
    else:
        with guarded("Latent attributions"):
            k = st.slider("Dimensions to show", 3, 12, 6, key="ea_topk")
            attribution, thumbs = _attributions(selection["model"], selection["dataset"], selection["split"],
                                                target, index, k)
            table = attribution.table
            st.subheader(f"Which latent dimensions drive p({attribution.class_name})?")
            st.caption(f"Mean |gradient × (mu − mean mu)| over {attribution.n_images} images of the split, and the "
                       "linear head's weight × the spread of the dimension. Traversals: the chosen image's code with "
                       "one dimension moved from −2.5 to +2.5 sd, with the class probability of each decoded frame.")
            top = table.head(k)
            fig = go.Figure()
            fig.add_bar(x=[f"z{d}" for d in top["dim"]], y=top["abs_grad_x_input"], name="|grad × input|",
                        offsetgroup=1)
            if top["weight_x_sd"].notna().any():
                # two scales, bars side by side (offsetgroup) rather than on top of each other
                fig.add_bar(x=[f"z{d}" for d in top["dim"]], y=top["weight_x_sd"].abs(), name="|weight × sd|",
                            yaxis="y2", offsetgroup=2)
                fig.update_layout(yaxis2=dict(overlaying="y", side="right", title="|weight × sd|",
                                              rangemode="tozero", showgrid=False),
                                  barmode="group")
            fig.update_layout(title="attribution per dimension", yaxis_title="|grad × input|")
            st.plotly_chart(style_figure(fig, 320), width="stretch")
            from pumamed.explain.export import grid_png

            rows = [f"z{d}" for d in thumbs.dims]
            cols = [f"{o:+.1f}" for o in thumbs.offsets]
            st.image(grid_png(thumbs.images, rows, cols, scale=2 if not is_presentation() else 3),
                     caption="traversal thumbnails (rows: dimensions by importance; columns: shift in sd)",
                     width=900 if is_presentation() else 620)
            probs = pd.DataFrame(thumbs.probabilities, index=rows, columns=cols)
            st.dataframe(probs.style.format("{:.2f}").background_gradient(cmap="RdBu_r", vmin=0, vmax=1),
                         width="stretch")

# --- tab 3: bias audit --------------------------------------------------------------------------
with tab_audit:
    if not ready:
        _no_model_message()
    else:
        from pumamed.explain.audit import available_attributes

        attributes = available_attributes(dataset_obj.metadata)
        if not attributes:
            st.info(f"{selection['dataset']} carries no metadata attribute with at least two groups of 5 images "
                    "(try nih_cxr14_1000 for sex/age/view or mini_mias for tissue density).",
                    icon=":material/info:")
        else:
            # Plain widgets, not a form: a changed attribute reruns the page, and results computed for
            # other settings are hidden rather than left on screen under the new attribute's name.
            c1, c2, c3 = st.columns(3)
            attribute = c1.selectbox("Attribute", attributes, key="ea_attribute")
            train_split = c2.selectbox("Fit mitigated heads on", ["train", "val"], key="ea_train_split")
            n_boot = c3.select_slider("Bootstrap replicates", [50, 100, 200, 500], 200, key="ea_nboot")
            wanted = (selection["model"], selection["dataset"], selection["split"], train_split, attribute,
                      int(n_boot))
            if st.button("Run audit", icon=":material/policy:", type="primary", key="ea_audit_run"):
                st.session_state["ea_audit_args"] = wanted
            if st.session_state.get("ea_audit_args") == wanted:
                with guarded("Audit"):
                    _show_audit(_audit(*wanted), index)
            else:
                st.caption(f"Press **Run audit** to audit *{attribute}* (a few seconds to a minute on a CPU).")

# --- tab 4: planted shortcut --------------------------------------------------------------------
with tab_shortcut:
    st.subheader("Does the audit find a bias it was not told about?")
    st.caption("A small token is burnt into a corner of the training images of one class (pneumonia, "
               "PneumoniaMNIST); a small PumaMedNet is trained on them; the audit must find the token in the "
               "latent space, show that the classifier depends on it (AUC on test images with the token swapped "
               "to the other class), and mitigation must remove that dependence.")
    precomputed = models_dir() / SHORTCUT_RESULT_FILE
    command = f"python -m pumamed audit shortcut --out {_shown_path(precomputed)}"
    result, examples = None, None
    origin = st.empty()  # which run is shown: the precomputed one, or the one run here
    if precomputed.is_file():
        with guarded("Reading the precomputed experiment"):
            result = json.loads(precomputed.read_text(encoding="utf-8"))
            origin.caption(f"Showing the precomputed experiment (`{command}`).")
    if not data_root.is_dir() or "pneumoniamnist" not in datasets:
        if result is None:
            missing_data_message("PneumoniaMNIST", "imaging/pneumoniamnist.npz")
    else:
        with st.form("ea_shortcut_form"):
            c1, c2, c3 = st.columns(3)
            rate = c1.slider("Token rate in the pneumonia class", 0.5, 1.0, 0.95, 0.05, key="ea_sc_rate")
            epochs = c2.slider("Epochs", 2, 10, 4, key="ea_sc_epochs")
            max_train = c3.select_slider("Training images", [300, 400, 600, 1000], 400, key="ea_sc_n")
            go_run = st.form_submit_button("Run the experiment (about a minute)", icon=":material/science:")
        if go_run:
            st.session_state["ea_sc_args"] = (float(rate), int(epochs), int(max_train), 0, 0)
        if st.session_state.get("ea_sc_args"):
            with guarded("Shortcut experiment"):
                result, examples = _shortcut(*st.session_state["ea_sc_args"])
                sc_rate, sc_epochs, sc_train = st.session_state["ea_sc_args"][:3]
                origin.caption(f"Showing the run made here: token rate {sc_rate:.2f}, {sc_epochs} epochs, "
                               f"{sc_train} training images.")
    if result is not None:
        with guarded("Showing the experiment"):
            h = result["head_auc"]
            c1, c2, c3, c4 = st.columns(4)
            c1.metric("AUC, clean test", f"{h['clean']:.3f}")
            c2.metric("AUC, token as in training", f"{h['aligned']:.3f}")
            c3.metric("AUC, token swapped", f"{h['swapped']:.3f}", delta=f"{h['swapped'] - h['aligned']:+.3f}")
            c4.metric("Token found in mu (AUC)", f"{result['marker_predictability']:.3f}",
                      help="cross-validated, among pneumonia images: with vs without the token")
            st.markdown(f"**Flagged dimensions:** {', '.join(f'z{d}' for d in result['flagged_dims']) or 'none'} "
                        f"(they hold {result['head_weight_share_on_flagged']:.0%} of the head's weight, being "
                        f"{result['flagged_fraction_of_dims']:.0%} of the dimensions). Ablating them: swapped AUC "
                        f"{result['head_auc_flagged_ablated']['swapped']:.3f}.")
            if examples is not None and len(examples):
                st.image([np.clip(e, 0, 1) for e in examples], width=96, caption=["training image with token"] * len(examples))
            effect = result.get("effect") or []
            if effect:
                fig = go.Figure(go.Bar(x=[f"z{d}" for d in range(len(effect))], y=effect,
                                       marker_color=["crimson" if d in result["flagged_dims"] else "steelblue"
                                                     for d in range(len(effect))]))
                fig.add_hline(y=result["effect_threshold"], line_dash="dot", annotation_text="99% family-wise null")
                fig.update_layout(title="token effect per latent dimension (within the pneumonia class)")
                st.plotly_chart(style_figure(fig, 280), width="stretch")
            mt = pd.DataFrame(result["mitigation"])
            long = mt.melt(id_vars="strategy", value_vars=["auc_clean", "auc_aligned", "auc_swapped"],
                           var_name="test set", value_name="AUC")
            long["test set"] = long["test set"].str.replace("auc_", "")
            fig = px.bar(long, x="strategy", y="AUC", color="test set", barmode="group",
                         title="mitigation: AUC on clean / aligned / swapped test images")
            fig.update_layout(yaxis_range=[0, 1])
            st.plotly_chart(style_figure(fig, 340), width="stretch")
            st.dataframe(mt.round(3), hide_index=True, width="stretch")
    elif data_root.is_dir() and "pneumoniamnist" in datasets:
        st.caption("Press the button to run it (or precompute it with "
                   f"`{command}`).")

# --- tab 5: disentanglement ---------------------------------------------------------------------
with tab_dis:
    if not ready:
        _no_model_message()
    else:
        st.caption("MIG, DCI and SAP as defined in disentanglement_lib, with the dataset's metadata (sex, age "
                   "quartile, view, density, source dataset...) as the factors of variation: does one latent "
                   "dimension capture one factor, and only that one?")
        if st.button("Compute disentanglement metrics", key="ea_dis_button", icon=":material/grid_view:"):
            st.session_state["ea_dis_args"] = (selection["model"], selection["dataset"], selection["split"], "train")
        args = st.session_state.get("ea_dis_args")
        if args and args[:3] == (selection["model"], selection["dataset"], selection["split"]):
            with guarded("Disentanglement metrics"):
                scores = _disentanglement(*args)
                cols = st.columns(5)
                for col, (label, value) in zip(cols, [("MIG", scores.mig), ("DCI disentanglement", scores.dci_disentanglement),
                                                      ("DCI completeness", scores.dci_completeness),
                                                      ("DCI informativeness", scores.dci_informativeness),
                                                      ("SAP", scores.sap)]):
                    col.metric(label, "n/a" if not np.isfinite(value) else f"{value:.3f}")
                st.caption(f"{scores.n} images; factors: {', '.join(scores.factor_names)}.")
                a, b = st.columns(2)
                dims = [f"z{d}" for d in range(scores.importance.shape[0])]
                fig = px.imshow(pd.DataFrame(scores.importance.T, index=scores.factor_names, columns=dims),
                                color_continuous_scale="viridis", aspect="auto", title="DCI importance (trees)")
                a.plotly_chart(style_figure(fig, 260), width="stretch")
                fig = px.imshow(pd.DataFrame(scores.mutual_information.T, index=scores.factor_names, columns=dims),
                                color_continuous_scale="viridis", aspect="auto", title="mutual information (MIG)")
                b.plotly_chart(style_figure(fig, 260), width="stretch")
                st.dataframe(pd.DataFrame({"factor": scores.factor_names, "MIG": scores.mig_per_factor,
                                           "SAP": scores.sap_per_factor,
                                           "tree accuracy": scores.informativeness_per_factor}).round(3),
                             hide_index=True)
