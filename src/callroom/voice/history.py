"""Conversation history of a voice agent, persisted in the agent's own SQLite.

Rows are chat messages in OpenAI form (role, content, and in `meta` the tool_calls /
tool_call_id / callroom extras such as `interrupted`), so the LLM loop can replay them as is.
"""

from __future__ import annotations

import json
import time
from typing import Any

from callroom.storage import AgentStorage


class History:
    def __init__(self, storage: AgentStorage, *, max_messages: int = 1000) -> None:
        self._storage = storage
        self.max_messages = max_messages

    def append(self, message: dict[str, Any], *, call_id: str | None = None) -> int:
        """Persist one message (durable when this returns); returns its sequence number."""
        meta = {k: v for k, v in message.items() if k not in ("role", "content")}
        content = message.get("content")
        rows = self._storage.sql(
            "INSERT INTO callroom_messages (call_id, role, content, meta, created) "
            "VALUES (?, ?, ?, ?, ?) RETURNING seq",
            call_id,
            message["role"],
            content if isinstance(content, str) else json.dumps(content),
            json.dumps(meta) if meta else None,
            time.time(),
        )
        seq = int(rows[0]["seq"])
        if seq % 50 == 0:
            self.trim()
        return seq

    def trim(self) -> None:
        self._storage.sql(
            "DELETE FROM callroom_messages WHERE seq <= "
            "(SELECT MAX(seq) FROM callroom_messages) - ?",
            self.max_messages,
        )

    def messages(self, *, limit_turns: int | None = None) -> list[dict[str, Any]]:
        """Messages oldest first; with `limit_turns`, only from the N-th last user message on,
        so a tool call is never separated from its result."""
        if limit_turns is None:
            rows = self._storage.sql("SELECT * FROM callroom_messages ORDER BY seq")
        else:
            first = self._storage.sql(
                "SELECT MIN(seq) AS s FROM (SELECT seq FROM callroom_messages WHERE role = 'user'"
                " ORDER BY seq DESC LIMIT ?) AS recent",
                limit_turns,
            )[0]["s"]
            rows = self._storage.sql(
                "SELECT * FROM callroom_messages WHERE seq >= ? ORDER BY seq", first or 0
            )
        return [_to_message(r) for r in rows]

    def clear(self) -> None:
        self._storage.sql("DELETE FROM callroom_messages")


def _to_message(row: dict[str, Any]) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": row["role"], "content": row["content"]}
    if row["meta"]:
        msg.update(json.loads(row["meta"]))
    return msg
