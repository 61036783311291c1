"""Inference backends and model export."""
