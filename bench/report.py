"""Tables of seconds and ratios, for the terminal and for docs/performance.md.

Ratios are infratool's median divided by the peer's median (lower is better
for infratool); each target is checked against the median ratio.
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path

# Issue targets: infratool's wall time at most this fraction of the peer's,
# (first run, no-op). Issue 19 tightened the raw Fabric loop's from 1.3.
TARGETS = {"pyinfra": (0.7, 0.7), "ansible": (1 / 3, 1 / 3), "fabric": (1.15, 1.1)}
MARGINAL_MS = 25
"""Target for infratool's no-op cost per extra host (issue 19 §2), between two host counts."""
ORDER = ("infratool", "fabric", "pyinfra", "ansible")
BEGIN = "<!-- bench:results:begin (written by bench/run.py; edit outside these markers) -->"
END = "<!-- bench:results:end -->"


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _fmt(x: float) -> str:
    return "—" if x != x else f"{x:.2f}"  # NaN → dash


def _ratio_cell(ours: float, theirs: float, target: float | None) -> str:
    if not theirs or theirs != theirs or ours != ours:
        return "—"
    ratio = ours / theirs
    if target is None:
        return f"{ratio:.2f}"
    return f"{ratio:.2f} {'✓' if ratio <= target else '✗'}"


def rows(record: dict) -> list[list[str]]:
    """One row per tool: first/no-op median and min, CPU, peak RSS, ratios."""
    tools = record["tools"]
    ours = tools["infratool"]
    out = []
    for key in ORDER:
        if key not in tools:
            continue
        t = tools[key]
        cells = []
        for i, kind in enumerate(("first", "noop")):
            if key == "infratool":
                cells.append("—")
                continue
            target = TARGETS[key][i] if key in TARGETS else None
            cell = _ratio_cell(_med(ours[kind]), _med(t[kind]), target)
            cells.append(cell + (f" (≤ {target:.2f})" if target else ""))
        out.append(
            [
                t["label"],
                f"{_fmt(_med(t['first']))} / {_fmt(min(t['first'], default=float('nan')))}",
                f"{_fmt(_med(t['noop']))} / {_fmt(min(t['noop'], default=float('nan')))}",
                f"{_fmt(_med(t['first_cpu']))} / {_fmt(_med(t['noop_cpu']))}",
                f"{t['maxrss_kib'] / 1024:.0f}",
                *cells,
                str(len(t["first"])) + ("" if not t["problems"] else f" ⚠ {len(t['problems'])} problem(s)"),
            ]
        )
    return out


HEADER = [
    "tool",
    "first run s (median / min)",
    "no-op s (median / min)",
    "CPU s first / no-op",
    "peak RSS MiB",
    "infratool ÷ tool, first (target)",
    "infratool ÷ tool, no-op (target)",
    "runs",
]


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def startup_rows(record: dict) -> list[list[str]]:
    """Start-up command of each tool: median and min of the runs."""
    labels = {
        "infratool": "`infratool --help`",
        "fabric": "`python -c 'import fabric'`",
        "pyinfra": "`pyinfra --version`",
        "ansible": "`ansible-playbook --version`",
    }
    startup = record.get("startup") or {}
    return [
        [labels[k], _fmt(_med(startup[k])), _fmt(min(startup[k])), str(len(startup[k]))]
        for k in ORDER
        if k in startup
    ]


def table(record: dict) -> str:
    """The terminal view of one host count."""
    parts = [
        f"\n{record['hosts']} hosts, forks {record['forks']}, {record['repeat']} rounds "
        f"(load {record['machine']['load']} → {record['machine'].get('load_after', '?')})",
        markdown_table(HEADER, rows(record)),
    ]
    if record.get("startup"):
        parts += ["", markdown_table(["start-up", "median s", "min s", "runs"], startup_rows(record))]
    for key, t in record["tools"].items():
        for problem in t["problems"][:3]:
            parts.append(f"⚠ {key}: {problem}")
    return "\n".join(parts)


def scaling_rows(records: list[dict]) -> list[list[str]]:
    """infratool across host counts: time, CPU and memory growth."""
    out = []
    previous = None
    for r in records:
        t = r["tools"]["infratool"]
        fab = r["tools"].get("fabric")
        marginal = fab_marginal = "—"
        if previous is not None and t["noop"] and previous["tools"]["infratool"]["noop"]:
            extra = r["hosts"] - previous["hosts"]
            ms = (_med(t["noop"]) - _med(previous["tools"]["infratool"]["noop"])) / extra * 1000
            marginal = f"{ms:.0f} {'✓' if ms <= MARGINAL_MS else '✗'} (≤ {MARGINAL_MS})"
            before = previous["tools"].get("fabric")
            if fab and fab["noop"] and before and before["noop"]:
                # The floor's own marginal, same rounds: a target below it is out of reach here.
                fab_marginal = f"{(_med(fab['noop']) - _med(before['noop'])) / extra * 1000:.0f}"
        previous = r
        out.append(
            [
                str(r["hosts"]),
                _fmt(_med(t["first"])),
                _fmt(_med(t["noop"])),
                f"{_med(t['noop']) / r['hosts'] * 1000:.0f}" if t["noop"] else "—",
                marginal,
                _fmt(_med(t["noop_cpu"])),
                f"{t['maxrss_kib'] / 1024:.0f}",
                _fmt(_med(fab["noop"])) if fab else "—",
                fab_marginal,
            ]
        )
    return out


