"""The gateway: a Starlette app that proxies each connection to the host owning the agent.

`/agents/<class>/<name>[/…]` is routed by rendezvous hashing over the live hosts (no lookup
per request; several gateways agree because they read the same membership). A WebSocket is
relayed frame for frame over one persistent upstream WebSocket — audio never becomes an RPC —
and an HTTP request streams its body up and its response back. Anything else (`/metrics`,
the playground's static files) goes to a host chosen by hashing the path.

Failure handling: if the owner does not accept the connection (crashed, restarting), the
gateway suspects it and tries the next host in the agent's ranking, so a client that
reconnects after a host crash lands on a live host at once. If the upstream connection dies
mid-session, the client is closed with 1012 (service restart) and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import websockets
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from callroom.cluster.membership import HostInfo, Membership
from callroom.errors import BadAgentName
from callroom.protocol.names import validate_agent_name

log = logging.getLogger("callroom.gateway")
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per proxied request

CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013

_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
}
# WebSocket handshake headers that the upstream client library sets itself.
_WS_OWN = _HOP | {
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "content-length",
}
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def _forward_headers(
    headers: list[tuple[bytes, bytes]], skip: set[str], client: Any
) -> list[tuple[str, str]]:
    out = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in headers
        if k.decode("latin-1").lower() not in skip
    ]
    if client is not None:
        prior = [v for k, v in out if k.lower() == "x-forwarded-for"]
        out = [(k, v) for k, v in out if k.lower() != "x-forwarded-for"]
        out.append(("x-forwarded-for", ", ".join([*prior, client[0]])))
    return out


class Gateway:
    def __init__(self, membership: Membership, *, connect_timeout: float = 5.0) -> None:
        self.membership = membership
        self.connect_timeout = connect_timeout
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=connect_timeout, read=None, write=None, pool=None),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
        )
        self.proxied_ws = 0
        self.proxied_http = 0

    # -- choosing a host --------------------------------------------------------------------
    def candidates(self, agent: str, name: str) -> list[HostInfo]:
        """Owner first, then the agent's next-ranked hosts (used only if the owner is down)."""
        return self.membership.ranked(agent, name)[:3]

    # -- WebSocket --------------------------------------------------------------------------
    async def websocket(self, ws: WebSocket) -> None:
        agent, name = ws.path_params["agent"], ws.path_params["name"]
        try:
            validate_agent_name(agent)
            validate_agent_name(name)
        except BadAgentName as exc:
            await ws.accept()
            await ws.close(1008, exc.message)
            return
        path = ws.scope.get("raw_path") or ws.scope["path"].encode()
        query = ws.scope.get("query_string", b"")
        target_path = path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        headers = _forward_headers(ws.scope["headers"], _WS_OWN, ws.scope.get("client"))
        subprotocols = ws.scope.get("subprotocols") or None
        upstream = None
        for host in self.candidates(agent, name):
            try:
                upstream = await websockets.connect(
                    host.ws_url + target_path,
                    additional_headers=headers,
                    subprotocols=subprotocols,
                    open_timeout=self.connect_timeout,
                    max_size=None,
                    compression=None,
                    ping_interval=20,
                    ping_timeout=20,
                    close_timeout=5,
                )
                break
            except websockets.InvalidStatus as exc:  # the host refused the upgrade (401…)
                resp = exc.response
                await self._deny(
                    ws,
                    resp.status_code,
                    bytes(resp.body or b""),
                    resp.headers.get("content-type", "text/plain"),
                )
                return
            except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                log.warning("host %s unreachable (%s); trying the next one", host.id, exc)
                self.membership.suspect(host.id)
        if upstream is None:
            await ws.accept()
            await ws.close(CLOSE_TRY_AGAIN, "no cluster host available; retry shortly")
            return
        self.proxied_ws += 1
        await ws.accept(subprotocol=upstream.subprotocol)
        await _relay(ws, upstream)

    async def _deny(self, ws: WebSocket, status: int, body: bytes, content_type: str) -> None:
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(
                Response(body, status_code=status, media_type=content_type)
            )
            return
        await ws.accept()
        await ws.close(1008, body.decode("utf-8", "replace")[:120] or f"refused ({status})")

    # -- HTTP -------------------------------------------------------------------------------
    async def http(self, request: Request) -> Response:
        agent = request.path_params.get("agent")
        name = request.path_params.get("name")
        if agent is not None and name is not None:
            try:
                validate_agent_name(agent)
                validate_agent_name(name)
            except BadAgentName as exc:
                return JSONResponse({"error": exc.message, "code": exc.code}, 400)
            hosts = self.candidates(agent, name)
        else:
            hosts = self.candidates("_path", request.url.path.replace("/", "_")[:128] or "_")
        if not hosts:
            return JSONResponse(
                {"error": "no cluster host available", "code": "unavailable"},
                503,
                headers={"retry-after": "1"},
            )
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string", b"")
        target = raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        headers = _forward_headers(request.scope["headers"], _HOP, request.client)
        body = await request.body()  # agent HTTP bodies are small; responses stream
        last_error: Exception | None = None
        for host in hosts:
            upstream_request = self.client.build_request(
                request.method, host.url + target, headers=headers, content=body
            )
            try:
                upstream = await self.client.send(upstream_request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last_error = exc
                self.membership.suspect(host.id)
                continue
            self.proxied_http += 1
            out_headers = {k: v for k, v in upstream.headers.multi_items() if k.lower() not in _HOP}
            return StreamingResponse(
                upstream.aiter_raw(),
                status_code=upstream.status_code,
                headers=out_headers,
                background=BackgroundTask(upstream.aclose),
            )
        log.warning("no host reachable for %s: %s", request.url.path, last_error)
        return JSONResponse(
            {"error": "no cluster host reachable", "code": "unavailable"},
            503,
            headers={"retry-after": "1"},
        )

    async def health(self, _: Request) -> Response:
        hosts = self.membership.live()
        return JSONResponse(
            {
                "ok": bool(hosts),
                "gateway": True,
                "hosts": [{"id": h.id, "url": h.url, **h.meta} for h in hosts],
            },
            200 if hosts else 503,
        )

    async def aclose(self) -> None:
        await self.client.aclose()


async def _relay(ws: WebSocket, upstream: Any) -> None:
    """Pump frames both ways until either side closes; carry the close code across."""
    close_client: tuple[int, str] | None = None

    async def client_to_host() -> None:
        while True:
            msg = await ws.receive()
            kind = msg["type"]
            if kind == "websocket.disconnect":
                code = msg.get("code") or 1000
                with contextlib.suppress(Exception):
                    await upstream.close(code if _sendable(code) else 1000, msg.get("reason") or "")
                return
            text = msg.get("text")
            await upstream.send(text if text is not None else (msg.get("bytes") or b""))

    async def host_to_client() -> None:
        nonlocal close_client
        try:
            async for frame in upstream:
                if isinstance(frame, str):
                    await ws.send_text(frame)
                else:
                    await ws.send_bytes(frame)
        except websockets.ConnectionClosed:
            pass
        rcvd = upstream.close_code
        reason = upstream.close_reason or ""
        if rcvd is None or not _sendable(rcvd):
            close_client = (CLOSE_SERVICE_RESTART, "agent host went away; reconnect")
        else:
            close_client = (rcvd, reason)

    up = asyncio.create_task(client_to_host())
    down = asyncio.create_task(host_to_client())
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (up, down):
            t.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
    if down in done and close_client is not None:
        with contextlib.suppress(Exception, WebSocketDisconnect):
            await ws.close(*close_client)
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            await upstream.close()


def _sendable(code: int) -> bool:
    """Close codes that may appear in a close frame (1005/1006/1015 may not)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999
    )


def create_gateway_app(
    storage_url: str, *, membership: Membership | None = None, min_hosts: int = 0
) -> Starlette:
    """The gateway app for a cluster whose hosts register in `storage_url` (Postgres)."""
    members = membership or Membership(storage_url)
    gateway = Gateway(members)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from callroom.storage.postgres import PostgresBackend

        # make sure the shared tables exist (hosts create them too; whoever comes first)
        await asyncio.to_thread(lambda: PostgresBackend(storage_url, max_size=1).close())
        if min_hosts:
            await members.wait_for(min_hosts, limit=120.0)
        task = asyncio.create_task(members.run(), name="callroom-gateway-membership")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await members.close()
            await gateway.aclose()

    app = Starlette(
        routes=[
            Route("/healthz", gateway.health),
            WebSocketRoute("/agents/{agent}/{name}", gateway.websocket),
            Route("/agents/{agent}/{name}", gateway.http, methods=_METHODS),
            Route("/agents/{agent}/{name}/{rest:path}", gateway.http, methods=_METHODS),
            Route("/{path:path}", gateway.http, methods=_METHODS),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.state.started = time.time()
    return app
