/* gst-moshi CUDA emulator: kernel launches.
 *
 * The blocks of a launch run one after another on the launching OS thread; the threads of a
 * block run as fibers on it. A fiber runs until it reaches a barrier (__syncthreads, a warp
 * shuffle/vote/__syncwarp) whose other participants have not all arrived, or until it returns;
 * the scheduler then resumes the next fiber that can run, in the configured order. So the
 * threads of a block really are concurrent: a value read after a missing barrier is whatever the
 * other threads had (not) written by then, and a barrier that some threads never reach is a
 * deadlock that the scheduler detects (no fiber can run) and reports.
 *
 * Why fibers rather than OS threads: a block of 256 threads meets at a barrier 256 times per
 * __syncthreads and 32 times per lane per warp shuffle. A switch between fibers is a few
 * nanoseconds (x86-64: 8 saved registers; elsewhere ucontext), a futex hand-over between OS
 * threads several microseconds, and on the 2-core machines that run CI, hundreds of runnable OS
 * threads would make the tests slower by orders of magnitude. Fibers also make every schedule
 * reproducible (forward, reverse, or a seeded shuffle) and deadlocks exactly detectable.
 *
 * Faults: device allocations, dynamic shared memory and fiber stacks sit between guard pages. A
 * SIGSEGV/SIGBUS/SIGFPE raised by kernel code is caught (on an alternate signal stack), turned
 * into a message naming the kernel, block, thread and the allocation the address belongs to,
 * and the launch fails with cudaErrorIllegalAddress (sticky until cudaDeviceReset, as on a GPU).
 * Faults outside kernel code go to the previous handler. A fault injected by a test
 * (moshi_emu_inject_fault) fails the chosen launch the same way, before its blocks run.
 *
 * A launch on a capturing stream is checked as it would be eagerly (configuration, shared
 * memory, pointer arguments) and becomes a graph node that owns a copy of the converted
 * arguments; the graph replays it through launch_raw on the stream it is launched into, so the
 * replay has the checks and faults of an eager launch and counts in the stats as one. */
#include "emu-internal.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <sys/mman.h>
#include <unistd.h>
#include <vector>

/* x86-64 switches fibers with a few instructions of its own; elsewhere (or with
 * -DMOSHI_CUDA_EMU_UCONTEXT) through ucontext, which also saves the signal mask (a system call
 * per switch). */
#if defined(__x86_64__) && !defined(MOSHI_CUDA_EMU_UCONTEXT)
#define EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#ifdef EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

#include "cuda-emu.h"

