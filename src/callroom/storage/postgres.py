"""Postgres backend (psycopg 3, pooled): the shared store of a cluster.

Isolation — one SCHEMA per agent, chosen over "a key column on every row" because user SQL
is arbitrary (`CREATE TABLE notes …`, joins, sub-queries): a key column can only be enforced
on tables we create, whereas a schema gives every agent its own namespace for its own tables
exactly like its own SQLite file does. Every statement runs with `search_path` set to the
agent's schema only (set again on every statement, in the same network round trip, so a
pooled connection never carries another agent's path and a user `SET search_path` lasts one
statement). The schema is `cr_<hash of class/name>`; `callroom.agents` maps it back.
What this does not stop: agent code that deliberately writes a schema-qualified name of
another agent's table — the same boundary as SQLite, where agent code could open another
agent's file. (Per-agent database roles would need one login per agent, which defeats
pooling.) Cost: each agent is a schema with four small tables in the catalog, fine for tens
of thousands of agents per database.

User SQL: `?` placeholders become `%s` (and a literal `%` becomes `%%`), skipping string
literals, quoted identifiers, dollar-quoted bodies and comments. Numbered `?1` placeholders
and Postgres' jsonb `?`/`?|`/`?&` operators are refused (use `jsonb_exists()`). Nothing else
is translated: SQL must be portable between SQLite and Postgres (no `PRAGMA`, `AUTOINCREMENT`,
`INSERT OR REPLACE`, untyped columns; `REAL` is 4 bytes in Postgres — use `DOUBLE PRECISION`
or `FLOAT`). A parameterised statement is always sent with the extended protocol, so one call
runs one statement, as on SQLite. Auto-prepared statements are off: the same query text means
different tables under different search paths.

Durability: every statement outside `transaction()` autocommits before `sql` returns.

Shared store semantics:
* Fence — while an agent is live in a process, that process holds a session advisory lock on
  the agent (on one "lease" connection per process). Another process that tries to open it
  gets `AgentLocked` instead of a second live copy; a crashed process's locks go with its
  connection.
* Alarms — one table `callroom.alarms` for the whole cluster; `due()` claims rows with
  `FOR UPDATE SKIP LOCKED` and pushes each claimed alarm a lease ahead, so each due alarm is
  handed to exactly one host; `owns` (cluster hashing) leaves other hosts' agents alone.
* Migrations — `callroom.meta` holds the version of the shared tables, `callroom.agents` the
  version of each agent's schema; both run under an advisory transaction lock, so several
  hosts starting at once migrate once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from callroom.errors import MissingExtra
from callroom.protocol.names import validate_agent_name
from callroom.storage.base import AgentLocked, StorageBackend

try:
    import psycopg
    from psycopg import sql as pgsql
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtra("psycopg", "postgres") from exc

log = logging.getLogger("callroom.storage.postgres")

# Advisory-lock namespaces (two-int form for transaction locks; bigint form for fences).
_NS_MIGRATE_GLOBAL = 0x43520001
_NS_MIGRATE_AGENT = 0x43520002

_GLOBAL_VERSION = 1
_GLOBAL_MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE IF NOT EXISTS callroom.agents ("
        " schema TEXT PRIMARY KEY, agent TEXT NOT NULL, name TEXT NOT NULL,"
        " version INTEGER NOT NULL, created DOUBLE PRECISION NOT NULL, UNIQUE (agent, name))",
        "CREATE TABLE IF NOT EXISTS callroom.alarms ("
        " agent TEXT NOT NULL, name TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,"
        " PRIMARY KEY (agent, name))",
        "CREATE INDEX IF NOT EXISTS alarms_at ON callroom.alarms (at)",
        "CREATE TABLE IF NOT EXISTS callroom.hosts ("
        " id TEXT PRIMARY KEY, url TEXT NOT NULL, started DOUBLE PRECISION NOT NULL,"
        " heartbeat TIMESTAMPTZ NOT NULL DEFAULT now(), meta TEXT NOT NULL DEFAULT '{}')",
    ],
}

_AGENT_VERSION = 1
# The same tables as the SQLite backend, with Postgres types (DOUBLE PRECISION for times:
# `REAL` would be 4 bytes and round a Unix time to minutes).
_AGENT_MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE IF NOT EXISTS callroom_kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS callroom_schedules ("
        " id TEXT PRIMARY KEY, callback TEXT NOT NULL, payload TEXT NOT NULL,"
        " type TEXT NOT NULL CHECK (type IN ('delayed', 'scheduled', 'cron')),"
        " time DOUBLE PRECISION NOT NULL, delay DOUBLE PRECISION, cron TEXT,"
        " created DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX IF NOT EXISTS callroom_schedules_time ON callroom_schedules (time)",
        "CREATE TABLE IF NOT EXISTS callroom_connections ("
        " id TEXT PRIMARY KEY, attachment TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS callroom_messages ("
        " seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, call_id TEXT,"
        " role TEXT NOT NULL, content TEXT NOT NULL, meta TEXT,"
        " created DOUBLE PRECISION NOT NULL)",
    ],
}


# -- placeholders ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def translate(query: str) -> str:
    """SQLite-style `?` placeholders → psycopg `%s`; `%` → `%%`. Literals are left alone."""
    out: list[str] = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c == "'" or c == '"':
            escapes = (
                c == "'"
                and i > 0
                and query[i - 1] in "eE"
                and (i < 2 or not (query[i - 2].isalnum() or query[i - 2] == "_"))
            )
            j = i + 1
            while j < n:
                if escapes and query[j] == "\\":
                    j += 2
                    continue
                if query[j] == c:
                    if j + 1 < n and query[j + 1] == c:  # doubled quote
                        j += 2
                        continue
                    break
                j += 1
            out.append(query[i : j + 1].replace("%", "%%"))
            i = j + 1
        elif c == "-" and query.startswith("--", i):
            j = query.find("\n", i)
            j = n if j < 0 else j
            out.append(query[i:j].replace("%", "%%"))
            i = j
        elif c == "/" and query.startswith("/*", i):
            j = query.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(query[i:j].replace("%", "%%"))
            i = j
        elif c == "$" and (tag := _dollar_tag(query, i)) is not None:
            j = query.find(tag, i + len(tag))
            j = n if j < 0 else j + len(tag)
            out.append(query[i:j].replace("%", "%%"))
            i = j
        elif c == "?":
            nxt = query[i + 1] if i + 1 < n else ""
            if nxt.isdigit():
                raise psycopg.ProgrammingError(
                    "numbered placeholders (?1) are not supported on Postgres; use plain ?"
                )
            if nxt in ("|", "&"):
                raise psycopg.ProgrammingError(
                    "the jsonb ?| and ?& operators clash with ? placeholders; "
                    "use jsonb_exists_any() / jsonb_exists_all()"
                )
            out.append("%s")
            i += 1
        elif c == "%":
            out.append("%%")
            i += 1
        else:
            j = i + 1
            while j < n and query[j] not in "'\"-/$?%":
                j += 1
            out.append(query[i:j])
            i = j
    return "".join(out)


def _dollar_tag(query: str, i: int) -> str | None:
    """`$$` or `$tag$` starting at i (not a `$1` parameter or part of an identifier)."""
    if i > 0 and (query[i - 1].isalnum() or query[i - 1] == "_"):
        return None
    j = i + 1
    while j < len(query) and (query[j].isalnum() or query[j] == "_"):
        j += 1
    if j < len(query) and query[j] == "$":
        tag = query[i : j + 1]
        if len(tag) > 2 and tag[1].isdigit():
            return None
        return tag
    return None


def schema_of(agent: str, name: str) -> str:
    """The schema of agent (class segment, name): short, fixed-length, safe to quote."""
    validate_agent_name(agent)
    validate_agent_name(name)
    digest = hashlib.blake2b(f"{agent}/{name}".encode(), digest_size=12).hexdigest()
    return f"cr_{digest}"


def _lock_key(schema: str) -> int:
    """A signed 64-bit advisory-lock key for a schema."""
    return int.from_bytes(
        hashlib.blake2b(schema.encode(), digest_size=8).digest(), "big", signed=True
    )


def _lock_key32(text: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(text.encode(), digest_size=4).digest(), "big", signed=True
    )


# -- backend --------------------------------------------------------------------------------
class PostgresBackend(StorageBackend):
    """All agents of a process in one database, pooled connections, shared alarm index."""

    shared = True

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 16,
        pool_timeout: float = 10.0,
        fence: bool = True,
        alarm_lease: float = 60.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.fence = fence
        self.alarm_lease = alarm_lease
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "row_factory": dict_row,
            "prepare_threshold": None,
            "connect_timeout": max(1, int(connect_timeout)),
            # Notice a dead peer within ~30 s even on a silent network.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        self.pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=pool_timeout,
            kwargs=self._connect_kwargs,
            open=False,
            name="callroom",
        )
        self.pool.open(wait=True, timeout=connect_timeout)
        self._lease: psycopg.Connection[Any] | None = None
        self._lease_lock = threading.Lock()
        self._held: dict[str, int] = {}  # schema → fences held by this process (re-entrant)
        self._migrated: set[str] = set()
        self._index: PostgresAlarmIndex | None = None
        try:
            self._migrate_global()
        except BaseException:
            self.pool.close()
            raise

    # -- migrations -------------------------------------------------------------------------
    def _migrate_global(self) -> None:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", [_NS_MIGRATE_GLOBAL])
            conn.execute("CREATE SCHEMA IF NOT EXISTS callroom")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS callroom.meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)"
            )
            row = conn.execute("SELECT v FROM callroom.meta WHERE k = 'version'").fetchone()
            version = int(row["v"]) if row else 0
            for v in range(version + 1, _GLOBAL_VERSION + 1):
                for stmt in _GLOBAL_MIGRATIONS[v]:
                    conn.execute(stmt)
            if version < _GLOBAL_VERSION:
                conn.execute(
                    "INSERT INTO callroom.meta (k, v) VALUES ('version', %s) "
                    "ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                    [str(_GLOBAL_VERSION)],
                )

    def _migrate_agent(self, schema: str, agent: str, name: str) -> None:
        if schema in self._migrated:
            return
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT version FROM callroom.agents WHERE schema = %s", [schema]
            ).fetchone()
            if row is None or row["version"] < _AGENT_VERSION:
                with conn.transaction():
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(%s, %s)",
                        [_NS_MIGRATE_AGENT, _lock_key32(schema)],
                    )
                    row = conn.execute(
                        "SELECT version FROM callroom.agents WHERE schema = %s", [schema]
                    ).fetchone()
                    version = 0 if row is None else int(row["version"])
                    if version == 0:
                        conn.execute(
                            pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                                pgsql.Identifier(schema)
                            )
                        )
                    conn.execute(
                        pgsql.SQL("SET LOCAL search_path TO {}").format(pgsql.Identifier(schema))
                    )
                    for v in range(version + 1, _AGENT_VERSION + 1):
                        for stmt in _AGENT_MIGRATIONS[v]:
                            conn.execute(stmt)
                    conn.execute(
                        "INSERT INTO callroom.agents (schema, agent, name, version, created) "
                        "VALUES (%s, %s, %s, %s, %s) "
                        "ON CONFLICT (schema) DO UPDATE SET version = excluded.version",
                        [schema, agent, name, _AGENT_VERSION, time.time()],
                    )
        self._migrated.add(schema)

    def agent_version(self, agent: str, name: str) -> int | None:
        """The migrated schema version of an agent (None: never opened)."""
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT version FROM callroom.agents WHERE schema = %s", [schema_of(agent, name)]
            ).fetchone()
        return None if row is None else int(row["version"])

    # -- fence ------------------------------------------------------------------------------
    def _lease_execute(self, query: str, params: list[Any]) -> Any:
        with self._lease_lock:
            if self._lease is None or self._lease.closed or self._lease.broken:
                self._lease = psycopg.connect(self.url, **self._connect_kwargs)
            return self._lease.execute(query, params).fetchone()

    def _acquire(self, schema: str) -> None:
        row = self._lease_execute("SELECT pg_try_advisory_lock(%s) AS ok", [_lock_key(schema)])
        if not row["ok"]:
            raise AgentLocked("the agent is live on another host; retry shortly")
        with self._lease_lock:
            self._held[schema] = self._held.get(schema, 0) + 1

    def _release(self, schema: str) -> None:
        with self._lease_lock:
            left = self._held.get(schema, 0) - 1
            if left > 0:
                self._held[schema] = left
            else:
                self._held.pop(schema, None)
        try:
            self._lease_execute("SELECT pg_advisory_unlock(%s)", [_lock_key(schema)])
        except psycopg.Error:  # the lease connection is gone: so is the lock
            log.warning("could not release the fence of %s", schema, exc_info=True)

    def holds(self, agent: str, name: str) -> bool:
        """Whether this process has the agent open (live) right now."""
        return self._held.get(schema_of(agent, name), 0) > 0

    def free_of_fences(self, keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Those of `keys` that no process holds live (probed: try-lock, then unlock)."""
        if not keys:
            return []
        locks = [_lock_key(schema_of(a, n)) for a, n in keys]
        with self._lease_lock:
            if self._lease is None or self._lease.closed or self._lease.broken:
                self._lease = psycopg.connect(self.url, **self._connect_kwargs)
            rows = self._lease.execute(
                "SELECT k, pg_try_advisory_lock(k) AS got FROM unnest(%s::bigint[]) AS k",
                [locks],
            ).fetchall()
            got = [r["k"] for r in rows if r["got"]]
            if got:
                self._lease.execute(
                    "SELECT pg_advisory_unlock(k) FROM unnest(%s::bigint[]) AS k", [got]
                )
        free = set(got)
        return [key for key, lock in zip(keys, locks, strict=True) if lock in free]

    # -- StorageBackend ---------------------------------------------------------------------
    def open_agent(self, agent: str, name: str) -> PostgresAgentStore:
        schema = schema_of(agent, name)
        if self.fence:
            self._acquire(schema)
        try:
            self._migrate_agent(schema, agent, name)
        except BaseException:
            if self.fence:
                self._release(schema)
            raise
        return PostgresAgentStore(self, schema)

    def alarm_index(self) -> PostgresAlarmIndex:
        if self._index is None:
            self._index = PostgresAlarmIndex(self)
        return self._index

    def close(self) -> None:
        with self._lease_lock:
            if self._lease is not None:
                self._lease.close()
                self._lease = None
        self.pool.close()


