#!/usr/bin/env bash
# Installs what building, testing and running operandod need on Debian 12 (apt), and checks
# that a Swift 6 toolchain is present. Safe to run again: installs only what is missing.
set -euo pipefail

packages=(
  pkg-config
  libserialport-dev   # serial transport (libserialport)
  libusb-1.0-0-dev    # USB transport (libusb)
  systemd             # systemd-analyze, for checking the unit
  umockdev            # emulated /dev/ttyUSBn for the serial-hardware tests: libumockdev-preload.so.0
  libumockdev-dev     # umockdev's headers and pkg-config file (umockdev-1.0)
  gir1.2-umockdev-1.0 # umockdev's GObject bindings, used by Tests/Support/umockdev-harness.py
  python3-gi          # PyGObject for Debian's /usr/bin/python3, which runs the harness
  gcc                 # cc: the serial-hardware tests compile Tests/Support/serialprobe.c
  python3-venv        # a virtualenv for zaber-motion, Zaber's own client, in the peer-client test
  libhdf5-dev         # NeXus/HDF5 export (libhdf5, pkg-config hdf5)
  hdf5-tools          # h5dump: the tests read exported files back with it
  python3-h5py        # the tests read exported files back with h5py too
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v swift >/dev/null; then
  if [ -x /opt/swift/usr/bin/swift ]; then
    echo "install-deps: swift is in /opt/swift/usr/bin; add it to PATH" >&2
  else
    echo "install-deps: no Swift toolchain found; install Swift 6 (https://www.swift.org/install/linux/) and put it on PATH" >&2
  fi
  exit 1
fi
