"""Checksums and structural rules that turn a regex hit into a finding: Luhn, IBAN MOD-97, card issuer
ranges, SSN and NINO allocation rules, Shannon entropy.

Each takes the candidate already stripped of separators and answers without I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Final


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


# (prefix low, prefix high, allowed lengths): the issuer ranges of the networks in wide use. A number
# outside them is far more often an id, a timestamp or an order number than a card.
_CARD_RANGES: Final[tuple[tuple[int, int, frozenset[int]], ...]] = (
    (4, 4, frozenset({13, 16, 19})),  # Visa
    (51, 55, frozenset({16})),  # Mastercard
    (2221, 2720, frozenset({16})),  # Mastercard 2-series
    (34, 34, frozenset({15})),  # American Express
    (37, 37, frozenset({15})),
    (6011, 6011, frozenset({16, 17, 18, 19})),  # Discover
    (644, 649, frozenset({16, 17, 18, 19})),
    (65, 65, frozenset({16, 17, 18, 19})),
    (3528, 3589, frozenset({16, 17, 18, 19})),  # JCB
    (300, 305, frozenset({14, 15, 16, 17, 18, 19})),  # Diners Club
    (36, 36, frozenset({14, 15, 16, 17, 18, 19})),
    (38, 39, frozenset({16, 17, 18, 19})),
    (62, 62, frozenset({16, 17, 18, 19})),  # UnionPay
    (50, 50, frozenset(range(12, 20))),  # Maestro
    (56, 58, frozenset(range(12, 20))),
    (6304, 6304, frozenset(range(12, 20))),
    (6759, 6759, frozenset(range(12, 20))),
    (6761, 6763, frozenset(range(12, 20))),
)


def card_issuer_known(digits: str) -> bool:
    """Whether `digits` starts with a known card issuer prefix and has that network's length."""
    length = len(digits)
    for low, high, lengths in _CARD_RANGES:
        width = len(str(low))
        if low <= int(digits[:width]) <= high and length in lengths:
            return True
    return False


def card_valid(digits: str) -> bool:
    """A plausible payment card number: 13 to 19 digits, a known issuer, Luhn valid."""
    return 13 <= len(digits) <= 19 and card_issuer_known(digits) and luhn_valid(digits)


# Well-known test numbers from the card networks' and processors' documentation.
TEST_CARDS: Final = frozenset(
    {
        "4111111111111111",
        "4242424242424242",
        "4012888888881881",
        "4222222222222",
        "4000056655665556",
        "5555555555554444",
        "5105105105105100",
        "2223003122003222",
        "378282246310005",
        "371449635398431",
        "378734493671000",
        "6011111111111117",
        "6011000990139424",
        "3530111333300000",
        "3566002020360505",
        "30569309025904",
        "38520000023237",
        "6200000000000005",
    }
)

# IBAN length per country (SWIFT IBAN registry). A country not listed is not accepted: two capitals and
# two digits are too common to trust on the checksum alone.
IBAN_LENGTHS: Final = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(code: str) -> bool:
    """Whether `code` (no spaces, upper case) is an IBAN: known country, its length, MOD-97 == 1."""
    if IBAN_LENGTHS.get(code[:2]) != len(code) or not code[2:4].isdigit() or not code.isalnum():
        return False
    # Check digits 00, 01 and 99 are never issued.
    if not 2 <= int(code[2:4]) <= 98:
        return False
    rearranged = code[4:] + code[:4]
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % 97 == 1


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """The SSA's rules: area not 000, 666 or 900-999; group not 00; serial not 0000."""
    return area not in {"000", "666"} and area[0] != "9" and group != "00" and serial != "0000"


# Numbers that circulate as examples (the Woolworth wallet card, advertising samples): not a person's.
SSN_PLACEHOLDERS: Final = frozenset({"123456789", "078051120", "219099999", "111111111", "987654320"})

# HMRC: these first letters, second letters and prefixes are never issued.
_NINO_BAD_FIRST: Final = frozenset("DFIQUV")
_NINO_BAD_SECOND: Final = frozenset("DFIOQUV")
_NINO_BAD_PREFIX: Final = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def nino_prefix_valid(prefix: str) -> bool:
    """Whether a UK National Insurance number may start with these two letters."""
    first, second = prefix[0], prefix[1]
    return first not in _NINO_BAD_FIRST and second not in _NINO_BAD_SECOND and prefix not in _NINO_BAD_PREFIX


def shannon_entropy(value: str) -> float:
    """Bits per character of `value`'s character distribution (0 for an empty string)."""
    if not value:
        return 0.0
    length = len(value)
    return -sum(count / length * math.log2(count / length) for count in Counter(value).values())
