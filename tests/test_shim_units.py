"""Small pure pieces of the shim: upstream proxy resolution, header rules, identity."""

from __future__ import annotations

import gc
import json
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from sanic.exceptions import PayloadTooLarge

from llmtrace.config.schema import Settings
from shim.app import create_app, unexpected_error
from shim.headers import forwardable, key_fingerprint, masked_query, returnable, stored_request_headers
from shim.identity import DEFAULT_TENANT, IdentityError, resolve_identity
from shim.proxy import Upstream
from shim.server import GC_YOUNG_THRESHOLD, _tune_garbage_collector


class Headers(dict[str, str]):
    """Case-insensitive enough for these tests: keys are given lower-case."""


@pytest.mark.parametrize(
    ("url", "environ", "proxy"),
    [
        ("https://api.openai.com", {"HTTPS_PROXY": "http://p:3128"}, "http://p:3128"),
        ("https://api.openai.com", {"https_proxy": "http://p:3128", "NO_PROXY": ".openai.com"}, None),
        ("http://127.0.0.1:8089", {"HTTPS_PROXY": "http://p:3128"}, None),
        ("http://internal:8089", {"HTTP_PROXY": "http://p:3128"}, "http://p:3128"),
        ("https://api.openai.com", {}, None),
    ],
)
def test_upstream_proxy_comes_from_the_environment(
    url: str, environ: dict[str, str], proxy: str | None
) -> None:
    assert Upstream.from_url(url, environ).proxy == proxy


def test_upstream_server_address_never_shows_credentials() -> None:
    assert Upstream.from_url("https://user:secret@llm.internal:8443/").server_address == "llm.internal:8443"


def test_forwardable_drops_hop_by_hop_host_and_our_headers() -> None:
    pairs = [
        ("Host", "shim:8080"),
        ("Connection", "keep-alive, X-Private-Hop"),
        ("X-Private-Hop", "1"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "12"),
        ("X-LLMTrace-Tenant", "acme"),
        ("x-llmtrace-key", "secret"),
        ("Authorization", "Bearer sk-1"),
        ("Set-Cookie-Like", "a"),
        ("Set-Cookie-Like", "b"),
    ]
    out = forwardable(pairs)
    assert list(out.items()) == [
        ("Authorization", "Bearer sk-1"),
        ("Set-Cookie-Like", "a"),
        ("Set-Cookie-Like", "b"),
    ]


def test_returnable_keeps_repeated_headers_and_drops_framing() -> None:
    out = returnable([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Transfer-Encoding", "chunked")])
    assert out.getall("set-cookie") == ["a=1", "b=2"]
    assert "transfer-encoding" not in out


def test_stored_headers_are_an_allow_list() -> None:
    stored = stored_request_headers(
        [
            ("Authorization", "Bearer x"),
            ("Cookie", "s=1"),
            ("Content-Type", "application/json"),
            ("X-Stainless-Os", "Linux"),
        ]
    )
    assert stored == {"content-type": "application/json", "x-stainless-os": "Linux"}


def test_query_credentials_are_masked() -> None:
    assert masked_query("api-version=1&key=abc&sig=zz&x=1") == "api-version=1&key=***&sig=***&x=1"
    assert masked_query("code=fk&zipcode=1&Auth_Token=t") == "code=***&zipcode=1&Auth_Token=***"
    assert masked_query("") == ""


def test_query_credentials_are_masked_under_a_percent_encoded_name() -> None:
    # The upstream decodes the name (`%6Bey` is `key`), so the value is just as much a key.
    assert (
        masked_query("%6Bey=AIzaS&si%67=zz&c%6Fde=fk&api_%6Bey=k")
        == "%6Bey=***&si%67=***&c%6Fde=***&api_%6Bey=***"
    )
    assert masked_query("%78=1&model=gpt") == "%78=1&model=gpt"


def test_key_fingerprint_is_stable_short_and_not_the_key() -> None:
    one = key_fingerprint([("Authorization", "Bearer sk-abcdef0123456789")])
    assert one == key_fingerprint([("api-key", "sk-abcdef0123456789")])
    assert len(one) == 16 and "abcdef" not in one
    assert one != key_fingerprint([("x-api-key", "sk-other")])
    assert key_fingerprint([("Accept", "*/*")]) == ""


def test_identity_defaults_and_aliases() -> None:
    identity = resolve_identity(Headers())
    assert identity.tenant == DEFAULT_TENANT and identity.agent == "" and identity.parent_span_id == b""
    legacy = resolve_identity(Headers({"x-llmtrace-tenant-id": "acme", "x-llmtrace-agent-id": "bot"}))
    assert (legacy.tenant, legacy.agent) == ("acme", "bot")
    with pytest.raises(IdentityError, match="X-LLMTrace-Tenant"):
        resolve_identity(Headers({"x-llmtrace-tenant": "bad\x00tenant"}))


@pytest.mark.parametrize(
    "value",
    [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "not a traceparent",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # upper-case hex
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 has 4 fields
    ],
)
def test_invalid_traceparent_starts_a_new_trace(value: str) -> None:
    identity = resolve_identity(Headers({"traceparent": value}))
    assert identity.parent_span_id == b"" and len(identity.trace_id) == 16
    assert identity.trace_id.hex() != "4bf92f3577b34da6a3ce929d0e0e4736"


def test_a_later_traceparent_version_may_carry_more_fields() -> None:
    value = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next"
    identity = resolve_identity(Headers({"traceparent": value}))
    assert identity.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert identity.parent_span_id.hex() == "00f067aa0ba902b7"


def test_session_gives_a_stable_trace_per_tenant() -> None:
    a = resolve_identity(Headers({"x-llmtrace-session": "s1", "x-llmtrace-tenant": "t1"}))
    b = resolve_identity(Headers({"x-llmtrace-session": "s1", "x-llmtrace-tenant": "t1"}))
    c = resolve_identity(Headers({"x-llmtrace-session": "s1", "x-llmtrace-tenant": "t2"}))
    assert a.trace_id == b.trace_id != c.trace_id
    assert a.span_id != b.span_id


def test_worker_garbage_collection_skips_start_up_objects_and_runs_less_often() -> None:
    before = gc.get_threshold()
    try:
        _tune_garbage_collector()
        assert gc.get_freeze_count() > 1000  # modules, classes, descriptors: never scanned again
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_an_unexpected_error_is_a_500_in_openai_shape_logged_without_the_query() -> None:
    # Sanic's default handler answers in its own shape and logs the whole URL, query (and any
    # `?key=`) included; ours is registered for everything that is not a SanicException.
    app = create_app(Settings(listen_addr="127.0.0.1:0"))
    error = ValueError("boom")
    handler = app.error_handler.lookup(error, "proxy")
    assert handler is unexpected_error
    assert app.error_handler.lookup(PayloadTooLarge("big"), "proxy") is not unexpected_error
    # The handler reads the method and path only; Sanic's request would carry the query in `url`.
    request: Any = SimpleNamespace(method="GET", path="/v1/models", url="http://x/v1/models?key=SECRET")
    with structlog.testing.capture_logs() as logs:
        response = handler(request, error)
    assert response.status == 500
    assert json.loads(response.body or b"")["error"]["code"] == "internal_error"
    (entry,) = logs
    assert entry["path"] == "/v1/models" and entry["error_type"] == "ValueError"
    assert "SECRET" not in repr(entry)
