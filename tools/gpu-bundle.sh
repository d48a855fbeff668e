#!/usr/bin/env bash
# Builds gst-moshi for the GPU machine and assembles the device bundle: one git-ignored folder
# (gpu-bundle/ by default, at most 60 MiB) that the device tool carries to the GPU machine and
# whose run.sh does everything there in one command (docs/cuda.md, "The device bundle").
#
#   tools/gpu-bundle.sh [--builddir DIR] [--out DIR] [--archs LIST] [--jobs N] [--no-wheels]
#                       [--limit-mib N]
#
#   --builddir DIR  the separate build (default build-gpu): configured here with the real nvcc
#                   module for --archs (default 90: sm_90 machine code plus compute_90 PTX)
#   --out DIR       the bundle folder (default gpu-bundle); replaced whole
#   --no-wheels     do not download upstream moshi 0.2.13 (its steps are then skipped there)
#   --limit-mib N   fail when the bundle is larger (default 60)
#
# What goes in: the gpu suite's programs (from meson's test list, suite 'gpu'), moshi-tool,
# moshi-copy-bandwidth, libmoshi and the CUDA module (bin/, lib/); the data their tests read
# (data/); the shared libraries they need that the device image lacks (GLib, OpenBLAS, Check's
# subunit, ...: ldd, less glibc, the C++ runtime and the CUDA libraries that image has; packed
# in syslib.tar.xz); tests.list (each test's program, arguments, environment and timeout, with
# paths relative to the bundle); the upstream moshi wheel and bench_upstream.py; run.sh
# (tools/gpu-run.sh); BUILD-INFO and MANIFEST.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$SRC/build-gpu
OUTDIR=$SRC/gpu-bundle
ARCHS=90
JOBS=2
WHEELS=1
LIMIT_MIB=60
MOSHI_WHEEL=moshi==0.2.13

die () { echo "gpu-bundle: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --builddir) BUILD=$(realpath -m "$2"); shift 2 ;;
    --out) OUTDIR=$(realpath -m "$2"); shift 2 ;;
    --archs) ARCHS=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --no-wheels) WHEELS=0; shift ;;
    --limit-mib) LIMIT_MIB=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

case "$OUTDIR" in
  /|"$SRC"|"$HOME"|"$BUILD") die "refusing to use $OUTDIR as the bundle folder (it is replaced whole)" ;;
esac
for tool in meson ninja python3 ldd tar xz; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] \
  || die "nvcc not found: the bundle needs the real CUDA module (install the CUDA toolkit)"

# ---------------------------------------------------------------- build

# No downloader: the GPU machine reaches no network, and libsoup's libraries would only grow
# the bundle.
opts=(-Dtests=enabled -Dcuda=enabled -Dgst=disabled -Ddownload=disabled "-Dgpu_archs=$ARCHS")
if [ -f "$BUILD/build.ninja" ]; then
  meson configure "$BUILD" "${opts[@]}" >/dev/null
  # meson introspect reads what the last generation wrote: regenerate first, or a build file
  # changed since (a target renamed) plans a target that no longer exists
  nice ninja -C "$BUILD" build.ninja >/dev/null \
    || die "meson could not regenerate $BUILD (run: ninja -C $BUILD build.ninja)"
else
  echo "gpu-bundle: configuring $BUILD (${opts[*]})"
  nice meson setup "$BUILD" "$SRC" "${opts[@]}" -Dbuildtype=debugoptimized >"$BUILD.setup.log" 2>&1 \
    || { tail -n 30 "$BUILD.setup.log"; die "meson setup failed (log: $BUILD.setup.log)"; }
  rm -f "$BUILD.setup.log"
fi

