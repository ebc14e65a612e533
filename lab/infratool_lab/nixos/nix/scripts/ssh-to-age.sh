# ssh-to-age: print the age identity of an unencrypted OpenSSH ed25519
# private key (file $1), as sops-install-secrets does for sops.age.sshKeyPaths
# (it uses github.com/Mic92/ssh-to-age): the X25519 scalar is the first 32
# bytes of SHA-512 of the ed25519 seed, bech32-encoded as AGE-SECRET-KEY-1...
# POSIX sh and coreutils only (base64, dd, sha512sum, tr): NixOS hosts have no
# Python. The key material goes through pipes and shell variables only.
set -eu
key=$1
# The seed sits at a fixed offset in an unencrypted single ed25519 key:
# magic(15) cipher"none"(8) kdf"none"(8) kdfopts(4) nkeys(4) pubkey(4+51)
# privlen(4) checkints(8) type(4+11) pub(4+32) privlen(4) -> 161.
body=""
while IFS= read -r line || [ -n "$line" ]; do
  case $line in -----*) ;; *) body=$body$line ;; esac
done <"$key"
magic=$(printf '%s' "$body" | base64 -d | dd bs=1 count=47 2>/dev/null | tr -d '\0')
case $magic in
  openssh-key-v1*none*none*) ;;
  *) echo "ssh-to-age: $key is not an unencrypted OpenSSH private key" >&2; exit 1 ;;
esac
hex=$(printf '%s' "$body" | base64 -d | dd bs=1 skip=161 count=32 2>/dev/null | sha512sum | cut -c1-64)

charset="q p z r y 9 x 8 g f 2 t v d w 0 s 3 j n 5 4 k h c e 6 m u a 7 l"
chk=1
polymod() {
  b=$((chk >> 25))
  chk=$(( ((chk & 33554431) << 5) ^ $1 ))
  [ $((b & 1)) -eq 0 ] || chk=$((chk ^ 996825010))
  [ $((b & 2)) -eq 0 ] || chk=$((chk ^ 642813549))
  [ $((b & 4)) -eq 0 ] || chk=$((chk ^ 513874426))
  [ $((b & 8)) -eq 0 ] || chk=$((chk ^ 1027748829))
  [ $((b & 16)) -eq 0 ] || chk=$((chk ^ 705979059))
}
# The human-readable part "age-secret-key-", expanded for the checksum.
for v in 3 3 3 1 3 3 3 3 3 3 1 3 3 3 1 0 1 7 5 13 19 5 3 18 5 20 13 11 5 25 13; do polymod "$v"; done

# 8-bit bytes -> 5-bit groups.
groups="" acc=0 bits=0 rest=$hex
while [ -n "$rest" ]; do
  byte=$((0x$(printf '%.2s' "$rest")))
  rest=${rest#??}
  acc=$(( (acc << 8) | byte )); bits=$((bits + 8))
  while [ "$bits" -ge 5 ]; do
    bits=$((bits - 5)); groups="$groups $(( (acc >> bits) & 31 ))"
  done
  acc=$((acc & 255))
done
[ "$bits" -eq 0 ] || groups="$groups $(( (acc << (5 - bits)) & 31 ))"

out=""
for g in $groups; do
  polymod "$g"
  set -- $charset; shift "$g"; out="$out$1"
done
for _ in 1 2 3 4 5 6; do polymod 0; done
chk=$((chk ^ 1))
for i in 5 4 3 2 1 0; do
  set -- $charset; shift $(( (chk >> (5 * i)) & 31 )); out="$out$1"
done
printf 'AGE-SECRET-KEY-1%s\n' "$out" | tr 'a-z' 'A-Z'
