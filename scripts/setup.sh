#!/usr/bin/env bash
# Creates .venv with every Python package pinned in requirements.txt and the Debian libraries Open3D needs.
# Idempotent; `make` calls it whenever requirements.txt or pyproject.toml change.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES="libusb-1.0-0 libgomp1 libgl1"
missing=""
for p in $DEBIAN_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages:$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "setup: please install these Debian packages first (as root): apt-get install$missing" >&2
    exit 1
  fi
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch must be on the same pip line as everything that depends on it, so pip keeps the CPU 2.13.0 wheel.
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
.venv/bin/python -c "import open3d, pycolmap, poselib, torch, sceneloc; assert torch.__version__.startswith('2.13.0')"
touch .venv/.installed
echo "setup: ok (.venv ready)"
