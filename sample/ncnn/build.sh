#!/usr/bin/env bash
# Build the NCNN C++ library from the `ncnn` source distribution on the package index, then tinydet_cli on it.
#
#   sample/ncnn/build.sh host     -> sample/ncnn/build/host/tinydet_cli   (x86-64, runs here)
#   NCNN_HOST_DISPATCH=1 sample/ncnn/build.sh host -> sample/ncnn/build/host-dispatch/tinydet_cli
#   sample/ncnn/build.sh arm64    -> sample/ncnn/build/arm64/tinydet_cli  (aarch64 Linux; run here with
#                                    qemu-aarch64 -cpu cortex-a53 -L /usr/aarch64-linux-gnu)
#
# The NCNN build takes minutes, so it is cached outside the work tree, keyed by NCNN version and architecture:
#   ${TINYDET_CACHE:-~/.cache/tinydet}/ncnn-<version>-<arch>/install
# A second run only rebuilds the app (seconds). Environment knobs:
#   NCNN_VERSION   the sdist version to build (default: the version the Python `ncnn` wheel in requirements pins)
#   TINYDET_CACHE  where the cache lives
#   JOBS           parallel compile jobs (default 2)
#   NCNN_HOST_DISPATCH=1  host only: keep NCNN's runtime CPU dispatch (AVX2/AVX512 kernels: faster inference,
#                  a much longer build, cached separately) instead of the quick SSE2-only build
set -euo pipefail

ARCH="${1:-}"
case "$ARCH" in
  host|arm64) ;;
  *) echo "usage: $0 host|arm64" >&2; exit 2 ;;
esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NCNN_VERSION="${NCNN_VERSION:-1.0.20261020}"
CACHE="${TINYDET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tinydet}"
JOBS="${JOBS:-2}"
mkdir -p "$CACHE"

log() { echo "[build.sh $ARCH] $*" >&2; }

# ---- 1. system packages (only what is missing, only when we may install) -----------------------------------
need_pkgs=()
command -v cmake >/dev/null || need_pkgs+=(cmake)
command -v g++ >/dev/null || need_pkgs+=(g++)
command -v make >/dev/null || need_pkgs+=(make)
[ -f /usr/include/stb/stb_image.h ] || need_pkgs+=(libstb-dev)
if [ "$ARCH" = arm64 ]; then
  command -v aarch64-linux-gnu-g++ >/dev/null || need_pkgs+=(g++-aarch64-linux-gnu)
  command -v qemu-aarch64 >/dev/null || need_pkgs+=(qemu-user)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${need_pkgs[@]}" >"$CACHE/apt.log" 2>&1 || {
      apt-get update >>"$CACHE/apt.log" 2>&1
      apt-get install -y --no-install-recommends "${need_pkgs[@]}" >>"$CACHE/apt.log" 2>&1 ||
        { log "apt-get failed, see $CACHE/apt.log"; exit 1; }
    }
  else
    log "missing packages: ${need_pkgs[*]} (install them, e.g. apt-get install ${need_pkgs[*]})"
    exit 1
  fi
fi

# ---- 2. NCNN source: the sdist from the index pip is configured with, checked against the index's sha256 -----
# pip itself refuses this sdist (its setup.py stamps today's date into the version), so take the file directly.
SRC="$CACHE/ncnn-$NCNN_VERSION-src"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  TARBALL="$CACHE/ncnn-$NCNN_VERSION.tar.gz"
  if [ ! -f "$TARBALL" ]; then
    INDEX_URL="${PIP_INDEX_URL:-$(python3 -m pip config get global.index-url 2>/dev/null || true)}"
    INDEX_URL="${INDEX_URL:-https://pypi.org/simple}"
    log "fetching ncnn-$NCNN_VERSION.tar.gz from $INDEX_URL"
    python3 - "$INDEX_URL" "$NCNN_VERSION" "$TARBALL" <<'EOF'
import hashlib, re, sys, urllib.parse, urllib.request
index_url, version, target = sys.argv[1].rstrip('/') + '/', sys.argv[2], sys.argv[3]
page_url = urllib.parse.urljoin(index_url, 'ncnn/')
page = urllib.request.urlopen(page_url, timeout=120).read().decode('utf-8', 'replace')
wanted = f'ncnn-{version}.tar.gz'
for href in re.findall(r'href="([^"]+)"', page):
    url, _, fragment = href.replace('&amp;', '&').partition('#')
    if url.rsplit('/', 1)[-1] == wanted:
        break
