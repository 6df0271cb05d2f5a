"""Token usage estimated without a tokenizer, for exchanges where the provider reported none.

The rule (documented in the report and kept deliberately simple; no tokenizer download):

- text: one token per 4 characters, rounded up (the usual average for English with BPE tokenizers);
- input: per message 4 tokens of framing plus its text, tool call arguments and names; each
  non-text part (image, audio, file) 85 tokens (OpenAI's low-detail image price); each tool
  definition its name, description and schema; token ids sent as integer arrays count exactly;
  3 tokens priming the reply for chat. A body that could not be parsed counts as text.
- output: the answer's text and tool call arguments (counted before the capture limit cuts
  them), and at least one token per streamed content
  delta (OpenAI sends about one token per delta, so the count is a lower bound).

Estimated usage is always marked `estimated`; provider-reported usage never is.
"""

from __future__ import annotations

from collections.abc import Iterable

from llmtrace.capture import model

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
REPLY_PRIMING_TOKENS = 3
NON_TEXT_PART_TOKENS = 85


def text_tokens(chars: int) -> int:
    """Tokens for `chars` characters of text."""
    return -(-chars // CHARS_PER_TOKEN)


def _message_chars(messages: Iterable[model.Message]) -> tuple[int, int]:
    """(text characters, non-text parts) of `messages`."""
    chars = 0
    others = 0
    for message in messages:
        for part in message.parts:
            if part.text:
                chars += len(part.text)
            elif part.type not in (model.PART_TEXT, model.PART_REFUSAL, model.PART_REASONING):
                others += 1
        for call in message.tool_calls:
            chars += len(call.name) + len(call.arguments)
    return chars, others


def estimate_input(request: model.ParsedRequest) -> int:
    """Estimated input tokens of `request`."""
    chars, others = _message_chars(request.messages)
    chars += len(request.raw_body)
    for tool in request.tools:
        chars += len(tool.name) + len(tool.description) + len(tool.parameters_json)
    tokens = text_tokens(chars) + others * NON_TEXT_PART_TOKENS + request.token_id_count
    if request.operation == model.OP_CHAT:
        tokens += MESSAGE_OVERHEAD_TOKENS * len(request.messages) + REPLY_PRIMING_TOKENS
    return tokens


def estimate_usage(
    request: model.ParsedRequest,
    response: model.ParsedResponse,
    *,
    streamed_deltas: int = 0,
    output_chars: int = 0,
) -> model.Usage:
    """Estimated usage of an exchange whose provider reported none.

    `output_chars` is the answer's length before it was cut to the capture limit, when known
    (the text kept in `response` is counted otherwise). Embeddings have no output.
    """
    input_tokens = estimate_input(request)
    output_tokens = 0
    if request.operation != model.OP_EMBEDDINGS:
        chars, _ = _message_chars(choice.message for choice in response.choices)
        output_tokens = max(text_tokens(max(chars, output_chars)), streamed_deltas)
    return model.Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
        estimated=True,
    )
