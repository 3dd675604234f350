"""Quantized linear layers for CPU inference, and the decoder with its block linear layers swapped for them.

- ``Int8Linear``: int8 weights, symmetric per output channel; activations quantized per tensor at run time
  (dynamic), through torch's quantized CPU kernels (``quantized::linear_dynamic``, fbgemm/oneDNN: what
  ``torch.ao.quantization.quantize_dynamic`` runs, without its deprecated module swap) with ``reduce_range``
  (7-bit activations: fbgemm's 16-bit accumulation would overflow otherwise).
- ``Int4Linear``: int4 weights, asymmetric per group of ``group_size`` inputs (bf16 scales and zeros), through torch's
  ``_weight_int4pack_mm_for_cpu`` (gpt-fast's CPU path; bf16 activations). Its convention, which the stored
  scales and zeros follow: ``w = (q - 8) * scale + zero`` for ``q`` in 0..15.

The token table and the LM head (one tensor when tied) are int8 per row in both methods. What is stored
(safetensors, no pickle) is the integer weights with their scales (and zeros), never the kernels'
packed layouts, which depend on the CPU: those are made on first use. Quantizing and packing is written here
because no library does it for this model's fused projections without its deprecated or GPU-only paths.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from lmforge.model.decoder import Decoder

INT4_GROUP_SIZES = (32, 64, 128, 256)


def block_linear_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.startswith("layers.")]


class Int8Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features))
        self._packed = None

    @classmethod
    @torch.no_grad()
    def of(cls, linear: nn.Linear) -> "Int8Linear":
        w = linear.weight.detach().float()
        q = cls(w.shape[1], w.shape[0])
        q.scales.copy_((w.abs().amax(1) / 127).clamp(min=1e-12))
        q.qweight.copy_(torch.round(w / q.scales[:, None]).clamp(-127, 127).to(torch.int8))
        return q

    def dequantized(self) -> torch.Tensor:
        return self.qweight.float() * self.scales[:, None]

    def _pack(self):
        with warnings.catch_warnings():  # torch warns that its quantized tensor dtypes are deprecated
            warnings.simplefilter("ignore")
            q = torch._make_per_channel_quantized_tensor(self.qweight, self.scales.double(),
                                                        torch.zeros(self.out_features, dtype=torch.long), 0)
            return torch.ops.quantized.linear_prepack(q, None)

    def _load_from_state_dict(self, *args, **kwargs):
        self._packed = None  # new weights: pack again
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            self._packed = self._pack()
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, self.in_features).float().contiguous(), self._packed, True)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


class Int8Embedding(nn.Module):
    """An int8 token table (symmetric per row): a lookup dequantizes the rows it reads. With tied embeddings it
    holds the LM head's ``Int8Linear`` buffers themselves (one table, as in the fp32 model)."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor):
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.qweight[ids].float() * self.scales[ids][..., None]  # (..., C)