def marginal_lines(records: list[dict]) -> list[str]:
    """``marginal no-op per extra host`` lines: infratool beside the raw Fabric loop, per pair of host counts."""
    out = []
    ordered = sorted(records, key=lambda r: r["hosts"])
    for before, after in itertools.pairwise(ordered):
        extra = after["hosts"] - before["hosts"]
        parts = []
        for key, label in (("infratool", "infratool"), ("fabric", "raw Fabric loop")):
            a, b = after["tools"].get(key), before["tools"].get(key)
            if a and b and a["noop"] and b["noop"]:
                parts.append(f"{label} {(_med(a['noop']) - _med(b['noop'])) / extra * 1000:.0f} ms")
        if parts:
            out.append(
                f"marginal no-op per extra host, {before['hosts']} → {after['hosts']} hosts: "
                f"{', '.join(parts)} (target ≤ {MARGINAL_MS} ms for infratool)"
            )
    return out


def docs_block(records: list[dict]) -> str:
    """The generated part of docs/performance.md."""
    latest = max(records, key=lambda r: r["when"])
    m, v = latest["machine"], latest["versions"]
    lines = [
        BEGIN,
        "",
        "### Machine and versions (latest run)",
        "",
        f"- measured {latest['when']} with `{latest['command']}`",
        f"- {m['cpu']}, {m['memory']} RAM, kernel {m['kernel']}, {m['os']}",
        f"- infratool {m['infratool']} on Python {m['python (infratool)']}, "
        f"fabric/paramiko {m['fabric / paramiko (infratool)']} (the raw Fabric loop uses the same)",
        f"- peers (bench/.venv-peers, Python {v.get('python', '?')}): pyinfra {v.get('pyinfra', '?')}, "
        f"ansible-core {v.get('ansible-core', '?')} (paramiko {v.get('paramiko', '?')} for pyinfra)",
        f"- {m['openssh client']} (Ansible's transport); lab sshd {m['sshd (lab hosts)']}",
        "",
    ]
    for r in sorted(records, key=lambda r: r["hosts"]):
        lines += [
            f"### {r['hosts']} hosts (forks {r['forks']}, {r['repeat']} rounds, {r['when']}, "
            f"load {r['machine']['load']} → {r['machine'].get('load_after', '?')})",
            "",
            f"`{r.get('command', 'python bench/run.py')}`",
            "",
            markdown_table(HEADER, rows(r)),
            "",
        ]
        for key, t in r["tools"].items():
            for problem in t["problems"][:3]:
                lines.append(f"- ⚠ {key}: {problem}")
    # Start-up is measured once per invocation (not with --no-startup): the latest one that has it.
    timed = [r for r in records if r.get("startup")]
    if timed:
        last = max(timed, key=lambda r: r["when"])
        lines += [
            f"### Start-up (median of 10, {last['when']})",
            "",
            markdown_table(["command", "median s", "min s", "runs"], startup_rows(last)),
            "",
        ]
    if len(records) > 1:
        lines += [
            "### Scaling (infratool)",
            "",
            markdown_table(
                [
                    "hosts",
                    "first run s",
                    "no-op s",
                    "no-op ms per host",
                    "no-op ms per extra host",
                    "no-op CPU s",
                    "peak RSS MiB",
                    "raw Fabric no-op s",
                    "raw Fabric no-op ms per extra host",
                ],
                scaling_rows(sorted(records, key=lambda r: r["hosts"])),
            ),
            "",
        ]
    lines.append(END)
    return "\n".join(lines)


def write_docs(path: Path, result_files: list[Path]) -> None:
    """Replace the generated block of ``path`` (append one if it has none)."""
    records = [json.loads(p.read_text()) for p in result_files]
    if not records:
        return
    block = docs_block(records)
    text = path.read_text() if path.exists() else "# Performance\n\n"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def ratio_lines(record: dict) -> list[str]:
    """One line per peer: infratool's first-run and no-op ratios against their targets (for CI logs)."""
    ours = record["tools"]["infratool"]
    lines = []
    for key, t in record["tools"].items():
        if key == "infratool":
            continue
        parts = []
        for i, kind in enumerate(("first", "noop")):
            target = TARGETS[key][i] if key in TARGETS else None
            cell = _ratio_cell(_med(ours[kind]), _med(t[kind]), target)
            parts.append(
                f"{'first run' if kind == 'first' else 'no-op'} {cell}"
                + (f" (≤ {target:.2f})" if target else "")
            )
        lines.append(f"ratio infratool ÷ {t['label']}, {record['hosts']} hosts: {', '.join(parts)}")
    return lines
