#!/usr/bin/env bash
# Build tools/tf2_msgs (the TFMessage type only) with the ROS 2 message generators from PyPI and
# install it into a venv that has the ROS 2 wheels (setup.py ROS_WHEELS), so that
# `from tf2_msgs.msg import TFMessage` works there and the localizer publishes map->odom on /tf
# without a ROS 2 install (imposing_ros/nodes/tf_io.py). tf2_msgs and tf2_ros are not on PyPI.
#
# Usage: tools/build_tf2_msgs.sh VENV
#
# Idempotent: does nothing when tf2_msgs already imports in VENV (built before, or a real ROS 2
# install on the path). Builds in a temporary folder, removed afterwards. Installs like the
# message wheels do: libraries into VENV/lib (found through LD_LIBRARY_PATH, which the wheels'
# ros_wheels_bootstrapper sets when the venv's Python starts), the Python package into
# site-packages, share/tf2_msgs and the ament index into VENV/share; the list of installed files
# goes to VENV/share/tf2_msgs/install_manifest.txt.
# Needs cmake, a C and a C++ compiler, make and the Python headers (Debian: cmake g++ make
# python3-dev, in the Makefile's DEB_PACKAGES). The build-time generators (ament_cmake,
# rosidl_default_generators and what their wheels forget to require) are pip-installed into VENV.
# Exit status: 0 built or nothing to do, 1 failed (the reason is printed), 2 usage.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOURCE=$HERE/tf2_msgs
# Pinned to the Kilted wheels of setup.py ROS_WHEELS (rclpy 9.1.2, rosidl 4.9.5). The wheels of
# rosidl-default-generators and ament-cmake do not declare catkin_pkg, ament_package,
# ament_cmake_include_directories, ament_cmake_ros_core and rosidl_core_generators, which the
# build needs: named here.
GENERATORS=(
    catkin-pkg==1.1.1
    ros-kilted-ament-package==0.17.2
    ros-kilted-ament-cmake==2.7.3
    ros-kilted-ament-cmake-include-directories==2.7.3
    ros-kilted-ament-cmake-ros-core==0.14.5
    ros-kilted-rosidl-core-generators==0.3.1
    ros-kilted-rosidl-default-generators==1.7.1
)

fail() { echo "build_tf2_msgs: $*" >&2; exit 1; }

if [ $# -ne 1 ]; then
    echo "usage: $0 VENV" >&2
    exit 2
fi
PY=$1/bin/python
[ -x "$PY" ] || fail "no Python at $PY (give the venv folder)"

# The same check that decides it at run time: the type and its C type support load.
CHECK='from rclpy.serialization import serialize_message
from tf2_msgs.msg import TFMessage
serialize_message(TFMessage())
import tf2_msgs
print(tf2_msgs.__path__[0])'
if where=$("$PY" -c "$CHECK" 2>/dev/null); then
    echo "build_tf2_msgs: tf2_msgs already imports ($where): nothing to build"
    exit 0
fi
"$PY" -c 'import rclpy, geometry_msgs.msg' 2>/dev/null \
    || fail "rclpy and geometry_msgs do not import in $1 (pip install -e '.[ros]' first)"

missing=""
for tool in cmake cc c++ make; do
    command -v "$tool" >/dev/null || missing="$missing $tool"
done
[ -z "$missing" ] || fail "missing build tools:$missing (Debian: apt-get install cmake g++ make)"
INCLUDE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$INCLUDE/Python.h" ] \
    || fail "no Python headers ($INCLUDE/Python.h; Debian: apt-get install python3-dev)"

echo "build_tf2_msgs: installing the message generators into $1"
"$PY" -m pip install -q "${GENERATORS[@]}" || fail "pip could not install ${GENERATORS[*]}"

PREFIX=$("$PY" -c 'import sys; print(sys.prefix)')
SITE=$("$PY" -c 'import os, sys, sysconfig; print(os.path.relpath(sysconfig.get_paths()["purelib"], sys.prefix))')
BUILD=$(mktemp -d "${TMPDIR:-/tmp}/tf2_msgs_build.XXXXXX")
trap 'rm -rf "$BUILD"' EXIT
LOG=$BUILD/log.txt
started=$(date +%s)
echo "build_tf2_msgs: building tf2_msgs in $BUILD"
# ament finds packages through AMENT_PREFIX_PATH (resource index) and CMAKE_PREFIX_PATH; the
# generators run the venv's Python, whose libraries are in PREFIX/lib.
if ! (
    export AMENT_PREFIX_PATH=$PREFIX CMAKE_PREFIX_PATH=$PREFIX PATH=$PREFIX/bin:$PATH
    export LD_LIBRARY_PATH=$PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    cmake -S "$SOURCE" -B "$BUILD/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
        -DCMAKE_INSTALL_PREFIX="$PREFIX" -DPYTHON_INSTALL_DIR="$SITE" \
        -DPython3_EXECUTABLE="$PY" &&
    cmake --build "$BUILD/build" -j "$(nproc)" &&
    cmake --install "$BUILD/build"
) >"$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    fail "the build failed (the end of its log is above)"
fi
cp "$BUILD/build/install_manifest.txt" "$PREFIX/share/tf2_msgs/install_manifest.txt"
where=$("$PY" -c "$CHECK" 2>&1) || { echo "$where" >&2; fail "built, but tf2_msgs does not load"; }
echo "build_tf2_msgs: installed $where ($(( $(date +%s) - started )) s)"
