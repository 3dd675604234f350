"""Through the CLI: ``lmforge export --format hf`` of a trained debug run, transformers' greedy continuation of
that folder, the folder read back as ``generate --checkpoint`` (the same JSON as the checkpoint it came from),
``generate --json`` in the shape of ``sample/samples.json``, and bad Hugging Face folders refused in one line
with nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers

from cli_errors import assert_error_line, snapshot
from conftest import run_cli
from lmforge.command import resolve
from lmforge.evaluate.stage import stage_sample

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(debug_data_run, tmp_path_factory):
    """A debug run trained 2 steps, and its checkpoint exported with --format hf to the default place."""
    root = tmp_path_factory.mktemp("hf_cli") / "run"
    shutil.copytree(debug_data_run, root)
    assert run_cli("train", "--run-dir", str(root), "--set", "train.max_steps=2", "--set", "train.checkpoint_every=2")[0] == 0
    code, out, err = run_cli("export", "--run-dir", str(root), "--format", "hf")
    assert code == 0, err
    export = root / "export" / "step_00000002-hf"
    assert out.strip().endswith(f"-> {export}") and "exported step 2 (safetensors)" in out
    return root, export


def generate_json(root, *args):
    code, out, err = run_cli("generate", "--run-dir", str(root), "--json", *args)
    assert code == 0, err
    return json.loads(out)


def test_generate_json_is_what_the_sample_stage_writes(trained):
    root, _ = trained
    printed = generate_json(root)
    cfg, run = resolve(None, root, ())
    stage_sample(run, cfg, torch.device("cpu"))
    assert printed == json.loads(run.samples.read_text())
    assert set(printed["samples"][0]) == {"prompt", "completion", "tokens"}
    again = generate_json(root, "--prompt", "import os\n", "--max-new-tokens", "5", "--temperature", "0")
    assert again["generate"]["prompt"] == "import os\n" and again["generate"]["max_new_tokens"] == 5
    assert again["samples"][0]["prompt"] == "import os\n" and again["samples"][0]["tokens"] <= 5


def test_exported_folder_continues_like_lmforge_in_transformers_and_back(trained):
    root, export = trained
    greedy = ("--prompt", "def main(", "--temperature", "0", "--max-new-tokens", "16")
    ours = generate_json(root, *greedy)
    assert generate_json(root, *greedy, "--checkpoint", str(export)) == ours  # read back through the loader

    tokenizer = transformers.AutoTokenizer.from_pretrained(export, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(export, local_files_only=True).eval()
    prompt = tokenizer("def main(", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        new = model.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)[0, prompt.shape[1]:]
    completion = ours["samples"][0]["completion"]
    assert tokenizer.decode(new) == completion and len(new) == ours["samples"][0]["tokens"]


def bad_folder(export, tmp_path, case):
    """A copy of the good export broken one way; returns it and the line the loader prints."""
    folder = tmp_path / "bad"
    shutil.copytree(export, folder)
    config = json.loads((folder / "config.json").read_text())
    where = f"error: Hugging Face model {folder}"
    if case == "gpt2":
        config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
        line = f"{where}: config.json: model_type 'gpt2' (GPT2LMHeadModel) is not supported: lmforge imports llama and mistral models"
    elif case == "qwen2":
        config.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"])
        line = (f"{where}: config.json: model_type 'qwen2' is not supported: Qwen2 models have biases on their "
                "q/k/v projections, which the decoder does not have")
    elif case == "no-config":
        (folder / "config.json").unlink()
        return folder, f"{where}: config.json is missing"
    elif case == "unreadable-config":
        (folder / "config.json").write_bytes(b"\xff\xfe not json")
        return folder, None
    elif case == "missing-shard":
        model = transformers.AutoModelForCausalLM.from_pretrained(export, local_files_only=True)
        shutil.rmtree(folder)
        model.save_pretrained(folder, max_shard_size="100KB")
        shards = sorted(set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values()))
        (folder / shards[-1]).unlink()
        return folder, f"{where}: shard {shards[-1]} named in model.safetensors.index.json is missing"
    (folder / "config.json").write_text(json.dumps(config))
    return folder, line


CASES = ["gpt2", "qwen2", "no-config", "unreadable-config", "missing-shard"]


@pytest.mark.parametrize("case", CASES)
def test_bad_hf_folder_for_generate_is_refused_in_one_line(trained, tmp_path, case):
    root, export = trained
    folder, line = bad_folder(export, tmp_path, case)
    before = snapshot(root)
    code, out, err = run_cli("generate", "--run-dir", str(root), "--checkpoint", str(folder))
    if line is None:  # the JSON parser's own words follow; the line is checked up to them
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert err.startswith(f"error: Hugging Face model {folder}: config.json is unreadable (")
    else:
        assert_error_line(code, err, line)
    assert out == "" and snapshot(root) == before


@pytest.mark.parametrize("case", ["gpt2", "missing-shard"])
def test_bad_hf_folder_for_export_writes_nothing(trained, tmp_path, case):
    root, export = trained
    folder, line = bad_folder(export, tmp_path, case)
    output = tmp_path / "out"
    before = snapshot(folder)
    code, out, err = run_cli("export", "--checkpoint", str(folder), "--format", "hf", "--output", str(output))
    assert_error_line(code, err, line)
    assert out == "" and not output.exists() and snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]
