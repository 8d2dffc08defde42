"""Benchmarks (``python -m pumamed bench ...``). Each prints its figures and the ratio to a
named baseline measured in the same run."""
