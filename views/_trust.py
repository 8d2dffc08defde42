"""The trust panel shared by the image explorer and the explain page: the out-of-distribution
warning and the calibrated class probabilities of one image (computed by
:mod:`pumamed.net.trust`; this module only draws them)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

OOD_TITLE = "Outside what this model was trained on"
CALIBRATE_HINT = "`python -m pumamed calibrate --model {path}`"


def show_trust(ood: dict | None, probabilities, raw_probabilities, class_names, model_path: str = "DIR",
               what: str = "image") -> None:
    """The warning (or the all-clear line) and, when given, the probability table of one image."""
    if ood is None:
        st.caption(f"This model has no out-of-distribution score yet: {CALIBRATE_HINT.format(path=model_path)} "
                   "fits one (and calibrates its probabilities).")
    elif ood["flagged"]:
        st.error(
            f"**{OOD_TITLE}.** This {what}'s out-of-distribution score is **{ood['score']:.2f}**, above the "
            f"threshold **{ood['threshold']:.2f}** (exceeded by about 2.5 % of the model's own validation images). "
            "It does not look like the images the model learned from (another modality, body part, device or "
            "a broken file): its reconstruction, explanations and **predicted class are unreliable**.",
            icon=":material/report:")
    else:
        st.caption(f"Out-of-distribution score {ood['score']:.2f} ≤ threshold {ood['threshold']:.2f}: this {what} "
                   "looks like the model's training data (the score cannot rule out every problem; see "
                   "docs/trust.md).")
    if probabilities is None:
        return
    names = list(class_names) or [str(i) for i in range(len(probabilities))]
    table = {"class": names[:len(probabilities)], "probability (calibrated)": np.round(probabilities, 3)}
    if raw_probabilities is not None:
        table["before calibration"] = np.round(raw_probabilities, 3)
    frame = pd.DataFrame(table)
    if ood is not None and ood["flagged"]:
        frame["note"] = ["unreliable: image outside the training distribution"] * len(frame)
    with st.expander("Class probabilities" + (" (calibrated)" if raw_probabilities is not None else ""),
                     expanded=bool(ood and ood["flagged"])):
        st.dataframe(frame, hide_index=True)
        if raw_probabilities is not None:
            st.caption("Calibrated by temperature scaling fitted on the validation split: of the images given "
                       "probability p, about a share p belong to that class.")
