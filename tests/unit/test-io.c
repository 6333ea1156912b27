/*
 * test-io.c — io.c: range checks, alignment (read-modify-write), splitting,
 * -ENOTSUP for missing callbacks, the write-zeroes fallback, in-flight
 * accounting.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include "fake-drivers.h"
#include "loop/loop.h"

TestSuite(io, .init = test_env_init, .timeout = 20);

#define RW (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE)

enum { READ, WRITE, ZEROES, DISCARD, FLUSH, TRUNCATE, STATUS };

typedef struct Call {
    BlockBackend *blk;
    int kind;
    int64_t offset, bytes;
    void *buf;
    BdrvRequestFlags flags;
    int64_t pnum;
    int ret;
    _Atomic bool done;
} Call;

static void coroutine_fn call_entry(void *opaque)
{
    Call *c = opaque;
    IOVector v;
    iov_init_buf(&v, c->buf, c->buf ? c->bytes : 0);
    switch (c->kind) {
    case READ:     c->ret = blk_co_preadv(c->blk, c->offset, c->bytes, &v, c->flags); break;
    case WRITE:    c->ret = blk_co_pwritev(c->blk, c->offset, c->bytes, &v, c->flags); break;
    case ZEROES:   c->ret = blk_co_pwrite_zeroes(c->blk, c->offset, c->bytes, c->flags); break;
    case DISCARD:  c->ret = blk_co_pdiscard(c->blk, c->offset, c->bytes); break;
    case FLUSH:    c->ret = blk_co_flush(c->blk); break;
    case TRUNCATE: c->ret = blk_co_truncate(c->blk, c->offset, true, NULL); break;
    case STATUS:   c->ret = blk_co_block_status(c->blk, c->offset, c->bytes, &c->pnum); break;
    }
    atomic_store(&c->done, true);
}

static int io(BlockBackend *blk, int kind, int64_t offset, int64_t bytes,
              void *buf, BdrvRequestFlags flags)
{
    Call c = { .blk = blk, .kind = kind, .offset = offset, .bytes = bytes,
               .buf = buf, .flags = flags };
    run_co(call_entry, &c);
    return c.ret;
}

/* Starts a call that may block; returns it (heap) once it yielded. */
static Call *io_start(BlockBackend *blk, int kind, int64_t offset, int64_t bytes,
                      void *buf)
{
    Call *c = calloc(1, sizeof(*c));
    *c = (Call){ .blk = blk, .kind = kind, .offset = offset, .bytes = bytes, .buf = buf };
    co_spawn(call_entry, c);
    return c;
}

static BlockBackend *backend_on(const char *def, uint64_t perm, BlockNode **pbs) GS
{
    Error *err = NULL;
    BlockNode *bs = open_def(def, &err);
    cr_assert_not_null(bs, "%s", error_get_pretty(err));
    BlockBackend *blk = blk_new("e0", perm, BLK_PERM_ALL);
    cr_assert_eq(blk_insert_node(blk, bs, &err), 0, "%s", error_get_pretty(err));
    if (pbs) {
        *pbs = bs;
    }
    return blk;
}

Test(io, range_checks)
{
    global_lock_assert_held();
    BlockNode *m;
    BlockBackend *blk = backend_on("driver=mem,node-name=m,size=64k", RW, &m);
    uint8_t buf[8192] = { 0 };
    cr_assert_eq(io(blk, READ, -1, 512, buf, 0), -EINVAL);
    cr_assert_eq(io(blk, READ, 0, -512, buf, 0), -EINVAL);
    cr_assert_eq(io(blk, READ, INT64_MAX - 10, 512, buf, 0), -EINVAL);
    cr_assert_eq(io(blk, READ, 65536 - 512, 1024, buf, 0), -EINVAL, "read past the end");
    cr_assert_eq(io(blk, WRITE, 65536 - 512, 1024, buf, 0), -ENOSPC, "write past the end");
    cr_assert_eq(io(blk, ZEROES, 65536, 512, NULL, 0), -ENOSPC);
    MemStats st;
    mem_stats(m, &st);
    cr_assert_eq(st.reads + st.writes + st.zeroes, 0, "nothing reached the driver");
    cr_assert_eq(io(blk, READ, 65536, 0, buf, 0), 0, "zero-length at the end");
    cr_assert_eq(io(blk, WRITE, 100, 0, buf, 0), 0);
    mem_stats(m, &st);
    cr_assert_eq(st.reads + st.writes, 0, "zero-length requests skip the driver");
    cr_assert_eq(io(blk, READ, 65536 - 512, 512, buf, 0), 0);
    cr_assert_eq(atomic_load(&m->in_flight), 0);
}

