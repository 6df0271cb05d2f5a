"""Following a response as it streams to the client, and reading it into a `ParsedResponse`.

`ResponseCapture.feed` runs on the event loop for every chunk, so it does little: decompress
(only when the body is compressed), then either split SSE events and fold each into the answer,
or append to a bounded buffer that `finish` parses once.
"""

from __future__ import annotations

from collections.abc import Callable

from llmtrace import limits
from llmtrace.capture import model
from llmtrace.capture.accumulate import Budget
from llmtrace.capture.decode import Decoder
from llmtrace.capture.estimate import estimate_usage
from llmtrace.capture.jsonvalues import loads
from llmtrace.capture.request_parse import raw_text
from llmtrace.capture.response_json import READERS, read_embeddings_edges, read_error, read_responses
from llmtrace.capture.sse import SseParser
from llmtrace.capture.stream_anthropic import AnthropicStream
from llmtrace.capture.stream_base import StreamReader
from llmtrace.capture.stream_openai import ChatStream
from llmtrace.capture.stream_responses import ResponsesStream
from llmtrace.capture.tail import Tail

#: JSON bodies are buffered (decompressed) up to this or the capture limit, whichever is larger,
#: so that a large answer can still be parsed and then cut to the limit.
JSON_BUFFER_BYTES = 8 * 1024 * 1024
#: Most decompressed bytes of one compressed body parsed as SSE events. Parsing is what costs:
#: a small gzip or brotli body can expand a thousandfold, and parsing a 1 MiB bomb of tiny SSE
#: events whole took 12 s of CPU. A compressed stream of this size is about 80,000 events (hours
#: of tokens). Past it the stream is only decompressed, keeping its last `STREAM_TAIL_BYTES`,
#: whose events (usage, finish reasons, the final event) are read at the end.
MAX_DECODED_BYTES = 2 * JSON_BUFFER_BYTES
#: Most bytes decompressed from one compressed body at all. Decompressing without parsing costs
#: about 1 ms of CPU per MiB (gzip; 0.3 s for this much, measured on a 2-vCPU VM), spread over
#: the body's chunks, so a bomb costs that once, while real bodies (the largest embeddings answer
#: is about 130 MB, a stream of this size over a million events) are read to their end. Past it
#: reading stops: the answer is marked truncated, never cut (its end was not read, so nothing
#: says the upstream failed).
MAX_SKIMMED_BYTES = 256 * 1024 * 1024
#: End of a stream kept past `MAX_DECODED_BYTES`: the final events of chat and messages streams
#: take a few hundred bytes; a Responses API `response.completed` repeats the whole output.
STREAM_TAIL_BYTES = 1024 * 1024
#: Embeddings bodies are mostly vectors: only this much of each end is kept.
EMBEDDINGS_EDGE_BYTES = 16 * 1024

_STREAM_READERS: dict[str, type[StreamReader]] = {
    model.API_CHAT_COMPLETIONS: ChatStream,
    model.API_COMPLETIONS: ChatStream,
    model.API_RESPONSES: ResponsesStream,
    model.API_MESSAGES: AnthropicStream,
}
_ESTIMATED_OPERATIONS = frozenset({model.OP_CHAT, model.OP_TEXT_COMPLETION, model.OP_EMBEDDINGS})