namespace moshi_emu {

enum FiberState { F_RUNNABLE, F_BARRIER, F_WARP, F_DONE };

struct Fiber {
  void *sp;                     /* saved stack pointer while switched out */
#ifndef EMU_ASM_SWITCH
  ucontext_t uc;
#endif
  char *stack;                  /* usable stack (above its guard page) */
  size_t stack_size;
  void *asan_fake;
  uint3 tid;
  unsigned linear, lane, warp;
  FiberState state;
  unsigned wait_gen;            /* block barrier generation waited on */
  unsigned wait_count;          /* warp-sync count waited on */
  unsigned wait_mask;
};

struct WarpSlot {
  uint64_t bits;
  unsigned count;
};

enum WarpOp { W_SYNC, W_SHUFFLE, W_VOTE };

/* A warp-synchronous op completes when the last lane of its mask arrives: that lane computes
 * every participant's result while they wait, so the slots are free again as soon as the op is
 * over (lanes with other masks may run ahead without overwriting what a lane still needs). */
struct Warp {
  unsigned n_lanes;
  unsigned count[32];           /* warp-synchronous ops each lane has entered */
  WarpSlot slot[32];            /* the value each lane brought to its current op */
  int src[32];                  /* the lane each one reads (shuffles), -1 for its own */
  WarpOp op[32];
  uint64_t result[32];
};

struct Sched {
  void *sp;                     /* the scheduler's stack pointer while a fiber runs */
#ifndef EMU_ASM_SWITCH
  ucontext_t uc;
#endif
  const void *asan_bottom;
  size_t asan_size;
  void *asan_fake;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Fiber *current;
  unsigned n_threads, live, arrived, gen;
  Thunk thunk;
  void *ctx;
  char *smem_map;
  size_t smem_map_len;
  char *smem;                   /* dynamic shared memory of the running block */
  size_t smem_size;
  const char *kernel;
  bool failed;
  cudaError_t fail_code;
  char fail_msg[1024];
  char *altstack;
  uint64_t rng;
};

thread_local Fiber *tls_fiber;
thread_local uint3 tls_block_idx;
thread_local dim3 tls_block_dim, tls_grid_dim;
static thread_local Sched *tls_sched;

static MoshiEmuSchedule schedule = MOSHI_EMU_SCHEDULE_FORWARD;
static uint64_t schedule_seed = 1;
static bool schedule_from_env_done;
static bool fault_from_env_done;

static const size_t STACK_SIZE =
#ifdef EMU_ASAN
    1024 * 1024;
#else
    256 * 1024;
#endif

static size_t
page_size ()
{
  static size_t page = (size_t) sysconf (_SC_PAGESIZE);
  return page;
}

/* ------------------------------------------------------------------ context switch */

#ifdef EMU_ASM_SWITCH
/* moshi_emu_switch (void **save_sp, void *load_sp): saves the callee-saved registers, MXCSR and
 * the x87 control word on the current stack, stores the stack pointer in *save_sp, and resumes
 * the context saved at load_sp. */
asm (R"(
  .pushsection .text
  .globl moshi_emu_switch
  .hidden moshi_emu_switch
  .type moshi_emu_switch, @function
moshi_emu_switch:
  .cfi_startproc
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size moshi_emu_switch, .-moshi_emu_switch
  .popsection
)");
extern "C" void moshi_emu_switch (void **save_sp, void *load_sp);
#endif

[[noreturn]] static void fiber_main ();

static void
fiber_prepare (Fiber *f)
{
#ifdef EMU_ASM_SWITCH
  void **sp = (void **) (((uintptr_t) (f->stack + f->stack_size)) & ~(uintptr_t) 15);
  *--sp = nullptr;                      /* fiber_main's return address: never used */
  *--sp = (void *) fiber_main;          /* where the first switch "returns" to */
  for (int i = 0; i < 6; i++)
    *--sp = nullptr;                    /* rbp rbx r12 r13 r14 r15 */
  --sp;
  uint32_t mxcsr;
  uint16_t fpcw;
  asm volatile ("stmxcsr %0" : "=m" (mxcsr));
  asm volatile ("fnstcw %0" : "=m" (fpcw));
  memcpy (sp, &mxcsr, 4);
  memcpy ((char *) sp + 4, &fpcw, 2);
  f->sp = sp;
#else
  getcontext (&f->uc);
  f->uc.uc_stack.ss_sp = f->stack;
  f->uc.uc_stack.ss_size = f->stack_size;
  f->uc.uc_link = nullptr;
  makecontext (&f->uc, (void (*) ()) fiber_main, 0);
#endif
}

/* scheduler -> fiber */
static void
enter_fiber (Sched *s, Fiber *f)
{
  s->current = f;
  tls_fiber = f;
  g_stats.switches++;
#ifdef EMU_ASAN
  __sanitizer_start_switch_fiber (&s->asan_fake, f->stack, f->stack_size);
#endif
#ifdef EMU_ASM_SWITCH
  moshi_emu_switch (&s->sp, f->sp);
#else
  swapcontext (&s->uc, &f->uc);
#endif
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber (s->asan_fake, nullptr, nullptr);
#endif
  tls_fiber = nullptr;
}

/* fiber -> scheduler; returns when the scheduler resumes this fiber (never when dying) */
static void
leave_fiber (Sched *s, Fiber *f, bool dying)
{
#ifdef EMU_ASAN
  __sanitizer_start_switch_fiber (dying ? nullptr : &f->asan_fake, s->asan_bottom, s->asan_size);
#else
  (void) dying;
#endif
#ifdef EMU_ASM_SWITCH
  moshi_emu_switch (&f->sp, s->sp);
#else
  swapcontext (&f->uc, &s->uc);
#endif
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber (f->asan_fake, &s->asan_bottom, &s->asan_size);
#endif
}

/* ------------------------------------------------------------------ faults */

static struct sigaction old_segv, old_bus, old_fpe;
static bool handlers_installed;

static void
describe_address (Sched *s, uintptr_t addr, char *buf, size_t len)
{
  const char *c = (const char *) addr;
  if (const Alloc *a = find_alloc_near (c)) {
    if (c >= a->ptr + a->size)
      snprintf (buf, len, "address %p is %zu bytes past the end of device allocation %p "
          "(%zu bytes)", c, (size_t) (c - (a->ptr + a->size)), (void *) a->ptr, a->size);
    else
      snprintf (buf, len, "address %p is %zu bytes before device allocation %p (%zu bytes)",
          c, (size_t) (a->ptr - c), (void *) a->ptr, a->size);
    return;
  }
  if (s->smem_map && c >= s->smem_map && c < s->smem_map + s->smem_map_len) {
    snprintf (buf, len, "address %p is %td bytes past the end of the %zu bytes of dynamic "
        "shared memory", c, c - (s->smem + s->smem_size), s->smem_size);
    return;
  }
  for (const Fiber &f : s->fibers)
    if (c >= f.stack - page_size () && c < f.stack) {
      snprintf (buf, len, "stack overflow of thread (%u,%u,%u) (%zu-byte stacks)", f.tid.x,
          f.tid.y, f.tid.z, f.stack_size);
      return;
    }
  snprintf (buf, len, "address %p is neither device memory nor shared memory", c);
}

static void
on_fault (int sig, siginfo_t *info, void *uctx)
{
  Sched *s = tls_sched;
  Fiber *f = tls_fiber;
  if (s == nullptr || f == nullptr) {
    /* not kernel code: let the previous handler (or the default action) have it */
    struct sigaction *old = sig == SIGSEGV ? &old_segv : sig == SIGBUS ? &old_bus : &old_fpe;
    if (old->sa_flags & SA_SIGINFO) {
      if (old->sa_sigaction != nullptr) {
        old->sa_sigaction (sig, info, uctx);
        return;
      }
    } else if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
      old->sa_handler (sig);
      return;
    }
    signal (sig, SIG_DFL);
    return;                     /* the faulting instruction runs again and kills the process */
  }
  char where[512];
  if (sig == SIGFPE)
    snprintf (where, sizeof where, "arithmetic exception (integer division by zero?)");
  else
    describe_address (s, (uintptr_t) info->si_addr, where, sizeof where);
  snprintf (s->fail_msg, sizeof s->fail_msg, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u): "
      "illegal %s: %s", s->kernel, tls_block_idx.x, tls_block_idx.y, tls_block_idx.z, f->tid.x,
      f->tid.y, f->tid.z, sig == SIGFPE ? "instruction" : "memory access", where);
  s->failed = true;
  s->fail_code = sig == SIGFPE ? cudaErrorIllegalInstruction : cudaErrorIllegalAddress;
  /* Abandon the fiber: back to the scheduler, with the signal unblocked again. */
  sigset_t set;
  sigemptyset (&set);
  sigaddset (&set, sig);
  pthread_sigmask (SIG_UNBLOCK, &set, nullptr);
  leave_fiber (s, f, true);
  abort ();
}

