"""Complete (non-streamed) JSON response bodies of each API, read into a `ParsedResponse`."""

from __future__ import annotations

import re
from collections.abc import Callable

from llmtrace.capture import model
from llmtrace.capture.accumulate import Budget
from llmtrace.capture.jsonvalues import JsonObject, as_dict, as_int, as_list, as_str, loads, to_json_text
from llmtrace.capture.parts import ANTHROPIC_TOOL_CALLS, legacy_function_call, openai_tool_calls, text_parts
from llmtrace.capture.request_openai import response_item
from llmtrace.capture.usage import anthropic_usage, openai_usage

_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


def read_error(body: JsonObject, response: model.ParsedResponse) -> bool:
    """Fill the upstream error of an OpenAI (`{"error": {...}}`) or Anthropic
    (`{"type": "error", "error": {...}}`) error body; False when `body` is not one."""
    error = body.get("error")
    if not error and body.get("object") == "error" and isinstance(body.get("message"), str):
        # vLLM before 0.10 (and servers built on its protocol) put the error's fields at the
        # top level: `{"object": "error", "message": ..., "type": "BadRequestError", "code": 400}`.
        error = body
    elif not error or (body.get("type") not in (None, "error")):
        return False
    if isinstance(error, str):  # some OpenAI-compatible servers send a bare message
        response.error_message = error
        return True
    details = as_dict(error)
    if not details:
        return False
    response.error_message = as_str(details.get("message"))
    response.error_type = as_str(details.get("type")) or as_str(details.get("code"))
    return True


def read_chat(body: JsonObject, response: model.ParsedResponse, budget: Budget) -> None:
    """A chat completion (`message`) or legacy completion (`text`) object."""
    _identity(body, response)
    response.usage = openai_usage(body.get("usage"))
    for position, raw in enumerate(as_list(body.get("choices"))):
        item = as_dict(raw)
        index = as_int(item.get("index"))
        reason = as_str(item.get("finish_reason"))
        if "message" in item:
            message = _chat_message(as_dict(item.get("message")), budget)
        else:
            message = model.Message("assistant", _budget_parts(text_parts(as_str(item.get("text"))), budget))
        response.choices.append(model.Choice(position if index is None else index, message, reason))


def read_embeddings(body: JsonObject, response: model.ParsedResponse, budget: Budget) -> None:
    """An embeddings list: only the model and usage (the vectors are not content anyone reads)."""
    response.model = as_str(body.get("model"))
    response.usage = openai_usage(body.get("usage"))


def read_responses(body: JsonObject, response: model.ParsedResponse, budget: Budget) -> None:
    """A Responses API object."""
    _identity(body, response)
    response.usage = openai_usage(body.get("usage"))
    response.choices = responses_output(body, budget)
    if body.get("error"):
        read_error(body, response)


def read_messages(body: JsonObject, response: model.ParsedResponse, budget: Budget) -> None:
    """An Anthropic message: content blocks become parts and tool calls of one choice."""
    _identity(body, response)
    response.usage = anthropic_usage(body.get("usage"))
    message = model.Message(as_str(body.get("role")) or "assistant")
    for raw in as_list(body.get("content")):
        block = as_dict(raw)
        if block.get("type") in ANTHROPIC_TOOL_CALLS:
            arguments = budget.take(to_json_text(block.get("input")))
            message.tool_calls.append(
                model.ToolCall(as_str(block.get("id")), "function", as_str(block.get("name")), arguments)
            )
        else:
            message.parts.extend(_budget_parts(text_parts([raw]), budget))
    response.choices.append(model.Choice(0, message, as_str(body.get("stop_reason"))))


def responses_output(body: JsonObject, budget: Budget) -> list[model.Choice]:
    """The `output` items of a Responses API object as one choice (none when there is no output)."""
    message = model.Message("assistant")
    for raw in as_list(body.get("output")):
        item = responses_output_item(raw, budget)
        if item is not None:
            message.parts.extend(item.parts)
            message.tool_calls.extend(item.tool_calls)
    if not message.parts and not message.tool_calls:
        return []
    reason = responses_finish_reason(body, has_tool_calls=bool(message.tool_calls))
    return [model.Choice(0, message, reason)]


