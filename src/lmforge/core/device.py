"""Device choice and the peak FLOP/s table used for MFU."""

from __future__ import annotations

import torch

from lmforge.errors import LmforgeError

# Dense peak FLOP/s by GPU name fragment (public datasheets, no sparsity): (bf16/fp16 tensor core, tf32
# tensor core, fp32 without tensor cores). More specific names come first: the first fragment found wins.
PEAK_FLOPS = {
    "GB200": (2500e12, 1250e12, 80e12),
    "B200": (2250e12, 1100e12, 80e12),
    "H200": (989e12, 494e12, 67e12),
    "H100 PCIe": (756e12, 378e12, 51e12),
    "H100": (989e12, 494e12, 67e12),
    "H800": (989e12, 494e12, 67e12),
    "A100": (312e12, 156e12, 19.5e12),
    "A800": (312e12, 156e12, 19.5e12),
    "L40S": (362e12, 183e12, 91.6e12),
    "L40": (181e12, 90.5e12, 90.5e12),
    "A10G": (125e12, 62.5e12, 31.2e12),
    "A10": (125e12, 62.5e12, 31.2e12),
    "L4": (121e12, 60e12, 30.3e12),
    "T4": (65e12, 8.1e12, 8.1e12),
    "V100": (125e12, 15.7e12, 15.7e12),
    "RTX 4090": (165e12, 82.6e12, 82.6e12),
    "RTX 3090": (71e12, 35.6e12, 35.6e12),
    "MI300X": (1307e12, 654e12, 163e12),
    "MI250X": (383e12, 95.7e12, 95.7e12),
}


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise LmforgeError("train.device: cuda was asked for but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def peak_for_name(name: str, dtype: torch.dtype = torch.float32) -> float | None:
    """The dense peak of the GPU called ``name`` for ``dtype`` (fp32 counts TF32 only where torch uses it)."""
    for fragment, (half, tf32, fp32) in PEAK_FLOPS.items():
        if fragment.lower() in name.lower():
            if dtype in (torch.bfloat16, torch.float16):
                return half
            return tf32 if torch.get_float32_matmul_precision() != "highest" else fp32
    return None


def peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> float | None:
    """The device's dense peak for ``dtype``, or None where it is not known (CPUs: give train.peak_tflops)."""
    if device.type != "cuda":
        return None
    return peak_for_name(torch.cuda.get_device_name(device), dtype)
