"""Run cluster processes without Ray (Ray's host actors call the same functions):

python -m callroom.cluster.run host app.py --id h0 --port 9001 --storage postgresql://…
python -m callroom.cluster.run gateway --port 8787 --storage postgresql://…
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from starlette.applications import Starlette

from callroom.config import Settings


def build_host_app(
    app_path: str,
    host_id: str,
    advertise_url: str,
    settings: Settings,
    *,
    meta: dict[str, Any] | None = None,
) -> Starlette:
    """The module's callroom app, plus registration, heartbeat and rebalancing."""
    from callroom.cli import build_app
    from callroom.cluster.node import ClusterNode, attach

    if not settings.storage.startswith(("postgresql", "postgres")):
        raise SystemExit("callroom: a cluster host needs CALLROOM_STORAGE=postgresql://…")
    app = build_app(app_path, settings)
    attach(
        app,
        lambda host: ClusterNode(host, settings.storage, host_id, advertise_url, meta=meta),
    )
    return app


def host_server(app: Starlette, bind: str, port: int, *, log_level: str = "info") -> Any:
    """A uvicorn server for a host app, configured as `callroom serve` does (drain agents
    before uvicorn's own shutdown); `.run()` it in a thread, set `.should_exit` to stop."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            await app.state.host.drain()
            await super().shutdown(sockets)

    settings: Settings = app.state.host.settings
    return Server(
        uvicorn.Config(
            app,
            host=bind,
            port=port,
            log_level=log_level,
            ws_max_size=settings.max_message_bytes + 1024,
            ws_ping_interval=20,
            ws_ping_timeout=20,
            ws_per_message_deflate=settings.ws_compression,
            lifespan="on",
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 1,
        )
    )


def serve_gateway_app(storage_url: str, bind: str, port: int, *, min_hosts: int = 0) -> None:
    import uvicorn

    from callroom.cluster.gateway import create_gateway_app

    app = create_gateway_app(storage_url, min_hosts=min_hosts)
    uvicorn.run(
        app,
        host=bind,
        port=port,
        log_level=os.environ.get("CALLROOM_LOG_LEVEL", "info").lower(),
        ws_max_size=64 * 1024 * 1024,
        ws_per_message_deflate=False,
        ws_ping_interval=20,
        ws_ping_timeout=20,
        lifespan="on",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m callroom.cluster.run")
    sub = parser.add_subparsers(dest="role", required=True)
    h = sub.add_parser("host", help="one cluster host: an AgentHost on its own port")
    h.add_argument("app")
    h.add_argument("--id", required=True)
    h.add_argument("--bind", default="127.0.0.1")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--advertise", default=None, help="address gateways use (default: --bind)")
    h.add_argument("--storage", default=None, help="postgresql://… (or CALLROOM_STORAGE)")
    g = sub.add_parser("gateway", help="proxy /agents/<class>/<name> to the owning host")
    g.add_argument("--bind", default="127.0.0.1")
    g.add_argument("--port", type=int, default=8787)
    g.add_argument("--storage", default=None)
    g.add_argument("--min-hosts", type=int, default=0)
    args = parser.parse_args(argv)

    overrides: dict[str, Any] = {}
    if args.storage:
        overrides["storage"] = args.storage
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    if args.role == "host":
        from callroom.cli import serve

        advertise = args.advertise or args.bind
        url = f"http://{advertise}:{args.port}"
        app = build_host_app(args.app, args.id, url, settings, meta={"pid": os.getpid()})
        serve(app, args.bind, args.port, log_level=settings.log_level.lower())
        return 0
    if not settings.storage:
        parser.error("the gateway needs --storage postgresql://… or CALLROOM_STORAGE")
    serve_gateway_app(settings.storage, args.bind, args.port, min_hosts=args.min_hosts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
