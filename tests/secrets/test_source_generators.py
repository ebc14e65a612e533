"""Secret sources (issue 18): wireguard, command, derive, prompt, vault — against real parts.

The command generator runs real processes (and a real ``pass`` store with
gpg), the hashes are checked with the libraries and tools that read them
(bcrypt, argon2, ``openssl passwd -6``), and the vault generator talks HTTP
to the test server process in tests/vaultserver.py.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import vaultserver
import yaml

from infratool.errors import InputError, SecretsError
from infratool.rotation.policy import parse_policy
from infratool.secrets import derive, generators
from infratool.secrets.generators import GenContext, NeedsPerson
from infratool.secrets.secret import Secret

HOSTS = {"snix", "slax", "brix", "nixtv-player"}


def text(s: Secret) -> str:
    raw = s.reveal()
    return raw.decode() if isinstance(raw, bytes) else raw


# --- wireguard ---------------------------------------------------------------------------


def test_wireguard_key_pair_matches_curve25519() -> None:
    from nacl.bindings import crypto_scalarmult_base

    made = generators.generate("wireguard")
    private = base64.b64decode(text(made.value))
    assert len(private) == 32
    assert private[0] & 7 == 0 and private[31] & 0x80 == 0 and private[31] & 0x40  # clamped as `wg genkey`
    assert made.public == base64.b64encode(crypto_scalarmult_base(private)).decode()
    assert generators.public_part("wireguard", made.value) == made.public
    assert generators.generate("wireguard").value != made.value


def test_wireguard_public_key_refuses_junk() -> None:
    with pytest.raises(InputError):
        generators.wireguard_public_key("not base64!")
    with pytest.raises(InputError):
        generators.wireguard_public_key(base64.b64encode(b"short").decode())


# --- command -----------------------------------------------------------------------------


def command(run: str, name: str = "app/key", previous: str | None = None, **params):
    ctx = GenContext(name=name, previous=Secret(previous) if previous else None)
    return generators.generate("command", {"run": run, **params}, ctx)


def test_command_value_is_stdout_and_gets_name_and_previous_on_stdin() -> None:
    made = command("cat", previous="old-value-1234")
    assert text(made.value) == "app/key\nold-value-1234"
    first = command("read -r name; printf 'new-for-%s\\n' \"$name\"")
    assert text(first.value) == "new-for-app/key"  # one trailing newline dropped


def test_command_environment_is_minimal(monkeypatch) -> None:
    monkeypatch.setenv("SOPS_AGE_KEY", "AGE-SECRET-KEY-1CONTROLLERS-OWN-KEY")
    monkeypatch.setenv("PASSWORD_STORE_DIR", "/srv/pass")
    env = text(command("env | sort | tr '\\n' ' '; echo").value)
    assert "SOPS_AGE_KEY" not in env and "PASSWORD_STORE_DIR" not in env
    assert "PATH=" in env
    listed = text(command('printf %s "$PASSWORD_STORE_DIR"', env=["PASSWORD_STORE_DIR"]).value)
    assert listed == "/srv/pass"


def test_command_stderr_and_output_are_withheld_from_errors() -> None:
    canary = "CANARY-stderr-" + os.urandom(8).hex()
    with pytest.raises(SecretsError) as err:
        command(f"echo {canary} >&2; echo {canary}; exit 7")
    assert canary not in str(err.value)
    assert "exited 7" in str(err.value) and "withheld" in str(err.value)
    with pytest.raises(SecretsError, match="printed no value"):
        command("true")


def test_command_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    with pytest.raises(SecretsError, match="timed out after 1s"):
        command(f"(sleep 3; touch {marker}) & sleep 30", timeout=1)
    import time

    time.sleep(3.5)
    assert not marker.exists(), "a child of the timed-out command kept running"


def test_command_params_are_checked() -> None:
    gen = generators.get("command")
    with pytest.raises(generators.ParamError):
        gen.validate({"run": "x", "env": ["NOT-A-NAME"]})
    with pytest.raises(generators.ParamError):
        gen.validate({"run": "x", "timeout": 0})
    with pytest.raises(generators.ParamError):
        gen.validate({})


@pytest.fixture
def pass_store(tmp_path: Path) -> dict[str, str]:
    """A real password-store encrypted for a fresh gpg key (no passphrase)."""
    if not (shutil.which("pass") and shutil.which("gpg")):
        pytest.skip("pass and gpg are not installed (scripts/setup.sh installs them)")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home), "PASSWORD_STORE_DIR": str(tmp_path / "store")}
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "infratool-test@example.org",
            "default",
            "default",
            "never",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(["pass", "init", "infratool-test@example.org"], env=env, check=True, capture_output=True)
    return {"GNUPGHOME": env["GNUPGHOME"], "PASSWORD_STORE_DIR": env["PASSWORD_STORE_DIR"]}


def test_command_backed_by_a_real_pass_store(pass_store, monkeypatch) -> None:
    for k, v in pass_store.items():
        monkeypatch.setenv(k, v)
    run = 'read -r name; pass generate -f "$name" 24 >/dev/null && pass show "$name" | head -n 1'
    first = command(run, name="lab/token", env=["GNUPGHOME", "PASSWORD_STORE_DIR"])
    again = command(run, name="lab/token", env=["GNUPGHOME", "PASSWORD_STORE_DIR"])
    assert len(text(first.value)) == 24 and text(first.value) != text(again.value)
    shown = subprocess.run(["pass", "show", "lab/token"], capture_output=True, text=True, check=True)
    assert shown.stdout.splitlines()[0] == text(again.value)  # the store rotated in place


# --- derive ------------------------------------------------------------------------------


def derived(function: str, source: str = "correct horse battery", **params) -> str:
    ctx = GenContext(name="d", deps={"src": Secret(source)}, dep_publics={"src": None}, order=("src",))
    return text(generators.generate("derive", {"function": function, **params}, ctx).value)


def test_bcrypt_and_htpasswd_verify_with_bcrypt() -> None:
    import bcrypt

    h = derived("bcrypt", cost=4)
    assert h.startswith("$2b$04$") and bcrypt.checkpw(b"correct horse battery", h.encode())
    assert derived("bcrypt", cost=4) != h  # fresh salt each time
    line = derived("htpasswd", user="admin", cost=4)
    user, _, hashed = line.partition(":")
    assert user == "admin" and bcrypt.checkpw(b"correct horse battery", hashed.encode())
    with pytest.raises(SecretsError, match="72 bytes"):
        derived("bcrypt", source="x" * 73, cost=4)


def test_argon2id_verifies() -> None:
    from argon2 import PasswordHasher

    h = derived("argon2id")
    assert h.startswith("$argon2id$") and PasswordHasher().verify(h, "correct horse battery")


def test_sha512_crypt_matches_openssl() -> None:
    for pw, salt in (
        ("correct horse battery", "saltsaltsaltsalt"),
        ("päss wörd", "ab"),
        ("x" * 200, "Zz./09"),
    ):
        ref = subprocess.run(
            ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
            input=pw + "\n",
            capture_output=True,
            text=True,
        )
        assert derive.sha512_crypt(pw, salt) == ref.stdout.strip()
    h = derived("sha512-crypt")
    salt = h.split("$")[2]
    ref = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
        input="correct horse battery\n",
        capture_output=True,
        text=True,
    )
    assert h == ref.stdout.strip()
    htp = derived("htpasswd", user="ops", hash="sha512-crypt")
    assert htp.startswith("ops:$6$")


def test_template_and_public_key() -> None:
    ctx = GenContext(
        name="db/url",
        deps={"db/user": Secret("app"), "db/pass": Secret("s3cret-pass")},
        order=("db/pass", "db/user"),
    )
    made = generators.generate(
        "derive", {"function": "template", "template": "postgres://{db/user}:{value}@db/app"}, ctx
    )
    assert text(made.value) == "postgres://app:s3cret-pass@db/app"
    wg = generators.generate("wireguard")
    ctx = GenContext(
        name="wg/pub", deps={"wg/key": wg.value}, dep_publics={"wg/key": wg.public}, order=("wg/key",)
    )
    assert text(generators.generate("derive", {"function": "public-key"}, ctx).value) == wg.public


# --- prompt ------------------------------------------------------------------------------


def test_prompt_takes_only_a_provided_value() -> None:
    with pytest.raises(NeedsPerson, match="secrets set api/key"):
        generators.generate("prompt", {}, GenContext(name="api/key"))
    made = generators.generate("prompt", {}, GenContext(name="api/key", provided=Secret("typed-by-hand")))
    assert text(made.value) == "typed-by-hand"
    with pytest.raises(InputError, match="shorter than 20"):
        generators.generate("prompt", {"min_length": 20}, GenContext(name="a", provided=Secret("short-one")))


# --- policy: from, cycles, files ---------------------------------------------------------


def policy(text_: str, tmp_path: Path):
    path = tmp_path / "rotation.yaml"
    path.write_text(text_)
    from infratool import yamlsrc

    return parse_policy(yamlsrc.load(path), path, HOSTS, root=tmp_path)


def test_derived_policy_parses(tmp_path: Path) -> None:
    pol = policy(
        """\
