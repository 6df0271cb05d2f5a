"""Streamed OpenAI chat completions and legacy completions (`data: {chunk}` ... `data: [DONE]`)."""

from __future__ import annotations

from llmtrace.capture import model
from llmtrace.capture.accumulate import ChoiceAccumulator, ToolCallAccumulator
from llmtrace.capture.jsonvalues import as_dict, as_int, as_list, as_str, first_given
from llmtrace.capture.parts import content_part
from llmtrace.capture.stream_base import MAX_SLOTS, StreamReader, event_object
from llmtrace.capture.usage import openai_usage


class ChatStream(StreamReader):
    """Chat completion chunks (`delta`) and legacy completion chunks (`text`) by choice index."""

    __slots__ = ("_choices",)

    def __init__(self, budget_chars: int) -> None:
        super().__init__(budget_chars)
        self._choices: dict[int, ChoiceAccumulator] = {}

    def on_event(self, event: bytes, data: bytes) -> None:
        """Take one chunk, or the `[DONE]` marker."""
        if data == b"[DONE]":
            self.done = True
            return
        chunk = event_object(data)
        if not chunk:
            return
        self.set_identity(chunk.get("id"), chunk.get("model"))
        error = chunk.get("error")
        # An error sent mid-stream ends the answer. By its value, not its key: some
        # OpenAI-compatible providers put `"error": null` in every chunk (as `read_error` does).
        # Its choices are still read: OpenRouter's error chunk ends them with `"finish_reason":
        # "error"`.
        if error:
            self.set_error(error)
        # Groq reports a stream's usage in its last chunk's `x_groq.usage`, not in `usage`.
        usage = chunk.get("usage") or as_dict(chunk.get("x_groq")).get("usage")
        if usage:
            self.usage = openai_usage(usage)
        for raw in as_list(chunk.get("choices")):
            item = as_dict(raw)
            index = as_int(item.get("index")) or 0
            choice = self._choice(index)
            if choice is None:
                continue
            delta = item.get("delta")
            if delta is None:
                text = item.get("text")  # legacy completions
                if isinstance(text, str) and text:
                    self.deltas += 1
                    choice.content.add(text, self.budget)
                    if self.on_text is not None:
                        self.on_text(index, text)
            else:
                self._delta(index, choice, as_dict(delta))
            reason = item.get("finish_reason")
            if isinstance(reason, str) and reason:
                choice.finish_reason = reason

    def _choice(self, index: int) -> ChoiceAccumulator | None:
        choice = self._choices.get(index)
        if choice is None:
            if not 0 <= index < MAX_SLOTS or not self.claim_slot():
                return None
            choice = self._choices[index] = ChoiceAccumulator()
        return choice

    def _delta(self, index: int, choice: ChoiceAccumulator, delta: dict[str, object]) -> None:
        role = delta.get("role")
        if isinstance(role, str) and role:
            choice.role = role
        content = delta.get("content")
        if isinstance(content, list):  # a few servers stream content as parts: their text
            content = "".join(part.text for item in content if (part := content_part(item)) and part.text)
        if isinstance(content, str) and content:
            self.deltas += 1
            choice.content.add(content, self.budget)
            if self.on_text is not None:
                self.on_text(index, content)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self.deltas += 1
            choice.refusal.add(refusal, self.budget)
            if self.on_text is not None:
                self.on_text(index, refusal)
        # `or`: a server that writes every field sends `"reasoning_content": null` beside `reasoning`.
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:  # DeepSeek, vLLM and others stream reasoning here
            self.deltas += 1
            choice.reasoning.add(reasoning, self.budget)
            if self.on_reasoning is not None:
                self.on_reasoning(index, reasoning)
        # An audio answer streams its transcript (beside base64 `data`, not kept) under `audio`.
        transcript = as_dict(delta.get("audio")).get("transcript")
        if isinstance(transcript, str) and transcript:
            self.deltas += 1
            choice.audio.add(transcript, self.budget)
            if self.on_text is not None:
                self.on_text(index, transcript)
        for position, raw in enumerate(as_list(delta.get("tool_calls"))):
            item = as_dict(raw)
            # A custom (freeform) tool's call streams its name and `input` under `custom`.
            function = as_dict(item.get("function")) or as_dict(item.get("custom"))
            item_id = as_str(item.get("id"))
            name = as_str(function.get("name"))
            call_index = as_int(item.get("index"))
            if call_index is None:
                key = position
                if choice.tool_calls:
                    # No index (some OpenAI-compatible servers): a delta with a new id starts the
                    # next call; one without continues the latest.
                    latest = max(choice.tool_calls)
                    opened = item_id and choice.tool_calls[latest].id not in ("", item_id)
                    key = latest + 1 if opened else latest
            else:
                key = choice.call_keys.get(call_index, call_index)
                current = choice.tool_calls.get(key)
                if current is not None and item_id and name and current.id not in ("", item_id):
                    # Ollama gives every parallel call `index: 0`: a delta opening a call (its own
                    # id and a name) at an index another call holds is the next call, and the
                    # index's later deltas continue it.
                    key = choice.call_keys[call_index] = max(choice.tool_calls) + 1
            if key not in choice.tool_calls and not self.claim_slot():
                continue
            call = choice.tool_call(key)
            call.merge_ids(item_id, name)
            kind = as_str(item.get("type"))
            if kind:
                call.type = kind
            self._arguments(call, first_given(function, "arguments", "input"), index, key)
        function_call = as_dict(delta.get("function_call"))  # legacy functions
        if function_call:
            if choice.function_call is None:
                choice.function_call = ToolCallAccumulator()
            choice.function_call.merge_ids("", as_str(function_call.get("name")))
            self._arguments(choice.function_call, function_call.get("arguments"), index, -1)

    def _arguments(self, call: ToolCallAccumulator, piece: object, index: int, key: int) -> None:
        if isinstance(piece, str) and piece:
            self.deltas += 1
            call.arguments.add(piece, self.budget)
            if self.on_arguments is not None:
                self.on_arguments(index, key, piece)

    def choices(self) -> list[model.Choice]:
        """Choices in index order."""
        return [self._choices[i].to_choice(i) for i in sorted(self._choices)]
