"""Hand-written forward/backward pairs for the decoder's eager mode, each equal to a plain formula.

Why hand-written: in eager PyTorch every elementwise op is a pass over memory plus a fresh tensor, and
autograd's backward of slicing / chunking / composite norms adds zero-fills, copies and concatenations.
These functions do the same math in fewer passes and write gradients straight into the layout the
next matmul wants. Under ``torch.compile`` the plain formulas are used instead (the compiler fuses
them itself), and the fused RMSNorm and loss step aside for low-precision / autocast inputs.
Tests compare every function here against its plain formula, values and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _use_plain(*tensors: torch.Tensor) -> bool:
    """Plain formulas under torch.compile, and for tensor subclasses (DTensor from tensor parallelism)."""
    return torch.compiler.is_compiling() or _subclass(*tensors)


def _subclass(*tensors: torch.Tensor) -> bool:
    return any(type(t) not in (torch.Tensor, torch.nn.Parameter) for t in tensors)


# ----- rotary position embedding on the fused q/k/v projection --------------------------------------


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + D/2]) by the angles in cos/sin: x (..., T, D), cos/sin (T, D/2).

    Half-split convention, as Hugging Face Llama's ``rotate_half``: its checkpoints load without
    permuting q/k weights. The plain formula, used under torch.compile and as the tests' reference.
    """
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def _rotate_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """apply_rotary(x) written into ``out`` (any layout) with four multiply(-add) kernels, no temporaries."""
    x1, x2 = x.chunk(2, dim=-1)
    out1, out2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=out1).addcmul_(x2, sin, value=-1.0)  # x1 cos - x2 sin
    torch.mul(x2, cos, out=out2).addcmul_(x1, sin)  # x2 cos + x1 sin
    return out


def _rotary_qkv_forward(qkv, cos, sin, H: int, K: int):
    B, T, _ = qkv.shape
    D = 2 * cos.shape[-1]
    heads = qkv.view(B, T, H + 2 * K, D).transpose(1, 2)  # (B, H + 2K, T, D), a view
    q = _rotate_into(qkv.new_empty(B, H, T, D), heads[:, :H], cos, sin)
    k = _rotate_into(qkv.new_empty(B, K, T, D), heads[:, H:H + K], cos, sin)
    return q, k, heads[:, H + K:].contiguous()


class _RotaryQKV(torch.autograd.Function):
    """(B, T, (H + 2K) D) projection -> rotated q (B, H, T, D), rotated k (B, K, T, D), v (B, K, T, D).

    The backward of a rotation is the rotation by minus the angle, so nothing but cos/sin is saved, and
    the three gradients are written straight into one (B, T, (H + 2K) D) tensor: the layout the
    projection's backward matmul reads without a copy.
    """

    @staticmethod
    def forward(ctx, qkv, cos, sin, n_heads, n_kv_heads):
        ctx.save_for_backward(cos, sin)
        ctx.n_heads = (n_heads, n_kv_heads)
        return _rotary_qkv_forward(qkv, cos, sin, n_heads, n_kv_heads)

    @staticmethod
    def backward(ctx, grad_q, grad_k, grad_v):
        cos, sin = ctx.saved_tensors
        H, K = ctx.n_heads
        B, _, T, D = grad_q.shape
        grad = grad_q.new_empty(B, T, H + 2 * K, D)
        heads = grad.transpose(1, 2)  # (B, H + 2K, T, D), a view of grad
        _rotate_into(heads[:, :H], grad_q, cos, -sin)
        _rotate_into(heads[:, H:H + K], grad_k, cos, -sin)
        heads[:, H + K:].copy_(grad_v)
        return grad.view(B, T, -1), None, None, None, None


def rotary_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_heads: int, n_kv_heads: int):
    """Split the fused projection output (B, T, (H + 2K) D) into heads and rotate q and k.

    Returns q (B, H, T, D), k (B, K, T, D), v (B, K, T, D); cos/sin are (T, D/2).
    """
    if _use_plain(qkv):
        B, T, _ = qkv.shape
        heads = qkv.view(B, T, n_heads + 2 * n_kv_heads, -1).transpose(1, 2)  # (B, H + 2K, T, D)
        q, k, v = heads.split([n_heads, n_kv_heads, n_kv_heads], dim=1)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v
    if not torch.is_grad_enabled() or not qkv.requires_grad:  # the same kernels without autograd's bookkeeping
        return _rotary_qkv_forward(qkv, cos, sin, n_heads, n_kv_heads)
    return _RotaryQKV.apply(qkv, cos, sin, n_heads, n_kv_heads)


# ----- RMSNorm ---------------------------------------------------------------------------------------