class Int4Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, group_size: int):
        super().__init__()
        if in_features % group_size:
            raise ValueError(f"group size {group_size} does not divide the input dimension {in_features}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))  # 2 per byte
        # bf16: what the kernel computes with (fp32 would double their bytes for nothing)
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.bfloat16))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=torch.bfloat16))
        self._packed = None

    @classmethod
    @torch.no_grad()
    def of(cls, linear: nn.Linear, group_size: int) -> "Int4Linear":
        w = linear.weight.detach().float()
        q = cls(w.shape[1], w.shape[0], group_size)
        grouped = w.reshape(w.shape[0], -1, group_size)  # (N, G, g)
        low, high = grouped.amin(2), grouped.amax(2)
        scale = ((high - low) / 15).clamp(min=1e-12).to(torch.bfloat16).float()  # as stored
        zero = (low + 8 * scale).to(torch.bfloat16).float()  # the kernel's zero: w = (q - 8) * scale + zero
        ints = torch.round((grouped - (zero - 8 * scale)[..., None]) / scale[..., None]).clamp(0, 15)
        ints = ints.to(torch.uint8).reshape(w.shape)
        q.scales.copy_(scale)
        q.zeros.copy_(zero)
        q.qweight.copy_(ints[:, 0::2] << 4 | ints[:, 1::2])
        return q

    def ints(self) -> torch.Tensor:
        """(out, in) int32 in 0..15."""
        out = torch.empty(self.out_features, self.in_features, dtype=torch.int32)
        out[:, 0::2] = (self.qweight >> 4).to(torch.int32)
        out[:, 1::2] = (self.qweight & 0xF).to(torch.int32)
        return out

    def dequantized(self) -> torch.Tensor:
        g = self.group_size
        q = self.ints().float().reshape(self.out_features, -1, g)
        scales, zeros = self.scales.float()[..., None], self.zeros.float()[..., None]
        return ((q - 8) * scales + zeros).reshape(self.out_features, self.in_features)

    def _load_from_state_dict(self, *args, **kwargs):
        self._packed = None
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self.ints(), 1)
            sz = torch.stack([self.scales, self.zeros], dim=2).transpose(0, 1).contiguous()
            self._packed = (packed, sz)
        packed, sz = self._packed
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous(),
                                                       packed, self.group_size, sz)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def check_group_size(model: nn.Module, group_size: int) -> None:
    """Every block linear layer's input dimension must be a multiple of ``group_size``."""
    for name in block_linear_names(model):
        width = model.get_submodule(name).in_features
        if width % group_size:
            raise ValueError(f"group size {group_size} does not divide the input dimension {width} of {name}")


def _swap(model: nn.Module, make) -> None:
    for name in block_linear_names(model):
        parent, leaf = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), leaf, make(model.get_submodule(name)))


def _quantize_embeddings(model: Decoder) -> None:
    """The LM head and the token table in int8 (the norms stay fp32): the head is a large share of a small
    model's decode work and of its bytes, and int4 there costs too much quality."""
    head = Int8Linear.of(model.lm_head)
    if model.dims.tie_embeddings:
        table = Int8Embedding(head.qweight, head.scales)  # the same tensors: one table
    else:
        separate = Int8Linear.of(_as_linear(model.embed_tokens.weight))
        table = Int8Embedding(separate.qweight, separate.scales)
    model.lm_head, model.embed_tokens = head, table


def _as_linear(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    return linear


def quantize(model: Decoder, method: str, group_size: int | None = None) -> Decoder:
    """``model`` quantized in place: its block linear layers in int8 or int4, its token table and LM head in int8
    (the norms stay fp32)."""
    if method == "int4":
        check_group_size(model, group_size)
        _swap(model, lambda linear: Int4Linear.of(linear, group_size))
    else:
        _swap(model, Int8Linear.of)
    _quantize_embeddings(model)
    return model.eval()


TIED = ("lm_head.qweight", "lm_head.scales")  # with tied embeddings: the token table's own tensors


def quantized_state(model: Decoder) -> dict[str, torch.Tensor]:
    """What a quantized decoder stores (a tied head once, as the token table)."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.dims.tie_embeddings:
        for key in TIED:
            state.pop(key)
    return state


def quantized_decoder(dims, config: dict, state: dict[str, torch.Tensor]) -> Decoder:
    """A decoder of ``dims`` quantized as ``config`` ({"method", "group_size"}) holding ``state``."""
    model = Decoder(dims)
    method, group = config["method"], config.get("group_size")
    make = (lambda l: Int4Linear(l.in_features, l.out_features, group)) if method == "int4" else \
        (lambda l: Int8Linear(l.in_features, l.out_features))
    _swap(model, make)
    head = Int8Linear(dims.d_model, dims.vocab_size)
    if dims.tie_embeddings:
        table = Int8Embedding(head.qweight, head.scales)
    else:
        table = Int8Embedding(torch.zeros(dims.vocab_size, dims.d_model, dtype=torch.int8), torch.ones(dims.vocab_size))
    model.lm_head, model.embed_tokens = head, table
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = set(TIED) if dims.tie_embeddings else set()
    if unexpected or set(missing) - allowed:
        raise ValueError(f"missing {sorted(set(missing) - allowed)[:3]}, unexpected {sorted(unexpected)[:3]}")
    return model.eval()
