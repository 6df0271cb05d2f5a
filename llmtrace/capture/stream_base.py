"""What every streamed-answer reader shares: identity, usage, errors, the budget and the end."""

from __future__ import annotations

from collections.abc import Callable

from llmtrace.capture import model
from llmtrace.capture.accumulate import Budget
from llmtrace.capture.jsonvalues import as_dict, as_str, loads

#: Choices, content blocks and tool calls one stream may open; an upstream sending more indexes
#: than this is broken or hostile, and the rest is ignored (memory stays bounded).
MAX_SLOTS = 10_000


class StreamReader:
    """Base of the per-API readers: `on_event` for each SSE event, then `fill` once at the end."""

    __slots__ = (
        "budget",
        "deltas",
        "done",
        "error_message",
        "error_type",
        "id",
        "model",
        "on_arguments",
        "on_reasoning",
        "on_text",
        "slots",
        "usage",
    )

    def __init__(self, budget_chars: int) -> None:
        self.budget = Budget(budget_chars)
        self.id = ""
        self.model = ""
        self.usage: model.Usage | None = None
        self.error_message = ""
        self.error_type = ""
        #: The terminal event arrived.
        self.done = False
        #: Content deltas seen, kept or not: a lower bound of the output tokens.
        self.deltas = 0
        self.slots = 0
        #: Called with (choice index, piece) for every piece of answer text as it arrives, whatever
        #: the budget keeps (streaming checks); None when nobody listens.
        self.on_text: Callable[[int, str], None] | None = None
        #: Called with (choice index, call key, piece) for every piece of a tool call's arguments
        #: as it arrives; the key tells the calls of one choice apart (the stream's own index of
        #: the call, -1 for a legacy `function_call`). None when nobody listens.
        self.on_arguments: Callable[[int, int, str], None] | None = None
        #: Called with (choice index, piece) for every piece of reasoning text (DeepSeek's
        #: `reasoning_content`, Responses' reasoning deltas, Anthropic's thinking), which clients
        #: show as they show the answer; None when nobody listens.
        self.on_reasoning: Callable[[int, str], None] | None = None

    def on_event(self, event: bytes, data: bytes) -> None:
        """Take one SSE event."""
        raise NotImplementedError

    def choices(self) -> list[model.Choice]:
        """The choices assembled so far."""
        raise NotImplementedError

    def claim_slot(self) -> bool:
        """Whether one more choice, block or tool call may be opened."""
        if self.slots >= MAX_SLOTS:
            self.budget.truncated = True
            return False
        self.slots += 1
        return True

    def set_identity(self, response_id: object, response_model: object) -> None:
        """Keep the first id and model the stream names."""
        if not self.id:
            self.id = as_str(response_id)
        if not self.model:
            self.model = as_str(response_model)

    def set_error(self, error: object) -> None:
        """Keep the message and type (or code) of an error object."""
        details = as_dict(error)
        self.error_message = as_str(details.get("message")) or self.error_message
        self.error_type = as_str(details.get("type")) or as_str(details.get("code")) or self.error_type

    def fill(self, response: model.ParsedResponse) -> None:
        """Copy what the stream said into `response`."""
        response.id = self.id
        response.model = self.model
        response.choices = self.choices()
        response.usage = self.usage
        response.error_message = self.error_message
        response.error_type = self.error_type
        response.truncated = response.truncated or self.budget.truncated
        response.stream_cut = not self.done


def event_object(data: bytes) -> dict[str, object]:
    """The JSON object in an event's data; empty when it is not one."""
    # `data:  {...}`: SSE takes off one space after the colon; JSON allows the rest.
    return as_dict(loads(data)) if data[:1] == b"{" or data.lstrip()[:1] == b"{" else {}
