#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs on a GPU machine that has no package
# registry and another OS image (issue 15): run it HERE, on the Debian machine.
#
# It writes build-gpu/ (a build directory of its own, so that test.sh and the
# specs, which find the checkout as the build directory's parent, work on it):
#   build-gpu/moelua, moe/core.so, test_engine, public_api   the build/ binaries,
#       debug info stripped (their CUDA objects come from this machine's nvcc;
#       the CUDA runtime is linked statically, so they need only a driver)
#   build-gpu/deps/    the Debian files they need at run time and to rebuild:
#       lib/           shared libraries under their sonames (real files, no links):
#                      LuaJIT, libedit, OpenBLAS (pthread), libgfortran, xxhash,
#                      cairo and its closure (moe.plot), the Lua C modules' libraries
#       lib/lua/5.1/   Lua C modules (lua-cjson, lfs, lua-system, lua-term)
#       share/lua/5.1/ busted and its Lua dependencies, cjson's Lua part
#       include/       the -dev headers (LuaJIT, libedit, OpenBLAS, xxhash, zlib)
#       bin/           busted (the script), luajit (a wrapper that keeps the
#                      bundled Lua modules on LUA_PATH/LUA_CPATH even when a
#                      spec sets its own with ";;"), pkg-config (a shim that
#                      answers the Makefile's PKGS from the bundle)
#       fonts/, etc/fonts/fonts.conf   DejaVu Sans for cairo's text
#       env.sh         `. build-gpu/deps/env.sh` sets PATH, LD_LIBRARY_PATH,
#                      LUA_PATH, LUA_CPATH, FONTCONFIG_FILE, MOE_BUSTED
# and packs it all into ONE file, build/gpu-bundle.tar.gz (build/ is ignored),
# because the device tool's carry holds 64 MiB at most and the unpacked tree is
# larger (OpenBLAS alone is 36 MB). gpu_check.sh unpacks it into build-gpu/.
#
# The device command (the carry list is exactly this one path):
#   run  command="scripts/gpu_check.sh"  carry=["build/gpu-bundle.tar.gz"]
#
# The files come from this machine's installed Debian packages (dpkg -L), the
# very versions build/moelua was linked against; scripts/deps.sh installs them.
# Shared libraries every image has (libc, libm, libstdc++, libgcc_s, libz,
# libtinfo, libexpat (python3 has it), ld.so) are left out: gpu_check.sh checks `ldd` first and says what
# is missing. Every bundled library needs glibc <= 2.35 (Ubuntu 22.04; checked below).
#
# usage: scripts/gpu_bundle.sh [BUILD]    (BUILD: the build dir to pack, default build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
src=${1:-build}
out=build-gpu
deps=$out/deps
arch=x86_64-linux-gnu
max_glibc=2.35 # Ubuntu 22.04; only cairo needs 2.35, the rest <= 2.34

say() { echo "gpu_bundle: $*"; }
die() { echo "gpu_bundle: $*" >&2; exit 1; }

scripts/deps.sh
make --no-print-directory -j2 BUILD="$src" "$src/moelua" "$src/moe/core.so" "$src/test_engine" "$src/public_api" >/dev/null
"$src/moelua" -e 'assert(require("moe").cuda.is_built(), "built without the CUDA backend (no nvcc?)")' ||
  die "$src/moelua has no CUDA backend: build it with nvcc on PATH (make CUDA=1)"

rm -rf "$out"
mkdir -p "$deps"/{lib/lua/5.1,share/lua/5.1,include,bin,libexec,fonts,etc/fonts} "$out/moe"
for f in moelua moe/core.so test_engine public_api; do strip --strip-debug -o "$out/$f" "$src/$f"; done

# --- shared libraries: the closure of what the binaries, luajit, the Lua C
# modules and cairo load, less the base every image has
base='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libz|libtinfo|libexpat)\.so'
lua_pkgs=(lua-busted lua-cliargs lua-dkjson lua-filesystem lua-luassert lua-mediator lua-penlight lua-say
  lua-system lua-term lua-cjson)
