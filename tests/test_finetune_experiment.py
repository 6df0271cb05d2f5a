"""The fine-tuned MiniLM experiment's own steps that run here (tools/train/finetune_experiment.py):
the fp16 copy of the weights and the report of held-out scores."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from tools.train.finetune_experiment import _to_fp16, main


def _safetensors(tensors: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def _read(blob: bytes) -> dict[str, tuple[str, bytes]]:
    size = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + size])
    assert size % 8 == 0  # safetensors aligns the data
    data = blob[8 + size :]
    return {
        name: (info["dtype"], data[info["data_offsets"][0] : info["data_offsets"][1]])
        for name, info in header.items()
        if name != "__metadata__"
    }


def test_fp16_copy_halves_float_tensors_and_keeps_the_rest() -> None:
    weights = np.array([[0.5, -1.25], [3.0, 1e-3]], dtype=np.float32)
    ids = np.arange(4, dtype=np.int64)
    blob = _safetensors({"w": ("F32", [2, 2], weights.tobytes()), "ids": ("I64", [4], ids.tobytes())})
    converted = _read(_to_fp16(blob))
    assert converted["w"][0] == "F16"
    np.testing.assert_allclose(np.frombuffer(converted["w"][1], np.float16), weights.ravel(), rtol=1e-3)
    assert converted["ids"] == ("I64", ids.tobytes())


def test_report_scores_the_fused_tiers_at_the_benign_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 50 benign samples scored 0..0.49 and 10 attacks scored 0.9; one attack also caught by regex.
    samples = [{"text": "b", "label": 0, "source": "s", "linear": 0.0, "regex": False} for _ in range(50)]
    samples += [{"text": "a", "label": 1, "source": "s", "linear": 0.0, "regex": i == 9} for i in range(10)]
    (tmp_path / "corpus.json").write_text(json.dumps({"samples": samples, "thresholds": {"balanced": 0.5}}))
    scores = [i / 100 for i in range(50)] + [0.9] * 9 + [0.1]
    (tmp_path / "scores_L2.json").write_text(json.dumps(scores))
    assert main(["report", "--dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # At 2% FPR one benign sample (0.49) may pass: 9 attacks alone, the regex adds the tenth.
    assert "| 2 layers alone, 2% FPR | 0.900 | 0.900 | 0.900 | 0.020 |" in lines
    assert "| 2 layers + regex, 2% FPR | 0.909 | 1.000 | 0.952 | 0.020 |" in lines
    assert "| shipped classifier + regex, balanced | 1.000 | 0.100 | 0.182 | 0.000 |" in lines
