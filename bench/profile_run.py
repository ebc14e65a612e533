#!/usr/bin/env python3
"""Where infratool's time goes: phase timers and a py-spy profile of the bench converge.

Brings up a lab (default 16 hosts), then for the first run (changes needed)
and the no-op run prints (1) wall-clock phases of one run (bench/phases.py)
and (2) a py-spy profile sampled only while a thread holds the GIL
(``--gil``: what actually costs controller CPU), summed over ``--runs`` runs
and grouped by what the code was doing. py-spy comes with the peers' venv.

Usage (root)::

    python bench/profile_run.py --hosts 16 [--runs 3] [--src CHECKOUT]

``--src`` profiles another checkout.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bytecode  # noqa: E402
import hoststate  # noqa: E402
import peers  # noqa: E402
import spec  # noqa: E402
from run import start_lab  # noqa: E402

# Checked on each frame from the innermost outwards; the first frame that
# matches names the activity. A sample inside an import counts as import time
# of the first non-infratool module being imported (what the import is for).
_RULES = [
    ("render: plan", r"^plan \(infratool/render\.py"),
    ("render: results table", r"^results \(infratool/render\.py"),
    ("render: progress lines", r"\(infratool/render\.py"),
    ("ssh: handshake + auth", r"\(paramiko/(transport|kex_\w+|auth_handler|ed25519key|pkey|client)\.py"),
    ("ssh: channels and packets", r"\((paramiko|fabric|invoke)/"),
    ("facts: build + parse", r"\(infratool/facts\.py"),
    ("remote: commands", r"\(infratool/remote/"),
    ("context: deferred writes", r"\(infratool/context\.py"),
    ("plan (tasks, diffs)", r"\(infratool/(tasks/|changes\.py)|\(difflib\.py"),
    ("inventory + playbook (YAML)", r"\(infratool/(inventory|playbook|yamlsrc)\.py|\(yaml/"),
    ("audit log", r"\(infratool/log\.py|^audit_run "),
    ("runner (pool, events)", r"\(infratool/(runner|applying|runresult)\.py|\(concurrent/"),
    ("cli (click)", r"\((click|infratool/cli)/"),
]


def classify(stack: str) -> str:
    """The activity of one collapsed stack (``frame;frame;...``, outermost first)."""
    if not stack.strip():
        return "interpreter (no Python frame: start-up, teardown GC)"
    frames = stack.split(";")
    if any("_find_and_load" in f for f in frames):
        modules = [m.group(1) for f in frames if (m := re.match(r"<module> \(([^:)]+)", f))]
        for module in modules[1:]:
            if not module.startswith("infratool"):
                return f"import {module.split('/')[0].removesuffix('.py')}"
        return "import infratool (module bodies)"
    for frame in reversed(frames):
        for name, pattern in _RULES:
            if re.search(pattern, frame):
                return name
    return "other"


def summarize(raw_files: list[Path]) -> list[tuple[str, float]]:
    """Share of samples per category, largest first."""
    counts: collections.Counter[str] = collections.Counter()
    for raw in raw_files:
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if n.isdigit():
                counts[classify(stack)] += int(n)
    total = sum(counts.values()) or 1
    return [(k, 100 * v / total) for k, v in counts.most_common()]


def main() -> int:
    """Profile the first and the no-op run; print phases and shares."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--forks", type=int, default=16)
    parser.add_argument("--src", type=Path, help="checkout to profile instead of the installed infratool")
    args = parser.parse_args()
    py_spy = peers.ensure(lambda m: print(m, file=sys.stderr)) / "py-spy"
    # Before any run is profiled: infratool's modules as .pyc (bench/bytecode.py), --src's too.
    bytecode.ensure([args.src.resolve() / "infratool"] if args.src else None)
    workdir = Path(tempfile.mkdtemp(prefix="infratool-profile-"))
    lab = start_lab(workdir / "lab", args.hosts, None)
    try:
        inputs = spec.Inputs(workdir / "inputs", lab.inventory_path, lab.known_hosts_path, lab.admin_key)
        spec.write_inputs(inputs, [spec.Target(h.name, h.address) for h in lab.hosts()], args.forks)
        hosts = [hoststate.HostFiles(h.name, h.path) for h in lab.hosts()]
        env = {**os.environ, "INFRATOOL_AUDIT_LOG": str(workdir / "audit.jsonl"), "NO_COLOR": "1"}
        if args.src:
            env["PYTHONPATH"] = str(args.src.resolve())
        cli_args = ["-i", str(inputs.inventory), "run", str(inputs.infratool_playbook), "--yes"]
        cli_args += ["--forks", str(args.forks)]
        infratool = [sys.executable, "-m", "infratool", *cli_args]
        for kind in ("first", "noop"):
            raws = []
            for i in range(args.runs):
                if kind == "first":
                    for h in hosts:
                        h.reset()
                raw = workdir / f"{kind}-{i}.raw"
                subprocess.run(
                    [
                        str(py_spy),
                        "record",
                        "--gil",
                        "-r",
                        "500",
                        "-f",
                        "raw",
                        "-o",
                        str(raw),
                        "--",
                        *infratool,
                    ],
                    env=env,
                    capture_output=True,
                    check=True,
                )
                raws.append(raw)
            if kind == "first":
                for h in hosts:
                    h.reset()
            phases = subprocess.run(
                [sys.executable, str(HERE / "phases.py"), *cli_args], env=env, capture_output=True, text=True
            )
            print(f"\n## {kind} run, {args.hosts} hosts: phases of one run (wall)\n")
            print("\n".join(line for line in phases.stderr.splitlines() if not line.startswith("[")))
            print(f"\n## {kind} run: controller CPU by activity (GIL-held samples, {args.runs} runs)\n")
            for name, share in summarize(raws):
                if share >= 0.5:
                    print(f"{share:5.1f}%  {name}")
    finally:
        lab.down()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
