#!/usr/bin/env bash
# Installs the Debian packages gst-moshi builds, tests and runs with. Safe to re-run: it only
# calls apt-get when something is missing. Usage: tools/setup-deps.sh [--with-fuzz]
set -euo pipefail

packages=(
  build-essential meson ninja-build pkg-config
  libglib2.0-dev libopenblas-dev check
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad python3
  valgrind espeak-ng
  libsoup-3.0-dev python3-websockets
  libjson-glib-dev gstreamer1.0-nice chromium
  libgstrtspserver-1.0-dev gstreamer1.0-x
)
if [[ "${1:-}" == "--with-fuzz" ]]; then
  packages+=(clang libclang-rt-14-dev)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} == 0 )); then
  exit 0
fi

echo "setup-deps: installing ${missing[*]}"
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
