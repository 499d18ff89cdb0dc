#!/usr/bin/env bash
# Set up and run the whole platform locally: virtualenv, install, start RabbitMQ/PostgreSQL if
# stopped, migrate, start every process (Ctrl-C stops them all).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv ""
exec "${VENV}/bin/convoai" up "$@"
