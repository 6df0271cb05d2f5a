"""Logistic regression over the hashed features, trained with numpy, exported to ONNX.

No training stack: the model is one weight per feature bucket, so the gradient of a minibatch is a
`bincount` over its bucket ids. Minibatch Adam with L2, a fixed seed, a fixed number of epochs:
the same data gives the same weights on any machine.

Sample weights balance the classes and keep one large source (SPML has 5,000 rows) from deciding
what an attack looks like: each source's weight grows with the square root of its size, not
linearly.

The ONNX graph (opset 13) is `sigmoid(sum(W[indices] * values) + b)` over the padded batch that
`features.featurize` makes; `W[PAD_INDEX]` is 0.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx  # training-time only (a dev dependency): the runtime reads the file with onnxruntime
from onnx import TensorProto, helper, numpy_helper

from llmtrace.security.classifier.features import DIMENSIONS, FEATURE_VERSION, featurize_one
from tools.train.datasets import Sample

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Hyper:
    """Training settings; the defaults are what the shipped model used."""

    epochs: int = 8
    batch_size: int = 128
    learning_rate: float = 0.02
    l2: float = 1e-6
    seed: int = 20261127

    @classmethod
    def from_metadata(cls, recorded: object) -> Hyper:
        """The settings a model file records (`hyper`), defaults for any missing."""
        defaults = cls()
        if not isinstance(recorded, dict):
            return defaults
        return cls(
            epochs=int(recorded.get("epochs", defaults.epochs)),
            batch_size=int(recorded.get("batch_size", defaults.batch_size)),
            learning_rate=float(recorded.get("learning_rate", defaults.learning_rate)),
            l2=float(recorded.get("l2", defaults.l2)),
            seed=int(recorded.get("seed", defaults.seed)),
        )

    def as_metadata(self) -> dict[str, float | int]:
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "l2": self.l2,
            "seed": self.seed,
        }


@dataclass(frozen=True, slots=True)
class SparseRows:
    """Featurised texts as CSR: row `i` is `indices[starts[i]:starts[i+1]]` with its values."""

    indices: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    starts: npt.NDArray[np.int64]

    @classmethod
    def of(cls, texts: Sequence[str]) -> SparseRows:
        rows = [featurize_one(text) for text in texts]
        lengths = np.array([len(ids) for ids, _ in rows], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        indices = np.concatenate([ids for ids, _ in rows]) if rows else np.zeros(0, dtype=np.int64)
        values = np.concatenate([v for _, v in rows]).astype(np.float64) if rows else np.zeros(0)
        return cls(indices, values, starts)

    def subset(self, rows: npt.NDArray[np.int64]) -> SparseRows:
        """The selected rows, in order, as rows of their own."""
        ids, vals, _ = self.take(rows)
        lengths = self.starts[rows + 1] - self.starts[rows]
        return SparseRows(ids, vals, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))

    def __len__(self) -> int:
        return len(self.starts) - 1

    def take(
        self, rows: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], Floats, npt.NDArray[np.int64]]:
        """Bucket ids, values and the position in `rows` of every entry of the selected rows."""
        starts, ends = self.starts[rows], self.starts[rows + 1]
        lengths = ends - starts
        owner = np.repeat(np.arange(len(rows)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        positions = np.repeat(starts, lengths) + offsets
        return self.indices[positions], self.values[positions], owner


@dataclass(frozen=True, slots=True)
class LinearModel:
    """Weights (one per bucket, plus the zero padding bucket) and a bias."""

    weights: npt.NDArray[np.float32]
    bias: float

    def scores(self, rows: SparseRows) -> Floats:
        """Probabilities of the positive class for every row."""
        all_rows = np.arange(len(rows), dtype=np.int64)
        ids, vals, owner = rows.take(all_rows)
        logits = np.bincount(owner, weights=self.weights[ids] * vals, minlength=len(rows)) + self.bias
        probabilities: Floats = 1.0 / (1.0 + np.exp(-logits))
        return probabilities


def sample_weights(samples: Sequence[Sample]) -> Floats:
    """Per-sample weights: each (source, label) group weighs sqrt(its size); classes weigh the same."""
    groups = Counter((s.source, s.label) for s in samples)
    raw = np.array([math.sqrt(groups[(s.source, s.label)]) / groups[(s.source, s.label)] for s in samples])
    labels = np.array([s.label for s in samples])
    for label in (0, 1):
        mask = labels == label
        if mask.any():
            raw[mask] *= 0.5 / raw[mask].sum()
    return raw * len(samples)


def train(samples: Sequence[Sample], hyper: Hyper = Hyper(), rows: SparseRows | None = None) -> LinearModel:
    """Fit the model on `samples` (featurised here unless `rows` is given)."""
    rows = rows if rows is not None else SparseRows.of([s.text for s in samples])
    labels = np.array([s.label for s in samples], dtype=np.float64)
    weights_of = sample_weights(samples)
    rng = np.random.default_rng(hyper.seed)
    w = np.zeros(DIMENSIONS + 1)
    b = 0.0
    m, v = np.zeros_like(w), np.zeros_like(w)
    mb = vb = 0.0
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    step = 0
    for _ in range(hyper.epochs):
        order = rng.permutation(len(samples)).astype(np.int64)
        for start in range(0, len(order), hyper.batch_size):
            batch = order[start : start + hyper.batch_size]
            ids, vals, owner = rows.take(batch)
            logits = np.bincount(owner, weights=w[ids] * vals, minlength=len(batch)) + b
            probs = 1.0 / (1.0 + np.exp(-logits))
            residual = (probs - labels[batch]) * weights_of[batch] / len(batch)
            grad = np.bincount(ids, weights=residual[owner] * vals, minlength=DIMENSIONS + 1) + hyper.l2 * w
            grad_b = float(residual.sum())
            step += 1
            m = beta1 * m + (1 - beta1) * grad
            v = beta2 * v + (1 - beta2) * grad * grad
            mb = beta1 * mb + (1 - beta1) * grad_b
            vb = beta2 * vb + (1 - beta2) * grad_b * grad_b
            correction = math.sqrt(1 - beta2**step) / (1 - beta1**step)
            w -= hyper.learning_rate * correction * m / (np.sqrt(v) + eps)
            b -= hyper.learning_rate * correction * mb / (math.sqrt(vb) + eps)
    w[DIMENSIONS] = 0.0  # the padding bucket
    return LinearModel(w.astype(np.float32), float(b))


def export_onnx(model: LinearModel, path: Path, metadata: Mapping[str, object]) -> None:
    """Write the model as ONNX with `metadata` (thresholds, provenance) as JSON-valued properties."""
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Gather", ["weights", "indices"], ["picked"]),
            helper.make_node("Mul", ["picked", "values"], ["weighted"]),
            helper.make_node("ReduceSum", ["weighted", "axis"], ["summed"], keepdims=0),
            helper.make_node("Add", ["summed", "bias"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["probability"]),
        ],
        name="llmtrace_prompt_injection",
        inputs=[
            helper.make_tensor_value_info("indices", TensorProto.INT64, ["batch", "width"]),
            helper.make_tensor_value_info("values", TensorProto.FLOAT, ["batch", "width"]),
        ],
        outputs=[helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch"])],
        initializer=[
            numpy_helper.from_array(model.weights.astype(np.float32), "weights"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
            numpy_helper.from_array(np.array(model.bias, dtype=np.float32), "bias"),
        ],
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13)],
        producer_name="llmtrace tools/train/classifier.py",
    )
    onnx_model.ir_version = 8  # readable by every onnxruntime >= 1.10
    properties = {"feature_version": FEATURE_VERSION, **metadata}
    helper.set_model_props(onnx_model, {key: json.dumps(value) for key, value in properties.items()})
    onnx.checker.check_model(onnx_model)
    path.write_bytes(onnx_model.SerializeToString())