static void
install_handlers ()
{
  if (handlers_installed)
    return;
  struct sigaction sa;
  memset (&sa, 0, sizeof sa);
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset (&sa.sa_mask);
  sigaction (SIGSEGV, &sa, &old_segv);
  sigaction (SIGBUS, &sa, &old_bus);
  sigaction (SIGFPE, &sa, &old_fpe);
  handlers_installed = true;
}

/* ------------------------------------------------------------------ scheduler state */

static void
free_sched (Sched *s)
{
  size_t page = page_size ();
  for (Fiber &f : s->fibers)
    munmap (f.stack - page, f.stack_size + page);
  if (s->smem_map != nullptr)
    munmap (s->smem_map, s->smem_map_len);
  if (s->altstack != nullptr) {
    stack_t ss;
    memset (&ss, 0, sizeof ss);
    ss.ss_flags = SS_DISABLE;
    sigaltstack (&ss, nullptr);
    free (s->altstack);
  }
  delete s;
}

/* The library's threads come and go (a scheduler's thread ends with it): each one that launched
 * gives its scheduler state back as it ends, so leak checkers see only what the code under test
 * forgot. */
struct SchedOwner {
  ~SchedOwner ()
  {
    if (tls_sched != nullptr)
      free_sched (tls_sched);
    tls_sched = nullptr;
  }
};
static thread_local SchedOwner tls_sched_owner;

