"""Keys a case-insensitive JSON reader (Go's) takes for ones the capture reads."""

from __future__ import annotations

import pytest

from llmtrace.capture.key_spelling import misspelt_key


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"model": "m", "messages": [], "Messages": [{"role": "user", "content": "x"}]}, "Messages"),
        ({"model": "m", "me\u017f\u017fages": [{"role": "user", "content": "x"}]}, "me\u017f\u017fages"),
        ({"messages": [{"role": "user", "content": "hi", "Content": "x"}]}, "Content"),
        ({"messages": [{"role": "assistant", "ROLE": "user", "content": "x"}]}, "ROLE"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "Text": "x"}]}]}, "Text"),
        (
            {"input": [{"type": "message", "role": "user", "content": "hi", "CONTENT": "x"}]},
            "CONTENT",
        ),
        ({"model": "m", "INSTRUCTIONS": "x", "input": "hi"}, "INSTRUCTIONS"),
        # The Kelvin sign folds to k.
        ({"messages": [{"role": "assistant", "content": [{"type": "thin\u212aing", "x": 1}]}]}, ""),
        ({"messages": [{"role": "assistant", "thin\u212aing": "x", "content": "hi"}]}, "thin\u212aing"),
    ],
)
def test_a_key_another_reader_takes_for_a_read_one_is_found(body: dict[str, object], key: str) -> None:
    assert misspelt_key(body) == key


@pytest.mark.parametrize(
    "body",
    [
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        # Keys of the caller's own design: schemas, tool arguments, metadata.
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"properties": {"Content": {}}}}}
            ],
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"Text": 1}}},
            "metadata": {"Role": "x"},
        },
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {"Title": "x"}}],
                }
            ]
        },
        {"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "schema": {"Output": {}}}}},
        # Other keys in other cases are nobody's business.
        {"Model": "m", "messages": [{"role": "user", "content": "hi", "Name": "bob"}]},
    ],
)
def test_ordinary_requests_have_none(body: dict[str, object]) -> None:
    assert misspelt_key(body) == ""
