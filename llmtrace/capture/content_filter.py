"""What the `capture.bodies` mode lets through of each piece of content, within the size budget.

- `full`: content as sent;
- `redacted`: every text passed through `mask_sensitive` (before it is cut, so a cut never leaves
  half a secret unmasked);
- `metadata`: no content at all (texts, URIs, tool arguments, raw bodies, participant names all
  empty).

An unknown mode is treated as `metadata`: capture fails closed.
"""

from __future__ import annotations

from typing import Final

from llmtrace.capture.accumulate import Budget
from llmtrace.security.masking import MASK_MARGIN, mask_sensitive, masked_prefix

BODIES_FULL: Final = "full"
BODIES_REDACTED: Final = "redacted"
BODIES_METADATA: Final = "metadata"


def normalize_mode(bodies: str) -> str:
    """`bodies` when it is a known mode, else `metadata`."""
    return bodies if bodies in (BODIES_FULL, BODIES_REDACTED) else BODIES_METADATA


class ContentFilter:
    """Applies one mode and one character budget to the texts of one side of a span."""

    __slots__ = ("budget", "keeps_content", "masks")

    def __init__(self, mode: str, budget_chars: int) -> None:
        self.budget = Budget(budget_chars)
        self.keeps_content = mode != BODIES_METADATA
        self.masks = mode == BODIES_REDACTED

    @property
    def truncated(self) -> bool:
        """Some text was cut or dropped for the budget."""
        return self.budget.truncated

    def label(self, value: str) -> str:
        """A short text the client chose (a participant's `name`) as this mode allows, outside
        the budget: names are cut to the name limit, not counted as content."""
        if not value or not self.keeps_content:
            return ""
        return mask_sensitive(value) if self.masks else value

    def text(self, value: str) -> str:
        """`value` as this mode and the remaining budget allow."""
        if not value or not self.keeps_content:
            return ""
        if self.masks:
            value = masked_within(value, self.budget)
        return self.budget.take(value)


def masked_within(value: str, budget: Budget) -> str:
    """`value` masked, masking only about as much as `budget` can keep (huge texts stay cheap)."""
    room = budget.remaining
    if room == 0:
        budget.truncated = True
        return ""
    masked = masked_prefix(value, room)
    if len(value) > room + MASK_MARGIN:
        budget.truncated = True
        return masked[:room]
    return masked
