"""Run the voice-receptionist demo: the clinic CRM, then callroom serving examples/receptionist.py.

    .venv/bin/python examples/run_demo.py --port 8787 [--crm-port 8790]

Both run as child processes in their own process group, so a Ctrl-C at the terminal reaches
only this script, which then stops each child exactly once with SIGTERM: a second signal would
make uvicorn skip callroom's graceful drain of live calls.

The CRM gets a fresh database per run unless `--crm-db` is given, because its seeded diary is
relative to the day it is created: a database kept from last week would have no upcoming
appointments to talk about.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
RECEPTIONIST = ROOT / "examples" / "receptionist.py"
HOST = "127.0.0.1"
DEFAULT_CRM_TOKEN = "demo-crm-token"
# Generous: the first start may load speech models from disk before /healthz answers.
DEFAULT_STARTUP_TIMEOUT = 300.0
# callroom drains live calls on SIGTERM; give it that long before SIGKILL.
STOP_GRACE_SECONDS = 30.0


class DemoError(Exception):
    """A start-up problem worth one clear line to the user rather than a traceback."""


def port_is_free(port: int) -> bool:
    """Whether uvicorn could listen here. SO_REUSEADDR as uvicorn sets it, so a port left in
    TIME_WAIT by the previous run is not reported busy while a live listener still is."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def http_ok(url: str, headers: dict[str, str] | None = None) -> bytes | None:
    """The body of a 200 answer, or None for anything else (not up yet, refused, error)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=2.0) as response:
            return response.read() if response.status == 200 else None
    except (OSError, urllib.error.URLError, ValueError):
        return None


class Demo:
    """Owns the two children; every exit path (signal, crash, start-up error) goes through
    `shutdown` so nothing is left listening on the demo's ports."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stop = threading.Event()
        self.force = threading.Event()  # a second Ctrl-C: stop waiting for the drain
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.token = os.environ.get("CRM_TOKEN") or DEFAULT_CRM_TOKEN
        self.crm_url = f"http://{HOST}:{args.crm_port}"
        self.callroom_url = f"http://{HOST}:{args.port}"

    # -- children -------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.children[name] = subprocess.Popen(
            argv,
            cwd=str(ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            process_group=0,  # keep the terminal's Ctrl-C away from children (see module doc)
        )

    def check_alive(self) -> None:
        for name, proc in self.children.items():
            if proc.poll() is not None:
                raise DemoError(f"the {name} exited with code {proc.returncode} (see its output)")

    def wait_until(self, name: str, probe: str, ok: Callable[[], object], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.stop.is_set():
            self.check_alive()
            if ok():
                return
            if time.monotonic() > deadline:
                raise DemoError(f"the {name} did not answer {probe} within {timeout:.0f}s")
            self.stop.wait(0.2)

    def shutdown(self) -> None:
        """SIGTERM every child still running, then wait; SIGKILL past the grace period or on a
        second Ctrl-C. The callroom server goes first so calls in flight can still reach the
        CRM while they drain."""
        for name in ("callroom server", "CRM"):
            proc = self.children.get(name)
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while proc.poll() is None and not self.force.is_set():
                if time.monotonic() > deadline:
                    print(f"run_demo: the {name} did not stop in time; killing it", file=sys.stderr)
                    break
                self.force.wait(0.1)
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    # -- the run --------------------------------------------------------------------------
    def start(self, crm_db: Path) -> None:
        args = self.args
        app = (args.app or RECEPTIONIST).resolve()
        if not app.is_file():
            shown = app.relative_to(ROOT) if app.is_relative_to(ROOT) else app
            raise DemoError(f"{shown} is missing: there is no agent to serve")
        if args.port == args.crm_port:
            raise DemoError("--port and --crm-port must differ")
        for port, flag in ((args.port, "--port"), (args.crm_port, "--crm-port")):
            if not port_is_free(port):
                raise DemoError(
                    f"port {port} on {HOST} is already in use; stop whatever holds it "
                    f"or pick another with {flag} N"
                )

        env = {**os.environ, "PYTHONUNBUFFERED": "1", "CRM_TOKEN": self.token}
        self.spawn(
            "CRM",
            [
                sys.executable,
                "-m",
                "examples.crm.app",
                "--host",
                HOST,
                "--port",
                str(args.crm_port),
                "--db",
                str(crm_db),
                "--log-level",
                "warning",
            ],
            env,
        )
        auth = {"Authorization": f"Bearer {self.token}"}
        self.wait_until(
            "CRM", f"{self.crm_url}/slots", lambda: http_ok(f"{self.crm_url}/slots", auth), 30.0
        )

        self.spawn(
            "callroom server",
            [
                sys.executable,
                "-m",
                "callroom.cli",
                "serve",
                str(app),
                "--host",
                HOST,
                "--port",
                str(args.port),
            ],
            {**env, "CRM_URL": self.crm_url},
        )

        def healthy() -> bool:
            body = http_ok(f"{self.callroom_url}/healthz")
            with contextlib.suppress(ValueError):
                return bool(body and json.loads(body).get("ok"))
            return False

        self.wait_until(
            "callroom server", f"{self.callroom_url}/healthz", healthy, args.startup_timeout
        )

    def banner(self) -> str:
        port = self.args.port
        return "\n".join(
            [
                "",
                "The receptionist is ready.",
                f"  Talk to it in a browser:  http://{HOST}:{port}/",
                "  Or call it with a recorded question:",
                f"    .venv/bin/callroom call ws://{HOST}:{port}/agents/receptionist/demo-call"
                " --wav examples/audio/question.wav --out reply.wav",
                f"  Clinic CRM: {self.crm_url} (patients 4567, 1234, 2040, 3318, 5821, 7702)",
                "Press Ctrl-C to stop.",
                "",
            ]
        )

    def run(self) -> int:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if self.stop.is_set():
                self.force.set()
            self.stop.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            with tempfile.TemporaryDirectory(prefix="callroom-demo-") as tmp:
                crm_db = (self.args.crm_db or Path(tmp) / "crm.sqlite").resolve()
                try:
                    self.start(crm_db)
                    if not self.stop.is_set():
                        print(self.banner(), flush=True)
                    while not self.stop.wait(0.5):
                        self.check_alive()
                except DemoError as exc:
                    print(f"run_demo: {exc}", file=sys.stderr)
                    return 1
                finally:
                    if any(p.poll() is None for p in self.children.values()):
                        print("run_demo: stopping…", file=sys.stderr, flush=True)
                    self.shutdown()
        finally:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8787, help="callroom server port")
    parser.add_argument("--crm-port", type=int, default=8790, help="clinic CRM port")
    parser.add_argument(
        "--crm-db", type=Path, default=None, help="keep the CRM database here (default: fresh)"
    )
    parser.add_argument(
        "--app", type=Path, default=None, help="callroom app (default: examples/receptionist.py)"
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=DEFAULT_STARTUP_TIMEOUT,
        help="seconds to wait for the callroom server's /healthz",
    )
    return Demo(parser.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
