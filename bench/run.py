#!/usr/bin/env python3
"""Benchmark: infratool vs pyinfra vs ansible-core vs a raw Fabric loop, side by side.

For each host count, brings up a lab of N real sshd hosts on a private
loopback subnet, gives all four tools the same converge (bench/spec.py: five
files with content and mode, two nix.conf settings), the same key, the same
pinned host keys and the same parallelism, and times for each tool, in
rotating order, ``--repeat`` times:

* the **first run**: hosts reset (files removed, nix.conf restored), so every
  tool makes the same changes;
* the **no-op run** right after: everything in place; the script checks that
  no file was rewritten (same inode and mtime) and that the state is right.

Also times each tool's start-up (``infratool --help``, median of 10). Prints
a table of seconds and ratios and records the numbers in
``bench/results/hosts-N.json`` and ``docs/performance.md`` (with
``--no-docs``: in ``bench/results/trial-hosts-N.json`` only).

Usage (as root, after scripts/setup.sh; the peers are installed on demand)::

    python bench/run.py --hosts 16
    python bench/run.py --hosts 16 64 --repeat 5
    python bench/run.py --quick        # CI's regression guard: 16 hosts, 1 round, < 1 min

``--quick`` runs infratool and the raw Fabric loop only (pyinfra too when
its venv already exists), prints one ``ratio ...`` line per peer, writes
``bench/results/quick.json`` and leaves docs/ alone; it never fails on a
missed target (exit 0 unless the benchmark itself broke).

Other targets' scripts (issue 19 §4 ``nixos_deploy.py``, §5
``rotation_scale.py``, and any ``bench/target_*.py``) are run after the
tables when they exist (``--no-others`` to skip; with ``--quick`` only when
``--others`` is given), and their lines mentioning a ratio are printed.

This is not part of the test suite: nothing here asserts; it measures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bytecode  # noqa: E402
import hoststate  # noqa: E402
import machine  # noqa: E402
import measure  # noqa: E402
import peers  # noqa: E402
import report  # noqa: E402
import spec  # noqa: E402
from tools import Tool, make_tools  # noqa: E402

RESULTS = HERE / "results"
DOCS = HERE.parent / "docs" / "performance.md"
TOOL_KEYS = ("infratool", "fabric", "pyinfra", "ansible")


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def start_lab(root: Path, count: int, subnet: str | None):
    """Bring up ``count`` hosts on the first free 127.200.x subnet (or ``subnet``)."""
    from infratool_lab import AddressInUseError, Lab

    candidates = [subnet] if subnet else [f"127.200.{x}" for x in range(11, 250)]
    for candidate in candidates:
        lab = Lab(root, subnet=candidate)
        try:
            start = time.monotonic()
            lab.up(count)
            # Measured here, not asserted in tests/test_lab.py: a time bound flakes under load.
            log(f"lab up: {count} hosts in {time.monotonic() - start:.1f} s")
            return lab
        except AddressInUseError:
            lab.down()
            continue
    raise SystemExit("bench: no free 127.200.x subnet for the lab")


def timed_run(tool: Tool, out: Path) -> measure.Sample:
    """One converge by ``tool``, its cleanup outside the timing."""
    try:
        return measure.run(tool.argv, cwd=tool.cwd, env=tool.env, log=out)
    finally:
        tool.after()


def bench_tool_round(
    tool: Tool, hosts: list[hoststate.HostFiles], logs: Path, rep: int
) -> tuple[measure.Sample, measure.Sample, list[str]]:
    """Reset, first run, check; no-op run, check nothing was rewritten. Returns (first, no-op, problems)."""
    for h in hosts:
        h.reset()
    first = timed_run(tool, logs / f"{tool.key}-first-{rep}.log")
    problems = [p for h in hosts for p in h.problems()]
    if first.exit != 0:
        problems.insert(0, f"first run exited {first.exit}: {first.output[-400:]}")
    before = {k: v for h in hosts for k, v in h.stamps().items()} if not problems else {}
    noop = timed_run(tool, logs / f"{tool.key}-noop-{rep}.log")
    if noop.exit != 0:
        problems.append(f"no-op run exited {noop.exit}: {noop.output[-400:]}")
    if before:
        after = {k: v for h in hosts for k, v in h.stamps().items()}
        rewritten = sorted(k for k in before if before[k] != after.get(k))
        if rewritten:
            problems.append(f"no-op run rewrote {len(rewritten)} file(s), e.g. {rewritten[0]}")
    problems += [p for h in hosts for p in h.problems()]
    return first, noop, problems


def startup_times(tools: list[Tool], runs: int) -> dict[str, list[float]]:
    """Wall seconds of each tool's start-up command, ``runs`` times (after one warm-up)."""
    result = {}
    for tool in tools:
        measure.run(tool.startup, env=tool.env)
        result[tool.key] = [measure.run(tool.startup, env=tool.env).wall for _ in range(runs)]
    return result


