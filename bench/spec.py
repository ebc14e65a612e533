"""The converge every tool performs, and each tool's input files for it.

One :data:`WORK` (five files with content and mode, two nix.conf settings)
is rendered into an infratool playbook, a pyinfra inventory + deploy, an
Ansible inventory + config + playbook and a JSON spec for the raw Fabric
loop, so every tool is given exactly the same job, the same hosts, the same
key, the same pinned host keys and the same parallelism.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

NIX_CONF = "/etc/nix/nix.conf"
BENCH_DIR = "/var/lib/bench"


@dataclass(frozen=True)
class FileSpec:
    """A file every host must hold."""

    path: str
    content: str
    mode: int


@dataclass(frozen=True)
class Work:
    """The whole converge: files plus nix.conf ``key = value`` settings."""

    files: tuple[FileSpec, ...]
    settings: tuple[tuple[str, str], ...]


def _content(i: int) -> str:
    # A few lines of config-like text (~200 bytes): small files, as in a real converge.
    return "".join(f"# bench file {i}, line {n}\nsetting_{i}_{n} = value-{i * 31 + n}\n" for n in range(4))


WORK = Work(
    files=tuple(FileSpec(f"{BENCH_DIR}/file{i}.conf", _content(i), 0o640) for i in range(1, 6)),
    settings=(("max-jobs", "4"), ("keep-outputs", "true")),
)


@dataclass(frozen=True)
class Target:
    """One lab host as every tool addresses it."""

    name: str
    address: str


@dataclass(frozen=True)
class Inputs:
    """Paths of the generated inputs, one directory per benchmark."""

    root: Path
    inventory: Path  # infratool's, written by the lab
    known_hosts: Path
    key: Path

    @property
    def infratool_playbook(self) -> Path:
        """The infratool playbook."""
        return self.root / "bench.yaml"

    @property
    def pyinfra_inventory(self) -> Path:
        """pyinfra inventory module."""
        return self.root / "pyinfra_inventory.py"

    @property
    def pyinfra_deploy(self) -> Path:
        """pyinfra deploy module."""
        return self.root / "pyinfra_deploy.py"

    @property
    def ansible_dir(self) -> Path:
        """Directory with ansible.cfg, inventory.ini and playbook.yml."""
        return self.root / "ansible"

    @property
    def fabric_spec(self) -> Path:
        """JSON job for bench/fabric_loop.py."""
        return self.root / "fabric_job.json"


def write_inputs(inputs: Inputs, targets: list[Target], forks: int, work: Work = WORK) -> None:
    """Write every tool's input files for ``targets`` into ``inputs.root``."""
    inputs.root.mkdir(parents=True, exist_ok=True)
    inputs.infratool_playbook.write_text(infratool_playbook(work))
    inputs.pyinfra_inventory.write_text(pyinfra_inventory(targets, inputs))
    inputs.pyinfra_deploy.write_text(pyinfra_deploy(work))
    inputs.ansible_dir.mkdir(exist_ok=True)
    (inputs.ansible_dir / "ansible.cfg").write_text(ansible_cfg(inputs, forks))
    (inputs.ansible_dir / "inventory.ini").write_text(ansible_inventory(targets, inputs))
    (inputs.ansible_dir / "playbook.yml").write_text(ansible_playbook(work))
    job = {
        "hosts": [t.address for t in targets],
        "user": "root",
        "key": str(inputs.key),
        "known_hosts": str(inputs.known_hosts),
        "forks": forks,
        "script": fabric_script(work),
    }
    inputs.fabric_spec.write_text(json.dumps(job, indent=1))


def infratool_playbook(work: Work) -> str:
    """``bench.yaml``: one files.content per file, one nix.settings."""
    lines = ["name: bench", "hosts: all", "tasks:"]
    for f in work.files:
        lines += [
            "  - task: files.content",
            f"    with: {{path: {f.path}, content: {json.dumps(f.content)}, mode: '{f.mode:04o}'}}",
        ]
    settings = ", ".join(f"{k}: {json.dumps(v)}" for k, v in work.settings)
    lines += ["  - task: nix.settings", f"    with: {{settings: {{{settings}}}}}"]
    return "\n".join(lines) + "\n"


def pyinfra_inventory(targets: list[Target], inputs: Inputs) -> str:
    """pyinfra inventory: every host with the lab key and strict, pinned host keys."""
    data = {
        "ssh_user": "root",
        "ssh_key": str(inputs.key),
        "ssh_known_hosts_file": str(inputs.known_hosts),
        "ssh_strict_host_key_checking": "yes",
        "ssh_allow_agent": False,
        "ssh_look_for_keys": False,
    }
    rows = ",\n".join(f"    ({t.address!r}, DATA)" for t in targets)
    return f"DATA = {data!r}\n\nlab = [\n{rows},\n]\n"


