"""Hierarchical candidate search and the single-image localizer."""