def bench_hosts(args: argparse.Namespace, count: int, peers_bin: Path, versions: dict) -> dict:
    """The whole benchmark for one host count; returns the results record."""
    workdir = Path(tempfile.mkdtemp(prefix=f"infratool-bench-{count}-"))
    lab = None
    try:
        log(f"{count} hosts: starting the lab in {workdir}")
        lab = start_lab(workdir / "lab", count, args.subnet)
        log(f"{count} hosts up on {lab.subnet}.x")
        inputs = spec.Inputs(workdir / "inputs", lab.inventory_path, lab.known_hosts_path, lab.admin_key)
        targets = [spec.Target(h.name, h.address) for h in lab.hosts()]
        spec.write_inputs(inputs, targets, args.forks)
        hosts = [hoststate.HostFiles(h.name, h.path) for h in lab.hosts()]
        tools = [t for t in make_tools(inputs, peers_bin, args.forks) if t.key in args.tools]
        logs = workdir / "logs"
        logs.mkdir()
        record: dict = {
            "hosts": count,
            "forks": args.forks,
            "repeat": args.repeat,
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine.describe(),
            "versions": versions,
            "tools": {
                t.key: {
                    "label": t.label,
                    "first": [],
                    "noop": [],
                    "first_cpu": [],
                    "noop_cpu": [],
                    "maxrss_kib": 0,
                    "problems": [],
                }
                for t in tools
            },
        }
        if args.startup:
            log("start-up times")
            record["startup"] = startup_times(tools, 10)
        # Warm the page cache and the hosts (sshd, shells) with one unmeasured round of the fast tools.
        for tool in tools:
            if tool.key in ("infratool", "fabric"):
                bench_tool_round(tool, hosts, logs, -1)
        for rep in range(args.repeat):
            order = tools[rep % len(tools) :] + tools[: rep % len(tools)]
            for tool in order:
                first, noop, problems = bench_tool_round(tool, hosts, logs, rep)
                entry = record["tools"][tool.key]
                entry["first"].append(round(first.wall, 4))
                entry["noop"].append(round(noop.wall, 4))
                entry["first_cpu"].append(round(first.cpu, 3))
                entry["noop_cpu"].append(round(noop.cpu, 3))
                entry["maxrss_kib"] = max(entry["maxrss_kib"], first.maxrss_kib, noop.maxrss_kib)
                entry["problems"] += problems
                flag = f"  PROBLEMS: {problems[:2]}" if problems else ""
                log(
                    f"{count} hosts, round {rep + 1}/{args.repeat}: {tool.key:9s} "
                    f"first {first.wall:6.2f}s  no-op {noop.wall:6.2f}s{flag}"
                )
        record["machine"]["load_after"] = machine.describe()["load"]
        return record
    finally:
        if lab is not None:
            lab.down()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# Scripts of issue 19's other targets, run after the tables when they exist:
# name → (arguments for --quick, arguments otherwise, what it measures).
OTHER_TARGETS = {
    "nixos_deploy.py": (["--rounds", "1"], ["--rounds", "3"], "§4 NixOS deploys, 4 hosts ÷ 1"),
    "rotation_scale.py": (["--repeat", "1"], ["--repeat", "5"], "§5 rotation, 20 secrets ÷ 1"),
}


