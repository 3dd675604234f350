"""Fit the cleaning of numeric columns on the training rows, and apply it, unchanged, to any rows.

Columns are ``{name: 1-D numpy array}`` (NaN for a missing number). In order: rows missing a value in a
"drop" column are removed; other missing values get the fitted value (training mean or median, zero, a
constant); values are clipped; derived columns are computed (rows where one is not finite are removed);
the ``standardize`` columns become ``(x - mean) / scale`` with the training mean and population standard
deviation (scale 1 for a constant column, as scikit-learn's ``StandardScaler``). The fitted numbers are
the JSON of ``data/tabular/scaler.json``; ``apply_scaler`` re-applies them at evaluation time.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lmforge.data.tabular.config import TabularConfig
from lmforge.data.tabular.expressions import evaluate, parse_expression

Columns = dict[str, np.ndarray]


def fit_scaler(train: Mapping[str, np.ndarray], numeric: list[str], cfg: TabularConfig) -> dict:
    """The fitted transform (a JSON-able dict) from the training rows ``train``."""
    missing = {}
    for name in numeric:
        strategy = cfg.missing.get(name, cfg.missing_default)
        missing[name] = {"strategy": "constant" if isinstance(strategy, float) else strategy,
                         "value": strategy if isinstance(strategy, float) else 0.0 if strategy == "zero" else None}
    scaler = {"numeric": list(numeric), "label": cfg.label, "missing": missing,
              "clip": {name: [rule.min, rule.max] for name, rule in cfg.clip.items()},
              "derive": dict(cfg.derive), "standardize": {}}
    kept = _drop_missing(dict(train), scaler, Counter())
    for name, rule in missing.items():
        if rule["strategy"] in ("mean", "median"):
            values = kept[name][~np.isnan(kept[name])]
            if values.size == 0:
                raise ValueError(f"missing.{name}: the training split has no value to take the {rule['strategy']} of")
            rule["value"] = float(np.mean(values) if rule["strategy"] == "mean" else np.median(values))
    prepared = _impute_clip_derive(kept, scaler, Counter())
    for name in _standardized(cfg, numeric):
        values = prepared[name]
        std = float(values.std())  # population standard deviation (ddof=0), as StandardScaler
        scaler["standardize"][name] = {"mean": float(values.mean()), "scale": std if std > 0 else 1.0}
    return scaler


def apply_scaler(columns: Mapping[str, np.ndarray], scaler: dict | str | Path,
                 counts: Counter | None = None) -> Columns:
    """Clean ``columns`` with a fitted transform (a dict or the path of scaler.json); removed rows are
    removed from every column, and counted by reason into ``counts``."""
    if not isinstance(scaler, dict):
        scaler = json.loads(Path(scaler).read_text())
    counts = Counter() if counts is None else counts
    missing_columns = [name for name in scaler["numeric"] if name not in columns]
    if missing_columns:
        raise KeyError(f"columns missing: {', '.join(missing_columns)}")
    out = _drop_missing({name: np.asarray(values) for name, values in columns.items()}, scaler, counts)
    out = _impute_clip_derive(out, scaler, counts)
    for name, stats in scaler["standardize"].items():
        out[name] = (out[name] - stats["mean"]) / stats["scale"]
    return out


def _keep_rows(columns: Columns, keep: np.ndarray) -> Columns:
    return {name: values[keep] for name, values in columns.items()}


def _drop_missing(columns: Columns, scaler: dict, counts: Counter) -> Columns:
    for name, rule in scaler["missing"].items():
        if rule["strategy"] == "drop":
            absent = np.isnan(columns[name].astype(np.float64))
            if absent.any():
                counts[f"missing:{name}"] += int(absent.sum())
                columns = _keep_rows(columns, ~absent)
    return columns


def _impute_clip_derive(columns: Columns, scaler: dict, counts: Counter) -> Columns:
    columns = dict(columns)
    for name, rule in scaler["missing"].items():
        values = columns[name].astype(np.float64)
        if rule["strategy"] != "drop":
            absent = np.isnan(values)
            counts[f"imputed:{name}"] += int(absent.sum())
            values = np.where(absent, rule["value"], values)
        columns[name] = values
    for name, (low, high) in scaler["clip"].items():
        values = columns[name]
        clipped = np.clip(values, -np.inf if low is None else low, np.inf if high is None else high)
        counts[f"clipped:{name}"] += int((clipped != values).sum())
        columns[name] = clipped
    for name, expression in scaler["derive"].items():
        columns[name] = evaluate(parse_expression(expression), columns)
        bad = ~np.isfinite(columns[name])
        if bad.any():
            counts[f"non_finite:{name}"] += int(bad.sum())
            columns = _keep_rows(columns, ~bad)
    return columns


def _standardized(cfg: TabularConfig, numeric: list[str]) -> list[str]:
    if cfg.standardize == "none":
        return []
    if cfg.standardize == "all":
        return [*numeric, *cfg.derive]
    return list(cfg.standardize)
