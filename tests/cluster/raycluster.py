"""A local Ray cluster of several nodes on this machine for tests: `ray start --head --block`
plus `ray start --block --address=…` per extra node, each in its own session so teardown can
end exactly the processes it started (process-group kill), on loopback addresses."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.integration.server import free_port

RAY = Path(sys.executable).parent / "ray"


class LocalRay:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.temp = Path(tempfile.mkdtemp(prefix="cr-ray-"))  # short: Ray's socket paths
        self.port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}

    @property
    def address(self) -> str:
        return f"127.0.0.2:{self.port}"

    def _spawn(self, args: list[str], name: str, ip: str) -> None:
        log = (self.log_dir / f"ray-{name}.log").open("ab")
        self.procs.append(
            subprocess.Popen(
                # 127.0.0.1 would be replaced by the machine's outward address; other
                # loopback addresses are kept, and give each node an address of its own.
                [
                    str(RAY),
                    "start",
                    "--block",
                    f"--node-ip-address={ip}",
                    "--num-cpus=1",
                    "--disable-usage-stats",
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        )
        log.close()

    def alive_nodes(self) -> int:
        code = (
            f"import ray; ray.init(address={self.address!r}, log_to_driver=False);"
            "print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        try:
            out = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                timeout=60,
                env=self.env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return 0
        lines = out.stdout.decode().strip().splitlines()
        return int(lines[-1]) if lines and lines[-1].isdigit() else 0

    def start(self, nodes: int = 2, timeout: float = 240.0) -> LocalRay:
        self._spawn(
            [
                "--head",
                f"--port={self.port}",
                "--include-dashboard=false",
                f"--temp-dir={self.temp}",
            ],
            "head",
            "127.0.0.2",
        )
        deadline = time.monotonic() + timeout
        while self.alive_nodes() < 1:
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"ray head not up after {timeout}s:\n{self.logs()}")
            time.sleep(1)
        for i in range(1, nodes):
            self._spawn([f"--address={self.address}"], f"node{i}", f"127.0.0.{2 + i}")
        while self.alive_nodes() < nodes:
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{nodes} ray nodes not up after {timeout}s:\n{self.logs()}")
            time.sleep(1)
        return self

    def _check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"a ray node exited with {p.returncode}:\n{self.logs()}")

    def logs(self) -> str:
        out = []
        for f in sorted(self.log_dir.glob("ray-*.log")):
            out.append(f"== {f.name} ==\n{f.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    def stop(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
        # whatever is left of the groups we started (raylet workers, GCS) goes now
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.temp)
