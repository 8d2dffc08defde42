"""Explain & audit: counterfactuals, saliency, latent attributions, bias audit, planted shortcut."""

import streamlit as st

st.title("Explain & audit")
st.info("This page is being built: counterfactual explanations and bias audits of PumaMedNet models "
        "will appear here.", icon=":material/construction:")
