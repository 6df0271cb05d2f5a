"""Labelled prompts for the injection classifier: the public sets in ../shared/datasets and ours.

Each public file is one *source*; evaluation holds whole sources out. Harmful-content sets
(AdvBench, HarmBench, AILuminate) ask for dangerous content without attacking the model's
instructions: they are not injection positives (FINDINGS.md: mixing them in teaches "dangerous
topic" and raises false alarms), so they are loaded apart, as a separate signal to report.

Texts are de-duplicated after normalisation (several files repeat texts heavily); a text that
appears with both labels is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from llmtrace.security.classifier.features import prepare

REPO: Final = Path(__file__).resolve().parents[2]
#: Where the public sets live in this environment; absent in a clone made elsewhere.
SHARED_DATASETS: Final = REPO.parent / "shared" / "datasets"
#: The project's own hand-written data (training only, never in the reported evaluation).
OWN_DATA: Final = Path(__file__).resolve().parent / "data"

#: Public files of injection / jailbreak attacks, some with benign counterparts.
INJECTION_SOURCES: Final = (
    "injection_samples",
    "encoding_evasion",
    "jackhhao_jailbreak",
    "spml_chatbot",
    "tensor_trust_attacks",
    "cyberseceval2_pi",
    "hpi_attack_approx",
    "bipia_indirect",
    "injecagent_attacks",
    "asb_attacks",
    "rubend18_jailbreak",
)
#: Public files of benign prompts only.
BENIGN_SOURCES: Final = ("benign_samples", "notinject_samples")
#: Harmful-content requests: a separate signal, never injection positives.
HARMFUL_SOURCES: Final = ("advbench_harmful", "harmbench_behaviors", "ailuminate_demo")
#: The over-defence sets: benign prompts full of trigger words.
OVER_DEFENCE_SOURCES: Final = ("notinject_samples",)


@dataclass(frozen=True, slots=True)
class Sample:
    """One labelled text; `label` is 1 for an attack on the model's instructions."""

    text: str
    label: int
    source: str


class DatasetsMissingError(FileNotFoundError):
    """../shared/datasets is not there (a clone outside this environment)."""


def _read_json(path: Path) -> list[dict[str, object]]:
    rows = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(rows, list)
    return rows


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _samples(rows: Iterable[dict[str, object]], source: str) -> list[Sample]:
    return [
        Sample(str(row["text"]), 1 if row["label"] == "malicious" else 0, source)
        for row in rows
        if isinstance(row.get("text"), str) and row["text"]
    ]


def public_sources(
    directory: Path = SHARED_DATASETS, names: Sequence[str] | None = None
) -> dict[str, list[Sample]]:
    """Samples of each public file (by file stem), de-duplicated within the file."""
    if not directory.is_dir():
        raise DatasetsMissingError(f"{directory} is missing: the labelled datasets are not available here")
    wanted = names if names is not None else (*INJECTION_SOURCES, *BENIGN_SOURCES, *HARMFUL_SOURCES)
    return {name: dedupe(_samples(_read_json(directory / f"{name}.json"), name)) for name in wanted}


def own_samples(directory: Path = OWN_DATA) -> list[Sample]:
    """The project's own hand-written samples (`tools/train/data/*.jsonl`)."""
    samples: list[Sample] = []
    for path in sorted(directory.glob("*.jsonl")):
        samples.extend(_samples(_read_jsonl(path), f"own:{path.stem}"))
    return dedupe(samples)


def dedupe(samples: Iterable[Sample]) -> list[Sample]:
    """First occurrence of each normalised text; texts seen with both labels are dropped."""
    first: dict[str, Sample] = {}
    conflicted: set[str] = set()
    for sample in samples:
        key = prepare(sample.text)
        seen = first.get(key)
        if seen is None:
            first[key] = sample
        elif seen.label != sample.label:
            conflicted.add(key)
    return [sample for key, sample in first.items() if key not in conflicted]


def training_pool(
    sources: dict[str, list[Sample]], own: Sequence[Sample], held_out: Iterable[str] = ()
) -> list[Sample]:
    """Injection and benign samples of every source not held out, plus our own; no harmful sets."""
    excluded = set(held_out) | set(HARMFUL_SOURCES)
    pool = [s for name, samples in sources.items() if name not in excluded for s in samples]
    return dedupe([*pool, *own])
