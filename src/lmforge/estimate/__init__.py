"""Memory and compute of a training run before it starts (``lmforge estimate``).

- ``activations``: what autograd saves per block and in the loss, counted from the decoder's ops;
- ``optimizer_state``: state and step memory per optimizer kind, from the real parameter shapes;
- ``memory``: the peak of one training step, simulated phase by phase (forward, backward, optimizer step);
- ``compute``: parameters, FLOPs per token, step time at a peak FLOP/s and MFU;
- ``parallel``: data-parallel, FSDP and tensor-parallel degrees, checked;
- ``report`` / ``command``: the CLI; ``measure``: the measured peak the estimate is tested against.
"""
