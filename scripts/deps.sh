#!/usr/bin/env bash
# Installs the Debian packages moelua needs (and any named as arguments), if any are missing.
# Quiet when everything is present; says what it installs otherwise.
set -euo pipefail
pkgs=(build-essential pkg-config luajit libluajit-5.1-dev libopenblas-dev lua-busted
      libedit-dev zlib1g-dev libxxhash-dev tmux lua-cjson lua-filesystem libcairo2 fonts-dejavu-core
      libdnnl-dev libblis4-openmp luarocks groff-base openmpi-bin libopenmpi-dev)
# oneDNN (libdnnl-dev) and BLIS (libblis4-openmp) are opened with dlopen, optional at run
# time: oneDNN runs the bf16 expert GEMMs where the CPU has bf16, and both are timed against
# OpenBLAS for each float32 GEMM shape class (src/cpu/sgemm_lib.c). luarocks and groff-base
# (which renders the man page) are for spec/install_spec.lua: `luarocks make`/`luarocks test`.
# OpenMPI (openmpi-bin: mpirun; libopenmpi-dev: mpi.h, libmpi and its pkg-config ompi-c) is
# moe.distributed's backend: the Makefile builds src/dist/mpi.c when it finds it.
pkgs+=("$@") # extra packages: `make fuzz-deps` asks for clang libclang-rt-dev
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "moelua: installing missing Debian packages: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "moelua: need root (or sudo) to run apt-get install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "moelua: installed ${missing[*]}"