else:
    sys.exit(f'{page_url} lists no {wanted}')
if not fragment.startswith('sha256='):
    sys.exit(f'{page_url}: the link to {wanted} carries no sha256 to check it against')
data = urllib.request.urlopen(urllib.parse.urljoin(page_url, url), timeout=600).read()
digest = hashlib.sha256(data).hexdigest()
if digest != fragment[len('sha256='):]:
    sys.exit(f'{wanted}: sha256 {digest} differs from the index ({fragment})')
open(target + '.part', 'wb').write(data)
EOF
    mv "$TARBALL.part" "$TARBALL"
  fi
  rm -rf "$SRC.part" && mkdir -p "$SRC.part"
  tar -xzf "$TARBALL" -C "$SRC.part" --strip-components=1
  mv "$SRC.part" "$SRC"
fi

# ---- 3. NCNN library for this architecture (cached) ---------------------------------------------------------
VARIANT="$ARCH"
if [ "$ARCH" = host ] && [ "${NCNN_HOST_DISPATCH:-0}" = 1 ]; then VARIANT=host-dispatch; fi
NCNN_DIR="$CACHE/ncnn-$NCNN_VERSION-$VARIANT"
# The sdist lacks tools/, examples/, benchmark/, tests/ and the python bindings: tell CMake so.
common=(-DCMAKE_BUILD_TYPE=Release -DNCNN_VULKAN=OFF -DNCNN_BUILD_TOOLS=OFF -DNCNN_BUILD_EXAMPLES=OFF
        -DNCNN_BUILD_BENCHMARK=OFF -DNCNN_BUILD_TESTS=OFF -DNCNN_PYTHON=OFF)
if [ "$VARIANT" = host-dispatch ]; then
  arch_flags=()
  app_flags=()
elif [ "$ARCH" = host ]; then
  # One code path (SSE2) instead of runtime dispatch over AVX/AVX2/AVX512 variants: a build several times shorter.
  arch_flags=(-DNCNN_RUNTIME_CPU=OFF -DNCNN_AVX=OFF)
  app_flags=()
else
  # Keep runtime dispatch: with it off, every kernel is compiled for armv8.6+sve and Cortex-A53/A76 cannot run it.
  cross=(-DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64
         -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++)
  arch_flags=("${cross[@]}")
  app_flags=("${cross[@]}")
fi
if [ ! -f "$NCNN_DIR/install/.complete" ]; then
  log "building NCNN $NCNN_VERSION (minutes; log: $NCNN_DIR/build.log)"
  rm -rf "$NCNN_DIR" && mkdir -p "$NCNN_DIR/build"
  if ! { cmake -S "$SRC" -B "$NCNN_DIR/build" "${common[@]}" "${arch_flags[@]}" \
             -DCMAKE_INSTALL_PREFIX="$NCNN_DIR/install" &&
         cmake --build "$NCNN_DIR/build" --target install -j "$JOBS"; } >"$NCNN_DIR/build.log" 2>&1; then
    log "NCNN build failed; last lines of $NCNN_DIR/build.log:"
    grep -E 'error|Error' "$NCNN_DIR/build.log" | tail -20 >&2 || tail -20 "$NCNN_DIR/build.log" >&2
    exit 1
  fi
  touch "$NCNN_DIR/install/.complete"
  rm -rf "$NCNN_DIR/build"   # the install is all the app needs; the objects are 20-150 MB
fi
NCNN_CMAKE_DIR="$(dirname "$(find "$NCNN_DIR/install" -name ncnnConfig.cmake | head -1)")"

# ---- 4. the app ---------------------------------------------------------------------------------------------
APP_BUILD="$HERE/build/$VARIANT"
mkdir -p "$APP_BUILD"
cmake -S "$HERE" -B "$APP_BUILD" -DCMAKE_BUILD_TYPE=Release -Dncnn_DIR="$NCNN_CMAKE_DIR" \
      -DSTB_INCLUDE_DIR=/usr/include/stb "${app_flags[@]}" >"$APP_BUILD.cmake.log" 2>&1 ||
  { tail -30 "$APP_BUILD.cmake.log" >&2; exit 1; }
cmake --build "$APP_BUILD" -j "$JOBS" >"$APP_BUILD.build.log" 2>&1 ||
  { grep -E 'error' "$APP_BUILD.build.log" | head -30 >&2 || tail -30 "$APP_BUILD.build.log" >&2; exit 1; }
log "built $APP_BUILD/tinydet_cli"
echo "$APP_BUILD/tinydet_cli"
