"""Agents for the cluster tests: which process am I in, a counter in state, an echo for frame
latency, schedules that record each firing in the agent's own table, and an HTTP handler."""

from __future__ import annotations

import os
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from callroom import Agent, Connection, callable


class Room(Agent):
    initial_state = {"count": 0}

    async def on_start(self) -> None:
        self.sql(
            "CREATE TABLE IF NOT EXISTS fired (payload TEXT NOT NULL, pid INTEGER NOT NULL,"
            " at DOUBLE PRECISION NOT NULL)"
        )

    @callable
    def pid(self) -> int:
        return os.getpid()

    @callable
    def increment(self, by: int = 1) -> int:
        count = int(self.state.get("count", 0)) + by
        self.set_state({**self.state, "count": count})
        return count

    @callable
    async def plan(self, delay: float, payload: str) -> str:
        return (await self.schedule(delay, "ring", payload))["id"]

    @callable
    def fired(self) -> list[dict[str, Any]]:
        return self.sql("SELECT payload, pid FROM fired ORDER BY at")

    @callable
    def pending(self) -> int:
        return len(self.get_schedules())

    def ring(self, payload: Any, schedule: Any) -> None:
        self.sql("INSERT INTO fired VALUES (?, ?, ?)", str(payload), os.getpid(), time.time())

    async def on_message(self, connection: Connection, message: str | bytes) -> None:
        if isinstance(message, bytes):
            connection.send(message)  # echo: the frame-latency probe

    async def on_request(self, request: Request) -> Response:
        if request.url.path.endswith("/stream"):

            async def chunks() -> Any:
                for i in range(5):
                    yield f"chunk {i}\n".encode()

            return StreamingResponse(chunks(), media_type="text/plain")
        body = await request.body()
        return JSONResponse(
            {
                "pid": os.getpid(),
                "method": request.method,
                "body": body.decode(),
                "query": request.url.query,
                "count": self.state["count"],
                "auth": request.headers.get("authorization"),
            },
            headers={"x-agent": self.name},
        )

    @classmethod
    async def on_before_connect(cls, request: Any, name: str) -> Response | None:
        if name.startswith("private") and request.headers.get("authorization") != "Bearer ok":
            return JSONResponse({"error": "no"}, status_code=401)
        return None
