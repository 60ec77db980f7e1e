"""Run a Node script that prints RESTART_ME mid-way, restart the server then, collect output.

Shared by the AgentClient and VoiceClient reconnect tests: the official clients must come
back by themselves after the server restarts (SIGTERM → 1001, or SIGKILL).
"""

from __future__ import annotations

import queue
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tests.integration.server import ServerProcess


def run_with_restart(
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    server: ServerProcess,
    kill: bool,
    timeout: float,
) -> tuple[int, str]:
    """Returns (exit code, whole output); fails the test if the script hangs or never asks."""
    name = Path(command[1]).name if len(command) > 1 else command[0]
    proc = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        while True:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"{name} never asked for a restart:\n" + "".join(seen))
            if line is None:
                pytest.fail(f"{name} ended before the restart:\n" + "".join(seen))
            seen.append(line)
            if line.strip() == "RESTART_ME":
                break
        server.restart(kill=kill)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} hung after the restart:\n" + "".join(seen))
        while (line := lines.get(timeout=5)) is not None:
            seen.append(line)
        return rc, "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
