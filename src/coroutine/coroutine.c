/*
 * coroutine.c — stackful coroutines (see coroutine.h).
 *
 * Each thread has a "leader": a pseudo-coroutine standing for the thread's
 * own stack.  co_enter() switches from whoever runs now to the target and
 * records it as the target's caller; co_yield() switches back to the caller.
 * That makes nesting free: a coroutine entering another is just a caller.
 *
 * Stacks are mmap'ed with a PROT_NONE guard page below and kept, together
 * with their Coroutine struct, in a per-thread pool: a coroutine only ever
 * runs and ends on its home thread, so its stack always returns to the pool
 * of the thread that made it and steady-state creation costs no syscall.
 *
 * Waking from another thread never switches across threads: co_wake() queues
 * a bottom half on the home loop that enters the coroutine there.  The wake
 * flag is atomic so that a second wake before the first ran is caught.
 *
 * Sanitizers: ASan needs to be told about every stack switch
 * (__sanitizer_start/finish_switch_fiber) or it reports false stack overflows
 * and loses fake stacks; TSan needs one fiber per coroutine
 * (__tsan_create/switch_to/destroy_fiber) or it mixes up happens-before.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "coroutine/coroutine.h"
#include "coroutine/switch.h"
#include "loop/loop.h"
#include "loop/loop-int.h"

/* Usable stack per coroutine; one guard page more is mapped below it. */
#define CO_STACK_SIZE   (256 * 1024)
/* Coroutines kept per thread for reuse; more are unmapped when they end. */
#define CO_POOL_MAX     256

#if defined(CO_FORCE_UCONTEXT) || !defined(CO_HAVE_ASM_SWITCH)
#define CO_USE_ASM 0
#else
#define CO_USE_ASM 1
#endif

#ifndef __has_feature
#define __has_feature(x) 0
#endif
#if defined(__SANITIZE_ADDRESS__) || __has_feature(address_sanitizer)
#define CO_ASAN 1
#include <sanitizer/common_interface_defs.h>
#include <sanitizer/asan_interface.h>
#else
#define CO_ASAN 0
#endif
#if defined(__SANITIZE_THREAD__) || __has_feature(thread_sanitizer)
#define CO_TSAN 1
#include <sanitizer/tsan_interface.h>
#else
#define CO_TSAN 0
#endif

enum CoState {
    CO_READY,       /* created, never entered */
    CO_RUNNING,     /* running, or suspended inside co_enter() of another */
    CO_YIELDED,
    CO_DEAD,        /* entry returned; freed by whoever entered it */
};

struct Coroutine {
#if CO_USE_ASM
    void *sp;
#else
    CoUContext uc;
#endif
    Coroutine *caller;
    CoroutineEntry *entry;
    void *opaque;
    Loop *home;
    enum CoState state;
    atomic_int wake_pending;    /* co_wake() called, bottom half not run yet */
    int rdlock_depth;
    LoopBH wake_bh;
    void *stack;                /* mapping base (guard page first); NULL: leader */
    size_t stack_size;          /* usable size above the guard page */
    Coroutine *pool_next;
#if CO_ASAN
    void *asan_fake_stack;
    const void *asan_stack_bottom;
    size_t asan_stack_size;
#endif
#if CO_TSAN
    void *tsan_fiber;
#endif
};

/* The thread's own stack, as a coroutine to switch back to. */
static __thread Coroutine leader;
/* The running coroutine; NULL when the leader runs. */
static __thread Coroutine *current;
static __thread Coroutine *pool;
static __thread int pool_len;
static pthread_key_t pool_key;
static pthread_once_t pool_key_once = PTHREAD_ONCE_INIT;

/* Thread-safe: every thread computes the same value. */
static size_t page_size(void)
{
    static atomic_size_t size;
    size_t s = atomic_load_explicit(&size, memory_order_relaxed);

    if (!s) {
        s = (size_t)sysconf(_SC_PAGESIZE);
        atomic_store_explicit(&size, s, memory_order_relaxed);
    }
    return s;
}

static void co_die(const char *what)
{
    fprintf(stderr, "diskstack: coroutine misuse: %s\n", what);
    abort();
}

/* ---- the switch, with sanitizer annotations ---------------------------- */

static Coroutine *self_or_leader(void)
{
    return current ? current : &leader;
}

#if CO_ASAN
static void asan_before_switch(Coroutine *from, Coroutine *to)
{
    /* A dying coroutine passes NULL so ASan frees its fake stack. */
    void **fake = from->state == CO_DEAD ? NULL : &from->asan_fake_stack;

    __sanitizer_start_switch_fiber(fake, to->asan_stack_bottom,
                                   to->asan_stack_size);
}

static void asan_after_switch(Coroutine *self)
{
    const void *bottom;
    size_t size;

    __sanitizer_finish_switch_fiber(self->asan_fake_stack, &bottom, &size);
}
#else
static void asan_before_switch(Coroutine *from, Coroutine *to) { }
static void asan_after_switch(Coroutine *self) { }
#endif

