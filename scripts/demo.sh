#!/usr/bin/env bash
# The README's first command: set up, start the lab fleet (four real sshd
# hosts named like the real fleet), show the plan of playbooks/site.yaml, run
# it, then plan again to show that nothing is left to change.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export INFRATOOL_LAB_DIR=${INFRATOOL_LAB_DIR:-$PWD/.infratool-lab}
export INFRATOOL_AUDIT_LOG=${INFRATOOL_AUDIT_LOG:-$INFRATOOL_LAB_DIR/audit.jsonl}
# The lab's flake repo is encrypted to this operator key (made by `lab up`).
export SOPS_AGE_KEY_FILE=$INFRATOOL_LAB_DIR/age.key
it=.venv/bin/infratool
inv=$INFRATOOL_LAB_DIR/hosts.yaml
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "infratool lab up (4 real sshd hosts, host keys pinned in $inv)"
$it lab up
$it -i "$inv" hosts --check

step "infratool plan playbooks/site.yaml"
set +e
$it -i "$inv" plan playbooks/site.yaml --detailed-exitcode
code=$?
set -e
echo "(plan exit code $code: 2 = changes pending)"

step "infratool run playbooks/site.yaml --yes"
$it -i "$inv" run playbooks/site.yaml --yes

step "infratool plan playbooks/site.yaml again: nothing left to change"
$it -i "$inv" plan playbooks/site.yaml --detailed-exitcode
echo "(plan exit code $?: 0 = converged)"

step "infratool secrets status (ages, max ages, consumers)"
$it -i "$inv" secrets status
echo
echo "Audit log: $INFRATOOL_AUDIT_LOG — stop the lab with: $it lab down"