Test(io, read_modify_write_alignment)
{
    global_lock_assert_held();
    BlockNode *m;
    BlockBackend *blk = backend_on("driver=mem,node-name=m,size=64k,align=4096", RW, &m);
    uint8_t *d = mem_data(m);
    memset(d, 0x5a, 65536);
    uint8_t buf[12000];

    memset(buf, 0x01, 100);
    cr_assert_eq(io(blk, WRITE, 10, 100, buf, 0), 0);
    cr_assert_eq(d[9], 0x5a);
    cr_assert_eq(d[10], 0x01);
    cr_assert_eq(d[109], 0x01);
    cr_assert_eq(d[110], 0x5a);

    memset(buf, 0x02, 9000);       /* head and tail blocks, data in between */
    cr_assert_eq(io(blk, WRITE, 3000, 9000, buf, 0), 0);
    cr_assert_eq(d[2999], 0x5a);
    cr_assert_eq(d[3000], 0x02);
    cr_assert_eq(d[11999], 0x02);
    cr_assert_eq(d[12000], 0x5a);

    memset(buf, 0, sizeof(buf));
    cr_assert_eq(io(blk, READ, 4000, 200, buf, 0), 0);
    cr_assert_eq(buf[0], 0x02);
    cr_assert_eq(buf[199], 0x02);

    cr_assert_eq(io(blk, ZEROES, 5, 10, NULL, 0), 0);
    cr_assert_eq(d[4], 0x5a);
    cr_assert_eq(d[5], 0);
    cr_assert_eq(d[14], 0);
    cr_assert_eq(d[15], 0x01);

    MemStats st;
    mem_stats(m, &st);
    cr_assert_eq(st.misaligned, 0, "the driver only sees aligned requests");
    cr_assert_gt(st.reads, 0);
    cr_assert_eq(atomic_load(&m->in_flight), 0);
}

Test(io, overlapping_rmw_is_serialised)
{
    global_lock_assert_held();
    Error *err = NULL;
    BlockNode *m = open_def("driver=mem,node-name=m,size=64k,align=4096", &err);
    BlockNode *h = open_def("driver=hold,node-name=h,file=m", &err);
    cr_assert_not_null(h);
    cr_assert_eq(h->bl.request_alignment, 4096, "limits are inherited from the file");
    BlockBackend *blk = blk_new("e0", RW, BLK_PERM_ALL);
    cr_assert_eq(blk_insert_node(blk, h, &err), 0);

    static uint8_t a[10], b[10];
    memset(a, 0xa, sizeof(a));
    memset(b, 0xb, sizeof(b));
    hold_set_enabled(h, true);
    Call *ca = io_start(blk, WRITE, 10, 10, a);      /* its RMW read is held */
    Call *cb = io_start(blk, WRITE, 30, 10, b);
    cr_assert_eq(hold_held(h), 1, "the second RMW waits for the first");
    hold_set_enabled(h, false);
    hold_release_all(h);
    wait_flag(&ca->done);
    wait_flag(&cb->done);
    cr_assert_eq(ca->ret, 0);
    cr_assert_eq(cb->ret, 0);
    uint8_t *d = mem_data(m);
    cr_assert_eq(d[10], 0xa, "first write kept");
    cr_assert_eq(d[30], 0xb, "second write kept");
    cr_assert_eq(atomic_load(&h->in_flight), 0);
    free(ca);
    free(cb);
}

Test(io, max_transfer_splits)
{
    global_lock_assert_held();
    BlockNode *m;
    BlockBackend *blk = backend_on("driver=mem,node-name=m,size=1M,max-transfer=64k", RW, &m);
    uint8_t *buf = malloc(1 << 20);
    for (int i = 0; i < (1 << 20); i++) {
        buf[i] = i * 7;
    }
    cr_assert_eq(io(blk, WRITE, 0, 1 << 20, buf, 0), 0);
    MemStats st;
    mem_stats(m, &st);
    cr_assert_eq(st.writes, 16);
    cr_assert_eq(st.max_request, 65536);
    cr_assert_eq(memcmp(mem_data(m), buf, 1 << 20), 0);
    memset(buf, 0, 1 << 20);
    cr_assert_eq(io(blk, READ, 0, 1 << 20, buf, 0), 0);
    cr_assert_eq(memcmp(mem_data(m), buf, 1 << 20), 0);
    mem_stats(m, &st);
    cr_assert_eq(st.reads, 16);
    free(buf);
}

