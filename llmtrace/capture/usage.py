"""Provider usage objects read into `model.Usage`.

`input_tokens` follows OpenTelemetry `gen_ai.usage.input_tokens`: all input tokens, cached ones
included. OpenAI's `prompt_tokens` / `input_tokens` already include cached tokens; Anthropic's
`input_tokens` excludes them, so cache reads and cache creations are added to it.
"""

from __future__ import annotations

from llmtrace.capture import model
from llmtrace.capture.jsonvalues import as_count, as_dict, as_int


def openai_usage(value: object) -> model.Usage | None:
    """Chat completions, completions and embeddings usage (`prompt_tokens`...), or the Responses
    API's (`input_tokens`...); None when `value` is not a usage object."""
    usage = as_dict(value)
    if not usage:
        return None
    if "input_tokens" in usage or "output_tokens" in usage:  # Responses API
        input_tokens = as_count(usage.get("input_tokens"))
        output_tokens = as_count(usage.get("output_tokens"))
        cached = as_count(as_dict(usage.get("input_tokens_details")).get("cached_tokens"))
        reasoning = as_count(as_dict(usage.get("output_tokens_details")).get("reasoning_tokens"))
    else:
        input_tokens = as_count(usage.get("prompt_tokens"))
        output_tokens = as_count(usage.get("completion_tokens"))
        cached = as_count(as_dict(usage.get("prompt_tokens_details")).get("cached_tokens"))
        reasoning = as_count(as_dict(usage.get("completion_tokens_details")).get("reasoning_tokens"))
    total = as_count(usage.get("total_tokens")) or input_tokens + output_tokens
    return model.Usage(input_tokens, output_tokens, total, cached, 0, reasoning)


def anthropic_usage(value: object, into: model.Usage | None = None) -> model.Usage | None:
    """Anthropic usage, merged into `into` when given (a stream reports it in two events: counts
    a later event carries replace the earlier ones); None when `value` is not a usage object."""
    usage = as_dict(value)
    if not usage:
        return into
    result = into if into is not None else model.Usage()
    # Input counts are kept apart while merging, in the cache fields and `_base_input`.
    # A count only replaces the earlier one when it is a count: a later event's `null` (the
    # fields are optional in `message_delta`; some servers write them all) says nothing.
    base = _base_input(result)
    if (count := _given(usage, "input_tokens")) is not None:
        base = count
    if (count := _given(usage, "cache_read_input_tokens")) is not None:
        result.cache_read_input_tokens = count
    if (count := _given(usage, "cache_creation_input_tokens")) is not None:
        result.cache_creation_input_tokens = count
    if (count := _given(usage, "output_tokens")) is not None:
        result.output_tokens = count
    result.input_tokens = base + result.cache_read_input_tokens + result.cache_creation_input_tokens
    result.total_tokens = result.input_tokens + result.output_tokens
    return result


def _base_input(usage: model.Usage) -> int:
    """Anthropic's own `input_tokens` (uncached input) out of a merged usage."""
    return max(usage.input_tokens - usage.cache_read_input_tokens - usage.cache_creation_input_tokens, 0)


def _given(usage: dict[str, object], key: str) -> int | None:
    """The count under `key` when there is one (a number), else None."""
    value = usage.get(key)
    return as_count(value) if as_int(value) is not None else None
