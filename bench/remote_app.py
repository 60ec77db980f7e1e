"""A callroom voice app on remote providers, for the density and sequential-call benchmarks.

    .venv/bin/python bench/remote_app.py --port 8787 --llm-url http://127.0.0.1:8099/v1 \\
        --remote-url ws://127.0.0.1:8098/speech --data-dir /tmp/data

`RemoteVoice` is a `VoiceAgent` whose speech providers are `bench/remote_providers.py`
(Silero VAD in process, STT and TTS over multiplexed WebSockets, one set shared by every
call of the process)
and whose `on_turn` streams from an OpenAI-compatible server (`OpenAICompatLLM`), i.e. the
shape of a deployment on cloud speech and LLM APIs. Served by `callroom.cli.serve`.

Bench-only routes (no project code changed):

- `GET /_bench/stats`: active calls, asyncio tasks, RSS (KiB) and `callroom_*` numbers;
- `POST /_bench/trim`: `gc.collect()` + `malloc_trim(0)`, then the same stats;
- `GET /_bench/lag`: event-loop lag (a 10 ms ticker started by the first stats/trim call)
  since the last read: how late the server's loop runs ready callbacks;
- `POST /_bench/hibernate`: hibernate every idle agent now (what the idle sweep does after
  `idle_seconds`), then trim.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
import compare  # noqa: E402
import remote_providers as rp  # noqa: E402

_providers: Any = None
_lock = threading.Lock()


def serve(
    port: int,
    data_dir: Path,
    llm_url: str,
    remote_url: str,
    *,
    lifetime_s: float,
    idle_seconds: float = 3600.0,
    vad: str = "silero",
) -> None:
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from callroom.cli import serve as callroom_serve
    from callroom.config import Settings
    from callroom.providers.base import VoiceProviders
    from callroom.providers.llm.openai_compat import OpenAICompatLLM
    from callroom.providers.local import models
    from callroom.server.app import create_app
    from callroom.voice.agent import VoiceAgent
    from callroom.voice.pipeline import TurnContext

    compare.watch_parent(lifetime_s)
    models.silero_session()  # load the VAD before the server says it is ready
    llm = OpenAICompatLLM(base_url=llm_url, model="fake-llm")

    class RemoteVoice(VoiceAgent):
        instructions = "You are the front desk of a dental clinic. Be brief."

        def create_providers(self) -> VoiceProviders:
            global _providers
            with _lock:
                if _providers is None:
                    _providers = rp.remote_providers(remote_url, vad=vad)
                return _providers

        async def on_turn(self, transcript: str, ctx: TurnContext) -> Any:
            messages = [
                {"role": "system", "content": self.instructions},
                *ctx.messages,
                {"role": "user", "content": transcript},
            ]
            return compare._texts(llm.stream(messages))

    holder: dict[str, Any] = {"lags": []}

    async def ticker() -> None:
        """Event-loop lag: how late a 10 ms sleep wakes up (ms), collected until read."""
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.01)
            holder["lags"].append((loop.time() - t - 0.01) * 1000)

    def stats() -> dict[str, Any]:
        host = holder["app"].state.host
        if "ticker" not in holder:
            holder["ticker"] = asyncio.ensure_future(ticker())
        return {
            "active_calls": host.active_calls,
            "tasks": len(asyncio.all_tasks()),
            "live_agents": getattr(host, "live_count", None),
            **common.proc_status(),
        }

    async def stats_route(request: Request) -> JSONResponse:
        return JSONResponse(stats())

    async def lag_route(request: Request) -> JSONResponse:
        lags, holder["lags"] = holder["lags"], []
        return JSONResponse(common.percentiles(lags, (50, 90, 99)) if lags else {})

    async def trim_route(request: Request) -> JSONResponse:
        return JSONResponse({"trim": common.trim_memory(), **stats()})

    async def hibernate_route(request: Request) -> JSONResponse:
        host = holder["app"].state.host
        if hasattr(host, "hibernate_idle_async"):
            await host.hibernate_idle_async(now=math.inf)
        else:
            host.hibernate_idle(now=math.inf)
        gc.collect()
        return JSONResponse({"trim": common.trim_memory(), **stats()})

    settings = Settings(
        data_dir=data_dir, idle_seconds=idle_seconds, log_level="WARNING", max_calls=100_000
    )
    app = create_app(
        [RemoteVoice],
        settings,
        routes=[
            Route("/_bench/stats", stats_route),
            Route("/_bench/lag", lag_route),
            Route("/_bench/trim", trim_route, methods=["POST"]),
            Route("/_bench/hibernate", hibernate_route, methods=["POST"]),
        ],
    )
    holder["app"] = app
    callroom_serve(app, "127.0.0.1", port, log_level="warning")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--llm-url", required=True)
    p.add_argument("--remote-url", required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--idle-seconds", type=float, default=3600.0)
    p.add_argument("--lifetime", type=float, default=7200.0)
    p.add_argument(
        "--vad",
        choices=("silero", "gated"),
        default="silero",
        help="gated: Silero behind an energy gate (an experiment)",
    )
    args = p.parse_args(argv)
    serve(
        args.port,
        args.data_dir,
        args.llm_url,
        args.remote_url,
        lifetime_s=args.lifetime,
        idle_seconds=args.idle_seconds,
        vad=args.vad,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
