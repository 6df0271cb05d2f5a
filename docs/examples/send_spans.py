"""Send three spans to a running core with the generated Python stubs, then list them.

Usage: python docs/examples/send_spans.py [HOST:PORT]   (default 127.0.0.1:50051)
Needs only the stubs distribution: pip install ./clients/python
"""

from __future__ import annotations

import os
import sys
import time

import grpc

from llmtrace.api.v1 import (
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
    span_pb2,
)


def chat_span(trace_id: bytes, model: str, prompt: str, answer: str, input_tokens: int) -> span_pb2.Span:
    """One chat completion, as the proxy would record it."""
    span = span_pb2.Span(
        trace_id=trace_id,
        span_id=os.urandom(8),
        tenant="default",
        agent="sdk-example",
        operation="chat",
        provider="openai",
        request_model=model,
        response_model=model,
    )
    now = time.time_ns()
    span.start_time.FromNanoseconds(now - 850_000_000)
    span.end_time.FromNanoseconds(now)
    span.status.http_status_code = 200
    span.request.messages.add(role="user").parts.add(type=span_pb2.CONTENT_PART_TYPE_TEXT, text=prompt)
    choice = span.response.choices.add(index=0, finish_reason="stop")
    choice.message.role = "assistant"
    choice.message.parts.add(type=span_pb2.CONTENT_PART_TYPE_TEXT, text=answer)
    span.usage.input_tokens = input_tokens
    span.usage.output_tokens = 12
    return span


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    trace_id, other_trace_id = os.urandom(16), os.urandom(16)
    spans = [
        chat_span(trace_id, "gpt-4o", "What is DuckDB?", "An in-process analytical database.", 14),
        chat_span(
            trace_id, "gpt-4o-mini", "Summarise that in five words.", "Fast embedded SQL analytics.", 31
        ),
        chat_span(other_trace_id, "gpt-4o", "Hello!", "Hi! How can I help?", 9),
    ]
    with grpc.insecure_channel(address) as channel:
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        reply = ingest.IngestSpans(ingest_service_pb2.IngestSpansRequest(spans=spans))
        print(f"accepted {reply.accepted_spans} spans")

        query = query_service_pb2_grpc.QueryServiceStub(channel)
        page = query.ListSpans(
            query_service_pb2.ListSpansRequest(
                tenant="default",
                # The spans of this run only: the proxy tour's calls, or an earlier run's, are there too.
                filter=f'trace_id = "{trace_id.hex()}" OR trace_id = "{other_trace_id.hex()}"',
                order_by="start_time",
            )
        )
        for span in page.spans:
            print(
                f"{span.trace_id.hex()[:8]} {span.request_model:12} {span.usage.input_tokens:4} input tokens"
            )


if __name__ == "__main__":
    main()
