/* gst-moshi: a fork-join thread pool for the CPU backend.
 *
 * Made for many small parallel sections per 80 ms frame: workers spin briefly before sleeping,
 * and the calling thread takes a share of the work. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct _MoshiThreadPool MoshiThreadPool;

/* task runs once for each index in [0, n_tasks); thread is in [0, n_threads). */
typedef void (*MoshiParallelFunc) (void *ctx, int task, int thread);

/* n_threads counts the caller: 1 means no extra threads. */
MoshiThreadPool *moshi_thread_pool_new (int n_threads);
void moshi_thread_pool_free (MoshiThreadPool *pool);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiThreadPool, moshi_thread_pool_free)

int moshi_thread_pool_n_threads (const MoshiThreadPool *pool);

/* Runs func for every task and returns when all are done. Not reentrant: one caller at a time
 * per pool (a pool belongs to one session or one backend instance). */
void moshi_thread_pool_run (MoshiThreadPool *pool, int n_tasks, MoshiParallelFunc func, void *ctx);

G_END_DECLS
