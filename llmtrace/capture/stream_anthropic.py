"""Streamed Anthropic messages: `message_start`, content blocks and their deltas, `message_delta`,
ending with `message_stop`."""

from __future__ import annotations

from llmtrace.capture import model
from llmtrace.capture.accumulate import TextAccumulator, ToolCallAccumulator
from llmtrace.capture.estimate import text_tokens
from llmtrace.capture.jsonvalues import as_dict, as_int, as_str, to_json_text
from llmtrace.capture.parts import ANTHROPIC_TOOL_CALLS, content_part
from llmtrace.capture.stream_base import MAX_SLOTS, StreamReader, event_object
from llmtrace.capture.usage import anthropic_usage

_BLOCK_PARTS = {"text": model.PART_TEXT, "thinking": model.PART_REASONING}
_DELTA_FIELDS = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}


class AnthropicStream(StreamReader):
    """Content blocks by index: tool_use blocks become tool calls, the others parts."""

    __slots__ = ("_blocks", "_output_counted", "_role", "_stop_reason")

    def __init__(self, budget_chars: int) -> None:
        super().__init__(budget_chars)
        # index -> a text or thinking block (part type, text), a tool call, or a block of no
        # streamed content (redacted thinking, server tool results) as the part it stands for
        self._blocks: dict[int, tuple[str, TextAccumulator] | ToolCallAccumulator | model.Part] = {}
        self._stop_reason = ""
        self._role = "assistant"
        # `message_delta` reported the output tokens (`message_start` says 1 before any output).
        self._output_counted = False

    def on_event(self, event: bytes, data: bytes) -> None:
        """Take one event; its type is in the data (`event:` repeats it)."""
        payload = event_object(data)
        kind = payload.get("type")
        if kind == "content_block_delta":
            self._delta(payload)
        elif kind == "content_block_start":
            self._start(payload)
        elif kind == "message_start":
            message = as_dict(payload.get("message"))
            self.set_identity(message.get("id"), message.get("model"))
            self._role = as_str(message.get("role")) or self._role
            self.usage = anthropic_usage(message.get("usage"), self.usage)
        elif kind == "message_delta":
            reason = as_dict(payload.get("delta")).get("stop_reason")
            if isinstance(reason, str) and reason:
                self._stop_reason = reason
            usage = as_dict(payload.get("usage"))
            self._output_counted = self._output_counted or "output_tokens" in usage
            self.usage = anthropic_usage(usage, self.usage)
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            self.set_error(payload.get("error"))
            self.done = True  # the stream ended as the API says it may: not a cut

    def _start(self, payload: dict[str, object]) -> None:
        index = as_int(payload.get("index"))
        if index is None or index in self._blocks or not 0 <= index < MAX_SLOTS or not self.claim_slot():
            return
        block = as_dict(payload.get("content_block"))
        kind = as_str(block.get("type"))
        if kind in ANTHROPIC_TOOL_CALLS:
            call = ToolCallAccumulator(as_str(block.get("id")), as_str(block.get("name")))
            initial = block.get("input")
            if initial:  # usually `{}`, the arguments follow as input_json_delta pieces
                text = to_json_text(initial)
                call.arguments.add(text, self.budget)
                if self.on_arguments is not None:
                    self.on_arguments(0, index, text)
            self._blocks[index] = call
            return
        part_type = _BLOCK_PARTS.get(kind)
        if part_type is None:
            # Kept as the JSON reader keeps the same block (`content_part`): an `other` part
            # naming its type for `redacted_thinking`, so streamed and whole answers agree.
            part = content_part(block)
            if part is not None:
                if part.text:  # a plain-text document block
                    part.text = self.budget.take(part.text)
                self._blocks[index] = part
            return
        accumulator = TextAccumulator()
        initial_text = as_str(block.get(kind))
        accumulator.add(initial_text, self.budget)
        self._blocks[index] = (part_type, accumulator)
        # Anthropic's API starts a text block empty; a compatible upstream may start it with text,
        # which the streaming checks must see as they see every delta.
        if initial_text:
            self._hand_on(part_type, initial_text)

    def _delta(self, payload: dict[str, object]) -> None:
        delta = as_dict(payload.get("delta"))
        field = _DELTA_FIELDS.get(as_str(delta.get("type")))
        if field is None:
            return  # signature and citation deltas carry no content
        piece = delta.get(field)
        if not isinstance(piece, str) or not piece:
            return
        self.deltas += 1
        index = as_int(payload.get("index")) or 0
        block = self._blocks.get(index)
        if isinstance(block, ToolCallAccumulator):
            block.arguments.add(piece, self.budget)
            if self.on_arguments is not None:
                self.on_arguments(0, index, piece)
        elif isinstance(block, tuple):
            block[1].add(piece, self.budget)
            self._hand_on(block[0], piece)

    def _hand_on(self, part_type: str, piece: str) -> None:
        """Text and thinking to their listeners (the streaming checks)."""
        if part_type == model.PART_TEXT:
            if self.on_text is not None:
                self.on_text(0, piece)
        elif part_type == model.PART_REASONING and self.on_reasoning is not None:
            self.on_reasoning(0, piece)

    def fill(self, response: model.ParsedResponse) -> None:
        """Copy what the stream said into `response`; output tokens are estimated when the
        stream ended before `message_delta` counted them."""
        super().fill(response)
        usage = response.usage
        if usage is None or self._output_counted:
            return
        # As `estimate.estimate_usage` counts output: the text offered, at least a token a delta.
        estimate = max(text_tokens(self.budget.offered), self.deltas)
        usage.output_tokens = max(usage.output_tokens, estimate)
        usage.total_tokens = usage.input_tokens + usage.output_tokens
        usage.estimated = True

    def choices(self) -> list[model.Choice]:
        """One choice holding the blocks in index order, or none when no block started."""
        if not self._blocks:
            return []
        message = model.Message(self._role)
        for index in sorted(self._blocks):
            block = self._blocks[index]
            if isinstance(block, ToolCallAccumulator):
                call = block.to_model()
                # A tool_use input is an object: one streamed as nothing (no deltas, or only
                # empty ones) is `{}`, as the JSON reader writes the same call.
                call.arguments = call.arguments or "{}"
                message.tool_calls.append(call)
            elif isinstance(block, model.Part):
                message.parts.append(block)
            else:
                message.parts.append(model.Part(block[0], text=block[1].text()))
        return [model.Choice(0, message, self._stop_reason)]
