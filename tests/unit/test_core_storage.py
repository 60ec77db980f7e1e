"""Per-agent SQLite storage: bound parameters, idempotent migrations, durability across
re-opens, transactions, and `agent_db_path` never leaving the data directory."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from callroom.errors import BadAgentName
from callroom.storage import AgentStorage, HostIndex, agent_db_path
from callroom.storage.sqlite import _SCHEMA_VERSION


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[AgentStorage]:
    s = AgentStorage(agent_db_path(tmp_path, "counter", "a"))
    yield s
    s.close()


def test_values_are_bound_not_interpolated(storage: AgentStorage) -> None:
    storage.sql("CREATE TABLE t (v TEXT)")
    evil = "x'); DROP TABLE t; --"
    storage.sql("INSERT INTO t (v) VALUES (?)", evil)
    assert storage.sql("SELECT v FROM t") == [{"v": evil}]
    assert storage.sql("SELECT v FROM t WHERE v = ?", evil) == [{"v": evil}]


def test_only_one_statement_per_call(storage: AgentStorage) -> None:
    storage.sql("CREATE TABLE t (v TEXT)")
    with pytest.raises(sqlite3.ProgrammingError):
        storage.sql("INSERT INTO t VALUES ('a'); DROP TABLE t")
    assert storage.sql("SELECT COUNT(*) AS n FROM t") == [{"n": 0}]


def test_rows_are_dicts(storage: AgentStorage) -> None:
    storage.sql("CREATE TABLE t (a INTEGER, b TEXT, c BLOB, d REAL)")
    storage.sql("INSERT INTO t VALUES (?, ?, ?, ?)", 1, "two", b"\x03", 4.5)
    assert storage.sql("SELECT * FROM t") == [{"a": 1, "b": "two", "c": b"\x03", "d": 4.5}]


def test_migrations_are_idempotent(tmp_path: Path) -> None:
    path = agent_db_path(tmp_path, "counter", "m")
    first = AgentStorage(path)
    first.sql("CREATE TABLE mine (x)")
    first.sql("INSERT INTO mine VALUES (1)")
    first.put_json("state", {"n": 1})
    first._migrate()  # running again is a no-op
    first.close()
    second = AgentStorage(path)  # and so is opening an existing file
    try:
        assert second.sql("PRAGMA user_version") == [{"user_version": _SCHEMA_VERSION}]
        tables = {
            r["name"] for r in second.sql("SELECT name FROM sqlite_master WHERE type='table'")
        }
        assert {
            "callroom_kv",
            "callroom_schedules",
            "callroom_connections",
            "callroom_messages",
            "mine",
        } <= tables
        assert second.sql("SELECT x FROM mine") == [{"x": 1}]
        assert second.get_json("state") == {"n": 1}
    finally:
        second.close()


def test_wal_mode(storage: AgentStorage) -> None:
    assert storage.sql("PRAGMA journal_mode") == [{"journal_mode": "wal"}]


def test_writes_survive_reopen_without_explicit_commit(tmp_path: Path) -> None:
    path = agent_db_path(tmp_path, "counter", "d")
    s = AgentStorage(path)
    s.sql("CREATE TABLE t (v)")
    s.sql("INSERT INTO t VALUES (?)", "kept")
    # a second reader sees the row at once: every statement autocommits
    other = sqlite3.connect(path)
    try:
        assert other.execute("SELECT v FROM t").fetchall() == [("kept",)]
    finally:
        other.close()
    s.close()


def test_transaction_commits_and_rolls_back(storage: AgentStorage) -> None:
    storage.sql("CREATE TABLE t (v)")
    with storage.transaction():
        storage.sql("INSERT INTO t VALUES (1)")
        with storage.transaction():  # nested joins the outer one
            storage.sql("INSERT INTO t VALUES (2)")
    with pytest.raises(RuntimeError), storage.transaction():
        storage.sql("INSERT INTO t VALUES (3)")
        raise RuntimeError("abort")
    assert [r["v"] for r in storage.sql("SELECT v FROM t ORDER BY v")] == [1, 2]


def test_kv_and_attachments(storage: AgentStorage) -> None:
    assert storage.get_json("missing", "dflt") == "dflt"
    storage.put_json("k", {"a": [1, 2]})
    storage.put_json("k", {"a": [3]})
    assert storage.get_json("k") == {"a": [3]}
    storage.delete_key("k")
    assert storage.get_json("k") is None
    storage.put_attachment("c1", {"user": "u"})
    assert storage.get_attachment("c1") == {"user": "u"}
    storage.drop_attachment("c1")
    assert storage.get_attachment("c1") is None


def test_agent_db_path_layout(tmp_path: Path) -> None:
    path = agent_db_path(tmp_path, "voice-agent", "room.1")
    assert path == tmp_path.resolve() / "voice-agent" / "room.1.db"


@pytest.mark.parametrize(
    ("agent", "name"),
    [
        ("counter", ".."),
        ("counter", "../x"),
        ("counter", "a/b"),
        ("counter", "/etc/passwd"),
        ("counter", ""),
        ("..", "a"),
        ("a/b", "a"),
        (".", "a"),
        ("counter", "x\x00"),
    ],
)
def test_agent_db_path_refuses_escapes(tmp_path: Path, agent: str, name: str) -> None:
    with pytest.raises(BadAgentName):
        agent_db_path(tmp_path, agent, name)


def test_agent_db_path_refuses_symlinked_class_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    outside = tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    os.symlink(outside, data / "counter")
    with pytest.raises(BadAgentName, match="outside the data directory"):
        agent_db_path(data, "counter", "a")


def test_host_index(tmp_path: Path) -> None:
    idx = HostIndex(tmp_path)
    try:
        assert idx.next_time() is None
        idx.set("counter", "a", 10.0)
        idx.set("counter", "b", 5.0)
        idx.set("counter", "a", 20.0)  # upsert
        assert idx.next_time() == 5.0
        assert idx.due(15.0) == [("counter", "b")]
        assert idx.due(25.0) == [("counter", "b"), ("counter", "a")]
        idx.set("counter", "b", None)
        assert idx.due(25.0) == [("counter", "a")]
    finally:
        idx.close()
    again = HostIndex(tmp_path)  # persisted
    try:
        assert again.next_time() == 20.0
    finally:
        again.close()
