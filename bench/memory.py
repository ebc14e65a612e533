#!/usr/bin/env python3
"""Peak controller memory: one large managed file, and the normal site run on many hosts.

Issue 19 §3: memory bounded by the work, not the data. Measures the peak RSS
(``wait4``'s ``ru_maxrss``, the controller's process tree) of:

* ``infratool run --yes`` of one ``files.content`` whose template (or
  verbatim ``source``) is ``--size-mb`` MB, on one lab host: the first run
  (the file is created), then the no-op run; each checked (exact size on
  the host, exit 0);
* the benchmark's converge (bench/spec.py) on ``--hosts`` hosts, first and
  no-op, beside the raw Fabric loop doing the same work.

``--baseline COMMIT`` also runs the large-template case with the code of
COMMIT (exported to a temp dir, put first on PYTHONPATH), for a before/after.

Usage (as root, after scripts/setup.sh)::

    python bench/memory.py                        # 86 MB file, site run on 64 hosts
    python bench/memory.py --size-mb 86 --hosts 64 --baseline main

Prints a table, writes bench/results/memory.json and the memory block of
docs/performance.md (``--no-docs`` to leave it). Nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bytecode  # noqa: E402
import hoststate  # noqa: E402
import machine  # noqa: E402
import measure  # noqa: E402
import spec  # noqa: E402
from report import markdown_table  # noqa: E402
from run import log, start_lab  # noqa: E402

RESULTS = HERE / "results"
DOCS = HERE.parent / "docs" / "performance.md"
BEGIN = "<!-- bench:memory:begin (written by bench/memory.py; edit outside these markers) -->"
END = "<!-- bench:memory:end -->"
TARGET = "/var/lib/bench-big/data.txt"
LINE = "{:09d} a line of generated data served by $host, padded to a usual width ....\n"


def big_text(path: Path, size_mb: int) -> int:
    """Write a text file of about ``size_mb`` MB with a ``$host`` on every line; returns its size."""
    count = size_mb * 1_000_000 // len(LINE.format(0))
    with open(path, "w") as f:
        for start in range(0, count, 10_000):
            f.write("".join(LINE.format(i) for i in range(start, min(start + 10_000, count))))
    return path.stat().st_size


def infratool_argv(inventory: Path, playbook: Path) -> list[str]:
    """``python -m infratool run --yes`` (so a PYTHONPATH override picks the code under test)."""
    return [sys.executable, "-m", "infratool", "-i", str(inventory), "run", str(playbook), "--yes"]


def sample_row(case: str, code: str, s: measure.Sample, ok: str) -> dict:
    """One measured case, as recorded."""
    return {
        "case": case,
        "code": code,
        "wall": round(s.wall, 2),
        "cpu": round(s.cpu, 2),
        "maxrss_mib": round(s.maxrss_kib / 1024, 1),
        "exit": s.exit,
        "check": ok,
    }


def big_file_cases(workdir: Path, size_mb: int, baseline: Path | None) -> list[dict]:
    """The large managed file on one host: template and verbatim source, first and no-op runs."""
    lab = start_lab(workdir / "lab-big", 1, None)
    try:
        host = lab.hosts()[0]
        tpl = workdir / "big.tpl"
        size = big_text(tpl, size_mb)
        lines = size // len(LINE.format(0))
        expected = size + lines * (len(host.name) - len("$host"))
        rows = []
        codes = [("this branch", None)] + ([("baseline", baseline)] if baseline else [])
        for kind in ("template", "source"):
            for code, pythonpath in codes:
                if kind == "source" and pythonpath is not None:
                    continue  # the baseline has no `source:`
                playbook = workdir / f"big-{kind}.yaml"
                playbook.write_text(
                    "name: big\nhosts: all\ntasks:\n"
                    f"  - task: files.content\n    with: {{path: {TARGET}, {kind}: {tpl.name}, mode: '0644'}}\n"
                )
                env = {**os.environ, "NO_COLOR": "1", "INFRATOOL_AUDIT_LOG": str(workdir / "audit.jsonl")}
                if pythonpath is not None:
                    env["PYTHONPATH"] = str(pythonpath)
                shutil.rmtree(host.path("/var/lib/bench-big"), ignore_errors=True)
                want = expected if kind == "template" else size
                for phase in ("first run", "no-op"):
                    s = measure.run(
                        infratool_argv(lab.inventory_path, playbook),
                        cwd=workdir,
                        env=env,
                        log=workdir / f"{kind}-{code}-{phase}.log",
                    )
                    written = host.path(TARGET)
                    got = written.stat().st_size if written.exists() else None
                    check = "ok" if s.exit == 0 and got == want else f"size {got}, want {want}"
                    rows.append(sample_row(f"{size / 1e6:.0f} MB {kind}, {phase}", code, s, check))
                    log(f"{rows[-1]}")
        return rows
    finally:
        lab.down()


def site_cases(workdir: Path, count: int, forks: int) -> list[dict]:
    """The benchmark's converge on ``count`` hosts: infratool and the raw Fabric loop, first and no-op."""
    from tools import make_tools

    lab = start_lab(workdir / "lab-site", count, None)
    try:
        inputs = spec.Inputs(workdir / "inputs", lab.inventory_path, lab.known_hosts_path, lab.admin_key)
        spec.write_inputs(inputs, [spec.Target(h.name, h.address) for h in lab.hosts()], forks)
        hosts = [hoststate.HostFiles(h.name, h.path) for h in lab.hosts()]
        rows = []
        for tool in [
            t for t in make_tools(inputs, Path("/nonexistent"), forks) if t.key in ("infratool", "fabric")
        ]:
            for h in hosts:
                h.reset()
            for phase in ("first run", "no-op"):
                s = measure.run(
                    tool.argv, cwd=tool.cwd, env=tool.env, log=workdir / f"{tool.key}-{phase}.log"
                )
                problems = [p for h in hosts for p in h.problems()]
                check = "ok" if s.exit == 0 and not problems else (problems[:1] or [f"exit {s.exit}"])[0]
                rows.append(sample_row(f"site run, {count} hosts, {phase}", tool.label, s, check))
                log(f"{rows[-1]}")
        return rows
    finally:
        lab.down()


