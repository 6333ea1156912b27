/*
 * bench-coroutine.c — what a coroutine switch and a cross-thread wake cost.
 *
 * Prints nanoseconds per:
 *   - enter+yield round trip through the public API (the switch this build
 *     uses, plus the bookkeeping around it);
 *   - raw switch round trip, hand-written asm and ucontext side by side
 *     (both are compiled into every build);
 *   - coroutine create+run+exit (stacks come from the per-thread pool);
 *   - cross-thread wake: a coroutine on the main loop and one on an IOThread
 *     waking each other with co_wake() (per wake = half a round trip);
 *   - a 4 KiB read through the ring (page cache, 32 coroutines in flight):
 *     the loop's own overhead per request, batching included.
 * Single-thread numbers are in thread CPU time, so that a busy machine
 * (other processes preempting us) does not inflate them; the cross-thread
 * wake is wall-clock time, since waiting for the other thread is its cost.
 * Not a test: numbers only.  Usage: bench-coroutine [iterations]
 */
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "coroutine/coroutine.h"
#include "coroutine/switch.h"
#include "loop/loop.h"
#include "util/threads.h"

static long iterations = 2000000;

static int64_t cpu_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double ns_per(int64_t start, long n)
{
    return (double)(cpu_ns() - start) / (double)n;
}

static double wall_ns_per(int64_t start, long n)
{
    return (double)(clock_ns() - start) / (double)n;
}

/* ---- public API round trip ---------------------------------------------- */

static void yield_forever(void *opaque)
{
    for (;;) {
        co_yield();
    }
}

static void bench_enter_yield(void)
{
    Coroutine *co = co_create(yield_forever, NULL);
    int64_t start;

    co_enter(co);
    start = cpu_ns();
    for (long i = 0; i < iterations; i++) {
        co_enter(co);
    }
    printf("co_enter+co_yield round trip (%s): %6.1f ns\n",
#if defined(CO_FORCE_UCONTEXT) || !defined(CO_HAVE_ASM_SWITCH)
           "ucontext",
#else
           "asm",
#endif
           ns_per(start, iterations));
    /* co is left suspended: the process ends here anyway. */
}

static void run_to_end(void *opaque)
{
    (*(long *)opaque)++;
}

static void bench_create(void)
{
    long n = 0;
    int64_t start = cpu_ns();

    for (long i = 0; i < iterations / 4; i++) {
        co_spawn(run_to_end, &n);
    }
    printf("co_create+enter+exit (pooled stack):  %6.1f ns\n",
           ns_per(start, iterations / 4));
}

/* ---- raw switches ------------------------------------------------------- */

#define RAW_STACK (64 * 1024)

static void *raw_stack(void)
{
    void *p = mmap(NULL, RAW_STACK, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

#ifdef CO_HAVE_ASM_SWITCH
static void *asm_main_sp, *asm_co_sp;

static void asm_bounce(void *arg)
{
    for (;;) {
        co_switch_asm(&asm_co_sp, asm_main_sp);
    }
}

static void bench_raw_asm(void)
{
    int64_t start;

    asm_co_sp = co_asm_prepare(raw_stack(), RAW_STACK, asm_bounce, NULL);
    start = cpu_ns();
    for (long i = 0; i < iterations; i++) {
        co_switch_asm(&asm_main_sp, asm_co_sp);
    }
    printf("raw switch round trip, asm:           %6.1f ns\n",
           ns_per(start, iterations));
}
#endif

static CoUContext uc_main, uc_co;

static void uc_bounce(void *arg)
{
    for (;;) {
        co_switch_ucontext(&uc_co, &uc_main);
    }
}

static void bench_raw_ucontext(void)
{
    long n = iterations / 10;   /* two system calls per switch: slower */
    int64_t start;

    co_uc_prepare(&uc_co, raw_stack(), RAW_STACK, uc_bounce, NULL);
    start = cpu_ns();
    for (long i = 0; i < n; i++) {
        co_switch_ucontext(&uc_main, &uc_co);
    }
    printf("raw switch round trip, ucontext:      %6.1f ns\n", ns_per(start, n));
}

/* ---- cross-thread wake -------------------------------------------------- */

static _Atomic(Coroutine *) main_co, io_co;
static atomic_bool wake_done;
static long wakes;

static void io_side(void *opaque)
{
    atomic_store(&io_co, co_self());
    co_wake(atomic_load(&main_co));
    for (long i = 0; i < wakes; i++) {
        co_yield();
        co_wake(atomic_load(&main_co));
    }
}

static void spawn_io_side(void *opaque)
{
    co_spawn(io_side, NULL);
}

static void main_side(void *opaque)
{
    int64_t start;

    atomic_store(&main_co, co_self());
    loop_schedule(iothread_loop(opaque), spawn_io_side, NULL);
    co_yield();
    start = clock_ns();
    for (long i = 0; i < wakes; i++) {
        co_wake(atomic_load(&io_co));
        co_yield();
    }
    printf("cross-thread co_wake (main<->IOThread): %6.1f ns per wake\n",
           wall_ns_per(start, wakes * 2));
    atomic_store(&wake_done, true);
}

static void bench_cross_thread(void)
{
    IOThread *t = iothread_create("bench-io");

    wakes = iterations / 20;
    co_spawn(main_side, t);
    while (!atomic_load(&wake_done)) {
        loop_iterate(loop_main(), true);
    }
    iothread_destroy(t);
}

/* ---- I/O through the ring ---------------------------------------------- */

#define IO_FILE_SIZE (1 << 20)
#define IO_DEPTH 32
static int io_fd;
static long io_per_co;
static int io_running;

static void reader(void *opaque)
{
    char buf[4096];
    struct iovec iov = { buf, sizeof(buf) };
    unsigned seed = (unsigned)(uintptr_t)opaque;

    for (long i = 0; i < io_per_co; i++) {
        off_t off = (off_t)(rand_r(&seed) % (IO_FILE_SIZE / 4096)) * 4096;

        if (co_preadv_fd(io_fd, &iov, 1, off) != 4096) {
            fprintf(stderr, "short read\n");
            exit(1);
        }
    }
    io_running--;
}

static void bench_io(void)
{
    char path[] = "/tmp/bench-coroutine-XXXXXX";
    static char data[IO_FILE_SIZE];
    int64_t start, cpu_start;
    long total;

    io_fd = mkstemp(path);
    if (io_fd < 0 || write(io_fd, data, sizeof(data)) != sizeof(data)) {
        perror("temp file");
        exit(1);
    }
    unlink(path);
    io_per_co = iterations / 100;
    total = io_per_co * IO_DEPTH;
    io_running = IO_DEPTH;
    start = clock_ns();
    cpu_start = cpu_ns();
    for (int i = 0; i < IO_DEPTH; i++) {
        co_spawn(reader, (void *)(uintptr_t)(i + 1));
    }
    while (io_running) {
        loop_iterate(loop_main(), true);
    }
    printf("4 KiB read via io_uring, depth %d:     %6.1f ns wall, %6.1f ns CPU (this thread)\n",
           IO_DEPTH, wall_ns_per(start, total), ns_per(cpu_start, total));
    close(io_fd);
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        iterations = atol(argv[1]);
    }
    if (iterations < 100) {
        fprintf(stderr, "usage: %s [iterations >= 100]\n", argv[0]);
        return 1;
    }
    threads_init_main();
    loop_init_main();
    bench_enter_yield();
#ifdef CO_HAVE_ASM_SWITCH
    bench_raw_asm();
#endif
    bench_raw_ucontext();
    bench_create();
    bench_cross_thread();
    bench_io();
    return 0;
}
