"""Agents for the integration tests: the features `Counter` (examples/conformance.py) lacks.

`Features` (`/agents/features/<name>`): readonly connections (`?readonly=1`), a state
validator, plain messages echoed back, HTTP via `on_request`, user SQL tables, schedules and
a count of `on_start` runs kept in its own SQL (so a test can see every wake).
`Guarded` (`/agents/guarded/<name>`): refuses connections without the right `?token=`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from callroom import Agent, Connection, callable

TOKEN = "s3cret"


class Features(Agent):
    initial_state = {"items": [], "version": 0}

    async def on_start(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS starts (n INTEGER PRIMARY KEY AUTOINCREMENT)")
        self.sql("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
        self.sql("CREATE TABLE IF NOT EXISTS fired (tag TEXT, starts INTEGER, at REAL)")
        self.sql("INSERT INTO starts DEFAULT VALUES")

    # -- state ------------------------------------------------------------------------------
    def validate_state_change(self, state: Any, source: Connection | None) -> None:
        if not isinstance(state, dict) or state.get("forbidden"):
            raise ValueError("forbidden state")

    def should_connection_be_readonly(self, connection: Connection, request: Any) -> bool:
        return connection.query.get("readonly") == "1"

    # -- plain messages ---------------------------------------------------------------------
    async def on_message(self, connection: Connection, message: str | bytes) -> None:
        if message == "boom":
            raise RuntimeError("on_message failed on purpose")
        if isinstance(message, bytes):
            connection.send_json({"type": "echo_bytes", "hex": message.hex()})
        else:
            connection.send_json({"type": "echo", "data": message})

    # -- HTTP -------------------------------------------------------------------------------
    async def on_request(self, request: Request) -> Response:
        if request.method == "POST":
            body = (await request.body()).decode()
            self.sql("INSERT INTO notes (body) VALUES (?)", body)
        return JSONResponse(
            {
                "name": self.name,
                "method": request.method,
                "path": request.url.path,
                "state": self.state,
                "notes": [r["body"] for r in self.sql("SELECT body FROM notes ORDER BY id")],
                "starts": self.starts(),
            }
        )

    # -- RPC --------------------------------------------------------------------------------
    @callable
    def starts(self) -> int:
        """How many times `on_start` has run for this agent (creation + every wake)."""
        return int(self.sql("SELECT COUNT(*) AS n FROM starts")[0]["n"])

    @callable
    def get_state(self) -> Any:
        return self.state

    @callable
    def bump(self) -> int:
        """Server-side `set_state`: broadcast to every connection, the caller included."""
        version = int(self.state.get("version", 0)) + 1
        self.set_state({**self.state, "version": version})
        return version

    @callable
    def add_note(self, body: str) -> int:
        self.sql("INSERT INTO notes (body) VALUES (?)", body)
        return int(self.sql("SELECT COUNT(*) AS n FROM notes")[0]["n"])

    @callable
    def notes(self) -> list[str]:
        return [r["body"] for r in self.sql("SELECT body FROM notes ORDER BY id")]

    @callable
    async def schedule_in(self, seconds: float, tag: str) -> dict[str, Any]:
        sched = await self.schedule(seconds, "fired_callback", {"tag": tag})
        return {"id": sched["id"], "time": sched["time"]}

    @callable
    async def schedule_at(self, iso: str, tag: str) -> dict[str, Any]:
        sched = await self.schedule(dt.datetime.fromisoformat(iso), "fired_callback", {"tag": tag})
        return {"id": sched["id"], "time": sched["time"]}

    @callable
    def schedules(self) -> list[str]:
        return [s["payload"]["tag"] for s in self.get_schedules()]

    @callable
    def fired_tags(self) -> list[str]:
        return [r["tag"] for r in self.sql("SELECT tag FROM fired ORDER BY rowid")]

    async def fired_callback(self, payload: dict[str, Any], schedule: Any) -> None:
        self.sql(
            "INSERT INTO fired (tag, starts, at) VALUES (?, ?, ?)",
            payload["tag"],
            self.starts(),
            schedule["time"],
        )
        self.broadcast({"type": "fired", "tag": payload["tag"], "starts": self.starts()})

    @callable
    async def slow(self, seconds: float) -> str:
        """Announces itself with a state broadcast, then sleeps: an in-flight handler."""
        self.set_state({**self.state, "slow": "started"})
        await asyncio.sleep(seconds)
        return "finished"


class Guarded(Agent):
    """Only `?token=s3cret` gets in: no token → 401, a wrong token → 403."""

    @classmethod
    async def on_before_connect(cls, request: Any, name: str) -> Response | None:
        token = request.query_params.get("token")
        if token is None:
            return JSONResponse({"error": "token required"}, status_code=401)
        if token != TOKEN:
            return JSONResponse({"error": "bad token"}, status_code=403)
        return None

    @callable
    def whoami(self) -> str:
        return self.name

    async def on_request(self, request: Request) -> Response:
        return JSONResponse({"hello": self.name})
