/* gst-moshi: errors of the inference library. */
#pragma once

#include <glib.h>
#include "moshi-api.h"

MOSHI_BEGIN_DECLS

#define MOSHI_ERROR (moshi_error_quark ())
GQuark moshi_error_quark (void);

/* Every library call that can fail takes a GError ** and fills it with one of these codes and a
 * message naming the file, tensor, shape or parameter at fault. */
typedef enum {
  MOSHI_ERROR_IO,               /* a file could not be opened, read, mapped or written */
  MOSHI_ERROR_FORMAT,           /* a file is malformed (header, JSON, offsets, truncation) */
  MOSHI_ERROR_MISSING_TENSOR,   /* a tensor the model needs is absent */
  MOSHI_ERROR_SHAPE,            /* a tensor has the wrong shape */
  MOSHI_ERROR_DTYPE,            /* a tensor has a dtype the model cannot use */
  MOSHI_ERROR_CONFIG,           /* a model configuration is invalid or inconsistent */
  MOSHI_ERROR_INVALID_ARGUMENT, /* a caller passed a value outside the documented range */
  MOSHI_ERROR_UNSUPPORTED,      /* a valid request this build or machine cannot serve */
  MOSHI_ERROR_DEVICE,           /* the compute device failed or is absent */
  MOSHI_ERROR_BUSY,             /* a shared resource is at its limit (e.g. conversations) */
  MOSHI_ERROR_NO_MEMORY,        /* memory (device or host) ran out for this request; what was
                                 * running is unaffected */
} MoshiErrorCode;

MOSHI_END_DECLS