def pyinfra_deploy(work: Work) -> str:
    """pyinfra deploy: files.put from memory with a mode, files.line per setting."""
    out = ["from io import StringIO", "", "from pyinfra.operations import files", ""]
    for f in work.files:
        out.append(
            f"files.put(name={f'put {f.path}'!r}, src=StringIO({f.content!r}), dest={f.path!r}, "
            f"mode={f'{f.mode:o}'!r})"
        )
    for key, value in work.settings:
        pattern, line = _setting_regex(key), f"{key} = {value}"
        out.append(
            f"files.line(name={f'nix.conf {key}'!r}, path={NIX_CONF!r}, line={pattern!r}, replace={line!r})"
        )
    return "\n".join(out) + "\n"


def ansible_cfg(inputs: Inputs, forks: int) -> str:
    """ansible.cfg: same forks, pipelining, strict pinned host keys, connection reuse within a run."""
    ssh_args = (
        "-o ControlMaster=auto -o ControlPersist=60s -o IdentitiesOnly=yes "
        f"-o UserKnownHostsFile={inputs.known_hosts} -o StrictHostKeyChecking=yes"
    )
    return "\n".join(
        [
            "[defaults]",
            "inventory = inventory.ini",
            f"forks = {forks}",
            "host_key_checking = True",
            "gathering = explicit",
            "interpreter_python = /usr/bin/python3",
            "retry_files_enabled = False",
            f"private_key_file = {inputs.key}",
            "remote_user = root",
            "",
            "[ssh_connection]",
            "pipelining = True",
            f"ssh_args = {ssh_args}",
            "",
        ]
    )


def ansible_inventory(targets: list[Target], inputs: Inputs) -> str:
    """Ansible INI inventory (addresses as host names, as in known_hosts)."""
    return "[lab]\n" + "".join(f"{t.address}\n" for t in targets)


def ansible_playbook(work: Work) -> str:
    """Playbook: the directory, copy with content+mode per file, lineinfile per setting."""
    tasks = [
        f"    - name: {BENCH_DIR}\n      ansible.builtin.file: {{path: {BENCH_DIR}, state: directory}}\n"
    ]
    for f in work.files:
        tasks.append(
            f"    - name: put {f.path}\n"
            f"      ansible.builtin.copy: {{dest: {f.path}, content: {json.dumps(f.content)}, "
            f"mode: '{f.mode:04o}'}}\n"
        )
    for key, value in work.settings:
        pattern, line = json.dumps(_setting_regex(key)), json.dumps(f"{key} = {value}")
        tasks.append(
            f"    - name: nix.conf {key}\n"
            f"      ansible.builtin.lineinfile: {{path: {NIX_CONF}, regexp: {pattern}, line: {line}}}\n"
        )
    return "- hosts: lab\n  gather_facts: false\n  tasks:\n" + "".join(tasks)


def _setting_regex(key: str) -> str:
    return r"^\s*" + key + r"\s*="


def fabric_script(work: Work) -> str:
    """The raw loop's one script per host: check each item, fix only what differs."""
    import base64
    import hashlib

    lines = [
        "set -e",
        "put() {  # path sha256 mode base64",
        '  if [ -f "$1" ] && [ "$(sha256sum < "$1" | cut -c1-64)" = "$2" ] '
        '&& [ "$(stat -c %a "$1")" = "$3" ]; then return 0; fi',
        '  mkdir -p "$(dirname "$1")"; t=$(mktemp "$1.XXXXXX")',
        '  echo "$4" | base64 -d > "$t"; chmod "$3" "$t"; mv -f "$t" "$1"; echo "changed $1"',
        "}",
        "setting() {  # key value",
        f'  f={NIX_CONF}; line="$1 = $2"',
        '  if grep -qxF "$line" "$f"; then return 0; fi',
        '  if grep -q "^[[:space:]]*$1[[:space:]]*=" "$f"; then',
        '    sed -i "s|^[[:space:]]*$1[[:space:]]*=.*|$line|" "$f"',
        '  else echo "$line" >> "$f"; fi',
        '  echo "changed $f $1"',
        "}",
    ]
    for f in work.files:
        data = f.content.encode()
        lines.append(
            f"put {shlex.quote(f.path)} {hashlib.sha256(data).hexdigest()} {f.mode:o} "
            f"{base64.b64encode(data).decode()}"
        )
    lines += [f"setting {shlex.quote(k)} {shlex.quote(v)}" for k, v in work.settings]
    return "\n".join(lines) + "\n"
