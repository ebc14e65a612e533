# activate: make this generation the running system (what NixOS's
# activation script does, for the parts the lab host has). Prepended by the
# toplevel's builder with `systemConfig=<this toplevel>`. POSIX sh,
# coreutils and the sops binary only. Steps, in NixOS's order:
#   users and groups, /etc files (links into this toplevel), tmpfiles,
#   sops-nix secrets (setupSecrets), system.activationScripts, sshd
#   (services.openssh.enable), then /run/current-system; a failed activation
#   script still switches, and then fails (as NixOS reports it).
# Units to restart because a secret changed go to /run/lab-services/.restart.
set -eu
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umask 022

# -- users and groups (the lab hosts share the controller's /etc/passwd) --
while IFS='	' read -r kind name group home shell; do
  [ -n "$kind" ] || continue
  [ "$group" != - ] || group=""
  if [ "$kind" = group ]; then
    getent group "$name" >/dev/null || groupadd --system "$name"
  elif ! getent passwd "$name" >/dev/null; then
    # The lab hosts share the controller's /etc/passwd, and /var/empty is the
    # controller's own directory (only /var/lib is per host): an account made
    # here is also what an `os: linux` lab host finds, and a linux builder
    # setup writes ~/.ssh into its home. So NixOS's /var/empty becomes
    # /var/lib/<name>. NixOS's sshd reads keys from /etc/ssh/authorized_keys.d.
    [ "$home" != /var/empty ] || home="/var/lib/$name"
    if [ -n "$group" ]; then
      getent group "$group" >/dev/null || groupadd --system "$group"
      useradd --system --no-create-home --home-dir "$home" --shell "$shell" --gid "$group" "$name"
    else
      useradd --system --no-create-home --home-dir "$home" --shell "$shell" --user-group "$name"
    fi
  fi
  # NixOS's sshd runs with PAM, where a key still logs in to an account whose
  # password is locked ('!', useradd's default); the lab's sshd runs without
  # PAM (UsePAM no), where OpenSSH refuses a locked account. '*' is NixOS's
  # meaning here: no password, key logins allowed.
  if [ "$kind" = user ] && [ "$(getent shadow "$name" | cut -d: -f2)" = '!' ]; then
    usermod --password '*' "$name"
  fi
done <"$systemConfig/lab/users.tsv"

# -- /etc: each managed file becomes a link into this generation ----------
# Files a previous generation managed and this one does not are removed.
if [ -r /run/current-system/lab/etc-files ]; then
  while IFS= read -r f; do
    [ -n "$f" ] || continue
    if [ -e "$systemConfig/etc/$f" ]; then continue; fi
    target=$(readlink "/etc/$f" 2>/dev/null || true)
    case $target in /nix/store/*) rm -f "/etc/$f" ;; esac
  done </run/current-system/lab/etc-files
fi
while IFS= read -r f; do
  [ -n "$f" ] || continue
  case $f in
    nix/* | ssh/*) ;;
    *)
      # A lab host's /etc is the controller's own, except /etc/nix and /etc/ssh.
      echo "activate: /etc/$f is not private to a lab host; not written" >&2
      continue
      ;;
  esac
  mkdir -p "$(dirname "/etc/$f")"
  ln -sfn "$systemConfig/etc/$f" "/etc/$f.tmp-activate"
  mv -T "/etc/$f.tmp-activate" "/etc/$f"
done <"$systemConfig/lab/etc-files"

# -- systemd-tmpfiles --create, for "d" rules -----------------------------
while read -r type path mode user group _; do
  case $type in
    d | D)
      mkdir -p "$path"
      [ "$mode" = - ] || chmod "$mode" "$path"
      [ "$user" = - ] || chown -h "$user${group:+:}${group#-}" "$path" 2>/dev/null || chown -h "$user" "$path"
      ;;
    '' | '#'*) ;;
    *) echo "activate: tmpfiles rule type $type is not supported by the lab (skipped): $path" >&2 ;;
  esac
done <"$systemConfig/lab/tmpfiles"

# -- sops-nix: decrypt every sops.secrets entry ---------------------------
"$systemConfig/bin/lab-install-secrets" "$systemConfig/lab/secrets.tsv"

# -- system.activationScripts (each its own sh -e; a failure is reported at the end) --
_status=0
for script in "$systemConfig"/lab/activation.d/*; do
  [ -e "$script" ] || continue
  if ! /bin/sh -e "$script"; then
    echo "activation script ${script##*/} failed" >&2
    _status=1
  fi
done

# -- sshd: the lab host's own sshd is frozen when this generation disables it --
if [ -s /run/sshd.pid ]; then
  if [ "$(cat "$systemConfig/lab/sshd")" = disabled ]; then
    kill -STOP "$(cat /run/sshd.pid)"
  else
    kill -CONT "$(cat /run/sshd.pid)"
  fi
fi

# -- the running system ---------------------------------------------------
ln -sfn "$systemConfig" /run/current-system.tmp-activate
mv -T /run/current-system.tmp-activate /run/current-system
exit "$_status"
