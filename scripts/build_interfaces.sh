#!/usr/bin/env bash
# Build the ROS 2 workspace (ros2_ws/src: fleetloop_interfaces with rosidl, fleetloop_core and
# fleetloop_ros as ament_python) with colcon into ros2_ws/install, using the ROS 2 wheels of .venv
# (no /opt/ros here). Idempotent: skipped when its inputs are unchanged. Called by scripts/setup.sh.
#
# Recipe (shared FACTS.md): activated venv, AMENT_PREFIX_PATH=$VIRTUAL_ENV, and a one-time fix-up
# of include paths baked into the wheels' CMake files (they point at the wheel builder's Python).
# The result is registered with .venv (see the end of this script), so no `source
# install/setup.bash` is needed here; robots with a ROS distro source it as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-.venv}
WS=ros2_ws

log() { printf '\033[1m[interfaces]\033[0m %s\n' "$*"; }

for tool in cmake c++ make; do
  if ! command -v "$tool" >/dev/null; then
    echo "[interfaces] '$tool' not found: install it (Debian: apt-get install cmake g++ make)" >&2
    exit 1
  fi
done

# shellcheck disable=SC1091
source "$VENV/bin/activate"
export AMENT_PREFIX_PATH="$VIRTUAL_ENV"
unset COLCON_PREFIX_PATH CMAKE_PREFIX_PATH || true

# Inputs that decide whether a rebuild is needed: sources, build settings, this script, Python.
inputs_hash=$(
  {
    find "$WS/src" -type f \( -name '*.msg' -o -name '*.srv' -o -name 'CMakeLists.txt' -o -name 'package.xml' \
      -o -name 'setup.py' -o -name 'setup.cfg' \) -not -path '*/.*' -print0 | sort -z | xargs -0 sha256sum
    sha256sum colcon.meta scripts/build_interfaces.sh
    python -c 'import sys; print(sys.version)'
  } | sha256sum | cut -c1-16
)
stamp="$WS/install/.fleetloop-build-$inputs_hash"
site_rel="lib/python$(python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')/site-packages"
generated="$ROOT/$WS/install/fleetloop_interfaces/$site_rel"
pth="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/fleetloop_interfaces_ws.pth"

if [ -f "$stamp" ] && [ -d "$generated/fleetloop_interfaces" ]; then
  log "workspace current ($WS/install)"
else
  # One-time fix-up: the wheels' CMake exports name /opt/python/cp311-cp311 include dirs.
  python - <<'EOF'
import pathlib, sysconfig, os
import numpy
share = pathlib.Path(os.environ["VIRTUAL_ENV"]) / "share"
replacements = {
    "/opt/python/cp311-cp311/include/python3.11": sysconfig.get_paths()["include"],
    "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include": numpy.get_include(),
}
fixed = 0
for path in share.rglob("*.cmake"):
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    new = text
    for old, replacement in replacements.items():
        new = new.replace(old, replacement)
    if new != text:
        path.write_text(new, encoding="utf-8", errors="surrogateescape")
        fixed += 1
if fixed:
    print(f"[interfaces] fixed include paths in {fixed} CMake files of the ROS 2 wheels")
EOF
  log "colcon build of $WS (fleetloop_interfaces, fleetloop_core, fleetloop_ros)"
  mkdir -p "$WS/log"
  rm -f "$WS"/install/.fleetloop-build-*
  start=$(date +%s)
  colcon --log-base "$WS/log" build \
    --base-paths "$WS/src" --build-base "$WS/build" --install-base "$WS/install" \
    --metas colcon.meta --symlink-install \
    --event-handlers console_cohesion+ console_stderr- status- \
    > "$WS/log/colcon-build.txt" 2>&1 || { tail -n 60 "$WS/log/colcon-build.txt" >&2; exit 1; }
  touch "$stamp"
  log "built in $(( $(date +%s) - start )) s (log: $WS/log/colcon-build.txt)"
fi

# Register the workspace with the venv, like an editable install: the generated Python package
# through a .pth file, the generated typesupport libraries as links in $VIRTUAL_ENV/lib. rclpy
# dlopen()s those libraries by bare name, and the ROS wheels' bootstrapper puts $VIRTUAL_ENV/lib
# on LD_LIBRARY_PATH of every venv Python (an os.environ change inside a process comes too late).
if [ ! -f "$pth" ] || [ "$(cat "$pth")" != "$generated" ]; then
  printf '%s\n' "$generated" > "$pth"
  log "registered $generated in $(basename "$pth")"
fi
for library in "$ROOT/$WS/install/fleetloop_interfaces/lib/"libfleetloop_interfaces__*.so; do
  link="$VIRTUAL_ENV/lib/$(basename "$library")"
  if [ "$(readlink "$link" 2>/dev/null)" != "$library" ]; then
    ln -sfn "$library" "$link"
  fi
done