for p in "${lua_pkgs[@]}" luajit libluajit-5.1-common libcairo2 fonts-dejavu-core; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || die "package $p is not installed"
done
luamods=()
for p in "${lua_pkgs[@]}"; do
  while read -r f; do
    [ -f "$f" ] || continue
    case "$f" in
      /usr/share/lua/5.1/*) rel=${f#/usr/share/lua/5.1/}; mkdir -p "$deps/share/lua/5.1/$(dirname "$rel")"
        cp "$f" "$deps/share/lua/5.1/$rel" ;;
      /usr/lib/$arch/lua/5.1/*) rel=${f#/usr/lib/$arch/lua/5.1/}; mkdir -p "$deps/lib/lua/5.1/$(dirname "$rel")"
        cp -L "$f" "$deps/lib/lua/5.1/$rel"; luamods+=("$f") ;;
    esac
  done < <(dpkg -L "$p")
done
cp /usr/bin/busted "$deps/bin/busted"
cp -L /usr/bin/luajit "$deps/libexec/luajit"
jitdir=$(dpkg -L libluajit-5.1-common | grep -m1 '/jit$')
mkdir -p "$deps/share/$(basename "$(dirname "$jitdir")")" && cp -r "$jitdir" "$deps/share/$(basename "$(dirname "$jitdir")")/"

declare -A seen=()
for obj in "$src/moelua" "$src/moe/core.so" /usr/bin/luajit "${luamods[@]}" "/usr/lib/$arch/libcairo.so.2"; do
  while read -r name path; do
    [[ "$name" =~ $base ]] && continue
    [ -n "${seen[$name]:-}" ] && continue
    [ -f "$path" ] || die "ldd $obj: $name not found here"
    seen[$name]=1
    cp -L "$path" "$deps/lib/$name"
  done < <(ldd "$obj" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}')
done
cp -L "/usr/lib/$arch/libcairo.so.2" "$deps/lib/libcairo.so.2"
for l in "$deps"/lib/*.so*; do
  need=$(objdump -T "$l" | grep -oE 'GLIBC_[0-9.]+' | sed 's/GLIBC_//' | sort -uV | tail -1)
  [ -z "$need" ] || [ "$(printf '%s\n%s\n' "$need" "$max_glibc" | sort -V | tail -1)" = "$max_glibc" ] ||
    die "$l needs glibc $need (> $max_glibc): the GPU image may not have it"
done

# --- the -dev headers the Makefile's PKGS need (to rebuild on the GPU machine)
cp -r /usr/include/luajit-2.1 "$deps/include/"
cp -r /usr/include/editline "$deps/include/" && cp /usr/include/histedit.h "$deps/include/"
mkdir -p "$deps/include/openblas" && cp /usr/include/$arch/openblas-pthread/*.h "$deps/include/openblas/"
cp /usr/include/xxhash.h /usr/include/xxh3.h /usr/include/zlib.h /usr/include/zconf.h "$deps/include/"

# --- fonts for cairo's toy text API ("sans-serif"), found through a fonts.conf
# whose directories are relative to itself
cp /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf "$deps/fonts/"
cat > "$deps/etc/fonts/fonts.conf" <<'EOF'
<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "urn:fontconfig:fonts.dtd">
<fontconfig>
  <dir prefix="relative">../../fonts</dir>
  <cachedir>/tmp/moelua-fontconfig-cache</cachedir>
  <alias><family>sans-serif</family><prefer><family>DejaVu Sans</family></prefer></alias>
</fontconfig>
EOF

# --- a pkg-config for the Makefile's PKGS (luajit libedit openblas zlib libxxhash)
# from the bundle; other packages and options go to a real pkg-config if any
cat > "$deps/bin/pkg-config" <<'EOF'
#!/usr/bin/env bash
# moelua's bundled pkg-config (scripts/gpu_bundle.sh): the Makefile's PKGS from build-gpu/deps
d=$(cd "$(dirname "$0")/.." && pwd)
mode="" out=() ok=1 args=("$@")
for a in "$@"; do
  case "$a" in
    --cflags) mode=c ;; --libs) mode=l ;;
    --exists) mode=e ;;
    luajit)    [ "$mode" = l ] && out+=("-L$d/lib" -l:libluajit-5.1.so.2) || out+=("-I$d/include/luajit-2.1") ;;
    libedit)   [ "$mode" = l ] && out+=("-L$d/lib" -l:libedit.so.2) || out+=("-I$d/include" "-I$d/include/editline") ;;
    openblas)  [ "$mode" = l ] && out+=("-L$d/lib" -l:libopenblas.so.0) || out+=("-I$d/include/openblas") ;;
    zlib)      [ "$mode" = l ] && out+=(-l:libz.so.1) || out+=("-I$d/include") ;;
    libxxhash) [ "$mode" = l ] && out+=("-L$d/lib" -l:libxxhash.so.0) || out+=("-I$d/include") ;;
    *) ok=0 ;;
  esac
done
if [ "$ok" = 0 ] || [ -z "$mode" ]; then
  self=$(readlink -f "$0")
  IFS=: read -ra dirs <<< "$PATH"
  for p in "${dirs[@]}"; do
    [ -x "$p/pkg-config" ] && [ "$(readlink -f "$p/pkg-config")" != "$self" ] && exec "$p/pkg-config" "${args[@]}"
  done
  echo "pkg-config (moelua bundle): only --cflags/--libs of luajit libedit openblas zlib libxxhash" >&2
  exit 1
fi
[ "$mode" = e ] && exit 0
echo "${out[@]}"
EOF

# --- luajit: the bundled modules stay reachable when a spec sets LUA_PATH='...;;'
# (";;" expands to luajit's built-in defaults, which point at /usr/share/lua)
cat > "$deps/bin/luajit" <<'EOF'
#!/bin/sh
d=$(cd "$(dirname "$0")/.." && pwd)
LUA_PATH="${LUA_PATH:-;;};$d/share/lua/5.1/?.lua;$d/share/lua/5.1/?/init.lua;$d/share/luajit-2.1.0-beta3/?.lua" \
LUA_CPATH="${LUA_CPATH:-;;};$d/lib/lua/5.1/?.so" exec "$d/libexec/luajit" "$@"
EOF

cat > "$deps/env.sh" <<'EOF'
# . build-gpu/deps/env.sh -- moelua's bundled Debian files (scripts/gpu_bundle.sh)
MOE_GPU_DEPS=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)
export MOE_GPU_DEPS
export PATH="$MOE_GPU_DEPS/bin:$PATH"
export LD_LIBRARY_PATH="$MOE_GPU_DEPS/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LUA_PATH="$MOE_GPU_DEPS/share/lua/5.1/?.lua;$MOE_GPU_DEPS/share/lua/5.1/?/init.lua;;"
export LUA_CPATH="$MOE_GPU_DEPS/lib/lua/5.1/?.so;;"
export FONTCONFIG_FILE="$MOE_GPU_DEPS/etc/fonts/fonts.conf"
export MOE_BUSTED="$MOE_GPU_DEPS/bin/busted"
EOF
chmod +x "$deps/bin/"* "$deps/libexec/luajit"

mkdir -p build
tar -C "$out" -czf build/gpu-bundle.tar.gz .
unpacked=$(du -sm "$out" | cut -f1)
packed=$(du -m build/gpu-bundle.tar.gz | cut -f1)
say "build-gpu/: ${unpacked} MiB unpacked; build/gpu-bundle.tar.gz: ${packed} MiB (carry limit 64 MiB)"
[ "$(stat -c %s build/gpu-bundle.tar.gz)" -lt $((64 * 1024 * 1024)) ] || die "the bundle is over the carry limit"
say 'device command: scripts/gpu_check.sh   carry: ["build/gpu-bundle.tar.gz"]'
