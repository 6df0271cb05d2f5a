"""`llmtrace` subcommands as subprocesses, the way an operator runs them, for lifecycle tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import llmtrace.cli.main as cli

SOURCE_ROOT = Path(cli.__file__).resolve().parents[2]
CLI = (sys.executable, "-m", "llmtrace.cli.main")
READY_TIMEOUT_S = 60.0


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a child `llmtrace`: no LLMTRACE_* leaking in from this shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMTRACE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    """Write a config file and return its path."""
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class LlmtraceProcess:
    """One `llmtrace ...` subprocess with its ready file and log."""

    process: subprocess.Popen[bytes]
    ready_file: Path
    log_file: Path

    @classmethod
    def start(cls, directory: Path, name: str, *args: str, **env: str) -> LlmtraceProcess:
        """Run `llmtrace <args> --ready-file ...`, logging to `directory/<name>.log`."""
        ready = directory / f"{name}.ready.json"
        ready.unlink(missing_ok=True)
        log = directory / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [*CLI, *args, "--ready-file", str(ready)], stdout=out, stderr=out, env=cli_env(**env)
            )
        return cls(process, ready, log)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready_file.exists():
            code = self.process.poll()
            assert code is None, f"exited with {code} before ready:\n{self.log()}"
            assert time.monotonic() < deadline, f"not ready after {READY_TIMEOUT_S} s:\n{self.log()}"
            time.sleep(0.02)
        ready: dict[str, Any] = json.loads(self.ready_file.read_text())
        return ready

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send `sig` and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
