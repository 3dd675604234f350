"""Adversarial robustness: embedding-space and token attacks on a classifier (a classification head, or a language
model's label verbalizers) or the language-model loss, models compared before and after adversarial training."""