static Sched *
get_sched ()
{
  if (tls_sched != nullptr)
    return tls_sched;
  (void) &tls_sched_owner;      /* constructs it, so that its destructor runs at thread exit */
  Sched *s = new Sched ();
  /* an alternate signal stack so that stack overflows in fibers can be reported */
  stack_t old;
  if (sigaltstack (nullptr, &old) == 0 && (old.ss_flags & SS_DISABLE)) {
    size_t len = 64 * 1024;
    s->altstack = (char *) malloc (len);
    stack_t ss;
    ss.ss_sp = s->altstack;
    ss.ss_size = len;
    ss.ss_flags = 0;
    sigaltstack (&ss, nullptr);
  }
  s->rng = schedule_seed;
  tls_sched = s;
  return s;
}

static void
ensure_fibers (Sched *s, unsigned n)
{
  size_t page = page_size ();
  while (s->fibers.size () < n) {
    Fiber f;
    memset (&f, 0, sizeof f);
    size_t len = STACK_SIZE + page;
    void *m = mmap (nullptr, len, PROT_READ | PROT_WRITE,
        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
      fprintf (stderr, "moshi-cuda-emu: cannot map a fiber stack\n");
      abort ();
    }
    mprotect (m, page, PROT_NONE);
    f.stack = (char *) m + page;
    f.stack_size = STACK_SIZE;
    s->fibers.push_back (f);
  }
}

static void
ensure_smem (Sched *s, size_t bytes)
{
  size_t page = page_size ();
  size_t data = (bytes + 15) & ~(size_t) 15;
  size_t need = (data + page - 1) / page * page + page;
  if (s->smem_map == nullptr || s->smem_map_len < need) {
    if (s->smem_map)
      munmap (s->smem_map, s->smem_map_len);
    void *m = mmap (nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      fprintf (stderr, "moshi-cuda-emu: cannot map shared memory\n");
      abort ();
    }
    s->smem_map = (char *) m;
    s->smem_map_len = need;
    mprotect (s->smem_map + need - page, page, PROT_NONE);
  }
  /* the buffer ends at the guard page */
  s->smem = s->smem_map + s->smem_map_len - page - data;
  s->smem_size = bytes;
}

static uint64_t
next_random (Sched *s)
{
  uint64_t x = s->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  s->rng = x;
  return x;
}

/* ------------------------------------------------------------------ fiber side */

static Fiber *
need_fiber (const char *what)
{
  Fiber *f = tls_fiber;
  if (f == nullptr) {
    fprintf (stderr, "moshi-cuda-emu: %s called outside a kernel\n", what);
    abort ();
  }
  return f;
}

static void
yield (Sched *s, Fiber *f, FiberState state)
{
  f->state = state;
  leave_fiber (s, f, false);
}

[[noreturn]] static void
fail_fiber (Sched *s, Fiber *f, cudaError_t code, const char *msg)
{
  snprintf (s->fail_msg, sizeof s->fail_msg, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s",
      s->kernel, tls_block_idx.x, tls_block_idx.y, tls_block_idx.z, f->tid.x, f->tid.y, f->tid.z,
      msg);
  s->failed = true;
  s->fail_code = code;
  leave_fiber (s, f, true);
  abort ();
}

void
kernel_trap (cudaError_t err, const char *fmt, ...)
{
  Fiber *f = need_fiber ("a device-side trap");
  char msg[768];
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  fail_fiber (tls_sched, f, err, msg);
}

static void
fiber_main ()
{
  Sched *s = tls_sched;
  Fiber *f = s->current;
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber (nullptr, &s->asan_bottom, &s->asan_size);
#endif
  s->thunk (s->ctx);
  f->state = F_DONE;
  s->live--;
  /* a thread that returns no longer takes part in __syncthreads */
  if (s->arrived > 0 && s->arrived == s->live) {
    s->gen++;
    s->arrived = 0;
    g_stats.barriers++;
  }
  leave_fiber (s, f, true);
  abort ();
}

const uint3 &
thread_idx ()
{
  return need_fiber ("threadIdx")->tid;
}

unsigned
lane_id ()
{
  return need_fiber ("a warp intrinsic")->lane;
}

void *
dynamic_smem ()
{
  need_fiber ("dynamic shared memory");
  return tls_sched->smem;
}

void
syncthreads ()
{
  Fiber *f = need_fiber ("__syncthreads");
  Sched *s = tls_sched;
  f->wait_gen = s->gen;
  s->arrived++;
  if (s->arrived == s->live) {
    s->gen++;
    s->arrived = 0;
    g_stats.barriers++;
    return;
  }
  yield (s, f, F_BARRIER);
}

