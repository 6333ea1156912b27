/*
 * graph-lock.c — the graph lock: why readers never wait, and what is checked.
 *
 * The graph is the set of edges (BlockChild.node, BlockNode.children,
 * .parents, .file, .backing).  I/O requests read it for their whole trip
 * (blk_co_* -> io.c -> driver -> io.c on the child edge -> ...); graph
 * changes (GS code, main thread) write it.
 *
 * A classic reader/writer lock would make a graph change wait for every
 * request in the process, on every chain, and make every request touch a
 * shared counter — stop the world.  We do not need that.  The exclusion a
 * reader needs is narrower: no edge it is about to follow may change under
 * it.  A graph change only touches the edges of nodes it has quiesced first
 * (bdrv_co_quiesce_begin): their parents hold new requests and the requests
 * in flight in them have completed, so no reader is on, or can reach, the
 * edges being changed.  Readers on unrelated chains are unaffected and the
 * change never waits for them: isolate, don't stop the world.
 *
 * So the read side is a per-coroutine depth counter (co_rdlock_depth_add()):
 * it nests, it never blocks, it touches nothing shared.  It exists so that
 * the code states, and clang checks, that graph walks happen only under it,
 * and so that IO_CODE() can assert it at run time.  The write side is a flag
 * of the main thread: bdrv_graph_wrlock() asserts the global lock; the
 * edge-changing functions assert the flag and that the nodes they touch are
 * quiesced (graph.c), which is where the real exclusion comes from.
 *
 * Run-time checks:
 *   IO_CODE()             graph_rdlock_held(): in a coroutine with depth > 0,
 *                         or in the main thread holding the main-loop read
 *                         marker or the write side.
 *   GS_CODE()             main thread + global lock (util/threads.c).
 *   edge changes          write side held, touched nodes quiesced.
 */
#include <stdio.h>
#include <stdlib.h>
#include "graph-internal.h"

GraphLock graph_lock;

/* Main thread only: the depth of bdrv_graph_rdlock_main_loop() sections and
 * whether the write side is held. */
static int main_rdlock_depth;
static bool main_wrlocked;

bool graph_rdlock_held(void)
{
    if (in_coroutine() && co_rdlock_depth_add(0) > 0) {
        return true;
    }
    return in_main_thread() && (main_rdlock_depth > 0 || main_wrlocked);
}

bool graph_wrlock_held(void)
{
    return in_main_thread() && main_wrlocked;
}

void io_code_failed(const char *func)
{
    fprintf(stderr, "diskstack: %s: I/O code called without the graph read "
            "lock%s\n", func, in_coroutine() ? "" : " (not in a coroutine)");
    abort();
}

/* The run-time half of the assertion the analysis relies on. */
void graph_lock_assert_rdlocked(void)
{
    if (!graph_rdlock_held()) {
        io_code_failed("graph_lock_assert_rdlocked");
    }
}

/* The lock itself: the analysis cannot see a counter as a lock. */
void coroutine_fn bdrv_graph_co_rdlock(void) NO_THREAD_SAFETY_ANALYSIS
{
    if (!in_coroutine()) {
        io_code_failed("bdrv_graph_co_rdlock");
    }
    co_rdlock_depth_add(1);
}

void coroutine_fn bdrv_graph_co_rdunlock(void) NO_THREAD_SAFETY_ANALYSIS
{
    if (co_rdlock_depth_add(-1) < 0) {
        fprintf(stderr, "diskstack: graph read lock released more often "
                "than taken\n");
        abort();
    }
}

void bdrv_graph_rdlock_main_loop(void) NO_THREAD_SAFETY_ANALYSIS
{
    GS_CODE();
    main_rdlock_depth++;
}

void bdrv_graph_rdunlock_main_loop(void) NO_THREAD_SAFETY_ANALYSIS
{
    GS_CODE();
    if (--main_rdlock_depth < 0) {
        abort();
    }
}

void bdrv_graph_wrlock(void) NO_THREAD_SAFETY_ANALYSIS
{
    GS_CODE();
    if (main_wrlocked) {
        fprintf(stderr, "diskstack: graph write lock taken twice\n");
        abort();
    }
    main_wrlocked = true;
}

void bdrv_graph_wrunlock(void) NO_THREAD_SAFETY_ANALYSIS
{
    GS_CODE();
    if (!main_wrlocked) {
        abort();
    }
    main_wrlocked = false;
}
