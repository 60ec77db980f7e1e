"""Cluster processes for tests: hosts and gateways as plain subprocesses
(`python -m callroom.cluster.run …`), on loopback ports, with bounded waits."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.integration.server import free_port

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "apps" / "cluster_app.py"


class Proc:
    def __init__(self, args: list[str], port: int, log_path: Path, env: dict[str, str]) -> None:
        self.args = args
        self.port = port
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, agent: str, name: str, query: str = "") -> str:
        url = f"ws://127.0.0.1:{self.port}/agents/{agent}/{name}"
        return f"{url}?{query}" if query else url

    def start(self, timeout: float = 30.0) -> Proc:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "callroom.cluster.run", *self.args],
            cwd=str(ROOT),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError, ValueError):
                if self.health().get("ok"):
                    return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"not healthy after {timeout}s:\n{self.log()}")

    def health(self, timeout: float = 2.0) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=timeout) as r:
                data: dict[str, Any] = json.loads(r.read())
                return data
        except urllib.error.HTTPError as exc:
            data = json.loads(exc.read() or b"{}")
            return data

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-15_000:]
        except OSError:
            return "<no log>"


class Cluster:
    """N hosts and M gateways over one Postgres database."""

    def __init__(self, storage: str, base: Path) -> None:
        self.storage = storage
        self.base = base
        self.hosts: dict[str, Proc] = {}
        self.gateways: list[Proc] = []
        self.env = {"CALLROOM_STORAGE": storage, "CALLROOM_LOG_LEVEL": "INFO"}

    def add_host(self, host_id: str, *, port: int | None = None, **env: str) -> Proc:
        port = port or free_port()
        proc = Proc(
            ["host", str(APP), "--id", host_id, "--port", str(port)],
            port,
            self.base / f"host-{host_id}.log",
            {**self.env, "CALLROOM_DATA_DIR": str(self.base / f"data-{host_id}"), **env},
        )
        self.hosts[host_id] = proc
        return proc.start()

    def add_gateway(self, min_hosts: int = 1) -> Proc:
        port = free_port()
        proc = Proc(
            ["gateway", "--port", str(port), "--min-hosts", str(min_hosts)],
            port,
            self.base / f"gateway-{len(self.gateways)}.log",
            dict(self.env),
        )
        self.gateways.append(proc)
        return proc.start(timeout=60.0)

    def wait_hosts(self, gateway: Proc, ids: set[str], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = {h["id"] for h in gateway.health().get("hosts", [])}
            if live == ids:
                return
            time.sleep(0.1)
        raise AssertionError(f"gateway sees {live}, expected {ids}")

    def logs(self) -> str:
        return "\n".join(
            f"===== {p.log_path.name} =====\n{p.log()}"
            for p in [*self.hosts.values(), *self.gateways]
        )

    def close(self) -> None:
        for p in [*self.gateways, *self.hosts.values()]:
            p.stop(timeout=10)
