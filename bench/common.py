"""Helpers shared by every benchmark in `bench/`.

- `machine_info()`: what the numbers were measured on (cores, CPU model, memory, load,
  Python and package versions, git revision when readable without writing).
- `percentiles()` / `summary_ms()`: latency summaries (linear interpolation between ranks,
  the same definition as numpy's default).
- `rss_kb()` / `trim_memory()`: resident memory from `/proc/<pid>/status` and an honest way
  to give freed memory back to the OS before reading it.
- `Row`, `markdown_table()`, `write_results()`: one JSON file and one markdown file per bench
  under `bench/results/<name>.{json,md}`.

Standard library only, so any bench can import it without extra installs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import gc
import json
import math
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent

DEFAULT_PACKAGES: tuple[str, ...] = (
    "callroom",
    "starlette",
    "uvicorn",
    "websockets",
    "wsproto",
    "httptools",
    "uvloop",
    "pydantic",
    "pydantic-settings",
    "numpy",
)


# -- machine -------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU model string from /proc/cpuinfo (`model name`), or platform's best guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (affinity), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def mem_total_mb() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def package_versions(names: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> str | None:
    """HEAD's commit, read from `.git` files (never runs git, never writes)."""
    git = REPO_ROOT / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head[:12]
        ref = head.split(":", 1)[1].strip()
        ref_file = git / ref
        if ref_file.is_file():
            return ref_file.read_text().strip()[:12]
        common = git / "commondir"
        base = (git / common.read_text().strip()).resolve() if common.is_file() else git
        if (base / ref).is_file():
            return (base / ref).read_text().strip()[:12]
        packed = base / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0][:12]
    except (OSError, IndexError):
        pass
    return None


def machine_info(packages: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, Any]:
    """Everything a reader needs to judge where a number came from."""
    return {
        "when_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_model": cpu_model(),
        "cores_usable": usable_cores(),
        "cores_total": os.cpu_count(),
        "mem_total_mb": mem_total_mb(),
        "load_average": load_average(),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "packages": package_versions(packages),
        "git_revision": git_revision(),
    }


def machine_line(info: dict[str, Any]) -> str:
    """One markdown line describing the machine."""
    pk = info.get("packages", {})
    versions = ", ".join(f"{k} {v}" for k, v in pk.items() if v)
    return (
        f"{info['cpu_model']}, {info['cores_usable']} usable cores "
        f"({info['cores_total']} total), {info.get('mem_total_mb')} MB RAM, "
        f"load {info.get('load_average')}; {info['python']}; {versions}; "
        f"rev {info.get('git_revision') or '?'}"
    )


# -- statistics ----------------------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already-sorted values, linear interpolation."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * (q / 100.0)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def percentiles(values: Iterable[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """`{"n", "min", "mean", "p50", "p90", "p99", "max"}` of `values` (units unchanged)."""
    data = sorted(values)
    out: dict[str, float] = {"n": float(len(data))}
    if not data:
        return out
    out["min"] = float(data[0])
    out["mean"] = float(sum(data) / len(data))
    for q in qs:
        key = f"p{q:g}".replace(".", "_")
        out[key] = percentile(data, q)
    out["max"] = float(data[-1])
    return out


