"""Imaging data layer: readers for every supported format into one common sample."""
