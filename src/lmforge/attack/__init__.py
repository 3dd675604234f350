"""Adversarial robustness: embedding-space and token attacks on a classifier or the language-model loss."""
