"""Plain dataclasses for what capture reads out of an exchange (no protobuf types here).

Operation names follow the OpenTelemetry GenAI `gen_ai.operation.name` vocabulary:

- `chat`: OpenAI chat completions, the OpenAI Responses API and Anthropic messages (all three are
  conversational generation; `url.path` on the span tells them apart);
- `text_completion`: the legacy OpenAI completions API;
- `embeddings`: OpenAI embeddings;
- `list_models`: `GET /v1/models` (not in the GenAI vocabulary, which has no name for it);
- empty string: a route capture does not understand (the raw body is kept instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

OP_CHAT: Final = "chat"
OP_TEXT_COMPLETION: Final = "text_completion"
OP_EMBEDDINGS: Final = "embeddings"
OP_LIST_MODELS: Final = "list_models"

PROVIDER_OPENAI: Final = "openai"
PROVIDER_ANTHROPIC: Final = "anthropic"

# Wire formats: which parser reads a request and its response. Several may share an operation.
API_CHAT_COMPLETIONS: Final = "chat_completions"
API_COMPLETIONS: Final = "completions"
API_EMBEDDINGS: Final = "embeddings"
API_RESPONSES: Final = "responses"
API_MODELS: Final = "models"
API_MESSAGES: Final = "messages"
API_UNKNOWN: Final = ""

# Content part types, as `span.build_span` maps them onto `ContentPartType`.
PART_TEXT: Final = "text"
PART_IMAGE: Final = "image"
PART_AUDIO: Final = "audio"
PART_FILE: Final = "file"
PART_REFUSAL: Final = "refusal"
PART_REASONING: Final = "reasoning"
PART_OTHER: Final = "other"


@dataclass(slots=True)
class Part:
    """One piece of message content.

    `mime` holds the MIME type when known; for `other` parts it holds the original type name.
    """

    type: str
    text: str = ""
    uri: str = ""
    mime: str = ""


@dataclass(slots=True)
class ToolCall:
    """One tool call made by the model; `arguments` as the model produced them (usually JSON)."""

    id: str = ""
    type: str = "function"
    name: str = ""
    arguments: str = ""


@dataclass(slots=True)
class Message:
    """One input or output message."""

    role: str
    parts: list[Part] = field(default_factory=list)
    name: str = ""
    tool_call_id: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass(slots=True)
class ToolDefinition:
    """One tool offered to the model; `parameters_json` is its JSON schema as JSON text."""

    type: str = "function"
    name: str = ""
    description: str = ""
    parameters_json: str = ""


@dataclass(slots=True)
class Parameters:
    """Sampling and output settings; None (or empty) means the request did not send it."""

    temperature: float | None = None
    top_p: float | None = None
    #: max_tokens, max_completion_tokens or max_output_tokens, whichever was sent.
    max_tokens: int | None = None
    stream: bool | None = None
    stop: list[str] = field(default_factory=list)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    #: `n`: how many choices were asked for.
    choice_count: int | None = None
    #: `text`, `json` (json_object / json_schema formats) or empty when not sent.
    output_type: str = ""


@dataclass(slots=True)
class ParsedRequest:
    """What capture understood of a request body."""

    api: str = API_UNKNOWN
    operation: str = ""
    provider: str = PROVIDER_OPENAI
    model: str = ""
    stream: bool = False
    #: OpenAI `stream_options.include_usage`: the stream's last chunk will carry usage.
    include_usage: bool = False
    messages: list[Message] = field(default_factory=list)
    tools: list[ToolDefinition] = field(default_factory=list)
    parameters: Parameters = field(default_factory=Parameters)
    #: Tokens sent as token ids (prompt or embedding input given as integer arrays): exact counts
    #: for usage estimation, never stored as text.
    token_id_count: int = 0
    #: The body as text when it could not be parsed or the route is unknown (else empty).
    raw_body: str = ""
    #: The body, or `raw_body`, was cut to the capture limit.
    truncated: bool = False
    #: A key a case-insensitive JSON reader takes for one the readers read (`key_spelling`);
    #: looked for only when asked (`parse_request(check_spelling=True)`).
    misspelt_key: str = ""


@dataclass(slots=True)
class Choice:
    """One generated answer."""

    index: int
    message: Message
    #: Empty when the stream was cut before the reason came.
    finish_reason: str = ""


@dataclass(slots=True)
class Usage:
    """Token usage; `input_tokens` includes cached input (OpenTelemetry `gen_ai.usage.input_tokens`)."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    reasoning_output_tokens: int = 0
    #: Counted by capture's heuristic, not reported by the provider.
    estimated: bool = False


@dataclass(slots=True)
class ParsedResponse:
    """What capture understood of a response body or stream."""

    id: str = ""
    model: str = ""
    choices: list[Choice] = field(default_factory=list)
    usage: Usage | None = None
    #: From an upstream error object (`{"error": {...}}`, Anthropic `type: error`, error events).
    error_message: str = ""
    error_type: str = ""
    #: The body as text when it could not be parsed (else empty).
    raw_body: str = ""
    #: Content or `raw_body` was cut to the capture limit.
    truncated: bool = False
    #: A stream that ended without its terminal event (`[DONE]`, `response.completed`,
    #: `message_stop`): the upstream or the connection broke mid-answer.
    stream_cut: bool = False
