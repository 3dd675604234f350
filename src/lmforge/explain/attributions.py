"""Token attributions toward a ``Target``, by Captum's methods on lmforge's decoder:

- ``integrated_gradients``: ``LayerIntegratedGradients`` on the embedding layer (or a block's output), the
  path's steps run ``internal_batch_size`` at a time so that memory is one forward + backward of that many
  sequences whatever the number of steps; with its convergence delta, sum(attributions) - (F(x) - F(baseline)).
  Where the delta is above ``ig_tolerance`` of |F(x) - F(baseline)|, the steps are doubled (up to
  ``ig_max_steps``) and the path integrated again: the map reported is one whose completeness holds, or the
  best one at the limit, with the steps it took.
- ``gradient_x_input``: ``LayerGradientXActivation`` on the same layer (one backward).
- ``occlusion``: ``FeatureAblation``, each context token in turn replaced by the baseline token:
  F(x) - F(x with token i replaced).
- ``shapley``: ``ShapleyValueSampling`` over the context tokens (``shapley_samples`` permutations).

F is the target's log-probability; the baseline is the context with every token replaced by the baseline token
(the suffix kept), so the embeddings' attributions of the suffix are zero and the context's add up to
F(x) - F(baseline) (at a block's output the suffix's positions take a share: ``suffix_scores``).
A layer's attribution (C values per position) is summed over C into one score per token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import torch
from captum.attr import FeatureAblation, LayerGradientXActivation, LayerIntegratedGradients, ShapleyValueSampling

from lmforge.explain.targets import Target, log_prob
from lmforge.model.decoder import Decoder

METHODS = ("integrated_gradients", "gradient_x_input", "occlusion", "shapley")
GRADIENT_METHODS = ("integrated_gradients", "gradient_x_input")


@dataclasses.dataclass
class Attribution:
    method: str
    scores: list[float]  # one per context token
    suffix_scores: list[float]  # one per fixed token after it: zero at the embeddings (they equal the baseline's),
    # not at a block's output, where the context reaches them
    f_input: float  # F(x)
    f_baseline: float | None  # F(baseline), where the method has one
    delta: float | None  # integrated gradients: sum(scores) - (F(x) - F(baseline))
    seconds: float
    settings: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class AttributionSettings:
    layer: str = "embeddings"  # or "layers.<i>": a block's output
    baseline_token: int = 0
    ig_steps: int = 50
    ig_method: str = "gausslegendre"
    ig_tolerance: float | None = 0.01  # steps doubled until |delta| <= this share of |F(x) - F(baseline)|
    ig_max_steps: int = 512
    internal_batch_size: int = 8
    perturbations_per_eval: int = 8  # occlusion, shapley: perturbed inputs per forward
    shapley_samples: int = 25
    seed: int = 0


def attribution_layer(model: Decoder, layer: str) -> torch.nn.Module:
    """The module a layer method attributes to: ``embeddings`` or ``layers.<i>`` (a block's output)."""
    if layer == "embeddings":
        return model.embed_tokens
    index = layer.removeprefix("layers.")
    if layer.startswith("layers.") and index.isdigit() and int(index) < len(model.layers):
        return model.layers[int(index)]
    raise ValueError(f"unknown layer {layer!r}: embeddings, or layers.<i> with i below {len(model.layers)}")


@contextlib.contextmanager
def frozen(model: Decoder):
    """Gradients toward activations only (no parameter gradients kept), in eval mode."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval().requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


def attribute(model: Decoder, target: Target, method: str, s: AttributionSettings = AttributionSettings()
              ) -> Attribution:
    """``method``'s attribution of ``target`` to its context tokens."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: one of {', '.join(METHODS)}")
    device = model.rope_cos.device
    n = len(target.context)
    inputs = torch.tensor([target.ids], device=device)  # (1, T)
    baseline = inputs.clone()
    baseline[0, :n] = s.baseline_token

    def forward(tokens: torch.Tensor) -> torch.Tensor:
        return log_prob(model, tokens, target)

    start = time.perf_counter()
    delta = f_baseline = None
    with frozen(model):
        with torch.no_grad():
            f_input = float(forward(inputs))
            f_baseline = float(forward(baseline))
        if method == "integrated_gradients":
            lig = LayerIntegratedGradients(forward, attribution_layer(model, s.layer))
            steps = s.ig_steps
            while True:
                raw, d = lig.attribute(inputs, baselines=baseline, n_steps=steps, method=s.ig_method,
                                       internal_batch_size=s.internal_batch_size, return_convergence_delta=True)
                scores, delta = raw[0].sum(-1), float(d[0])
                if s.ig_tolerance is None or abs(delta) <= s.ig_tolerance * abs(f_input - f_baseline) \
                        or steps * 2 > s.ig_max_steps:
                    break
                steps *= 2  # the path integral is not converged yet: twice the points
        elif method == "gradient_x_input":
            raw = LayerGradientXActivation(forward, attribution_layer(model, s.layer)).attribute(inputs)
            scores, f_baseline = raw[0].sum(-1), None
        else:
            mask = torch.arange(inputs.shape[1], device=device).clamp(max=n).unsqueeze(0)  # a token each; the suffix one
            with torch.no_grad():
                if method == "occlusion":
                    raw = FeatureAblation(forward).attribute(inputs, baselines=baseline, feature_mask=mask,
                                                             perturbations_per_eval=s.perturbations_per_eval)
                else:
                    torch.manual_seed(s.seed)  # Captum samples its permutations from torch's RNG
                    raw = ShapleyValueSampling(forward).attribute(inputs, baselines=baseline, feature_mask=mask,
                                                                  n_samples=s.shapley_samples,
                                                                  perturbations_per_eval=s.perturbations_per_eval)
            scores = raw[0].float()
    settings = {"layer": s.layer if method in GRADIENT_METHODS else "tokens", "baseline_token": s.baseline_token}
    if method == "integrated_gradients":
        settings |= {"steps": steps, "integration": s.ig_method, "internal_batch_size": s.internal_batch_size,
                     "tolerance": s.ig_tolerance}
    if method == "shapley":
        settings |= {"samples": s.shapley_samples, "seed": s.seed}
    return Attribution(method, scores[:n].double().tolist(), scores[n:].double().tolist(), f_input, f_baseline, delta,
                       time.perf_counter() - start, settings)
