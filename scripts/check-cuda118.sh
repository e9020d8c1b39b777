#!/usr/bin/env bash
# Compile csrc/ with a real CUDA 11.8 nvcc against torch 2.0.1 headers: proves the "CUDA >= 11.8, torch >= 2.0"
# promise for the kernels without a GPU. Compile-only (objects), plus a link check that every mishbench::
# symbol one file uses is defined by another.
#
# Usage: bash scripts/check-cuda118.sh          (Debian 12; installs what it needs as root, idempotent)
# Env:   ARCH=80         one compute capability (sm_XX), default 80
#        JOBS=N          parallel compiles, default nproc
#        VENV=DIR        torch 2.0.1 venv, default /work/venv38 (created with pyenv's 3.8.18 when absent)
#        OUT_DIR=DIR     objects and logs, default ${TMPDIR:-/tmp}/mishbench-cuda118
#        LINK=0          skip the link check
#        FORCE_INSTALL=1 run the apt step even when the toolkit is present
#        CSRC=DIR        sources to check, default csrc/
#
# The toolkit is Debian's non-free nvidia-cuda-toolkit (11.8.89): nvcc in /usr/lib/nvidia-cuda-toolkit/bin,
# headers in /usr/include, ptxas/fatbinary in /usr/bin. nvcc 11.8 needs gcc <= 11 as its host compiler, so
# nvidia-cuda-toolkit-gcc (g++-11) comes too; .cpp files are compiled with the system g++ (gcc 12 is fine).
# Any other CUDA (/usr/local/cuda-*, the /usr/local/bin wrappers) is kept out: nvcc runs with PATH=/usr/bin:/bin
# (it finds ptxas through PATH) and the dependency files are checked for headers from outside /usr/include.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
csrc=${CSRC:-$here/csrc}  # CSRC: another source folder (e.g. a deliberately broken copy to test this script)
ARCH=${ARCH:-80}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
VENV=${VENV:-/work/venv38}
OUT_DIR=${OUT_DIR:-${TMPDIR:-/tmp}/mishbench-cuda118}
LINK=${LINK:-1}
EXT_NAME=mishbench_C            # mishbench/build.py's EXT_NAME
TORCH_WANT=2.0.1
CUDA_WANT=11.8
NVCC=/usr/lib/nvidia-cuda-toolkit/bin/nvcc
HOST_CXX=/usr/bin/g++-11         # nvcc's host compiler (nvidia-cuda-toolkit-gcc's cuda-g++ points here)
CXX_CPP=${CXX_CPP:-/usr/bin/g++} # the .cpp files
CLEAN_PATH=/usr/bin:/bin
t_start=$(date +%s)

say() { echo "check-cuda118: $*"; }
die() { say "ERROR: $*"; exit 2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi; }
# Everything that compiles runs in this environment: no CUDA 13 on PATH, no injected include paths or nvcc flags.
clean_env() {
  env -u CPATH -u C_INCLUDE_PATH -u CPLUS_INCLUDE_PATH -u LIBRARY_PATH -u NVCC_PREPEND_FLAGS -u NVCC_APPEND_FLAGS \
    -u NVCC_CCBIN -u CUDA_HOME -u CUDA_PATH -u LD_LIBRARY_PATH PATH="$CLEAN_PATH" "$@"
}

# ---------------------------------------------------------------------------------------------- 1. toolkit
toolkit_ok() {
  [ -x "$NVCC" ] && [ -x "$HOST_CXX" ] && [ -x /usr/bin/ptxas ] && [ -x /usr/bin/fatbinary ] &&
    clean_env "$NVCC" --version 2>/dev/null | grep -q "release $CUDA_WANT"
}
enable_nonfree() {
  # nvidia-cuda-toolkit lives in non-free: add the components for the Debian suites when no source has them.
  if apt-cache policy nvidia-cuda-toolkit 2>/dev/null | grep -qE '/non-free [a-z0-9]+ Packages'; then return 0; fi
  . /etc/os-release
  local codename=${VERSION_CODENAME:-bookworm} f=/etc/apt/sources.list.d/mishbench-nonfree.sources
  say "enabling contrib non-free non-free-firmware for $codename in $f"
  as_root tee "$f" >/dev/null <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $codename $codename-updates
Components: contrib non-free non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  as_root apt-get update -q >/dev/null || die "apt-get update failed"
  apt-cache policy nvidia-cuda-toolkit | grep -qE '/non-free [a-z0-9]+ Packages' || die "nvidia-cuda-toolkit still not in any source"
}
if [ "${FORCE_INSTALL:-0}" = 1 ] || ! toolkit_ok; then
  command -v apt-get >/dev/null || die "no apt-get: install CUDA $CUDA_WANT (nvcc) and g++-11 by hand"
  say "installing nvidia-cuda-toolkit (CUDA $CUDA_WANT) + nvidia-cuda-toolkit-gcc (g++-11), a few GB ..."
  as_root apt-get update -q >/dev/null || die "apt-get update failed"
  enable_nonfree
  # --no-install-recommends: the recommends are the NVIDIA driver stack, useless for compiling.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends \
    nvidia-cuda-toolkit nvidia-cuda-toolkit-gcc g++-11 >"$OUT_DIR.apt.log" 2>&1 ||
    { tail -20 "$OUT_DIR.apt.log"; die "apt-get install failed (log: $OUT_DIR.apt.log)"; }
  # The downloaded .debs (3.7 GB in /var/cache/apt) are not needed once installed; CI disks fill up.
  as_root apt-get clean || say "warning: apt-get clean failed"
  toolkit_ok || die "toolkit installed but $NVCC is not CUDA $CUDA_WANT"