class ResponseCapture:
    """Reads one response body, chunk by chunk as received from the upstream, never raising.

    Call `feed` with every raw chunk (compressed or not, exactly as received), then `finish` once.
    """

    __slots__ = (
        "_body",
        "_broken",
        "_capped",
        "_decoded",
        "_decoder",
        "_edges",
        "_json_chars",
        "_limit",
        "_max_decoded",
        "_method",
        "_opaque",
        "_overflow",
        "_received",
        "_request",
        "_skimmed",
        "_sse",
        "_status",
        "_stopped",
        "_stream",
        "_tail",
    )

    def __init__(
        self,
        request: model.ParsedRequest,
        status: int,
        content_type: str,
        content_encoding: str,
        *,
        max_body_bytes: int,
        method: str = "",
        max_decoded_bytes: int = MAX_SKIMMED_BYTES,
    ) -> None:
        self._request = request
        # Most bytes decompressed from this body: MAX_SKIMMED_BYTES, or less where a caller
        # shares one budget among many bodies (the core, per IngestSpans request).
        self._max_decoded = min(max_decoded_bytes, MAX_SKIMMED_BYTES)
        # The request's HTTP method; empty when the caller does not know it.
        self._method = method.upper()
        self._status = status
        self._limit = max(0, min(max_body_bytes, limits.MAX_BODY_CHARS))
        self._decoder = Decoder(content_encoding)
        self._received = 0
        self._decoded = 0
        self._broken = False
        self._capped = False
        self._overflow = False
        self._body = bytearray()
        self._tail = b""
        self._json_chars = 0
        # `finish` found a body it could not parse as a JSON object (not JSON, or too large).
        self._opaque = False
        self._sse: SseParser | None = None
        self._stream: StreamReader | None = None
        # The client got the stream only up to its last whole event (`stopped`).
        self._stopped = False
        # The end of a compressed stream decoded past `MAX_DECODED_BYTES`; None until then.
        self._skimmed: Tail | None = None
        reader = _STREAM_READERS.get(request.api)
        is_sse = content_type.lower().startswith("text/event-stream")
        if reader is not None and (is_sse or (not content_type and request.stream and status < 400)):
            self._sse = SseParser(max(max_body_bytes, JSON_BUFFER_BYTES))
            self._stream = reader(self._limit)
        # Successful embeddings keep only the ends of the body (model and usage are at the end).
        self._edges = request.api == model.API_EMBEDDINGS and status < 400 and self._sse is None

    @property
    def streaming(self) -> bool:
        """Whether the body is read as a stream of events (SSE of an understood API)."""
        return self._stream is not None

    def listen(
        self,
        on_text: Callable[[int, str], None],
        on_arguments: Callable[[int, int, str], None] | None = None,
        on_reasoning: Callable[[int, str], None] | None = None,
    ) -> bool:
        """Have `on_text(choice index, piece)` called with answer text, `on_arguments(choice
        index, call key, piece)` with tool-call arguments and `on_reasoning(choice index, piece)`
        with reasoning text, as events are fed; False when the body is not an understood stream
        (nothing will be called)."""
        if self._stream is None:
            return False
        self._stream.on_text = on_text
        self._stream.on_arguments = on_arguments
        self._stream.on_reasoning = on_reasoning
        return True

    @property
    def decoded_bytes(self) -> int:
        """Bytes decompressed from a compressed body so far (0 for one sent as it is)."""
        return self._decoded

    @property
    def request(self) -> model.ParsedRequest:
        """The parsed request this response answers."""
        return self._request

    def stopped(self) -> None:
        """The proxy stopped the stream after the last whole event it relayed: an unfinished
        event the parser holds never reached the client, and is not recorded."""
        self._stopped = True

    def feed(self, chunk: bytes) -> None:
        """Take the next raw chunk of the body."""
        if not chunk or self._broken or self._capped:
            return
        self._received += len(chunk)
        if self._overflow and not self._edges:
            return  # nothing more will be parsed: spare the decompression
        try:
            if not self._decoder.encoding:
                self._take(chunk)
                return
            for piece in self._decoder.decode(chunk):
                self._decoded += len(piece)
                if self._decoded > self._max_decoded:
                    self._capped = True  # read no further; what was read is kept, marked truncated
                    return
                if self._skimmed is not None or (self._decoded > MAX_DECODED_BYTES and not self._edges):
                    self._skim(piece)
                    if self._capped:
                        return
                    continue
                self._take(piece)
                if self._overflow and not self._edges:
                    return  # nothing more will be parsed: decompress no further
        except Exception:  # capture must never break the proxy; what was read so far is kept
            self._broken = True

    def _skim(self, piece: bytes) -> None:
        """Past the parsing limit: a stream keeps only its end (read in `finish`); anything
        else is not read further (embeddings, whose ends are cheap to keep, never get here)."""
        if self._sse is None:
            self._capped = True
            return
        if self._skimmed is None:
            self._skimmed = Tail(STREAM_TAIL_BYTES)
        self._skimmed.add(piece)

    def _take(self, piece: bytes) -> None:
        if self._sse is not None and self._stream is not None:
            on_event = self._stream.on_event
            for event, data in self._sse.feed(piece):
                on_event(event, data)
            return
        if self._edges:
            self._keep_edges(piece)
            return
        room = max(self._limit, JSON_BUFFER_BYTES) - len(self._body)
        if len(piece) > room:
            piece = piece[: max(room, 0)]
            self._overflow = True
        self._body += piece

    def _keep_edges(self, piece: bytes) -> None:
        room = EMBEDDINGS_EDGE_BYTES - len(self._body)
        if room > 0:
            self._body += piece[:room]
            piece = piece[room:]
        if piece:
            self._overflow = True
            self._tail = (self._tail + piece)[-EMBEDDINGS_EDGE_BYTES:]

    def finish(self) -> model.ParsedResponse:
        """What the body said; call once, after the last chunk (or when the exchange broke)."""
        response = model.ParsedResponse()
        try:
            self._finish(response)
        except Exception:  # never raise: an unreadable answer is an empty one
            response = model.ParsedResponse(truncated=True)
        request = self._request
        if (
            response.usage is None
            and self._status < 400
            and not response.error_type
            and request.operation in _ESTIMATED_OPERATIONS
            and not self._undecoded
            and self._method in ("", "POST")
            and self._answered(response)
        ):
            stream = self._stream
            response.usage = estimate_usage(
                request,
                response,
                streamed_deltas=stream.deltas if stream is not None else 0,
                output_chars=stream.budget.offered if stream is not None else self._json_chars,
            )
        return response

    def _answered(self, response: model.ParsedResponse) -> bool:
        """Whether the body held an answer whose tokens can be estimated. Only a POST generates
        anything; the other exchanges on these routes (HEAD, a CORS preflight, a 204 or 304 with
        no body, the stored-completions list that a GET returns) must not become usage."""
        if response.id or response.model or response.choices:
            return True  # a completion, embeddings list, or stream that named itself
        if self._stream is not None:
            return self._stream.deltas > 0
        # A body that was not parsed (not JSON, or too large to) may still be an answer, as the
        # estimate has always assumed; an empty one or a parsed non-answer is not.
        return self._opaque

    @property
    def _undecoded(self) -> bool:
        """Nothing of the body could be decoded (an unsupported encoding, or corrupt from the start)."""
        return self._decoder.failed and self._decoded == 0

    @property
    def _read_short(self) -> bool:
        """Reading stopped before the end of the body: it broke, or hit `MAX_SKIMMED_BYTES`."""
        return self._broken or self._capped or self._decoder.failed

    def _finish(self, response: model.ParsedResponse) -> None:
        if self._undecoded:
            encoding = self._decoder.encoding or "unknown"
            response.raw_body = f"[{self._received} bytes of {encoding[:64]}-encoded body, not decoded]"
            return
        if self._stream is not None and self._sse is not None:
            self._finish_stream(self._stream, self._sse, response)
            return
        if self._edges:
            self._finish_embeddings(response)
            return
        self._finish_json(response)

    def _finish_stream(self, stream: StreamReader, sse: SseParser, response: model.ParsedResponse) -> None:
        if self._skimmed is not None:
            if not self._capped:  # the kept end is the stream's real end: read its last events
                self._read_stream_end(stream, self._skimmed.value())
        elif not self._read_short and not self._stopped:
            for event, data in sse.close():
                stream.on_event(event, data)
        stream.fill(response)
        skipped = self._skimmed is not None or self._read_short
        response.truncated = response.truncated or sse.dropped or skipped
        if self._capped:
            response.stream_cut = False  # our limit stopped reading, not the upstream

    def _read_stream_end(self, stream: StreamReader, end: bytes) -> None:
        """Read the events of the stream's kept end (ids, usage, finish reasons, errors, the final
        event) into `stream`; their text would follow a gap, so none of it is kept."""
        stream.budget.exhaust()
        stream.on_text = None
        stream.on_arguments = None
        stream.on_reasoning = None
        # The kept end starts anywhere: parse from its first whole line.
        starts = [found for found in (end.find(b"\n"), end.find(b"\r")) if found >= 0]
        parser = SseParser(max(len(end), 1))
        events = parser.feed(end[min(starts) + 1 :]) if starts else []
        if not self._read_short:
            events += parser.close()
        for event, data in events:
            stream.on_event(event, data)

    def _finish_embeddings(self, response: model.ParsedResponse) -> None:
        if self._overflow or self._read_short:
            self._opaque = True
            response.truncated = self._read_short
            read_embeddings_edges(bytes(self._body), self._tail, response)
        else:
            self._finish_json(response)

    def _finish_json(self, response: model.ParsedResponse) -> None:
        body = bytes(self._body)
        self._body = bytearray()
        if not body:
            return
        data = None if self._overflow or self._read_short else loads(body)
        if isinstance(data, dict):
            reader = READERS.get(self._request.api) if self._status < 400 else None
            # A Responses API object that failed has `error` beside its id, model and usage: its
            # reader keeps them all (and the error), as the stream reader does for `response.failed`.
            own_error = reader is read_responses and data.get("object") == "response"
            if not own_error and read_error(data, response):
                return
            if reader is not None:
                budget = Budget(self._limit)
                reader(data, response, budget)
                response.truncated = budget.truncated
                self._json_chars = budget.offered
                return
            if self._request.api == model.API_MODELS and self._status < 400:
                return  # the model list is not content
        self._opaque = not isinstance(data, dict)
        text, cut = raw_text(body, self._limit)
        response.raw_body = text
        response.truncated = cut or self._overflow or self._read_short
