"""An online model of batch run time, ``seconds ≈ per_item · n + fixed``.

Fitted by weighted least squares over recent batches (older ones fade geometrically), so it
follows a model whose speed drifts (thermal limits, a neighbour on the same GPU). The
batcher uses it to say no early: a request that cannot reach the model before its deadline
is refused at admission, not left to time out in the queue.
"""

from __future__ import annotations


class LatencyModel:
    def __init__(self, decay: float = 0.98, min_observations: int = 3) -> None:
        if not 0 < decay <= 1:
            raise ValueError("decay must be in (0, 1]")
        self._decay = decay
        self._min_observations = min_observations
        self._observations = 0
        # Decayed sums of weights, n, t, n², n·t.
        self._w = self._n = self._t = self._nn = self._nt = 0.0
        self.per_item = 0.0
        self.fixed = 0.0
        self._split: tuple[float, float] | None = None  # the last fit that could separate the terms

    @property
    def ready(self) -> bool:
        """Enough batches seen to trust a prediction."""
        return self._observations >= self._min_observations

    def observe(self, size: int, seconds: float) -> None:
        d = self._decay
        self._w = d * self._w + 1.0
        self._n = d * self._n + size
        self._t = d * self._t + seconds
        self._nn = d * self._nn + size * size
        self._nt = d * self._nt + size * seconds
        self._observations += 1
        self._fit()

    def _fit(self) -> None:
        mean_n = self._n / self._w
        mean_t = self._t / self._w
        var_n = self._nn / self._w - mean_n * mean_n
        if var_n > 1e-9:
            slope = (self._nt / self._w - mean_n * mean_t) / var_n
            self.per_item = max(0.0, slope)
            self.fixed = max(0.0, mean_t - self.per_item * mean_n)
            self._split = (self.per_item, self.fixed)
        elif self._split is not None and sum(self._split) > 0:
            # Sizes varied once but have long been the same (a steady load of full batches):
            # keep the last split, rescaled to today's timings, rather than forget the fixed cost.
            per_item, fixed = self._split
            scale = mean_t / (per_item * mean_n + fixed)
            self.per_item, self.fixed = per_item * scale, fixed * scale
        else:
            # Every batch had the same size: nothing separates the two terms yet. Charge it
            # all per item, which over-estimates larger batches: refusing a little early is
            # safer than promising a deadline we miss.
            self.per_item = mean_t / max(mean_n, 1.0)
            self.fixed = 0.0

    def predict(self, size: int) -> float:
        return self.per_item * size + self.fixed

    def drain_seconds(self, queued: int, max_batch_size: int, concurrency: int = 1) -> float:
        """Time to run ``queued`` items in full batches, ``concurrency`` batches at a time."""
        if queued <= 0:
            return 0.0
        full, rest = divmod(queued, max_batch_size)
        total = full * self.predict(max_batch_size) + (self.predict(rest) if rest else 0.0)
        return total / max(concurrency, 1)
