#!/usr/bin/env bash
# The README's second command: set up, then run the whole test suite (real
# lab hosts, real sops, real nix) in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/pytest -n "${PYTEST_WORKERS:-4}" --durations=15 "$@"
