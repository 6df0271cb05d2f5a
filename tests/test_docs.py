"""The docs stay true to the code: generated tables are current, examples load and run."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.conftest import RunningCore

ROOT = Path(__file__).resolve().parent.parent


def test_generated_doc_tables_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools/docs_sync.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


async def test_tour_script_sends_and_lists_spans(core: RunningCore) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(ROOT / "docs/examples/send_spans.py"), core.bound.grpc],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "accepted 3 spans"
    assert [line.split()[1] for line in lines[1:]] == ["gpt-4o", "gpt-4o-mini", "gpt-4o"]