STAGE=$(mktemp -d "$BUILD/gpu-bundle-stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

# The plan from meson's own lists: the gpu suite's tests, with their programs, arguments and
# environment rewritten relative to the bundle (@B@), and the targets to build.
meson introspect "$BUILD" --tests >"$STAGE/tests.json"
meson introspect "$BUILD" --targets >"$STAGE/targets.json"
python3 - "$SRC" "$BUILD" "$STAGE" <<'EOF'
import json, os, re, sys
src, build, stage = (os.path.realpath(p) for p in sys.argv[1:4])
tests = json.load(open(os.path.join(stage, "tests.json")))
targets = json.load(open(os.path.join(stage, "targets.json")))

def fail(msg):
    sys.exit("gpu-bundle: " + msg)

# programs and libraries by their path in the build
bins = {}        # build path -> bin/<name>
libs = {"kernels/libmoshi-cuda.so": "lib/libmoshi-cuda.so"}
# libmoshi is built as libmoshi.so.<soversion>.<minor>.<micro>; the programs ask the loader for
# the soname, libmoshi.so.<soversion>, the name it goes by in the bundle.
libmoshi = [t for t in targets if t["name"] == "moshi" and t["type"] == "shared library"]
if len(libmoshi) != 1 or len(libmoshi[0]["filename"]) != 1:
    fail("meson lists no single libmoshi shared library")
real = os.path.relpath(os.path.realpath(libmoshi[0]["filename"][0]), build)
soname = re.sub(r"(\.so\.[0-9]+)\..*$", r"\1", os.path.basename(real))
libs[real] = "lib/" + soname
data = {}        # source folder -> data/<name>
shared_ref = os.path.realpath(os.path.join(src, "..", "shared"))

def data_dir(path):
    real = os.path.realpath(path)
    if real == os.path.join(src, "tests", "data"):
        name = "tests"
    else:
        name = os.path.basename(real)
    if not os.path.isdir(real):
        fail(f"{path} (a test's data folder) does not exist")
    if real not in data:
        if name in data.values():
            fail(f"two data folders named {name}")
        data[real] = name
    return "@B@/data/" + data[real]

def bundle_path(value, what):
    """A test's argument or environment value, relative to the bundle."""
    if not value.startswith("/"):
        return value
    real = os.path.realpath(value)
    rel = os.path.relpath(real, build)
    if not rel.startswith(".."):
        if rel in libs:
            return "@B@/" + libs[rel]
        if rel in bins:
            return "@B@/" + bins[rel]
        fail(f"{what}: {value} is a build output the bundle does not carry")
    if os.path.isdir(real) and (real.startswith(src + os.sep) or real.startswith(shared_ref + os.sep)):
        return data_dir(real)
    fail(f"{what}: don't know how to bundle {value} (a path outside the build, tests/data and "
         "../shared): teach tools/gpu-bundle.sh")

lines, skipped = [], []
gpu_tests = [t for t in tests if any(s.split(":")[-1] == "gpu" for s in t["suite"])]
if not gpu_tests:
    fail("meson lists no test in suite 'gpu' (is nvcc found by this build?)")
for t in gpu_tests:
    exe = os.path.realpath(t["cmd"][0])
    rel = os.path.relpath(exe, build)
    if rel.startswith(".."):
        fail(f"test {t['name']}: its program {exe} is not built here")
    if os.path.basename(exe) == "moshi-tool":
        skipped.append(t["name"])          # run.sh runs the benchmarks itself
        continue
    name = os.path.basename(exe)
    if any(v == "bin/" + name and k != rel for k, v in bins.items()):
        fail(f"two programs named {name}")
    bins[rel] = "bin/" + name
    env = []
    # The bundle is for the real runtime: the CPU emulator (tests/cuda-emu) never goes in.
    if t["env"].get("MOSHI_CUDA_EMULATE", "0") != "0" or any(
            "cuda-emu" in os.path.basename(v) for v in list(t["env"].values()) + t["cmd"]):
        fail(f"test {t['name']} runs on the CUDA emulator: it belongs in suite 'unit', not 'gpu'")
    for k, v in sorted(t["env"].items()):
        if k == "LD_LIBRARY_PATH":
            continue                        # run.sh sets the bundle's own
        if k == "MOSHI_HUB_SERVER":
            continue                        # for the download tests, none of which is in 'gpu'
        v = bundle_path(v, f"test {t['name']}, {k}")
        if any(c.isspace() for c in v):
            fail(f"test {t['name']}: {k}={v!r} has white space")
        env.append(f"{k}={v}")
    args = [bundle_path(a, f"test {t['name']}, argument") for a in t["cmd"][1:]]
    if any(c.isspace() for a in args for c in a):
        fail(f"test {t['name']}: an argument has white space")
    timeout = int(t.get("timeout") or 300)
    lines.append("\t".join([t["name"], str(timeout), " ".join(env), name, " ".join(args)]))

for rel in ("tools/moshi-tool", "kernels/moshi-copy-bandwidth"):
    bins[rel] = "bin/" + os.path.basename(rel)

with open(os.path.join(stage, "tests.list"), "w") as f:
    f.write("# name\ttimeout\tenvironment\tprogram\targuments (@B@: the bundle folder), from "
            "meson's suite 'gpu'\n")
    f.write("\n".join(lines) + "\n")
with open(os.path.join(stage, "plan.txt"), "w") as f:
    for k, v in sorted({**bins, **libs}.items()):
        f.write(f"file\t{k}\t{v}\n")
    for k, v in sorted(data.items()):
        f.write(f"data\t{k}\tdata/{v}\n")
print(f"gpu-bundle: {len(lines)} gpu-suite tests"
      + (f" (run.sh runs {', '.join(skipped)} as its own benchmark steps)" if skipped else ""))
EOF

mapfile -t targets < <(awk -F '\t' '$1 == "file" { print $2 }' "$STAGE/plan.txt")
echo "gpu-bundle: building ${#targets[@]} targets in $BUILD (sm ${ARCHS}, -j$JOBS)"
nice ninja -C "$BUILD" -j "$JOBS" "${targets[@]}" >"$STAGE/build.log" 2>&1 \
  || { tail -n 40 "$STAGE/build.log"; die "the build failed"; }

# ---------------------------------------------------------------- assemble

B=$STAGE/bundle
mkdir -p "$B/bin" "$B/lib" "$B/data" "$B/python" "$B/wheels" "$STAGE/syslib"
while IFS=$'\t' read -r kind from to; do
  case "$kind" in
    file) cp -L "$BUILD/$from" "$B/$to" ;;
    data) cp -rL "$from" "$B/$to" ;;
  esac
