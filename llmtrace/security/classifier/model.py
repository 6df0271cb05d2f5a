"""The shipped prompt-injection classifier: an ONNX linear model over `features.featurize_one`.

The model file carries its own calibration: the classifier threshold of each operating point,
chosen by `tools/train/classifier.py` from leave-sources-out scores on benign sets (see
docs/security.md), and the feature version it was trained on, checked here so that a model and a
featuriser that disagree fail at load instead of scoring garbage.

onnxruntime runs on one thread per call: the core analyses batches in a worker thread and the
machine's other cores belong to ingest and queries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from llmtrace.security.classifier.features import FEATURE_VERSION, featurize_one, pad

#: The model shipped inside the package.
SHIPPED_MODEL: Final = "prompt_injection.onnx"
#: Most padded cells (texts x features) in one ONNX call. A batch is padded to its widest text:
#: one 10 KB text (22,000 features) among 10,000 short ones took 4.5 GB at once. Texts go in
#: groups of similar width instead; a 1 KB text has about 2,500 features.
MAX_CELLS: Final = 1 << 18


class ModelError(RuntimeError):
    """The model file is missing, unreadable or made for another featuriser."""


@dataclass(frozen=True, slots=True)
class Calibration:
    """Classifier thresholds per operating point, from the model's metadata."""

    thresholds: Mapping[str, float]

    def threshold(self, operating_point: str) -> float:
        """The probability at or above which the classifier alone calls a text an injection."""
        return self.thresholds[operating_point]


class InjectionClassifier:
    """Scores texts with the probability that they attack the model's instructions."""

    def __init__(self, path: Path | None = None) -> None:
        source = path if path is not None else _shipped_path()
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"cannot load classifier {source}: {exc}") from exc
        metadata = {
            key: json.loads(value) for key, value in self._session.get_modelmeta().custom_metadata_map.items()
        }
        if metadata.get("feature_version") != FEATURE_VERSION:
            raise ModelError(
                f"classifier {source} was trained on features {metadata.get('feature_version')!r}, "
                f"this featuriser makes {FEATURE_VERSION!r}"
            )
        thresholds = metadata.get("thresholds")
        if not isinstance(thresholds, dict):
            raise ModelError(f"classifier {source} has no operating-point thresholds")
        self.calibration = Calibration({str(k): float(v) for k, v in thresholds.items()})
        self.metadata: Mapping[str, object] = metadata
        self.path = source

    def scores(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Probabilities in [0, 1], one per text (empty texts score 0)."""
        result = np.zeros(len(texts), dtype=np.float32)
        rows = [featurize_one(text) for text in texts]
        for chunk in _chunks([len(indices) for indices, _ in rows]):
            indices, values = pad([rows[i] for i in chunk])
            (probabilities,) = self._session.run(["probability"], {"indices": indices, "values": values})
            result[chunk] = np.asarray(probabilities, dtype=np.float32).reshape(-1)
        result[[not text.strip() for text in texts]] = 0.0
        return result


def _chunks(widths: Sequence[int]) -> list[list[int]]:
    """Row numbers in groups of similar width, each within `MAX_CELLS` once padded (a row
    wider than that alone makes a group of one)."""
    groups: list[list[int]] = []
    group: list[int] = []
    for row in sorted(range(len(widths)), key=widths.__getitem__):
        # Ascending widths: the row being added is the group's widest.
        if group and (len(group) + 1) * widths[row] > MAX_CELLS:
            groups.append(group)
            group = []
        group.append(row)
    if group:
        groups.append(group)
    return groups


def _shipped_path() -> Path:
    resource = resources.files("llmtrace.security.classifier").joinpath(SHIPPED_MODEL)
    path = Path(str(resource))
    if not path.is_file():
        raise ModelError(f"the shipped classifier {path} is missing; run `make model` to train it")
    return path
