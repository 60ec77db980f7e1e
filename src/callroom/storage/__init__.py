"""Agent storage backends, chosen by URL (`CALLROOM_STORAGE`).

* unset, `sqlite:` or `sqlite:///<dir>` — the embedded default: one SQLite file per agent under
  the data directory (`CALLROOM_DATA_DIR`, or `<dir>` from the URL; `sqlite:////abs/dir` for an
  absolute path, as in SQLAlchemy URLs).
* `postgresql://user:pass@host:5432/db` (or `postgres://…`) — the shared store for a cluster
  (needs `pip install 'callroom[postgres]'`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from callroom.storage.base import AgentLocked, AgentStore, AlarmIndex, StorageBackend, redact
from callroom.storage.sqlite import AgentStorage, HostIndex, SQLiteBackend, agent_db_path

__all__ = [
    "AgentLocked",
    "AgentStorage",
    "AgentStore",
    "AlarmIndex",
    "HostIndex",
    "SQLiteBackend",
    "StorageBackend",
    "agent_db_path",
    "open_backend",
]


def open_backend(url: str | None, data_dir: Path | str = "data", **options: Any) -> StorageBackend:
    """The backend for `url` (`None`/empty → SQLite in `data_dir`)."""
    url = (url or "").strip()
    if not url or url in ("sqlite", "sqlite:", "sqlite://"):
        return SQLiteBackend(Path(data_dir))
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        rest = url[len("sqlite:") :]
        if not rest.startswith("///"):
            raise ValueError(f"bad SQLite storage URL {url!r}: use sqlite:///relative/dir")
        return SQLiteBackend(Path(rest[3:]))
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        from callroom.storage.postgres import PostgresBackend

        if scheme.startswith("postgresql+"):  # tolerate SQLAlchemy-style driver suffixes
            url = "postgresql" + url[len(scheme) :]
        return PostgresBackend(url, **options)
    raise ValueError(f"unknown storage URL {redact(url)!r}: use sqlite:///DIR or postgresql://…")
