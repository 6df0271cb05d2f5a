"""Per-request failure switches: the `X-Fake-Behavior` header or a `+`-suffix on the model name.

The header holds comma-separated switches (`status:429`, `delay:0.5`, `cut:3`, `gzip`); the model
name can carry the same switches after `+` signs (`gpt-4o+status:500`, `gpt-4o+gzip+delay:1`).
"""

from __future__ import annotations

from dataclasses import dataclass

BEHAVIOR_HEADER = "X-Fake-Behavior"


class BehaviorError(ValueError):
    """A switch that cannot be parsed."""


@dataclass(frozen=True)
class Behavior:
    """What to do to one response."""

    status: int | None = None
    delay_s: float = 0.0
    cut_after: int | None = None
    """Streams: events sent before the connection drops; JSON bodies: bytes sent."""
    gzip: bool = False

    def merged(self, other: Behavior) -> Behavior:
        """Switches of both, `other` winning where both set one."""
        return Behavior(
            status=other.status if other.status is not None else self.status,
            delay_s=other.delay_s or self.delay_s,
            cut_after=other.cut_after if other.cut_after is not None else self.cut_after,
            gzip=self.gzip or other.gzip,
        )


def parse_switches(switches: list[str]) -> Behavior:
    """A Behavior from switches such as `["status:429", "gzip"]`."""
    behavior = Behavior()
    for raw in switches:
        switch = raw.strip()
        if not switch:
            continue
        name, _, value = switch.partition(":")
        try:
            if name == "status":
                behavior = behavior.merged(Behavior(status=int(value)))
            elif name == "delay":
                behavior = behavior.merged(Behavior(delay_s=float(value)))
            elif name == "cut":
                behavior = behavior.merged(Behavior(cut_after=int(value)))
            elif name == "gzip" and not value:
                behavior = behavior.merged(Behavior(gzip=True))
            else:
                raise BehaviorError(f"unknown fake behavior {switch!r}")
        except ValueError as exc:
            if isinstance(exc, BehaviorError):
                raise
            raise BehaviorError(f"bad value in fake behavior {switch!r}") from exc
    return behavior


def parse_header(value: str | None) -> Behavior:
    """The Behavior named by an `X-Fake-Behavior` header value."""
    return parse_switches(value.split(",")) if value else Behavior()


def split_model(model: str) -> tuple[str, Behavior]:
    """The real model name and the switches appended to it with `+`."""
    name, *switches = model.split("+")
    return name, parse_switches(switches)