#if CO_TSAN
static void tsan_before_switch(Coroutine *from, Coroutine *to)
{
    /* The first switch of a thread is always away from the leader: that is
     * when we learn the thread's own fiber. */
    if (from == &leader && !leader.tsan_fiber) {
        leader.tsan_fiber = __tsan_get_current_fiber();
    }
    __tsan_switch_to_fiber(to->tsan_fiber, 0);
}
#else
static void tsan_before_switch(Coroutine *from, Coroutine *to) { }
#endif

/* Switches from `from` (running) to `to`; returns when `from` is resumed. */
static void co_switch(Coroutine *from, Coroutine *to)
{
    tsan_before_switch(from, to);
    asan_before_switch(from, to);
#if CO_USE_ASM
    co_switch_asm(&from->sp, to->sp);
#else
    co_switch_ucontext(&from->uc, &to->uc);
#endif
    asan_after_switch(from);
}

/* First code on a fresh stack. */
static void co_start(void *arg)
{
    Coroutine *co = arg;

#if CO_ASAN
    /* Learn the caller's stack (the leader's is not known otherwise). */
    __sanitizer_finish_switch_fiber(NULL, &co->caller->asan_stack_bottom,
                                    &co->caller->asan_stack_size);
#endif
    co->entry(co->opaque);
    if (co->rdlock_depth != 0) {
        co_die("coroutine ended holding the graph read lock");
    }
    if (atomic_load_explicit(&co->wake_pending, memory_order_acquire)) {
        /* Its wake-up would enter a freed (or reused) coroutine. */
        co_die("coroutine ended with a co_wake() pending");
    }
    co->state = CO_DEAD;
    co_switch(co, co->caller);
    /* A dead coroutine's stack is prepared afresh before reuse. */
    co_die("dead coroutine resumed");
}

/* ---- allocation and the per-thread pool -------------------------------- */

static void pool_drain(void *unused)
{
    while (pool) {
        Coroutine *co = pool;

        pool = co->pool_next;
        munmap(co->stack, co->stack_size + page_size());
        free(co);
    }
    pool_len = 0;
}

static void pool_key_init(void)
{
    pthread_key_create(&pool_key, pool_drain);
}

static Coroutine *co_alloc(void)
{
    Coroutine *co;
    size_t guard = page_size();

    if (pool) {
        co = pool;
        pool = co->pool_next;
        pool_len--;
        return co;
    }
    co = calloc(1, sizeof(*co));
    if (!co) {
        co_die("out of memory");
    }
    co->stack_size = CO_STACK_SIZE;
    co->stack = mmap(NULL, co->stack_size + guard, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                     -1, 0);
    if (co->stack == MAP_FAILED || mprotect(co->stack, guard, PROT_NONE) < 0) {
        fprintf(stderr, "diskstack: cannot map a coroutine stack: %s\n",
                strerror(errno));
        abort();
    }
    return co;
}

static void co_release(Coroutine *co)
{
#if CO_TSAN
    __tsan_destroy_fiber(co->tsan_fiber);
    co->tsan_fiber = NULL;
#endif
    if (pool_len >= CO_POOL_MAX) {
        munmap(co->stack, co->stack_size + page_size());
        free(co);
        return;
    }
    pthread_once(&pool_key_once, pool_key_init);
    if (!pool) {
        pthread_setspecific(pool_key, &pool);  /* non-NULL: run destructor */
    }
    co->pool_next = pool;
    pool = co;
    pool_len++;
}

static void co_prepare_stack(Coroutine *co)
{
    void *base = (char *)co->stack + page_size();

#if CO_ASAN
    /* A pooled stack still carries the redzones of the frames its previous
     * coroutine left when it switched away for the last time. */
    __asan_unpoison_memory_region(base, co->stack_size);
#endif
#if CO_USE_ASM
    co->sp = co_asm_prepare(base, co->stack_size, co_start, co);
#else
    co_uc_prepare(&co->uc, base, co->stack_size, co_start, co);
#endif
#if CO_ASAN
    co->asan_stack_bottom = base;
    co->asan_stack_size = co->stack_size;
    co->asan_fake_stack = NULL;
#endif
#if CO_TSAN
    co->tsan_fiber = __tsan_create_fiber(0);
#endif
}

/* ---- the public API ---------------------------------------------------- */

/* Both: calling thread's coroutines. */
Coroutine *co_create(CoroutineEntry *entry, void *opaque)
{
    Coroutine *co = co_alloc();

    co->entry = entry;
    co->opaque = opaque;
    co->home = loop_current();
    co->state = CO_READY;
    co->caller = NULL;
    co->rdlock_depth = 0;
    atomic_store_explicit(&co->wake_pending, 0, memory_order_relaxed);
    co_prepare_stack(co);
    return co;
}

