"""The Starlette application: `/agents/<kebab-class>/<name>` over HTTP and WebSocket."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from callroom.agent import Agent
from callroom.config import Settings
from callroom.connection import CLOSE_POLICY
from callroom.errors import BadAgentName, CallroomError, UnknownAgentClass
from callroom.host import AgentHost
from callroom.server.limits import install_log_redaction, process_figures
from callroom.server.playground import agent_page, is_voice_agent, playground_routes
from callroom.server.session import run_session

log = logging.getLogger("callroom.server")

BeforeConnect = Callable[[HTTPConnection, type[Agent], str], Awaitable[Response | None]]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def create_app(
    agents: Sequence[type[Agent]],
    settings: Settings | None = None,
    *,
    on_before_connect: BeforeConnect | None = None,
    routes: Sequence[BaseRoute] = (),
    telephony: bool = True,
) -> Starlette:
    """Build the ASGI app serving `agents`.

    `on_before_connect(request, agent_class, name)` runs before any agent is created or
    woken; returning a Response (401, 403, …) refuses the request or WebSocket upgrade.
    With voice agents, the Twilio Media Streams routes (`/twilio/voice/<class>`,
    `/twilio/stream/<class>`) are mounted unless `telephony=False`.
    """
    host = AgentHost(agents, settings)

    async def admit(conn: HTTPConnection) -> tuple[type[Agent], str, str] | Response:
        segment = conn.path_params["agent"]
        name = conn.path_params["name"]
        try:
            cls = host.resolve(segment, name)
        except BadAgentName as exc:
            return _error(400, exc.code, exc.message)
        except UnknownAgentClass as exc:
            return _error(404, exc.code, exc.message)
        if not host.accepting:
            return _error(503, "shutting_down", "server is shutting down")
        refusal = None
        if on_before_connect is not None:
            refusal = await on_before_connect(conn, cls, name)
        if refusal is None:
            refusal = await cls.on_before_connect(conn, name)
        if refusal is not None:
            return refusal
        return cls, segment, name

    async def ws_endpoint(ws: WebSocket) -> None:
        admitted = await admit(ws)
        if isinstance(admitted, Response):
            # A bad address is final: close with a policy code so clients stop retrying.
            # An auth refusal keeps its HTTP status, like Cloudflare's onBeforeConnect.
            await _refuse_ws(ws, admitted, policy_close=admitted.status_code in (400, 404))
            return
        _, segment, name = admitted
        await run_session(ws, host, segment, name)

    async def http_endpoint(request: Request) -> Response:
        admitted = await admit(request)
        if isinstance(admitted, Response):
            return admitted
        cls, segment, name = admitted
        if (page := agent_page(request, cls)) is not None:
            return page  # a browser opening a voice agent's URL gets the playground
        try:
            agent = await host.get(segment, name)
        except CallroomError as exc:
            return _error(getattr(exc, "http_status", 400), exc.code, exc.message)
        with host.activity(agent):
            try:
                return await agent.on_request(request)
            except Exception as exc:
                await agent.on_error(exc)
                return _error(500, "agent_error", "the agent failed to handle the request")

    async def bad_ws_path(ws: WebSocket) -> None:
        await ws.accept()
        await ws.close(CLOSE_POLICY, "bad agent address: use /agents/<class>/<name>")

    async def metrics(request: Request) -> Response:
        from callroom.voice.metrics import render_metrics

        body, content_type = render_metrics(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    async def health(request: Request) -> Response:
        body: dict[str, Any] = {"ok": True, "live_agents": host.live_count}
        if request.query_params.get("verbose") in ("1", "true"):
            # Debug figures for leak checks and soak runs (no names, ids or payloads).
            body.update(
                process_figures(),
                active_calls=host.active_calls,
                connections=host.connection_count,
                accepting=host.accepting,
            )
        return JSONResponse(body)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        install_log_redaction()  # after the server configured logging: tokens in query strings
        await host.start()
        try:
            yield
        finally:
            await host.stop()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    all_routes: list[BaseRoute] = [
        *routes,
        *playground_routes(host),
        Route("/healthz", health),
        Route("/metrics", metrics),
        WebSocketRoute("/agents/{agent}/{name}", ws_endpoint),
        Route("/agents/{agent}/{name}", http_endpoint, methods=methods),
        Route("/agents/{agent}/{name}/{rest:path}", http_endpoint, methods=methods),
        WebSocketRoute("/agents/{rest:path}", bad_ws_path),
    ]
    if telephony and any(is_voice_agent(cls) for cls in agents):
        from callroom.telephony.twilio import twilio_routes

        all_routes[len(routes):len(routes)] = twilio_routes()
    app = Starlette(routes=all_routes, lifespan=lifespan)
    app.state.host = host
    return app


async def _refuse_ws(ws: WebSocket, response: Response, *, policy_close: bool) -> None:
    """Refuse an upgrade: with the HTTP status when asked and the server supports denial
    responses, otherwise accept-and-close with the terminal policy code 1008."""
    if not policy_close and "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(response)
        return
    await ws.accept()
    reason = response.body.decode("utf-8", "replace")[:120] if response.body else "refused"
    await ws.close(CLOSE_POLICY, reason)


def agent_classes_in(namespace: dict[str, Any]) -> list[type[Agent]]:
    """Agent subclasses defined in a module namespace (used by `callroom serve app.py`)."""
    module = namespace.get("__name__")
    return [
        v
        for v in namespace.values()
        if isinstance(v, type) and issubclass(v, Agent) and v.__module__ == module
        and not vars(v).get("__abstract__", False)
    ]