def summary_ms(seconds: Iterable[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """`percentiles` of durations given in seconds, reported in milliseconds (rounded)."""
    stats = percentiles((s * 1000.0 for s in seconds), qs)
    return {k: (int(v) if k == "n" else round(v, 4)) for k, v in stats.items()}


# -- memory --------------------------------------------------------------------------------------
def rss_kb(pid: int | None = None) -> int:
    """Resident set size (VmRSS) of `pid` (default: this process) in KiB."""
    path = f"/proc/{pid if pid is not None else 'self'}/status"
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in {path}")


_STATUS_KEYS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads")


def proc_status(pid: int | None = None, keys: Sequence[str] = _STATUS_KEYS) -> dict[str, int]:
    """Selected numeric fields of /proc/<pid>/status (memory in KiB)."""
    path = f"/proc/{pid if pid is not None else 'self'}/status"
    out: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            if name in keys:
                out[name] = int(rest.split()[0])
    return out


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of `pid` (default: this process) from /proc/<pid>/stat.

    Resolution is one clock tick (usually 10 ms): divide deltas over many operations.
    """
    with open(f"/proc/{pid if pid is not None else 'self'}/stat", encoding="utf-8") as fh:
        text = fh.read()
    fields = text.rsplit(")", 1)[1].split()  # fields after "(comm)"; utime is field 14
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int | None = None) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid if pid is not None else 'self'}/fd"))
    except OSError:
        return None


def trim_memory() -> dict[str, Any]:
    """Full `gc.collect()` then glibc `malloc_trim(0)` in *this* process.

    CPython's obmalloc keeps freed arenas only while they hold live objects, and glibc keeps
    freed heap inside its arenas until trimmed (SQLite's page caches are malloc'ed); without
    this, RSS after a workload says more about allocator history than about what is still
    reachable. Returns what was done and the RSS (KiB) before, after gc and after the trim.
    """
    rss_before = rss_kb()
    collected = gc.collect()
    rss_after_gc = rss_kb()
    trimmed: bool | None = None
    name = ctypes.util.find_library("c")
    if name:
        try:
            libc = ctypes.CDLL(name)
            trimmed = bool(libc.malloc_trim(0))
        except (OSError, AttributeError):
            trimmed = None
    return {
        "gc_collected": collected,
        "malloc_trim": trimmed,
        "rss_before_kb": rss_before,
        "rss_after_gc_kb": rss_after_gc,
        "rss_after_trim_kb": rss_kb(),
    }


# -- results -------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of a results table: a measured value and, optionally, the target it meets."""

    metric: str
    value: float | int | str | None
    unit: str = ""
    target: str = ""
    ok: bool | None = None
    note: str = ""

    def cells(self) -> list[str]:
        value = self.value
        if isinstance(value, float):
            shown = f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
        elif isinstance(value, int):
            shown = f"{value:,}"
        else:
            shown = "—" if value is None else str(value)
        verdict = "" if self.ok is None else ("✅" if self.ok else "❌ missed")
        return [self.metric, f"{shown} {self.unit}".strip(), self.target, verdict, self.note]


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def esc(cell: Any) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines.extend("| " + " | ".join(esc(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)


def rows_table(rows: Iterable[Row]) -> str:
    return markdown_table(("metric", "value", "target", "", "note"), (r.cells() for r in rows))


def write_results(
    name: str,
    data: dict[str, Any],
    rows: Sequence[Row],
    *,
    title: str | None = None,
    notes: Sequence[str] = (),
    extra_md: str = "",
    results_dir: Path = RESULTS_DIR,
) -> tuple[Path, Path]:
    """Write `results/<name>.json` (data + machine + rows) and `results/<name>.md`.

    `data` should already hold `machine_info()` under "machine" (added here if missing).
    Returns the two paths.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    payload = dict(data)
    payload.setdefault("machine", machine_info())
    payload["rows"] = [asdict(r) for r in rows]
    json_path = results_dir / f"{name}.json"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")

    md: list[str] = [f"# {title or name}", ""]
    md.append(f"Machine: {machine_line(payload['machine'])}")
    md.append(f"Measured: {payload['machine'].get('when_utc')}")
    md.append("")
    md.append(rows_table(rows))
    if notes:
        md.append("")
        md.extend(f"- {n}" for n in notes)
    if extra_md:
        md.append("")
        md.append(extra_md.rstrip())
    md_path = results_dir / f"{name}.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return json_path, md_path


__all__ = [
    "RESULTS_DIR",
    "Row",
    "cpu_seconds",
    "load_average",
    "machine_info",
    "machine_line",
    "markdown_table",
    "open_fds",
    "percentile",
    "percentiles",
    "proc_status",
    "rows_table",
    "rss_kb",
    "summary_ms",
    "trim_memory",
    "write_results",
]