done <"$STAGE/plan.txt"
cp "$STAGE/tests.list" "$B/tests.list"
install -m 755 "$SRC/tools/gpu-run.sh" "$B/run.sh"
install -m 755 "$SRC/tools/bench_upstream.py" "$SRC/tools/summarize_gpu_run.py" "$B/python/"

# Shared libraries: what ldd resolves here, less what the device image has (glibc, the C++
# runtime, the CUDA driver and cuBLAS, whose libcublasLt alone is over 500 MB: run.sh finds the
# device's own), goes into syslib.tar.xz; the CUDA runtime goes too (0.7 MB, the version this
# module was built against). What the device must provide is listed in device-libs.txt.
is_device_lib () {
  case "$1" in
    linux-vdso.so*|ld-linux*|libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libresolv.so*) return 0 ;;
    libutil.so*|libstdc++.so*|libgcc_s.so*|libcuda.so*|libnvidia-*|libcublas.so*|libcublasLt.so*) return 0 ;;
  esac
  return 1
}
: >"$STAGE/device-libs.txt"
for f in "$B"/bin/* "$B"/lib/*; do
  if LD_LIBRARY_PATH="$B/lib" ldd "$f" | grep -q 'not found'; then
    LD_LIBRARY_PATH="$B/lib" ldd "$f" | grep 'not found' >&2
    die "$f: a library it needs is not found on this machine"
  fi
  LD_LIBRARY_PATH="$B/lib" ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// { print $1 "\t" $3 } $1 ~ /^\// { print $1 "\t" $1 }'
done | sort -u | while IFS=$'\t' read -r soname path; do
  soname=${soname##*/}
  case "$path" in "$B"/*) continue ;; esac          # the bundle's own libmoshi
  if is_device_lib "$soname"; then
    echo "$soname" >>"$STAGE/device-libs.txt"
  else
    cp -L "$path" "$STAGE/syslib/$soname"
  fi
done
sort -u -o "$B/device-libs.txt" "$STAGE/device-libs.txt"
[ -n "$(ls "$STAGE/syslib")" ] || die "no shared library to bundle: the ldd parsing broke"
tar -C "$STAGE/syslib" -cf - . | xz -T"$JOBS" -6 >"$B/syslib.tar.xz"

# upstream moshi, without its dependencies: the device's python3 (PyTorch 2.11) has those that
# moshi.models imports (numpy, safetensors, huggingface_hub, einops, sentencepiece); bitsandbytes,
# sphn and sounddevice are for quantized models, the server and the client, not imported here.
if [ "$WHEELS" = 1 ]; then
  cache=$BUILD/gpu-wheels
  mkdir -p "$cache"
  if ! ls "$cache"/moshi-0.2.13-*.whl >/dev/null 2>&1; then
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      -d "$cache" "$MOSHI_WHEEL" \
      || echo "gpu-bundle: WARNING: could not download $MOSHI_WHEEL: the upstream steps will be skipped" >&2
  fi
  cp "$cache"/moshi-0.2.13-*.whl "$B/wheels/" 2>/dev/null || true
fi

{
  echo "commit: $(git -C "$SRC" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$SRC" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "built: $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -m), $(ldd --version | head -n1)"
  echo "nvcc: $( (nvcc --version 2>/dev/null || /usr/local/cuda/bin/nvcc --version) | grep -o 'release [0-9.]*, V[0-9.]*')"
  echo "gpu_archs: $ARCHS (sm machine code for each, PTX for the last)"
  echo "bundled libraries: $(tar -tJf "$B/syslib.tar.xz" | sed -n 's|^\./\(.\)|\1|p' | tr '\n' ' ')"
  echo "needs: glibc $(for f in "$B"/bin/* "$B"/lib/* "$STAGE"/syslib/*; do objdump -T "$f" 2>/dev/null; done \
    | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -k3,3n -u | tail -n1) or newer"
  echo "from the device: $(tr '\n' ' ' <"$B/device-libs.txt")"
} >"$B/BUILD-INFO"
(cd "$B" && find . -type f ! -name MANIFEST -printf '%s\t%P\n' | sort -k2) >"$B/MANIFEST"

size=$(du -sb "$B" | cut -f1)
limit=$((LIMIT_MIB * 1024 * 1024))
if [ "$size" -gt "$limit" ]; then
  die "the bundle is $((size / 1024 / 1024)) MiB, over the ${LIMIT_MIB} MiB limit (MANIFEST: $B/MANIFEST)"
fi

rm -rf "$OUTDIR"
mv "$B" "$OUTDIR"

# What the device tool sends: the working tree (tracked and untracked-not-ignored files) plus
# the carried bundle, 64 MiB in all.
tree=$(cd "$SRC" && git ls-files -z -c -o --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null \
  | awk '{ s += $1 } END { print s + 0 }')
total=$((tree + size))
awk -v o="$OUTDIR" -v s="$size" -v l="$LIMIT_MIB" -v t="$tree" 'BEGIN {
  printf "gpu-bundle: %s: %.1f MiB (limit %d MiB); with the working tree (%.1f MiB) %.1f MiB of the 64 MiB a device call carries\n",
    o, s / 1048576, l, t / 1048576, (s + t) / 1048576 }'
[ "$total" -gt $((64 * 1024 * 1024)) ] && echo "gpu-bundle: WARNING: over the device tool's 64 MiB" >&2
rel=${OUTDIR#"$SRC"/}
echo "gpu-bundle: on the GPU machine: run(command=\"bash $rel/run.sh\", carry=[\"$rel\"], timeout_s=480)"
