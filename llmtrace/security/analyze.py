"""One entry point over the detector tiers: normalise once, run the tiers that apply, score.

The regex tiers, the score and the verdict live in `tiers` (the shim's inline check imports only
that); this module adds the classifier for the core.

Fusion (core only): the classifier scores every untrusted text of a batch in one call. A score at or
above the operating point's threshold adds an `ml_prompt_injection` finding (medium severity, so the
text is flagged; high when it also clears the `high_precision` threshold). The verdict is the OR of
the tiers: regex findings are precise (no false positives on the benign sets, docs/security.md)
while the classifier adds recall on phrasings no rule names. The operating points differ only in
the classifier threshold; their thresholds come from the leave-sources-out evaluation and are
stored in the model file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from llmtrace.security.classifier.model import InjectionClassifier
from llmtrace.security.exchange import Exchange
from llmtrace.security.findings import Finding, Severity
from llmtrace.security.masking import masked_prefix
from llmtrace.security.normalize import normalize
from llmtrace.security.tiers import Verdict, regex_exchange_findings

OPERATING_POINTS: Final = ("high_recall", "balanced", "high_precision")
ML_PROMPT_INJECTION: Final = "ml_prompt_injection"
CLASSIFIER_DETECTOR: Final = "ml.injection_classifier"
_EXCERPT_CHARS: Final = 160


def _head_excerpt(text: str) -> str:
    """The start of a text, masked (`masked_prefix`: never a fragment of a secret at the cut,
    however far whitespace or masks shorten what comes before it), then cut at a space."""
    flat = " ".join(masked_prefix(text, _EXCERPT_CHARS * 16).split())
    if len(flat) <= _EXCERPT_CHARS:
        return flat
    cut = flat.rfind(" ", 0, _EXCERPT_CHARS)
    return flat[: cut if cut > 0 else 0] + "…"


class Analyzer:
    """The whole stack for exchanges: regex tiers and tool-call tier now, the classifier fused in.

    `analyze_batch` is the unit of work: the classifier runs once over every untrusted text of the
    batch. Pure CPU, no I/O: callers run it off their event loop.
    """

    def __init__(
        self, operating_point: str = "balanced", classifier: InjectionClassifier | None = None
    ) -> None:
        if operating_point not in OPERATING_POINTS:
            raise ValueError(f"unknown operating point {operating_point!r}")
        self.operating_point = operating_point
        self.classifier = classifier

    @classmethod
    def load(cls, operating_point: str, model_path: str = "") -> Analyzer:
        """The analyzer the core runs, classifier loaded (`model_path`; empty: the shipped model).

        Raises `ModelError` when the model cannot be loaded: a core configured to analyse must not
        start without its classifier and silently analyse less.
        """
        classifier = InjectionClassifier(Path(model_path) if model_path else None)
        return cls(operating_point=operating_point, classifier=classifier)

    def analyze(self, exchange: Exchange, operating_point: str | None = None) -> Verdict:
        """Analyse one exchange."""
        return self.analyze_batch([exchange], operating_point)[0]

    def analyze_batch(
        self, exchanges: Sequence[Exchange], operating_point: str | None = None
    ) -> list[Verdict]:
        """Analyse exchanges together; one verdict per exchange, in order."""
        point = operating_point or self.operating_point
        if point not in OPERATING_POINTS:
            raise ValueError(f"unknown operating point {point!r}")
        findings = [regex_exchange_findings(exchange) for exchange in exchanges]
        if self.classifier is not None:
            for position, finding in self._classify(exchanges, point):
                findings[position].append(finding)
        return [Verdict.of(found) for found in findings]

    def _classify(self, exchanges: Sequence[Exchange], point: str) -> list[tuple[int, Finding]]:
        """Classifier findings for every untrusted text of the batch, scored in one call."""
        assert self.classifier is not None
        items = [
            (position, item)
            for position, ex in enumerate(exchanges)
            for item in ex.texts
            if item.untrusted and item.text.strip()
        ]
        if not items:
            return []
        scores = self.classifier.scores([item.text for _, item in items])
        calibration = self.classifier.calibration
        threshold = calibration.threshold(point)
        strong = calibration.threshold("high_precision")
        found: list[tuple[int, Finding]] = []
        for (position, item), probability in zip(items, scores, strict=True):
            if probability < threshold:
                continue
            severity = Severity.HIGH if probability >= strong else Severity.MEDIUM
            # From the text as the detectors read it: a secret disguised with zero-width or
            # full-width characters is masked only once it reads as itself.
            excerpt = _head_excerpt(normalize(item.text))
            description = (
                f"Classifier: prompt injection, probability {probability:.2f} (threshold {threshold:.2f})"
            )
            finding = Finding(
                ML_PROMPT_INJECTION,
                severity,
                round(float(probability), 4),
                CLASSIFIER_DETECTOR,
                item.location,
                excerpt,
                description,
            )
            found.append((position, finding))
        return found
