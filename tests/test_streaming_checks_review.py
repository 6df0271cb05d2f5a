"""Streaming checks: a long JWT streamed in small pieces, and a value in the overlap that the next
chunk ends (it must not hide a new value of the same kind).

Unit tests of `shim.streaming_checks.StreamCheck`, in the style of tests/test_shim_streaming_checks.py.
"""

from __future__ import annotations

import base64
import json

import pytest

from llmtrace.security.findings import Severity
from shim.streaming_checks import JWT_KEEP, OVERLAP, StreamCheck
from tests.test_shim_streaming_checks import CARD, TOKEN, feed, scan_sizes

#: Another valid GitHub token (36 characters after `ghp_`), and another card of high severity.
TOKEN2 = "ghp_A7xk2Lm9Qp4Vz8Wn3Bt6Yc1Hd5Jf0Ga2Ks7Z"
CARD2 = "4716 2903 1245 8833"


def _b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def _jwt(roles: int) -> str:
    header = _b64({"alg": "HS256", "typ": "JWT"})
    payload = _b64({"sub": "1234567890", "name": "John Doe", "roles": [f"role{i}" for i in range(roles)]})
    return f"{header}.{payload}.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("roles", [40, 80, 400])
def test_a_jwt_longer_than_the_overlap_streamed_in_small_pieces_is_found_once(roles: int) -> None:
    jwt = _jwt(roles)
    assert len(jwt.rsplit(".", 1)[0]) > OVERLAP  # header and payload alone pass the overlap
    check = StreamCheck()
    found = feed(check, _pieces(f"Here it is: {jwt} use it well. " + "more words " * 60, 4))
    assert [(f.detector, f.severity) for f in found] == [("regex.secret.jwt", Severity.HIGH)]
    assert jwt not in found[0].excerpt


def test_the_overlap_kept_for_an_open_jwt_run_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    scanned = scan_sizes(monkeypatch)
    check = StreamCheck()
    piece = "AbCdEfGhIj" * 10
    # A JWT-looking run that never ends: kept back to its start up to JWT_KEEP characters, no more.
    feed(check, ["see eyJ", *[piece] * (3 * JWT_KEEP // len(piece))])
    assert max(scanned) <= JWT_KEEP + 1 + len(piece)
    assert scanned[-1] <= OVERLAP + len(piece)  # past JWT_KEEP: back to the plain overlap
    # Prose after it: the plain overlap again.
    scanned.clear()
    feed(check, [" and then some words. "] * 40)
    assert scanned[-1] <= OVERLAP + len(" and then some words. ")


def test_a_token_ended_by_the_next_chunk_does_not_hide_a_new_token() -> None:
    # The first scan reports TOKEN; `_x` then makes it no token, and TOKEN2 follows in that chunk.
    check = StreamCheck()
    found = feed(check, ["a " + TOKEN, "_x and " + TOKEN2 + " end"])
    assert [f.detector for f in found] == ["regex.secret.github_token"] * 2
    assert check.critical is not None


def test_a_card_ended_by_one_more_digit_does_not_hide_a_new_card() -> None:
    check = StreamCheck()
    found = feed(check, ["pay " + CARD, "9 then " + CARD2 + " ok"])
    assert [(f.detector, f.severity) for f in found] == [("regex.pii.credit_card", Severity.HIGH)] * 2


def test_values_still_in_the_overlap_are_not_reported_again() -> None:
    # The overlap's own findings still count as reported when a value of the same kind arrives,
    # and a JWT whose signature keeps streaming is one finding.
    check = StreamCheck()
    jwt = _jwt(2)
    found = feed(
        check,
        [
            "first " + TOKEN + " and ",
            "then " + TOKEN2 + " and ",
            "pay " + CARD,
            " ok ",
            *_pieces(jwt, 4),
            " end",
        ],
    )
    assert [f.detector for f in found] == [
        "regex.secret.github_token",
        "regex.secret.github_token",
        "regex.pii.credit_card",
        "regex.secret.jwt",
    ]


@pytest.mark.parametrize("cut", [8, 20, 30])
def test_an_excerpt_never_shows_the_start_of_a_secret_still_arriving(cut: int) -> None:
    # A card is found in a read that ends partway into a token: the card's excerpt reaches the
    # window's end, where the token's start matches no pattern yet.
    check = StreamCheck()
    found = []
    for piece in (f"card {CARD} key {TOKEN[:cut]}", f"{TOKEN[cut:]} done"):
        check.on_text(0, piece)
        found += check.scan()
    assert {f.detector for f in found} >= {"regex.pii.credit_card", "regex.secret.github_token"}
    assert all(TOKEN[:6] not in f.excerpt for f in found)
