/* gst-moshi: libmoshi, the whole public API (pkg-config moshi-1.0). */
#pragma once

#include "moshi-api.h"
/* generated into the build tree, not beside this file: named as installed */
#include <moshi/moshi-version.h>
#include "moshi-error.h"
#include "moshi-dtype.h"
#include "moshi-device.h"
#include "moshi-file.h"
#include "moshi-safetensors.h"
#include "moshi-hub.h"
#include "moshi-hub-download.h"
#include "mimi-config.h"
#include "moshi-mimi.h"
#include "lm-config.h"
#include "moshi-lm.h"
#include "moshi-tokenizer.h"
#include "moshi-dialog.h"
#include "moshi-dialog-load.h"
#include "moshi-scheduler.h"
