#!/usr/bin/env bash
# Create .venv and install the project with its test tools.
# torch is pinned (TORCH_SPEC overrides it, e.g. TORCH_SPEC="torch==2.13.0 --index-url ..." for another build).
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet ${TORCH_SPEC:-torch==2.13.0}
.venv/bin/python -m pip install --quiet -e ".[test]"
