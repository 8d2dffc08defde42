"""PumaMed Explorer: the router and shared frame (``streamlit run app.py``)."""

import streamlit as st

from views._frame import PRESENTATION_KEY, apply_presentation_style, available_pages, demo_data_banner

st.set_page_config(page_title="PumaMed Explorer", page_icon=":material/biotech:", layout="wide")

sections: dict[str, list] = {}
for spec in available_pages():
    sections.setdefault(spec.section, []).append(
        st.Page(spec.file, title=spec.title, icon=spec.icon, url_path=spec.url_path, default=spec.default)
    )
navigation = st.navigation(sections)

with st.sidebar:
    st.markdown("### :material/biotech: PumaMed Explorer")
    st.toggle("Presentation mode", key=PRESENTATION_KEY,
              help="Larger figures and fonts; page controls fold into a 'Controls' panel.")
    st.caption("Explainable generative imaging and municipal diabetes analysis.")

apply_presentation_style()
demo_data_banner()
navigation.run()
