"""Interpretability (issue "Interpretability"): what a decoder computes inside, from its own weights."""
