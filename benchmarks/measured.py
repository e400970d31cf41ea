"""Figures measured inside training, handed to pytest-benchmark as its rounds.

pytest-benchmark times the call it is given. What the suite measures is not
one call: a pack's epoch is several models' epochs, and an experiment's runs
were trained, in packs with other experiments' runs, before its test. So each
figure (seconds per model-epoch) is measured where the training happens and
replayed through the test's timer, which `@pytest.mark.benchmark(timer=...)`
sets: one round per figure. pytest-benchmark's statistics, its saved JSON,
`pytest-benchmark compare` and `--benchmark-compare-fail` are then about
seconds per model-epoch.
"""

from __future__ import annotations

from collections.abc import Iterable


class ReplayClock:
    """A pytest-benchmark timer under which each round of `replay` lasts one given figure."""

    __name__ = "measured seconds per model-epoch"  # what pytest-benchmark stores as the benchmark's timer

    def __init__(self):
        self._now, self._in_round, self._durations = 0.0, False, []

    def __call__(self) -> float:  # read at the start and at the end of each round
        if self._in_round:
            self._now += self._durations.pop(0)
        self._in_round = not self._in_round
        return self._now

    def replay(self, benchmark, seconds: Iterable[float]) -> None:
        """Records `seconds` (each > 0) as the rounds of `benchmark`, whose marker named this clock."""
        seconds = [float(s) for s in seconds]
        if not seconds or min(seconds) <= 0:
            raise ValueError(f"nothing to record: seconds must be positive figures, got {seconds}")
        self._in_round, self._durations = False, list(seconds)
        benchmark.pedantic(lambda: None, rounds=len(seconds), iterations=1)
        if self._durations and not benchmark.disabled:  # a pytest-benchmark that reads its timer otherwise
            raise RuntimeError(f"pytest-benchmark took {len(seconds) - len(self._durations)} of {len(seconds)} "
                               "figures")


CLOCK = ReplayClock()
