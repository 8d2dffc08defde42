"""Home: device, trained models with their cards, datasets found, and what to do if missing."""

import pandas as pd
import streamlit as st

from views._frame import data_dir, guarded, models_dir
from pumamed.catalog import list_checkpoints
from pumamed.config import device_description, select_device
from pumamed.datacheck import BROKEN, MISSING, OK, check_data_dir


@st.cache_resource(show_spinner=False)
def _device_text() -> str:
    return device_description(select_device())


@st.cache_data(ttl=300, show_spinner="Checking the data directory…")
def _dataset_table(root: str) -> list[dict]:
    return [r.to_dict() for r in check_data_dir(root)]


@st.cache_data(ttl=60, show_spinner=False)
def _checkpoints(root: str):
    return [(c.name, str(c.path), c.config, c.metrics, c.card, c.problem, c.trust) for c in list_checkpoints(root)]


def _trust_figures(trust: dict) -> None:
    """The model card's calibration and out-of-distribution figures (trust.json, test split)."""
    from pumamed.trust_figures import calibration_rows, ood_rows

    if not trust:
        st.caption("Not calibrated yet: `python -m pumamed calibrate --model DIR` adds calibrated probabilities "
                   "and the out-of-distribution warning.")
        return
    cal, ood = calibration_rows(trust), ood_rows(trust)
    if cal:
        st.markdown("**Calibration** (temperature scaling fitted on validation; test split)")
        st.dataframe(pd.DataFrame(cal), hide_index=True)
    if ood:
        st.markdown("**Out-of-distribution score** (test split: AUROC of telling the model's own images from "
                    "each dataset's; false alarms on its own images)")
        st.dataframe(pd.DataFrame(ood), hide_index=True)


st.title("PumaMed Explorer")
st.markdown(
    "Explainable generative imaging with **PumaMedNet** (a denoising β-VAE whose latent space drives "
    "classification, traversals, counterfactuals and bias audits) and a **multifactorial analysis of "
    "diabetes outcomes** in Mexican municipalities (factor analysis, penalised count models, boosting "
    "with SHAP, on maps)."
)

col_device, col_data, col_models = st.columns(3)
with guarded("Detecting the compute device"):
    col_device.metric("Compute device", _device_text())
col_data.metric("Data directory", data_dir().name or str(data_dir()))
col_data.caption(f"`{data_dir()}` (set `PUMAMED_DATA_DIR` to change)")

st.header("Trained models")
with guarded("Listing models"):
    checkpoints = _checkpoints(str(models_dir()))
    col_models.metric("Models found", len(checkpoints))
    if not checkpoints:
        st.info(
            f"No trained models in `{models_dir()}`. Train one with\n\n"
            "`python -m pumamed train --dataset brain_tumor_mri --out models/brain`\n\n"
            "or set `PUMAMED_MODELS_DIR` to a folder of checkpoints.",
            icon=":material/model_training:",
        )
    for name, path, cfg, metrics, card, problem, trust in checkpoints:
        label = f"**{name}**: {cfg.get('task', cfg.get('arch', 'model'))}"
        if problem:
            label += f" (unusable: {problem})"
        with st.expander(label, expanded=False):
            if metrics:
                flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
                if flat:
                    st.dataframe(pd.DataFrame([flat]), hide_index=True)
            _trust_figures(trust)
            st.markdown(card or "_No model card._")

st.header("Datasets")
root = data_dir()
if not root.is_dir():
    st.warning(
        f"The data directory `{root}` does not exist. Download the public datasets (see README, "
        "*Data directory*) and set `PUMAMED_DATA_DIR` to their folder, e.g. "
        "`export PUMAMED_DATA_DIR=../shared/data`, then reload. "
        "Public-health files can be fetched with `python -m pumamed data fetch epi`.",
        icon=":material/folder_off:",
    )
else:
    with guarded("Checking the data directory"):
        rows = _dataset_table(str(root))
        table = pd.DataFrame(
            [
                {
                    "group": r["group"],
                    "dataset": r["name"],
                    "status": r["status"],
                    "counts": ", ".join(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}" for k, v in r["counts"].items()),
                    "note": r["message"] or (r["hint"] if r["status"] != OK else ""),
                }
                for r in rows
            ]
        )
        n_ok = sum(r["status"] == OK for r in rows)
        n_missing = sum(r["status"] == MISSING for r in rows)
        n_broken = sum(r["status"] == BROKEN for r in rows)
        st.caption(f"{n_ok} found, {n_missing} missing, {n_broken} broken")
        if n_broken:
            st.error("Some datasets are present but unreadable: see the *note* column.", icon=":material/error:")
        if n_missing:
            st.info(
                "Missing datasets only disable the pages that need them. Put them under the data "
                "directory with the layout in the README, or run `python -m pumamed data fetch epi` "
                "for the public-health files.",
                icon=":material/info:",
            )
        st.dataframe(table, hide_index=True, width="stretch")
