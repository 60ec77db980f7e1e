"""One SQLite file per agent (WAL), plus a small host index of pending alarms.

Durability: WAL with `synchronous=NORMAL` — a committed transaction survives a process crash
(`kill -9`), which is the failure we promise to survive; only an OS crash / power loss may
lose the last transactions. Every statement autocommits unless the caller opens a
transaction, so a write is durable before the reply that depends on it is sent.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from callroom.errors import BadAgentName
from callroom.protocol.names import validate_agent_name
from callroom.storage.base import StorageBackend

_SCHEMA_VERSION = 1

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE IF NOT EXISTS callroom_kv (k TEXT PRIMARY KEY, v TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS callroom_schedules (
        id TEXT PRIMARY KEY,
        callback TEXT NOT NULL,
        payload TEXT NOT NULL,
        type TEXT NOT NULL CHECK (type IN ('delayed', 'scheduled', 'cron')),
        time REAL NOT NULL,
        delay REAL,
        cron TEXT,
        created REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS callroom_schedules_time ON callroom_schedules(time);
    CREATE TABLE IF NOT EXISTS callroom_connections (
        id TEXT PRIMARY KEY, attachment TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS callroom_messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id TEXT,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        meta TEXT,
        created REAL NOT NULL
    );
    """,
}


def agent_db_path(data_dir: Path, agent: str, name: str) -> Path:
    """The file of agent (`agent` = kebab class, `name`), proven to lie inside `data_dir`."""
    validate_agent_name(name)
    validate_agent_name(agent)
    root = data_dir.resolve()
    path = (root / agent / f"{name}.db").resolve()
    if root not in path.parents:
        raise BadAgentName("agent name resolves outside the data directory")
    return path


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    return db


class AgentStorage:
    """An agent's own database: user tables via `sql`, internal `callroom_*` tables via helpers."""

    errors = sqlite3
    """DB-API module of the errors `sql` raises (see `callroom.storage.base.AgentStore`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = _connect(path)
        self._migrate()

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for v in range(version + 1, _SCHEMA_VERSION + 1):
            with self.transaction():
                for stmt in filter(str.strip, _MIGRATIONS[v].split(";")):
                    self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version={v}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several writes atomically (nested use joins the outer transaction)."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        """Run one statement with bound parameters; rows come back as dicts."""
        cur = self._db.execute(query, params)
        rows = cur.fetchall()
        return [dict(r) for r in rows]

    # -- key/value (state, internal flags) ---------------------------------------------------
    def get_json(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT v FROM callroom_kv WHERE k = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def put_json(self, key: str, value: Any) -> None:
        self._db.execute(
            "INSERT INTO callroom_kv (k, v) VALUES (?, ?) "
            "ON CONFLICT(k) DO UPDATE SET v = excluded.v",
            (key, json.dumps(value, separators=(",", ":"))),
        )

    def delete_key(self, key: str) -> None:
        self._db.execute("DELETE FROM callroom_kv WHERE k = ?", (key,))

    # -- connection attachments (survive hibernation) ---------------------------------------
    def put_attachment(self, conn_id: str, value: Any) -> None:
        self._db.execute(
            "INSERT INTO callroom_connections (id, attachment) VALUES (?, ?) "
            "ON CONFLICT(id) DO UPDATE SET attachment = excluded.attachment",
            (conn_id, json.dumps(value)),
        )

    def get_attachment(self, conn_id: str) -> Any:
        row = self._db.execute(
            "SELECT attachment FROM callroom_connections WHERE id = ?", (conn_id,)
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def drop_attachment(self, conn_id: str) -> None:
        self._db.execute("DELETE FROM callroom_connections WHERE id = ?", (conn_id,))

    def close(self) -> None:
        self._db.close()


class HostIndex:
    """Per data-dir index of the earliest pending alarm of each agent.

    Lets the host wake hibernated agents (and fire alarms missed while the server was down)
    without opening every agent's database at start-up. The agent's own schedule table stays
    the source of truth; this index only says *when to look*.
    """

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._db = _connect(data_dir / "_host.db")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS alarms (agent TEXT NOT NULL, name TEXT NOT NULL, "
            "at REAL NOT NULL, PRIMARY KEY (agent, name))"
        )

    def set(self, agent: str, name: str, at: float | None) -> None:
        if at is None:
            self._db.execute("DELETE FROM alarms WHERE agent = ? AND name = ?", (agent, name))
        else:
            self._db.execute(
                "INSERT INTO alarms (agent, name, at) VALUES (?, ?, ?) "
                "ON CONFLICT(agent, name) DO UPDATE SET at = excluded.at",
                (agent, name, at),
            )

    def due(self, now: float, limit: int = 256) -> list[tuple[str, str]]:
        rows = self._db.execute(
            "SELECT agent, name FROM alarms WHERE at <= ? ORDER BY at LIMIT ?", (now, limit)
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def next_time(self) -> float | None:
        row = self._db.execute("SELECT MIN(at) FROM alarms").fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        self._db.close()


class SQLiteBackend(StorageBackend):
    """The embedded default: `<data_dir>/<class>/<name>.db` per agent, `<data_dir>/_host.db`
    for the alarm index. One process per data directory."""

    shared = False

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.url = f"sqlite:///{self.data_dir}"
        self._index: HostIndex | None = None

    def open_agent(self, agent: str, name: str) -> AgentStorage:
        return AgentStorage(agent_db_path(self.data_dir, agent, name))

    def alarm_index(self) -> HostIndex:
        if self._index is None:
            self._index = HostIndex(self.data_dir)
        return self._index

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None
