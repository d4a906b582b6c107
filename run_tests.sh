#!/usr/bin/env bash
# Sets up the environment (idempotent) and runs every test.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
exec .venv/bin/python -m pytest -q tests "$@"