fi
nvcc_ver=$(clean_env "$NVCC" --version | sed -n 's/.*release \([0-9.]*\), V\([0-9.]*\).*/\2/p')
ptxas_ver=$(clean_env ptxas --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
[ "$(clean_env sh -c 'command -v ptxas')" = /usr/bin/ptxas ] && [ "$ptxas_ver" = "$CUDA_WANT" ] ||
  die "ptxas on nvcc's PATH is not CUDA $CUDA_WANT's /usr/bin/ptxas ($(clean_env sh -c 'command -v ptxas') $ptxas_ver)"

# ---------------------------------------------------------------------------------------------- 2. torch 2.0.1
torch_ok() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_WANT')" 2>/dev/null; }
if ! torch_ok; then
  if [ ! -x "$VENV/bin/python" ]; then
    py38=""
    if command -v pyenv >/dev/null; then
      py38="$(pyenv root)/versions/3.8.18/bin/python"
      [ -x "$py38" ] || { say "pyenv install 3.8.18 ..."; pyenv install -s 3.8.18 || die "pyenv install 3.8.18 failed"; }
    fi
    [ -x "$py38" ] || py38=$(command -v python3.8) || die "no Python 3.8 (pyenv 3.8.18 or python3.8) for $VENV"
    say "creating $VENV with $py38"
    "$py38" -m venv "$VENV" || die "venv creation failed"
  fi
  say "installing torch==$TORCH_WANT into $VENV (headers are all this check uses) ..."
  "$VENV/bin/python" -m pip install -q "torch==$TORCH_WANT" "numpy<2" || die "pip install torch==$TORCH_WANT failed"
  torch_ok || die "$VENV has no torch $TORCH_WANT"
fi

# Flags exactly as torch.utils.cpp_extension (2.0.1, ninja path) builds them for a CUDA extension.
mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"
flags_py='
import sysconfig, torch, torch.utils.cpp_extension as c
common = ["-DTORCH_EXTENSION_NAME=" + "'"$EXT_NAME"'", "-DTORCH_API_INCLUDE_EXTENSION_H"]
for n in ("COMPILER_TYPE", "STDLIB", "BUILD_ABI"):
    v = getattr(torch._C, "_PYBIND11_" + n, None)
    if v is not None:
        common.append("-DPYBIND11_%s=\"%s\"" % (n, v))
sysinc = c.include_paths() + [sysconfig.get_path("include", scheme="posix_prefix")]
for i in sysinc:
    common += ["-isystem", i]
common.append("-D_GLIBCXX_USE_CXX11_ABI=%d" % int(torch._C._GLIBCXX_USE_CXX11_ABI))
print("\x01".join(common))
print("\x01".join(c.COMMON_NVCC_FLAGS))
print(torch.__version__)
print(c.library_paths()[0])
'
mapfile -t flag_lines < <("$VENV/bin/python" -c "$flags_py" 2>/dev/null)
[ "${#flag_lines[@]}" -ge 4 ] || die "could not read torch's flags from $VENV"
IFS=$'\001' read -r -a COMMON <<<"${flag_lines[0]}"
IFS=$'\001' read -r -a NVCC_COMMON <<<"${flag_lines[1]}"
torch_ver=${flag_lines[2]}
torch_lib=${flag_lines[3]}

# ---------------------------------------------------------------------------------------------- 3. compile
cu_flags=("${COMMON[@]}" "${NVCC_COMMON[@]}" --compiler-options "'-fPIC'" -O2 "-gencode=arch=compute_$ARCH,code=sm_$ARCH"
          -std=c++17 -ccbin "$HOST_CXX" "-I$csrc")
cpp_flags=("${COMMON[@]}" -fPIC -std=c++17 -O2 "-I$csrc")
shopt -s nullglob
sources=("$csrc"/*.cu "$csrc"/*.cpp)
[ "${#sources[@]}" -gt 0 ] || die "no .cu/.cpp files in $csrc"
rm -rf "$OUT_DIR/obj" && mkdir -p "$OUT_DIR/obj"
say "nvcc $nvcc_ver (host $("$HOST_CXX" -dumpfullversion)), .cpp with $CXX_CPP $("$CXX_CPP" -dumpfullversion)," \
    "torch $torch_ver ($VENV), sm_$ARCH, C++17, ${#sources[@]} files, $JOBS jobs, out $OUT_DIR"

compile_one() {  # src -> $OUT_DIR/obj/<name>.{o,d,log,rc,sec}
  local src=$1 base t0 rc
  base="$OUT_DIR/obj/$(basename "$src" | tr . _)"
  t0=$(date +%s.%N)
  if [[ $src == *.cu ]]; then
    clean_env "$NVCC" "${cu_flags[@]}" -MD -MF "$base.d" -c "$src" -o "$base.o" >"$base.log" 2>&1
  else
    clean_env "$CXX_CPP" "${cpp_flags[@]}" -MD -MF "$base.d" -c "$src" -o "$base.o" >"$base.log" 2>&1
  fi
  rc=$?
  # Every CUDA header must come from CUDA 11.8 (/usr/include, /usr/lib/nvidia-cuda-toolkit), never another toolkit.
  if [ $rc -eq 0 ] && grep -qE '/usr/local/cuda|cuda-1[2-9]|/opt/nvidia' "$base.d"; then
    { echo "error: header from another CUDA toolkit:"; tr ' ' '\n' <"$base.d" | grep -E '/usr/local/cuda|cuda-1[2-9]|/opt/nvidia' | head -5; } >>"$base.log"
    rc=3
  fi
  echo $rc >"$base.rc"
  LC_ALL=C awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }' >"$base.sec"
  printf '  %-7s %-26s %6s s\n' "$([ $rc -eq 0 ] && echo ok || echo FAILED)" "${src#"$here"/}" "$(cat "$base.sec")"
}

# Longest first (the tensor-core GEMM) so the pool drains evenly.
mapfile -t sources < <(for s in "${sources[@]}"; do echo "$(wc -c <"$s") $s"; done | sort -rn | cut -d' ' -f2-)
running=0
for src in "${sources[@]}"; do
  if [ "$running" -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
  compile_one "$src" &
  running=$((running + 1))
done
wait

fails=()
for src in "${sources[@]}"; do
  base="$OUT_DIR/obj/$(basename "$src" | tr . _)"
  [ "$(cat "$base.rc" 2>/dev/null)" = 0 ] || fails+=("$src")
done
for src in "${fails[@]}"; do
  base="$OUT_DIR/obj/$(basename "$src" | tr . _)"
  echo "---- ${src#"$here"/}: first errors (full log: $base.log)"
  { grep -nE '(error|Error)' "$base.log" | head -1 | cut -d: -f1 | xargs -r -I{} tail -n +{} "$base.log" || true; } |
    head -25 | sed "s#$here/##g"
  grep -qE '(error|Error)' "$base.log" || tail -15 "$base.log"
done

# ---------------------------------------------------------------------------------------------- 4. link check
link_note=""
if [ "$LINK" = 1 ] && [ "${#fails[@]}" -eq 0 ]; then
  so="$OUT_DIR/$EXT_NAME.so"
  if clean_env "$CXX_CPP" -shared "$OUT_DIR"/obj/*.o -o "$so" "-L$torch_lib" -lc10 -lc10_cuda -ltorch_cpu -ltorch_cuda \
       -ltorch -ltorch_python -L/usr/lib/x86_64-linux-gnu -lcudart >"$OUT_DIR/link.log" 2>&1; then
    # Undefined symbols of our own namespace mean a declaration with no definition (or mismatched signatures).
    undef=$(nm -uC "$so" | grep -E 'mishbench::' || true)
    if [ -z "$undef" ]; then
      link_note=", linked (no undefined mishbench:: symbols)"
      printf '  %-7s %-26s\n' ok "link $EXT_NAME.so"
    else
      printf '  %-7s %-26s\n' FAILED "link $EXT_NAME.so"
      echo "---- undefined mishbench:: symbols:"; echo "$undef" | head -20
      fails+=("link")
    fi
  else
    printf '  %-7s %-26s\n' FAILED "link $EXT_NAME.so"; head -20 "$OUT_DIR/link.log"; fails+=("link")
  fi
fi

elapsed=$(( $(date +%s) - t_start ))
n=${#sources[@]}
if [ "${#fails[@]}" -eq 0 ]; then
  say "OK: $n/$n files compiled with CUDA $nvcc_ver nvcc, torch $torch_ver, sm_$ARCH, C++17$link_note in ${elapsed} s"
  exit 0
fi
names=$(for f in "${fails[@]}"; do printf '%s ' "${f#"$here"/}"; done)
say "FAILED: ${#fails[@]} of $n files (${names% }) with CUDA $nvcc_ver nvcc, torch $torch_ver, sm_$ARCH in ${elapsed} s"
exit 1
