"""Streamed OpenAI Responses API events (`response.*`), ending with `response.completed`.

All output items go into one choice: text, refusal and reasoning parts in output order, and a
tool call per function call item.
"""

from __future__ import annotations

from llmtrace.capture import model
from llmtrace.capture.accumulate import TextAccumulator, ToolCallAccumulator
from llmtrace.capture.jsonvalues import as_dict, as_int, as_str
from llmtrace.capture.response_json import responses_finish_reason, responses_output
from llmtrace.capture.stream_base import MAX_SLOTS, StreamReader, event_object
from llmtrace.capture.usage import openai_usage

_TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete"})
_TEXT_DELTAS = {
    "response.output_text.delta": model.PART_TEXT,
    "response.refusal.delta": model.PART_REFUSAL,
    "response.reasoning_summary_text.delta": model.PART_REASONING,
    "response.reasoning_text.delta": model.PART_REASONING,
}

# An output item: a text part (its type and text) or a tool call.
_Item = tuple[str, TextAccumulator] | ToolCallAccumulator


class ResponsesStream(StreamReader):
    """Deltas by output index; the terminal event brings usage, status and any missing output."""

    __slots__ = ("_final", "_finish_reason", "_items")

    def __init__(self, budget_chars: int) -> None:
        super().__init__(budget_chars)
        # output_index -> a text part (type, text) or a tool call
        self._items: dict[int, _Item] = {}
        self._finish_reason = ""
        self._final: list[model.Choice] = []

    def on_event(self, event: bytes, data: bytes) -> None:
        """Take one event; its type is in the data (`event:` repeats it)."""
        payload = event_object(data)
        kind = as_str(payload.get("type"))
        part_type = _TEXT_DELTAS.get(kind)
        if part_type is not None:
            delta = payload.get("delta")
            if isinstance(delta, str) and delta:
                self.deltas += 1
                item = self._slot(payload.get("output_index"), part_type)
                if isinstance(item, tuple):
                    item[1].add(delta, self.budget)
                if self.on_text is not None and part_type != model.PART_REASONING:
                    self.on_text(0, delta)
        elif kind == "response.function_call_arguments.delta":
            delta = payload.get("delta")
            if isinstance(delta, str) and delta:
                self.deltas += 1
                call = self._slot(payload.get("output_index"), "")
                if isinstance(call, ToolCallAccumulator):
                    call.arguments.add(delta, self.budget)
        elif kind == "response.output_item.added":
            added = as_dict(payload.get("item"))
            if added.get("type") in ("function_call", "custom_tool_call"):
                call = self._slot(payload.get("output_index"), "")
                if isinstance(call, ToolCallAccumulator):
                    call.merge_ids(as_str(added.get("call_id")), as_str(added.get("name")))
        elif kind in ("response.created", "response.in_progress"):
            response = as_dict(payload.get("response"))
            self.set_identity(response.get("id"), response.get("model"))
        elif kind in _TERMINAL:
            self._terminal(as_dict(payload.get("response")))
        elif kind == "error":
            self.set_error(payload.get("error") or payload)
            self.done = True

    def _slot(
        self, output_index: object, part_type: str
    ) -> tuple[str, TextAccumulator] | ToolCallAccumulator | None:
        index = as_int(output_index) or 0
        item = self._items.get(index)
        if item is None:
            if not 0 <= index < MAX_SLOTS or not self.claim_slot():
                return None
            item = ToolCallAccumulator() if not part_type else (part_type, TextAccumulator())
            self._items[index] = item
        return item

    def _terminal(self, response: dict[str, object]) -> None:
        self.done = True
        self.set_identity(response.get("id"), response.get("model"))
        self.usage = openai_usage(response.get("usage")) or self.usage
        if response.get("error"):
            self.set_error(response.get("error"))
        if not self._items:
            # No deltas came (or none were kept): the final object holds the whole output.
            self._final = responses_output(response, self.budget)
        self._finish_reason = responses_finish_reason(response, has_tool_calls=self._has_tool_calls())

    def _has_tool_calls(self) -> bool:
        return any(isinstance(item, ToolCallAccumulator) for item in self._items.values())

    def choices(self) -> list[model.Choice]:
        """One choice holding every output item, or none when nothing was output."""
        if self._final:
            return self._final
        if not self._items:
            return []
        message = model.Message("assistant")
        for index in sorted(self._items):
            item = self._items[index]
            if isinstance(item, ToolCallAccumulator):
                message.tool_calls.append(item.to_model())
            else:
                message.parts.append(model.Part(item[0], text=item[1].text()))
        return [model.Choice(0, message, self._finish_reason)]
