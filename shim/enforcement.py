"""What to do about findings: the enforcement policy as a pure function (no I/O, no protobuf).

`Policy.from_settings` reads `enforcement.*`; `Policy.decide(findings)` answers `log`, `flag` or
`block` for one request. A finding is *actionable* when its severity is at least
`enforcement.min_severity` and its confidence at least `enforcement.min_confidence`; each
actionable finding's action is its category's override (`enforcement.injection`, `jailbreak`,
`pii`, `secrets`, `tool_use`), or `enforcement.mode` where that is `inherit`. The strongest action
among actionable findings wins (block > flag > log). Findings below the floors are still recorded
on the span, never acted on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from llmtrace.config.schema import EnforcementSettings
from llmtrace.security.findings import Finding, Severity

LOG: Final = "log"
FLAG: Final = "flag"
BLOCK: Final = "block"
INHERIT: Final = "inherit"
_ACTION_RANK: Final = {LOG: 0, FLAG: 1, BLOCK: 2}

INJECTION: Final = "injection"
JAILBREAK: Final = "jailbreak"
PII: Final = "pii"
SECRETS: Final = "secrets"
TOOL_USE: Final = "tool_use"
#: Findings of a type outside the table below (a future detector): they follow `enforcement.mode`.
OTHER: Final = "other"
CATEGORIES: Final = (INJECTION, JAILBREAK, PII, SECRETS, TOOL_USE)

#: Finding type -> enforcement category (the types the detectors in llmtrace.security emit, plus
#: the classifier's and the predecessor's names).
CATEGORY_OF_TYPE: Final[Mapping[str, str]] = MappingProxyType(
    {
        "prompt_injection": INJECTION,
        "role_injection": INJECTION,
        "header_injection": INJECTION,
        "prompt_extraction": INJECTION,
        "synonym_injection": INJECTION,
        "encoding_attack": INJECTION,
        "is_shot_attack": INJECTION,
        "is_repeated_token": INJECTION,
        "context_flooding": INJECTION,
        "ml_prompt_injection": INJECTION,
        "jailbreak": JAILBREAK,
        "pii_detected": PII,
        "secret_leakage": SECRETS,
        "data_leakage": SECRETS,
        "shell_injection": TOOL_USE,
        "p2sql_injection": TOOL_USE,
        "data_exfiltration": TOOL_USE,
        "dangerous_command": TOOL_USE,
        "suspicious_url": TOOL_USE,
        "sensitive_file_access": TOOL_USE,
    }
)

_SEVERITY_BY_NAME: Final = {severity.value: severity for severity in Severity}


def category_of(finding_type: str) -> str:
    """The enforcement category of a finding type; `other` for types the table does not know."""
    return CATEGORY_OF_TYPE.get(finding_type, OTHER)


def stronger(a: str, b: str) -> str:
    """The stronger of two actions."""
    return a if _ACTION_RANK[a] >= _ACTION_RANK[b] else b


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer for one request."""

    #: `log`, `flag` or `block`: the strongest action among actionable findings.
    action: str = LOG
    #: Actionable findings whose own action is flag or block, most severe first.
    acted_on: tuple[Finding, ...] = ()
    #: Categories of the findings that call for `action` itself (what the flagged / blocked
    #: counters are labelled with), in first-seen order, without repeats.
    categories: tuple[str, ...] = ()

    @property
    def flagged(self) -> bool:
        """Whether the request is to be flagged (headers) or blocked."""
        return self.action != LOG

    def findings_header(self) -> str:
        """`X-LLMTrace-Findings`: `type:confidence` per finding type acted on, highest confidence
        of each type, most severe type first, e.g. `prompt_injection:0.90,pii_detected:0.95`."""
        best: dict[str, float] = {}
        for finding in self.acted_on:
            if finding.confidence > best.get(finding.type, -1.0):
                best[finding.type] = finding.confidence
        return ",".join(f"{kind}:{confidence:.2f}" for kind, confidence in best.items())

    def types(self) -> tuple[str, ...]:
        """Distinct finding types acted on, most severe first."""
        return tuple(dict.fromkeys(finding.type for finding in self.acted_on))


NO_ACTION: Final = Decision()


@dataclass(frozen=True, slots=True)
class Policy:
    """`enforcement.*` resolved: the floors and the action of each category."""

    mode: str = LOG
    min_severity: Severity = Severity.HIGH
    min_confidence: float = 0.5
    #: Action per category with `inherit` resolved (categories absent here follow `mode`).
    actions: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: EnforcementSettings) -> Policy:
        """The policy `enforcement.*` describes (values were validated by the config loader)."""
        mode = settings.mode
        overrides = {
            INJECTION: settings.injection,
            JAILBREAK: settings.jailbreak,
            PII: settings.pii,
            SECRETS: settings.secrets,
            TOOL_USE: settings.tool_use,
        }
        actions = {category: mode if value == INHERIT else value for category, value in overrides.items()}
        return cls(
            mode=mode,
            min_severity=_SEVERITY_BY_NAME[settings.min_severity],
            min_confidence=settings.min_confidence,
            actions=MappingProxyType(actions),
        )

    @property
    def active(self) -> bool:
        """Whether any finding could be flagged or blocked; when not, nothing is scanned inline."""
        return self.mode != LOG or any(action != LOG for action in self.actions.values())

    @property
    def can_block(self) -> bool:
        """Whether some finding could block a request (`block` as the mode or a category's action)."""
        return self.mode == BLOCK or any(action == BLOCK for action in self.actions.values())

    def actionable(self, finding: Finding) -> bool:
        """Whether `finding` clears both floors."""
        return finding.severity.rank >= self.min_severity.rank and finding.confidence >= self.min_confidence

    def action_for(self, finding: Finding) -> str:
        """What `finding` alone calls for: its category's action when actionable, else `log`."""
        if not self.actionable(finding):
            return LOG
        return self.actions.get(category_of(finding.type), self.mode)

    def decide(self, findings: Iterable[Finding]) -> Decision:
        """The action for a request with these findings, and the findings that call for it."""
        action = LOG
        acted: list[Finding] = []
        categories: dict[str, dict[str, None]] = {FLAG: {}, BLOCK: {}}
        for finding in findings:
            wanted = self.action_for(finding)
            if wanted == LOG:
                continue
            action = stronger(action, wanted)
            acted.append(finding)
            categories[wanted][category_of(finding.type)] = None
        if not acted:
            return NO_ACTION
        acted.sort(key=lambda f: (-f.severity.rank, -f.confidence))
        return Decision(action, tuple(acted), tuple(categories[action]))


def asks_core(enforcement: EnforcementSettings) -> bool:
    """Whether inline enforcement calls the core's `Analyze` for every request (depth `full`)."""
    return enforcement.depth == "full" and Policy.from_settings(enforcement).active
