/* gst-moshi: what libmoshi exports.
 *
 * The library is built with hidden visibility, so that only its public API (the headers of
 * this folder) is part of its ABI. A public header declares its calls between
 * MOSHI_BEGIN_DECLS and MOSHI_END_DECLS, which give them default visibility; MOSHI_API marks a
 * single declaration elsewhere (the few internal calls the run-time-loaded CUDA module links
 * against). */
#pragma once

#include <glib.h>

#if defined(__GNUC__) || defined(__clang__)
#define MOSHI_API __attribute__ ((visibility ("default")))
#define MOSHI_VISIBILITY_PUSH _Pragma ("GCC visibility push(default)")
#define MOSHI_VISIBILITY_POP _Pragma ("GCC visibility pop")
#else
#define MOSHI_API
#define MOSHI_VISIBILITY_PUSH
#define MOSHI_VISIBILITY_POP
#endif

#define MOSHI_BEGIN_DECLS G_BEGIN_DECLS MOSHI_VISIBILITY_PUSH
#define MOSHI_END_DECLS MOSHI_VISIBILITY_POP G_END_DECLS