class PostgresAgentStore:
    """One agent's schema. Same methods and semantics as the SQLite `AgentStorage`."""

    errors = psycopg

    def __init__(self, backend: PostgresBackend, schema: str) -> None:
        self.backend = backend
        self.schema = schema
        self.path = f"postgresql:{schema}"
        self._path_sql = pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(schema))
        self._tx: psycopg.Connection[Any] | None = None
        self._closed = False

    def _run(self, query: str, params: tuple[Any, ...] | list[Any]) -> list[dict[str, Any]]:
        if self._closed:
            raise psycopg.InterfaceError("the agent's storage is closed")
        if self._tx is not None:
            # A savepoint per statement: a failed statement leaves the transaction usable,
            # as on SQLite (where only the statement is undone).
            with self._tx.pipeline(), self._tx.transaction():
                self._tx.execute(self._path_sql)
                cur = self._tx.execute(query, params)
            return cur.fetchall() if cur.description else []
        with self.backend.pool.connection() as conn:
            with conn.pipeline():
                conn.execute(self._path_sql)
                cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        """Run one statement with `?` placeholders bound to `params`; rows as dicts."""
        return self._run(translate(query), params)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes atomically (nested use joins). Holds a pooled connection until it
        ends: do not await slow work inside it."""
        if self._tx is not None:
            yield
            return
        with self.backend.pool.connection() as conn, conn.transaction():
            self._tx = conn
            try:
                yield
            finally:
                self._tx = None

    # -- key/value --------------------------------------------------------------------------
    def get_json(self, key: str, default: Any = None) -> Any:
        rows = self._run("SELECT v FROM callroom_kv WHERE k = %s", [key])
        return default if not rows else json.loads(rows[0]["v"])

    def put_json(self, key: str, value: Any) -> None:
        self._run(
            "INSERT INTO callroom_kv (k, v) VALUES (%s, %s) "
            "ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            [key, json.dumps(value, separators=(",", ":"))],
        )

    def delete_key(self, key: str) -> None:
        self._run("DELETE FROM callroom_kv WHERE k = %s", [key])

    # -- attachments ------------------------------------------------------------------------
    def put_attachment(self, conn_id: str, value: Any) -> None:
        self._run(
            "INSERT INTO callroom_connections (id, attachment) VALUES (%s, %s) "
            "ON CONFLICT (id) DO UPDATE SET attachment = excluded.attachment",
            [conn_id, json.dumps(value)],
        )

    def get_attachment(self, conn_id: str) -> Any:
        rows = self._run("SELECT attachment FROM callroom_connections WHERE id = %s", [conn_id])
        return None if not rows else json.loads(rows[0]["attachment"])

    def drop_attachment(self, conn_id: str) -> None:
        self._run("DELETE FROM callroom_connections WHERE id = %s", [conn_id])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.backend.fence:
            self.backend._release(self.schema)


class PostgresAlarmIndex:
    """`callroom.alarms`, shared by every host of the cluster."""

    def __init__(self, backend: PostgresBackend, *, poll: float = 2.0) -> None:
        self.backend = backend
        self.poll = poll

    def set(self, agent: str, name: str, at: float | None) -> None:
        with self.backend.pool.connection() as conn:
            if at is None:
                conn.execute(
                    "DELETE FROM callroom.alarms WHERE agent = %s AND name = %s", [agent, name]
                )
            else:
                conn.execute(
                    "INSERT INTO callroom.alarms (agent, name, at) VALUES (%s, %s, %s) "
                    "ON CONFLICT (agent, name) DO UPDATE SET at = excluded.at",
                    [agent, name, at],
                )

    def due(self, now: float, limit: int = 256) -> list[tuple[str, str]]:
        """Claim the due alarms this host should fire: each is pushed a lease ahead, so no
        other host claims it while it fires (firing re-arms it through `set`).

        This host takes an alarm when the agent is live here, or when it owns the agent
        (`owns`, cluster hashing; everyone when unset) and no other host has it live —
        an agent live elsewhere is left to the host that has it."""
        backend = self.backend
        owns = backend.owns
        with backend.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "SELECT agent, name FROM callroom.alarms WHERE at <= %s ORDER BY at LIMIT %s "
                "FOR UPDATE SKIP LOCKED",
                [now, limit],
            ).fetchall()
            keys = [(r["agent"], r["name"]) for r in rows]
            here = {k for k in keys if backend.holds(*k)}
            wanted = [k for k in keys if k not in here and (owns is None or owns(*k))]
            free = set(backend.free_of_fences(wanted)) if backend.fence else set(wanted)
            mine = [k for k in keys if k in here or k in free]
            if mine:
                conn.execute(
                    "UPDATE callroom.alarms AS a SET at = %s FROM unnest(%s::text[], %s::text[])"
                    " AS m(agent, name) WHERE a.agent = m.agent AND a.name = m.name",
                    [now + self.backend.alarm_lease, [m[0] for m in mine], [m[1] for m in mine]],
                )
        return mine

    def next_time(self) -> float | None:
        """When to look again: the next future alarm, but at most `poll` seconds ahead
        (other hosts set alarms too, and a dead host's agents may become ours). Never a time
        in the past for alarms we cannot claim, so the caller does not spin on them."""
        now = time.time()
        with self.backend.pool.connection() as conn:
            row = conn.execute(
                "SELECT (SELECT MIN(at) FROM callroom.alarms WHERE at > %s) AS nxt, "
                "EXISTS (SELECT 1 FROM callroom.alarms WHERE at <= %s) AS due",
                [now, now],
            ).fetchone()
        assert row is not None
        cap = now + (0.25 if row["due"] else self.poll)
        nxt = row["nxt"]
        return cap if nxt is None else min(nxt, cap)

    def close(self) -> None:
        """Nothing of its own: the backend owns the pool."""
