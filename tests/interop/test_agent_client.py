"""The unmodified npm `agents` client (pinned in package.json here) against a real callroom.

Each Node script checks one area and exits non-zero on the first failed check (its output
is shown on failure). Skipped, with the reason, when `node` or node_modules are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from callroom.protocol.names import camel_to_kebab
from tests.conftest import ServerFactory
from tests.integration.server import CONFORMANCE_APP, ServerProcess
from tests.interop.restart import run_with_restart
from tests.unit.test_core_names import KEBAB_CASES

HERE = Path(__file__).resolve().parent
NODE = shutil.which("node")
SCRIPT_TIMEOUT = 30.0

pytestmark = [
    pytest.mark.node,
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (HERE / "node_modules" / "agents" / "package.json").exists()
        or not (HERE / "node_modules" / "ws" / "package.json").exists(),
        reason="npm packages missing: run `npm ci` in tests/interop",
    ),
]


def _env(srv: ServerProcess, name: str) -> dict[str, str]:
    return {
        **os.environ,
        "CALLROOM_HOST": srv.host,
        "AGENT_NAME": name,
        "SCRIPT_TIMEOUT_MS": str(int((SCRIPT_TIMEOUT - 5) * 1000)),
    }


def run_script(script: str, srv: ServerProcess, name: str) -> str:
    assert NODE is not None
    try:
        proc = subprocess.run(
            [NODE, str(HERE / script)],
            cwd=HERE,
            env=_env(srv, name),
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script} hung for {SCRIPT_TIMEOUT}s\n{exc.stdout}\n{exc.stderr}")
    output = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{output}"
    assert "PASS" in proc.stdout, output
    return proc.stdout


@pytest.mark.parametrize("script", ["handshake.mjs", "rpc.mjs", "state_sync.mjs"])
def test_counter_scripts(conformance_server: ServerProcess, agent_name: str, script: str) -> None:
    run_script(script, conformance_server, agent_name)


def test_unknown_agent_is_terminal(conformance_server: ServerProcess, agent_name: str) -> None:
    run_script("terminal_close.mjs", conformance_server, agent_name)


def test_features(features_server: ServerProcess, agent_name: str) -> None:
    run_script("features.mjs", features_server, agent_name)


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_reconnect_after_restart(
    server_factory: ServerFactory, agent_name: str, kill: bool
) -> None:
    srv = server_factory(CONFORMANCE_APP)
    assert NODE is not None
    rc, output = run_with_restart(
        [NODE, str(HERE / "reconnect.mjs")],
        cwd=HERE,
        env=_env(srv, agent_name),
        server=srv,
        kill=kill,
        timeout=SCRIPT_TIMEOUT,
    )
    assert rc == 0, f"reconnect.mjs exited {rc}\n{output}"
    assert "PASS" in output, output
    if not kill:
        assert "closed with 1001" in output, output


def test_kebab_case_matches_npm() -> None:
    """Our camel_to_kebab against the real client's namespace for the same class names."""
    assert NODE is not None
    names = [name for name, _ in KEBAB_CASES]
    proc = subprocess.run(
        [NODE, str(HERE / "kebab.mjs"), json.dumps(names)],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    npm = json.loads(proc.stdout)
    assert {n: camel_to_kebab(n) for n in names} == npm
    assert {n: k for n, k in KEBAB_CASES} == npm
