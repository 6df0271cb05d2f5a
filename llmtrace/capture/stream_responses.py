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
_SUMMARY_DELTA = "response.reasoning_summary_text.delta"
# The slot of a reasoning item's summary: before its content parts (index 0 and up), which a
# summary precedes in the JSON object too.
_SUMMARY_SLOT = -1


class _TextSlot:
    """One text part of an output item: its type and text."""

    __slots__ = ("part_type", "section", "text")

    def __init__(self, part_type: str) -> None:
        self.part_type = part_type
        self.text = TextAccumulator()
        # The summary part (`summary_index`) the last delta belonged to.
        self.section = 0


# An output item's text part or tool call.
_Item = _TextSlot | ToolCallAccumulator


def _is_empty(item: _Item) -> bool:
    """Whether no delta brought anything for this item."""
    if isinstance(item, ToolCallAccumulator):
        return not item.arguments.pieces
    return not item.text.pieces


class ResponsesStream(StreamReader):
    """Deltas by output index and content index; the terminal event brings usage, status and any
    missing output."""

    __slots__ = ("_finals", "_finish_reason", "_items")

    def __init__(self, budget_chars: int) -> None:
        super().__init__(budget_chars)
        # (output_index, content_index) -> a text part or a tool call. A message item may hold
        # several parts (output_text, refusal): each is a part of its own, as in the JSON object.
        self._items: dict[tuple[int, int], _Item] = {}
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
                self._text(kind, part_type, payload, delta)
                if part_type == model.PART_REASONING:
                    if self.on_reasoning is not None:
                        self.on_reasoning(0, delta)
                elif self.on_text is not None:
                    self.on_text(0, delta)
        elif kind in _TOOL_CALL_DELTAS:
            delta = payload.get("delta")
            if isinstance(delta, str) and delta:
                self.deltas += 1
                output_index = payload.get("output_index")
                call = self._slot(output_index, 0, "")
                if isinstance(call, ToolCallAccumulator):
                    call.arguments.add(delta, self.budget)
                    if self.on_arguments is not None:
                        self.on_arguments(0, as_int(output_index) or 0, delta)
        elif kind == "response.output_item.added":
            added = as_dict(payload.get("item"))
            if added.get("type") in ("function_call", "custom_tool_call"):
                call = self._slot(payload.get("output_index"), 0, "")
                if isinstance(call, ToolCallAccumulator):
                    call.merge_ids(as_str(added.get("call_id")), as_str(added.get("name")))
        elif kind in ("response.created", "response.in_progress"):
            response = as_dict(payload.get("response"))
            self.set_identity(response.get("id"), response.get("model"))
        elif kind in _TERMINAL:
            self._terminal(as_dict(payload.get("response")))
        elif kind == "error":
            self._error_event(payload)

    def _text(self, kind: str, part_type: str, payload: dict[str, object], delta: str) -> None:
        if kind != _SUMMARY_DELTA:
            # Never below 0: that slot is the summary's.
            content_index = max(as_int(payload.get("content_index")) or 0, 0)
            slot = self._slot(payload.get("output_index"), content_index, part_type)
            if isinstance(slot, _TextSlot):
                slot.text.add(delta, self.budget)
            return
        # The summary parts of a reasoning item are one reasoning part, lines joined by newlines,
        # as the JSON reader (`response_item`) joins them.
        slot = self._slot(payload.get("output_index"), _SUMMARY_SLOT, part_type)
        if isinstance(slot, _TextSlot):
            section = as_int(payload.get("summary_index")) or 0
            if section != slot.section and slot.text.pieces:
                slot.text.add("\n", self.budget)
            slot.section = section
            slot.text.add(delta, self.budget)

    def _slot(self, output_index: object, content_index: int, part_type: str) -> _Item | None:
        """The item at (output_index, content_index), opened on first use with `part_type` (a
        tool call when empty); None past the limits. The first delta's type stays the part's."""
        index = as_int(output_index) or 0
        key = (index, content_index)
        item = self._items.get(key)
        if item is None:
            if (
                not (0 <= index < MAX_SLOTS and _SUMMARY_SLOT <= content_index < MAX_SLOTS)
                or not self.claim_slot()
            ):
                return None
            item = _TextSlot(part_type) if part_type else ToolCallAccumulator()
            self._items[key] = item
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
        filled = {output_index for (output_index, _), item in self._items.items() if not _is_empty(item)}
        for index, raw in enumerate(as_list(response.get("output"))[:MAX_SLOTS]):
            if index not in filled:
                final = responses_output_item(raw, self.budget)
                if final is not None:
                    self._finals[index] = final
                    self._tell_listeners(index, final)
        self._finish_reason = responses_finish_reason(response, has_tool_calls=self._has_tool_calls())

    def _tell_listeners(self, index: int, final: model.Message) -> None:
        """Hand an item that came only whole, in the last event, to the streaming checks, as
        its deltas would have been: they must see every answer, however it was streamed."""
        for part in final.parts:
            if not part.text:
                continue
            if part.type == model.PART_REASONING:
                if self.on_reasoning is not None:
                    self.on_reasoning(0, part.text)
            elif self.on_text is not None:
                self.on_text(0, part.text)
        if self.on_arguments is not None:
            for call in final.tool_calls:
                if call.arguments:
                    self.on_arguments(0, index, call.arguments)

    def _has_tool_calls(self) -> bool:
        streamed = any(isinstance(item, ToolCallAccumulator) for item in self._items.values())
        return streamed or any(final.tool_calls for final in self._finals.values())

    def choices(self) -> list[model.Choice]:
        """One choice holding every output item, or none when nothing was output."""
        streamed: dict[int, list[tuple[int, _Item]]] = {}
        for (output_index, content_index), item in self._items.items():
            streamed.setdefault(output_index, []).append((content_index, item))
        message = model.Message("assistant")
        for index in sorted(streamed.keys() | self._finals.keys()):
            final = self._finals.get(index)
            if final is not None:
                message.parts.extend(final.parts)
                message.tool_calls.extend(final.tool_calls)
                continue
            for _, item in sorted(streamed[index], key=_position):
                if isinstance(item, ToolCallAccumulator):
                    message.tool_calls.append(item.to_model())
                else:
                    message.parts.append(model.Part(item.part_type, text=item.text.text()))
        if not message.parts and not message.tool_calls:
            return []
        return [model.Choice(0, message, self._finish_reason)]


def _position(entry: tuple[int, _Item]) -> int:
    return entry[0]
