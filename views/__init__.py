"""Streamlit pages. ``app.py`` registers them with ``st.navigation`` (see ``_frame.PAGES``)."""
