"""PumaMed Explorer: the router and shared frame (``streamlit run app.py``)."""

import streamlit as st

from views._frame import (PRESENTATION_KEY, apply_presentation_style, available_pages, demo_data_banner,
                          is_presentation, sidebar_state)

st.set_page_config(page_title="PumaMed Explorer", page_icon=":material/biotech:", layout="wide",
                   initial_sidebar_state=sidebar_state())

sections: dict[str, list] = {}
for spec in available_pages():
    sections.setdefault(spec.section, []).append(
        st.Page(spec.file, title=spec.title, icon=spec.icon, url_path=spec.url_path, default=spec.default)
    )
# Presentation mode collapses the sidebar, so the pages move to a bar at the top.
navigation = st.navigation(sections, position="top" if is_presentation() else "sidebar")

with st.sidebar:
    st.markdown("### :material/biotech: PumaMed Explorer")
    st.toggle("Presentation mode", key=PRESENTATION_KEY,
              help="Larger figures and fonts; page controls fold into a 'Controls' panel.")
    st.caption("Explainable generative imaging and municipal diabetes analysis.")

apply_presentation_style()
demo_data_banner()
navigation.run()
