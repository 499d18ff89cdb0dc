#!/usr/bin/env bash
# The full test suite: lint, format check, type check, then pytest on real RabbitMQ and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv "[test]"
"${VENV}/bin/ruff" check .
"${VENV}/bin/ruff" format --check .
"${VENV}/bin/mypy"
# -p no:cacheprovider keeps a clean clone clean; pytest exits 5 if it collected nothing.
exec "${VENV}/bin/pytest" -p no:cacheprovider "$@"
