"""The `Agent` base class: one addressable, durable, single-threaded object per (class, name).

Concurrency model (documented promise): the messages of one connection are handled strictly
one after another; handlers of different connections, alarms and HTTP requests run on the same
event loop and may interleave only at `await` points, like a Durable Object. Storage calls are
synchronous, so a read-modify-write without an `await` in between is atomic.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import inspect
import logging
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

from croniter import croniter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from callroom.config import Settings
from callroom.errors import ScheduleError, StateRejected
from callroom.protocol import core
from callroom.protocol.names import camel_to_kebab

if TYPE_CHECKING:
    from callroom.connection import Connection
    from callroom.host import AgentHost
    from callroom.storage import AgentStorage

log = logging.getLogger("callroom.agent")

_STATE_KEY = "state"

current_connection: contextvars.ContextVar[Connection | None] = contextvars.ContextVar(
    "callroom_current_connection", default=None
)
"""The connection whose frame is being handled (set by the server around each frame)."""


class Schedule(TypedDict):
    id: str
    callback: str
    payload: Any
    type: str
    time: float
    delay: float | None
    cron: str | None


class Agent:
    """Subclass this. Override the hooks you need; mark RPC methods with `@callable`."""

    initial_state: ClassVar[Any] = None
    """State of a brand-new agent (`None` = the agent has no state and sends none)."""

    agent_name: ClassVar[str | None] = None
    """URL segment; defaults to the kebab-cased class name, as the npm client computes it."""

    def __init__(
        self, name: str, *, host: AgentHost, storage: AgentStorage, env: Settings
    ) -> None:
        self.name = name
        self.env = env
        self._host = host
        self._storage = storage
        self._state: Any = storage.get_json(_STATE_KEY, _MISSING)
        if self._state is _MISSING:
            self._state = self.initial_state

    @classmethod
    def url_segment(cls) -> str:
        return cls.agent_name or camel_to_kebab(cls.__name__)

    # -- state --------------------------------------------------------------------------------
    @property
    def state(self) -> Any:
        return self._state

    def set_state(self, state: Any) -> None:
        """Persist and broadcast a new state to every connection.

        Refused while handling a frame of a readonly connection (as the npm server does), so
        a readonly client cannot change state through a callable or `on_message`."""
        conn = current_connection.get()
        if conn is not None and conn.readonly:
            raise StateRejected("Connection is readonly")
        self._apply_state(state, source=None)

    def _apply_state(self, state: Any, source: Connection | None) -> None:
        try:
            self.validate_state_change(state, source)
        except Exception as exc:
            raise StateRejected(str(exc) or "State update rejected") from exc
        self._storage.put_json(_STATE_KEY, state)
        self._state = state
        self.broadcast(core.dumps(core.state(state)), without=[source.id] if source else ())
        self._host.spawn(self, self._state_hook(state, source), "on_state_update")

    async def _state_hook(self, state: Any, source: Connection | None) -> None:
        await _maybe_await(self.on_state_update(state, source))

    def validate_state_change(self, state: Any, source: Connection | None) -> None:
        """Raise to reject a state change (the client gets `cf_agent_state_error`)."""

    def on_state_update(self, state: Any, source: Connection | None) -> Any:
        """Called after a state change was persisted and broadcast."""

    # -- storage ------------------------------------------------------------------------------
    def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        """Run SQL on the agent's own database; always bind values as `?` parameters."""
        return self._storage.sql(query, *params)

    # -- connections --------------------------------------------------------------------------
    def get_connections(self) -> list[Connection]:
        return self._host.connections_of(self)

    def broadcast(self, message: str | bytes | dict[str, Any], without: Iterable[str] = ()) -> None:
        data = core.dumps(message) if isinstance(message, dict) else message
        skip = set(without)
        for conn in self.get_connections():
            if conn.id not in skip:
                conn.send(data)

    # -- lifecycle hooks ----------------------------------------------------------------------
    async def on_start(self) -> None:
        """Runs when the agent is created and each time it wakes from hibernation."""

    async def on_connect(self, connection: Connection, request: Any) -> None:
        """A client connected (identity, state and MCP frames were already sent)."""

    async def on_message(self, connection: Connection, message: str | bytes) -> None:
        """A frame that is not part of the core protocol."""

    async def on_close(self, connection: Connection, code: int, reason: str) -> None:
        """A client went away."""

    async def on_request(self, request: Request) -> Response:
        """Plain HTTP to the agent's URL."""
        return JSONResponse(
            {"error": "this agent does not handle HTTP requests", "code": "not_found"}, 404
        )

    async def on_error(self, error: BaseException, connection: Connection | None = None) -> None:
        log.error(
            "agent %s/%s: %s", self.url_segment(), self.name, error, exc_info=error
        )

    @classmethod
    async def on_before_connect(cls, request: Any, name: str) -> Response | None:
        """Runs before the agent is touched; return a Response (e.g. 401) to refuse."""
        return None

    def should_connection_be_readonly(self, connection: Connection, request: Any) -> bool:
        """Return True to refuse state updates from this connection."""
        return False

    # -- internal extension points (VoiceAgent builds on these) --------------------------------
    async def _on_connect_internal(self, connection: Connection) -> None:
        """Framework frames sent after the core handshake, before the user's `on_connect`."""

    async def _on_close_internal(self, connection: Connection) -> None:
        """Framework clean-up before the user's `on_close`."""

    async def _handle_plain(self, connection: Connection, message: core.PlainMessage) -> None:
        """A frame that is not core protocol: by default it goes to `on_message`."""
        try:
            await _maybe_await(self.on_message(connection, message.data))
        except Exception as exc:
            await self.on_error(exc, connection)

    @classmethod
    async def on_host_start(cls) -> None:
        """Runs once per class when the server starts (e.g. to load shared models)."""

    def is_busy(self) -> bool:
        """True while the agent must not hibernate (e.g. a voice call in progress)."""
        return False

    def _in_flight(self) -> bool:
        """Work a graceful shutdown waits for (bounded), beyond running handlers: e.g. a
        voice turn whose reply is still being generated or spoken."""
        return False

    # -- schedules ----------------------------------------------------------------------------
    async def schedule(
        self, when: float | int | dt.datetime | str, callback: str, payload: Any = None
    ) -> Schedule:
        """Run `self.<callback>(payload, schedule)` later; survives restarts and hibernation.

        `when`: seconds from now, an aware or UTC-naive datetime, or a cron expression.
        """
        fn = self._schedule_target(callback)
        if fn is None:
            raise ScheduleError(f"{callback!r} is not a public method of {type(self).__name__}")
        now = time.time()
        cron = None
        delay = None
        if isinstance(when, bool):
            raise ScheduleError("when must be seconds, a datetime or a cron string")
        if isinstance(when, int | float):
            if when < 0:
                raise ScheduleError("delay must be >= 0 seconds")
            kind, at, delay = "delayed", now + float(when), float(when)
        elif isinstance(when, dt.datetime):
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            kind, at = "scheduled", when.timestamp()
        elif isinstance(when, str):
            if not croniter.is_valid(when):
                raise ScheduleError(f"invalid cron expression: {when!r}")
            kind, cron = "cron", when
            at = _next_cron(when, now)
        else:
            raise ScheduleError("when must be seconds, a datetime or a cron string")
        sid = uuid.uuid4().hex[:16]
        self._storage.sql(
            "INSERT INTO callroom_schedules (id, callback, payload, type, time, delay, cron, "
            "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            sid, callback, core.dumps({"v": payload}), kind, at, delay, cron, now,
        )
        self._sync_alarm()
        return Schedule(
            id=sid, callback=callback, payload=payload, type=kind, time=at, delay=delay, cron=cron
        )

    def get_schedules(self) -> list[Schedule]:
        rows = self._storage.sql("SELECT * FROM callroom_schedules ORDER BY time")
        return [_row_to_schedule(r) for r in rows]

    def get_schedule(self, schedule_id: str) -> Schedule | None:
        rows = self._storage.sql("SELECT * FROM callroom_schedules WHERE id = ?", schedule_id)
        return _row_to_schedule(rows[0]) if rows else None

    def cancel_schedule(self, schedule_id: str) -> bool:
        before = self._storage.sql("SELECT COUNT(*) AS n FROM callroom_schedules")[0]["n"]
        self._storage.sql("DELETE FROM callroom_schedules WHERE id = ?", schedule_id)
        after = self._storage.sql("SELECT COUNT(*) AS n FROM callroom_schedules")[0]["n"]
        self._sync_alarm()
        return after < before

    def _schedule_target(self, callback: str) -> Any:
        if not isinstance(callback, str) or callback.startswith("_"):
            return None
        for klass in type(self).__mro__:
            value = vars(klass).get(callback)
            if value is not None:
                return getattr(self, callback) if inspect.isfunction(value) else None
        return None

    def _sync_alarm(self) -> None:
        row = self._storage.sql("SELECT MIN(time) AS t FROM callroom_schedules")[0]
        self._host.set_alarm(self, row["t"])

    async def _run_due_schedules(self) -> int:
        """Fire every schedule that is due. At-least-once: a row leaves after its callback."""
        now = time.time()
        rows = self._storage.sql(
            "SELECT * FROM callroom_schedules WHERE time <= ? ORDER BY time LIMIT 1000", now
        )
        for row in rows:
            sched = _row_to_schedule(row)
            fn = self._schedule_target(sched["callback"])
            try:
                if fn is None:
                    raise ScheduleError(f"schedule callback {sched['callback']!r} is gone")
                await _maybe_await(fn(sched["payload"], sched))
            except Exception as exc:
                await self.on_error(exc)
            if sched["type"] == "cron" and sched["cron"]:
                self._storage.sql(
                    "UPDATE callroom_schedules SET time = ? WHERE id = ?",
                    _next_cron(sched["cron"], time.time()), sched["id"],
                )
            else:
                self._storage.sql("DELETE FROM callroom_schedules WHERE id = ?", sched["id"])
        self._sync_alarm()
        return len(rows)


class _Missing:
    pass


_MISSING: Any = _Missing()


def _next_cron(expr: str, after: float) -> float:
    base = dt.datetime.fromtimestamp(after, dt.UTC)
    nxt: dt.datetime = croniter(expr, base).get_next(dt.datetime)
    return nxt.timestamp()


def _row_to_schedule(row: dict[str, Any]) -> Schedule:
    import json

    return Schedule(
        id=row["id"],
        callback=row["callback"],
        payload=json.loads(row["payload"])["v"],
        type=row["type"],
        time=row["time"],
        delay=row["delay"],
        cron=row["cron"],
    )


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value
