"""``lmforge report`` on a real debug run: report.html has every stage's section in pipeline order with the numbers
of its summary.json ("not run" for a stage that did not run), the warnings and a loss that got worse up top, no
reference outside the file; runs compared side by side; TensorBoard events read back; bad input refused in one
line with nothing half-written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cli_errors import assert_error_line, snapshot
from conftest import run_cli
from lmforge.report.html import fmt
from lmforge.report.runread import STAGE_ORDER
from report_run import build_report_run, light_copy

pytestmark = pytest.mark.integration

LATER = ("finetune", "merge", "compress", "explain", "attack")
SECURE = {"model": "merge/model.safetensors", "signature": "secure/model.sig",
          "signed_files": {"model.safetensors": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
          "encrypted": "secure/model.safetensors.lmfe",
          "recipients": [{"kind": "x25519", "public_key": "secure/keys/run.pub"}],
          "private_key": "secure/keys/run.key", "segment_size": 1048576, "verified": True, "signer": "ec-p256 run key"}


@pytest.fixture(scope="session")
def report_run(debug_data_run, tmp_path_factory) -> Path:
    return build_report_run(debug_data_run, tmp_path_factory.getbasetemp())


def summary(root: Path, stage: str) -> dict:
    return json.loads((root / stage / "summary.json").read_text())


def section_of(page: str, stage: str) -> str:
    start = page.index(f'<section id="{stage}">')
    return page[start:page.index("</section>", start)]


def test_every_stage_has_its_section_with_its_numbers(report_run, tmp_path):
    root = light_copy(report_run, tmp_path / "run")
    code, out, err = run_cli("report", str(root))
    assert code == 0, err
    assert out.strip() == str(root / "report.html")
    page = (root / "report.html").read_text()
    shown = [s for s in STAGE_ORDER if s != "report"]
    positions = [page.index(f'<section id="{s}">') for s in shown]
    assert positions == sorted(positions)  # pipeline order, the glance first and the recipe last
    assert page.index('<section id="glance">') < positions[0] < positions[-1] < page.index('<section id="recipe">')
    assert "Not run" in section_of(page, "secure") and "not run" in section_of(page, "secure")
    for stage in ("curate", "train", "eval", *LATER):
        assert "Not run" not in section_of(page, stage), stage
    curate, train, evaluation = (summary(root, s) for s in ("curate", "train", "eval"))
    glance = section_of(page, "glance")
    assert f"{curate['documents_read']:,} read, {curate['documents_kept']:,} kept" in glance
    assert f"{train['parameters']:,}" in glance
    assert f"{fmt(evaluation['before']['loss'])} → {fmt(evaluation['after']['loss'])}" in glance
    assert "secure" in glance.split("Not run:")[1]  # the glance names the stages that did not run
    stats = json.loads((root / "curate" / "stats.json").read_text())
    dropped = {r for step in stats["steps"] for r in step["dropped"]}
    assert dropped and all(r in section_of(page, "curate") for r in dropped)
    intervals = json.loads((root / "eval" / "results.json").read_text())["after"]["intervals"]["loss"]
    assert f"{fmt(evaluation['after']['loss'])} [{fmt(intervals[0])}, {fmt(intervals[1])}]" in section_of(page, "eval")
    acc = evaluation["tasks"]["which_package"]["acc"]
    assert f"{fmt(acc['estimate'])} [{fmt(acc['low'])}, {fmt(acc['high'])}]" in section_of(page, "eval")
    assert section_of(page, "eval").count("<img") == 3  # two reliability diagrams, one confusion matrix
    for name, variant in summary(root, "compress")["variants"].items():
        assert name in section_of(page, "compress") and fmt(variant["perplexity"]) in section_of(page, "compress")
    assert "quality against size" in section_of(page, "compress")
    merged = summary(root, "merge")["evaluation"]["models"]["merged"]["val"]["loss"]
    assert fmt(merged) in section_of(page, "merge")
    assert section_of(page, "explain").count('<div class="tokens">') == 3  # a heatmap per attribution method
    for name, attack in summary(root, "attack")["attacks"].items():
        assert name in section_of(page, "attack") and fmt(attack["attacked_loss"]) in section_of(page, "attack")
    assert fmt(summary(root, "finetune")["final_val_loss"]) in section_of(page, "finetune")
    assert "max_steps: 20" in section_of(page, "recipe")
    # self-contained: nothing fetched from anywhere, every image inline
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page and "@import" not in page and "url(" not in page
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) >= 10 and all(s.startswith(("data:image/png;base64,", "data:image/svg+xml")) for s in sources)
    assert "@media print" in page


def test_warnings_a_worse_loss_and_the_secure_stage_are_shown(report_run, tmp_path):
    root = light_copy(report_run, tmp_path / "run")
    for stage, message in (("curate", "curate: 95% of the documents were dropped"),
                           ("eval", "eval: the validation loss got worse")):
        path = root / stage / "summary.json"
        data = json.loads(path.read_text()) | {"warnings": [message]}
        if stage == "eval":
            data |= {"val_loss_worse_than_initial": True}
        path.write_text(json.dumps(data))
    (root / "secure").mkdir()
    (root / "secure" / "summary.json").write_text(json.dumps(SECURE))
    code, _, err = run_cli("report", str(root))
    assert code == 0, err
    page = (root / "report.html").read_text()
    glance = section_of(page, "glance")
    assert "This run did not learn" in glance and 'tile bad' in glance
    assert "curate: curate: 95% of the documents were dropped" in glance
    assert "eval: eval: the validation loss got worse" in glance
    assert "95% of the documents were dropped" in section_of(page, "curate")
    assert "The validation loss got worse" in section_of(page, "eval") and "got worse</span>" in section_of(page, "eval")
    secure = section_of(page, "secure")
    assert "Not run" not in secure and "verified" in secure
    for value in (SECURE["signed_files"]["model.safetensors"], "secure/keys/run.pub", "x25519", "1,048,576",
                  "secure/model.safetensors.lmfe", "secure/keys/run.key"):
        assert value in secure, value
    assert "signer" in secure and "ec-p256 run key" in secure  # a key with no renderer: the generic table


def test_runs_compared_side_by_side(report_run, tmp_path, monkeypatch):
    a, b = light_copy(report_run, tmp_path / "a"), light_copy(report_run, tmp_path / "b")
    recipe = (b / "recipe.yaml").read_text()
    assert "lr: 0.003" in recipe and "warmup_steps: 4" in recipe
    (b / "recipe.yaml").write_text(recipe.replace("lr: 0.003", "lr: 0.001").replace("warmup_steps: 4", "warmup_steps: 2"))
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("report", str(a), str(b))
    assert code == 0, err
    assert out.strip() == "report-compare.html"
    page = (tmp_path / "report-compare.html").read_text()
    differences = section_of(page, "recipe")
    assert "train.lr" in differences and "train.warmup_steps" in differences
    assert "train.max_steps" not in differences and "seed" not in differences  # equal keys are not differences
    assert "0.003" in differences and "0.001" in differences
    evaluation = summary(a, "eval")
    low, high = json.loads((a / "eval" / "results.json").read_text())["after"]["intervals"]["loss"]
    cell = f"{fmt(evaluation['after']['loss'])} [{fmt(low)}, {fmt(high)}]"
    assert section_of(page, "metrics").count(cell) == 2
    acc = evaluation["tasks"]["docstring_to_name"]["acc"]
    assert f"{fmt(acc['estimate'])} [{fmt(acc['low'])}, {fmt(acc['high'])}]" in section_of(page, "metrics")
    code, out, err = run_cli("report", str(a), str(b), "--output", str(tmp_path / "cmp" / "ab.html"))
    assert code == 0 and (tmp_path / "cmp" / "ab.html").is_file(), err


def test_tensorboard_events_read_back(report_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lmforge.core.metrics import read_metrics

    root = light_copy(report_run, tmp_path / "run")
    code, _, err = run_cli("report", str(root))
    assert code == 0, err
    events = EventAccumulator(str(root / "tensorboard"))
    events.Reload()
    records = read_metrics(root / "train" / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    for tag, key in (("train/loss", "loss"), ("train/lr", "lr"), ("train/tokens_per_s", "tokens_per_s")):
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert got == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in train], tag
    vals = [(e.step, e.value) for e in events.Scalars("val/loss")]
    assert vals == [(r["step"], pytest.approx(r["val_loss"], rel=1e-6)) for r in records if r["kind"] == "eval"]
    after = events.Scalars("summary/eval.after.loss")
    assert [e.value for e in after] == [pytest.approx(summary(root, "eval")["after"]["loss"], rel=1e-6)]
    assert events.Scalars("summary/compress.variants.q8.perplexity")
    code, _, err = run_cli("report", str(root))  # again: the folder is replaced, not appended to
    assert code == 0, err
    events = EventAccumulator(str(root / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("train/loss")) == len(train)


def test_bad_input_is_one_line_and_nothing_half_written(report_run, tmp_path):
    missing = tmp_path / "nowhere"
    assert_error_line(*run_cli("report", str(missing))[::2], f"error: {missing}: no such run directory")
    (tmp_path / "empty").mkdir()
    assert_error_line(*run_cli("report", str(tmp_path / "empty"))[::2],
                      f"error: {tmp_path / 'empty'}: not a run directory (no recipe.yaml or stages.json)")
    root = light_copy(report_run, tmp_path / "run")
    code, _, err = run_cli("report", str(root))
    assert code == 0, err
    before = snapshot(root)
    bad = root / "merge" / "summary.json"
    good = bad.read_bytes()
    bad.write_text('{"method": "linear",')
    assert_error_line(*run_cli("report", str(root))[::2],
                      f"error: {bad}: not valid JSON (Expecting property name enclosed in double quotes at line 1 "
                      "column 21)")
    bad.write_bytes(b"\xff\xfe{}")
    code, _, err = run_cli("report", str(root))
    assert code == 2 and err.startswith(f"error: {bad}: cannot read (UnicodeDecodeError") and "\n" not in err.strip()
    bad.write_text("[1, 2]")
    assert_error_line(*run_cli("report", str(root))[::2], f"error: {bad}: not a JSON object")
    after = snapshot(root)
    assert {p: v for p, v in after.items() if p != bad.relative_to(root)} == \
        {p: v for p, v in before.items() if p != bad.relative_to(root)}  # the old report and events untouched
    bad.write_bytes(good)
    output = tmp_path / "cmp.html"
    assert_error_line(*run_cli("report", str(root), str(missing), "--output", str(output))[::2],
                      f"error: {missing}: no such run directory")
    assert not output.exists()
    assert_error_line(*run_cli("report", str(root), "--output", str(output))[::2],
                      "error: --output: only with several RUN_DIRs (one run's report is RUN_DIR/report.html)")
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]
