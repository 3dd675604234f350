"""Checkpoints: the safetensors and sharded (DCP) formats, and the one loader every stage uses."""