def export_commit(commit: str, dest: Path) -> Path:
    """The ``infratool`` package of ``commit``, exported under ``dest`` (for PYTHONPATH)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(HERE.parent), "archive", commit, "infratool"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def docs_block(record: dict) -> str:
    """The memory block of docs/performance.md."""
    body = [
        [r["case"], r["code"], f"{r['maxrss_mib']:.0f}", f"{r['wall']:.2f}", f"{r['cpu']:.2f}", r["check"]]
        for r in record["rows"]
    ]
    return "\n".join(
        [
            BEGIN,
            "",
            f"`{record['command']}` — {record['when']}, load {record['load']} → {record['load_after']}",
            "",
            markdown_table(["case", "code", "peak RSS MiB", "wall s", "CPU s", "check"], body),
            "",
            END,
        ]
    )


def write_docs(record: dict) -> None:
    """Replace the memory block of docs/performance.md (append one if it has none)."""
    text = DOCS.read_text()
    block = docs_block(record)
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        text = head + block + rest.partition(END)[2]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOCS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Run the cases, print and record them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=86, help="size of the large file (default 86)")
    parser.add_argument("--hosts", type=int, default=64, help="hosts of the site run (0: skip; default 64)")
    parser.add_argument("--forks", type=int, default=16)
    parser.add_argument("--baseline", help="also run the large template with this commit's code")
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="infratool-memory-"))
    command = "python bench/memory.py " + " ".join(sys.argv[1:] if argv is None else argv)
    record = {
        "command": command.strip(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "load": machine.describe()["load"],
    }
    try:
        baseline = export_commit(args.baseline, workdir / "baseline") if args.baseline else None
        # Before any timing: every infratool that is run, as .pyc (bench/bytecode.py).
        bytecode.ensure([baseline / "infratool"] if baseline else None)
        rows = big_file_cases(workdir, args.size_mb, baseline)
        if args.hosts:
            rows += site_cases(workdir, args.hosts, args.forks)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    record["rows"] = rows
    record["load_after"] = machine.describe()["load"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(record, indent=1) + "\n")
    print(docs_block(record))
    if args.docs:
        write_docs(record)
        log(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
