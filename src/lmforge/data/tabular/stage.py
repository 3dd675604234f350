"""The tabular part of curation: read the table, split its rows, fit on train, write the cleaned splits.

Writes ``data/tabular/train.parquet``, ``val.parquet`` and ``scaler.json``; returns the stats for
``stats.json``. Rows are split by a seeded random draw per row (the same seed, the same split).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from lmforge.core.atomic import atomic_write_json, atomic_write_with
from lmforge.data.tabular.config import TabularConfig
from lmforge.data.tabular.expressions import column_names, parse_expression
from lmforge.data.tabular.transform import apply_scaler, fit_scaler
from lmforge.errors import DataError

KEY = "data.tabular"


def curate_tabular(cfg: TabularConfig, seed: int, val_fraction: float, out_dir: Path) -> dict:
    import pyarrow as pa  # imported here: only tabular runs pay for it

    table = read_table(cfg)
    numeric = _numeric_columns(table, cfg)
    _check_names(table, numeric, cfg)
    columns = {name: _as_array(table.column(name), name in numeric) for name in table.column_names}
    counts: Counter = Counter()
    if cfg.label is not None:
        labelled = np.array([value is not None for value in table.column(cfg.label).to_pylist()], dtype=bool)
        counts["missing:label"] += int((~labelled).sum())
        columns = {name: values[labelled] for name, values in columns.items()}
    rows = len(next(iter(columns.values())))
    is_val = np.random.default_rng([seed, 0x7AB1E]).random(rows) < val_fraction
    train = {name: values[~is_val] for name, values in columns.items()}
    val = {name: values[is_val] for name, values in columns.items()}
    if not len(is_val) or is_val.all() or not is_val.any():
        raise DataError(f"{KEY}.path: {rows} usable rows cannot be split into train and validation rows")
    try:
        scaler = fit_scaler(train, numeric, cfg)
    except ValueError as exc:
        raise DataError(f"{KEY}.{exc}") from None
    out = out_dir / "tabular"
    stats = {"path": cfg.path, "rows_read": table.num_rows, "numeric_columns": numeric,
             "derived_columns": list(cfg.derive), "splits": {}}
    for name, rows_of_split in (("train", train), ("val", val)):
        split_counts: Counter = Counter()
        cleaned = apply_scaler(rows_of_split, scaler, split_counts)
        arrays = {k: pa.array(v.tolist() if v.dtype == object else v) for k, v in cleaned.items()}
        atomic_write_with(out / f"{name}.parquet", lambda tmp, t=pa.table(arrays): _write_parquet(t, tmp))
        stats["splits"][name] = {"rows": len(next(iter(cleaned.values()))), "counts": dict(sorted(split_counts.items()))}
    stats["dropped_before_split"] = dict(sorted(counts.items()))
    atomic_write_json(out / "scaler.json", scaler)
    return stats


def read_table(cfg: TabularConfig):
    """The table at ``cfg.path`` as a pyarrow Table; a clear DataError if it is missing or unreadable."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise DataError(f"{KEY}.path: no such file: {cfg.path}")
    fmt = cfg.format if cfg.format != "auto" else "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"
    try:
        return pq.read_table(path) if fmt == "parquet" else pa_csv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as exc:
        message = " ".join(str(exc).split())[:200]
        raise DataError(f"{KEY}.path: cannot read {cfg.path} as {fmt}: {message}") from None


def _numeric_columns(table, cfg: TabularConfig) -> list[str]:
    import pyarrow.types as pt

    def numeric(name: str) -> bool:
        kind = table.schema.field(name).type
        return pt.is_integer(kind) or pt.is_floating(kind) or pt.is_null(kind)

    if cfg.columns is None:
        return [name for name in table.column_names if name != cfg.label and numeric(name)]
    for name in cfg.columns:
        if name not in table.column_names:
            raise DataError(f"{KEY}.columns: no column {name!r} in {cfg.path} (columns: {', '.join(table.column_names)})")
        if not numeric(name):
            raise DataError(f"{KEY}.columns: column {name!r} is not numeric ({table.schema.field(name).type})")
    return list(cfg.columns)


def _check_names(table, numeric: list[str], cfg: TabularConfig) -> None:
    if cfg.label is not None and cfg.label not in table.column_names:
        raise DataError(f"{KEY}.label: no column {cfg.label!r} in {cfg.path}")
    for key, names in (("missing", cfg.missing), ("clip", cfg.clip)):
        for name in names:
            if name not in numeric:
                raise DataError(f"{KEY}.{key}.{name}: not one of the numeric columns ({', '.join(numeric)})")
    known = set(numeric)
    for name, expression in cfg.derive.items():
        unknown = sorted(column_names(parse_expression(expression)) - known)
        if unknown:
            raise DataError(f"{KEY}.derive.{name}: unknown column {unknown[0]!r} (numeric columns: "
                            f"{', '.join(sorted(known))})")
        if name in table.column_names:
            raise DataError(f"{KEY}.derive.{name}: a column of that name already exists")
        known.add(name)
    if isinstance(cfg.standardize, list):
        for name in cfg.standardize:
            if name not in known:
                raise DataError(f"{KEY}.standardize: {name!r} is not a numeric or derived column")


def _as_array(column, numeric: bool) -> np.ndarray:
    import pyarrow as pa

    if numeric:
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls -> NaN
    return np.array(column.to_pylist(), dtype=object)


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, path)
