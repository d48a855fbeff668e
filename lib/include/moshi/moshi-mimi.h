/* gst-moshi: the Mimi neural audio codec.
 *
 * A MoshiMimi is a loaded model: immutable, reference-counted and shareable between threads.
 * All streaming state (convolution history, transposed-convolution carries, KV caches, RoPE
 * positions) lives in a MoshiMimiSession; many sessions run on one model at once, each used by
 * one thread at a time.
 *
 * Streaming follows the upstream Python reference (moshi 0.2.13) in streaming mode: encode takes
 * whole frames (frame_size samples) and returns one code frame per input frame, decode takes
 * code frames and returns frame_size samples per frame, both with no algorithmic delay beyond
 * the frame. The one-shot calls reproduce the upstream non-streaming encode()/decode(). */
#pragma once

#include <glib.h>
#include "moshi-api.h"
#include <stdint.h>

#include "mimi-config.h"
#include "moshi-device.h"

MOSHI_BEGIN_DECLS

typedef struct _MoshiMimi MoshiMimi;
typedef struct _MoshiMimiSession MoshiMimiSession;

typedef struct {
  MoshiDevice device;      /* MOSHI_DEVICE_AUTO by default */
} MoshiMimiLoadOptions;

/* Loads a Mimi checkpoint (safetensors, upstream key names). config_path may be NULL for the
 * released architecture. Both the checkpoint spelling of attention weights (in_proj_weight,
 * out_proj.weight) and the module spelling (in_projs.0.weight, out_projs.0.weight) load, as do
 * the legacy codebook names. options may be NULL. */
MoshiMimi *moshi_mimi_load (const char *weights_path, const char *config_path,
    const MoshiMimiLoadOptions *options, GError **error);

/* Like moshi_mimi_load, but returns the copy already loaded in this process for the same
 * files (compared by canonical path) and device, if any: elements naming one model share one
 * copy, freed when the last user drops it. */
MoshiMimi *moshi_mimi_load_shared (const char *weights_path, const char *config_path,
    const MoshiMimiLoadOptions *options, GError **error);

MoshiMimi *moshi_mimi_ref (MoshiMimi *mimi);
void moshi_mimi_unref (MoshiMimi *mimi);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiMimi, moshi_mimi_unref)

const MoshiMimiConfig *moshi_mimi_get_config (const MoshiMimi *mimi);
int moshi_mimi_sample_rate (const MoshiMimi *mimi);
int moshi_mimi_frame_size (const MoshiMimi *mimi);      /* samples per code frame */
double moshi_mimi_frame_rate (const MoshiMimi *mimi);
int moshi_mimi_max_codebooks (const MoshiMimi *mimi);
int moshi_mimi_codebook_size (const MoshiMimi *mimi);   /* bins */
/* The device it was loaded on (never AUTO). */
MoshiDevice moshi_mimi_get_device (const MoshiMimi *mimi);
/* The backend it was loaded on, in words ("CPU (AVX2, 8 threads)", "NVIDIA H200, sm_90"):
 * as moshi_device_describe, without opening the device again. Free with g_free. */
char *moshi_mimi_describe_device (const MoshiMimi *mimi);
const char *moshi_mimi_get_path (const MoshiMimi *mimi);

typedef struct {
  int n_threads;             /* 0 = automatic */
  int num_codebooks;         /* codebooks produced by encode; 0 = 8 (or all, if fewer) */
  /* Frames processed per backend call. Larger chunks amortise weight reads; 0 = default. */
  int max_frames_per_call;
  /* Attention window convention. FALSE (default): a ring KV cache of exactly `context` steps,
   * written before attending, as upstream streaming does. TRUE: keep enough history that every
   * query sees the full `context` keys, as upstream non-streaming does (the one-shot calls use
   * this). The two agree for the first context steps (10 s for the released model). */
  gboolean full_context;
} MoshiMimiSessionOptions;

MoshiMimiSession *moshi_mimi_session_new (MoshiMimi *mimi, const MoshiMimiSessionOptions *options,
    GError **error);
void moshi_mimi_session_free (MoshiMimiSession *session);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiMimiSession, moshi_mimi_session_free)

MoshiMimi *moshi_mimi_session_get_model (MoshiMimiSession *session);
int moshi_mimi_session_num_codebooks (MoshiMimiSession *session);

/* Encodes n_frames whole frames of mono PCM (n_frames * frame_size floats). codes receives
 * num_codebooks x n_frames values laid out [k][frame] (row k has stride n_frames), the upstream
 * [K, T] layout. Non-finite samples are rejected with MOSHI_ERROR_INVALID_ARGUMENT and leave
 * the session unchanged. */
