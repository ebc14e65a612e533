"""The host's side of a deploy: POSIX sh scripts that activate, wait for a confirmation, commit or roll back.

Modelled on deploy-rs's ``activate`` (src/bin/activate.rs): the safety of a
deploy lives on the host, not in the controller's good luck. The controller
starts :data:`WATCHDOG` **detached** (``nohup``, SIGHUP ignored, its own
session when ``setsid`` exists), so it outlives the SSH connection that
started it, even when the new generation restarts or breaks sshd. The
watchdog alone changes the system from then on:

1. remembers the running system (``/run/current-system``) and the profile's
   generation, sets the system profile to the new toplevel
   (``nix-env -p /nix/var/nix/profiles/system --set``);
2. runs ``<toplevel>/bin/switch-to-configuration test`` (activate, boot
   default untouched);
3. waits up to ``confirm_timeout`` seconds for ``confirm`` (the controller
   writes it over a **new** connection once the tasks' checks passed) or
   ``abort`` (a check failed);
4. on ``confirm``: ``switch-to-configuration boot`` (commit: the new
   generation becomes the boot default); otherwise, or when step 2 or 4
   fails: reactivates the previous system (``switch-to-configuration test``
   of what ran before), resets the profile to its previous generation and
   deletes the new one.

Everything it decides goes to ``status`` (one word and a reason, replaced
atomically), which the controller polls. Only the watchdog acts, so a
confirmation racing the timeout cannot leave half of each: whichever the
watchdog sees first wins, and the status says which.

The remote side needs nothing but sh, coreutils and Nix (NixOS has no Python).
"""

from __future__ import annotations

import shlex

STATE_DIR = "/run/infratool-deploy"
"""Per-host deploy state; /run is a tmpfs on NixOS, so a reboot forgets a half-done deploy (the boot
default is then the old generation, which is exactly the rollback)."""

PROFILE = "/nix/var/nix/profiles/system"

FINAL = ("committed", "rolled-back", "failed")
"""Status words after which the watchdog has exited."""

WATCHDOG = r"""
# infratool deploy watchdog: activate, wait for confirmation, commit or roll back.
trap '' HUP
dir=$1 new=$2 timeout=$3
profile=/nix/var/nix/profiles/system
say() { printf '%s\n' "$*" > "$dir/status.tmp" && mv -f "$dir/status.tmp" "$dir/status"; }
log() { printf "%s %s\n" "$(date +%s.%N)" "$*" >> "$dir/log"; }
prev_link=$(readlink "$profile" 2>/dev/null || true)
prev_sys=$(readlink -f /run/current-system 2>/dev/null || true)
[ -n "$prev_sys" ] || { [ -n "$prev_link" ] && prev_sys=$(readlink -f "$profile"); }
printf '%s\n' "$prev_sys" > "$dir/previous"
gen_of() { n=${1#system-}; printf '%s' "${n%-link}"; }

rollback() {
  log "rolling back: $*"
  new_link=$(readlink "$profile" 2>/dev/null || true)
  if [ -n "$prev_link" ] && [ "$new_link" != "$prev_link" ]; then
    nix-env -p "$profile" --switch-generation "$(gen_of "$prev_link")" >> "$dir/log" 2>&1
    [ -n "$new_link" ] && nix-env -p "$profile" --delete-generations "$(gen_of "$new_link")" >> "$dir/log" 2>&1
  elif [ -z "$prev_link" ] && [ -n "$new_link" ]; then
    rm -f "$profile" "$(dirname "$profile")/$new_link"
  fi
  if [ -n "$prev_sys" ] && [ -x "$prev_sys/bin/switch-to-configuration" ]; then
    if "$prev_sys/bin/switch-to-configuration" test >> "$dir/log" 2>&1; then
      say rolled-back "$*; $prev_sys reactivated"
    else
      say failed "$*; reactivating $prev_sys failed too (see $dir/log)"
    fi
  else
    say rolled-back "$*; no previous system to reactivate"
  fi
  exit 0
}

log "watchdog $$ for $new, confirm timeout ${timeout}s"
say activating
if ! nix-env -p "$profile" --set "$new" >> "$dir/log" 2>&1; then
  say failed "nix-env --set $new failed"
  exit 0
fi
"$new/bin/switch-to-configuration" test >> "$dir/log" 2>&1
rc=$?
[ "$rc" -eq 0 ] || rollback "switch-to-configuration test exited $rc"
say activated
deadline=$(( $(date +%s) + timeout ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  if [ -e "$dir/abort" ]; then rollback "$(head -c 300 "$dir/abort")"; fi
  if [ -e "$dir/confirm" ]; then
    if "$new/bin/switch-to-configuration" boot >> "$dir/log" 2>&1; then
      say committed "$new is the boot default"
      log committed
      exit 0
    fi
    rollback "switch-to-configuration boot failed"
  fi
  sleep 0.2
done
rollback "not confirmed within ${timeout}s"
"""


