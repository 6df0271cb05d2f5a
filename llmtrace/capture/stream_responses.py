"""Streamed OpenAI Responses API events (`response.*`), ending with `response.completed`.

All output items go into one choice: text, refusal and reasoning parts in output order, and a
tool call per function call or custom tool call item.
"""

from __future__ import annotations

from llmtrace.capture import model
from llmtrace.capture.accumulate import TextAccumulator, ToolCallAccumulator
from llmtrace.capture.jsonvalues import as_dict, as_int, as_list, as_str
from llmtrace.capture.response_json import responses_finish_reason, responses_output_item
from llmtrace.capture.stream_base import MAX_SLOTS, StreamReader, event_object
from llmtrace.capture.usage import openai_usage

_TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete"})
_TEXT_DELTAS = {
    "response.output_text.delta": model.PART_TEXT,
    "response.refusal.delta": model.PART_REFUSAL,
    "response.reasoning_summary_text.delta": model.PART_REASONING,
    "response.reasoning_text.delta": model.PART_REASONING,
}

_TOOL_CALL_DELTAS = frozenset(
    {"response.function_call_arguments.delta", "response.custom_tool_call_input.delta"}
)

# An output item: a text part (its type and text) or a tool call.
_Item = tuple[str, TextAccumulator] | ToolCallAccumulator


def _is_empty(item: _Item | None) -> bool:
    """Whether no delta brought anything for this item."""
    if item is None:
        return True
    if isinstance(item, ToolCallAccumulator):
        return not item.arguments.pieces
    return not item[1].pieces


class ResponsesStream(StreamReader):
    """Deltas by output index; the terminal event brings usage, status and any missing output."""

    __slots__ = ("_finals", "_finish_reason", "_items")

    def __init__(self, budget_chars: int) -> None:
        super().__init__(budget_chars)
        # output_index -> a text part (type, text) or a tool call
        self._items: dict[int, _Item] = {}
        self._finish_reason = ""
        # output_index -> the terminal event's item, for the items no delta filled
        self._finals: dict[int, model.Message] = {}

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
        elif kind in _TOOL_CALL_DELTAS:
            delta = payload.get("delta")
            if isinstance(delta, str) and delta:
                self.deltas += 1
                output_index = payload.get("output_index")
                call = self._slot(output_index, "")
                if isinstance(call, ToolCallAccumulator):
                    call.arguments.add(delta, self.budget)
                    if self.on_arguments is not None:
                        self.on_arguments(0, as_int(output_index) or 0, delta)
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
            self._error_event(payload)

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

    def _error_event(self, payload: dict[str, object]) -> None:
        nested = payload.get("error")
        if nested:
            self.set_error(nested)
        else:
            # The documented event has `code` and `message` at the top level, where `type` is
            # the event's own ("error"): the code says what went wrong.
            self.error_message = as_str(payload.get("message")) or self.error_message
            self.error_type = as_str(payload.get("code")) or self.error_type or "error"
        self.done = True

    def _terminal(self, response: dict[str, object]) -> None:
        self.done = True
        self.set_identity(response.get("id"), response.get("model"))
        self.usage = openai_usage(response.get("usage")) or self.usage
        if response.get("error"):
            self.set_error(response.get("error"))
        # Deltas need not bring everything: arguments may come only in `*.done` events, and
        # output may come with no deltas at all. The final object's output holds every item,
        # by output index: it fills those the deltas left empty.
        for index, raw in enumerate(as_list(response.get("output"))[:MAX_SLOTS]):
            if _is_empty(self._items.get(index)):
                final = responses_output_item(raw, self.budget)
                if final is not None:
                    self._finals[index] = final
        self._finish_reason = responses_finish_reason(response, has_tool_calls=self._has_tool_calls())

    def _has_tool_calls(self) -> bool:
        streamed = any(isinstance(item, ToolCallAccumulator) for item in self._items.values())
        return streamed or any(final.tool_calls for final in self._finals.values())

    def choices(self) -> list[model.Choice]:
        """One choice holding every output item, or none when nothing was output."""
        message = model.Message("assistant")
        for index in sorted(self._items.keys() | self._finals.keys()):
            final = self._finals.get(index)
            item = self._items.get(index)
            if final is not None:
                message.parts.extend(final.parts)
                message.tool_calls.extend(final.tool_calls)
            elif isinstance(item, ToolCallAccumulator):
                message.tool_calls.append(item.to_model())
            elif item is not None:
                message.parts.append(model.Part(item[0], text=item[1].text()))
        if not message.parts and not message.tool_calls:
            return []
        return [model.Choice(0, message, self._finish_reason)]