static bool
warp_released (Sched *s, const Fiber *f)
{
  const Warp &w = s->warps[f->warp];
  for (unsigned m = f->wait_mask; m != 0; m &= m - 1)
    if (w.count[__builtin_ctz (m)] < f->wait_count)
      return false;
  return true;
}

static void
check_mask (Sched *s, Fiber *f, unsigned mask, const char *what)
{
  if (!(mask & (1u << f->lane))) {
    char msg[160];
    snprintf (msg, sizeof msg, "%s with mask 0x%08x that does not contain the calling lane %u",
        what, mask, f->lane);
    fail_fiber (s, f, cudaErrorIllegalInstruction, msg);
  }
  unsigned n = s->warps[f->warp].n_lanes;
  unsigned existing = n >= 32 ? 0xffffffffu : (1u << n) - 1;
  if (mask & ~existing) {
    char msg[200];
    snprintf (msg, sizeof msg, "%s with mask 0x%08x names lanes that do not exist (the warp has "
        "%u threads)", what, mask, n);
    fail_fiber (s, f, cudaErrorIllegalInstruction, msg);
  }
}

/* Completes op number count of the lanes of mask (called by the last lane to arrive). */
static void
warp_complete (Sched *s, Fiber *f, Warp &w, unsigned mask, unsigned count)
{
  unsigned ballot = 0;
  for (unsigned m = mask; m != 0; m &= m - 1) {
    unsigned lane = __builtin_ctz (m);
    if (w.slot[lane].count != count || w.op[lane] != w.op[f->lane]) {
      char msg[200];
      snprintf (msg, sizeof msg, "lanes %u and %u of mask 0x%08x are at different "
          "warp-synchronous operations (the lanes of a mask must execute the same sequence)",
          lane, f->lane, mask);
      fail_fiber (s, f, cudaErrorIllegalInstruction, msg);
    }
    if (w.slot[lane].bits)
      ballot |= 1u << lane;
  }
  for (unsigned m = mask; m != 0; m &= m - 1) {
    unsigned lane = __builtin_ctz (m);
    int src = w.src[lane];
    if (w.op[lane] == W_VOTE)
      w.result[lane] = ballot;
    else if (src < 0)
      w.result[lane] = w.slot[lane].bits;
    else if (src > 31 || !(mask & (1u << src)))
      w.result[lane] = ~(uint64_t) 0;   /* undefined on a GPU: reads as NaN / -1 here */
    else
      w.result[lane] = w.slot[src].bits;
  }
}

static uint64_t
warp_op (WarpOp op, unsigned mask, uint64_t bits, int src, const char *what)
{
  Fiber *f = need_fiber (what);
  Sched *s = tls_sched;
  check_mask (s, f, mask, what);
  Warp &w = s->warps[f->warp];
  unsigned count = ++w.count[f->lane];
  w.slot[f->lane] = WarpSlot { bits, count };
  w.src[f->lane] = src;
  w.op[f->lane] = op;
  f->wait_count = count;
  f->wait_mask = mask;
  g_stats.warp_syncs++;
  if (warp_released (s, f))
    warp_complete (s, f, w, mask, count);
  else
    yield (s, f, F_WARP);
  return w.result[f->lane];
}

void
warp_sync (unsigned mask)
{
  warp_op (W_SYNC, mask, 0, -1, "__syncwarp");
}

uint64_t
warp_exchange (unsigned mask, uint64_t bits, int src)
{
  return warp_op (W_SHUFFLE, mask, bits, src, "a warp shuffle");
}

unsigned
warp_ballot (unsigned mask, bool pred)
{
  return (unsigned) warp_op (W_VOTE, mask, pred ? 1 : 0, -1, "a warp vote");
}

void
check_shuffle_width (int width)
{
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    char msg[96];
    snprintf (msg, sizeof msg, "warp shuffle width %d is not a power of two <= 32", width);
    fail_fiber (tls_sched, need_fiber ("a warp shuffle"), cudaErrorIllegalInstruction, msg);
  }
}

