# switch-to-configuration {switch|boot|test|dry-activate}, as on NixOS, for
# the lab's NixOS stand-in. Prepended by the toplevel's builder with
# `systemConfig=<this toplevel>`.
#   test          activate now (activate, then restart changed units); the
#                 boot default is left alone
#   boot          make this generation the boot default (the lab's stand-in
#                 boot loader: /var/lib/lab-boot, see below); nothing restarts
#   switch        both
#   dry-activate  print what `test` would change, change nothing
# Units are lab services (no systemd here): a process per unit whose pid
# is in /run/lab-services/<unit>.pid, restarted when its unit script changed,
# started when new, stopped when gone, and restarted when a secret naming it
# in restartUnits changed. A `Type = "oneshot"` unit runs to its end during
# the switch (as systemd's start job waits for it) and then counts as active
# (RemainAfterExit); one that fails fails the switch, as on NixOS.
set -eu
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
action=${1:-}
case $action in
  switch | boot | test | dry-activate) ;;
  *)
    echo "Usage: $0 [switch|boot|test|dry-activate]" >&2
    exit 1
    ;;
esac

BOOT=/var/lib/lab-boot
STATE=/run/lab-services
LOGS=/var/log/lab-services

# A unit changed when its script's text did (each generation has its own copy).
unit_hash() { sha256sum <"$1" | cut -d' ' -f1; }

units_of() { if [ -d "$1/lab/services" ]; then ls "$1/lab/services"; fi; }

running() {
  [ -e "$STATE/$1.done" ] || { [ -s "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }
}

oneshot() { grep -qx '# lab-type: oneshot' "$1"; }
failed_units=""

stop_unit() {
  if [ -s "$STATE/$1.pid" ]; then
    pid=$(cat "$STATE/$1.pid")
    kill -TERM "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/$1.pid" "$STATE/$1.unit" "$STATE/$1.done"
}

start_unit() {
  mkdir -p "$STATE" "$LOGS"
  rm -f "$STATE/$1.pid" "$STATE/$1.done"
  if oneshot "$systemConfig/lab/services/$1"; then
    unit_hash "$systemConfig/lab/services/$1" >"$STATE/$1.unit"
    if "$systemConfig/lab/services/$1" </dev/null >>"$LOGS/$1.log" 2>&1; then
      : >"$STATE/$1.done"
    else
      echo "warning: the following units failed: $1.service" >&2
      failed_units="$failed_units $1"
    fi
    return 0
  fi
  # nohup: the unit outlives the SSH session that switched to it.
  nohup /bin/sh -c 'echo $$ >"$1"; exec "$2"' unit "$STATE/$1.pid" "$systemConfig/lab/services/$1" \
    </dev/null >>"$LOGS/$1.log" 2>&1 &
  i=0
  while [ ! -s "$STATE/$1.pid" ] && [ $i -lt 100 ]; do sleep 0.02; i=$((i + 1)); done
  unit_hash "$systemConfig/lab/services/$1" >"$STATE/$1.unit"
}

# What `test` would do to the units: lines "start|stop|restart UNIT".
plan_units() {
  current=/run/current-system
  for u in $(units_of "$current"); do
    [ -e "$systemConfig/lab/services/$u" ] || echo "stop $u"
  done
  for u in $(units_of "$systemConfig"); do
    if ! running "$u"; then
      echo "start $u"
    elif [ "$(cat "$STATE/$u.unit" 2>/dev/null)" != "$(unit_hash "$systemConfig/lab/services/$u")" ]; then
      echo "restart $u"
    fi
  done
}

install_boot() {
  gen=""
  for link in /nix/var/nix/profiles/system-*-link; do
    [ -e "$link" ] || continue
    if [ "$(readlink -f "$link")" = "$systemConfig" ]; then
      n=${link#/nix/var/nix/profiles/system-}
      gen=${n%-link}
    fi
  done
  if [ -z "$gen" ]; then
    echo "switch-to-configuration: $systemConfig is not a generation of /nix/var/nix/profiles/system" >&2
    exit 1
  fi
  mkdir -p "$BOOT/loader/entries"
  # One entry per generation of the profile, as systemd-boot-builder writes.
  for link in /nix/var/nix/profiles/system-*-link; do
    [ -e "$link" ] || continue
    n=${link#/nix/var/nix/profiles/system-}
    n=${n%-link}
    printf 'title NixOS (lab stand-in)\nversion Generation %s\nsystemConfig %s\n' "$n" "$(readlink -f "$link")" \
      >"$BOOT/loader/entries/nixos-generation-$n.conf"
  done
  printf 'default nixos-generation-%s.conf\n' "$gen" >"$BOOT/loader/loader.conf.tmp"
  mv -f "$BOOT/loader/loader.conf.tmp" "$BOOT/loader/loader.conf"
  ln -sfn "$systemConfig" "$BOOT/default.tmp"
  mv -T "$BOOT/default.tmp" "$BOOT/default"
  if [ -e "$systemConfig/lab/lanzaboote.json" ]; then
    # lanzaboote's lzbt would sign this generation's UKI here; the lab signs
    # nothing and records what would be signed, with which key.
    mkdir -p "$BOOT/EFI/Linux"
    cp "$systemConfig/lab/lanzaboote.json" "$BOOT/EFI/Linux/nixos-generation-$gen.would-sign.json"
  fi
}

if [ "$action" = dry-activate ]; then
  echo "would activate $systemConfig"
  plan_units | while read -r line; do echo "would $line"; done
  exit 0
fi

if [ "$action" = switch ] || [ "$action" = boot ]; then
  install_boot
fi

if [ "$action" = switch ] || [ "$action" = test ]; then
  todo=$(plan_units)
  mkdir -p "$STATE"
  rm -f "$STATE/.restart"
  "$systemConfig/activate"
  for u in $(printf '%s\n' "$todo" | while read -r verb u; do if [ "$verb" = stop ]; then echo "$u"; fi; done); do
    echo "stopping the following units: $u"
    stop_unit "$u"
  done
  extra=$(cat "$STATE/.restart" 2>/dev/null || true)
  rm -f "$STATE/.restart"
  for u in $(units_of "$systemConfig"); do
    verb=$(printf '%s\n' "$todo" | while read -r v name; do if [ "$name" = "$u" ]; then echo "$v"; fi; done)
    for r in $extra; do if [ "${r%.service}" = "$u" ] && [ -z "$verb" ]; then verb=restart; fi; done
    case $verb in
      start) echo "starting the following units: $u"; start_unit "$u" ;;
      restart) echo "restarting the following units: $u"; stop_unit "$u"; start_unit "$u" ;;
    esac
  done
fi
# As NixOS's switch-to-configuration: a unit that failed to start is exit 4.
if [ -n "$failed_units" ]; then exit 4; fi
