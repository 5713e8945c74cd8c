#!/usr/bin/env bash
# Sets everything up on a fresh Debian/Ubuntu machine with python3 (idempotent): a virtual environment in
# .venv with requirements-dev.txt, and the Debian packages the project uses.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian ships venv/ensurepip separately from python3; the embedded default dataset (Fashion-MNIST's IDX
# files under /usr/share/datasets/fashion-mnist) is a Debian package too. The tests need neither the
# dataset nor the network, except one test of the real files; the pipelines read it by default.
# The command-line tools restart themselves on tcmalloc when it is installed (experiments/malloc.py).
apt_packages=()
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_packages+=(python3-venv)
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || apt_packages+=(dataset-fashion-mnist)
case "$(PATH="$PATH:/sbin" ldconfig -p 2>/dev/null)" in
  *libtcmalloc_minimal.so*) ;;
  *) apt_packages+=(libtcmalloc-minimal4) ;;
esac
if [ ${#apt_packages[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  { as_root apt-get update -q && as_root apt-get install -y -q "${apt_packages[@]}"; } >/dev/null ||
    echo "note: could not install ${apt_packages[*]} with apt-get" >&2
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