secrets:
  web/password: {file: secrets/web.yaml, generator: password, params: {length: 40}}
  web/htpasswd:
    file: secrets/web.yaml
    generator: derive
    from: web/password
    params: {function: htpasswd, user: admin}
  wg/key: {file: secrets/web.yaml, generator: wireguard}
  wg/pub: {file: secrets/web.yaml, generator: derive, from: wg/key, params: {function: public-key}}
  web/url:
    file: secrets/web.yaml
    generator: derive
    from: [web/password, wg/pub]
    params: {function: template, template: "x://{value}/{wg/pub}"}
  api/key: {file: secrets/web.yaml, generator: prompt, max_age: 180d}
""",
        tmp_path,
    )
    assert pol.secrets["web/htpasswd"].depends == ("web/password",)
    assert pol.secrets["web/url"].depends == ("web/password", "wg/pub")
    assert pol.secrets["api/key"].needs_person and not pol.secrets["web/password"].needs_person


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        (
            "  a: {file: s/x.yaml, generator: derive, from: b, params: {function: bcrypt}}\n"
            "  b: {file: s/x.yaml, generator: derive, from: c, params: {function: bcrypt}}\n"
            "  c:\n    file: s/x.yaml\n    generator: derive\n    from: a\n    params: {function: bcrypt}\n",
            2,
            "cycle: a -> b -> c -> a",
        ),
        (
            "  a: {file: s/x.yaml, generator: password}\n"
            "  h:\n    file: s/y.yaml\n    generator: derive\n    from: a\n    params: {function: bcrypt}\n",
            4,
            "same sops file",
        ),
        ("  h: {file: s/x.yaml, generator: derive, params: {function: bcrypt}}\n", 2, "needs 'from'"),
        ("  h: {file: s/x.yaml, generator: hex, from: a}\n", 2, "only for generator: derive"),
        (
            "  a: {file: s/x.yaml, generator: password}\n"
            "  h:\n    file: s/x.yaml\n    generator: derive\n    from: aa\n    params: {function: bcrypt}\n",
            6,
            "unknown secret 'aa'",
        ),
        (
            "  a: {file: s/x.yaml, generator: password}\n"
            "  h:\n    file: s/x.yaml\n    generator: derive\n    from: a\n    params: {function: public-key}\n",
            6,
            "no public key",
        ),
        (
            "  a: {file: s/x.yaml, generator: password, params: {length: 100}}\n"
            "  h:\n    file: s/x.yaml\n    generator: derive\n    from: a\n    params: {function: bcrypt}\n",
            6,
            "bcrypt reads only 72 bytes",
        ),
        (
            "  a: {file: s/x.yaml, generator: password}\n"
            "  h:\n    file: s/x.yaml\n    generator: derive\n    from: a\n"
            "    params: {function: template, template: '{b}'}\n",
            7,
            "placeholder {b}",
        ),
    ],
)
def test_bad_dependencies_are_input_errors_at_file_line(
    tmp_path: Path, body: str, line: int, message: str
) -> None:
    with pytest.raises(InputError) as err:
        policy("secrets:\n" + body, tmp_path)
    assert message in str(err.value)
    assert err.value.line == line, str(err.value)
    assert err.value.exit_code == 3


def test_a_cycle_exits_3_from_the_cli_before_any_connection(tmp_path: Path) -> None:
    """`secrets status` on a policy with a cycle: exit 3, file:line, no host contacted."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "hosts.yaml").write_text(
        yaml.safe_dump({"defaults": {"known_hosts": "kh"}, "hosts": {"brix": {"address": "192.0.2.7"}}})
    )
    (tmp_path / "kh").write_text("")
    (tmp_path / "secrets" / "rotation.yaml").write_text(
        "secrets:\n"
        "  a: {file: secrets/x.yaml, generator: derive, from: b, params: {function: sha512-crypt}}\n"
        "  b: {file: secrets/x.yaml, generator: derive, from: a, params: {function: sha512-crypt}}\n"
    )
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "infratool",
            "-i",
            str(tmp_path / "hosts.yaml"),
            "secrets",
            "rotate",
            "--all",
            "--yes",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 3, r.stdout + r.stderr
    assert "rotation.yaml:2:" in r.stderr and "cycle" in r.stderr


