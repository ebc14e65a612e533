"""Issue 19 §4: NixOS deploys in parallel — 4 `lab up --nixos` hosts deployed at once vs one.

Each round changes a generated ``nix.settings`` module on the deployed
hosts (so every host really builds, copies, activates, confirms and
commits a new generation), runs ``infratool run --yes`` and times it. One
host (``--limit snix``) and four hosts (all) alternate, ``--rounds`` times;
the medians and their ratio are printed (and, with ``--write``, added to
docs/performance.md's section "NixOS deploys in parallel"). Also timed: a
run whose closure is already on the host (the deploy left pending, nothing
new to copy: ``nix copy`` is skipped after one validity check).

    .venv/bin/python bench/nixos_deploy.py --rounds 3 [--write]

Needs root (the lab). Not a test: the numbers go to docs, never into asserts.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bytecode  # bench/, this script's directory
import yaml
from infratool_lab import Lab
from infratool_lab import nixos as labnixos

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
HEADING = "## NixOS deploys in parallel (issue 19 §4)"


def _playbook(tmp: Path, value: int) -> Path:
    path = tmp / f"nix-{value}.yaml"
    task = {"task": "nix.settings", "with": {"settings": {"max-jobs": value}}}
    path.write_text(yaml.safe_dump({"name": "bench-nixos", "hosts": "all", "tasks": [task]}))
    return path


def _run(lab: Lab, book: Path, limit: str | None, env: dict[str, str]) -> float:
    argv = [sys.executable, "-m", "infratool", "-i", str(lab.inventory_path), "run", str(book), "--yes", "-q"]
    if limit:
        argv += ["--limit", limit]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return took


def main() -> None:
    """Measure and print (optionally write) the 4-vs-1 ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update docs/performance.md")
    args = parser.parse_args()
    import os

    env = {**os.environ, "NIX_CONFIG": labnixos.CONTROLLER_NIX_CONFIG, "NO_COLOR": "1"}
    bytecode.ensure()  # before any timing: infratool's modules as .pyc (bench/bytecode.py)
    with tempfile.TemporaryDirectory(prefix="bench-nixos.") as tmp_dir:
        tmp = Path(tmp_dir)
        lab = Lab(tmp / "lab", subnet=f"127.234.{random.SystemRandom().randrange(256)}")
        lab.up(4, nixos=True)
        try:
            value = 10
            _run(lab, _playbook(tmp, value), None, env)  # warm: first generation from infratool on all four
            one, four = [], []
            for _ in range(args.rounds):
                value += 1
                one.append(_run(lab, _playbook(tmp, value), "snix", env))
                value += 1
                four.append(_run(lab, _playbook(tmp, value), None, env))
            noop = _run(lab, _playbook(tmp, value), None, env)
        finally:
            lab.down()
    m1, m4 = statistics.median(one), statistics.median(four)
    lines = [
        f"| hosts deployed | median wall s ({args.rounds} rounds) |",
        "|---|---|",
        f"| 1 (--limit snix) | {m1:.2f} |",
        f"| 4 at once | {m4:.2f} |",
        f"| **ratio 4 / 1** | **{m4 / m1:.2f}** (target ≤ 1.5) |",
        f"| converged re-run (0 deploys) | {noop:.2f} |",
    ]
    print("\n".join(lines))
    if args.write:
        _write(lines, args.rounds)


def _write(lines: list[str], rounds: int) -> None:
    text = DOC.read_text()
    body = (
        f"{HEADING}\n\n"
        "Each run changes a generated `nix.settings` module, so every deployed host builds a new toplevel,\n"
        "gets its closure (the missing paths, `nix-store --export` into `nix-store --import` over the\n"
        "run's connection), activates it under the watchdog, is confirmed over a new\n"
        "connection and commits (`boot`). Reproduce with\n"
        f"`.venv/bin/python bench/nixos_deploy.py --rounds {rounds} --write` (root; `lab up --nixos` hosts).\n\n"
        + "\n".join(lines)
        + "\n"
    )
    if HEADING in text:
        start = text.index(HEADING)
        end = text.find("\n## ", start + len(HEADING))
        section = text[start:end] if end != -1 else text[start:]
        # Keep what was written by hand after the table (from its first blank line on).
        table_end = section.find("| converged re-run")
        after = section.find("\n\n", table_end) if table_end != -1 else -1
        kept = section[after:].strip("\n") if after != -1 else ""
        text = text[:start] + body + ("\n" + kept + "\n" if kept else "") + (text[end:] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    DOC.write_text(text)


if __name__ == "__main__":
    main()
