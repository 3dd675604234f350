"""The debug recipe end to end through the CLI, each stage alone, and re-runs that skip finished work."""

import io
import json
import re

import pytest

from cli_errors import assert_error_line
from conftest import lmforge_run, run_cli, temporaries, train_losses
from lmforge.core.metrics import read_metrics

pytestmark = pytest.mark.integration


def test_debug_recipe_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    result = lmforge_run("run", "debug", "--run-dir", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for rel in ["recipe.yaml", "stages.json", "curate/train.jsonl", "curate/val.jsonl", "curate/stats.json",
                "tokenizer/tokenizer.json", "pack/train/index.json", "pack/val/index.json",
                "train/checkpoints/step_00000020/model.safetensors", "train/metrics.jsonl", "eval/results.json",
                "sample/samples.json", "summary.json", "report.html", "report/summary.json"]:
        assert (run_dir / rel).exists(), rel
    assert temporaries(run_dir) == []
    # the summary is on stdout: one line per stage with its headline figure
    for words in ["curate", "documents read", "train tokens", "parameters", "val loss", "sample(s)", "report.html",
                  "run directory"]:
        assert words in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["after"]["loss"] < summary["before"]["loss"]
    assert summary["documents_kept"] <= summary["documents_read"]
    steps = [r["step"] for r in read_metrics(run_dir / "train" / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == list(range(1, 21))
    # keep_checkpoints=2 with checkpoint_every=10: steps 10 and 20
    assert sorted(p.name for p in (run_dir / "train" / "checkpoints").iterdir()) == ["step_00000010", "step_00000020"]

    again = lmforge_run("run", "debug", "--run-dir", str(run_dir), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    for stage in ["curate", "tokenizer", "pack", "train", "eval", "sample"]:
        assert f"{stage}: already done, skipped" in again.stderr


def test_each_stage_alone_on_a_run_directory(data_run):
    code, _, err = run_cli("train", "--run-dir", str(data_run), "--set", "train.max_steps=6")
    assert code == 0, err
    code, out, err = run_cli("eval", "--run-dir", str(data_run))
    assert code == 0, err
    assert out.startswith("val loss ") and "step_00000006" in out
    code, out1, err = run_cli("generate", "--run-dir", str(data_run), "--prompt", "import os\n",
                              "--temperature", "0", "--max-new-tokens", "12")
    assert code == 0, err
    code, out2, _ = run_cli("generate", "--run-dir", str(data_run), "--prompt", "import os\n",
                            "--temperature", "0", "--max-new-tokens", "12", "--no-cache")
    assert out1 == out2 and out1.startswith("import os\n")


@pytest.mark.parametrize("command", ["run", "data", "train", "eval", "generate"])
def test_help_on_every_command(command):
    code, out, _ = run_cli(command, "--help")
    assert code == 0
    assert "Usage: lmforge " + command in out and "--set" in out


def test_top_level_help_and_version():
    code, out, _ = run_cli("--help")
    assert code == 0 and "run" in out and "generate" in out
    code, out, _ = run_cli("--version")
    assert code == 0 and "0.1.0" in out


def test_export_of_the_current_folder_writes_beside_the_run(data_run, monkeypatch):
    assert run_cli("train", "--run-dir", str(data_run), "--set", "train.max_steps=2",
                   "--set", "train.checkpoint_every=2")[0] == 0
    monkeypatch.chdir(data_run / "train" / "checkpoints" / "step_00000002")
    code, out, err = run_cli("export", "--checkpoint", ".")
    assert code == 0, err
    assert (data_run / "export" / "step_00000002.safetensors").is_file()
    assert "exported step 2 (safetensors)" in out


def test_export_refuses_an_output_it_cannot_write(data_run, tmp_path):
    assert run_cli("train", "--run-dir", str(data_run), "--set", "train.max_steps=1",
                   "--set", "train.checkpoint_every=1")[0] == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_file").write_text("x")
    for output in (out / "a_file" / "m.safetensors", out / "a_file" / "sub" / "m.safetensors"):
        code, _, err = run_cli("export", "--run-dir", str(data_run), "--output", str(output))
        assert_error_line(code, err, f"error: export --output {output}: {out / 'a_file'} is a file, not a folder")
    code, _, err = run_cli("export", "--run-dir", str(data_run), "--output", "/proc/lmforge-export.safetensors")
    # the rest of the line is the OS's reason, with the temporary name it tried
    assert code == 2 and re.fullmatch(r"error: export --output /proc/lmforge-export\.safetensors: cannot write there "
                                      r"\(.+\)\n", err), err
    assert [p.name for p in out.iterdir()] == ["a_file"] and not (data_run / "export").exists()


def test_redo_tokenizer_rebuilds_it_and_what_follows_and_nothing_before(data_run):
    code, _, err = run_cli("run", "--run-dir", str(data_run), "--set", "train.max_steps=2")
    assert code == 0, err
    assert set(json.loads((data_run / "stages.json").read_text())) == {"curate", "tokenizer", "pack", "train", "eval",
                                                                      "sample", "report"}

    def identity(path):  # atomic writes rename a new file into place: a rebuilt file has a new inode
        stat = path.stat()
        return stat.st_ino, stat.st_mtime_ns

    rebuilt = [data_run / "tokenizer" / "tokenizer.json", *sorted((data_run / "pack").rglob("*.*"))]
    curated = sorted((data_run / "curate").iterdir())
    before = {p: identity(p) for p in rebuilt}
    kept = {p: (p.read_bytes(), identity(p)) for p in curated}
    code, _, err = run_cli("data", "--run-dir", str(data_run), "--redo", "tokenizer")
    assert code == 0, err
    assert all(identity(p) != before[p] for p in rebuilt), [p for p in rebuilt if identity(p) == before[p]]
    assert sorted((data_run / "curate").iterdir()) == curated
    assert all((p.read_bytes(), identity(p)) == kept[p] for p in curated)  # curate/train.jsonl among them
    assert set(json.loads((data_run / "stages.json").read_text())) == {"curate", "tokenizer", "pack"}
    assert [name for name in ("train", "eval", "sample") if (data_run / name).exists()] == []


def test_resume_with_nothing_to_resume_says_it_starts_from_zero(data_run, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # the progress console wraps at the terminal width
    result = lmforge_run("run", "--run-dir", str(data_run), "--resume", "--set", "train.max_steps=2")
    assert result.returncode == 0, result.stderr
    assert f"nothing to resume in {data_run}: no checkpoint; training from step 0\n" in result.stderr
    assert json.loads((data_run / "train" / "summary.json").read_text())["resumed_from"] == 0
    assert [s for s, _ in train_losses(data_run)] == [1, 2]


def test_train_resume_with_nothing_to_resume_says_so(data_run, monkeypatch):
    from rich.console import Console

    from lmforge.cli import main
    from lmforge.core import progress

    shown = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=shown, width=1000, highlight=False))
    main(["train", "--run-dir", str(data_run), "--resume", "--set", "train.max_steps=1"])  # not run_cli: no --quiet
    assert f"nothing to resume in {data_run}: no checkpoint; training from step 0\n" in shown.getvalue()
    assert [s for s, _ in train_losses(data_run)] == [1]
