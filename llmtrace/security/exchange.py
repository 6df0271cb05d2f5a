"""The texts of one exchange, as the analyzer sees them: no protobuf, no HTTP.

The core builds these from ingested spans and `Analyze` requests, the shim from the request it is
about to forward. Each text carries its location (`request.messages[2].content`) and the role it was
sent under, because the role decides which tiers apply: instructions in a user or tool message may be
an attack on the model, the same words in the operator's own system prompt are not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

Side = Literal["request", "response"]

#: Roles whose text the application itself wrote: the operator's instructions and the model's own
#: earlier turns. They get the leakage tiers only. Every other role, including ones this list does
#: not know (`human`, `ipython`, `observation`, a misspelling), is treated as outside input and gets
#: every tier: an unknown role must not be a way around the injection checks.
TRUSTED_ROLES: Final = frozenset({"system", "developer", "assistant", "model"})


@dataclass(frozen=True, slots=True)
class Text:
    """One piece of text at one place in an exchange."""

    text: str
    location: str
    side: Side = "request"
    role: str = "user"

    @property
    def untrusted(self) -> bool:
        """Whether injection tiers apply: request text sent under an untrusted role."""
        return self.side == "request" and self.role.strip().lower() not in TRUSTED_ROLES


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call the model asked for (in a response) or that the history replays (in a request)."""

    name: str
    arguments: str
    location: str


@dataclass(frozen=True, slots=True)
class Exchange:
    """Everything of one request/response pair that the detectors read."""

    texts: tuple[Text, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    # The operator's system prompt(s), for spotting them echoed back in an answer.
    system_prompts: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def of_text(cls, text: str, location: str = "text") -> Exchange:
        """A single prompt, judged as a user message."""
        return cls(texts=(Text(text, location),))
