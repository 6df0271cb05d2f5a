"""Bounded accumulation of streamed answers: text pieces, tool calls and choices.

Every piece of text a stream delivers goes through one `Budget` per response, so that memory per
stream stays within the capture limit however long the answer; deltas past the budget are
counted, not kept.
"""

from __future__ import annotations

from llmtrace.capture import model


class Budget:
    """Characters of content one response may still keep."""

    __slots__ = ("offered", "remaining", "truncated")

    def __init__(self, chars: int) -> None:
        self.remaining = max(chars, 0)
        self.truncated = False
        #: Characters offered, kept or not: what usage estimation counts.
        self.offered = 0

    def take(self, text: str) -> str:
        """The part of `text` that fits (all of it, a prefix, or nothing)."""
        size = len(text)
        self.offered += size
        if size <= self.remaining:
            self.remaining -= size
            return text
        kept = text[: self.remaining]
        self.remaining = 0
        self.truncated = True
        return kept

    def exhaust(self) -> None:
        """Keep nothing more: text after a gap (bytes skipped unread) would join text it does not
        follow, so the answer stops at the gap and is marked truncated."""
        self.remaining = 0
        self.truncated = True


class TextAccumulator:
    """Text arriving in pieces; joined once, at the end (no quadratic concatenation)."""

    __slots__ = ("pieces",)

    def __init__(self) -> None:
        self.pieces: list[str] = []

    def add(self, piece: str, budget: Budget) -> None:
        """Append `piece`, as much of it as `budget` allows."""
        if piece:
            kept = budget.take(piece)
            if kept:
                self.pieces.append(kept)

    def text(self) -> str:
        """The text so far."""
        return "".join(self.pieces)


class ToolCallAccumulator:
    """One tool call assembled from deltas."""

    __slots__ = ("arguments", "id", "name", "type")

    def __init__(self, call_id: str = "", name: str = "", call_type: str = "function") -> None:
        self.id = call_id
        self.name = name
        self.type = call_type
        self.arguments = TextAccumulator()

    def merge_ids(self, call_id: str, name: str) -> None:
        """Concatenate streamed id and name pieces; a repeated full value is not doubled."""
        if call_id and call_id != self.id:
            self.id += call_id
        if name and name != self.name:
            self.name += name

    def to_model(self) -> model.ToolCall:
        """The finished call."""
        return model.ToolCall(self.id, self.type or "function", self.name, self.arguments.text())


class ChoiceAccumulator:
    """One choice (or content block sequence) assembled from deltas."""

    __slots__ = (
        "audio",
        "call_keys",
        "content",
        "finish_reason",
        "function_call",
        "reasoning",
        "refusal",
        "role",
        "tool_calls",
    )

    def __init__(self) -> None:
        self.role = "assistant"
        self.content = TextAccumulator()
        self.refusal = TextAccumulator()
        self.reasoning = TextAccumulator()
        #: The transcript of an audio answer (`delta.audio.transcript`): what the model said.
        self.audio = TextAccumulator()
        self.tool_calls: dict[int, ToolCallAccumulator] = {}
        #: The stream's tool call index -> the key of the call its deltas continue, where the two
        #: differ (a server reusing one index for several calls, see `stream_openai`).
        self.call_keys: dict[int, int] = {}
        self.function_call: ToolCallAccumulator | None = None
        self.finish_reason = ""

    def tool_call(self, index: int) -> ToolCallAccumulator:
        """The call at `index`, created on first use."""
        call = self.tool_calls.get(index)
        if call is None:
            call = self.tool_calls[index] = ToolCallAccumulator()
        return call

    def to_choice(self, index: int) -> model.Choice:
        """The finished choice; parts in the order reasoning, text, refusal, audio transcript
        (reasoning streams before the answer; `response_json` orders a whole message the same way)."""
        parts: list[model.Part] = []
        if self.reasoning.pieces:
            parts.append(model.Part(model.PART_REASONING, text=self.reasoning.text()))
        if self.content.pieces:
            parts.append(model.Part(model.PART_TEXT, text=self.content.text()))
        if self.refusal.pieces:
            parts.append(model.Part(model.PART_REFUSAL, text=self.refusal.text()))
        if self.audio.pieces:
            parts.append(model.Part(model.PART_AUDIO, text=self.audio.text()))
        calls = [self.tool_calls[i].to_model() for i in sorted(self.tool_calls)]
        if self.function_call is not None:
            calls.append(self.function_call.to_model())
        message = model.Message(self.role or "assistant", parts, tool_calls=calls)
        return model.Choice(index, message, self.finish_reason)
