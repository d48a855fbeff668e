/* gst-moshi: the version of the library running (moshi-version.h). */
#include "moshi-version.h"

/* The macros as they were when the library was compiled: a program's own copies of them say
 * what it was compiled against instead. */

const char *
moshi_version (void)
{
  return MOSHI_VERSION_STRING;
}

void
moshi_get_version (int *major, int *minor, int *micro)
{
  if (major != NULL)
    *major = MOSHI_MAJOR_VERSION;
  if (minor != NULL)
    *minor = MOSHI_MINOR_VERSION;
  if (micro != NULL)
    *micro = MOSHI_MICRO_VERSION;
}

const char *
moshi_check_version (int required_major, int required_minor, int required_micro)
{
  if (required_major > MOSHI_MAJOR_VERSION)
    return "libmoshi version too old (major mismatch)";
  if (required_major < MOSHI_MAJOR_VERSION)
    return "libmoshi version too new (major mismatch)";
  if (required_minor > MOSHI_MINOR_VERSION)
    return "libmoshi version too old (minor mismatch)";
  if (required_minor == MOSHI_MINOR_VERSION && required_micro > MOSHI_MICRO_VERSION)
    return "libmoshi version too old (micro mismatch)";
  return NULL;
}
