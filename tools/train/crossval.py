"""Leave-sources-out scores: for each public source, a model trained without it scores it.

These held-out scores are the only honest estimate of how the classifier does on traffic it never
saw (FINDINGS.md: a random split scored F1 0.97 where unseen sources scored 0.45-0.75). They serve
twice: `evaluate.py` reports them, and `classifier.py` picks each operating point's threshold from
the held-out scores of the benign sets, so the thresholds are not tuned on data the model learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tools.train.datasets import BENIGN_SOURCES, HARMFUL_SOURCES, INJECTION_SOURCES, Sample
from tools.train.linear import Hyper, LinearModel, SparseRows, train


@dataclass(frozen=True, slots=True)
class HeldOut:
    """One source's samples and the scores a model that never saw the source gave them."""

    source: str
    samples: tuple[Sample, ...]
    scores: npt.NDArray[np.float64]

    @property
    def labels(self) -> npt.NDArray[np.int64]:
        return np.array([s.label for s in self.samples], dtype=np.int64)


class Corpus:
    """Every sample featurised once; models are fitted on row subsets."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)
        self.rows = SparseRows.of([s.text for s in self.samples])

    def rows_of(self, keep: Sequence[int]) -> tuple[list[Sample], SparseRows]:
        chosen = np.array(keep, dtype=np.int64)
        return [self.samples[i] for i in keep], self.rows.subset(chosen)

    def fit(self, excluded: set[str], hyper: Hyper) -> LinearModel:
        """A model trained on every injection and benign sample outside `excluded` sources."""
        keep = [
            i
            for i, s in enumerate(self.samples)
            if s.source not in excluded and s.source not in HARMFUL_SOURCES
        ]
        samples, rows = self.rows_of(keep)
        return train(samples, hyper, rows)

    def score(self, model: LinearModel, source: str) -> HeldOut:
        keep = [i for i, s in enumerate(self.samples) if s.source == source]
        samples, rows = self.rows_of(keep)
        return HeldOut(source, tuple(samples), model.scores(rows))


def leave_sources_out(corpus: Corpus, hyper: Hyper, sources: Sequence[str] | None = None) -> list[HeldOut]:
    """Held-out scores of each public injection and benign source."""
    names = sources if sources is not None else (*INJECTION_SOURCES, *BENIGN_SOURCES)
    present = {s.source for s in corpus.samples}
    return [corpus.score(corpus.fit({name}, hyper), name) for name in names if name in present]


def threshold_at_fpr(benign_scores: npt.NDArray[np.float64], fpr: float) -> float:
    """The lowest threshold at which at most `fpr` of the benign scores reach it."""
    if len(benign_scores) == 0:
        return 0.5
    ordered = np.sort(benign_scores)[::-1]
    allowed = int(np.floor(fpr * len(ordered)))
    # Strictly above the (allowed+1)-th highest benign score.
    boundary = ordered[allowed] if allowed < len(ordered) else 0.0
    return float(min(np.nextafter(boundary, 1.0), 1.0))