class _RMSNorm(torch.autograd.Function):
    """y = x * r * w with r = 1 / sqrt(mean(x^2) + eps), saving only x and r (B, T, 1)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        ctx.save_for_backward(x, weight, rstd)
        return torch.mul(x, rstd).mul_(weight)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, rstd = ctx.saved_tensors
        x_hat = x * rstd  # (..., C)
        grad_weight = (grad_y * x_hat).flatten(0, -2).sum(dim=0)  # (C,)
        grad_x_hat = grad_y * weight
        # d(x * r)/dx applied to g: r * (g - x_hat * mean(g * x_hat))
        mean_dot = (grad_x_hat * x_hat).mean(dim=-1, keepdim=True)  # (..., 1)
        return grad_x_hat.sub_(x_hat.mul_(mean_dot)).mul_(rstd), grad_weight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2, last dim) + eps) * weight."""
    low_precision = x.dtype not in (torch.float32, torch.float64)
    no_backward = not torch.is_grad_enabled() or not (x.requires_grad or weight.requires_grad)
    if _use_plain(x, weight) or low_precision or torch.is_autocast_enabled(x.device.type) or no_backward:
        # upcasts low precision itself; without a backward to save memory for, aten's one kernel is faster
        # (decoding one token: about half the time of the autograd function's four)
        return F.rms_norm(x, weight.shape, weight, eps)
    return _RMSNorm.apply(x, weight, eps)


# ----- SwiGLU ------------------------------------------------------------------------------------------


def swiglu_reference(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class _SwiGLU(torch.autograd.Function):
    """silu(gate) * up from the fused (..., 2F) projection; saves only its input, and writes the
    gradient of gate and up into one (..., 2F) tensor instead of concatenating two."""

    @staticmethod
    def forward(ctx, gate_up):
        ctx.save_for_backward(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx, grad_h):
        (gate_up,) = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        grad = torch.empty_like(gate_up)
        grad_gate, grad_up = grad.chunk(2, dim=-1)
        torch.mul(F.silu(gate), grad_h, out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad_h * up, gate, grad_input=grad_gate)
        return grad


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, where gate_up = cat(gate, up) on the last dimension: (..., 2F) -> (..., F)."""
    return swiglu_reference(gate_up) if _use_plain(gate_up) else _SwiGLU.apply(gate_up)


# ----- LM head + cross-entropy ---------------------------------------------------------------------


def loss_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk of the fused loss's logits: about 16 MiB in fp32 (reused memory, where a 2048 x 8192
    logits tensor is 64 MiB of fresh, page-faulting memory every step), and never under 256 rows, below
    which the (rows, C) x (C, V) matmuls slow down on CPU. The memory estimator counts by this rule too."""
    return max(256, (4 << 20) // vocab_size)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``x @ weight.T`` against ``targets``, one chunk of rows at a time.

    The gradients are computed in the forward pass while each chunk of logits is at hand
    (d loss / d logits = (softmax - one_hot) / number of valid targets), so the full (N, V) logits,
    log-probabilities and their gradient never exist. Same FLOPs as the plain path.
    """

    @staticmethod
    def forward(ctx, x, weight, targets):
        N, V = x.shape[0], weight.shape[0]
        rows = loss_chunk_rows(V)
        valid = targets != IGNORE_INDEX  # (N,)
        scale = valid.to(x.dtype) / valid.sum()  # (N,): d loss / d (loss of each row)
        safe_targets = targets.masked_fill(~valid, 0)[:, None]  # (N, 1)
        grad_x, grad_w = x.new_empty(x.shape), torch.zeros_like(weight)
        buffer = x.new_empty(min(rows, N), V)
        loss = x.new_zeros(())
        for start in range(0, N, rows):
            end = min(N, start + rows)
            x_c, t_c, s_c = x[start:end], safe_targets[start:end], scale[start:end, None]
            logits = torch.mm(x_c, weight.t(), out=buffer[: end - start])  # (n, V)
            logprobs = torch.log_softmax(logits, dim=-1, out=logits)
            loss -= (logprobs.gather(1, t_c) * s_c).sum()
            grad_logits = logprobs.exp_()  # softmax
            grad_logits.scatter_add_(1, t_c, torch.full_like(s_c, -1.0)).mul_(s_c)  # (softmax - one_hot) * scale
            torch.mm(grad_logits, weight, out=grad_x[start:end])  # (n, C)
            grad_w.addmm_(grad_logits.t(), x_c)  # (V, C)
        ctx.save_for_backward(grad_x, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss, grad_w * grad_loss, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(x @ weight.T, targets, ignore_index=-100).

    x: (N, C), weight: (V, C), targets: (N,). Under autocast, and for tensor subclasses, the plain formula,
    which torch.compile fuses where the head is compiled; otherwise, eagerly, a chunked loss that never
    materialises the (N, V) logits.
    """
    if torch.is_autocast_enabled(x.device.type) or _subclass(x, weight):
        return F.cross_entropy(F.linear(x, weight), targets, ignore_index=IGNORE_INDEX)
    return _chunked_linear_cross_entropy(x, weight, targets)


@torch.compiler.disable  # runs eagerly inside a compiled model: its reused out= buffers are the point
def _chunked_linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(x, weight, targets)
    rows, total = loss_chunk_rows(weight.shape[0]), x.new_zeros(())
    for start in range(0, x.shape[0], rows):
        logits = F.linear(x[start:start + rows], weight)  # (n, V)
        total += F.cross_entropy(logits, targets[start:start + rows], ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (targets != IGNORE_INDEX).sum()
