# lab-install-secrets MANIFEST: sops-nix's activation (sops-install-secrets)
# for the lab, in POSIX sh + coreutils + the sops binary. As sops-nix does:
# - the host's SSH ed25519 key (sops.age.sshKeyPaths) is converted to an age
#   identity, written to /run/secrets.d/age-keys.txt (0600) and handed to
#   sops as SOPS_AGE_KEY_FILE;
# - every secret is decrypted into a new generation /run/secrets.d/<N>/<name>
#   with its mode, owner and group; /run/secrets then points at it; a secret
#   whose `path` is not the default gets a symlink there;
# - a secret whose content changed queues its restartUnits/reloadUnits;
# - the generation before stays (keepGenerations = 1), older ones go.
# The manifest has one line per secret, tab-separated ("-" = empty):
#   name key path format mode owner group sopsFile restartUnits(,) keyPaths(,)
# Secret values only ever go from sops' stdout into their 0400/mode file.
set -eu
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
manifest=$1
here=$(dirname "$0")
[ -s "$manifest" ] || exit 0

mkdir -p /run/secrets.d /run/lab-services
chmod 0751 /run/secrets.d
last=0
for d in /run/secrets.d/*; do
  n=${d##*/}
  case $n in '' | *[!0-9]*) continue ;; esac
  if [ "$n" -gt "$last" ]; then last=$n; fi
done
gen=$((last + 1))
new=/run/secrets.d/$gen
old=$(readlink /run/secrets 2>/dev/null || true)
mkdir -m 0751 "$new"

keyfile=/run/secrets.d/age-keys.txt
(
  umask 077
  : >"$keyfile.tmp"
  first=$(head -n 1 "$manifest" | cut -f 10)
  IFS=,
  for k in $first; do
    if [ -r "$k" ]; then "$here/ssh-to-age" "$k" >>"$keyfile.tmp"; fi
  done
  mv -f "$keyfile.tmp" "$keyfile"
)
export SOPS_AGE_KEY_FILE=$keyfile

fail=0
while IFS='	' read -r name key path format mode owner group sopsfile restart keypaths; do
  [ -n "$name" ] || continue
  # "-" is an empty field (the manifest is tab-separated; sh merges empty ones).
  [ "$key" != - ] || key=""
  [ "$group" != - ] || group=""
  [ "$restart" != - ] || restart=""
  target=$new/$name
  mkdir -p "$(dirname "$target")"
  extract=""
  if [ "$format" = yaml ] || [ "$format" = json ]; then
    if [ -n "$key" ]; then
      oldifs=$IFS; IFS=/
      for part in $key; do extract="$extract[\"$part\"]"; done
      IFS=$oldifs
    fi
  fi
  if ! (
    umask 077
    if [ -n "$extract" ]; then
      sops --disable-version-check --decrypt --input-type "$format" --extract "$extract" "$sopsfile"
    else
      sops --disable-version-check --decrypt --input-type "$format" --output-type "$format" "$sopsfile"
    fi >"$target"
  ); then
    echo "lab-install-secrets: failed to decrypt '$sopsfile' for secret $name" >&2
    rm -f "$target"
    fail=1
    continue
  fi
  chmod "$mode" "$target"
  chown "${owner:-root}${group:+:$group}" "$target"
  if [ "$path" != "/run/secrets/$name" ]; then
    mkdir -p "$(dirname "$path")"
    ln -sfn "/run/secrets/$name" "$path.tmp-secrets"
    mv -T "$path.tmp-secrets" "$path"
  fi
  if [ -z "$old" ] || [ ! -f "$old/$name" ] ||
    [ "$(sha256sum <"$old/$name")" != "$(sha256sum <"$target")" ]; then
    oldifs=$IFS; IFS=,
    for unit in $restart; do printf '%s\n' "$unit" >>/run/lab-services/.restart; done
    IFS=$oldifs
  fi
done <"$manifest"

if [ "$fail" != 0 ]; then
  rm -rf "$new"
  exit 1
fi
ln -sfn "$new" /run/secrets.tmp-secrets
mv -T /run/secrets.tmp-secrets /run/secrets
# keepGenerations = 1: this generation and the one before.
for d in /run/secrets.d/*; do
  n=${d##*/}
  case $n in '' | *[!0-9]*) continue ;; esac
  [ "$n" -ge $((gen - 1)) ] || rm -rf "$d"
done
