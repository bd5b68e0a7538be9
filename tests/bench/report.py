"""Results: a Markdown table, the full JSON, and a PNG bar chart of the ratios."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.bench.measure import TIMES, Row
from tests.bench.profiling import Profile

NOTE = 90  # longer notes are cut in the table and given in full below it


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def _cell(row: Row, side: str) -> str:
    series = row.berth if side == "berth" else row.docker
    if series is None:
        return "—"
    return f"{_fmt(series.median)} {row.unit}"


def _met(row: Row, have_docker: bool) -> str:
    if row.goal is None:
        return ""
    met = row.met
    if met is None:
        return "skipped" if row.berth is None or have_docker else "n/a (no dockerd)"
    return "yes" if met else "**no**"


def ratio_text(ratio: float) -> str:
    return f"{ratio:.0f}{TIMES}" if ratio >= 100 else f"{ratio:.2f}{TIMES}"


def table(rows: list[Row], have_docker: bool) -> str:
    lines = ["| scenario | via | Berth median | dockerd median | ratio | goal | met? |",
             "|---|---|---:|---:|---:|---|---|"]
    for row in rows:
        ratio = "—" if row.ratio is None else ratio_text(row.ratio)
        goal = row.goal.describe(row.unit) if row.goal else ""
        scenario = row.scenario
        if "value" in row.extra:  # a reference figure of the machine, not of an engine
            scenario += f": {_fmt(row.extra['value'])} {row.unit}"
        elif row.note and row.berth is None:
            scenario += f" — {row.note if len(row.note) <= NOTE else row.note[:NOTE] + '…'}"
        lines.append(f"| {scenario} | {row.via} | {_cell(row, 'berth')} | {_cell(row, 'docker')} | {ratio} "
                     f"| {goal} | {_met(row, have_docker)} |")
    return "\n".join(lines)


def details(rows: list[Row]) -> str:
    lines = ["| scenario | via | Berth min / median / max | dockerd min / median / max | n |",
             "|---|---|---|---|---:|"]
    for row in rows:
        cells = []
        for s in (row.berth, row.docker):
            cells.append("—" if s is None else f"{_fmt(s.min)} / {_fmt(s.median)} / {_fmt(s.max)} {row.unit}")
        n = max((len(s.samples) for s in (row.berth, row.docker) if s), default=0)
        lines.append(f"| {row.scenario} | {row.via} | {cells[0]} | {cells[1]} | {n} |")
    return "\n".join(lines)


def markdown(meta: dict[str, Any], rows: list[Row], profiles: list[Profile]) -> str:
    have_docker = bool(meta.get("dockerd"))
    dockerd = meta.get("dockerd") or f"comparison skipped: {meta.get('dockerd_skipped', 'not started')}"
    out = [f"# Berth vs dockerd — {meta['started']}", "",
           f"Machine: {meta['machine']}. Load average at start {meta['load_start']}, at end {meta['load_end']}.",
           f"Berth {meta.get('berth', '?')} ({meta['commit']}); dockerd {dockerd}; "
           f"CLI: {meta['cli']}. {meta['iterations']} interleaved iterations per scenario after "
           f"{meta['warmup']} warm-up rounds; wall time {meta['elapsed_s']:.0f} s.",
           "", "Ratio = dockerd ÷ Berth for times and memory, Berth ÷ dockerd for rates: above 1 Berth is better.",
           "", table(rows, have_docker), ""]
    long_notes = [f"- {r.scenario} [{r.via}]: {r.note}" for r in rows if r.berth is None and len(r.note) > NOTE]
    if long_notes:
        out += ["Notes:", "", *long_notes, ""]
    if meta.get("skipped"):
        out += ["Berth lacks (probed, with dockerd's figure as the reference):", ""]
        out += [f"- {cap}: {why}" for cap, why in meta["skipped"].items()] + [""]
    if meta.get("berth_start_failure"):
        failure = meta["berth_start_failure"].strip().splitlines()
        out += [f"berthd failed to start on the first try (started on the second): `{failure[-1][:200]}`", ""]
    if meta.get("error"):
        out += [f"**The run did not complete: {meta['error']}**", ""]
    if meta.get("leftovers"):
        out += ["**Left on the host after the run:** " + "; ".join(meta["leftovers"]), ""]
    out += ["## Details", "", details(rows), ""]
    memory = [r for r in rows if r.unit == "MiB" and r.extra]
    if memory:
        out += ["## Memory by process (RSS, MiB)", ""]
        for r in memory:
            for engine, doc in r.extra.items():
                roles = doc.get("by_role_mib", doc)
                parts = ", ".join(f"{role} {mib}" for role, mib in roles.items())
                if "total_rss_mib" in doc:
                    total, idle = doc["total_rss_mib"], doc["idle_rss_mib"]
                    parts = f"{total} in all with the containers running (idle {idle}): {parts}"
                out.append(f"- {r.scenario}, {engine}: {parts}")
        out.append("")
    if profiles:
        out += ["## Profiles (Berth)", "",
                "Rows that miss their goal, and rows without one where Berth takes over 1.25 times dockerd's "
                "time, looped under py-spy (250 Hz, every Berth Python process). CPU ms per operation come "
                "from /proc; \"under Berth's code\" counts each sample at the deepest frame in Berth's own "
                "code, library calls included.", ""]
        out += [p.markdown() + "\n" for p in profiles]
    return "\n".join(out)


def write(results: Path, meta: dict[str, Any], rows: list[Row], profiles: list[Profile]) -> bool:
    """results.json, results.md and ratios.png in ``results``; False when there is no PNG."""
    doc = {"meta": meta, "rows": [r.as_dict() for r in rows], "profiles": [p.as_dict() for p in profiles]}
    (results / "results.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (results / "results.md").write_text(markdown(meta, rows, profiles))
    dockerd = str(meta.get("dockerd") or "n/a").split(" (")[0]
    title = (f"Berth {meta.get('berth', '?')} vs dockerd {dockerd} — {meta['started']}, "
             f"{meta.get('cores', '?')} cores, load {meta['load_start']}")
    return chart(results / "ratios.png", rows, title)


def render(results: Path) -> bool:
    """Rewrite results.md and ratios.png from a run's results.json."""
    doc = json.loads((results / "results.json").read_text())
    return write(results, doc["meta"], [Row.from_dict(r) for r in doc["rows"]],
                 [Profile.from_dict(p) for p in doc["profiles"]])


