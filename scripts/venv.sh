# shellcheck shell=bash
# Sourced by scripts/*.sh: create .venv and (re)install the project when pyproject.toml changed.
ensure_venv() {
    local extras="$1"
    local stamp=".venv/.installed${extras}"
    if [ ! -x .venv/bin/python ]; then
        echo "[setup] creating .venv with $(python3 --version)"
        python3 -m venv .venv
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "[setup] installing convoai${extras} into .venv"
        .venv/bin/python -m pip install --quiet --upgrade pip
        .venv/bin/python -m pip install --quiet -e ".${extras}"
        touch "$stamp"
    fi
}