void
check_device_range (const void *p, size_t bytes, const char *what, const char *file, int line)
{
  Fiber *f = need_fiber ("MOSHI_CHECK_DEVICE_RANGE");
  if (bytes == 0 || range_is_device (p, bytes))
    return;
  char msg[512];
  const Alloc *a = find_alloc (p);
  if (a != nullptr)
    snprintf (msg, sizeof msg, "%s:%d: %s: %zu bytes at offset %zu run past the end of a "
        "%zu-byte device allocation", file, line, what, bytes, (size_t) ((const char *) p - a->ptr),
        a->size);
  else
    snprintf (msg, sizeof msg, "%s:%d: %s = %p is not device memory", file, line, what, p);
  fail_fiber (tls_sched, f, cudaErrorIllegalAddress, msg);
}

/* ------------------------------------------------------------------ launch */

static std::string
describe_waits (Sched *s)
{
  std::string out;
  int shown_barrier = 0, shown_warp = 0;
  unsigned at_barrier = 0, at_warp = 0;
  for (unsigned i = 0; i < s->n_threads; i++) {
    const Fiber &f = s->fibers[i];
    if (f.state == F_DONE)
      continue;
    char buf[200];
    buf[0] = 0;
    if (f.state == F_BARRIER) {
      at_barrier++;
      if (shown_barrier++ < 3)
        snprintf (buf, sizeof buf, "; thread (%u,%u,%u) waits at __syncthreads", f.tid.x,
            f.tid.y, f.tid.z);
    } else {
      at_warp++;
      const Warp &w = s->warps[f.warp];
      unsigned missing = 0;
      for (unsigned m = f.wait_mask; m != 0; m &= m - 1)
        if (w.count[__builtin_ctz (m)] < f.wait_count)
          missing |= 1u << __builtin_ctz (m);
      if (shown_warp++ < 3)
        snprintf (buf, sizeof buf, "; thread (%u,%u,%u) waits in a warp-synchronous op (mask "
            "0x%08x) for lanes 0x%08x", f.tid.x, f.tid.y, f.tid.z, f.wait_mask, missing);
    }
    out += buf;
  }
  char total[120];
  snprintf (total, sizeof total, " (%u at __syncthreads, %u in warp-synchronous ops)",
      at_barrier, at_warp);
  return total + out;
}

static bool
fiber_ready (Sched *s, const Fiber &f)
{
  switch (f.state) {
    case F_RUNNABLE: return true;
    case F_BARRIER: return s->gen != f.wait_gen;
    case F_WARP: return warp_released (s, &f);
    case F_DONE: return false;
  }
  return false;
}

/* Runs one block; false when the launch failed (s->fail_msg says why). */
static bool
run_block (Sched *s, std::vector<unsigned> &order)
{
  unsigned n = s->n_threads;
  dim3 bd = tls_block_dim;
  for (unsigned i = 0; i < n; i++) {
    Fiber &f = s->fibers[i];
    f.tid = make_uint3 (i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y));
    f.linear = i;
    f.lane = i % 32;
    f.warp = i / 32;
    f.state = F_RUNNABLE;
    f.wait_gen = f.wait_count = f.wait_mask = 0;
    fiber_prepare (&f);
  }
  unsigned n_warps = (n + 31) / 32;
  s->warps.resize (n_warps);
  for (unsigned w = 0; w < n_warps; w++) {
    memset (&s->warps[w], 0, sizeof (Warp));
    s->warps[w].n_lanes = std::min (32u, n - w * 32);
  }
  s->live = n;
  s->arrived = 0;
  s->gen = 0;
  if (s->smem_size > 0)
    memset (s->smem, 0xff, s->smem_size);   /* uninitialised shared memory reads as NaN */

  unsigned remaining = n;
  while (remaining > 0) {
    if (schedule == MOSHI_EMU_SCHEDULE_RANDOM)
      for (unsigned i = n - 1; i > 0; i--)
        std::swap (order[i], order[next_random (s) % (i + 1)]);
    bool progress = false;
    for (unsigned k = 0; k < n; k++) {
      Fiber &f = s->fibers[order[k]];
      if (!fiber_ready (s, f))
        continue;
      f.state = F_RUNNABLE;
      enter_fiber (s, &f);
      progress = true;
      if (s->failed)
        return false;
      if (f.state == F_DONE)
        remaining--;
    }
    if (!progress) {
      snprintf (s->fail_msg, sizeof s->fail_msg, "kernel %s, block (%u,%u,%u): deadlock: "
          "%u of %u threads wait at barriers that the others can no longer reach%s",
          s->kernel, tls_block_idx.x, tls_block_idx.y, tls_block_idx.z, remaining, n,
          describe_waits (s).c_str ());
      s->failed = true;
      s->fail_code = cudaErrorLaunchTimeout;
      return false;
    }
  }
  return true;
}

