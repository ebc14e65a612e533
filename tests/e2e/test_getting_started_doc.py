"""docs/getting-started.md, executed the way a reader would: every command, in order, on a lab.

Each fenced block is read as a terminal session: ``$ COMMAND`` runs in one
shell whose working directory and exports carry over to the next command (a
heredoc's lines belong to its command); ``HOST# COMMAND`` runs on that lab
host's console; the other lines are the output the doc shows. A command
must exit 0, unless the doc's output shows an ``error:`` line: then it must
fail. Every output line the doc shows must appear in the real output, after
the substitutions a reader makes without thinking: their own subnet, home
directory, host keys, fingerprints and age recipients (paired, in order of
appearance, with the ones the doc shows). Progress lines (``[  0.16s] ...``)
are timing, not content, and are not compared.

Hidden steps a reader does not type but the story needs (a host reinstalled
between two sections) are HTML comments: ``<!-- lab: regenerate-host-key slax -->``.
Lines in ``sh`` blocks that need the network (``pip install``, ``nix run``)
are skipped; the rest run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from infratool_lab import AddressInUseError, Lab, LabUnavailable

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "getting-started.md"
DOC_SUBNET = "127.213.42"
DOC_HOME = "/tmp/onb-doc/home"
NEEDS_NETWORK = ("pip install", "nix run")
PROGRESS = re.compile(r"^\[\s*\d+\.\d+s\] ")
TOKENS = [
    re.compile(r"SHA256:[A-Za-z0-9+/]{43}"),
    re.compile(r"age1[0-9a-z]{58}"),
    re.compile(r"AAAAC3NzaC1lZDI1NTE5[A-Za-z0-9+/]{48}"),
]


@dataclass
class Step:
    """One command of the doc, with the output the doc shows for it."""

    command: str
    host: str | None = None  # run on this lab host's console
    shown: list[str] = field(default_factory=list)
    hidden: bool = False  # an HTML-comment step
    line: int = 0
    console: bool = False  # from a session block (its output follows it in the doc)

    @property
    def expect_failure(self) -> bool:
        return any(line.startswith("error:") for line in self.shown)


def parse(text: str) -> list[Step]:
    """The doc's steps, in order."""
    steps: list[Step] = []
    lines = text.splitlines()
    i, fence = 0, None
    while i < len(lines):
        line = lines[i]
        if fence is None:
            m = re.match(r"<!-- lab: (.+) -->", line)
            if m:
                steps.append(Step(m.group(1), hidden=True, line=i + 1))
            elif line.startswith("```"):
                fence = line[3:].strip()
            i += 1
            continue
        if line.startswith("```"):
            fence = None
            i += 1
            continue
        if fence in ("", "console"):
            host = re.match(r"^([a-z][a-z0-9-]*)# (.*)$", line)
            if line.startswith("$ "):
                command = line[2:]
                heredoc = re.search(r"<<'?(\w+)'?", command)
                if heredoc:
                    end = heredoc.group(1)
                    while lines[i] != end:
                        i += 1
                        command += "\n" + lines[i]
                steps.append(Step(command, line=i + 1, console=True))
            elif host:
                steps.append(Step(host.group(2), host=host.group(1), line=i + 1, console=True))
            elif steps and not steps[-1].hidden:
                steps[-1].shown.append(line)
        elif fence == "sh":
            command = line.split("  #")[0].strip()
            if command and not command.startswith("#") and not command.startswith(NEEDS_NETWORK):
                steps.append(Step(command, line=i + 1))
        i += 1
    return steps


