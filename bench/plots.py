"""PNG plots of the comparison and density results (matplotlib, headless).

    .venv/bin/python bench/plots.py                 # every result file found below
    .venv/bin/python bench/plots.py --compare compare --density density --sequential sequential

Reads `bench/results/<name>.json` and writes `bench/results/<name>*.png`:

- `<compare>_single.png`: voice-to-voice per turn (both systems, the order they ran in) and
  the median stage landmarks of a turn, side by side;
- `<compare>_concurrency.png`: voice-to-voice p50/p90 and server CPU per call against the
  number of concurrent calls;
- `<density>.png`: added p90 latency (client and server side), CPU per call and RSS per call
  against concurrent calls on remote providers;
- `<sequential>.png`: server RSS over 1 000 sequential calls, with the ±5 % band around the
  value after 100 calls.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
COLORS = {"callroom": "#1f77b4", "pipecat": "#d62728"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _machine(r: dict[str, Any]) -> str:
    m = r.get("machine", {})
    return (
        f"{m.get('cpu_model', '?')}, {m.get('cores_usable')} cores, "
        f"load {r.get('load_average_before')} → {r.get('load_average_after')}, "
        f"{m.get('when_utc', '')}"
    )


def plot_compare(name: str) -> list[Path]:
    r = _load(name)
    if r is None:
        return []
    plt = _plt()
    out: list[Path] = []
    if "single" in r:
        s = r["single"]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
        for system in ("callroom", "pipecat"):
            v = [t["voice_to_voice_ms"] for t in s["turns"][system]]
            a1.plot(
                range(1, len(v) + 1),
                [x if x is not None else float("nan") for x in v],
                "o-",
                color=COLORS[system],
                label=system,
                ms=4,
            )
        a1.set_xlabel("turn (each system's own count; blocks alternate)")
        a1.set_ylabel("voice-to-voice (ms)")
        a1.set_title("One call: voice-to-voice per turn")
        a1.set_ylim(bottom=0)
        a1.grid(alpha=0.3)
        a1.legend()
        labels = [
            "end-of-turn decision",
            "final transcript",
            "LLM first text",
            "TTS first audio",
            "first audio at the client",
        ]
        width = 0.38
        for k, system in enumerate(("callroom", "pipecat")):
            marks = s["summary"][system]["landmarks_ms"]
            vals = [(marks.get(lbl) or {}).get("p50", float("nan")) for lbl in labels]
            ys = [i + (k - 0.5) * width for i in range(len(labels))]
            a2.barh(ys, vals, height=width, color=COLORS[system], label=system)
            for y, v in zip(ys, vals, strict=True):
                if v == v:
                    a2.text(v + 10, y, f"{v:.0f}", va="center", fontsize=8)
        a2.set_yticks(range(len(labels)), labels)
        a2.invert_yaxis()
        a2.set_xlabel("ms after the caller's end of speech (median)")
        a2.set_title("Where the time goes (median landmarks)")
        a2.grid(axis="x", alpha=0.3)
        a2.set_xlim(0, a2.get_xlim()[1] * 1.12)
        a2.legend(loc="upper right")
        fig.suptitle(_machine(r), fontsize=8)
        fig.tight_layout()
        path = RESULTS / f"{name}_single.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    if "concurrency" in r:
        levels = r["concurrency"]["levels"]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
        for system in ("callroom", "pipecat"):
            rows = sorted((x for x in levels if x["system"] == system), key=lambda x: x["calls"])
            n = [x["calls"] for x in rows]
            a1.plot(
                n,
                [x["v2v_ms"].get("p50", float("nan")) for x in rows],
                "o-",
                color=COLORS[system],
                label=f"{system} p50",
            )
            a1.plot(
                n,
                [x["v2v_ms"].get("p90", float("nan")) for x in rows],
                "s--",
                color=COLORS[system],
                label=f"{system} p90",
                alpha=0.7,
            )
            a2.plot(
                n,
                [x["server_cpu_cores_per_call"] for x in rows],
                "o-",
                color=COLORS[system],
                label=f"{system}: CPU cores per call",
            )
            a2.plot(
                n,
                [x["server_cpu_cores_total"] for x in rows],
                "s--",
                color=COLORS[system],
                alpha=0.7,
                label=f"{system}: server CPU total",
            )
        for ax in (a1, a2):
            ax.set_xscale("log", base=2)
            ax.set_xticks(
                sorted({x["calls"] for x in levels}),
                [str(c) for c in sorted({x["calls"] for x in levels})],
            )
            ax.set_xlabel("concurrent calls (embedded models, 2 cores)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        a1.set_ylabel("voice-to-voice (ms)")
        a1.set_yscale("log")
        a1.set_title("Latency under concurrency")
        a2.set_ylabel("cores")
        a2.axhline(r["machine"].get("cores_usable", 2), color="gray", lw=0.8, ls=":")
        a2.set_title("Server CPU")
        fig.suptitle(_machine(r), fontsize=8)
        fig.tight_layout()
        path = RESULTS / f"{name}_concurrency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out


def plot_density(name: str) -> list[Path]:
    r = _load(name)
    if r is None:
        return []
    plt = _plt()
    rows = sorted(
        (x for x in r["levels"] if not x["tag"].startswith("base")), key=lambda x: x["calls"]
    )
    n = [x["calls"] for x in rows]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4.8))
    a1.plot(n, [x.get("added_p90_ms", float("nan")) for x in rows], "o-", label="client-observed")
    a1.plot(
        n,
        [x.get("server_added_p90_ms", float("nan")) for x in rows],
        "s--",
        label="server side (first_audio_ms)",
    )
    a1.plot(
        n,
        [x["client_lag_ms"].get("p90", float("nan")) for x in rows],
        ":",
        color="gray",
        label="client event-loop lag p90",
    )
    a1.axhline(20, color="red", lw=0.8, label="target 20 ms")
    a1.set_yscale("symlog", linthresh=10)
    a1.set_ylim(bottom=0)
    a1.set_ylabel("p90 added latency (ms)")
    a1.set_title("Added latency vs one call alone")
    a2.plot(n, [x["server_cpu_cores"] for x in rows], "o-", label="server CPU (cores)")
    a2.plot(n, [x["client_cpu_cores"] for x in rows], "s--", label="client CPU (cores)")
    a2b = a2.twinx()
    a2b.plot(
        n,
        [x["calls_per_core_from_cpu"] for x in rows],
        "^:",
        color="green",
        label="calls per core (from server CPU)",
    )
    a2b.axhline(200, color="green", lw=0.8, ls="--")
    a2b.set_ylabel("calls per core", color="green")
    a2.set_title("CPU")
    a2.set_ylabel("cores")
    a2.legend(loc="upper left", fontsize=8)
    a3.plot(n, [x["rss_kb_per_call"] for x in rows], "o-", label="(peak − idle) / N")
    a3.axhline(2048, color="red", lw=0.8, label="target 2 MiB")
    a3.set_ylabel("KiB per active call")
    a3.set_ylim(bottom=0)
    a3.set_title("RSS per active call")
    for ax in (a1, a2, a3):
        ax.set_xlabel("concurrent calls (remote providers)")
        ax.grid(alpha=0.3)
    a1.legend(fontsize=8)
    a3.legend(fontsize=8)
    fig.suptitle(_machine(r), fontsize=8)
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def plot_sequential(name: str) -> list[Path]:
    r = _load(name)
    if r is None or not r.get("points"):
        return []
    plt = _plt()
    pts = r["points"]
    n = [p["calls"] for p in pts]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    ax.plot(n, [p["rss_kb"] / 1024 for p in pts], "o-", label="VmRSS")
    ax.plot(n, [p["rss_kb_trimmed"] / 1024 for p in pts], "s--", label="after gc + malloc_trim")
    at100 = next((p for p in pts if p["calls"] == 100), None)
    if at100:
        ref = at100["rss_kb"] / 1024
        ax.axhspan(ref * 0.95, ref * 1.05, color="green", alpha=0.1, label="±5 % of @100")
    ax.set_xlabel("sequential calls")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("RSS over sequential calls")
    fig.suptitle(_machine(r), fontsize=8)
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--compare", default="compare")
    p.add_argument("--density", default="density")
    p.add_argument("--sequential", default="sequential")
    args = p.parse_args(argv)
    written = [
        *plot_compare(args.compare),
        *plot_density(args.density),
        *plot_sequential(args.sequential),
    ]
    for path in written:
        print(f"wrote {path}")
    if not written:
        print("no result files found", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