Test(io, missing_callbacks_are_enotsup)
{
    global_lock_assert_held();
    BlockNode *n;
    BlockBackend *blk = backend_on("driver=nothing,node-name=n,size=64k,discard=unmap",
                                   RW | BLK_PERM_RESIZE, &n);
    uint8_t buf[512];
    memset(buf, 1, sizeof(buf));
    cr_assert_eq(io(blk, READ, 0, 512, buf, 0), 0);
    cr_assert_eq(buf[0], 0);
    cr_assert_eq(io(blk, WRITE, 0, 512, buf, 0), -ENOTSUP);
    cr_assert_eq(io(blk, DISCARD, 0, 512, NULL, 0), -ENOTSUP);
    cr_assert_eq(io(blk, ZEROES, 0, 512, NULL, 0), -ENOTSUP, "fallback write fails too");
    cr_assert_eq(io(blk, TRUNCATE, 4096, 0, NULL, 0), -ENOTSUP);
    cr_assert_eq(io(blk, FLUSH, 0, 0, NULL, 0), 0, "no flush callback: nothing to flush");
    cr_assert_eq(atomic_load(&n->in_flight), 0);
}

Test(io, zeroes_fallback)
{
    global_lock_assert_held();
    BlockNode *m;
    BlockBackend *blk = backend_on("driver=mem,node-name=m,size=64k,zeroes=off", RW, &m);
    uint8_t *d = mem_data(m);
    memset(d, 0x33, 65536);
    cr_assert_eq(io(blk, ZEROES, 4096, 8192, NULL, BDRV_REQ_NO_FALLBACK), -ENOTSUP);
    cr_assert_eq(d[4096], 0x33, "NO_FALLBACK: nothing written");
    cr_assert_eq(io(blk, ZEROES, 4096, 8192, NULL, 0), 0);
    cr_assert_eq(d[4095], 0x33);
    cr_assert_eq(d[4096], 0);
    cr_assert_eq(d[12287], 0);
    cr_assert_eq(d[12288], 0x33);
    MemStats st;
    mem_stats(m, &st);
    cr_assert_eq(st.zeroes, 0);
    cr_assert_gt(st.writes, 0, "zeroes were written as data");

    BlockNode *m2;
    BlockBackend *blk2 = backend_on("driver=mem,node-name=m2,size=64k", RW, &m2);
    cr_assert_eq(io(blk2, ZEROES, 0, 4096, NULL, 0), 0);
    mem_stats(m2, &st);
    cr_assert_eq(st.zeroes, 1);
    cr_assert_eq(st.writes, 0);
}

Test(io, read_only_node_refuses_writes)
{
    global_lock_assert_held();
    BlockBackend *blk = backend_on("driver=mem,node-name=m,size=64k,read-only=on",
                                   BLK_PERM_CONSISTENT_READ, NULL);
    uint8_t buf[512] = { 0 };
    cr_assert_eq(io(blk, WRITE, 0, 512, buf, 0), -EPERM);
    cr_assert_eq(io(blk, READ, 0, 512, buf, 0), 0);
}

Test(io, write_without_permission_asserts, .signal = SIGABRT)
{
    global_lock_assert_held();
    BlockBackend *blk = backend_on("driver=mem,node-name=m,size=64k",
                                   BLK_PERM_CONSISTENT_READ, NULL);
    uint8_t buf[512] = { 0 };
    io(blk, WRITE, 0, 512, buf, 0);
}

