/* moshi-tool bench serve (bench-serve.c). */
#pragma once

int moshi_tool_bench_serve (int argc, char **argv);
