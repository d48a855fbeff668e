#include "moshi-threadpool.h"

#include <stdatomic.h>
#include <sched.h>
#include <stdbool.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause ()
#else
#define cpu_relax() do { } while (0)
#endif

/* Waiters spin this many rounds before sleeping: a frame runs dozens of parallel sections a few
 * microseconds apart, and waking a sleeping thread costs more than that. Past SPIN_PAUSE_ROUNDS
 * a spinner yields the processor each round, so that on a loaded machine the thread it waits
 * for can run. */
#define SPIN_PAUSE_ROUNDS 2000
#define SPIN_ROUNDS 4000

static inline void
spin_wait_round (int round)
{
  if (round < SPIN_PAUSE_ROUNDS)
    cpu_relax ();
  else
    sched_yield ();
}

struct _MoshiThreadPool {
  int n_threads;
  GThread **workers;            /* n_threads - 1 of them */

  GMutex lock;
  GCond wake;                   /* workers wait here for a new generation */
  GCond done;                   /* the caller waits here for the last worker */

  atomic_uint generation;       /* bumped once per run */
  atomic_int next_task;
  atomic_int busy_workers;
  atomic_bool quit;

  MoshiParallelFunc func;
  void *ctx;
  int n_tasks;
};

typedef struct {
  MoshiThreadPool *pool;
  int index;
} WorkerArgs;

static void
run_tasks (MoshiThreadPool *pool, int thread)
{
  for (;;) {
    int task = atomic_fetch_add_explicit (&pool->next_task, 1, memory_order_relaxed);
    if (task >= pool->n_tasks)
      break;
    pool->func (pool->ctx, task, thread);
  }
}

static gpointer
worker_main (gpointer data)
{
  WorkerArgs *args = data;
  MoshiThreadPool *pool = args->pool;
  int thread = args->index;
  g_free (args);

  /* Generation 0 is the pool's state at creation; a run may start before this thread does. */
  unsigned seen = 0;
  for (;;) {
    unsigned gen;
    int spins = 0;
    while ((gen = atomic_load_explicit (&pool->generation, memory_order_acquire)) == seen
        && !atomic_load (&pool->quit) && spins < SPIN_ROUNDS) {
      spin_wait_round (spins);
      spins++;
    }
    if (gen == seen && !atomic_load (&pool->quit)) {
      g_mutex_lock (&pool->lock);
      while ((gen = atomic_load (&pool->generation)) == seen && !atomic_load (&pool->quit))
        g_cond_wait (&pool->wake, &pool->lock);
      g_mutex_unlock (&pool->lock);
    }
    if (atomic_load (&pool->quit))
      break;
    seen = gen;

    run_tasks (pool, thread);

    if (atomic_fetch_sub_explicit (&pool->busy_workers, 1, memory_order_acq_rel) == 1) {
      g_mutex_lock (&pool->lock);
      g_cond_signal (&pool->done);
      g_mutex_unlock (&pool->lock);
    }
  }
  return NULL;
}

MoshiThreadPool *
moshi_thread_pool_new (int n_threads)
{
  MoshiThreadPool *pool = g_new0 (MoshiThreadPool, 1);
  pool->n_threads = MAX (n_threads, 1);
  g_mutex_init (&pool->lock);
  g_cond_init (&pool->wake);
  g_cond_init (&pool->done);
  atomic_init (&pool->generation, 0);
  atomic_init (&pool->next_task, 0);
  atomic_init (&pool->busy_workers, 0);
  atomic_init (&pool->quit, false);
  pool->workers = g_new0 (GThread *, pool->n_threads);
  for (int i = 1; i < pool->n_threads; i++) {
    WorkerArgs *args = g_new (WorkerArgs, 1);
    args->pool = pool;
    args->index = i;
    pool->workers[i] = g_thread_new ("moshi-worker", worker_main, args);
  }
  return pool;
}

void
moshi_thread_pool_free (MoshiThreadPool *pool)
{
  if (pool == NULL)
    return;
  g_mutex_lock (&pool->lock);
  atomic_store (&pool->quit, true);
  g_cond_broadcast (&pool->wake);
  g_mutex_unlock (&pool->lock);
  for (int i = 1; i < pool->n_threads; i++)
    g_thread_join (pool->workers[i]);
  g_free (pool->workers);
  g_mutex_clear (&pool->lock);
  g_cond_clear (&pool->wake);
  g_cond_clear (&pool->done);
  g_free (pool);
}

int
moshi_thread_pool_n_threads (const MoshiThreadPool *pool)
{
  return pool->n_threads;
}

void
moshi_thread_pool_run (MoshiThreadPool *pool, int n_tasks, MoshiParallelFunc func, void *ctx)
{
  if (n_tasks <= 0)
    return;
  if (pool->n_threads == 1 || n_tasks == 1) {
    for (int t = 0; t < n_tasks; t++)
      func (ctx, t, 0);
    return;
  }

  pool->func = func;
  pool->ctx = ctx;
  pool->n_tasks = n_tasks;
  atomic_store_explicit (&pool->next_task, 0, memory_order_relaxed);
  atomic_store_explicit (&pool->busy_workers, pool->n_threads - 1, memory_order_relaxed);

  g_mutex_lock (&pool->lock);
  atomic_fetch_add_explicit (&pool->generation, 1, memory_order_release);
  g_cond_broadcast (&pool->wake);
  g_mutex_unlock (&pool->lock);

  run_tasks (pool, 0);

  int spins = 0;
  while (atomic_load_explicit (&pool->busy_workers, memory_order_acquire) > 0 && spins < SPIN_ROUNDS) {
    spin_wait_round (spins);
    spins++;
  }
  if (atomic_load (&pool->busy_workers) > 0) {
    g_mutex_lock (&pool->lock);
    while (atomic_load (&pool->busy_workers) > 0)
      g_cond_wait (&pool->done, &pool->lock);
    g_mutex_unlock (&pool->lock);
  }
}
