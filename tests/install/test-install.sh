#!/usr/bin/env bash
# The installed library and plugin as a user meets them: `meson install` of this build into a
# temporary DESTDIR, then
#   pkg-config BUILD_DIR SOURCE_DIR CC   checks the installed library's soname and links, builds
#                                        tests/install/consumer.c with the installed
#                                        moshi-1.0.pc alone and runs it on the tiny Mimi;
#   gst-inspect BUILD_DIR                gst-inspect-1.0 finds the installed plugin with no
#                                        GST_PLUGIN_PATH.
# Tests cannot install into /usr, so the staged tree stands in for it: moshi-1.0.pc is read
# with its prefix moved into the stage (as a packager relocating it would; the other packages'
# files stay as they are), the loader finds libmoshi through LD_LIBRARY_PATH, and GStreamer
# scans GST_PLUGIN_SYSTEM_PATH_1_0 set to the staged pluginsdir: GStreamer's built-in system
# path once installed with --prefix=/usr.
set -euo pipefail
mode=$1 build=$2
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

meson install -C "$build" --no-rebuild --quiet --destdir "$stage" >"$stage.log" 2>&1 \
  || { cat "$stage.log"; rm -f "$stage.log"; exit 1; }
rm -f "$stage.log"
prefix=$(meson introspect "$build" --buildoptions \
  | python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"]=="prefix"))')
pcfile=$(find "$stage" -name moshi-1.0.pc)
[[ -n $pcfile ]] || { echo "no moshi-1.0.pc installed"; exit 1; }
libdir=$(dirname "$(dirname "$pcfile")")
export LD_LIBRARY_PATH="$libdir"

case $mode in
  pkg-config)
    src=$3 cc=$4
    mkdir "$stage/pkgconfig"
    sed "s|^prefix=.*|prefix=$stage$prefix|" "$pcfile" >"$stage/pkgconfig/moshi-1.0.pc"
    export PKG_CONFIG_PATH="$stage/pkgconfig"
    # The soname, which the programs, the plugin and the CUDA module record (the module binds to
    # the libmoshi that dlopens it by that name), and the links: libmoshi.so (for -lmoshi) to
    # libmoshi.so.0 (for the loader) to the file.
    soname=libmoshi.so.0
    dynamic() {
      if command -v readelf >/dev/null; then readelf -d "$1"; else objdump -p "$1"; fi 2>/dev/null
    }
    # readelf: "(SONAME)  Library soname: [x]", "(NEEDED)  Shared library: [x]";
    # objdump: "SONAME  x", "NEEDED  x"
    entries() { dynamic "$2" | sed -nE "s/.*$1\\)? +([A-Za-z ]+: \\[)?([^] ]+)\\]?\$/\\2/p"; }
    got=$(entries SONAME "$libdir/$soname")
    [[ $got == "$soname" ]] || { echo "the installed libmoshi's soname is '$got', not $soname"; exit 1; }
    users=0
    while IFS= read -r -d '' f; do
      needed=$(entries NEEDED "$f" | grep '^libmoshi\.' || true)
      [[ -z $needed ]] && continue
      [[ $needed == "$soname" ]] || { echo "$f needs $needed, not $soname"; exit 1; }
      users=$((users + 1))
    done < <(find "$stage" -type f \( -name '*.so' -o -path '*/bin/*' \) -print0)
    ((users > 0)) || { echo "nothing installed records libmoshi (moshi-tool should)"; exit 1; }
    echo "$users installed objects need $soname"
    [[ -L $libdir/libmoshi.so && $(readlink "$libdir/libmoshi.so") == "$soname" ]] \
      || { echo "libmoshi.so is not a link to $soname"; ls -l "$libdir"; exit 1; }
    real=$(readlink "$libdir/$soname")
    [[ -L $libdir/$soname && $real == "$soname".* && -f $libdir/$real && ! -L $libdir/$real ]] \
      || { echo "$soname is not a link to the library file"; ls -l "$libdir"; exit 1; }
    # the headers come from the stage, not from the source tree
    flags=$(pkg-config --cflags --libs moshi-1.0)
    case $flags in *"$stage$prefix/include/moshi-1.0"*) ;; *) echo "cflags: $flags"; exit 1;; esac
    # shellcheck disable=SC2086
    "$cc" -std=c11 -Wall -Wextra -Werror -o "$stage/consumer" "$src/tests/install/consumer.c" $flags
    "$stage/consumer" "$src/tests/data/mimi/tiny/model.safetensors" \
      "$src/tests/data/mimi/tiny/config.json" "$(pkg-config --modversion moshi-1.0)"
    ;;
  gst-inspect)
    plugin=$(find "$stage" -name libgstmoshi.so)
    [[ -n $plugin ]] || { echo "no libgstmoshi.so installed"; exit 1; }
    pluginsdir=$(pkg-config --define-variable=prefix="$prefix" --variable=pluginsdir gstreamer-1.0)
    [[ $plugin == "$stage$pluginsdir/libgstmoshi.so" ]] \
      || { echo "plugin at $plugin, not in pluginsdir $pluginsdir"; exit 1; }
    unset GST_PLUGIN_PATH GST_PLUGIN_PATH_1_0
    export GST_PLUGIN_SYSTEM_PATH_1_0="$stage$pluginsdir" GST_REGISTRY_1_0="$stage/registry.bin"
    out=$(gst-inspect-1.0 moshi)
    echo "$out"
    # the metadata: origin a URL; each element's documentation a page installed with it
    origin=$(sed -n 's/^ *Origin URL *//p' <<<"$out")
    [[ $origin == *://* ]] || { echo "origin URL '$origin' is not a URL"; exit 1; }
    for want in mimienc mimidec moshidialog rtpmimipay rtpmimidepay; do
      grep -q "$want" <<<"$out" || { echo "the installed plugin has no $want"; exit 1; }
      doc=$(gst-inspect-1.0 "$want" | sed -n 's/^ *Doc-uri *//p')
      [[ $doc == file://* && -f $stage${doc#file://} ]] \
        || { echo "$want: documentation '$doc' is not an installed page"; exit 1; }
    done
    ;;
  *) echo "unknown mode $mode"; exit 2;;
esac
