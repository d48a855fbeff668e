/* gst-moshi: the devices models run on, as callers name and inspect them.
 *
 * A model is loaded onto a device (MoshiMimiLoadOptions, MoshiLmLoadOptions); the devices are
 * process-wide, so every model on one device shares it and its counters. */
#pragma once

#include <glib.h>
#include "moshi-api.h"

MOSHI_BEGIN_DECLS

typedef enum {
  MOSHI_DEVICE_AUTO,
  MOSHI_DEVICE_CPU,
  MOSHI_DEVICE_CUDA,
} MoshiDevice;

/* "auto", "cpu", "cuda" */
const char *moshi_device_name (MoshiDevice device);
/* Parses those names (any case); FALSE for anything else. */
gboolean moshi_device_from_name (const char *name, MoshiDevice *out);

/* Opens device as a model load would and says what it is, e.g. "cpu (avx512, openblas)"
 * (g_free it). AUTO is CUDA when a GPU is usable and the CPU otherwise; resolved (may be NULL)
 * gets the one it is. NULL with an error saying why when the device cannot be used, so that a
 * caller can ask before loading a model. */
char *moshi_device_describe (MoshiDevice device, MoshiDevice *resolved, GError **error);

/* What the steps of every model and session on a device have queued since the last reset: how
 * close a step is to its floor (one read of the weights) on a GPU. */
typedef struct {
  guint64 kernel_launches;      /* kernels launched (each launch of an op that needs two counts 2) */
  guint64 blas_calls;           /* cuBLAS calls (each one GEMM, counted apart from the launches) */
  guint64 memory_ops;           /* copies and memsets queued: upload, download, zero, and the
                                 * device-to-device copy of ConvTranspose1d's overlap */
  guint64 weight_bytes;         /* bytes of weights read, as stored on the device: linear: the
                                 * weight matrix (or view) and bias once per call; embedding: the
                                 * rows asked for (rows x row bytes); norms, scales: their
                                 * vectors; convolutions: weights and bias; RVQ encode: the
                                 * levels' codebooks and norms; RVQ decode: the rows gathered */
  guint64 graph_launches;       /* recorded steps replayed (their kernels count as launches) */
  guint64 syncs;                /* waits of the host for the device: download, synchronize */
} MoshiDeviceStats;

/* The counters of device (AUTO: the one it resolves to) into *out. FALSE, *out zeroed, where
 * the device keeps none (the CPU) or cannot be opened. */
gboolean moshi_device_get_stats (MoshiDevice device, MoshiDeviceStats *out);
/* Zeroes them. */
void moshi_device_reset_stats (MoshiDevice device);

MOSHI_END_DECLS
