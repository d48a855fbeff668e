/* moshi-tool and moshi-server: --version. */
#pragma once

/* program's version (the project's, as the libmoshi headers it was built with say) and that of
 * the libmoshi it runs against, on stdout. */
void moshi_tool_print_version (const char *program);
