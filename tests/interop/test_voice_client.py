"""The unmodified npm `VoiceClient` (agents/voice/client) in Node against a real callroom.

`voice_client.mjs` runs the published client with a fake Web Audio stack and a tone
"microphone" (`voice_webaudio.mjs`) against tests/integration/apps/voice_fake.py and exits
non-zero on the first failed check; its output is shown on failure. Skipped, with the reason,
when `node` or node_modules are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.integration.server import ServerProcess
from tests.interop.restart import run_with_restart

HERE = Path(__file__).resolve().parent
APP = HERE.parent / "integration" / "apps" / "voice_fake.py"
SCRIPT = HERE / "voice_client.mjs"
NODE = shutil.which("node")
# The script bounds itself (SCRIPT_TIMEOUT_MS); this is the backstop for a wedged process.
SCRIPT_TIMEOUT = 90.0

pytestmark = [
    pytest.mark.node,
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (HERE / "node_modules" / "agents" / "dist" / "voice" / "client.js").exists()
        or not (HERE / "node_modules" / "ws" / "package.json").exists(),
        reason="npm packages missing: run `npm ci` in tests/interop",
    ),
]


@pytest.fixture(scope="module")
def voice_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("voice-client")
    with ServerProcess(APP, base / "data") as srv:
        yield srv


def _env() -> dict[str, str]:
    return {**os.environ, "SCRIPT_TIMEOUT_MS": str(int((SCRIPT_TIMEOUT - 10) * 1000))}


def _command(srv: ServerProcess, name: str, mode: str) -> list[str]:
    assert NODE is not None
    return [NODE, str(SCRIPT), srv.host, name, mode]


def test_voice_client_call(voice_server: ServerProcess, agent_name: str) -> None:
    """Greeting, a spoken turn, a barge-in, endCall(), and a call the agent hangs up."""
    try:
        proc = subprocess.run(
            _command(voice_server, agent_name, "call"),
            cwd=HERE,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"voice_client.mjs hung for {SCRIPT_TIMEOUT}s\n{exc.stdout}\n{exc.stderr}")
    output = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, f"voice_client.mjs exited {proc.returncode}\n{output}"
    assert "PASS" in proc.stdout, output


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_voice_client_reconnects_mid_call(
    server_factory: ServerFactory, agent_name: str, kill: bool
) -> None:
    """The server restarts mid-call; the client reconnects, re-sends start_call, goes on."""
    srv = server_factory(APP)
    rc, output = run_with_restart(
        _command(srv, agent_name, "reconnect"),
        cwd=HERE,
        env=_env(),
        server=srv,
        kill=kill,
        timeout=SCRIPT_TIMEOUT,
    )
    assert rc == 0, f"voice_client.mjs exited {rc}\n{output}"
    assert "PASS" in output, output
    if not kill:
        assert "close code is not terminal (1001)" in output, output
