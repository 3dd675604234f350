"""Weights read and written one tensor at a time, so that a merge holds about one tensor per model.

``WeightSource`` reads a model's weights under canonical names (``model.fused_layout``) lazily: an exported
file and a Hugging Face folder store them (HF under its own names, ``model.hf_names``); a checkpoint folder
stores the fused q/k/v and gate/up projections, whose canonical parts are row slices that safetensors reads
alone. ``write_streamed`` writes a safetensors file tensor by tensor (by hand because safetensors' writer
takes every tensor at once): the header first, from the shapes, then each tensor's bytes as it is made.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from lmforge.checkpoint.formats import MODEL_FILE, read_state
from lmforge.checkpoint.hf_import import IGNORED, hf_weight_files, is_hf_folder
from lmforge.checkpoint.load import checkpoint_dims
from lmforge.checkpoint.sharded import DCP_FORMAT
from lmforge.core.atomic import atomic_write_with
from lmforge.errors import CheckpointError
from lmforge.model.config import ModelDims
from lmforge.model.decoder import Decoder
from lmforge.model.fused_layout import model_views, parts_of
from lmforge.model.hf_names import canonical_name


def canonical_shapes(dims: ModelDims) -> dict[str, tuple[int, ...]]:
    """Every canonical weight of ``Decoder(dims)`` with its shape, in the model's order (no tensor made)."""
    with torch.device("meta"):
        return {name: tuple(view.shape) for name, view in model_views(Decoder(dims), dims).items()}


class WeightSource:
    """One model's weights by canonical name, each read when asked for (float32)."""

    def __init__(self, path: Path, where: str):
        self.path, self.where = Path(path), where
        self.dims = checkpoint_dims(self.path)
        self._index: dict[str, tuple[Path, str, tuple[int, int] | None]] = {}
        if self.path.is_file():
            self._add(self.path, lambda name: [(name, None)])
        elif is_hf_folder(self.path):
            for file in hf_weight_files(self.path):
                self._add(file, self._hf_entries)
        else:
            state = read_state(self.path, verify=True)  # the integrity manifest, before any tensor is read
            if state.get("format") == DCP_FORMAT:
                raise CheckpointError(f"{where} {self.path}: a sharded (DCP) checkpoint; export it first "
                                      "(lmforge export --checkpoint ...) and merge the exported file")
            self._add(self.path / MODEL_FILE, self._fused_entries)
        expected = canonical_shapes(self.dims)
        if set(self._index) != set(expected):
            missing, extra = sorted(set(expected) - set(self._index)), sorted(set(self._index) - set(expected))
            raise CheckpointError(f"{where} {self.path}: weights do not fit the model it describes (missing "
                                  f"{missing[:3]}, unexpected {extra[:3]})")

    def _add(self, file: Path, entries) -> None:
        try:
            with safe_open(str(file), framework="pt") as f:
                names = list(f.keys())
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{self.where} {file}: not a readable safetensors file "
                                  f"({str(exc).splitlines()[0]})") from None
        tied = self.dims.tie_embeddings
        for name in names:
            if tied and name.endswith("lm_head.weight") and len(names) > 1 and any(n.endswith("embed_tokens.weight") for n in names):
                continue  # the tied head is the embedding
            for canonical, rows in entries(name):
                if tied and canonical == "lm_head.weight":
                    canonical = "embed_tokens.weight"  # only the head of the tied pair was kept
                self._index[canonical] = (file, name, rows)

    def _hf_entries(self, name: str):
        if name.endswith(IGNORED):
            return []
        try:
            return [(canonical_name(name), None)]
        except KeyError:
            raise CheckpointError(f"{self.where} {self.path}: unexpected tensor {name} (the Llama decoder has no "
                                  "such weight)") from None

    def _fused_entries(self, name: str):
        parts = parts_of(name, self.dims)
        if parts is None:
            return [(name, None)]
        out, start = [], 0
        for part, rows in parts:
            out.append((part, (start, start + rows)))
            start += rows
        return out

    def tensor(self, name: str) -> torch.Tensor:
        file, stored, rows = self._index[name]
        with safe_open(str(file), framework="pt") as f:
            value = f.get_tensor(stored) if rows is None else f.get_slice(stored)[rows[0]:rows[1]]
        return value.float()


def write_streamed(output: Path, shapes: dict[str, tuple[int, ...]], make: Callable[[str], torch.Tensor],
                   metadata: dict[str, str], on_tensor: Callable[[], None] | None = None) -> None:
    """Write a safetensors file of float32 tensors ``make(name)`` for every name of ``shapes``, one at a time,
    atomically (a temporary name, fsync, rename)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps({"__metadata__": metadata, **header}, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name, shape in shapes.items():
                tensor = make(name).to(torch.float32).contiguous()
                if tuple(tensor.shape) != shape:
                    raise ValueError(f"{name}: made {tuple(tensor.shape)}, the header says {shape}")
                f.write(memoryview(tensor.numpy()).cast("B"))
                if on_tensor is not None:
                    on_tensor()
            f.flush()
            os.fsync(f.fileno())

    atomic_write_with(output, write)
