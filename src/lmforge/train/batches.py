"""Which training windows make up each batch: a pure function of (seed, step), so the data position
of a run is just its step count, and resuming or changing the number of processes reads the same data.

Every epoch is a fresh seeded permutation of all windows. Global batch ``b`` holds samples
``b*B .. b*B+B-1`` of that endless stream; rank ``r`` of ``W`` takes the ``r``-th contiguous slice of it,
split into micro-batches for gradient accumulation.
"""

from __future__ import annotations

import functools

import numpy as np

from lmforge.errors import RecipeError


class BatchPlan:
    def __init__(self, num_windows: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 micro_batch_size: int | None = None):
        if num_windows < 1:
            raise RecipeError("train.seq_len: the training split has fewer tokens than one sequence")
        if batch_size % world_size:
            raise RecipeError(
                f"train.batch_size: {batch_size} sequences cannot be split evenly over {world_size} processes"
            )
        per_rank = batch_size // world_size
        micro = micro_batch_size or per_rank
        if micro > per_rank or per_rank % micro:
            raise RecipeError(
                f"train.micro_batch_size: {micro} must divide the per-process batch of {per_rank} sequences "
                f"(batch_size {batch_size} / {world_size} processes)"
            )
        self.num_windows = num_windows
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.per_rank = per_rank
        self.micro_batch_size = micro
        self.accumulation = per_rank // micro

    @functools.lru_cache(maxsize=4)
    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)

    def global_indices(self, step: int) -> np.ndarray:
        """Window indices of the whole global batch for optimizer update ``step`` (0-based)."""
        samples = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, positions = np.divmod(samples, self.num_windows)
        return np.array([self._permutation(int(e))[p] for e, p in zip(epochs, positions)], dtype=np.int64)

    def micro_batches(self, step: int) -> list[np.ndarray]:
        """This rank's window indices for ``step``, one array per micro-batch."""
        mine = self.global_indices(step)[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
        return [mine[i:i + self.micro_batch_size] for i in range(0, self.per_rank, self.micro_batch_size)]

    def epoch_of(self, step: int) -> float:
        return step * self.batch_size / self.num_windows
