#!/usr/bin/env python3
"""Benchmark: rotation at fleet scale (issue 19 §5) — 20 secrets vs 1, as a ratio.

Brings up a two-host lab, writes two rotation policies into its flake repo:

* ``one``: one secret with two consumers (a 0600 file on each host, verified
  by reading it back against the value on stdin);
* ``many``: 20 such secrets, all in one sops file;

and times ``infratool secrets rotate --all --yes --policy ...`` for each, in
alternating order, ``--repeat`` times (after one warm-up rotation of each,
so the secrets exist and every timed run is a real rotation with a previous
value). Every run is checked: exit 0, each host's file holds the promoted
value. Prints the medians and the ratio many/one (target: ≤ 3).

Usage (as root, after scripts/setup.sh)::

    python bench/rotation_scale.py --repeat 5

This is not part of the test suite: nothing here asserts; it measures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bytecode  # bench/, this script's directory

HOSTS = ("snix", "slax")
REPO = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    """Progress on stderr (the result goes to stdout)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def policy(count: int, tag: str) -> str:
    """A policy of ``count`` secrets in ``secrets/bench-<tag>.yaml``, each consumed on both hosts."""
    lines = ["secrets:"]
    for i in range(count):
        name = f"bench-{tag}/s{i:02d}"
        path = f"/var/lib/bench/{tag}-s{i:02d}"
        lines += [
            f"  {name}:",
            f"    file: secrets/bench-{tag}.yaml",
            "    generator: password",
            "    params: {length: 32}",
            "    consumers:",
        ]
        for host in HOSTS:
            lines += [
                f"      - host: {host}",
                f'        file: {{path: {path}, mode: "0600", owner: root}}',
                f'        verify: \'read -r v && [ "$(cat {path})" = "$v" ]\'',
            ]
    return "\n".join(lines) + "\n"


def rotate(inventory: Path, policy_rel: str, env: dict[str, str], profile: Path | None = None) -> float:
    """One `secrets rotate --all` run; its wall seconds (exits on failure); ``profile``: cProfile it."""
    prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
    argv = [
        sys.executable,
        *prof,
        "-m",
        "infratool",
        "-q",
        "-i",
        str(inventory),
        "secrets",
        "rotate",
        "--all",
        "--yes",
    ]
    start = time.monotonic()
    # From the repo this script belongs to: `python -m` imports infratool from the cwd first.
    proc = subprocess.run([*argv, "--policy", policy_rel], env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"bench: rotate {policy_rel} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return wall


def check(lab, tag: str, count: int, env: dict[str, str]) -> None:
    """Each host's files hold the promoted values (decrypted from sops)."""
    from infratool.secrets.store import SopsStore

    store = SopsStore(lab.flake_dir / "secrets", env=env)
    values = store.read(f"bench-{tag}.yaml")
    for i in range(count):
        want = values[f"bench-{tag}/s{i:02d}"].reveal()
        for host in HOSTS:
            got = lab.host(host).path(f"/var/lib/bench/{tag}-s{i:02d}").read_text()
            if got != want:
                raise SystemExit(f"bench: {host} holds a stale value of bench-{tag}/s{i:02d}")


def main() -> None:
    """Run the benchmark; print medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (median) [3]")
    parser.add_argument("--many", type=int, default=20, help="secrets in the large policy [20]")
    parser.add_argument("--profile", type=Path, help="also write a cProfile of one more run of each here")
    args = parser.parse_args()

    from infratool_lab import AddressInUseError, Lab

    from infratool.onboard.scaffold import ensure_operator_repo

    # Before any timing: the infratool `python -m` imports from REPO, as .pyc (bench/bytecode.py).
    bytecode.ensure([REPO / "infratool"])
    root = Path(tempfile.mkdtemp(prefix="infratool-bench-rotation-"))
    lab = None
    for x in range(11, 250):
        lab = Lab(root / "lab", subnet=f"127.201.{x}")
        try:
            lab.up(len(HOSTS))
            break
        except AddressInUseError:
            lab.down()
    assert lab is not None
    try:
        key = lab.root / "age.key"
        ensure_operator_repo(lab.flake_dir, key)
        env = {**os.environ, "SOPS_AGE_KEY_FILE": str(key)}
        for host in HOSTS:
            lab.exec(host, "mkdir -p /var/lib/bench")
        (lab.flake_dir / "secrets" / "bench-one-policy.yaml").write_text(policy(1, "one"))
        (lab.flake_dir / "secrets" / "bench-many-policy.yaml").write_text(policy(args.many, "many"))
        runs = {"one": [], "many": []}
        for tag in ("one", "many"):  # warm-up: the first generation of every secret
            rotate(lab.inventory_path, f"secrets/bench-{tag}-policy.yaml", env)
        for rep in range(args.repeat):
            order = ("one", "many") if rep % 2 == 0 else ("many", "one")
            for tag in order:
                runs[tag].append(rotate(lab.inventory_path, f"secrets/bench-{tag}-policy.yaml", env))
                check(lab, tag, 1 if tag == "one" else args.many, env)
            log(f"round {rep + 1}: one {runs['one'][-1]:.2f} s, many {runs['many'][-1]:.2f} s")
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for tag in ("one", "many"):
                rotate(
                    lab.inventory_path, f"secrets/bench-{tag}-policy.yaml", env, args.profile / f"{tag}.prof"
                )
        one, many = statistics.median(runs["one"]), statistics.median(runs["many"])
        print(f"rotation at scale: 1 secret x 2 consumers: {one:.2f} s (median of {args.repeat})")
        print(f"rotation at scale: {args.many} secrets x 2 consumers: {many:.2f} s (median of {args.repeat})")
        print(f"ratio {args.many}/1: {many / one:.2f} (target ≤ 3)")
    finally:
        lab.down()


if __name__ == "__main__":
    main()