gboolean moshi_mimi_session_encode (MoshiMimiSession *session, const float *pcm, int n_frames,
    int32_t *codes, GError **error);

/* Decodes n_frames code frames with num_codebooks codebooks ([k][frame] layout, 1 <= k <= max
 * codebooks) into n_frames * frame_size samples. Codes outside [0, bins) are rejected with
 * MOSHI_ERROR_INVALID_ARGUMENT and leave the session unchanged. */
gboolean moshi_mimi_session_decode (MoshiMimiSession *session, const int32_t *codes,
    int num_codebooks, int n_frames, float *pcm, GError **error);

/* Whether n_frames frames of PCM are finite (as encode checks them), and whether codes
 * ([k][frame]) are in range for decode. */
gboolean moshi_mimi_check_pcm (const MoshiMimi *mimi, const float *pcm, int n_frames,
    GError **error);
gboolean moshi_mimi_check_codes (const MoshiMimi *mimi, const int32_t *codes, int num_codebooks,
    int n_frames, GError **error);

/* A MoshiMimiBatch steps many streaming sessions of one model by one frame each as one call,
 * every layer once for all of them: the sessions' activations lie side by side in one matrix, so
 * each convolution is one product over every session's columns (each session's own history or
 * transposed-convolution carry brought into the batch's window before it and back after), each
 * linear of the transformers and the quantizer one product over all rows (RoPE, the KV writes
 * and attention take each row's session cache and position from a row table, as the LM's
 * batched step does), and every weight is read once per call, whatever the number of sessions.
 * Every op runs on the batch's exec (its threads); a backend that records (CUDA graphs)
 * replays one recording per direction while the same sessions come in the same order (a
 * session joining or leaving makes a new one).
 *
 * A batched frame gives the codes the session gives alone (moshi_mimi_session_encode/decode of
 * one frame), and its PCM but for the order of the sums in products with more columns: on the
 * CPU BLAS may sum a wider product in another order (tests/test-mimi.c states the measured
 * differences); CUDA's convolution kernels sum each output as they do for one session.
 * Sessions may be at any stream position, and may join or leave between calls; they must be
 * streaming sessions (full_context FALSE). A batch is used by one thread at a time,
 * and its sessions are not used elsewhere during a call. */
typedef struct _MoshiMimiBatch MoshiMimiBatch;

/* A batch of up to max_sessions sessions of mimi; n_threads as for sessions (0 = automatic). */
MoshiMimiBatch *moshi_mimi_batch_new (MoshiMimi *mimi, int max_sessions, int n_threads,
    GError **error);
void moshi_mimi_batch_free (MoshiMimiBatch *batch);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiMimiBatch, moshi_mimi_batch_free)
int moshi_mimi_batch_max_sessions (MoshiMimiBatch *batch);

/* Encodes one frame for each of n sessions: pcm[i] (frame_size samples) into codes[i] (the
 * session's num_codebooks codes). Bad input (non-finite audio) fails the call, naming the
 * session, before anything runs. */
gboolean moshi_mimi_batch_encode (MoshiMimiBatch *batch, MoshiMimiSession **sessions, int n,
    const float *const *pcm, int32_t *const *codes, GError **error);
/* Decodes one frame for each of n sessions: codes[i] (num_codebooks codes) into pcm[i]
 * (frame_size samples). Codes out of range fail the call, naming the session. */
gboolean moshi_mimi_batch_decode (MoshiMimiBatch *batch, MoshiMimiSession **sessions, int n,
    const int32_t *const *codes, int num_codebooks, float *const *pcm, GError **error);

/* Back to the state of a new session (both directions). */
void moshi_mimi_session_reset (MoshiMimiSession *session);
void moshi_mimi_session_reset_encoder (MoshiMimiSession *session);
void moshi_mimi_session_reset_decoder (MoshiMimiSession *session);

/* One-shot, as upstream non-streaming encode(): pads the last partial frame with zeros and
 * returns ceil(n_samples / frame_size) frames in *codes_out ([k][frame], g_free it). */
gboolean moshi_mimi_encode (MoshiMimi *mimi, const float *pcm, gsize n_samples,
    int num_codebooks, int n_threads, int32_t **codes_out, int *n_frames_out, GError **error);
/* One-shot decode: n_frames * frame_size samples in *pcm_out (g_free it). */
gboolean moshi_mimi_decode (MoshiMimi *mimi, const int32_t *codes, int num_codebooks,
    int n_frames, int n_threads, float **pcm_out, GError **error);

MOSHI_END_DECLS
