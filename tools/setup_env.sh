#!/usr/bin/env bash
# Build .venv from nothing (idempotent). Uses a prebuilt mmcv wheel when a wheel folder is
# offered (WHEELS=dir, default ../shared/wheels when it exists; WHEELS= turns it off), else
# compiles mmcv 2.1.0 from source (about 6 minutes on 2 cores). VENV=dir builds elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
STAMP="$VENV/.mapllava-setup-$(sha1sum requirements.txt tools/setup_env.sh | sha1sum | cut -c1-12)"
if [ -f "$STAMP" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
WHEELS=${WHEELS-../shared/wheels}
FIND_LINKS=()
if [ -n "$WHEELS" ] && [ -d "$WHEELS" ]; then FIND_LINKS=(--find-links "$(cd "$WHEELS" && pwd)"); echo "setup: using wheels from $WHEELS"; fi
$PIP install -q --upgrade "pip<26" "setuptools<70" wheel
# torch first: mmcv compiles against it.
$PIP install -q "$(grep -E '^torch==' requirements.txt)" "$(grep -E '^numpy==' requirements.txt)"
# torch >= 2.6 pulls setuptools >= 77, which has no pkg_resources; mmcv 2.1.0's setup.py needs
# it. Put the old one back for the --no-build-isolation build (pip then warns that torch wants
# a newer setuptools: torch only needs it for its own C++-extension helpers).
$PIP install -q "setuptools<70"
$PIP install -q --no-build-isolation "${FIND_LINKS[@]}" "$(grep -E '^mmcv==' requirements.txt)"
$PIP install -q "${FIND_LINKS[@]}" -r requirements.txt
# mmdet3d's dependency resolution may not move numpy/torch: verify the pins held.
"$VENV/bin/python" - <<'PY'
import numpy, torch, mmcv, mmdet, mmdet3d, mmengine, transformers, peft
print('setup: torch', torch.__version__, 'numpy', numpy.__version__, 'mmcv', mmcv.__version__,
      'mmdet', mmdet.__version__, 'mmdet3d', mmdet3d.__version__, 'mmengine', mmengine.__version__,
      'transformers', transformers.__version__, 'peft', peft.__version__)
PY
rm -f "$VENV"/.mapllava-setup-*
touch "$STAMP"
