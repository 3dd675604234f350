"""A Llama-style decoder in one single-device file.

RMSNorm, rotary position embeddings (half-split convention, as in Hugging Face Llama), SwiGLU MLP and
grouped-query attention through ``scaled_dot_product_attention``. Parallelism is applied from outside.

Speed comes from doing less work, not different math: q/k/v come from one fused projection, gate/up
from another, SDPA shares k/v heads across query heads itself (``enable_gqa``), the loss never
materialises the full logits, and in eager mode the elementwise parts run as hand-written
forward/backward pairs (``fused_ops``). No biases, no dtype casts.

Parameter names make weight-decay grouping a matter of string tests: every norm weight contains
``norm`` and the token embedding contains ``embed``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.config import ModelDims
from lmforge.model.fused_ops import IGNORE_INDEX, linear_cross_entropy, rms_norm, rotary_qkv, swiglu


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, over the last dimension."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rotary_tables(head_dim: int, max_len: int, theta: float,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (max_len, head_dim // 2): angle = position * theta^(-2i / head_dim), computed
    in fp64 and rounded to ``dtype`` (the decoder's buffers are fp32; fp64 ones for fp64 comparisons)."""
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (D/2,)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (L, D/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


class KVCache:
    """Keys and values of every layer, preallocated to ``max_len`` positions, for generation."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.keys = keys  # per layer: (B, n_kv_heads, max_len, head_dim)
        self.values = values

    @classmethod
    def allocate(cls, dims: ModelDims, batch_size: int, max_len: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> KVCache:
        if max_len > dims.context_length:
            raise ValueError(f"cache length {max_len} exceeds the context length {dims.context_length}")
        shape = (batch_size, dims.n_kv_heads, max_len, dims.head_dim)
        return cls([torch.zeros(shape, device=device, dtype=dtype) for _ in range(dims.n_layers)],
                   [torch.zeros(shape, device=device, dtype=dtype) for _ in range(dims.n_layers)])

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]


class Attention(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = dims.n_heads, dims.n_kv_heads, dims.head_dim
        self.dropout = dims.dropout
        qkv_dim = (dims.n_heads + 2 * dims.n_kv_heads) * dims.head_dim
        self.qkv_proj = nn.Linear(dims.d_model, qkv_dim, bias=False)
        self.out_proj = nn.Linear(dims.n_heads * dims.head_dim, dims.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None, start_pos: int = 0,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, K, D = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = rotary_qkv(self.qkv_proj(x), cos, sin, H, K)  # (B, H, T, D), (B, K, T, D), (B, K, T, D)

        mask, is_causal = None, True
        if attn_mask is not None:  # packed rows: who attends to whom is given (B, 1, T, T)
            mask, is_causal = attn_mask, False
        elif cache is not None:
            cache_k, cache_v = cache
            end = start_pos + T
            cache_k[:, :, start_pos:end] = k
            cache_v[:, :, start_pos:end] = v
            k, v = cache_k[:, :, :end], cache_v[:, :, :end]  # (B, K, end, D)
            if start_pos > 0:  # queries sit at the end: is_causal would align them to the start
                is_causal = False
                if T > 1:
                    mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(start_pos)  # (T, end)

        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                           is_causal=is_causal, enable_gqa=K != H)  # (B, H, T, D)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, H * D))  # (B, T, C)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), with gate and up as one fused projection."""

    def __init__(self, dims: ModelDims):
        super().__init__()
        self.gate_up_proj = nn.Linear(dims.d_model, 2 * dims.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(dims.ffn_hidden, dims.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_up_proj(x)))  # (B, T, 2F) -> (B, T, F) -> (B, T, C)


class Block(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        self.attn_norm = RMSNorm(dims.d_model, dims.norm_eps)
        self.attn = Attention(dims)
        self.mlp_norm = RMSNorm(dims.d_model, dims.norm_eps)
        self.mlp = SwiGLU(dims)
        self.residual_dropout = nn.Dropout(dims.dropout) if dims.dropout > 0 else nn.Identity()

    def forward(self, x, cos, sin, cache=None, start_pos: int = 0, attn_mask=None):
        # attn_mask by keyword: tensor parallelism prepares the positional inputs (x, cos, sin, cache, start_pos)
        x = x + self.residual_dropout(self.attn(self.attn_norm(x), cos, sin, cache, start_pos, attn_mask=attn_mask))
        return x + self.residual_dropout(self.mlp(self.mlp_norm(x)))  # (B, T, C)


class Decoder(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        self.dims = dims
        self.embed_tokens = nn.Embedding(dims.vocab_size, dims.d_model)
        self.embed_dropout = nn.Dropout(dims.dropout) if dims.dropout > 0 else nn.Identity()
        self.layers = nn.ModuleList(Block(dims) for _ in range(dims.n_layers))
        self.final_norm = RMSNorm(dims.d_model, dims.norm_eps)
        self.lm_head = nn.Linear(dims.d_model, dims.vocab_size, bias=False)
        if dims.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rotary_tables(dims.head_dim, dims.context_length, dims.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (context_length, D/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @classmethod
    def uninitialized(cls, dims: ModelDims) -> "Decoder":
        """A Decoder whose weights are allocated but not initialized, for a loader that fills every one of them:
        the random init (two passes over the weights) is most of the time of loading a large model otherwise."""
        with torch.device("meta"):
            model = cls(dims)
        model = model.to_empty(device="cpu")  # a new parameter per module: tied weights are tied again
        if dims.tie_embeddings:
            model.lm_head.weight = model.embed_tokens.weight
        model.rope_cos, model.rope_sin = rotary_tables(dims.head_dim, dims.context_length, dims.rope_theta)
        return model

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """normal(init_std) everywhere; residual output projections scaled by 1/sqrt(2 n_layers) (GPT-2)."""
        std = self.dims.init_std
        for name, p in self.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif name.endswith(("out_proj.weight", "down_proj.weight")):
                p.normal_(0.0, std / math.sqrt(2 * self.dims.n_layers))
            else:
                p.normal_(0.0, std)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) without targets; with targets, the mean cross-entropy over positions whose
        target is not -100."""
        T = tokens.shape[1]
        if T > self.dims.context_length:
            raise ValueError(f"sequence of {T} tokens exceeds the context length {self.dims.context_length}")
        x = self.embed_dropout(self.embed_tokens(tokens))  # (B, T, C)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, D/2)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.head(x, targets)

    def head(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Final norm and LM head over the last block's output (B, T, C): logits (B, T, V), or with targets
        the mean cross-entropy (a method of its own so that ``train.compile`` can compile it, as the blocks)."""
        x = self.final_norm(x)  # (B, T, C)
        if targets is None:
            return self.lm_head(x)  # (B, T, V)
        if type(self.lm_head) is not nn.Linear:  # wrapped from outside (adapters, parallelism): its own forward
            logits = self.lm_head(x)
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        return linear_cross_entropy(x.flatten(0, 1), self.lm_head.weight, targets.flatten())

    def forward_cached(self, tokens: torch.Tensor, cache: KVCache, start_pos: int) -> torch.Tensor:
        """Logits (B, T, V) for ``tokens`` at positions start_pos..start_pos+T-1, attending to the cache
        (filled for earlier positions) and writing this step's keys and values into it."""
        T = tokens.shape[1]
        if start_pos + T > cache.max_len:
            raise ValueError(f"positions up to {start_pos + T} exceed the cache length {cache.max_len}")
        x = self.embed_tokens(tokens)  # (B, T, C)
        cos, sin = self.rope_cos[start_pos:start_pos + T], self.rope_sin[start_pos:start_pos + T]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, (cache.keys[i], cache.values[i]), start_pos)
        return self.lm_head(self.final_norm(x))  # (B, T, V)

    def forward_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states (B, T, C) from input embeddings ``x`` (B, T, C) given in place of the token
        lookup (what an attack in embedding space perturbs); ``lm_head`` is left to the caller."""
        T = x.shape[1]
        if T > self.dims.context_length:
            raise ValueError(f"sequence of {T} tokens exceeds the context length {self.dims.context_length}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, D/2)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.final_norm(x)

    def forward_packed(self, tokens: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states (B, T, C) of packed rows: token t of row b sits at position
        ``positions[b, t]`` (its rotary angle) and attends to the tokens ``attn_mask[b, 0, t]`` allows (bool,
        (B, 1, T, T)). Several sequences that share a prefix then run as one row (the prefix once, each
        continuation after it attending to the prefix and itself); ``lm_head`` is left to the caller, so
        that it runs only where a prediction is needed."""
        if int(positions.max()) >= self.dims.context_length:
            raise ValueError(f"position {int(positions.max())} exceeds the context length {self.dims.context_length}")
        x = self.embed_tokens(tokens)  # (B, T, C)
        cos, sin = self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)  # (B, 1, T, D/2)
        for layer in self.layers:
            x = layer(x, cos, sin, attn_mask=attn_mask)
        return self.final_norm(x)


def _matmul_parameters(dims: ModelDims) -> tuple[int, int]:
    """(weights of the linear layers in all blocks, weights of the LM head)."""
    qkv = dims.d_model * (dims.n_heads + 2 * dims.n_kv_heads) * dims.head_dim
    out = dims.n_heads * dims.head_dim * dims.d_model
    mlp = 3 * dims.d_model * dims.ffn_hidden
    return dims.n_layers * (qkv + out + mlp), dims.vocab_size * dims.d_model


def count_parameters(model_or_dims: nn.Module | ModelDims, non_embedding: bool = False) -> int:
    """Parameters of a model (shared tensors counted once), or of the model ``dims`` would build.

    ``non_embedding`` leaves out the token embedding table; with tied embeddings that table is also
    the LM head, so it is left out too (the usual convention of scaling-law papers).
    """
    if isinstance(model_or_dims, ModelDims):
        dims = model_or_dims
        blocks, head = _matmul_parameters(dims)
        norms = (2 * dims.n_layers + 1) * dims.d_model
        embedding = dims.vocab_size * dims.d_model
        total = blocks + norms + embedding + (0 if dims.tie_embeddings else head)
        return total - embedding if non_embedding else total
    # named_parameters() yields a shared (tied) tensor once, under its first name
    return sum(p.numel() for name, p in model_or_dims.named_parameters()
               if not (non_embedding and "embed" in name))


def training_flops_per_token(dims: ModelDims, seq_len: int) -> float:
    """FLOPs to train on one token (forward + backward), as in PaLM (appendix B) and Chinchilla:

        6 * N  +  12 * n_layers * d_model * seq_len

    N counts the weights used in matrix multiplies: every linear layer in the blocks plus the LM head
    (the embedding lookup and the norms are not matmuls). The second term is the attention scores
    (q k^T) and the weighted sum of values, 2 * 2 * seq_len * d_model FLOPs per layer forward, times 3
    for forward + backward; like PaLM it ignores the causal mask.
    """
    blocks, head = _matmul_parameters(dims)
    return 6.0 * (blocks + head) + 12.0 * dims.n_layers * dims.d_model * seq_len
