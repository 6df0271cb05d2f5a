"""Checking a streamed answer for PII and secrets as its chunks arrive (`streaming_analysis.*`).

The response capture calls `on_text(choice, piece)` for every piece of answer text it parses, and
`on_arguments(choice, call, piece)` for every piece of a tool call's arguments (a key sent to a
tool leaves as surely as one in the text); the proxy calls `scan()` once per network chunk, after
the chunk went out to the client. Each text (a choice's answer, a call's arguments) is scanned on
its own, never joined to another: each scan reads only its new text plus the last `OVERLAP`
characters of it already scanned (more, up to `JWT_KEEP`, while a JWT is still streaming: its
regex needs the header and the payload in one scan), so a value split across chunks (a card number
in four pieces) is found when its last piece arrives, and the cost per chunk does not grow with
the answer.

A finding is reported once: findings in the overlap alone were reported by an earlier scan, so of
the findings in (overlap + new text), those beyond the ones the overlap alone holds (counted by
type, detector and severity) are new; but an overlap finding that the new text ends (a token
followed by `_x`, a card by one more digit) no longer counts, so that a value of the same kind in
the new text is not taken for it. A severity upgrade (a private-key header, then its body) is a new
finding.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Final

from llmtrace.capture import model
from llmtrace.capture.exchange import MAX_FINDINGS
from llmtrace.security.findings import Finding, Severity
from llmtrace.security.normalize import normalize, unescape_json
from llmtrace.security.pii import find_pii
from llmtrace.security.secrets import _JWT_HEADER_MAX, find_secrets

#: Characters of already-scanned text each scan reads again. Covers any card, IBAN, phone or token
#: split across chunks; a PEM private key is caught from its header and first key line. A JWT can be
#: longer: see `JWT_KEEP`.
OVERLAP: Final = 512
#: Furthest back a scan reads while a JWT-looking run (`eyJ` and base64url characters and dots) is
#: still open at the end of the text: the JWT regex needs `eyJ`... through the second dot in one
#: scan, so cutting the run at `OVERLAP` would lose any JWT whose header and payload pass it. Room
#: for a header as long as the detector decodes (`_JWT_HEADER_MAX`) and as much payload; a longer
#: run falls back to `OVERLAP`, so a stream of base64 cannot make every scan read more.
JWT_KEEP: Final = 2 * _JWT_HEADER_MAX
#: The characters of a JWT (its base64url segments and the dots between them).
_JWT_CHARS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
_JWT_RUN: Final = re.compile(f"[{re.escape(_JWT_CHARS)}]*")
#: Between the overlap and the new text when counting the new text's own findings: no value the
#: detectors find runs across a blank line (a private key's body does, but then it is one finding
#: either way).
_SEAL: Final = "\n\n"

_Key = tuple[str, str, Severity]
#: (type, detector) of what a scan of a finished part or call finds, by ("content" or "call",
#: choice position, part or call position).
_Found = dict[tuple[str, int, int], set[tuple[str, str]]]
_CHOICE_LOCATION: Final = re.compile(
    r"response\.choices\[(\d+)\](?:\.tool_calls\[(\d+)\]\.arguments|(?P<reasoning>\.reasoning))?"
)
#: Part types the answer text handed to the checks may come from, and the reasoning text: a finding
#: of either is located among its own kind of parts only.
_ANSWER_PARTS: Final = frozenset({model.PART_TEXT, model.PART_REFUSAL})
_REASONING_PARTS: Final = frozenset({model.PART_REASONING})
#: Where a finding in reasoning is until `core_locations` names the part (the stop event says it).
_REASONING_SUFFIX: Final = ".reasoning"


def _key(finding: Finding) -> _Key:
    return (finding.type, finding.detector, finding.severity)


def _find(text: str, location: str, *, open_end: bool = False) -> list[Finding]:
    """PII and secrets in `text`. With `open_end` (a window of a stream still arriving), its last
    word may be the start of a secret not yet whole, which no pattern matched: an excerpt that
    reaches it does not show it."""
    if location.endswith(".arguments"):  # JSON: `gh\u0070_...` is the token the tool receives
        text = unescape_json(text)
    normalized = normalize(text)
    found = find_pii(normalized, location, normalized=True) + find_secrets(
        normalized, location, normalized=True
    )
    last = _LAST_WORD.search(normalized) if open_end and found else None
    if last is None:
        return found
    return [replace(f, excerpt=_without_word(f.excerpt, last.group())) for f in found]


#: A run of characters at the very end of a text: a word the text may not have finished.
_LAST_WORD: Final = re.compile(r"\S{6,}\Z")


def _without_word(excerpt: str, word: str) -> str:
    """`excerpt` with `word`, or the start of it where the excerpt was cut inside it, left out."""
    if word in excerpt:
        return excerpt.replace(word, "…")
    shown = _LAST_WORD.search(excerpt.rstrip("…"))
    if shown is not None and word.startswith(shown.group()):
        return excerpt.rstrip("…")[: shown.start()] + "…"
    return excerpt


def _overlap(window: str) -> str:
    """What of `window` the next scan reads again: its last `OVERLAP` characters, or from the `eyJ`
    of a JWT-looking run that reaches its end and began before them (at most `JWT_KEEP` back)."""
    cut = len(window) - OVERLAP
    if cut <= 0:
        return window
    # A run that began before the cut fills everything after it: one linear match, and prose
    # (spaces) fails it within a few characters.
    if _JWT_RUN.fullmatch(window, cut) is None:
        return window[cut:]
    floor = max(0, len(window) - JWT_KEEP)
    run = floor + len(window[floor:cut].rstrip(_JWT_CHARS))  # where the run begins
    if run == floor and floor > 0:  # longer than JWT_KEEP: no JWT to keep whole
        return window[cut:]
    start = window.find("eyJ", run)
    if start < 0 or start >= cut:
        return window[cut:]
    # One character before `eyJ` too: the JWT regex needs a word boundary there, and the text
    # cut right at `eyJ` would make one that the answer lacks.
    return window[max(start - 1, 0) :]


@dataclass(slots=True)
class _Text:
    """One text scanned on its own: a choice's answer, or a tool call's arguments."""

    location: str
    #: The last OVERLAP characters already scanned.
    tail: str = ""
    #: Text received since the last scan.
    pending: list[str] = field(default_factory=list)


class StreamCheck:
    """The PII and secret check of one streamed answer."""

    __slots__ = ("_calls", "_choices", "_opened", "_pending", "_reasoning", "critical", "findings")

    def __init__(self) -> None:
        self._choices: dict[int, _Text] = {}
        #: Reasoning text by choice index: apart from the answer it comes before, so that a value
        #: is never made of reasoning's end and the answer's start.
        self._reasoning: dict[int, _Text] = {}
        #: Arguments by (choice index, the stream's key of the call).
        self._calls: dict[tuple[int, int], _Text] = {}
        #: Tool calls started, by choice index.
        self._opened: dict[int, int] = {}
        #: The texts that received something since the last scan.
        self._pending: list[_Text] = []
        #: The findings so far (the first `MAX_FINDINGS`), in the order found; location
        #: `response.choices[i]`, `response.choices[i].reasoning` (in its reasoning), or
        #: `response.choices[i].tool_calls[j].arguments` (`j` the call's position among the
        #: choice's calls, in the order they started); `core_locations` renames them all.
        self.findings: list[Finding] = []
        #: The first critical finding, once one appeared.
        self.critical: Finding | None = None

    def on_text(self, index: int, piece: str) -> None:
        """Take a piece of the answer text of choice `index` (cheap: scanning waits for `scan`)."""
        self._take(self._choices, index, piece)

    def on_reasoning(self, index: int, piece: str) -> None:
        """Take a piece of the reasoning text of choice `index` (findings located
        `response.choices[i].reasoning` until `core_locations` names the part)."""
        self._take(self._reasoning, index, piece, _REASONING_SUFFIX)

    def on_arguments(self, index: int, call: int, piece: str) -> None:
        """Take a piece of the arguments of tool call `call` (the stream's key) of choice `index`."""
        text = self._calls.get((index, call))
        if text is None:
            position = self._opened.get(index, 0)
            self._opened[index] = position + 1
            location = f"response.choices[{index}].tool_calls[{position}].arguments"
            text = self._calls[(index, call)] = _Text(location)
        self._queue(text, piece)

    def _take(self, texts: dict[int, _Text], index: int, piece: str, suffix: str = "") -> None:
        text = texts.get(index)
        if text is None:
            text = texts[index] = _Text(f"response.choices[{index}]{suffix}")
        self._queue(text, piece)

    def _queue(self, text: _Text, piece: str) -> None:
        if not text.pending:
            self._pending.append(text)
        text.pending.append(piece)

    def scan(self) -> list[Finding]:
        """Check the text received since the last scan; returns the new findings."""
        if not self._pending:
            return []
        found: list[Finding] = []
        for text in self._pending:
            found.extend(self._scan(text))
        self._pending.clear()
        if found:
            room = MAX_FINDINGS - len(self.findings)
            if room > 0:
                self.findings.extend(found[:room])
            if self.critical is None:
                self.critical = next((f for f in found if f.severity is Severity.CRITICAL), None)
        return found

    @staticmethod
    def _scan(text: _Text) -> list[Finding]:
        tail = text.tail
        added = "".join(text.pending)
        text.pending.clear()
        window = tail + added
        text.tail = _overlap(window)
        in_window = _find(window, text.location, open_end=True)
        if not in_window or not tail:
            return in_window
        # What the overlap holds on its own was reported by an earlier scan.
        seen = Counter(_key(f) for f in _find(tail, text.location))
        counts = Counter(_key(f) for f in in_window)
        if not any(seen[key] for key in counts):
            return in_window
        # But one at the overlap's end may be gone from the window (a token followed by `_x` is no
        # token): were all the overlap's findings subtracted, a value of the same kind in the new
        # text would be taken for it and lost. Findings carry no offsets, so the new text's own
        # findings are counted instead: those of the overlap and the new text sealed apart, less
        # the overlap's. At most the rest of the window's (old ones, and values across the seam)
        # were reported before.
        sealed = Counter(_key(f) for f in _find(tail + _SEAL + added, text.location))
        fresh: dict[_Key, int] = {}
        for key, count in counts.items():
            own = max(sealed[key] - seen[key], 0)
            reported = max(min(seen[key], count - own), 0)
            fresh[key] = count - reported
        new: list[Finding] = []
        # Findings come in text order per detector: the new ones of a key are its last ones.
        for finding in reversed(in_window):
            key = _key(finding)
            if fresh[key] > 0:
                fresh[key] -= 1
                new.append(finding)
        new.reverse()
        return new


def core_locations(findings: list[Finding], response: model.ParsedResponse) -> list[Finding]:
    """`findings` with those of the streaming checks (`response.choices[i]`, `i` the stream's
    choice index) located as the core's analysis of the stored span locates the same text
    (`llmtrace.rpc.exchange_convert`): `response.choices[k]` when the finished choice has one text
    part, `response.choices[k].content[j]` when it has several (reasoning and answer, answer and
    refusal, several Anthropic text blocks), `k` the choice's position; arguments
    `response.choices[k].tool_calls[j].arguments`, `j` the call's position in the finished
    choice. Keeps the core from recording a finding the proxy already made under another name."""
    positions: dict[int, int] = {}
    for k, choice in enumerate(response.choices):
        positions.setdefault(choice.index, k)
    found_in: _Found = {}
    out: list[Finding] = []
    for finding in findings:
        matched = _CHOICE_LOCATION.fullmatch(finding.location)
        position = positions.get(int(matched.group(1))) if matched is not None else None
        if matched is None or position is None:
            location = finding.location.removesuffix(_REASONING_SUFFIX)
            out.append(finding if location == finding.location else replace(finding, location=location))
            continue
        message = response.choices[position].message
        call = matched.group(2)
        if call is None:
            kinds = _REASONING_PARTS if matched.group("reasoning") else _ANSWER_PARTS
            location = _core_location(finding, position, message, found_in, kinds)
        else:
            location = _core_call_location(finding, position, int(call), message, found_in)
        out.append(finding if location == finding.location else replace(finding, location=location))
    return out


def _finds(found_in: _Found, key: tuple[str, int, int], text: str) -> set[tuple[str, str]]:
    """(type, detector) of what a scan of `text` finds, scanned once per `key`."""
    kinds = found_in.get(key)
    if kinds is None:
        kinds = found_in[key] = {(f.type, f.detector) for f in _find(text, "")}
    return kinds


def _core_location(
    finding: Finding, k: int, message: model.Message, found_in: _Found, kinds: frozenset[str]
) -> str:
    base = f"response.choices[{k}]"
    texts = [(j, part) for j, part in enumerate(message.parts) if part.text]
    if len(texts) <= 1:
        return base
    checked = [(j, part) for j, part in texts if part.type in kinds] or texts
    if len(checked) > 1:  # which part: the one whose own scan makes the same finding
        for j, part in checked:
            if (finding.type, finding.detector) in _finds(found_in, ("content", k, j), part.text):
                return f"{base}.content[{j}]"
    return f"{base}.content[{checked[0][0]}]"


def _core_call_location(
    finding: Finding,
    k: int,
    started: int,
    message: model.Message,
    found_in: _Found,
) -> str:
    """The call's position in the finished choice: the order calls started in, unless that call's
    arguments lack the finding and another's hold it (a call that came whole in the final event,
    calls started out of order)."""
    calls = message.tool_calls
    kind = (finding.type, finding.detector)
    order = ([started] if started < len(calls) else []) + [j for j in range(len(calls)) if j != started]
    j = next((j for j in order if kind in _finds(found_in, ("call", k, j), calls[j].arguments)), started)
    return f"response.choices[{k}].tool_calls[{j}].arguments"
