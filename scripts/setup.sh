#!/usr/bin/env bash
# One-time (and idempotent) set-up for `make test` / `make demo` on Debian 12 / Ubuntu 22.04+:
# apt packages, .venv with pinned requirements, our three packages editable, the ROS 2
# interface package built with colcon. A second run skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(dataset-fashion-mnist mosquitto chromium postgresql python3-venv python3-dev git cmake g++ make)
VENV=.venv

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "[setup] need root for: $*" >&2; return 1; fi
}

apt_retry() {
  # apt can find the dpkg lock held by another install for a while: wait, don't fail at once.
  local tries=0
  until as_root env DEBIAN_FRONTEND=noninteractive apt-get "$@"; do
    tries=$((tries + 1))
    if [ "$tries" -ge 20 ]; then echo "[setup] apt-get $* failed $tries times" >&2; return 1; fi
    log "apt-get busy or failed; retrying in 15 s ($tries/20)"
    sleep 15
  done
}

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  apt_retry update -qq
  apt_retry install -y -qq --no-install-recommends "${missing[@]}"
else
  log "apt packages present"
fi

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null; then PYTHON=$candidate; break; fi
  done
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "[setup] the test environment needs Python 3.11 (the ROS 2 wheels are cp311); found $("$PYTHON" --version)." >&2
  echo "[setup] robots with Python 3.10 (Humble) use requirements/robot.txt and their distro's rclpy." >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

req_stamp="$VENV/.req-$(cat requirements/dev.txt | sha256sum | cut -c1-16)"
if [ ! -f "$req_stamp" ]; then
  log "installing pinned requirements (requirements/dev.txt)"
  "${PIP[@]}" install -q --upgrade pip setuptools wheel
  "${PIP[@]}" install -q -r requirements/dev.txt
  rm -f "$VENV"/.req-*
  touch "$req_stamp"
else
  log "requirements current"
fi

pkg_stamp="$VENV/.pkg-$(cat ros2_ws/src/*/setup.py cloud/setup.py sim/setup.py toolchain/setup.py | sha256sum | cut -c1-16)"
if [ ! -f "$pkg_stamp" ]; then
  log "installing fleetloop_core, fleetloop_ros, fleetloop_cloud, fleetloop_sim, fleetloop_models (editable)"
  "${PIP[@]}" install -q --no-deps --no-build-isolation \
    -e ros2_ws/src/fleetloop_core -e ros2_ws/src/fleetloop_ros -e cloud -e sim -e toolchain
  rm -f "$VENV"/.pkg-*
  touch "$pkg_stamp"
else
  log "packages current"
fi

if [ -x scripts/build_interfaces.sh ]; then
  scripts/build_interfaces.sh
fi
log "done"
