"""``lmforge export``: any checkpoint (sharded DCP or safetensors) -> one safetensors file of whole tensors
(``--format hf``: a Hugging Face folder, ``checkpoint/hf_export.py``).

The tensors carry canonical names, the same whatever layout trained them: q/k/v and gate/up as separate
projections (``layers.N.attn.q_proj.weight``, ``layers.N.mlp.gate_proj.weight``, Hugging Face Llama's
names); with tied embeddings the table is stored once, as ``embed_tokens.weight``. The file's metadata
holds the model dimensions (``lmforge.model``, JSON) and the step; a classifier's, its labels in the order of
its head's rows (``lmforge.labels``, JSON; its head untied, stored apart from the embeddings). The checkpoint's
integrity manifest
is checked before anything is read; the file is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.rundir import RunDir


def default_output(checkpoint: Path, fmt: str = "safetensors") -> Path:
    """``<run>/export/step_N.safetensors`` (``--format hf``: the folder ``<run>/export/step_N-hf``) for a run's
    checkpoint, else beside the checkpoint."""
    name = f"{checkpoint.stem if checkpoint.is_file() else checkpoint.name}-hf" if fmt == "hf" \
        else f"{checkpoint.name}.safetensors"
    if len(checkpoint.parents) > 2 and RunDir(checkpoint.parents[2]).checkpoints == checkpoint.parent:
        return RunDir(checkpoint.parents[2]).stage_dir("export") / name
    return checkpoint.with_name(name)


def check_output(output: Path, fmt: str = "safetensors") -> None:
    """Refuse, before any checkpoint is read, an output that lies under a file, or names a folder for a file
    (``hf``: a file, or a folder with other things in it; an earlier HF export is replaced whole)."""
    from lmforge.errors import LmforgeError

    if fmt != "hf" and output.is_dir():
        raise LmforgeError(f"export --output {output}: is a folder; name the file to write")
    if fmt == "hf" and output.exists() and not output.is_dir():
        raise LmforgeError(f"export --output {output}: is a file; name a folder to write")
    if fmt == "hf" and output.is_dir() and any(output.iterdir()) and not (output / "config.json").is_file():
        raise LmforgeError(f"export --output {output}: a folder with other files in it; name a new folder")
    parent = next(p for p in output.absolute().parents if p.exists())  # the nearest part that exists
    if not parent.is_dir():
        raise LmforgeError(f"export --output {output}: {parent} is a file, not a folder")


def export_checkpoint(checkpoint: Path, output: Path, seal=None) -> dict:
    """Consolidate ``checkpoint`` into ``output`` (encrypted and/or signed with ``seal``, a
    ``lmforge.secure.seal.Seal``); returns what was written."""
    from lmforge.checkpoint.load import checkpoint_labels, consolidated_weights, model_dims

    check_output(output)
    weights, state = consolidated_weights(checkpoint)
    write_exported(output, weights, model_dims(checkpoint, state).to_dict(), state["step"],
                   state["resume_key"].get("seq_len"), state.get("format", "safetensors"),
                   checkpoint_labels(checkpoint), seal, state["resume_key"].get("adversarial"))
    return {"output": str(output), "tensors": len(weights), "parameters": sum(t.numel() for t in weights.values()),
            "step": state["step"], "source_format": state.get("format", "safetensors")}


def exported_metadata(model: dict, step: int, seq_len: int | None, source_format: str,
                      labels: list[str] | None = None, adversarial: dict | None = None) -> dict[str, str]:
    """The safetensors metadata of an exported file: what ``checkpoint.load`` reads the model from."""
    from lmforge.checkpoint.load import ADVERSARIAL, LABELS

    metadata = {"format": "pt", "lmforge.layout": "canonical", "lmforge.model": json.dumps(model),
                "lmforge.step": str(step), "lmforge.source_format": source_format}
    if seq_len is not None:  # what the model was trained with (evaluation scores at it)
        metadata["lmforge.seq_len"] = str(seq_len)
    if labels is not None:  # a classifier
        metadata[LABELS] = json.dumps(list(labels))
    if adversarial is not None:  # how it was trained adversarially (the robustness report shows it)
        metadata[ADVERSARIAL] = json.dumps(adversarial)
    return metadata


def write_exported(output: Path, weights: dict, model: dict, step: int, seq_len: int | None, source_format: str,
                   labels: list[str] | None = None, seal=None, adversarial: dict | None = None) -> None:
    """One safetensors file of canonical ``weights`` with the metadata every stage's loader reads (a
    classifier's: its ``labels``, its head ``lm_head.weight`` of one row per label), atomically. With ``seal``
    (``lmforge.secure.seal.Seal``): serialized in memory and written encrypted (no plaintext on disk) and/or
    signed (``<output>.sig``)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from lmforge.checkpoint.formats import safetensors_pieces
    from lmforge.core.atomic import atomic_write_with
    from lmforge.errors import LmforgeError

    metadata = exported_metadata(model, step, seq_len, source_format, labels, adversarial)
    try:
        if seal is None:
            atomic_write_with(output, lambda tmp: save_file(weights, str(tmp), metadata=metadata))
        else:
            _, written = seal.write_file(output, safetensors_pieces(weights, metadata), plain_digest=False)
            seal.sign(output, {".": written})
    except (OSError, SafetensorError) as exc:  # nothing is left behind: the temporary file is removed
        raise LmforgeError(f"export --output {output}: cannot write there ({getattr(exc, 'strerror', None) or exc})") from exc


def write_quantized(output: Path, model, step: int, seq_len: int | None, config: dict) -> None:
    """A quantized decoder (``model.quantized``) as one safetensors file: its integer weights, scales and zeros
    and the fp32 rest under the decoder's own names, with ``lmforge.quantization`` ({"method", "group_size"}) in
    the metadata beside what ``write_exported`` records; the loader rebuilds the quantized decoder from it."""
    from safetensors.torch import save_file

    from lmforge.core.atomic import atomic_write_with
    from lmforge.model.quantized import quantized_state

    metadata = exported_metadata(model.dims.to_dict(), step, seq_len, f"quantized-{config['method']}")
    metadata["lmforge.quantization"] = json.dumps(config)
    metadata["lmforge.layout"] = "quantized"
    state = quantized_state(model)
    atomic_write_with(output, lambda tmp: save_file(state, str(tmp), metadata=metadata))
