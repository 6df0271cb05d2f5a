"""The supervisor's start-up waits give way to SIGTERM, and a child's orphan check."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time

import pytest

from llmtrace.config.schema import EnforcementSettings, Settings
from llmtrace.supervisor import (
    Supervisor,
    SupervisorError,
    _Child,
    _mp,
    _orphaned,
    _StopRequested,
    core_in_background,
)


def test_a_child_is_orphaned_only_when_its_parent_is_not_the_one_it_was_started_by() -> None:
    # Compared with the pid the supervisor had, not with 1: in a container the supervisor itself
    # may be pid 1, and its children must still start.
    assert not _orphaned(os.getppid())
    assert _orphaned(os.getppid() + 1)


def test_a_stop_during_start_up_ends_the_wait_for_workers_at_once() -> None:
    supervisor = Supervisor(Settings(), with_core=False, core_addr="127.0.0.1:1", ready_file=None)
    try:
        # No worker ever reports ready; SIGTERM (its handler sets the flag) comes after 0.3 s.
        timer = threading.Timer(0.3, lambda: setattr(supervisor, "_stopping", True))
        timer.start()
        started = time.monotonic()
        with pytest.raises(_StopRequested):
            supervisor._wait_workers_ready(1)
        assert time.monotonic() - started < 5.0  # not the 120 s start-up limit
    finally:
        supervisor._stop_all()


def test_a_worker_that_dies_while_starting_ends_the_wait_at_once() -> None:
    supervisor = Supervisor(Settings(), with_core=False, core_addr="127.0.0.1:1", ready_file=None)
    try:
        # A real child that exits as a worker failing at start-up does (its error is logged).
        process = _mp.Process(target=sys.exit, args=(3,), name="llmtrace-shim-0")
        process.start()
        supervisor._workers.append(_Child("shim-0", process))
        started = time.monotonic()
        with pytest.raises(SupervisorError, match=r"shim-0 exited while starting \(exit code 3\)"):
            supervisor._wait_workers_ready(1)
        assert time.monotonic() - started < 10.0  # not the 120 s start-up limit
    finally:
        supervisor._stop_all()


def test_the_core_leaves_the_background_when_inline_enforcement_asks_it() -> None:
    assert core_in_background(Settings())  # the default: the core only stores and analyses
    assert not core_in_background(Settings(core_priority="normal"))
    fast = EnforcementSettings(mode="block", depth="fast")  # checked in the shim: no core asked
    assert core_in_background(dataclasses.replace(Settings(), enforcement=fast))
    full = EnforcementSettings(mode="block", depth="full")  # the core answers every request
    assert not core_in_background(dataclasses.replace(Settings(), enforcement=full))
    idle = EnforcementSettings(mode="log", depth="full")  # nothing inline: the core is not asked
    assert core_in_background(dataclasses.replace(Settings(), enforcement=idle))