def chart(path: Path, rows: list[Row], title: str, cap: float = 30.0) -> bool:
    """Horizontal bars from parity (1) to each ratio on a log scale, goal ticks, colours for
    met / missed / no goal; ratios beyond ``cap`` are drawn to it and labelled with their value.
    False when matplotlib is missing (``pip install -e '.[bench]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    plotted = [r for r in rows if r.ratio is not None][::-1]  # first row on top
    fig, ax = plt.subplots(figsize=(11, 1.4 + 0.34 * max(len(plotted), 1)), dpi=110)
    if not plotted:
        ax.text(0.5, 0.5, "comparison skipped: no dockerd (apt-get install docker.io)", ha="center", va="center",
                fontsize=13)
        ax.set_axis_off()
    else:
        ratios = [r.ratio or 1.0 for r in plotted]
        shown = [min(max(x, 1 / cap), cap) for x in ratios]
        colors = ["#9aa5b1" if r.met is None else "#2e9e5b" if r.met else "#d64545" for r in plotted]
        y = list(range(len(plotted)))
        ax.barh(y, [abs(v - 1) for v in shown], left=[min(v, 1.0) for v in shown], color=colors, height=0.62)
        ax.set_xscale("log")
        lo = min(min(shown), 0.5) / 2.2  # room for the labels of bars left of parity
        hi = max(max(shown), max((r.goal.ratio for r in plotted if r.goal), default=1.0)) * 1.9
        if max(ratios) > cap:
            hi = cap * 4  # room for the "(off scale)" label
        ax.set_xlim(lo, hi)
        ax.axvline(1.0, color="black", linewidth=1)
        for i, (r, real, v) in enumerate(zip(plotted, ratios, shown, strict=True)):
            text = ratio_text(real)
            if v >= 1:
                ax.text(v * 1.05, i, text + (" (off scale)" if real > cap else ""), va="center", fontsize=8)
            else:
                ax.text(v / 1.05, i, text, va="center", ha="right", fontsize=8)
            if r.goal is not None:
                ax.plot([r.goal.ratio] * 2, [i - 0.42, i + 0.42], color="black", linewidth=2.2)
        ax.set_yticks(y)
        ax.set_yticklabels([f"{r.scenario} [{r.via}]" for r in plotted], fontsize=8)
        for label, r in zip(ax.get_yticklabels(), plotted, strict=True):
            if r.goal is not None:
                label.set_fontweight("bold")  # the rows the issue sets goals for
        ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50) if lo <= t <= hi]
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}{TIMES}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("ratio, log scale:   ← dockerd better  |  Berth better →", fontsize=9)
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color="#2e9e5b", label="goal met"), Patch(color="#d64545", label="goal missed"),
                           Patch(color="#9aa5b1", label="no goal (bold rows have one)"),
                           Line2D([], [], color="black", linewidth=2.2, label="goal")],
                  loc="lower right", fontsize=8, framealpha=0.9)
        ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10, wrap=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
