import json

import numpy as np
import pyarrow as pa
import pyarrow.csv  # noqa: F401  (pa.csv)
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from sklearn import preprocessing  # a pinned test dependency (requirements-dev.txt): missing fails

from lmforge.data.config import DataConfig, SourceConfig
from lmforge.data.curate import curate
from lmforge.data.tabular.config import TabularConfig
from lmforge.data.tabular.expressions import ExpressionError, evaluate, parse_expression
from lmforge.data.tabular.stage import curate_tabular
from lmforge.data.tabular.transform import apply_scaler, fit_scaler
from lmforge.errors import DataError


def table(n=400, seed=0):
    rng = np.random.default_rng(seed)
    age = rng.normal(45, 15, n)
    age[rng.random(n) < 0.1] = np.nan
    income = rng.lognormal(10, 1, n)
    income[rng.random(n) < 0.05] = np.nan
    height = rng.normal(170, 10, n)
    weight = rng.normal(70, 12, n)
    weight[:3] = np.nan
    return {"age": age, "income": income, "height": height, "weight": weight,
            "constant": np.full(n, 2.0), "outcome": np.array(["yes", "no"] * (n // 2), dtype=object)}


def write_csv(path, columns):
    pa.csv.write_csv(pa.table({k: pa.array(v.tolist() if v.dtype == object else v, from_pandas=True)
                               for k, v in columns.items()}), path)
    return path


CFG = TabularConfig(path="unused", label="outcome", missing={"age": "median", "income": "mean", "weight": "drop"},
                    clip={"age": {"min": 18, "max": 90}}, derive={"bmi": "weight / (height / 100) ** 2",
                                                                  "log_income": "log1p(income)"})


def test_standardization_matches_scikit_learn_and_is_fit_on_train_only():
    train, val = table(seed=1), table(seed=2)
    numeric = ["age", "income", "height", "weight", "constant"]
    scaler = fit_scaler(train, numeric, CFG)
    train_out, val_out = apply_scaler(train, scaler), apply_scaler(val, scaler)
    names = [*numeric, "bmi", "log_income"]
    # the same cleaning by hand, then scikit-learn's StandardScaler fit on the training rows
    reference = {}
    for split, data in (("train", train), ("val", val)):
        keep = ~np.isnan(data["weight"])
        age = np.where(np.isnan(data["age"]), np.nanmedian(train["age"][~np.isnan(train["weight"])]), data["age"])
        income = np.where(np.isnan(data["income"]), np.nanmean(train["income"][~np.isnan(train["weight"])]),
                          data["income"])
        cols = {"age": np.clip(age, 18, 90)[keep], "income": income[keep], "height": data["height"][keep],
                "weight": data["weight"][keep], "constant": data["constant"][keep]}
        cols["bmi"] = cols["weight"] / (cols["height"] / 100) ** 2
        cols["log_income"] = np.log1p(cols["income"])
        reference[split] = np.column_stack([cols[n] for n in names])
    sk = preprocessing.StandardScaler().fit(reference["train"])
    np.testing.assert_allclose(np.column_stack([train_out[n] for n in names]), sk.transform(reference["train"]),
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.column_stack([val_out[n] for n in names]), sk.transform(reference["val"]),
                               rtol=1e-10, atol=1e-10)
    assert scaler["standardize"]["constant"] == {"mean": 2.0, "scale": 1.0}  # zero variance: scale 1, as sklearn
    assert list(val_out["outcome"]) == list(val["outcome"][~np.isnan(val["weight"])])  # label untouched


def test_curate_writes_splits_and_scaler_that_reapplies_unchanged(tmp_path):
    csv = write_csv(tmp_path / "t.csv", table(300))
    (tmp_path / "d.txt").write_text("a document of text for the document pipeline\n")
    cfg = TabularConfig(**{**CFG.model_dump(), "path": str(csv)})
    stats = curate_tabular(cfg, seed=4, val_fraction=0.25, out_dir=tmp_path)
    out = tmp_path / "tabular"
    scaler = json.loads((out / "scaler.json").read_text())
    train = pq.read_table(out / "train.parquet").to_pydict()
    val = pq.read_table(out / "val.parquet").to_pydict()
    assert stats["splits"]["train"]["rows"] == len(train["age"]) and stats["rows_read"] == 300
    assert len(train["age"]) + len(val["age"]) == 300 - 3  # three rows without a weight are dropped
    assert 0.15 < len(val["age"]) / 297 < 0.35
    np.testing.assert_allclose(np.mean(train["bmi"]), 0, atol=1e-9)  # standardized on train
    np.testing.assert_allclose(np.std(train["bmi"]), 1, atol=1e-9)
    # evaluation time: the raw rows of the validation split through the saved scaler give the saved split
    raw = pa.csv.read_csv(csv)
    rows = np.random.default_rng([4, 0x7AB1E]).random(raw.num_rows) < 0.25
    raw_val = {c: (raw[c].to_numpy(zero_copy_only=False) if c != "outcome" else np.array(raw[c].to_pylist(), object))[rows]
               for c in raw.column_names}
    again = apply_scaler({k: v.astype(float) if k != "outcome" else v for k, v in raw_val.items()}, out / "scaler.json")
    np.testing.assert_allclose(again["bmi"], val["bmi"])
    assert scaler["missing"]["age"]["strategy"] == "median"
    assert stats["splits"]["train"]["counts"]["clipped:age"] > 0


def test_expressions_allow_arithmetic_and_whitelisted_functions_only():
    columns = {"a": np.array([1.0, 4.0]), "b": np.array([2.0, 0.0])}
    # Python's precedence: sqrt(a) * 2 + (((-(b ** 2)) // 1) % 3)
    assert evaluate(parse_expression("sqrt(a) * 2 + -b ** 2 // 1 % 3"), columns).tolist() == [2.0 + 2.0, 4.0 + 0.0]
    assert evaluate(parse_expression("where(a > 2, a, 0) + maximum(a, b)"), columns).tolist() == [2.0, 8.0]
    assert evaluate(parse_expression("3"), columns).tolist() == [3.0, 3.0]
    for bad, fragment in [("__import__('os').system('x')", "Attribute is not allowed"),
                          ("a.real", "Attribute is not allowed"), ("(lambda: 1)()", "Lambda"),
                          ("a if b else 1", "IfExp"), ("'text'", "not a number"), ("log(a, base=2)", "keyword"),
                          ("[a, b]", "List"), ("a +", "invalid expression"), ("np.log(a)", "Attribute"), ("open(a)", "unknown function 'open'")]:
        with pytest.raises(ExpressionError, match=fragment.replace("(", r"\(")):
            parse_expression(bad)


def test_bad_tabular_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValidationError, match=r"derive\n.*bmi: unknown function 'eval'"):
        TabularConfig(path="x.csv", derive={"bmi": "eval(weight)"})
    with pytest.raises(ValidationError, match="min .* is larger than max"):
        TabularConfig(path="x.csv", clip={"a": {"min": 2, "max": 1}})
    with pytest.raises(ValidationError, match="label column 'y' cannot be in missing"):
        TabularConfig(path="x.csv", label="y", missing={"y": "mean"})
    csv = write_csv(tmp_path / "t.csv", table(50))
    for settings, message in [({"path": str(tmp_path / "none.csv")}, r"data\.tabular\.path: no such file"),
                              ({"derive": {"z": "agee + 1"}}, r"data\.tabular\.derive\.z: unknown column 'agee'"),
                              ({"columns": ["outcome"]}, "column 'outcome' is not numeric"),
                              ({"clip": {"nope": {"min": 0}}}, r"data\.tabular\.clip\.nope: not one of")]:
        cfg = TabularConfig(**{"path": str(csv), **settings})
        with pytest.raises(DataError, match=message):
            curate_tabular(cfg, seed=0, val_fraction=0.2, out_dir=tmp_path)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="cannot read .*bad.parquet as parquet"):
        curate_tabular(TabularConfig(path=str(tmp_path / "bad.parquet")), seed=0, val_fraction=0.2, out_dir=tmp_path)


def test_tabular_section_runs_with_the_document_pipeline(tmp_path):
    csv = write_csv(tmp_path / "t.csv", table(100))
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"{i}.txt").write_text(f"text document number {i} " * 5)
    cfg = DataConfig(sources=[SourceConfig(kind="text", path=str(docs))], minhash={"enabled": False},
                     quality={"gopher_quality": {"apply_to": "none"}, "gopher_repetition": {"apply_to": "none"},
                              "c4": {"apply_to": "none"}, "fineweb": {"apply_to": "none"}},
                     tabular={"path": str(csv), "label": "outcome"}, report=False, workers=1)
    stats = curate(cfg, seed=0, out_dir=tmp_path / "out")
    assert stats["tabular"]["splits"]["train"]["rows"] > 0
    assert sorted(p.name for p in (tmp_path / "out" / "tabular").iterdir()) == ["scaler.json", "train.parquet",
                                                                                 "val.parquet"]
