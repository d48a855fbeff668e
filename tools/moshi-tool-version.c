#include "moshi-tool-version.h"

#include <moshi/moshi-version.h>

#include <stdio.h>
#include <string.h>

void
moshi_tool_print_version (const char *program)
{
  printf ("%s %s\n", program, MOSHI_VERSION_STRING);
  /* The loader may have found another release of libmoshi with the same soname: a bug report
   * needs both versions. */
  if (strcmp (moshi_version (), MOSHI_VERSION_STRING) == 0)
    printf ("libmoshi %s\n", moshi_version ());
  else
    printf ("libmoshi %s (built against %s)\n", moshi_version (), MOSHI_VERSION_STRING);
}
