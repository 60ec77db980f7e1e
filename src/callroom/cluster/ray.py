"""Agents on a Ray cluster: Ray actors are HOSTS, not agents.

Measured before this design (Ray 2.60, 2 cores): one actor per agent costs ~80 MB and a
process each, and per-frame actor calls reach only ~810 frames/s (p99 131 ms) at 50 callers.
So each actor here is a whole host process — an `AgentHost` with many agents, serving the
normal callroom app on its own port — and audio goes client → gateway → host over one
WebSocket, never over Ray RPC. Ray's part is placement and supervision:

* N actors named `callroom-host-<i>` (namespace `callroom`), `lifetime="detached"` (they
  outlive the gateway that created them), `max_restarts=-1` (Ray restarts a crashed host; it
  comes back under the same host id and re-registers its new address), spread over nodes.
* Each registers in the shared Postgres store (`callroom.hosts`); gateways hash
  (class, name) over the live hosts (`callroom.cluster.hashing`), so any gateway finds the
  owner without asking Ray or anyone else.
* Embedded models load once per host process (`Agent.on_host_start`, module-level caches).

The app file must exist at the same path on every node (or ship it with a Ray runtime_env).
`callroom serve app.py --cluster auto|ray://head:10001|HOST:PORT [--hosts N]` starts or finds
the hosts and runs a gateway on --host/--port; run it again (another port or machine) for
more gateways.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import urllib.request
from typing import Any

from callroom.config import Settings
from callroom.errors import MissingExtra

log = logging.getLogger("callroom.cluster.ray")

NAMESPACE = "callroom"
ACTOR_PREFIX = "callroom-host-"


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingExtra("ray", "ray") from exc
    return ray


def _free_port(bind: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((bind if bind != "0.0.0.0" else "", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
            return bool(json.loads(r.read()).get("ok"))
    except (OSError, ValueError):
        return False


class HostProcess:
    """What runs inside one host actor: the callroom app on uvicorn, in a thread.

    If that server stops for any reason other than `stop()`, the process exits, so that Ray
    restarts the actor (a host that does not serve must not look alive)."""

    def __init__(
        self,
        app_path: str,
        host_id: str,
        env: dict[str, str],
        bind: str | None = None,
        port: int = 0,
        advertise: str | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        os.environ.update(env)
        from callroom.cluster.run import build_host_app, host_server

        if bind is None:  # the node's own address: reachable from gateways on other nodes
            bind = _ray().util.get_node_ip_address()
        settings = Settings()
        logging.basicConfig(
            level=settings.log_level.upper(), format="%(asctime)s %(name)s %(message)s"
        )
        self.host_id = host_id
        self.port = port or _free_port(bind)
        if advertise is None:
            advertise = bind
            if bind in ("0.0.0.0", ""):
                advertise = _ray().util.get_node_ip_address()
        self.url = f"http://{advertise}:{self.port}"
        self.node_id = ""
        with contextlib.suppress(Exception):
            self.node_id = _ray().get_runtime_context().get_node_id()
        meta = {"pid": os.getpid(), "node": self.node_id}
        app = build_host_app(app_path, host_id, self.url, settings, meta=meta)
        self._stopping = False

        self._server = host_server(app, bind, self.port, log_level=settings.log_level.lower())

        def run() -> None:
            try:
                self._server.run()
            finally:
                if not self._stopping:
                    log.error(
                        "host %s: server stopped unexpectedly; exiting for a restart", host_id
                    )
                    os._exit(1)

        self._thread = threading.Thread(target=run, name="callroom-host", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + start_timeout
        while not _healthy(
            f"http://127.0.0.1:{self.port}" if bind in ("0.0.0.0", "") else self.url
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"host {host_id} not serving after {start_timeout}s")
            time.sleep(0.1)

    def info(self) -> dict[str, Any]:
        return {"id": self.host_id, "url": self.url, "pid": os.getpid(), "node": self.node_id}

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: drain, deregister, stop serving (the actor is then killed by the caller)."""
        self._stopping = True
        self._server.should_exit = True  # uvicorn in a thread: no signal handlers of its own
        self._thread.join(timeout)


_actor_cls: Any = None


def host_actor_class() -> Any:
    """`HostProcess` as a Ray actor class (created lazily: importing this module needs no Ray)."""
    global _actor_cls
    if _actor_cls is None:
        _actor_cls = _ray().remote(HostProcess)
    return _actor_cls


def callroom_env(settings: Settings) -> dict[str, str]:
    """The CALLROOM_* settings the hosts must share with this process."""
    env = {k: v for k, v in os.environ.items() if k.startswith("CALLROOM_")}
    env["CALLROOM_STORAGE"] = settings.storage
    return env


def connect(address: str) -> Any:
    """`ray.init` against an existing cluster: `auto`, `ray://head:10001` or `HOST:PORT`."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(
            address=address,
            namespace=NAMESPACE,
            log_to_driver=False,
            configure_logging=False,
        )
    return ray


def ensure_hosts(
    app_path: str,
    count: int,
    settings: Settings,
    *,
    bind: str | None = None,
    num_cpus: float = 1,
    timeout: float = 180.0,
) -> list[dict[str, Any]]:
    """Create the host actors that do not exist yet (by name), wait until all serve."""
    ray = _ray()
    cls = host_actor_class()
    env = callroom_env(settings)
    app_path = os.path.abspath(app_path)
    handles = [
        cls.options(
            name=f"{ACTOR_PREFIX}{i}",
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=-1,
            num_cpus=num_cpus,
            scheduling_strategy="SPREAD",
        ).remote(app_path, f"h{i}", env, bind)
        for i in range(count)
    ]
    infos: list[dict[str, Any]] = ray.get([h.info.remote() for h in handles], timeout=timeout)
    return infos


def host_handles() -> list[Any]:
    ray = _ray()
    names = sorted(
        a["name"] if isinstance(a, dict) else a
        for a in ray.util.list_named_actors(all_namespaces=False)
        if (a["name"] if isinstance(a, dict) else a).startswith(ACTOR_PREFIX)
    )
    return [ray.get_actor(n, namespace=NAMESPACE) for n in names]


def stop_hosts(timeout: float = 60.0) -> int:
    """Stop every host actor for good (drain first)."""
    ray = _ray()
    handles = host_handles()
    with contextlib.suppress(Exception):
        ray.get([h.stop.remote() for h in handles], timeout=timeout)
    for h in handles:
        ray.kill(h, no_restart=True)
    return len(handles)


def serve_cluster(
    app_path: str,
    address: str,
    *,
    hosts: int,
    bind: str,
    port: int,
    settings: Settings,
    host_bind: str | None = None,
) -> int:
    """`callroom serve app.py --cluster …`: hosts on Ray, a gateway here."""
    from callroom.cluster.run import serve_gateway_app

    if not settings.storage.startswith(("postgresql", "postgres")):
        raise SystemExit(
            "callroom: --cluster needs a shared store: set CALLROOM_STORAGE=postgresql://…"
        )
    connect(address)
    infos = ensure_hosts(app_path, hosts, settings, bind=host_bind)
    for info in infos:
        log.info(
            "host %s at %s (pid %s, node %s)",
            info["id"],
            info["url"],
            info["pid"],
            info["node"][:12],
        )
    try:
        serve_gateway_app(settings.storage, bind, port, min_hosts=hosts)
    finally:
        with contextlib.suppress(Exception):
            _ray().shutdown()
    return 0
