"""Instruction override in French, German, Spanish, Italian, Portuguese, Russian, Chinese and Japanese
(`prompt_injection`, detector `regex.injection.override_multilingual`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

from llmtrace.security.findings import Match, Severity
from llmtrace.security.injection.rules import PROMPT_INJECTION, make_match
from llmtrace.security.normalize import normalize

# Multilingual "ignore previous instructions". Written in the natural script and normalised at import, so
# that they match the normalised text (accents dropped, Cyrillic look-alikes mapped to Latin). Not
# lower-cased: that would turn `\S` into `\s`; they are written in lower case instead.
_MULTILINGUAL_SOURCES: Final = (
    # French
    r"\b(?:ignorez?|ignorer|oubliez?|oublier|ne\s+tenez\s+pas\s+compte\s+des|ne\s+tiens\s+pas\s+compte\s+des)"
    r"\s+(?:\S+\s+){0,3}?(?:instructions?|consignes|regles|directives)\s+(?:precedentes|anterieures"
    r"|ci-dessus|donnees|initiales|du\s+systeme)"
    r"|\b(?:ignorez?|ignorer|oubliez?|oublier)\s+(?:toutes?\s+)?(?:les|tes|vos)\s+(?:instructions|consignes)"
    r"\s*(?:[.,;!]|$)",
    # German
    r"\b(?:ignoriere|ignorieren\s+sie|ignoriert|vergiss|vergessen\s+sie|missachte)\s+(?:\S+\s+){0,2}?"
    r"(?:vorherigen|vorigen|bisherigen|obigen|früheren|vorangegangenen|ursprünglichen|alle)\s+"
    r"(?:\S+\s+)?(?:anweisungen|instruktionen|befehle|regeln|vorgaben|anordnungen)"
    r"|\bvergiss\s+alles\s+(?:was|bisher|vorher|davor|zuvor)",
    # Spanish
    r"\b(?:ignora|ignore|ignorar|ignoren|olvida|olvide|olvidar|olviden|omite|descarta)\s+(?:\S+\s+){0,3}?"
    r"(?:instrucciones|indicaciones|reglas|directrices|órdenes)\s+(?:anteriores|previas|de\s+arriba"
    r"|iniciales|del\s+sistema)"
    r"|\b(?:olvida|olvide)\s+todo\s+lo\s+(?:anterior|que\s+te\s+(?:dije|dijeron))",
    # Italian
    r"\b(?:ignora|ignori|ignorate|ignorare|dimentica|dimentichi|dimenticate|trascura)\s+(?:\S+\s+){0,3}?"
    r"(?:istruzioni|indicazioni|regole|direttive)\s+(?:precedenti|sopra|iniziali|del\s+sistema)"
    r"|\bdimentica\s+tutto\s+(?:quello|ciò)\s+che",
    # Portuguese
    r"\b(?:ignore|ignora|ignorar|ignorem|esqueça|esqueca|esquecer|desconsidere)\s+(?:\S+\s+){0,3}?"
    r"(?:instruções|instrucoes|orientações|regras|diretrizes)\s+(?:anteriores|prévias|acima|iniciais"
    r"|do\s+sistema)",
    # Russian
    # (the infinitive is an imperative too: "Игнорировать предыдущие инструкции")
    r"(?:игнорируй(?:те)?|проигнорируй(?:те)?|(?:про)?игнорировать|забудь(?:те)?|забыть"
    r"|не\s+обращай(?:те)?\s+внимания\s+на)\s+"
    r"(?:\S+\s+){0,2}?(?:предыдущие|прежние|вышеуказанные|все|изначальные|системные)\s+(?:\S+\s+)?"
    r"(?:инструкции|указания|команды|правила|инструкциям|указаниям)"
    r"|забудь(?:те)?\s+всё|забудь(?:те)?\s+все,?\s+что",
    # Chinese
    r"(?:忽略|无视|忽视|忘记|忘掉|不要理会|不要遵守)(?:你)?(?:之前|以前|先前|上面|以上|前面|上述|所有|全部|原来|原有)"
    r"(?:的)?(?:所有|全部)?(?:的)?(?:指令|指示|说明|提示|规则|命令|要求|设定)",
    # Japanese
    r"(?:以前|前|上記|これまで|先|最初|すべて|全て)の(?:すべての|全ての)?(?:指示|命令|指令|ルール|プロンプト)"
    r"(?:を|は)(?:すべて|全て)?(?:無視|忘れ)",
)
_MULTILINGUAL: Final = re.compile(
    "|".join(f"(?:{normalize(source)})" for source in _MULTILINGUAL_SOURCES), re.M
)
# Words only the non-English phrases use (English "ignore" and "instructions" would open it on every
# English attack and on benign text alike). Non-ASCII text always runs the pattern.
_MULTILINGUAL_GATE: Final = frozenset(
    [
        "ignorez",
        "ignorer",
        "oublie",
        "oubliez",
        "oublier",
        "tenez",
        "tiens",
        "ignoriere",
        "ignorieren",
        "ignoriert",
        "vergiss",
        "vergessen",
        "missachte",
        "ignora",
        "ignorar",
        "ignoren",
        "ignorem",
        "olvida",
        "olvide",
        "olvidar",
        "olviden",
        "omite",
        "descarta",
        "ignori",
        "ignorate",
        "ignorare",
        "dimentica",
        "dimentichi",
        "dimenticate",
        "trascura",
        "esqueca",
        "esquecer",
        "desconsidere",
        "todas",
        "todo",
        "tutte",
        "tutto",
        "toutes",
        "alle",
        "alles",
        "consignes",
        "regles",
        "anweisungen",
        "instrucciones",
        "istruzioni",
        "instrucoes",
    ]
)

# A piece of text every match holds: the verbs of each language that open the phrases, the whole
# Japanese phrase's verb. Non-ASCII text (which skips the word gate) runs the pattern only when one of
# them is there: one scan instead of the pattern's many branches at every position.
ANCHORS: Final = tuple(
    normalize(anchor)
    for anchor in (
        # French, German, Spanish, Italian, Portuguese
        "ignor",
        "oubli",
        "tenez",
        "tiens",
        "vergiss",
        "vergessen",
        "missachte",
        "olvid",
        "omite",
        "descarta",
        "dimentic",
        "trascura",
        "esque",
        "desconsidere",
        # Russian
        "игнорируй",
        "игнорировать",
        "забудь",
        "забыть",
        "обращай",
        # Chinese
        "忽略",
        "无视",
        "忽视",
        "忘记",
        "忘掉",
        "不要理会",
        "不要遵守",
        # Japanese
        "無視",
        "忘れ",
    )
)
_ANCHOR: Final = re.compile("|".join(re.escape(anchor) for anchor in ANCHORS))


def multilingual_matches(text: str, lowered: str, words: set[str]) -> Iterator[Match]:
    """Non-English "ignore previous instructions" in `lowered` (the lower-cased normalised `text`)."""
    if lowered.isascii() and words.isdisjoint(_MULTILINGUAL_GATE):
        return
    if _ANCHOR.search(lowered) is None:
        return
    for m in _MULTILINGUAL.finditer(lowered):
        yield make_match(
            text,
            m.start(),
            m.end(),
            kind="override_multilingual",
            type_=PROMPT_INJECTION,
            severity=Severity.HIGH,
            confidence=0.85,
            desc="Instruction to ignore previous instructions (non-English)",
        )
