"""A short soak (bench/soak.py): concurrent calls at real-time pace, then nothing may be left.

Default 10 calls x 15 s; `CALLROOM_SOAK_CALLS` / `CALLROOM_SOAK_SECONDS` make it longer (the
long runs are `bench/soak.py` itself). Bounds are generous on purpose — this is a leak check,
not a benchmark: no latency assertion, and memory may grow a little while load is on; what
must hold is that fds and tasks return to the idle baseline once the calls are over.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench import soak

from tests.reliability.conftest import FIGURES

CALLS = int(os.environ.get("CALLROOM_SOAK_CALLS", "10"))
SECONDS = float(os.environ.get("CALLROOM_SOAK_SECONDS", "15"))


async def test_short_soak_leaves_nothing_behind(tmp_path: Path) -> None:
    data = await soak.run(
        calls=CALLS,
        duration=SECONDS,
        sample_s=2.0,
        warmup_s=4.0,
        warm_call_s=2.0,
        data_root=tmp_path,
        log=lambda *_: None,
    )
    soak.report(data, "soak_test", results_dir=tmp_path / "results")  # the report renders
    FIGURES["soak_short"] = {
        k: data[k]
        for k in (
            "calls",
            "duration_s",
            "turns",
            "latency_ms",
            "rss_mb",
            "rss_growth_pct",
            "p99_drift_pct",
            "fds",
            "tasks",
        )
    }
    # every call ran whole: no socket closed on it, no turn left without a reply
    assert data["closed_early"] == [], data["closed_early"]
    assert data["errors"] == [], data["errors"]
    assert data["stuck_turns"] == 0
    assert all(n >= 1 for n in data["turns_per_call"]), data["turns_per_call"]
    assert set(data["outcomes"]) <= {"completed"}, data["outcomes"]
    # back to the idle baseline once the calls are gone
    fds, tasks, rss = data["fds"], data["tasks"], data["rss_mb"]
    assert fds["after"] <= fds["before"] + 3, fds
    assert tasks["after"] <= tasks["before"] + 3, tasks
    assert data["idle_after"]["connections"] == 0 and data["idle_after"]["active_calls"] == 0
    # memory: no runaway growth under load, and most of it given back afterwards
    assert rss["loaded_last"] <= rss["loaded_first"] * 1.5 + 20, rss
    assert rss["idle_after"] <= rss["idle_before"] + 50, rss
