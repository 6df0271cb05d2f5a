"""Train the prompt-injection classifier and write the ONNX model the core ships.

    .venv/bin/python -m tools.train.classifier                  # writes the shipped model
    .venv/bin/python -m tools.train.classifier --out /tmp/m.onnx --datasets DIR

Steps: load the public sets (../shared/datasets) and the project's own samples
(tools/train/data), de-duplicate, featurise once; score every public source with a model trained
without it (leave-sources-out); set each operating point's threshold from those held-out scores
of the benign samples: the threshold keeps the false-positive rate at or under the point's
target (high_recall 5%, balanced 2%, high_precision 0.5%) both over all benign samples and over the
over-defence set (NotInject: harmless prompts full of trigger words) alone; train the final
model on everything but the harmful-content sets; export.

Seeded and deterministic; CPU only (numpy); about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Final

import numpy as np

from tools.train.crossval import Corpus, leave_sources_out, threshold_at_fpr
from tools.train.datasets import (
    HARMFUL_SOURCES,
    OVER_DEFENCE_SOURCES,
    SHARED_DATASETS,
    DatasetsMissingError,
    own_samples,
    public_sources,
)
from tools.train.linear import Hyper, export_onnx

REPO: Final = Path(__file__).resolve().parents[2]
DEFAULT_OUT: Final = REPO / "llmtrace" / "security" / "classifier" / "prompt_injection.onnx"
#: Benign false-positive rate each operating point allows the classifier (held-out scores).
TARGET_FPR: Final = {"high_recall": 0.05, "balanced": 0.02, "high_precision": 0.005}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=SHARED_DATASETS, help="the labelled public sets")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the ONNX model")
    parser.add_argument("--epochs", type=int, default=Hyper().epochs)
    args = parser.parse_args(argv)
    hyper = Hyper(epochs=args.epochs)
    started = time.perf_counter()
    try:
        sources = public_sources(args.datasets)
    except DatasetsMissingError as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    own = own_samples()
    corpus = Corpus([s for samples in sources.values() for s in samples] + own)
    print(f"{len(corpus.samples)} samples ({len(own)} our own), featurised", file=sys.stderr)

    held_out = leave_sources_out(corpus, hyper)
    benign = np.concatenate([h.scores[h.labels == 0] for h in held_out])
    over_defence = np.concatenate(
        [h.scores[h.labels == 0] for h in held_out if h.source in OVER_DEFENCE_SOURCES]
    )
    thresholds = {
        # Rounded up: a rounded-down threshold would let one more benign sample over the target.
        point: math.ceil(max(threshold_at_fpr(benign, fpr), threshold_at_fpr(over_defence, fpr)) * 1e4) / 1e4
        for point, fpr in TARGET_FPR.items()
    }
    print(f"thresholds from {len(benign)} held-out benign scores: {thresholds}", file=sys.stderr)

    model = corpus.fit(set(), hyper)
    trained_on = sorted({s.source for s in corpus.samples} - set(HARMFUL_SOURCES))
    export_onnx(
        model,
        args.out,
        {
            "thresholds": thresholds,
            "target_fpr": TARGET_FPR,
            "trained_on": trained_on,
            "samples": len(corpus.samples),
            "hyper": hyper.as_metadata(),
        },
    )
    size = args.out.stat().st_size
    print(
        f"wrote {args.out} ({size / 1024:.0f} KiB) in {time.perf_counter() - started:.0f} s", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