class Reader:
    """Runs the steps in one shell session (cwd and exports carry over)."""

    def __init__(self, home: Path, subnet: str) -> None:
        self.home = home
        self.subnet = subnet
        self.cwd = home
        self.state = home.parent / "shell-state.sh"
        self.subs: dict[str, str] = {DOC_SUBNET: subnet, DOC_HOME: str(home)}
        bindir = Path(sys.executable).parent
        self.env = {
            "HOME": str(home),
            "PATH": f"{bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "NO_COLOR": "1",
            "LANG": "C.UTF-8",
            "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
            # The audit log of the test run, not the reader's ~/.local/state.
            "INFRATOOL_AUDIT_LOG": os.environ["INFRATOOL_AUDIT_LOG"],
        }
        self.lab: Lab | None = None

    def substitute(self, text: str) -> str:
        for old, new in self.subs.items():
            text = text.replace(old, new)
        return text

    def learn(self, shown: list[str], actual: str) -> None:
        """Pair the keys, fingerprints and recipients the doc shows with the real ones."""
        for pattern in TOKENS:
            doc_tokens = list(dict.fromkeys(pattern.findall("\n".join(shown))))
            real_tokens = list(dict.fromkeys(pattern.findall(actual)))
            for doc, real in zip(doc_tokens, real_tokens, strict=False):
                self.subs.setdefault(doc, real)

    def run(self, step: Step) -> tuple[int, str]:
        command = self.substitute(step.command)
        if step.hidden:
            return self._hidden(command)
        if step.host:
            assert self.lab is not None, "a host console before `lab up`"
            proc = self.lab.exec(step.host, command)
            return proc.returncode, (proc.stdout + proc.stderr).decode()
        script = (
            f"[ -f {self.state} ] && . {self.state}\n"
            f"cd {shlex.quote(str(self.cwd))}\n"
            f"{{ {command}\n}} </dev/null 2>&1\n"
            "rc=$?\n"
            f"export -p > {self.state}; pwd > {self.state}.cwd\n"
            "exit $rc\n"
        )
        proc = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, env=self.env, timeout=600
        )
        self.cwd = Path(Path(f"{self.state}.cwd").read_text().strip())
        if "lab up" in command and proc.returncode == 0:
            lab_dir = re.search(r"INFRATOOL_LAB_DIR=(\S+)", Path(self.state).read_text())
            assert lab_dir, "the doc starts the lab without exporting INFRATOOL_LAB_DIR"
            self.lab = Lab(Path(lab_dir.group(1).strip("'\"")))
        return proc.returncode, proc.stdout + proc.stderr

    def _hidden(self, command: str) -> tuple[int, str]:
        verb, host = command.split()
        assert self.lab is not None
        if verb == "regenerate-host-key":
            self.lab.regenerate_host_key(host)
            return 0, ""
        raise AssertionError(f"unknown hidden step {command!r}")


AGE = re.compile(r"\bage=\d+[smhd]\b")  # a secret's age in `secrets status`: seconds differ


def _compare(reader: Reader, step: Step, actual: str) -> list[str]:
    missing = []
    real_lines = {AGE.sub("age=N", line.rstrip()) for line in actual.splitlines()}
    for shown in step.shown:
        if PROGRESS.match(shown) or not shown.strip():
            continue
        want = AGE.sub("age=N", reader.substitute(shown).rstrip())
        if want not in real_lines:
            missing.append(want)
    return missing


def _record(steps: list[Step], outputs: dict[int, str], reader: Reader) -> str:
    """The doc with each command's shown output replaced by the real one (``DOC_RECORD=1``).

    Real values map back to the doc's subnet and home directory so a re-run
    reads the same; keys and fingerprints are the new run's.
    """
    back = {DOC_HOME: str(reader.home), DOC_SUBNET: reader.subnet}
    lines = DOC.read_text().splitlines()
    by_line = {s.line: s for s in steps if s.console}
    out: list[str] = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        step = by_line.get(i + 1)
        i += 1
        if step is None:
            continue
        if "\n" not in step.command:
            # The command as this run typed it (its keys and fingerprints are the new ones).
            typed = reader.substitute(step.command)
            for doc, real in back.items():
                typed = typed.replace(real, doc)
            out[-1] = (f"{step.host}# " if step.host else "$ ") + typed
        # Skip the old output: up to the next command, console line or fence.
        while i < len(lines) and not (
            lines[i].startswith(("$ ", "```")) or re.match(r"^[a-z][a-z0-9-]*# ", lines[i])
        ):
            i += 1
        text = outputs.get(step.line, "")
        for doc, real in back.items():
            text = text.replace(real, doc)
        out.extend(line.rstrip() for line in text.rstrip("\n").splitlines() if text.strip())
    return "\n".join(out) + "\n"


def test_getting_started_runs_as_written(tmp_path, lab_subnet):
    try:
        Lab(tmp_path / "probe").preflight()
    except LabUnavailable as exc:
        pytest.skip(f"no lab on this machine: {exc}")
    home = tmp_path / "home"
    home.mkdir()
    reader = Reader(home, lab_subnet)
    steps = parse(DOC.read_text())
    assert len(steps) > 20
    problems: list[str] = []
    outputs: dict[int, str] = {}
    try:
        for step in steps:
            code, output = reader.run(step)
            outputs[step.line] = output
            where = f"docs/getting-started.md:{step.line}: {step.command.splitlines()[0]}"
            if "lab up" in step.command and "address already in use" in output.lower():
                raise AddressInUseError(output)
            if step.expect_failure and code == 0:
                problems.append(f"{where}: the doc shows an error, it succeeded:\n{output}")
            elif not step.expect_failure and code != 0:
                problems.append(f"{where}: exit {code}:\n{output}")
            reader.learn(step.shown, output)
            missing = _compare(reader, step, output)
            if missing:
                problems.append(
                    f"{where}: lines not in the output:\n  " + "\n  ".join(missing) + f"\n--- got:\n{output}"
                )
            if problems and code != 0 and not step.expect_failure and not os.environ.get("DOC_RECORD"):
                break  # the rest of the story depends on this step
    finally:
        if reader.lab is not None:
            reader.lab.down()
    if os.environ.get("DOC_RECORD"):
        DOC.write_text(_record(steps, outputs, reader))
        return
    assert not problems, "\n\n".join(problems)
