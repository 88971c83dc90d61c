#!/usr/bin/env bash
# Builds the MONAI Label environment used by tests/bundle/test_monailabel.py: a separate virtual
# environment (default .venv-label/ in the repository; override with INFNET_MONAILABEL_VENV)
# holding monailabel 0.8.5 and this package (editable). About 7.6 GB, 3-10 minutes.
#
# Why separate: MONAI Label imports torchvision at module level, and PyPI's torchvision 0.28.0 is
# built against PyPI's torch 2.13.0 (a CUDA build; it runs on CPU too). It fails to load next to
# the CPU-only torch build of the main environment ("operator torchvision::nms does not exist").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${INFNET_MONAILABEL_VENV:-.venv-label}
PY="$VENV/bin/python"
CHECK='import torchvision.ops, monailabel.tasks.infer.bundle, monailabel.tasks.train.bundle, pydicom_seg, infnet_monai'

if [ -x "$PY" ] && "$PY" -c "$CHECK" 2>/dev/null; then
    echo "MONAI Label environment ready: $PY"
    exit 0
fi

python3 -m venv "$VENV"
"$PY" -m pip install --quiet --upgrade pip
# '===' matches the registry's 2.13.0 exactly, never a local '2.13.0+cpu' wheel from find-links.
"$PY" -m pip install --quiet "torch===2.13.0" "torchvision===0.28.0"
# The installed torch satisfies every later requirement, so pip keeps it. The 'label' extra pins
# monailabel 0.8.5 and pydicom 2 (pydicom-seg imports a module pydicom 3 removed).
"$PY" -m pip install --quiet -e ".[label]"
"$PY" -c "$CHECK"
"$PY" -c 'import torch, monailabel, monai, pydicom; print("MONAI Label environment ready:", "torch", torch.__version__, "monailabel", monailabel.__version__, "monai", monai.__version__, "pydicom", pydicom.__version__)'
