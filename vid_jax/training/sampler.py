"""Which training examples each step sees: a pure function of (seed, step)."""
import numpy as np


class BatchSampler:
    """Batch indices as a pure function of (seed, step): a stream of seeded permutations.

    Batches always have the same shape (a batch may run across the end of an epoch), so the
    step never recompiles, and a resumed run sees exactly the batches of an uninterrupted one.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self._cache: tuple[int, np.ndarray] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.num_examples // self.batch_size)

    def _permutation(self, epoch: int) -> np.ndarray:
        # Read once into a local: a streamed run's reading threads call this at once
        # (`data.read_batches`), and another may replace the cache in between.
        cached = self._cache
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            cached = self._cache = (epoch, rng.permutation(self.num_examples))
        return cached[1]

    def indices(self, step: int) -> np.ndarray:
        out, position = [], step * self.batch_size
        while sum(map(len, out)) < self.batch_size:
            epoch, offset = divmod(position, self.num_examples)
            take = self._permutation(epoch)[offset:offset + self.batch_size - sum(map(len, out))]
            out.append(take)
            position += len(take)
        return np.concatenate(out)