static void
schedule_from_env ()
{
  if (schedule_from_env_done)
    return;
  schedule_from_env_done = true;
  const char *e = getenv ("MOSHI_CUDA_EMU_SCHEDULE");
  if (e == nullptr || *e == 0)
    return;
  if (strcmp (e, "forward") == 0) {
    schedule = MOSHI_EMU_SCHEDULE_FORWARD;
  } else if (strcmp (e, "reverse") == 0) {
    schedule = MOSHI_EMU_SCHEDULE_REVERSE;
  } else if (strncmp (e, "random", 6) == 0) {
    schedule = MOSHI_EMU_SCHEDULE_RANDOM;
    if (e[6] == ':')
      schedule_seed = strtoull (e + 7, nullptr, 10) | 1;
  } else {
    fprintf (stderr, "moshi-cuda-emu: unknown MOSHI_CUDA_EMU_SCHEDULE '%s' (forward, reverse, "
        "random[:seed]); using forward\n", e);
  }
}

static void
fault_from_env ()
{
  if (fault_from_env_done)
    return;
  fault_from_env_done = true;
  const char *e = getenv ("MOSHI_CUDA_EMU_FAULT_AFTER");
  if (e == nullptr || *e == 0)
    return;
  char *end;
  unsigned long long n = strtoull (e, &end, 10);
  if (*end != 0 || n == 0) {
    fprintf (stderr, "moshi-cuda-emu: MOSHI_CUDA_EMU_FAULT_AFTER='%s' is not a positive "
        "number of launches; no fault is injected\n", e);
    return;
  }
  g_fault_countdown = n;
}

namespace {

/* A launch captured from a stream: the kernel's context (its converted arguments) is a copy
 * owned by the node, as the caller's is gone when the graph runs. */
struct KernelNode : CUgraphNode_st {
  const char *name;
  const void *func;
  dim3 grid, block;
  size_t smem;
  const LaunchOps *ops;
  void *ctx;
  std::vector<PtrArg> ptrs;

  KernelNode (const char *name_, const void *func_, dim3 grid_, dim3 block_, size_t smem_,
      const LaunchOps *ops_, const void *ctx_, const PtrArg *ptrs_, int n_ptrs)
    : CUgraphNode_st (cudaGraphNodeTypeKernel, std::string ("kernel ") + name_), name (name_),
      func (func_), grid (grid_), block (block_), smem (smem_), ops (ops_),
      ctx (ops_->clone (ctx_)), ptrs (ptrs_, ptrs_ + n_ptrs)
  {
  }

  ~KernelNode () override
  {
    ops->destroy (ctx);
  }

  cudaError_t
  replay (cudaStream_t stream) override
  {
    return launch_raw (name, func, grid, block, smem, stream, ops, ctx, ptrs.data (),
        (int) ptrs.size ());
  }
};

}  // namespace

