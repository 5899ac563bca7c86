#!/bin/sh
# Cross-compile gptj_ref._core for aarch64 Linux on an x86-64 Debian host and run the kernel tests under
# qemu-user with Debian's arm64 Python and NumPy (unpacked into a directory, never installed).
#
#   apt-get install g++-aarch64-linux-gnu qemu-user && dpkg --add-architecture arm64 && apt-get update
#   sh tools/cross_aarch64.sh [WORKDIR]          # default WORKDIR: /tmp/gptj-aarch64
#
# Checked on Debian 12 (aarch64-linux-gnu-g++ 12.2, qemu-aarch64 7.2): the extension builds without warnings
# and tests/test_kernels.py + tests/test_q8_kernels.py pass on the scalar kernels (the only ones on aarch64).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/gptj-aarch64}
SYSROOT=$WORK/root
mkdir -p "$WORK/debs" "$SYSROOT"
cd "$WORK/debs"
apt-get download libc6:arm64 libgcc-s1:arm64 libstdc++6:arm64 libgomp1:arm64 python3.11-minimal:arm64 \
    libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64 libpython3.11:arm64 libpython3.11-dev:arm64 \
    libexpat1:arm64 zlib1g:arm64 libffi8:arm64 python3-numpy:arm64 libblas3:arm64 liblapack3:arm64 \
    libgfortran5:arm64 libbz2-1.0:arm64 liblzma5:arm64 libssl3:arm64 libsqlite3-0:arm64 libuuid1:arm64 \
    libncursesw6:arm64 libtinfo6:arm64 libreadline8:arm64 libcrypt1:arm64 libdb5.3:arm64 libnsl2:arm64 \
    libtirpc3:arm64 libgssapi-krb5-2:arm64 libkrb5-3:arm64 libk5crypto3:arm64 libcom-err2:arm64 \
    libkrb5support0:arm64 libkeyutils1:arm64
for deb in *.deb; do dpkg -x "$deb" "$SYSROOT"; done

cat > "$WORK/toolchain.cmake" <<CMAKE
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH $SYSROOT /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
include_directories(SYSTEM $SYSROOT/usr/include)
CMAKE
cmake -S "$ROOT" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_TOOLCHAIN_FILE="$WORK/toolchain.cmake" \
    -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python3)" \
    -DPython_INCLUDE_DIR="$SYSROOT/usr/include/python3.11" -DPython_SOABI=cpython-311-aarch64-linux-gnu \
    -DPYTHON_MODULE_EXTENSION=.cpython-311-aarch64-linux-gnu.so
cmake --build "$WORK/build" -j2

# A copy of the package with the aarch64 extension; pytest and hypothesis (pure Python) come from the host.
rm -rf "$WORK/pkg" && mkdir -p "$WORK/pkg"
cp -r "$ROOT/gptj_ref" "$ROOT/tests" "$ROOT/pyproject.toml" "$WORK/pkg/"
rm -f "$WORK"/pkg/gptj_ref/_core*.so && cp "$WORK"/build/_core*.so "$WORK/pkg/gptj_ref/"
HOST_SITE=$(python3 -c "import pytest, os; print(os.path.dirname(os.path.dirname(pytest.__file__)))")
cd "$WORK/pkg"
env -u PYTHONPATH PYTHONPATH="$WORK/pkg:$SYSROOT/usr/lib/python3/dist-packages:$HOST_SITE" \
    QEMU_SET_ENV=LD_LIBRARY_PATH=/usr/lib/aarch64-linux-gnu/blas:/usr/lib/aarch64-linux-gnu/lapack \
    qemu-aarch64 -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" -m pytest -q -p no:cacheprovider \
    tests/test_kernels.py tests/test_q8_kernels.py
