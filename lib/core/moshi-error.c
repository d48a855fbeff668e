#include "moshi-error.h"

G_DEFINE_QUARK (moshi-error-quark, moshi_error)
