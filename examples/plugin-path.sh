# Sourced by the examples: the moshi plugin of this tree's uninstalled build.
#
# Unless GST_PLUGIN_PATH (or GST_PLUGIN_PATH_1_0) already says where to look, GStreamer is
# pointed at <build>/gst, where <build> is $MOSHI_BUILD_DIR or this tree's build/, when the
# plugin is there. Otherwise GStreamer finds an installed plugin in its own folder.
if [[ -z ${GST_PLUGIN_PATH:-}${GST_PLUGIN_PATH_1_0:-} ]]; then
  moshi_uninstalled=${MOSHI_BUILD_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build}/gst
  if [[ -f $moshi_uninstalled/libgstmoshi.so ]]; then
    export GST_PLUGIN_PATH=$moshi_uninstalled
  fi
  unset moshi_uninstalled
fi
