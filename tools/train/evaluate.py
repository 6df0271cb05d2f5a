"""Leave-sources-out evaluation of the injection tiers: regex, classifier, and the two fused.

    .venv/bin/python -m tools.train.evaluate            # markdown tables on stdout

Each public source is scored by a classifier trained without it (the same procedure and seed as
`classifier.py`), with thresholds taken from the shipped model's operating points. The regex tier
needs no training: it is run as shipped. A text counts as flagged by the regex tier when it has an
injection-family finding (anything but PII and secrets) of at least medium severity; fused means
flagged by either tier, as `llmtrace.security.analyze.Analyzer` does.

Reported per source and pooled: precision, recall, F1, false-positive rate, and the true-positive
rate at a 1% false-positive rate (threshold set on the pooled held-out benign scores). Sources with
one label only have recall or FPR only. The harmful-content sets are reported apart, as the share
of requests each tier flags: they are not injections, so this is a separate signal, not recall.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from llmtrace.security.classifier.model import InjectionClassifier
from llmtrace.security.exchange import Exchange
from llmtrace.security.tiers import is_injection_finding, regex_verdict
from tools.train.crossval import Corpus, HeldOut, leave_sources_out, threshold_at_fpr
from tools.train.datasets import (
    HARMFUL_SOURCES,
    OVER_DEFENCE_SOURCES,
    SHARED_DATASETS,
    DatasetsMissingError,
    own_samples,
    public_sources,
)
from tools.train.linear import Hyper, train

Flags = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Scores:
    """Precision, recall, F1, FPR of one set of flags against labels."""

    positives: int
    negatives: int
    precision: float
    recall: float
    f1: float
    fpr: float

    @classmethod
    def of(cls, flags: Flags, labels: npt.NDArray[np.int64]) -> Scores:
        tp = int((flags & (labels == 1)).sum())
        fp = int((flags & (labels == 0)).sum())
        positives, negatives = int((labels == 1).sum()), int((labels == 0).sum())
        precision = tp / (tp + fp) if tp + fp and negatives and positives else float("nan")
        recall = tp / positives if positives else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else float("nan")
        return cls(positives, negatives, precision, recall, f1, fp / negatives if negatives else float("nan"))


def regex_flags(texts: Sequence[str]) -> Flags:
    """Whether the regex tiers find an injection-family finding in each text."""
    return np.array(
        [
            any(is_injection_finding(f) for f in regex_verdict(Exchange.of_text(text)).findings)
            for text in texts
        ],
        dtype=np.bool_,
    )


def _fmt(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.3f}"


def _row(name: str, labels: npt.NDArray[np.int64], tiers: dict[str, Flags], tpr1: dict[str, float]) -> str:
    cells = [name, str(int((labels == 1).sum())), str(int((labels == 0).sum()))]
    for tier, flags in tiers.items():
        s = Scores.of(flags, labels)
        cells += [_fmt(s.precision), _fmt(s.recall), _fmt(s.f1), _fmt(s.fpr)]
        if tier in tpr1:
            cells.append(_fmt(tpr1[tier]))
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=SHARED_DATASETS)
    parser.add_argument("--model", type=Path, default=None, help="ONNX model whose thresholds to use")
    parser.add_argument("--point", default="balanced", choices=("high_recall", "balanced", "high_precision"))
    args = parser.parse_args(argv)
    try:
        sources = public_sources(args.datasets)
    except DatasetsMissingError as exc:
        print(f"evaluate: {exc}; nothing to evaluate", file=sys.stderr)
        return 2
    classifier = InjectionClassifier(args.model)
    thresholds = classifier.calibration.thresholds
    corpus = Corpus([s for samples in sources.values() for s in samples] + own_samples())
    held = leave_sources_out(corpus, Hyper.from_metadata(classifier.metadata.get("hyper")))
    final = corpus.fit(set(), Hyper.from_metadata(classifier.metadata.get("hyper")))
    harmful = [corpus.score(final, name) for name in HARMFUL_SOURCES if name in sources]

    regex = {h.source: regex_flags([s.text for s in h.samples]) for h in (*held, *harmful)}
    benign = np.concatenate([h.scores[h.labels == 0] for h in held])
    t1 = threshold_at_fpr(benign, 0.01)
    benign_fused = np.concatenate([np.maximum(h.scores, regex[h.source])[h.labels == 0] for h in held])
    t1_fused = threshold_at_fpr(benign_fused, 0.01)
    t = thresholds[args.point]

    def tiers(h: HeldOut) -> dict[str, Flags]:
        return {
            "regex": regex[h.source],
            "classifier": h.scores >= t,
            "fused": regex[h.source] | (h.scores >= t),
        }

    def tpr1(h: HeldOut) -> dict[str, float]:
        positive = h.labels == 1
        if not positive.any():
            return {"classifier": float("nan"), "fused": float("nan")}
        fused = np.maximum(h.scores, regex[h.source])
        return {
            "classifier": float((h.scores[positive] >= t1).mean()),
            "fused": float((fused[positive] >= t1_fused).mean()),
        }

    print(f"Operating point `{args.point}`: classifier threshold {t:.4f}; thresholds {dict(thresholds)}.\n")
    header = ["source", "n+", "n-"]
    for tier in ("regex", "classifier", "fused"):
        header += [f"{tier} P", f"{tier} R", f"{tier} F1", f"{tier} FPR"] + (
            [] if tier == "regex" else [f"{tier} TPR@1%"]
        )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for h in held:
        print(_row(h.source, h.labels, tiers(h), tpr1(h)))
    tier_names = ("regex", "classifier", "fused")

    def pooled_row(name: str, group: Sequence[HeldOut]) -> str:
        group_labels = np.concatenate([h.labels for h in group])
        flags = {tier: np.concatenate([tiers(h)[tier] for h in group]) for tier in tier_names}
        scores = np.concatenate([h.scores for h in group])
        fused_scores = np.concatenate([np.maximum(h.scores, regex[h.source]) for h in group])
        positive = group_labels == 1
        tpr = {
            "classifier": float((scores[positive] >= t1).mean()),
            "fused": float((fused_scores[positive] >= t1_fused).mean()),
        }
        return _row(name, group_labels, flags, tpr)

    print(pooled_row("**pooled**", held))
    # SPML is 60% of the positives and its attacks are mostly off-topic requests that are attacks
    # only against the system prompt they were written for: the pool without it, for contrast.
    print(pooled_row("pooled without spml_chatbot", [h for h in held if h.source != "spml_chatbot"]))
    labels = np.concatenate([h.labels for h in held])
    macro = {
        tier: float(np.mean([tiers(h)[tier][h.labels == 1].mean() for h in held if (h.labels == 1).any()]))
        for tier in tier_names
    }
    print("\nMacro-average recall over sources: " + ", ".join(f"{k} {v:.3f}" for k, v in macro.items()) + ".")

    print("\nFused, pooled, at each operating point:\n")
    print("| operating point | threshold | precision | recall | F1 | FPR (all benign) | FPR (over-defence) |")
    print("|---|---|---|---|---|---|---|")
    over = np.concatenate([h.labels * 0 + (h.source in OVER_DEFENCE_SOURCES) for h in held]).astype(bool)
    for point, threshold in thresholds.items():
        flags = np.concatenate([regex[h.source] | (h.scores >= threshold) for h in held])
        s = Scores.of(flags, labels)
        over_fpr = float(flags[over & (labels == 0)].mean())
        cells = [point, f"{threshold:.4f}", *map(_fmt, (s.precision, s.recall, s.f1, s.fpr, over_fpr))]
        print("| " + " | ".join(cells) + " |")

    print("\nFor contrast, 5-fold cross-validation over the same samples (every source seen in training):\n")
    print("| tier | precision | recall | F1 | FPR |")
    print("|---|---|---|---|---|")
    folds = _kfold_scores(corpus, Hyper.from_metadata(classifier.metadata.get("hyper")))
    fold_labels = np.array([s.label for s in corpus.samples])
    public = np.array(
        [not s.source.startswith("own:") and s.source not in HARMFUL_SOURCES for s in corpus.samples]
    )
    fold_regex = np.zeros(len(corpus.samples), dtype=np.bool_)
    for h in held:
        fold_regex[[i for i, s in enumerate(corpus.samples) if s.source == h.source]] = regex[h.source]
    for tier, flags in (("classifier", folds >= t), ("fused", (folds >= t) | fold_regex)):
        s = Scores.of(flags[public], fold_labels[public])
        print(f"| {tier} | " + " | ".join(map(_fmt, (s.precision, s.recall, s.f1, s.fpr))) + " |")

    print("\nHarmful-content requests (not injections; share flagged, classifier trained on all sources):\n")
    print("| source | n | regex | classifier | fused |")
    print("|---|---|---|---|---|")
    for h in harmful:
        clf = h.scores >= t
        shares = (regex[h.source].mean(), clf.mean(), (clf | regex[h.source]).mean())
        print(f"| {h.source} | {len(h.samples)} | " + " | ".join(f"{share:.3f}" for share in shares) + " |")
    return 0


def _kfold_scores(corpus: Corpus, hyper: Hyper, folds: int = 5) -> npt.NDArray[np.float64]:
    """Each sample scored by a model trained on the other folds (random split, seeded)."""
    order = np.random.default_rng(hyper.seed).permutation(len(corpus.samples))
    trainable = np.array([s.source not in HARMFUL_SOURCES for s in corpus.samples])
    scores = np.zeros(len(corpus.samples))
    for fold in range(folds):
        test = order[fold::folds]
        train_rows = np.setdiff1d(np.flatnonzero(trainable), test)
        samples, rows = corpus.rows_of(train_rows.tolist())
        model = train(samples, hyper, rows)
        _, test_rows = corpus.rows_of(test.tolist())
        scores[test] = model.scores(test_rows)
    return scores


if __name__ == "__main__":
    raise SystemExit(main())