def other_targets(quick: bool) -> list[str]:
    """The ratio lines of issue 19's other target scripts (and any ``bench/target_*.py``), run in turn."""
    scripts = [(HERE / name, spec) for name, spec in OTHER_TARGETS.items()]
    scripts += [(path, ([], [], path.stem)) for path in sorted(HERE.glob("target_*.py"))]
    lines = []
    for script, (quick_args, full_args, what) in scripts:
        if not script.exists():
            continue
        log(f"running {script.name}")
        argv = [sys.executable, str(script), *(quick_args if quick else full_args)]
        proc = subprocess.run(argv, capture_output=True, text=True)
        # Plain lines ("ratio 20/1: 2.10 (target ≤ 3)") or a markdown table row ("| **ratio 4 / 1** | ...").
        found = [
            " ".join(line.replace("**", "").replace("|", " ").split())
            for line in proc.stdout.splitlines()
            if "ratio" in line.lower()
        ]
        if proc.returncode != 0 or not found:
            found = [f"no result (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"]
        lines += [f"ratio {what} ({script.name}): {line}" for line in found]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every host count, print and record the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[16], help="host counts (e.g. 4 16 64)")
    parser.add_argument("--repeat", type=int, default=3, help="measured rounds per tool (default 3)")
    parser.add_argument("--forks", type=int, default=16, help="parallelism for every tool (default 16)")
    parser.add_argument("--tools", default=",".join(TOOL_KEYS), help="comma-separated subset")
    parser.add_argument("--subnet", help="lab subnet (default: first free 127.200.x)")
    parser.add_argument("--no-startup", dest="startup", action="store_false", help="skip start-up timing")
    parser.add_argument(
        "--no-docs",
        dest="docs",
        action="store_false",
        help="do not touch docs/ nor the recorded results (this run's go to bench/results/trial-hosts-N.json)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the lab directory and logs")
    parser.add_argument(
        "--quick", action="store_true", help="CI guard: 16 hosts, 1 round, no docs, never fails"
    )
    parser.add_argument(
        "--others",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run issue 19's other target scripts (default: yes, except with --quick)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.hosts, args.repeat, args.startup, args.docs = [16], 1, False, False
        args.tools = "infratool,fabric" + (",pyinfra" if peers.installed() else "")
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(args.tools) - set(TOOL_KEYS)
    if unknown or "infratool" not in args.tools:
        parser.error(f"--tools: infratool plus any of {', '.join(TOOL_KEYS[1:])} (unknown: {unknown or '-'})")

    needs_peers = bool({"pyinfra", "ansible"} & set(args.tools))
    peers_bin = peers.ensure(log) if needs_peers or not args.quick else peers.VENV / "bin"
    versions = peers.versions(peers_bin) if peers.installed() else {}
    command = "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    RESULTS.mkdir(exist_ok=True)
    # Before any timing: infratool's modules as .pyc, like the peers' site-packages (bench/bytecode.py).
    if not bytecode.ensure():
        log("some of infratool's modules did not compile (see above); timed runs compile them each time")
    started = time.monotonic()
    startup: dict[str, list[float]] = {}
    records = []
    for count in args.hosts:
        record = bench_hosts(args, count, peers_bin, versions)
        record["command"] = command
        # Start-up does not depend on the lab: measured once per invocation, shown with every table.
        startup = record.setdefault("startup", startup)
        args.startup = False
        # The record docs/performance.md is built from is only replaced by a run
        # that also writes the docs; a --no-docs trial keeps its own file.
        name = f"hosts-{count}.json" if args.docs else f"trial-hosts-{count}.json"
        name = "quick.json" if args.quick else name
        (RESULTS / name).write_text(json.dumps(record, indent=1) + "\n")
        print(report.table(record))
        print("\n".join(report.ratio_lines(record)), flush=True)
        records.append(record)
    for line in report.marginal_lines(records):
        print(line, flush=True)
    if args.others or (args.others is None and not args.quick):
        for line in other_targets(args.quick):
            print(line, flush=True)
    if args.docs:
        report.write_docs(DOCS, sorted(RESULTS.glob("hosts-*.json")))
        log(f"wrote {DOCS}")
    log(f"done in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
