"""`?` → `%s` translation of the Postgres backend: placeholders outside literals only, `%`
escaped everywhere, numbered placeholders and jsonb `?|`/`?&` refused with a clear error."""

from __future__ import annotations

import pytest

pytest.importorskip("psycopg", reason="needs the postgres extra: pip install 'callroom[postgres]'")

import psycopg

from callroom.storage.postgres import translate


@pytest.mark.parametrize(
    ("sqlite", "postgres"),
    [
        ("SELECT ?", "SELECT %s"),
        ("INSERT INTO t VALUES (?, ?)", "INSERT INTO t VALUES (%s, %s)"),
        ("SELECT '?', ?", "SELECT '?', %s"),
        ("SELECT 'it''s ?' , ?", "SELECT 'it''s ?' , %s"),
        ("SELECT E'a\\'?', ?", "SELECT E'a\\'?', %s"),
        ('SELECT "odd?col" FROM t WHERE x = ?', 'SELECT "odd?col" FROM t WHERE x = %s'),
        ("SELECT 1 -- why?\n, ?", "SELECT 1 -- why?\n, %s"),
        ("SELECT /* ? */ ?", "SELECT /* ? */ %s"),
        ("SELECT $$ ? $$, ?", "SELECT $$ ? $$, %s"),
        ("SELECT $body$ ? $body$, ?", "SELECT $body$ ? $body$, %s"),
        (
            "SELECT v FROM t WHERE v LIKE '10%' AND w = ?",
            "SELECT v FROM t WHERE v LIKE '10%%' AND w = %s",
        ),
        ("SELECT 5 % ?", "SELECT 5 %% %s"),
    ],
)
def test_translate(sqlite: str, postgres: str) -> None:
    assert translate(sqlite) == postgres


@pytest.mark.parametrize("query", ["SELECT ?1", "SELECT d ?| array['a']", "SELECT d ?& ?"])
def test_unsupported_placeholders_are_refused(query: str) -> None:
    with pytest.raises(psycopg.ProgrammingError):
        translate(query)
