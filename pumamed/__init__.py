"""PumaMed Explorer core library.

A plain Python package (no Streamlit import anywhere below it): data loaders, PumaMedNet models,
training, explanations and statistics. The Streamlit pages in ``views/`` are thin views over it.
"""

__version__ = "0.1.0"