Test(io, flush_recurses_and_no_flush)
{
    global_lock_assert_held();
    Error *err = NULL;
    BlockNode *m = open_def("driver=mem,node-name=m,size=64k", &err);
    BlockNode *h = open_def("driver=hold,node-name=h,file=m", &err);
    BlockBackend *blk = blk_new("e0", RW, BLK_PERM_ALL);
    cr_assert_eq(blk_insert_node(blk, h, &err), 0);
    cr_assert_eq(io(blk, FLUSH, 0, 0, NULL, 0), 0);
    MemStats st;
    mem_stats(m, &st);
    cr_assert_eq(st.flushes, 1, "flush reached the child");

    BlockNode *m2;
    BlockBackend *blk2 = backend_on("driver=mem,node-name=m2,size=64k,cache.no-flush=on",
                                    RW, &m2);
    cr_assert_eq(io(blk2, FLUSH, 0, 0, NULL, 0), 0);
    mem_stats(m2, &st);
    cr_assert_eq(st.flushes, 0);
}

static void on_resize(void *opaque)
{
    atomic_store((_Atomic bool *)opaque, true);
}
static const BlockBackendOps resize_ops = { .resize = on_resize };

Test(io, block_status_and_truncate)
{
    global_lock_assert_held();
    BlockNode *m;
    BlockBackend *blk = backend_on("driver=mem,node-name=m,size=64k",
                                   RW | BLK_PERM_RESIZE, &m);
    Call c = { .blk = blk, .kind = STATUS, .offset = 4096, .bytes = 1 << 20 };
    run_co(call_entry, &c);
    cr_assert_eq(c.ret & (BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED),
                 BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED);
    cr_assert_eq(c.pnum, 65536 - 4096, "clamped to the end");

    static _Atomic bool resized;
    blk_set_ops(blk, &resize_ops, (void *)&resized);
    cr_assert_eq(io(blk, TRUNCATE, 1 << 20, 0, NULL, 0), 0);
    cr_assert_eq(blk_getlength(blk), 1 << 20);
    wait_flag(&resized);            /* the backend hears of it on the main loop */
    uint8_t buf[512] = { 0 };
    cr_assert_eq(io(blk, WRITE, (1 << 20) - 512, 512, buf, 0), 0);

    BlockBackend *nores = backend_on("driver=mem,node-name=m2,size=64k", RW, NULL);
    (void)nores;
}

/* export -> hold (inherits align 4096) -> mem: requests can be held in the
 * filter while the RMW logic of the hold node decides who waits. */
static BlockBackend *held_rmw_chain(BlockNode **ph, BlockNode **pm) GS
{
    Error *err = NULL;
    *pm = open_def("driver=mem,node-name=m,size=64k,align=4096", &err);
    *ph = open_def("driver=hold,node-name=h,file=m", &err);
    cr_assert_not_null(*ph);
    BlockBackend *blk = blk_new("e0", RW, BLK_PERM_ALL);
    cr_assert_eq(blk_insert_node(blk, *ph, &err), 0);
    return blk;
}

Test(io, aligned_write_waits_for_earlier_rmw)
{
    global_lock_assert_held();
    BlockNode *h, *m;
    BlockBackend *blk = held_rmw_chain(&h, &m);
    static uint8_t a[10], b[4096];
    memset(a, 0xa, sizeof(a));
    memset(b, 0xb, sizeof(b));
    hold_set_enabled(h, true);
    Call *ca = io_start(blk, WRITE, 10, 10, a);        /* RMW read held */
    Call *cb = io_start(blk, WRITE, 0, 4096, b);       /* aligned, overlapping */
    cr_assert_eq(hold_held(h), 1, "the aligned write waits for the RMW");
    hold_set_enabled(h, false);
    hold_release_all(h);
    wait_flag(&ca->done);
    wait_flag(&cb->done);
    cr_assert_eq(mem_data(m)[10], 0xb, "the later write wins");
    free(ca);
    free(cb);
}

Test(io, rmw_waits_for_fast_aligned_write)
{
    global_lock_assert_held();
    BlockNode *h, *m;
    BlockBackend *blk = held_rmw_chain(&h, &m);
    static uint8_t a[10], b[4096];
    memset(a, 0xa, sizeof(a));
    memset(b, 0xb, sizeof(b));
    hold_set_enabled(h, true);
    Call *cb = io_start(blk, WRITE, 0, 4096, b);       /* aligned write held */
    Call *ca = io_start(blk, WRITE, 10, 10, a);        /* RMW must not read yet */
    cr_assert_eq(hold_held(h), 1, "the RMW waits for the write in flight");
    hold_set_enabled(h, false);
    hold_release_all(h);
    wait_flag(&cb->done);
    wait_flag(&ca->done);
    cr_assert_eq(mem_data(m)[0], 0xb, "the aligned write is kept");
    cr_assert_eq(mem_data(m)[10], 0xa, "the RMW applied on top");
    cr_assert_eq(atomic_load(&h->in_flight), 0);
    free(ca);
    free(cb);
}