def test_secrets_set_refuses_a_short_value_before_connecting(tmp_path: Path) -> None:
    """min_length is bad input (exit 3) checked before the rotation starts; 192.0.2.7 is never dialled."""
    import sys

    (tmp_path / "secrets").mkdir()
    (tmp_path / "hosts.yaml").write_text(
        yaml.safe_dump({"defaults": {"known_hosts": "kh"}, "hosts": {"brix": {"address": "192.0.2.7"}}})
    )
    (tmp_path / "kh").write_text("")
    (tmp_path / "secrets" / "rotation.yaml").write_text(
        "secrets:\n"
        "  api/key:\n"
        "    file: secrets/x.yaml\n"
        "    generator: prompt\n"
        "    params: {min_length: 20}\n"
        "    consumers: [{host: brix, file: {path: /var/lib/app/key}}]\n"
    )
    base = [sys.executable, "-m", "infratool", "-i", str(tmp_path / "hosts.yaml"), "secrets", "set"]
    r = subprocess.run(
        [*base, "api/key", "--stdin"], input="too-short\n", capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 3 and "shorter than min_length 20" in r.stderr, r.stdout + r.stderr
    assert "too-short" not in r.stdout + r.stderr
    assert not (tmp_path / "secrets" / "x.yaml").exists()
    r = subprocess.run(
        [*base, "nope", "--stdin"], input="whatever-value\n", capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 3 and "unknown secret 'nope'" in r.stderr


# --- vault -------------------------------------------------------------------------------


@pytest.fixture
def vault(monkeypatch):
    with vaultserver.serve(ttl=600) as server:
        monkeypatch.setenv("VAULT_ADDR", server.addr)
        monkeypatch.setenv("VAULT_TOKEN", server.token)
        yield server


def test_vault_reads_a_dynamic_secret_and_its_lease(vault) -> None:
    made = generators.generate("vault", {"path": "database/creds/app"}, GenContext(name="db/app"))
    assert made.lease is not None and made.lease.ttl == 600
    lease_id = text(made.lease.id)
    assert lease_id.startswith("database/creds/app/") and vault.lease_valid(lease_id)
    both = generators.generate(
        "vault",
        {"path": "database/creds/app", "template": "{username}:{password}"},
        GenContext(name="db/app"),
    )
    user, _, password = text(both.value).partition(":")
    assert user.startswith("v-app-") and password
    generators.get("vault").retire({"path": "database/creds/app"}, made.lease)
    assert not vault.lease_valid(lease_id)
    assert vault.lease_valid(text(both.lease.id))


def test_vault_errors_carry_no_body(vault, monkeypatch) -> None:
    with pytest.raises(SecretsError, match=r"no secret at that path|InvalidPath"):
        generators.generate("vault", {"path": "nothing/here"}, GenContext(name="x"))
    monkeypatch.setenv("VAULT_TOKEN", "hvs.wrong-token-value")
    with pytest.raises(SecretsError) as err:
        generators.generate("vault", {"path": "database/creds/app"}, GenContext(name="x"))
    assert "Forbidden" in str(err.value) and "permission denied" in str(err.value)
    assert "hvs.wrong-token-value" not in str(err.value)
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:9")
    monkeypatch.setenv("VAULT_TOKEN", vault.token)
    with pytest.raises(SecretsError, match="cannot reach Vault"):
        generators.generate("vault", {"path": "database/creds/app", "timeout": 2}, GenContext(name="x"))


# --- secrets set at a terminal ------------------------------------------------------------


def test_secrets_set_at_a_terminal_never_echoes(tmp_path: Path, monkeypatch) -> None:
    """A real pseudo-terminal: the value typed twice is stored in sops and never shown."""
    import pty
    import select
    import sys
    import time

    from infratool.onboard.scaffold import ensure_operator_repo
    from infratool.secrets.store import SopsStore

    key = tmp_path / "age.key"
    ensure_operator_repo(tmp_path, key)
    (tmp_path / "hosts.yaml").write_text(
        yaml.safe_dump({"defaults": {"known_hosts": "kh"}, "hosts": {"brix": {"address": "192.0.2.7"}}})
    )
    (tmp_path / "kh").write_text("")
    # No consumers: nothing to deliver, so no host is needed to prove the terminal path.
    (tmp_path / "secrets" / "rotation.yaml").write_text(
        "secrets:\n  api/key: {file: secrets/app.yaml, generator: prompt}\n"
    )
    value = "typed-" + os.urandom(10).hex()
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key))
    env = {**os.environ, "NO_COLOR": "1", "TMPDIR": str(tmp_path)}
    pid, fd = pty.fork()
    if pid == 0:  # the child: infratool on the terminal
        os.chdir(tmp_path)
        os.execve(
            sys.executable,
            [
                sys.executable,
                "-m",
                "infratool",
                "-i",
                str(tmp_path / "hosts.yaml"),
                "secrets",
                "set",
                "api/key",
            ],
            env,
        )
    seen = b""
    prompts = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break  # the child closed the terminal
        if not chunk:
            break
        seen += chunk
        while prompts < 2 and seen.count(b"api/key") + seen.count(b"Repeat") > prompts:
            os.write(fd, value.encode() + b"\n")
            prompts += 1
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, seen.decode(errors="replace")
    assert prompts == 2
    assert value.encode() not in seen, "the typed value was echoed"
    assert str(SopsStore(tmp_path / "secrets").read("app.yaml")["api/key"].reveal()) == value