def start_script(toplevel: str, confirm_timeout: int, wait: float = 60.0) -> str:
    """The command that starts the watchdog for ``toplevel`` and waits (up to ``wait`` s) for activation.

    A watchdog still waiting from an earlier deploy (a controller killed
    mid-deploy, then run again at once) is told to roll back first and
    waited for: two watchdogs must never act on one profile. Prints the
    watchdog's status line once activation is over (``activated``, or a
    final word when it rolled back).
    """
    q = shlex.quote
    ticks = int(wait * 5)
    return f"""set -u
dir={q(STATE_DIR)}
umask 077
mkdir -p "$dir"
if [ -e "$dir/status" ] && [ -e "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
  case "$(cut -d' ' -f1 "$dir/status")" in committed|rolled-back|failed) ;; *)
    echo "superseded by a new deploy" > "$dir/abort"
    n=0
    while kill -0 "$(cat "$dir/pid")" 2>/dev/null && [ "$n" -lt {ticks} ]; do sleep 0.2; n=$((n+1)); done ;;
  esac
fi
rm -f "$dir/confirm" "$dir/abort" "$dir/status" "$dir/previous"
cat > "$dir/watchdog.sh" <<'INFRATOOL_WATCHDOG_EOF'
{WATCHDOG}
INFRATOOL_WATCHDOG_EOF
if command -v setsid >/dev/null 2>&1; then detach=setsid; else detach=; fi
nohup $detach sh "$dir/watchdog.sh" "$dir" {q(toplevel)} {int(confirm_timeout)} </dev/null >>"$dir/log" 2>&1 &
echo $! > "$dir/pid"
n=0
while [ "$n" -lt {ticks} ]; do
  s=$(cat "$dir/status" 2>/dev/null || true)
  case "$s" in activated*|committed*|rolled-back*|failed*) printf '%s\\n' "$s"; exit 0 ;; esac
  sleep 0.2; n=$((n+1))
done
echo "activating (still running after {int(wait)}s)"
"""


def confirm_script(wait: float) -> str:
    """Write the confirmation; print the watchdog's final status (waiting up to ``wait`` s)."""
    return _signal_script("confirm", "confirmed by infratool", wait)


def abort_script(reason: str, wait: float) -> str:
    """Ask the watchdog to roll back now (``reason`` recorded); print its final status."""
    return _signal_script("abort", reason, wait)


def status_script(wait: float = 0.0) -> str:
    """Print the watchdog's status once final (or as it is after ``wait`` s)."""
    return _signal_script(None, "", wait)


def _signal_script(name: str | None, text: str, wait: float) -> str:
    q = shlex.quote
    write = (
        f'printf "%s\\n" {q(text)} > "$dir/{name}.tmp" && mv -f "$dir/{name}.tmp" "$dir/{name}"'
        if name
        else ":"
    )
    return f"""dir={q(STATE_DIR)}
[ -e "$dir/status" ] || {{ echo "none"; exit 0; }}
{write}
n=0
while :; do
  s=$(cat "$dir/status" 2>/dev/null || true)
  case "$s" in committed*|rolled-back*|failed*) printf '%s\\n' "$s"; exit 0 ;; esac
  [ "$n" -ge {int(wait * 5)} ] && {{ printf '%s\\n' "$s"; exit 0; }}
  sleep 0.2; n=$((n+1))
done
"""


def check_valid_script(path: str) -> str:
    """Exit 0 when ``path`` is a valid path of the host's store (then ``nix copy`` has nothing to do)."""
    return f"nix-store --check-validity {shlex.quote(path)} 2>/dev/null"


def print_invalid_script() -> str:
    """Read store paths on stdin; print those that are not valid in the host's store."""
    # $(cat): the paths are store paths (no blanks), and a closure's list fits in argv.
    return 'set -f; p=$(cat); [ -z "$p" ] || nix-store --check-validity --print-invalid $p'


IMPORT_SCRIPT = "nix-store --import >/dev/null"
"""Import a ``nix-store --export`` stream read from stdin (the paths' references are valid or in it)."""
