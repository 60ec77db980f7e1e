"""One WebSocket session of the core protocol: handshake, then one frame at a time.

Frames of one connection are handled strictly in order (the reader awaits each handler), which
is the single-threaded promise per message stream. The agent is looked up again for every
frame, so it may hibernate between frames and be woken by the next one.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from callroom import rpc
from callroom.agent import Agent, current_connection
from callroom.connection import CLOSE_POLICY, Connection
from callroom.errors import CallroomError, RpcError, StateRejected
from callroom.host import AgentHost
from callroom.protocol import core
from callroom.server.limits import RATE_LIMIT_REASON, limiter_for

log = logging.getLogger("callroom.session")

_CONN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


async def run_session(ws: WebSocket, host: AgentHost, segment: str, name: str) -> None:
    await ws.accept()
    pk = ws.query_params.get("_pk", "")
    conn_id = pk if _CONN_ID.fullmatch(pk) else uuid.uuid4().hex
    if conn_id in {c.id for c in _existing(host, segment, name)}:
        conn_id = uuid.uuid4().hex
    conn = Connection(
        ws, conn_id, max_queue=host.settings.max_send_queue,
        max_bytes=host.settings.max_send_queue_bytes,
    )
    conn.start()
    host.add_connection(segment, name, conn)
    code, reason = 1005, ""
    try:
        agent = await host.get(segment, name)
        with host.activity(agent):
            conn.readonly = bool(await _maybe(agent.should_connection_be_readonly(conn, ws)))
            _handshake(agent, conn)
            await agent._on_connect_internal(conn)
            await _guard(agent, conn, agent.on_connect(conn, ws))
        limit = host.settings.max_message_bytes
        limiter = limiter_for(host.settings)
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                code = msg.get("code", 1005)
                reason = msg.get("reason") or ""
                break
            if not limiter.allow():
                log.warning("connection %s to %s/%s: rate limit exceeded, closing",
                            conn.id, segment, name)
                conn.send_json(core.protocol_error(
                    "rate_limited",
                    f"more than {limiter.rate:g} messages per second; closing the connection",
                ))
                code, reason = CLOSE_POLICY, RATE_LIMIT_REASON
                await conn.close(CLOSE_POLICY, RATE_LIMIT_REASON)
                break
            data: str | bytes | None = msg.get("text")
            if data is None:
                data = msg.get("bytes") or b""
            agent = await host.get(segment, name)
            # The limit is in bytes: a text frame's length in characters can be far less.
            size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8"))
            if size > limit:
                conn.send_json(
                    core.protocol_error(
                        "message_too_large", f"message of {size} bytes exceeds {limit}"
                    )
                )
                continue
            with host.activity(agent):
                await handle_frame(agent, conn, data)
    except WebSocketDisconnect as exc:
        code, reason = exc.code, exc.reason or ""
    except CallroomError as exc:
        # `close_code`: e.g. 1013 (try again) when the agent is live on another cluster host
        await conn.close(getattr(exc, "close_code", CLOSE_POLICY), exc.message)
    finally:
        conn.closed = True
        try:
            agent = None
            # While draining, a live agent still runs its close hooks (a voice call records
            # what was said); a hibernated one is not woken just for them.
            if host.is_live(segment, name) or (
                host.accepting and _handles_close(host.classes[segment])
            ):
                agent = await host.get(segment, name)
            if agent is not None:
                with host.activity(agent):
                    await agent._on_close_internal(conn)
                    await _guard(agent, conn, agent.on_close(conn, code, reason))
                    if not conn.keep_attachment:
                        agent._storage.drop_attachment(conn.id)
        except Exception:
            log.exception("on_close failed")
        host.remove_connection(segment, name, conn)
        await conn.aclose_writer()


def _handles_close(cls: type[Agent]) -> bool:
    """Waking a hibernated agent only to run the default no-op close hooks is waste; its
    stale attachment rows are dropped at its next wake instead."""
    return cls.on_close is not Agent.on_close or (
        cls._on_close_internal is not Agent._on_close_internal
    )


def _existing(host: AgentHost, segment: str, name: str) -> list[Connection]:
    slot = host._slots.get((segment, name))
    return list(slot.connections.values()) if slot else []


def _handshake(agent: Agent, conn: Connection) -> None:
    has_state = agent.state is not None
    conn.send_json(core.identity(agent.name, agent.url_segment(), state_follows=has_state))
    if has_state:
        conn.send_json(core.state(agent.state))
    conn.send_json(core.mcp_servers())


async def _maybe(value: Any) -> Any:
    if asyncio.iscoroutine(value):
        return await value
    return value


async def _guard(agent: Agent, conn: Connection | None, coro: Any) -> None:
    """Run a user hook; an exception goes to `on_error`, never kills the session."""
    try:
        await _maybe(coro)
    except Exception as exc:
        await agent.on_error(exc, conn)


async def handle_frame(agent: Agent, conn: Connection, data: str | bytes) -> None:
    token = current_connection.set(conn)
    try:
        await _handle_frame(agent, conn, data)
    finally:
        current_connection.reset(token)


async def _handle_frame(agent: Agent, conn: Connection, data: str | bytes) -> None:
    msg = core.parse(data)
    if isinstance(msg, core.StateUpdate):
        if conn.readonly:
            conn.send_json(core.state_error("Connection is readonly"))
            return
        try:
            agent._apply_state(msg.state, source=conn)
        except StateRejected:
            conn.send_json(core.state_error("State update rejected"))
        return
    if isinstance(msg, core.RpcRequest):
        await _handle_rpc(agent, conn, msg)
        return
    await agent._handle_plain(conn, msg)


async def _handle_rpc(agent: Agent, conn: Connection, req: core.RpcRequest) -> None:
    timeout = agent.env.rpc_timeout_seconds
    try:
        info = rpc.registry_for(type(agent)).lookup(req.method)
        if info.streaming:
            gen = rpc.stream(info, agent, req.args)
            try:
                async with asyncio.timeout(timeout):
                    async for chunk in gen:
                        conn.send_json(core.rpc_result(req.id, chunk, done=False))
            finally:
                await gen.aclose()  # type: ignore[attr-defined]
            conn.send_json(core.rpc_result(req.id, None, done=True))
        else:
            async with asyncio.timeout(timeout):
                result = await rpc.invoke(info, agent, req.args)
            conn.send_json(core.rpc_result(req.id, result))
    except RpcError as exc:
        conn.send_json(core.rpc_error(req.id, exc.message))
    except TimeoutError:
        conn.send_json(core.rpc_error(req.id, f"Method {req.method} timed out after {timeout}s"))
    except Exception as exc:
        conn.send_json(core.rpc_error(req.id, str(exc) or type(exc).__name__))
        await agent.on_error(exc, conn)
