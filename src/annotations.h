/*
 * annotations.h — where code runs, stated so the compiler can check it.
 *
 * Every function of the block layer belongs to one class:
 *
 *   GS   global state: main thread only, global lock held.  May change the
 *        graph, open and close nodes, start and stop jobs.  Prototypes carry
 *        REQUIRES(global_lock); bodies start with GS_CODE().
 *   I/O  thread-safe, any IOThread or the main thread, always inside a
 *        coroutine holding the graph lock's read side.  Never changes the
 *        graph, never calls GS code.  Prototypes carry
 *        REQUIRES_SHARED(graph_lock); bodies start with IO_CODE().
 *   both the few helpers legal in either class (IO_OR_GS_CODE()).
 *
 * The capabilities below are clang thread-safety "roles": global_lock is held
 * by the main thread while it runs GS code, graph_lock is shared by I/O
 * requests for their whole trip through the graph and held exclusively by a
 * graph change.  Built with `clang -Wthread-safety -Werror`, an I/O function
 * calling GS code, a graph change without the write side, or a call through a
 * guarded driver callback without the lock does not compile
 * (tests/lint/ holds one case of each).  With gcc the macros are no-ops and
 * only the run-time assertions remain.
 *
 * Unlike QEMU's IO_CODE(), ours checks something at run time: the caller is
 * in a coroutine and holds the graph read lock (see graph-lock.c).
 */
#ifndef DISKSTACK_ANNOTATIONS_H
#define DISKSTACK_ANNOTATIONS_H

#include <stdbool.h>

#if defined(__clang__)
#define TSA(x) __attribute__((x))
#else
#define TSA(x)
#endif

#define CAPABILITY(name)        TSA(capability(name))
#define GUARDED_BY(cap)         TSA(guarded_by(cap))
#define PT_GUARDED_BY(cap)      TSA(pt_guarded_by(cap))
#define REQUIRES(...)           TSA(requires_capability(__VA_ARGS__))
#define REQUIRES_SHARED(...)    TSA(requires_shared_capability(__VA_ARGS__))
#define ACQUIRE(...)            TSA(acquire_capability(__VA_ARGS__))
#define ACQUIRE_SHARED(...)     TSA(acquire_shared_capability(__VA_ARGS__))
#define RELEASE(...)            TSA(release_capability(__VA_ARGS__))
#define RELEASE_SHARED(...)     TSA(release_shared_capability(__VA_ARGS__))
#define EXCLUDES(...)           TSA(locks_excluded(__VA_ARGS__))
#define ASSERT_CAPABILITY(x)    TSA(assert_capability(x))
#define ASSERT_SHARED_CAPABILITY(x) TSA(assert_shared_capability(x))
#define NO_THREAD_SAFETY_ANALYSIS TSA(no_thread_safety_analysis)

/* Marks a function that may only run inside a coroutine (documentation; the
 * run-time check is co_self() != NULL in IO_CODE()). */
#define coroutine_fn

/* The two roles. */
typedef struct CAPABILITY("global lock") GlobalLock { int unused; } GlobalLock;
typedef struct CAPABILITY("graph lock") GraphLock { int unused; } GraphLock;
extern GlobalLock global_lock;
extern GraphLock graph_lock;

/* Function classes, for prototypes. */
#define GS            REQUIRES(global_lock)
#define GRAPH_RDLOCK  REQUIRES_SHARED(graph_lock)
#define GRAPH_WRLOCK  REQUIRES(graph_lock)
/* Driver vtable members: reading the pointer needs the lock, so a call
 * through it is checked too (the analysis cannot see through pointers). */
#define GS_PTR            GUARDED_BY(global_lock)
#define GRAPH_RDLOCK_PTR  GUARDED_BY(graph_lock)

/* Run-time checks (see src/util/threads.c, src/graph-lock.c). */
bool in_main_thread(void);
bool global_lock_held(void);
bool graph_rdlock_held(void);

void gs_code_failed(const char *func);
void io_code_failed(const char *func);

#define GS_CODE() \
    do { if (!(in_main_thread() && global_lock_held())) gs_code_failed(__func__); } while (0)
#define IO_CODE() \
    do { if (!graph_rdlock_held()) io_code_failed(__func__); } while (0)
#define IO_OR_GS_CODE() do { } while (0)

/* Entry points that the main loop calls directly (bottom halves, coroutine
 * entries started by GS code) state that they hold the role: the analysis
 * takes it from here, the run-time check makes sure it is true. */
void global_lock_assert_held(void) ASSERT_CAPABILITY(global_lock);
void graph_lock_assert_rdlocked(void) ASSERT_SHARED_CAPABILITY(graph_lock);

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define container_of(ptr, type, member) \
    ((type *)((char *)(ptr) - __builtin_offsetof(type, member)))
/* Each argument is evaluated once: MAX(deadline - clock_ns(), 0) read the
 * clock twice once, and a negative result made a loop sleep forever. */
#define MIN(a, b) ({ __typeof__((a) + (b)) min_a_ = (a), min_b_ = (b); \
                     min_a_ < min_b_ ? min_a_ : min_b_; })
#define MAX(a, b) ({ __typeof__((a) + (b)) max_a_ = (a), max_b_ = (b); \
                     max_a_ > max_b_ ? max_a_ : max_b_; })
#define ROUND_UP(n, d)   (((n) + (d) - 1) / (d) * (d))
#define ROUND_DOWN(n, d) ((n) / (d) * (d))
#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))
#define IS_ALIGNED(n, a) (((n) % (a)) == 0)

#endif