Test(io, detect_zeroes)
{
    global_lock_assert_held();
    BlockNode *m;
    BlockBackend *blk = backend_on("driver=mem,node-name=m,size=64k,detect-zeroes=on", RW, &m);
    memset(mem_data(m), 0x44, 65536);
    static uint8_t buf[8192];
    cr_assert_eq(io(blk, WRITE, 4096, 8192, buf, 0), 0);
    MemStats st;
    mem_stats(m, &st);
    cr_assert_eq(st.zeroes, 1, "an all-zero write became write-zeroes");
    cr_assert_eq(st.writes, 0);
    cr_assert_eq(mem_data(m)[4096], 0);
    buf[100] = 1;
    cr_assert_eq(io(blk, WRITE, 4096, 8192, buf, 0), 0);
    mem_stats(m, &st);
    cr_assert_eq(st.writes, 1, "data is written as data");
    cr_assert_eq(mem_data(m)[4196], 1);
}

/* ---- RMW from two IOThreads at once ---- */

typedef struct Worker {
    BlockBackend *blk;
    int k;
    int errors;
    _Atomic bool done;
} Worker;

static void worker_done_bh(void *opaque)
{
    atomic_store(&((Worker *)opaque)->done, true);
}

/* Writes one byte (k + 1) at every offset 8 * i + k: neighbouring bytes of
 * the other thread share every block, so an unserialised read-modify-write
 * would lose them. */
static void coroutine_fn worker_entry(void *opaque)
{
    Worker *w = opaque;
    uint8_t byte = w->k + 1;
    for (int i = 0; i < 1024; i++) {
        IOVector v;
        iov_init_buf(&v, &byte, 1);
        if (blk_co_pwritev(w->blk, 8 * i + w->k, 1, &v, 0) < 0) {
            w->errors++;
        }
    }
    loop_schedule(loop_main(), worker_done_bh, w);
}

static void worker_start_bh(void *opaque)
{
    co_spawn(worker_entry, opaque);
}

Test(io, rmw_from_two_iothreads_loses_nothing)
{
    global_lock_assert_held();
    BlockNode *m;
    BlockBackend *blk = backend_on("driver=mem,node-name=m,size=64k,align=4096,"
                                   "read-yield=50", RW, &m);
    IOThread *t[2] = { iothread_create("io0"), iothread_create("io1") };
    Worker w[2];
    for (int k = 0; k < 2; k++) {
        w[k] = (Worker){ .blk = blk, .k = k };
        loop_schedule(iothread_loop(t[k]), worker_start_bh, &w[k]);
    }
    wait_flag(&w[0].done);
    wait_flag(&w[1].done);
    cr_assert_eq(w[0].errors + w[1].errors, 0);
    uint8_t *d = mem_data(m);
    int lost = 0;
    for (int p = 0; p < 1024 * 8; p++) {
        uint8_t want = p % 8 == 0 ? 1 : p % 8 == 1 ? 2 : 0;
        lost += d[p] != want;
    }
    cr_assert_eq(lost, 0, "%d bytes lost to racing read-modify-writes", lost);
    cr_assert_eq(atomic_load(&m->in_flight), 0);
    iothread_destroy(t[0]);
    iothread_destroy(t[1]);
}

/* discard=ignore (QEMU's default): a discard reaches nothing; unmap passes. */
Test(io, discard_option)
{
    global_lock_assert_held();
    BlockNode *m, *u;
    MemStats st;
    BlockBackend *blk = backend_on("driver=mem,node-name=m,size=64k", RW, &m);
    cr_assert_eq(io(blk, DISCARD, 0, 4096, NULL, 0), 0);
    mem_stats(m, &st);
    cr_assert_eq(st.discards, 0, "discard=ignore passed a discard on");
    BlockBackend *blk2 = backend_on("driver=mem,node-name=u,size=64k,discard=unmap",
                                    RW, &u);
    cr_assert_eq(io(blk2, DISCARD, 0, 4096, NULL, 0), 0);
    mem_stats(u, &st);
    cr_assert_eq(st.discards, 1);
}
