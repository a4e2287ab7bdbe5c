#!/usr/bin/env bash
# Creates .venv with every Python package pinned in requirements.txt, the Debian libraries Open3D needs, Chromium
# for the browser tests, and builds the service's viewer (viewer/ -> sceneloc/serve/static/viewer.js).
# Idempotent; `make` calls it whenever requirements.txt, pyproject.toml or the viewer's lock file or source change.
set -euo pipefail
cd "$(dirname "$0")/.."

# Open3D's libraries; Chromium and its WebDriver for the viewer's browser test (tests/browser.py); CGAL's demo data
# (libcgal-demo ships the bunny, armadillo and homer meshes that `sceneloc sdf bench` fits).
DEBIAN_PACKAGES="libusb-1.0-0 libgomp1 libgl1 chromium chromium-driver libcgal-demo"
# Node.js and npm build the viewer: Debian's, unless an npm is already installed (e.g. with NodeSource's nodejs).
command -v npm >/dev/null 2>&1 || DEBIAN_PACKAGES="$DEBIAN_PACKAGES nodejs npm"
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

# The viewer: its npm packages exactly as viewer/package-lock.json pins them (again only when the lock file is newer
# than node_modules), then one esbuild bundle, sceneloc/serve/static/viewer.js (a build output, not committed).
if [ ! -d viewer/node_modules ] || [ viewer/package-lock.json -nt viewer/node_modules ]; then
  echo "setup: installing the viewer's npm packages (npm ci)"
  (cd viewer && npm ci --no-audit --no-fund --loglevel=error)
  touch viewer/node_modules
fi
(cd viewer && npm run --silent build)
[ -s sceneloc/serve/static/viewer.js ] || { echo "setup: the viewer build wrote no sceneloc/serve/static/viewer.js" >&2; exit 1; }

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
