"""The storage interface every backend implements.

Two levels:

* `AgentStore` — one agent's own database: user SQL (`sql`, `?` placeholders), transactions,
  the internal key/value table (state), connection attachments, and the internal
  `callroom_schedules` / `callroom_messages` tables that `Agent` and `History` reach through
  `sql`. Calls are synchronous (the agent's concurrency promise relies on that: a
  read-modify-write with no `await` in between is atomic) and every statement outside an
  explicit `transaction()` is committed before the call returns.
* `StorageBackend` — one per host process: opens agents' stores and owns the process's
  `AlarmIndex` (when to wake which agent for its schedules).

Backends: `sqlite` (embedded default, one file per agent) and `postgresql` (shared store for
a cluster, one schema per agent). `callroom.storage.open_backend` picks one from a URL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from callroom.errors import CallroomError


class AgentLocked(CallroomError):
    """The agent is live in another host process right now (shared-store fence)."""

    code = "agent_elsewhere"
    close_code = 1013  # WebSocket "try again later": clients reconnect
    http_status = 503


@runtime_checkable
class AgentStore(Protocol):
    """One agent's database."""

    path: Any
    """Where it lives, for logs (a file path, or `postgresql:<schema>`)."""

    errors: ModuleType
    """The DB-API module whose exception classes `sql` raises (`sqlite3` or `psycopg`):
    portable code catches `store.errors.IntegrityError`, `store.errors.Error`."""

    def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        """Run ONE statement with `?` placeholders bound to `params`; rows as dicts."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """Group statements atomically; a nested use joins the outer transaction."""
        ...

    def get_json(self, key: str, default: Any = None) -> Any: ...

    def put_json(self, key: str, value: Any) -> None: ...

    def delete_key(self, key: str) -> None: ...

    def put_attachment(self, conn_id: str, value: Any) -> None: ...

    def get_attachment(self, conn_id: str) -> Any: ...

    def drop_attachment(self, conn_id: str) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class AlarmIndex(Protocol):
    """When to wake which agent: the earliest pending schedule time of each agent.

    The agent's own `callroom_schedules` table stays the source of truth; the index only says
    when to look. `due()` hands out each due agent to ONE caller (on a shared store, a claim
    with a lease, so that several hosts polling the same index never fire the same alarm
    twice)."""

    def set(self, agent: str, name: str, at: float | None) -> None: ...

    def due(self, now: float, limit: int = 256) -> list[tuple[str, str]]: ...

    def next_time(self) -> float | None: ...

    def close(self) -> None: ...


OwnsFilter = Callable[[str, str], bool]
"""`owns(agent_class, name)`: whether this process should run that agent (cluster hashing)."""


class StorageBackend(ABC):
    """A host process's access to storage."""

    url: str
    shared: bool = False
    """True when several processes share the store (then alarms are claimed, agents fenced)."""

    owns: OwnsFilter | None = None
    """Set by the cluster layer: alarms of agents this process does not own are left for
    their owner. `None`: this process owns every agent."""

    @abstractmethod
    def open_agent(self, agent: str, name: str) -> AgentStore:
        """Open (creating and migrating as needed) the store of agent (`agent` = kebab class).

        Raises `BadAgentName` for an unsafe name and, on a shared store, `AgentLocked` when
        another process holds the agent live."""

    @abstractmethod
    def alarm_index(self) -> AlarmIndex:
        """The process's alarm index (one per backend; the backend closes it)."""

    @abstractmethod
    def close(self) -> None:
        """Release everything (stores already handed out are closed by their owner)."""

    def describe(self) -> str:
        """The URL without credentials, for logs."""
        return redact(self.url)


def redact(url: str) -> str:
    """`postgresql://user:secret@host/db` → `postgresql://user:***@host/db`."""
    head, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, tail = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{head}://{user}:***@{tail}" if ":" in creds else url
