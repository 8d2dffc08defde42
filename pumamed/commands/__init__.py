"""One module per CLI command; see :mod:`pumamed.cli`."""