def responses_output_item(raw: object, budget: Budget) -> model.Message | None:
    """One Responses API output item, its texts taken from `budget`; None when it is not one."""
    item = response_item(raw)
    if item is None:
        return None
    _budget_parts(item.parts, budget)
    for call in item.tool_calls:
        call.arguments = budget.take(call.arguments)
    return item


def responses_finish_reason(body: JsonObject, *, has_tool_calls: bool) -> str:
    """A chat-style finish reason for a Responses API object's `status`."""
    status = body.get("status")
    if status == "completed":
        return "tool_calls" if has_tool_calls else "stop"
    if status == "incomplete":
        reason = as_str(as_dict(body.get("incomplete_details")).get("reason"))
        return _INCOMPLETE_REASONS.get(reason, reason or "incomplete")
    return as_str(status) if status in ("failed", "cancelled") else ""


JsonReader = Callable[[JsonObject, model.ParsedResponse, Budget], None]

READERS: dict[str, JsonReader] = {
    model.API_CHAT_COMPLETIONS: read_chat,
    model.API_COMPLETIONS: read_chat,
    model.API_EMBEDDINGS: read_embeddings,
    model.API_RESPONSES: read_responses,
    model.API_MESSAGES: read_messages,
}

_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"([^"\\]{0,512})"')
_USAGE_FIELD = re.compile(rb'"usage"\s*:\s*(\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\})')


def read_embeddings_edges(head: bytes, tail: bytes, response: model.ParsedResponse) -> None:
    """Model and usage of an embeddings body too large to keep, from its first and last bytes.

    OpenAI puts both after the vectors, so the tail almost always holds them.
    """
    for window in (tail, head):
        if not response.model and (found := _MODEL_FIELD.search(window)):
            response.model = found.group(1).decode("utf-8", "replace")
        if response.usage is None and (found := _USAGE_FIELD.search(window)):
            response.usage = openai_usage(loads(found.group(1)))


def _identity(body: JsonObject, response: model.ParsedResponse) -> None:
    response.id = as_str(body.get("id"))
    response.model = as_str(body.get("model"))


def _chat_message(raw: JsonObject, budget: Budget) -> model.Message:
    parts: list[model.Part] = []
    # DeepSeek and older vLLM name the reasoning `reasoning_content`; vLLM 0.10+ and OpenRouter
    # name it `reasoning` (the stream reader accepts both too). It comes first, as the model
    # produced it and as `ChoiceAccumulator.to_choice` orders a streamed answer: reasoning, text,
    # refusal (the same exchange, streamed or not, stores the same parts).
    reasoning = raw.get("reasoning_content") or raw.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        parts.append(model.Part(model.PART_REASONING, text=budget.take(reasoning)))
    parts += _budget_parts(text_parts(raw.get("content")), budget)
    refusal = raw.get("refusal")
    if isinstance(refusal, str) and refusal:
        parts.append(model.Part(model.PART_REFUSAL, text=budget.take(refusal)))
    # An audio answer (`modalities: ["audio"]`) has no `content`: its transcript is the text.
    transcript = as_dict(raw.get("audio")).get("transcript")
    if isinstance(transcript, str) and transcript:
        parts.append(model.Part(model.PART_AUDIO, text=budget.take(transcript)))
    calls = openai_tool_calls(raw.get("tool_calls")) or legacy_function_call(raw.get("function_call"))
    for call in calls:
        call.arguments = budget.take(call.arguments)
    return model.Message(as_str(raw.get("role")) or "assistant", parts, tool_calls=calls)


def _budget_parts(parts: list[model.Part], budget: Budget) -> list[model.Part]:
    for part in parts:
        if part.text:
            part.text = budget.take(part.text)
    return parts
