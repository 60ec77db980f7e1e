"""The storage interface, run against both backends (embedded SQLite and Postgres): user SQL
with `?` placeholders, one statement per call, rows as dicts, transactions, state and
attachments, per-agent isolation, durability across re-opens, migrations, the alarm index,
and backend selection by URL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from callroom.errors import BadAgentName
from callroom.storage import (
    AgentStore,
    SQLiteBackend,
    StorageBackend,
    open_backend,
)

# Portable column types: SQLite accepts any type name, Postgres only its own.
TYPES = "a INTEGER, b TEXT, c BYTEA, d DOUBLE PRECISION"


@pytest.fixture
def backend(backend_url: str) -> Iterator[StorageBackend]:
    b = open_backend(backend_url)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def store(backend: StorageBackend) -> Iterator[AgentStore]:
    s = backend.open_agent("counter", "a")
    try:
        yield s
    finally:
        s.close()


def is_pg(backend: StorageBackend) -> bool:
    return backend.url.startswith("postgresql")


def tables_of(backend: StorageBackend, store: AgentStore) -> set[str]:
    if is_pg(backend):
        rows = store.sql(
            "SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema()"
        )
    else:
        rows = store.sql("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {r["name"] for r in rows}


# -- user SQL -----------------------------------------------------------------------------
def test_values_are_bound_not_interpolated(store: AgentStore) -> None:
    store.sql("CREATE TABLE t (v TEXT)")
    evil = "x'); DROP TABLE t; --"
    store.sql("INSERT INTO t (v) VALUES (?)", evil)
    assert store.sql("SELECT v FROM t") == [{"v": evil}]
    assert store.sql("SELECT v FROM t WHERE v = ?", evil) == [{"v": evil}]


def test_only_one_statement_per_call(store: AgentStore) -> None:
    store.sql("CREATE TABLE t (v TEXT)")
    with pytest.raises(store.errors.Error):
        store.sql("INSERT INTO t VALUES ('a'); DROP TABLE t")
    with pytest.raises(store.errors.Error):
        store.sql("INSERT INTO t VALUES (?); DROP TABLE t", "a")
    assert store.sql("SELECT COUNT(*) AS n FROM t") == [{"n": 0}]


def test_rows_are_dicts_with_python_values(store: AgentStore) -> None:
    store.sql(f"CREATE TABLE t ({TYPES})")
    store.sql("INSERT INTO t VALUES (?, ?, ?, ?)", 1, "two", b"\x03\x00", 4.5)
    store.sql("INSERT INTO t VALUES (?, ?, ?, ?)", None, None, None, None)
    assert store.sql("SELECT * FROM t ORDER BY a NULLS LAST") == [
        {"a": 1, "b": "two", "c": b"\x03\x00", "d": 4.5},
        {"a": None, "b": None, "c": None, "d": None},
    ]
    assert store.sql("SELECT COUNT(*) AS n, MAX(d) AS m FROM t") == [{"n": 2, "m": 4.5}]
    assert store.sql("DELETE FROM t WHERE a IS NULL") == []


def test_question_marks_and_percent_signs_inside_literals(store: AgentStore) -> None:
    store.sql('CREATE TABLE t (v TEXT, "odd?name" TEXT)')
    store.sql("INSERT INTO t (v, \"odd?name\") VALUES (?, 'lit?%') -- a comment?", "100%")
    store.sql("INSERT INTO t (v) VALUES ('it''s ?') /* block ? % */")
    rows = store.sql('SELECT v, "odd?name" AS o FROM t WHERE v LIKE ? ORDER BY v', "%")
    assert rows == [{"v": "100%", "o": "lit?%"}, {"v": "it's ?", "o": None}]
    assert store.sql("SELECT v FROM t WHERE v LIKE '100%'") == [{"v": "100%"}]
    assert store.sql("SELECT v FROM t WHERE v LIKE '100%' AND v = ?", "100%") == [{"v": "100%"}]


def test_returning(store: AgentStore) -> None:
    store.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    assert store.sql("INSERT INTO t (id, v) VALUES (?, ?) RETURNING id", 7, "x") == [{"id": 7}]


def test_constraint_errors_use_the_backends_dbapi_classes(store: AgentStore) -> None:
    store.sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    store.sql("INSERT INTO t VALUES (?)", 1)
    with pytest.raises(store.errors.IntegrityError):
        store.sql("INSERT INTO t VALUES (?)", 1)
    with pytest.raises(store.errors.Error):
        store.sql("SELECT * FROM no_such_table")


# -- transactions -------------------------------------------------------------------------
def test_transaction_commits_and_rolls_back(store: AgentStore) -> None:
    store.sql("CREATE TABLE t (v INTEGER)")
    with store.transaction():
        store.sql("INSERT INTO t VALUES (1)")
        with store.transaction():  # nested joins the outer one
            store.sql("INSERT INTO t VALUES (2)")
    with pytest.raises(RuntimeError), store.transaction():
        store.sql("INSERT INTO t VALUES (3)")
        store.put_json("inside", True)
        raise RuntimeError("abort")
    assert [r["v"] for r in store.sql("SELECT v FROM t ORDER BY v")] == [1, 2]
    assert store.get_json("inside") is None


def test_failed_statement_inside_a_transaction_undoes_only_itself(store: AgentStore) -> None:
    store.sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    with store.transaction():
        store.sql("INSERT INTO t VALUES (1)")
        with pytest.raises(store.errors.IntegrityError):
            store.sql("INSERT INTO t VALUES (1)")
        store.sql("INSERT INTO t VALUES (2)")
    assert [r["id"] for r in store.sql("SELECT id FROM t ORDER BY id")] == [1, 2]


# -- key/value, attachments ---------------------------------------------------------------
def test_kv_and_attachments(store: AgentStore) -> None:
    assert store.get_json("missing", "dflt") == "dflt"
    store.put_json("k", {"a": [1, 2], "u": "é"})
    store.put_json("k", {"a": [3]})
    assert store.get_json("k") == {"a": [3]}
    store.put_json("null", None)
    assert store.get_json("null", "dflt") is None
    store.delete_key("k")
    assert store.get_json("k") is None
    store.put_attachment("c1", {"user": "u"})
    assert store.get_attachment("c1") == {"user": "u"}
    store.drop_attachment("c1")
    assert store.get_attachment("c1") is None


# -- isolation and durability -------------------------------------------------------------
def test_agents_are_isolated(backend: StorageBackend) -> None:
    a = backend.open_agent("counter", "a")
    b = backend.open_agent("counter", "b")
    other_class = backend.open_agent("planner", "a")
    try:
        a.sql("CREATE TABLE notes (v TEXT)")
        a.sql("INSERT INTO notes VALUES (?)", "a's")
        a.put_json("state", 1)
        b.put_json("state", 2)
        with pytest.raises(b.errors.Error):
            b.sql("SELECT * FROM notes")
        b.sql("CREATE TABLE notes (v TEXT, extra INTEGER)")  # same name, own table
        b.sql("INSERT INTO notes VALUES (?, ?)", "b's", 1)
        assert a.sql("SELECT * FROM notes") == [{"v": "a's"}]
        assert b.sql("SELECT * FROM notes") == [{"v": "b's", "extra": 1}]
        assert a.get_json("state") == 1 and b.get_json("state") == 2
        assert other_class.get_json("state") is None
        with pytest.raises(other_class.errors.Error):
            other_class.sql("SELECT * FROM notes")
    finally:
        for s in (a, b, other_class):
            s.close()


def test_search_path_change_lasts_one_statement(backend: StorageBackend) -> None:
    if not is_pg(backend):
        pytest.skip("Postgres-only: schemas")
    a = backend.open_agent("counter", "a")
    b = backend.open_agent("counter", "b")
    try:
        a.sql("CREATE TABLE secret (v TEXT)")
        b.sql("SET search_path TO public")
        with pytest.raises(b.errors.Error):
            b.sql("SELECT * FROM secret")  # b is back in its own schema
        assert b.sql("SELECT current_schema() AS s")[0]["s"].startswith("cr_")
    finally:
        a.close()
        b.close()


def test_writes_survive_reopen_by_a_new_backend(backend_url: str) -> None:
    first = open_backend(backend_url)
    s = first.open_agent("counter", "d")
    s.sql("CREATE TABLE t (v TEXT)")
    s.sql("INSERT INTO t VALUES (?)", "kept")  # no explicit commit
    s.put_json("state", {"n": 1})
    s.close()
    first.close()
    second = open_backend(backend_url)
    try:
        again = second.open_agent("counter", "d")
        assert again.sql("SELECT v FROM t") == [{"v": "kept"}]
        assert again.get_json("state") == {"n": 1}
        again.close()
    finally:
        second.close()


def test_a_write_is_visible_to_another_reader_at_once(backend_url: str) -> None:
    """Autocommit: the write is durable and visible before `sql` returns."""
    writer = open_backend(backend_url)
    s = writer.open_agent("counter", "v")
    s.put_json("state", 42)
    if backend_url.startswith("sqlite"):
        import sqlite3

        path = Path(backend_url[len("sqlite:///") :]) / "counter" / "v.db"
        other = sqlite3.connect(path)
        try:
            assert other.execute("SELECT v FROM callroom_kv WHERE k='state'").fetchall() == [
                ("42",)
            ]
        finally:
            other.close()
    else:
        import psycopg

        from callroom.storage.postgres import schema_of

        with psycopg.connect(backend_url) as conn:
            row = conn.execute(
                f'SELECT v FROM "{schema_of("counter", "v")}".callroom_kv WHERE k = %s',
                ["state"],
            ).fetchone()
        assert row == ("42",)
    s.close()
    writer.close()


def test_migrations_create_internal_tables_once(backend: StorageBackend) -> None:
    s = backend.open_agent("counter", "m")
    s.sql("CREATE TABLE mine (x INTEGER)")
    s.sql("INSERT INTO mine VALUES (1)")
    s.close()
    again = backend.open_agent("counter", "m")  # opening an existing agent is a no-op
    try:
        assert {
            "callroom_kv",
            "callroom_schedules",
            "callroom_connections",
            "callroom_messages",
            "mine",
        } <= tables_of(backend, again)
        assert again.sql("SELECT x FROM mine") == [{"x": 1}]
    finally:
        again.close()


@pytest.mark.parametrize("name", ["..", "a/b", "", ".hidden", "x\x00", "a" * 129])
def test_bad_names_refused(backend: StorageBackend, name: str) -> None:
    with pytest.raises(BadAgentName):
        backend.open_agent("counter", name)
    with pytest.raises(BadAgentName):
        backend.open_agent(name, "a")


# -- alarm index ----------------------------------------------------------------------------
def test_alarm_index(backend: StorageBackend) -> None:
    import time

    idx = backend.alarm_index()
    now = time.time()
    idx.set("counter", "a", now - 10)
    idx.set("counter", "b", now - 20)
    idx.set("counter", "c", now + 3600)
    idx.set("counter", "a", now - 5)  # upsert
    assert idx.due(now) == [("counter", "b"), ("counter", "a")]
    nxt = idx.next_time()
    assert nxt is not None and nxt <= now + 3600
    idx.set("counter", "b", None)
    idx.set("counter", "a", None)
    assert idx.due(now + 1) == []
    assert idx.due(now + 3601) == [("counter", "c")]


# -- selection by URL -----------------------------------------------------------------------
def test_backend_selection_by_url(tmp_path: Path) -> None:
    default = open_backend(None, tmp_path / "d")
    assert isinstance(default, SQLiteBackend) and default.data_dir == tmp_path / "d"
    explicit = open_backend(f"sqlite:///{tmp_path}/x")
    assert isinstance(explicit, SQLiteBackend) and explicit.data_dir == tmp_path / "x"
    with pytest.raises(ValueError, match="unknown storage URL"):
        open_backend("mysql://u:secret@h/db")
    try:
        open_backend("mysql://u:secret@h/db")
    except ValueError as exc:
        assert "secret" not in str(exc)
    with pytest.raises(ValueError, match="bad SQLite storage URL"):
        open_backend("sqlite:relative")
