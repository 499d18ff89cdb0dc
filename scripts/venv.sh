# shellcheck shell=bash
# Sourced by scripts/*.sh: create the virtualenv and (re)install the project when pyproject.toml
# changed. The virtualenv is .venv unless CONVOAI_VENV names another one (CI's front-door check
# runs the README's run command in a fresh virtualenv without the test extras).
VENV="${CONVOAI_VENV:-.venv}"
ensure_venv() {
    local extras="$1"
    local stamp="${VENV}/.installed${extras}"
    if [ ! -x "${VENV}/bin/python" ]; then
        echo "[setup] creating ${VENV} with $(python3 --version)"
        python3 -m venv "${VENV}"
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "[setup] installing convoai${extras} into ${VENV}"
        "${VENV}/bin/python" -m pip install --quiet --upgrade pip
        "${VENV}/bin/python" -m pip install --quiet -e ".${extras}"
        touch "$stamp"
    fi
}
