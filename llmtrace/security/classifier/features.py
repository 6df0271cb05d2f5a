"""Text to hashed sparse features, in numpy: the half of the classifier that is not in the ONNX file.

Features are character 3-, 4- and 5-grams and word 1- and 2-grams of the normalised, lower-cased
text, hashed into `DIMENSIONS` buckets. Character n-grams carry style (imperatives, delimiters,
markup, obfuscation) and survive misspellings; word n-grams carry phrases. Each family's counts are
log-scaled, and the n-gram vector has unit length, so a long document weighs no more than a short
one.

On top of them, cue features: fourteen families of words that injections use whatever their
source (addressing the model, overriding, naming instructions, asking to reveal, claiming no
restrictions, ...), each present or not, and every pair and triple of families that occur
together. They are what carries over to attack styles the model never saw: n-grams alone learn
each source's style (held-out F1 0.44 fused at `balanced`; with the cues 0.70, docs/security.md),
so the n-grams are scaled down (`NGRAM_WEIGHT`) and the cue combinations weigh the most.

The hash is our own (a polynomial over code points, then a 64-bit mixer) rather than Python's
`hash`, which is salted per process: training and serving must agree on every bucket. Changing
anything here changes the buckets, so `FEATURE_VERSION` is stored in the model and checked at load.

A batch comes out as two padded `[batch, width]` arrays, bucket ids and values; padding points at
bucket `DIMENSIONS` (a zero weight in the model) with value 0.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from llmtrace.security.normalize import normalize

FEATURE_VERSION: Final = "hash-char345-word12-cues14-pairs-triples-v3"
DIMENSIONS: Final = 1 << 18
PAD_INDEX: Final = DIMENSIONS
CHAR_NGRAMS: Final = (3, 4, 5)
#: Text beyond this is judged by its head and tail: instructions hide at either end.
MAX_CHARS: Final = 8192
_TAIL_CHARS: Final = 2048

_WORD: Final = re.compile(r"\w+|[^\w\s]{2,}")
_SPACES: Final = re.compile(r"\s+")
_MULTIPLIER: Final = np.uint64(1_000_003)
_MIX_1: Final = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2: Final = np.uint64(0x94D049BB133111EB)
# A different salt per family, so "abc" as a word and as a character trigram land apart.
_SALT_WORD: Final = np.uint64(0x9E3779B97F4A7C15)
_SALT_BIGRAM: Final = np.uint64(0xD6E8FEB86659FD93)

Indices = npt.NDArray[np.int64]
Values = npt.NDArray[np.float32]


def prepare(text: str) -> str:
    """What the features see: normalised, lower-cased, whitespace runs as one space, head and tail."""
    flat = _SPACES.sub(" ", normalize(text)).strip().lower()
    if len(flat) > MAX_CHARS:
        flat = flat[: MAX_CHARS - _TAIL_CHARS] + " " + flat[-_TAIL_CHARS:]
    return flat


def _mix(h: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    # splitmix64's finaliser: neighbouring inputs land in unrelated buckets.
    h = h ^ (h >> np.uint64(30))
    h = h * _MIX_1
    h = h ^ (h >> np.uint64(27))
    h = h * _MIX_2
    return h ^ (h >> np.uint64(31))


def _rolling(codes: npt.NDArray[np.uint64], n: int) -> npt.NDArray[np.uint64]:
    """Polynomial hashes of every run of `n` consecutive code points (wrapping uint64 arithmetic)."""
    count = len(codes) - n + 1
    h = np.zeros(count, dtype=np.uint64)
    for k in range(n):
        h = h * _MULTIPLIER + codes[k : k + count]
    return _mix(h + np.uint64(n))


def _char_hashes(text: str) -> npt.NDArray[np.uint64]:
    padded = f" {text} "
    codes = np.frombuffer(padded.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    return np.concatenate([_rolling(codes, n) for n in CHAR_NGRAMS if len(codes) >= n] or [_EMPTY])


def _word_hashes(text: str) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    words = _WORD.findall(text)
    if not words:
        return _EMPTY, _EMPTY
    # Each word as one code point sequence hashed by its own rolling hash: join with a separator
    # and hash the whole, reading each word's hash at its end (prefix sums of the polynomial).
    unigrams = np.fromiter((_word_code(word) for word in words), dtype=np.uint64, count=len(words))
    unigrams = _mix(unigrams ^ _SALT_WORD)
    bigrams = _mix(unigrams[:-1] * _MULTIPLIER + unigrams[1:] + _SALT_BIGRAM)
    return unigrams, bigrams


def _word_code(word: str) -> int:
    # FNV-1a over UTF-8, 64-bit: stable across processes, unlike hash().
    h = 0xCBF29CE484222325
    for byte in word.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


_EMPTY: Final = np.zeros(0, dtype=np.uint64)

#: Cue families, matched on the prepared (normalised, lower-cased) text.
CUES: Final = {
    "you": r"\b(?:you|your|yourself)\b",
    "ai": r"\b(?:ai|assistant|chatbot|bot|model|llm|gpt|chatgpt|language model)\b",
    "override": r"\b(?:ignore|disregard|forget|override|bypass|skip|abandon|drop)\b",
    "instructions": r"\b(?:instructions?|prompt|rules?|guidelines?|directives?|polic(?:y|ies)|restrictions?"
    r"|constraints?|system)\b",
    "previous": r"\b(?:previous|above|prior|earlier|preceding|original|initial|all)\b",
    "switch": r"\b(?:now|from now on|instead|new task|new instructions?|henceforth)\b",
    "persona": r"\b(?:pretend|act as|roleplay|role-play|you are now|become|imagine you)\b|\bas an? ",
    "secret": r"\b(?:password|secret|key|token|credential|confidential|hidden)\b",
    "reveal": r"\b(?:reveal|print|output|repeat|show|tell me|leak|disclose|send|forward|email)\b",
    "insist": r"\b(?:must|always|never|do not|don't|only|immediately|important)\b",
    "unrestricted": r"\b(?:unrestricted|unfiltered|no limits|without (?:any )?restrictions|jailbreak|dan"
    r"|developer mode|uncensored)\b",
    "email_address": r"[\w.+-]+@[\w-]+\.\w+",
    "url": r"https?://",
    "delimiter": r"(?:###|---|===|\[/?(?:inst|system)\]|<\|?/?(?:system|im_start|im_end)\|?>)",
}
_CUE_PATTERNS: Final = {name: re.compile(pattern) for name, pattern in CUES.items()}
#: Weights, chosen on the leave-sources-out evaluation (docs/security.md): the n-gram vector's
#: length, a cue's weight (times log1p of its count, capped), and the value of each pair and
#: triple of cues present together.
NGRAM_WEIGHT: Final = 0.25
_CUE_SCALE: Final = 6.0
_CUE_CAP: Final = 12.0
_PAIR_VALUE: Final = 10.0
_TRIPLE_VALUE: Final = 10.0


def _bucket(name: str) -> int:
    return int(_mix(np.array([_word_code(name)], dtype=np.uint64))[0] % np.uint64(DIMENSIONS))


_CUE_BUCKETS: Final = {name: _bucket(f"cue:{name}") for name in CUES}
_PAIR_BUCKETS: Final = {
    (a, b): _bucket(f"pair:{a}&{b}") for i, a in enumerate(CUES) for b in list(CUES)[i + 1 :]
}
_TRIPLE_BUCKETS: Final = {
    names: _bucket("triple:" + "&".join(names)) for names in itertools.combinations(CUES, 3)
}


def _cue_features(prepared: str) -> tuple[Indices, npt.NDArray[np.float64]]:
    counts = {name: len(pattern.findall(prepared)) for name, pattern in _CUE_PATTERNS.items()}
    present = [name for name in CUES if counts[name]]
    indices = [_CUE_BUCKETS[name] for name in present]
    values = [min(_CUE_CAP, _CUE_SCALE * float(np.log1p(counts[name]))) for name in present]
    for pair in itertools.combinations(present, 2):
        indices.append(_PAIR_BUCKETS[pair])
        values.append(_PAIR_VALUE)
    for triple in itertools.combinations(present, 3):
        indices.append(_TRIPLE_BUCKETS[triple])
        values.append(_TRIPLE_VALUE)
    return np.array(indices, dtype=np.int64), np.array(values, dtype=np.float64)


def _family(hashes: npt.NDArray[np.uint64]) -> tuple[Indices, npt.NDArray[np.float64]]:
    if len(hashes) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    buckets = (hashes % np.uint64(DIMENSIONS)).astype(np.int64)
    unique, counts = np.unique(buckets, return_counts=True)
    return unique, np.log1p(counts.astype(np.float64))


def featurize_one(text: str) -> tuple[Indices, Values]:
    """Bucket ids (may repeat across families) and values for one text: n-grams, then cues."""
    prepared = prepare(text)
    unigrams, bigrams = _word_hashes(prepared)
    parts = [_family(_char_hashes(prepared)), _family(unigrams), _family(bigrams)]
    indices = np.concatenate([p[0] for p in parts])
    values = np.concatenate([p[1] for p in parts])
    norm = float(np.sqrt(np.dot(values, values)))
    if norm > 0:
        values = values * (NGRAM_WEIGHT / norm)
    cue_indices, cue_values = _cue_features(prepared)
    return np.concatenate([indices, cue_indices]), np.concatenate([values, cue_values]).astype(np.float32)


def featurize(texts: Sequence[str]) -> tuple[Indices, Values]:
    """A padded batch: `[len(texts), width]` bucket ids and values (padding: `PAD_INDEX`, 0)."""
    return pad([featurize_one(text) for text in texts])


def pad(rows: Sequence[tuple[Indices, Values]]) -> tuple[Indices, Values]:
    """Rows of `featurize_one` as one batch, each padded to the widest (`PAD_INDEX`, 0)."""
    width = max((len(indices) for indices, _ in rows), default=0) or 1
    indices = np.full((len(rows), width), PAD_INDEX, dtype=np.int64)
    values = np.zeros((len(rows), width), dtype=np.float32)
    for row, (ids, vals) in enumerate(rows):
        indices[row, : len(ids)] = ids
        values[row, : len(vals)] = vals
    return indices, values