cudaError_t
launch_raw (const char *name, const void *func, dim3 grid, dim3 block, size_t smem,
    cudaStream_t stream, const LaunchOps *ops, void *ctx, const PtrArg *ptrs, int n_ptrs)
{
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  schedule_from_env ();
  fault_from_env ();
  if (sticky_error () != cudaSuccess)
    return fail (sticky_error ());
  if (tls_fiber != nullptr) {
    report ("kernel %s launched from inside a kernel (dynamic parallelism is not emulated)", name);
    return fail (cudaErrorNotSupported);
  }
  /* an error in a launch on a capturing stream also invalidates the capture */
  unsigned long long threads = (unsigned long long) block.x * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0
      || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64
      || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    report ("kernel %s: invalid configuration: grid (%u,%u,%u), block (%u,%u,%u)", name, grid.x,
        grid.y, grid.z, block.x, block.y, block.z);
    return capture_fail (stream, fail (cudaErrorInvalidConfiguration));
  }
  if (smem > (size_t) max_dynamic_smem (func)) {
    report ("kernel %s: %zu bytes of dynamic shared memory exceed the %d allowed (raise the "
        "limit with cudaFuncSetAttribute)", name, smem, max_dynamic_smem (func));
    return capture_fail (stream, fail (cudaErrorInvalidValue));
  }
  if (!stream_is_valid (stream)) {
    report ("kernel %s: stream %p is not a live stream", name, (void *) stream);
    return fail (cudaErrorInvalidResourceHandle);
  }
  char call[160];
  snprintf (call, sizeof call, "kernel %s", name);
  bool capturing;
  cudaError_t err = capture_state (call, stream, &capturing);
  if (err != cudaSuccess)
    return err;
  for (int i = 0; i < n_ptrs; i++) {
    const void *p = ptrs[i].ptr;
    if (p == nullptr)
      continue;
    const Alloc *a = find_alloc_near (p);
    /* inside an allocation, or one past its end (an empty range there is legal) */
    if (a == nullptr || (const char *) p < a->ptr || (const char *) p > a->ptr + a->size) {
      report ("kernel %s: argument %d is %p, which is not device memory (a host pointer passed "
          "to a kernel faults on a GPU)", name, ptrs[i].index, p);
      return capture_fail (stream, fail (cudaErrorIllegalAddress));
    }
  }
  if (capturing) {
    capture_add (stream, new KernelNode (name, func, grid, block, smem, ops, ctx, ptrs, n_ptrs));
    return cudaSuccess;
  }

  if (g_fault_countdown > 0 && --g_fault_countdown == 0) {
    g_stats.launches++;
    report ("kernel %s: injected device fault (moshi_emu_inject_fault): an illegal memory "
        "access was encountered", name);
    return fail (cudaErrorIllegalAddress);
  }

  Sched *s = get_sched ();
  install_handlers ();
  ensure_fibers (s, (unsigned) threads);
  ensure_smem (s, smem);
  s->n_threads = (unsigned) threads;
  s->thunk = ops->run;
  s->ctx = ctx;
  s->kernel = name;
  s->failed = false;
  tls_block_dim = block;
  tls_grid_dim = grid;
  std::vector<unsigned> order (threads);
  for (unsigned i = 0; i < threads; i++)
    order[i] = schedule == MOSHI_EMU_SCHEDULE_REVERSE ? (unsigned) threads - 1 - i : i;

  bool ok = true;
  for (unsigned z = 0; ok && z < grid.z; z++)
    for (unsigned y = 0; ok && y < grid.y; y++)
      for (unsigned x = 0; ok && x < grid.x; x++) {
        tls_block_idx = make_uint3 (x, y, z);
        ok = run_block (s, order);
        g_stats.blocks++;
        g_stats.threads += threads;
      }
  g_stats.launches++;
  if (!ok) {
    report ("%s", s->fail_msg);
    return fail (s->fail_code);
  }
  /* writes just outside the allocations the kernel was given */
  for (int i = 0; i < n_ptrs; i++) {
    const Alloc *a = ptrs[i].ptr ? find_alloc_near (ptrs[i].ptr) : nullptr;
    char msg[256];
    if (a != nullptr && !check_canaries (a, msg, sizeof msg)) {
      report ("kernel %s (argument %d): %s", name, ptrs[i].index, msg);
      return fail (cudaErrorIllegalAddress);
    }
  }
  return cudaSuccess;
}

}  // namespace moshi_emu

extern "C" void
moshi_emu_set_schedule (MoshiEmuSchedule order, uint64_t seed)
{
  std::lock_guard<std::recursive_mutex> guard (moshi_emu::g_lock);
  moshi_emu::schedule_from_env_done = true;
  moshi_emu::schedule = order;
  moshi_emu::schedule_seed = seed | 1;
  if (moshi_emu::tls_sched)
    moshi_emu::tls_sched->rng = moshi_emu::schedule_seed;
}

extern "C" void
moshi_emu_inject_fault (uint64_t after_launches)
{
  std::lock_guard<std::recursive_mutex> guard (moshi_emu::g_lock);
  /* an explicit injection overrides the environment's */
  moshi_emu::fault_from_env_done = true;
  moshi_emu::g_fault_countdown = after_launches;
}

extern "C" uint64_t
moshi_emu_fault_pending (void)
{
  std::lock_guard<std::recursive_mutex> guard (moshi_emu::g_lock);
  moshi_emu::fault_from_env ();
  return moshi_emu::g_fault_countdown;
}

extern "C" MoshiEmuSchedule
moshi_emu_get_schedule (void)
{
  std::lock_guard<std::recursive_mutex> guard (moshi_emu::g_lock);
  moshi_emu::schedule_from_env ();
  return moshi_emu::schedule;
}
