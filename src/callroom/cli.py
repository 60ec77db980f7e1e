"""`callroom serve|dev|call`: run a module's agents on uvicorn, or call a voice agent."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from starlette.applications import Starlette

from callroom.config import Settings


def load_module(path: str) -> ModuleType:
    """Import a user's app file by path (its directory goes on sys.path for local imports)."""
    file = Path(path).resolve()
    if not file.is_file():
        raise SystemExit(f"callroom: no such file: {path}")
    sys.path.insert(0, str(file.parent))
    spec = importlib.util.spec_from_file_location(file.stem, file)
    if spec is None or spec.loader is None:
        raise SystemExit(f"callroom: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[file.stem] = module
    spec.loader.exec_module(module)
    return module


def build_app(path: str, settings: Settings) -> Starlette:
    """The module's `app` if it defines one, otherwise an app serving its Agent classes."""
    from callroom.server.app import agent_classes_in, create_app

    module = load_module(path)
    factory = getattr(module, "create_app", None)
    if callable(factory):
        return factory(settings)  # type: ignore[no-any-return]
    agents = getattr(module, "agents", None) or agent_classes_in(vars(module))
    if not agents:
        raise SystemExit(f"callroom: {path} defines no Agent subclass")
    return create_app(agents, settings)


def serve(app: Starlette, host: str, port: int, *, log_level: str = "info") -> None:
    import uvicorn

    class Server(uvicorn.Server):
        """Drains agents (in-flight turns, then close 1001) before uvicorn's own shutdown."""

        async def shutdown(self, sockets: Any = None) -> None:
            agent_host = app.state.host
            await agent_host.drain()
            await super().shutdown(sockets)

    settings: Settings = app.state.host.settings
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        ws_max_size=settings.max_message_bytes + 1024,
        ws_ping_interval=20,
        ws_per_message_deflate=settings.ws_compression,
        ws_ping_timeout=20,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 1,
    )
    Server(config).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="callroom", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("serve", "run agents"), ("dev", "run agents with debug logging")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("app", help="Python file defining Agent subclasses")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8787)
        p.add_argument("--data-dir", type=Path, default=None)
        p.add_argument(
            "--cluster",
            default=None,
            metavar="ADDRESS",
            help="run the agents on Ray host actors (auto, ray://HEAD:10001 or HOST:PORT) and "
            "serve a gateway here; needs CALLROOM_STORAGE=postgresql://… and callroom[ray]",
        )
        p.add_argument("--hosts", type=int, default=2, help="host actors with --cluster")
    call = sub.add_parser("call", help="call a voice agent with a WAV file")
    call.add_argument("url", help="ws://HOST:PORT/agents/<class>/<name>")
    call.add_argument("--wav", type=Path, default=None)
    call.add_argument("--out", type=Path, default=None)
    call.add_argument("--text", action="append", default=[], help="send a text turn instead")
    call.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    if args.command in ("serve", "dev"):
        overrides: dict[str, Any] = {}
        if args.data_dir is not None:
            overrides["data_dir"] = args.data_dir
        settings = Settings(**overrides)
        level = "debug" if args.command == "dev" else settings.log_level.lower()
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s %(message)s")
        if args.cluster:
            from callroom.cluster.ray import serve_cluster

            return serve_cluster(
                args.app, args.cluster, hosts=args.hosts, bind=args.host, port=args.port,
                settings=settings,
            )
        serve(build_app(args.app, settings), args.host, args.port, log_level=level)
        return 0
    if args.command == "call":
        from callroom.voice.caller import run_call

        if args.wav is None and not args.text:
            parser.error("call needs --wav FILE or --text TEXT")
        return asyncio.run(run_call(args.url, args.wav, args.out, args.text, args.timeout))
    return 2


if __name__ == "__main__":
    sys.exit(main())