/* Both: co must belong to the calling thread. */
void co_enter(Coroutine *co)
{
    Coroutine *self = self_or_leader();

    if (co->state != CO_READY && co->state != CO_YIELDED) {
        co_die(co->state == CO_RUNNING ? "co_enter of a running coroutine"
                                       : "co_enter of a dead coroutine");
    }
    if (co->home && co->home != loop_current()) {
        co_die("co_enter from a thread that is not the coroutine's home");
    }
    co->caller = self;
    co->state = CO_RUNNING;
    current = co;
    co_switch(self, co);
    current = self == &leader ? NULL : self;
    if (co->state == CO_DEAD) {
        co_release(co);
    }
}

/* Both: calling thread. */
void co_spawn(CoroutineEntry *entry, void *opaque)
{
    co_enter(co_create(entry, opaque));
}

/* Coroutine only. */
void coroutine_fn co_yield(void)
{
    Coroutine *self = current;

    if (!self) {
        co_die("co_yield outside a coroutine");
    }
    self->state = CO_YIELDED;
    co_switch(self, self->caller);
}

/* Both. */
Coroutine *co_self(void)
{
    return current;
}

/* Thread-safe: home never changes. */
Loop *co_home(const Coroutine *co)
{
    return co->home;
}

/* Runs on co's home loop: the deferred half of co_wake(). */
static void co_wake_bh(void *opaque)
{
    Coroutine *co = opaque;

    atomic_store_explicit(&co->wake_pending, 0, memory_order_relaxed);
    if (co->state != CO_YIELDED) {
        co_die("co_wake of a coroutine that did not yield");
    }
    co_enter(co);
}

/* Thread-safe. */
void co_wake(Coroutine *co)
{
    if (atomic_exchange_explicit(&co->wake_pending, 1, memory_order_acq_rel)) {
        co_die("co_wake twice before the coroutine ran");
    }
    if (!co->home) {
        co_die("co_wake of a coroutine created on a thread without a loop");
    }
    loop_schedule_bh(co->home, &co->wake_bh, co_wake_bh, co);
}

/* Both; outside coroutines the thread's own counter is used. */
int co_rdlock_depth_add(int delta)
{
    Coroutine *self = self_or_leader();

    self->rdlock_depth += delta;
    return self->rdlock_depth;
}

/* Home loop thread, from the loop's timer dispatch (not a coroutine). */
static void co_sleep_timer_cb(void *opaque)
{
    co_enter(opaque);
}

/* Coroutine only. */
void coroutine_fn co_sleep_ns(int64_t ns)
{
    LoopTimer timer;
    Loop *loop = loop_current();

    if (!current || !loop) {
        co_die("co_sleep_ns outside a coroutine on a loop thread");
    }
    loop_timer_init(&timer, loop, co_sleep_timer_cb, current);
    loop_timer_arm(&timer, clock_ns() + (ns > 0 ? ns : 0));
    co_yield();
    /* Normally the timer fired and this is a no-op.  If something else
     * entered us first (a stray co_wake()), the timer lives in this frame:
     * left on the loop's list it would be overwritten by later frames and
     * corrupt the list, or fire into whatever we wait for next. */
    loop_timer_cancel(&timer);
}

/* ---- stack preparation for the asm switch ------------------------------ */

#if defined(__x86_64__)
void co_asm_start(void);

/* Frame popped by co_switch_asm, lowest address first:
 * mxcsr|fpucw, r15, r14, r13, r12, rbx, rbp, return address; then a zero
 * "return address" of co_asm_start so that rsp is 8 mod 16 at its entry. */
void *co_asm_prepare(void *base, size_t size, CoStartFn *fn, void *arg)
{
    uintptr_t top = ((uintptr_t)base + size) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)top - 9;

    sp[0] = 0x1f80ULL | (0x037fULL << 32);  /* default MXCSR, x87 CW */
    sp[1] = 0;                      /* r15 */
    sp[2] = 0;                      /* r14 */
    sp[3] = (uintptr_t)arg;         /* r13 */
    sp[4] = (uintptr_t)fn;          /* r12 */
    sp[5] = 0;                      /* rbx */
    sp[6] = 0;                      /* rbp */
    sp[7] = (uintptr_t)co_asm_start;
    sp[8] = 0;
    return sp;
}
#elif defined(__aarch64__)
void co_asm_start(void);

/* Frame restored by co_switch_asm: x19..x28, x29, x30, d8..d15, fpcr. */
void *co_asm_prepare(void *base, size_t size, CoStartFn *fn, void *arg)
{
    uintptr_t top = ((uintptr_t)base + size) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)(top - 176);

    memset(sp, 0, 176);
    sp[0] = (uintptr_t)fn;          /* x19 */
    sp[1] = (uintptr_t)arg;         /* x20 */
    sp[11] = (uintptr_t)co_asm_start;   /* x30 */
    return sp;
}
#endif
