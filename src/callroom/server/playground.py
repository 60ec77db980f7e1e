"""The browser playground: a static page that calls any voice agent of the server.

`GET /` serves the page, `GET /api/agents` lists the voice-capable agent classes it offers,
`/static/…` serves its files (plain HTML/JS/CSS, no build step). A browser opening an
agent's own URL (`/agents/<class>/<name>`) gets the same page with that agent picked, unless
the agent answers HTTP itself (`on_request`). The page speaks the voice protocol of the npm
`agents` package directly over a WebSocket to `/agents/<class>/<name>`.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from callroom.agent import Agent
from callroom.host import AgentHost

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX = STATIC_DIR / "index.html"


def is_voice_agent(cls: type[Agent]) -> bool:
    from callroom.voice.agent import VoiceAgent  # lazy: keeps the core import light

    return issubclass(cls, VoiceAgent)


def _summary(cls: type[Agent]) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _page() -> Response:
    # The page is tiny and changes with the server version: never let a browser cache it.
    return FileResponse(INDEX, media_type="text/html", headers={"Cache-Control": "no-store"})


def playground_routes(host: AgentHost) -> list[BaseRoute]:
    """`/`, `/api/agents` and `/static` (mounted by `create_app`)."""

    async def index(_: Request) -> Response:
        return _page()

    async def agents(_: Request) -> Response:
        listed = [
            {"segment": segment, "class": cls.__name__, "description": _summary(cls)}
            for segment, cls in sorted(host.classes.items())
            if is_voice_agent(cls)
        ]
        return JSONResponse({"agents": listed})

    return [
        Route("/", index),
        Route("/api/agents", agents),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]


def agent_page(request: Request, cls: type[Agent]) -> Response | None:
    """The playground for a browser's plain GET of a voice agent's URL, or None.

    Only when the agent keeps the default `on_request` (an agent that serves HTTP itself is
    left alone) and the request looks like page navigation (GET accepting text/html, so API
    clients and `agentFetch` still get the agent's JSON answer)."""
    if request.method != "GET" or "rest" in request.path_params:
        return None
    if "text/html" not in request.headers.get("accept", ""):
        return None
    if cls.on_request is not Agent.on_request or not is_voice_agent(cls):
        return None
    return _page()
