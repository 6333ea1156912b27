/*
 * test-qcow2.c — the qcow2 driver against qemu-img as the oracle.
 *
 * One direction: images that qemu-img / qemu-io write (cluster sizes 512 B,
 * 64 KiB, 2 MiB; refcount widths 1..64; backing chains; zlib and zstd
 * compression) are read through the driver and compared byte for byte with
 * `qemu-img convert -O raw`.  The other: the driver writes (allocating writes
 * from several IOThreads, COW over a backing file, zero writes, discards,
 * resize, a freshly created image) while the test keeps an in-memory
 * reference; after close `qemu-img check` must find no errors and no leaks,
 * and `qemu-img compare` against the reference must say identical.  Corrupt
 * headers are refused with a message naming the structure and offset.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "block-gs.h"
#include "block-io.h"
#include "driver.h"
#include "loop/loop.h"
#include "util/threads.h"
#include "test-util.h"
#include "formats/qcow2/qcow2.h"
#include "filters/inject.h"
#include "block-events.h"

#define KiB 1024
#define MiB (1024 * 1024)

static char tmpdir[64];

/* ------------------------------------------------------------------------
 * Harness: the test thread is the main thread holding the global lock.
 */

static void setup(void) ACQUIRE(global_lock)
{
    test_runtime_init();
    test_tmpdir_create(tmpdir, sizeof(tmpdir), "ds-test-qcow2");
}

static void teardown(void) RELEASE(global_lock)
{
    global_lock_release();
    test_tmpdir_remove(tmpdir);
}

TestSuite(qcow2, .init = setup, .fini = teardown, .timeout = 120);

/* Shell helpers: commands run in tmpdir. */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[4096], full[4200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    snprintf(full, sizeof(full), "cd '%s' && %s", tmpdir, cmd);
    int st = system(full);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#define SH_OK(...) do { int rc_ = sh(__VA_ARGS__); \
    cr_assert_eq(rc_, 0, "command failed (%d)", rc_); } while (0)

static void path_of(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmpdir, name);
}

static uint8_t *read_whole(const char *name, size_t *len)
{
    char p[256];
    struct stat st;
    path_of(p, sizeof(p), name);
    int fd = open(p, O_RDONLY);
    cr_assert(fd >= 0, "open %s", p);
    cr_assert(fstat(fd, &st) == 0);
    uint8_t *buf = malloc(st.st_size + 1);
    cr_assert(pread(fd, buf, st.st_size, 0) == st.st_size);
    close(fd);
    *len = st.st_size;
    return buf;
}

static void write_whole(const char *name, const void *buf, size_t len)
{
    char p[256];
    path_of(p, sizeof(p), name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert(fd >= 0);
    cr_assert(pwrite(fd, buf, len, 0) == (ssize_t)len);
    close(fd);
}

/* ------------------------------------------------------------------------
 * Opening through the graph
 */

/* The backend's permissions on an image; others may only read. */
static uint64_t img_perm(bool writable)
{
    return BLK_PERM_CONSISTENT_READ |
           (writable ? BLK_PERM_WRITE | BLK_PERM_RESIZE : 0);
}

static json_t *qcow2_def(const char *name, bool writable, json_t *extra)
{
    char p[256];
    path_of(p, sizeof(p), name);
    json_t *d = json_pack("{s:s, s:s, s:{s:s, s:s}, s:b, s:s}", "driver", "qcow2",
                          "node-name", "disk", "file", "driver", "file",
                          "filename", p, "read-only", !writable,
                          "discard", "unmap");
    if (extra) {
        json_object_update(d, extra);
        json_decref(extra);
    }
    return d;
}

static TestOpen open_img(const char *name, bool writable, json_t *extra)
{
    TestOpen o = { .def = qcow2_def(name, writable, extra),
                   .perm = img_perm(writable), .shared = BLK_PERM_CONSISTENT_READ };
    run_co(test_open_co, &o);
    return o;
}

static TestOpen open_ok(const char *name, bool writable)
{
    TestOpen o = open_img(name, writable, NULL);
    cr_assert(o.bs && o.blk, "open %s failed: %s", name, o.err);
    return o;
}

static void close_img(TestOpen *o)
{
    run_co(test_close_co, o);
}

/* ------------------------------------------------------------------------
 * Requests on the main loop
 */

static TestReq do_req(TestReq r)
{
    run_co(test_req_co, &r);
    if (r.ret < 0) {
        fprintf(stderr, "request %d at %lld+%lld: %s %s\n", r.kind, (long long)r.off,
                (long long)r.len, strerror(-r.ret), r.err);
    }
    return r;
}

#define READ(blk, o, b, l)   do_req((TestReq){ REQ_READ, blk, o, l, b }).ret
#define WRITE(blk, o, b, l)  do_req((TestReq){ REQ_WRITE, blk, o, l, (void *)(b) }).ret
#define ZERO(blk, o, l, f)   do_req((TestReq){ REQ_ZERO, blk, o, l, .flags = (f) }).ret
#define DISCARD(blk, o, l)   do_req((TestReq){ REQ_DISCARD, blk, o, l }).ret
#define FLUSH(blk)           do_req((TestReq){ REQ_FLUSH, blk }).ret

/* Reads the whole image through the driver and compares it with
 * `qemu-img convert -O raw`. */
static void assert_reads_like_qemu(const char *name)
{
    size_t rlen;
    SH_OK("qemu-img convert -O raw %s %s.ref.raw", name, name);
    char ref[256];
    snprintf(ref, sizeof(ref), "%s.ref.raw", name);
    uint8_t *expect = read_whole(ref, &rlen);
    TestOpen o = open_ok(name, false);
    cr_assert_eq(blk_getlength(o.blk), (int64_t)rlen, "length of %s", name);
    uint8_t *got = malloc(rlen + 1);
    memset(got, 0x5a, rlen);
    cr_assert_eq(READ(o.blk, 0, got, rlen), 0, "read %s", name);
    for (size_t i = 0; i < rlen; i++) {
        if (got[i] != expect[i]) {
            cr_assert_fail("%s differs from qemu-img at byte %zu: %02x != %02x",
                           name, i, got[i], expect[i]);
        }
    }
    close_img(&o);
    free(got);
    free(expect);
}

/* qemu-img check: no errors and (unless allowed) no leaks; and compare
 * with the reference. */
static void check_and_compare(const char *name, const uint8_t *ref, size_t len,
                              bool allow_leaks)
{
    char refname[256];
    snprintf(refname, sizeof(refname), "%s.expect.raw", name);
    write_whole(refname, ref, len);
    int rc = sh("qemu-img check %s > %s.check 2>&1", name, name);
    bool ok = rc == 0 || (allow_leaks && rc == 3);
    if (!ok) {
        sh("cat %s.check >&2", name);
    }
    cr_assert(ok,
              "qemu-img check %s: exit %d (2 = corrupt, 3 = leaks)", name, rc);
    rc = sh("qemu-img compare -f raw -F qcow2 %s %s >&2", refname, name);
    cr_assert_eq(rc, 0, "qemu-img compare %s: exit %d", name, rc);
}

static void assert_consistent_and_equal(const char *name, const uint8_t *ref,
                                        size_t len)
{
    check_and_compare(name, ref, len, false);
}

/* ------------------------------------------------------------------------
 * Reading images qemu wrote
 */

static void fill_with_qemu_io(const char *name)
{
    SH_OK("qemu-io -f qcow2 -c 'write -P 0xab 0 1M' -c 'write -P 0x12 3145000 100k' "
          "-c 'write -P 0x77 5M 4k' -c 'write -z 5242880 64k' "
          "-c 'write -P 0x34 7340032 1M' -c 'discard 7340032 512k' %s > /dev/null", name);
}

static void read_matrix_for(int cluster_size)
{
    static const int bits[] = { 1, 16, 64 };
    for (size_t i = 0; i < ARRAY_SIZE(bits); i++) {
        char name[64];
        snprintf(name, sizeof(name), "m-%d-%d.qcow2", cluster_size, bits[i]);
        SH_OK("qemu-img create -q -f qcow2 -o cluster_size=%d,refcount_bits=%d "
              "%s 9M", cluster_size, bits[i], name);
        fill_with_qemu_io(name);
        assert_reads_like_qemu(name);
    }
}

Test(qcow2, read_qemu_images_512)  { read_matrix_for(512); }
Test(qcow2, read_qemu_images_64k)  { read_matrix_for(65536); }
Test(qcow2, read_qemu_images_2m)   { read_matrix_for(2 * MiB); }

Test(qcow2, read_version2_image)
{
    SH_OK("qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 4M");
    SH_OK("qemu-io -f qcow2 -c 'write -P 0x61 100k 300k' v2.qcow2 > /dev/null");
    assert_reads_like_qemu("v2.qcow2");
}

Test(qcow2, read_backing_chain_three_deep)
{
    SH_OK("qemu-img create -q -f qcow2 base.qcow2 6M");
    SH_OK("qemu-io -f qcow2 -c 'write -P 0x11 0 6M' base.qcow2 > /dev/null");
    SH_OK("qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 8M");
    SH_OK("qemu-io -f qcow2 -c 'write -P 0x22 1M 1M' -c 'write -z 3M 64k' "
          "mid.qcow2 > /dev/null");
    SH_OK("qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 10M");
    SH_OK("qemu-io -f qcow2 -c 'write -P 0x33 1536k 4k' -c 'write -P 0x44 9M 8k' "
          "top.qcow2 > /dev/null");
    assert_reads_like_qemu("top.qcow2");
    /* a version 2 overlay: its backing format extension follows the
     * 72-byte header */
    SH_OK("qemu-img create -q -f qcow2 -o compat=0.10 -b top.qcow2 -F qcow2 "
          "v2top.qcow2 10M");
    SH_OK("qemu-io -f qcow2 -c 'write -P 0x55 0 4k' v2top.qcow2 > /dev/null");
    assert_reads_like_qemu("v2top.qcow2");
}

static void make_compressible_raw(const char *name, size_t len)
{
    uint8_t *buf = malloc(len);
    for (size_t i = 0; i < len; i++) {
        buf[i] = (i / 4096) % 3 == 0 ? 0 : (uint8_t)((i * 31) ^ (i >> 9));
    }
    write_whole(name, buf, len);
    free(buf);
}

Test(qcow2, read_compressed_zlib_and_zstd)
{
    make_compressible_raw("c.raw", 3 * MiB + 5000);
    SH_OK("qemu-img convert -q -c -O qcow2 -o compression_type=zlib c.raw z.qcow2");
    SH_OK("qemu-img convert -q -c -O qcow2 -o compression_type=zstd c.raw zs.qcow2");
    SH_OK("qemu-img convert -q -c -O qcow2 -o compression_type=zstd,cluster_size=512 "
          "c.raw zs512.qcow2");
    assert_reads_like_qemu("z.qcow2");
    assert_reads_like_qemu("zs.qcow2");
    assert_reads_like_qemu("zs512.qcow2");
}

Test(qcow2, block_status_reports_allocation)
{
    SH_OK("qemu-img create -q -f qcow2 bs.qcow2 4M");
    SH_OK("qemu-io -f qcow2 -c 'write -P 1 64k 128k' -c 'write -z 1M 64k' "
          "bs.qcow2 > /dev/null");
    TestOpen o = open_ok("bs.qcow2", false);
    TestReq r = do_req((TestReq){ REQ_STATUS, o.blk, 64 * KiB, 3 * MiB });
    cr_assert(r.ret >= 0);
    cr_assert(r.ret & BDRV_BLOCK_DATA, "status %x", r.ret);
    cr_assert_eq(r.pnum, 128 * KiB);
    r = do_req((TestReq){ REQ_STATUS, o.blk, 1 * MiB, 1 * MiB });
    cr_assert(r.ret & BDRV_BLOCK_ZERO, "status %x", r.ret);
    cr_assert_eq(r.pnum, 64 * KiB);
    close_img(&o);
}

/* ------------------------------------------------------------------------
 * Writing, checked by qemu-img
 */

typedef struct Job Job;
struct Job {
    BlockBackend *blk;
    int index, nthreads;
    uint8_t *ref;          /* shared reference; regions are disjoint */
    int64_t size;
    uint32_t seed;
    int errors;
};

static uint32_t rnd(uint32_t *s)
{
    *s = *s * 1103515245 + 12345;
    return *s >> 8;
}

/* Random writes of 512 B..96 KiB into this job's slots: the image is cut
 * into 24 KiB slots, dealt round-robin, so jobs interleave inside clusters
 * and L2 tables but never write the same byte. */
#define SLOT (24 * KiB)
static void coroutine_fn job_entry(void *opaque)
{
    Job *j = opaque;
    int64_t nslots = j->size / SLOT;
    uint8_t *buf = malloc(SLOT);
    for (int i = 0; i < 60; i++) {
        int64_t slot = (rnd(&j->seed) % (nslots / j->nthreads)) * j->nthreads + j->index;
        int64_t off = slot * SLOT + (rnd(&j->seed) % 8) * 512;
        int64_t len = 512 * (1 + rnd(&j->seed) % ((SLOT - (off - slot * SLOT)) / 512));
        memset(buf, (uint8_t)rnd(&j->seed), len);
        buf[0] = (uint8_t)i;
        IOVector v;
        iov_init_buf(&v, buf, len);
        if (blk_co_pwritev(j->blk, off, len, &v, 0) < 0) {
            j->errors++;
        }
        memcpy(j->ref + off, buf, len);
    }
    free(buf);
}

static void run_jobs(Job *jobs, int n)
{
    run_co_on_iothreads("q-io", job_entry, jobs, sizeof(*jobs), n);
}

static void random_writes_from_iothreads(int cluster_size, int refbits, int64_t size)
{
    char name[64];
    snprintf(name, sizeof(name), "w-%d-%d.qcow2", cluster_size, refbits);
    SH_OK("qemu-img create -q -f qcow2 -o cluster_size=%d,refcount_bits=%d %s %lld",
          cluster_size, refbits, name, (long long)size);
    uint8_t *ref = calloc(1, size);
    TestOpen o = open_ok(name, true);
    Job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (Job){ .blk = o.blk, .index = i, .nthreads = 4, .ref = ref,
                         .size = size, .seed = 1234 + i * 77 + cluster_size };
    }
    run_jobs(jobs, 4);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(jobs[i].errors, 0, "job %d had write errors", i);
    }
    /* read back through the driver before closing, too */
    uint8_t *got = malloc(size);
    cr_assert_eq(READ(o.blk, 0, got, size), 0);
    cr_assert(memcmp(got, ref, size) == 0, "read-back differs");
    close_img(&o);
    assert_consistent_and_equal(name, ref, size);
    free(got);
    free(ref);
}

Test(qcow2, random_writes_iothreads_64k)  { random_writes_from_iothreads(65536, 16, 8 * MiB); }
Test(qcow2, random_writes_iothreads_512_refcount_table_grows)
{
    /* 512 B clusters with 64-bit refcounts: 64 clusters per refcount block,
     * so the refcount table (one cluster, 64 blocks = 2 MiB) must grow. */
    random_writes_from_iothreads(512, 64, 4 * MiB);
}
Test(qcow2, random_writes_iothreads_refcount1) { random_writes_from_iothreads(4096, 1, 4 * MiB); }

Test(qcow2, cow_over_backing_reads_only_uncovered_parts)
{
    int64_t size = 4 * MiB;
    SH_OK("qemu-img create -q -f qcow2 cb.qcow2 3M");
    SH_OK("qemu-io -f qcow2 -c 'write -P 0x5c 0 3M' cb.qcow2 > /dev/null");
    SH_OK("qemu-img create -q -f qcow2 -b cb.qcow2 -F qcow2 co.qcow2 4M");
    uint8_t *ref = calloc(1, size);
    memset(ref, 0x5c, 3 * MiB);
    TestOpen o = open_ok("co.qcow2", true);
    static const struct { int64_t off, len; } w[] = {
        { 1000, 3000 }, { 65536 + 512, 512 }, { 200000, 300000 },
        { 3 * MiB - 4096, 8192 }, { 4 * MiB - 700, 700 },
    };
    uint8_t buf[300000];
    for (size_t i = 0; i < ARRAY_SIZE(w); i++) {
        memset(buf, 0xa0 + i, w[i].len);
        cr_assert_eq(WRITE(o.blk, w[i].off, buf, w[i].len), 0);
        memset(ref + w[i].off, 0xa0 + i, w[i].len);
    }
    close_img(&o);
    /* compare through qemu's view of the chain */
    assert_consistent_and_equal("co.qcow2", ref, size);
    free(ref);
}

/* BDRV_REQ_IF_UNALLOCATED (the stream job's copy): writes only the
 * clusters the image does not allocate yet — data, zero or otherwise —
 * and leaves the rest as they are. */
Test(qcow2, write_if_unallocated_skips_allocated_clusters)
{
    int64_t size = 1 * MiB, c = 65536;
    SH_OK("qemu-img create -q -f qcow2 ub.qcow2 1M");
    SH_OK("qemu-io -f qcow2 -c 'write -P 0x5c 0 1M' ub.qcow2 > /dev/null");
    SH_OK("qemu-img create -q -f qcow2 -b ub.qcow2 -F qcow2 uo.qcow2 1M");
    uint8_t *ref = malloc(size), *buf = malloc(size);
    TestOpen o = open_ok("uo.qcow2", true);
    memset(buf, 0xaa, c);
    cr_assert_eq(WRITE(o.blk, c, buf, c), 0);                 /* data */
    cr_assert_eq(ZERO(o.blk, 3 * c, c, 0), 0);                /* zeroes */
    memset(buf, 0xbb, size);
    cr_assert_eq(do_req((TestReq){ REQ_WRITE, o.blk, 0, 5 * c, buf,
                                   .flags = BDRV_REQ_WRITE_UNCHANGED |
                                            BDRV_REQ_IF_UNALLOCATED }).ret, 0);
    close_img(&o);
    memset(ref, 0x5c, size);
    memset(ref, 0xbb, 5 * c);
    memset(ref + c, 0xaa, c);
    memset(ref + 3 * c, 0, c);
    assert_consistent_and_equal("uo.qcow2", ref, size);
    free(ref);
    free(buf);
}

Test(qcow2, zero_writes_and_discards)
{
    int64_t size = 4 * MiB;
    SH_OK("qemu-img create -q -f qcow2 zb.qcow2 4M");
    SH_OK("qemu-io -f qcow2 -c 'write -P 0x66 0 4M' zb.qcow2 > /dev/null");
    SH_OK("qemu-img create -q -f qcow2 -b zb.qcow2 -F qcow2 zo.qcow2 4M");
    SH_OK("qemu-img create -q -f qcow2 zn.qcow2 4M");
    const char *names[] = { "zo.qcow2", "zn.qcow2" };
    for (int n = 0; n < 2; n++) {
        uint8_t *ref = malloc(size), *buf = malloc(size);
        memset(ref, n == 0 ? 0x66 : 0, size);
        TestOpen o = open_ok(names[n], true);
        memset(buf, 0x99, size);
        cr_assert_eq(WRITE(o.blk, 0, buf, 2 * MiB), 0);
        memset(ref, 0x99, 2 * MiB);
        cr_assert_eq(ZERO(o.blk, 100 * KiB, 300 * KiB, 0), 0);
        memset(ref + 100 * KiB, 0, 300 * KiB);
        cr_assert_eq(ZERO(o.blk, 1 * MiB, 512 * KiB, BDRV_REQ_MAY_UNMAP), 0);
        memset(ref + 1 * MiB, 0, 512 * KiB);
        cr_assert_eq(ZERO(o.blk, 2 * MiB + 4096, 128 * KiB, BDRV_REQ_MAY_UNMAP), 0);
        memset(ref + 2 * MiB + 4096, 0, 128 * KiB);
        cr_assert_eq(DISCARD(o.blk, 1536 * KiB, 256 * KiB), 0);
        memset(ref + 1536 * KiB, 0, 256 * KiB);
        cr_assert_eq(DISCARD(o.blk, 3 * MiB, 1 * MiB), 0);
        memset(ref + 3 * MiB, 0, 1 * MiB);
        /* rewrite part of a discarded range: the freed cluster is reused */
        memset(buf, 0x17, 64 * KiB);
        cr_assert_eq(WRITE(o.blk, 1 * MiB + 5, buf, 64 * KiB), 0);
        memcpy(ref + 1 * MiB + 5, buf, 64 * KiB);
        cr_assert_eq(READ(o.blk, 0, buf, size), 0);
        cr_assert(memcmp(buf, ref, size) == 0, "%s: read-back differs", names[n]);
        close_img(&o);
        assert_consistent_and_equal(names[n], ref, size);
        free(ref);
        free(buf);
    }
}

Test(qcow2, overwrite_compressed_and_snapshot_shared_clusters)
{
    int64_t size = 3 * MiB + 5000;
    make_compressible_raw("s.raw", size);
    SH_OK("qemu-img convert -q -c -O qcow2 -o compression_type=zstd s.raw s.qcow2");
    SH_OK("qemu-img snapshot -c snap1 s.qcow2");
    size_t len;
    uint8_t *ref = read_whole("s.raw", &len);
    TestOpen o = open_ok("s.qcow2", true);
    uint8_t buf[70000];
    memset(buf, 0xc3, sizeof(buf));
    cr_assert_eq(WRITE(o.blk, 12345, buf, sizeof(buf)), 0);
    memcpy(ref + 12345, buf, sizeof(buf));
    cr_assert_eq(ZERO(o.blk, 1 * MiB, 128 * KiB, BDRV_REQ_MAY_UNMAP), 0);
    memset(ref + 1 * MiB, 0, 128 * KiB);
    close_img(&o);
    assert_consistent_and_equal("s.qcow2", ref, size);
    free(ref);
}

Test(qcow2, resize_grows_and_refuses_to_cut_data)
{
    SH_OK("qemu-img create -q -f qcow2 -o cluster_size=512 r.qcow2 1M");
    TestOpen o = open_ok("r.qcow2", true);
    uint8_t buf[4096];
    memset(buf, 0x42, sizeof(buf));
    cr_assert_eq(WRITE(o.blk, 900 * KiB, buf, sizeof(buf)), 0);
    /* 512 B clusters: 1 MiB of L2 coverage per 32 KiB, so L1 must grow */
    TestReq r = do_req((TestReq){ REQ_TRUNCATE, o.blk, 64 * MiB });
    cr_assert_eq(r.ret, 0, "grow: %s", r.err);
    cr_assert_eq(WRITE(o.blk, 60 * MiB, buf, sizeof(buf)), 0);
    r = do_req((TestReq){ REQ_TRUNCATE, o.blk, 2 * MiB });
    cr_assert_neq(r.ret, 0);
    cr_assert(strstr(r.err, "in use"), "got: %s", r.err);
    close_img(&o);
    uint8_t *ref = calloc(1, 64 * MiB);
    memset(ref + 900 * KiB, 0x42, 4096);
    memset(ref + 60 * MiB, 0x42, 4096);
    assert_consistent_and_equal("r.qcow2", ref, 64 * MiB);
    free(ref);

    /* 64-bit refcounts on 512 B clusters: a refcount block covers only 64
     * clusters, so the new 128-cluster L1 table cannot be self-described
     * and goes to the end of the file with its own blocks. */
    SH_OK("qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 "
          "r64.qcow2 1M");
    o = open_ok("r64.qcow2", true);
    r = do_req((TestReq){ REQ_TRUNCATE, o.blk, 256 * MiB });
    cr_assert_eq(r.ret, 0, "grow: %s", r.err);
    cr_assert_eq(WRITE(o.blk, 200 * MiB, buf, sizeof(buf)), 0);
    close_img(&o);
    cr_assert_eq(sh("qemu-img check -q r64.qcow2"), 0);
    cr_assert_eq(sh("qemu-io -f qcow2 -c 'read -P 0x42 200M 4k' r64.qcow2 | "
                    "grep -q 'read 4096/4096'"), 0);
}

/* ------------------------------------------------------------------------
 * Creation
 */

typedef struct Create {
    const char *name;
    Qcow2CreateOpts opts;
    int ret;
    char err[512];
} Create;

static void coroutine_fn create_co(void *opaque)
{
    Create *c = opaque;
    Error *err = NULL;
    char p[256];
    global_lock_assert_held();
    path_of(p, sizeof(p), c->name);
    close(open(p, O_CREAT | O_WRONLY, 0644));
    json_t *def = json_pack("{s:s, s:s, s:s}", "driver", "file", "node-name", "cf",
                            "filename", p);
    BlockNode *f = bdrv_co_open_blockdev(def, &err);
    json_decref(def);
    cr_assert(f, "open file: %s", err ? error_get_pretty(err) : "");
    BlockBackend *blk = blk_new("create", BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE |
                                BLK_PERM_RESIZE, 0);
    cr_assert(blk_insert_node(blk, f, &err) == 0);
    c->ret = qcow2_co_create(blk, &c->opts, &err);
    if (err) {
        snprintf(c->err, sizeof(c->err), "%s", error_get_pretty(err));
        error_free(err);
    }
    blk_co_unref(blk);
    bdrv_co_close_all();
}

Test(qcow2, create_then_write_passes_qemu_check)
{
    static const struct { uint32_t cs; int bits; } v[] = {
        { 65536, 16 }, { 512, 64 }, { 2097152, 1 },
    };
    for (size_t i = 0; i < ARRAY_SIZE(v); i++) {
        char name[64];
        snprintf(name, sizeof(name), "new-%zu.qcow2", i);
        Create c = { .name = name, .opts = { .size = 5 * MiB + 512,
                     .cluster_size = v[i].cs, .refcount_bits = v[i].bits,
                     .compression_type = i == 1 ? QCOW2_COMPRESSION_ZSTD : 0 } };
        run_co(create_co, &c);
        cr_assert_eq(c.ret, 0, "create: %s", c.err);
        cr_assert_eq(sh("qemu-img check -q %s", name), 0, "fresh image %s", name);
        int64_t size = 5 * MiB + 512;
        uint8_t *ref = calloc(1, size), buf[100000];
        TestOpen o = open_ok(name, true);
        memset(buf, 0x3e, sizeof(buf));
        cr_assert_eq(WRITE(o.blk, size - 60000, buf, 60000), 0);
        cr_assert_eq(WRITE(o.blk, 777, buf, sizeof(buf)), 0);
        memset(ref + size - 60000, 0x3e, 60000);
        memset(ref + 777, 0x3e, sizeof(buf));
        close_img(&o);
        assert_consistent_and_equal(name, ref, size);
        free(ref);
    }
    /* a backing file recorded with its format */
    SH_OK("qemu-img create -q -f qcow2 cbase.qcow2 1M");
    Create c = { .name = "cover.qcow2", .opts = { .size = 1 * MiB,
                 .backing_file = "cbase.qcow2", .backing_format = "qcow2" } };
    run_co(create_co, &c);
    cr_assert_eq(c.ret, 0, "create: %s", c.err);
    cr_assert_eq(sh("qemu-img info cover.qcow2 | grep -q 'backing file format: qcow2'"), 0);
    cr_assert_eq(sh("qemu-img check -q cover.qcow2"), 0);
}

/* ------------------------------------------------------------------------
 * Corrupt and unusual images
 */

static void patch(const char *name, long off, const void *bytes, size_t len)
{
    char p[256];
    path_of(p, sizeof(p), name);
    int fd = open(p, O_WRONLY);
    cr_assert(fd >= 0);
    cr_assert(pwrite(fd, bytes, len, off) == (ssize_t)len);
    close(fd);
}

static void patch_be64(const char *name, long off, uint64_t v)
{
    uint8_t b[8];
    st_be64(b, v);
    patch(name, off, b, 8);
}

static void patch_be32(const char *name, long off, uint32_t v)
{
    uint8_t b[4];
    st_be32(b, v);
    patch(name, off, b, 4);
}

static void expect_refused(const char *name, const char *needle1, const char *needle2)
{
    TestOpen o = open_img(name, false, NULL);
    cr_assert_null(o.bs, "%s was opened", name);
    cr_assert(strstr(o.err, needle1) && strstr(o.err, needle2),
              "%s: message '%s' lacks '%s' / '%s'", name, o.err, needle1, needle2);
}

Test(qcow2, corrupt_headers_are_refused_with_structure_and_offset)
{
    const char *names[] = { "c1.qcow2", "c2.qcow2", "c3.qcow2", "c4.qcow2",
                            "c5.qcow2", "c6.qcow2", "c7.qcow2" };
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        SH_OK("qemu-img create -q -f qcow2 %s 16M", names[i]);
    }
    patch_be64("c1.qcow2", 40, 0x30200);               /* misaligned L1 */
    expect_refused("c1.qcow2", "L1 table offset 0x30200 is not aligned", "header offset 40");
    patch_be32("c2.qcow2", 36, 8 * 1024 * 1024);       /* 64 MiB of L1 */
    expect_refused("c2.qcow2", "L1 table size", "header offset 36");
    patch_be64("c3.qcow2", 48, 0x7770000);              /* past EOF */
    expect_refused("c3.qcow2", "refcount table", "header offset 48");
    patch_be64("c4.qcow2", 72, 1ull << 9);              /* unknown incompat bit */
    expect_refused("c4.qcow2", "incompatible", "bit 9");
    patch_be32("c5.qcow2", 20, 30);                     /* cluster_bits */
    expect_refused("c5.qcow2", "cluster_bits 30", "header offset 20");
    patch_be32("c6.qcow2", 100, 13);                    /* header length */
    expect_refused("c6.qcow2", "header length 13", "header offset 100");
    patch_be32("c7.qcow2", 56, 10000);                  /* refcount table > 8 MiB */
    expect_refused("c7.qcow2", "refcount table", "header offset 56");
}

Test(qcow2, unknown_incompatible_bit_named_from_feature_table)
{
    SH_OK("qemu-img create -q -f qcow2 f.qcow2 1M");
    /* Rename the feature-table entry for incompatible bit 4 ("extended L2
     * entries") and set the bit: refused, naming it. */
    patch_be64("f.qcow2", 72, 1ull << 4);
    expect_refused("f.qcow2", "extended L2 entries", "bit 4");
}

Test(qcow2, corrupt_bit_allows_read_only)
{
    SH_OK("qemu-img create -q -f qcow2 cb1.qcow2 1M");
    patch_be64("cb1.qcow2", 72, 1ull << 1);
    TestOpen o = open_img("cb1.qcow2", true, NULL);
    cr_assert_null(o.bs);
    cr_assert(strstr(o.err, "corrupt"), "got: %s", o.err);
    o = open_ok("cb1.qcow2", false);
    close_img(&o);
}

Test(qcow2, dirty_image_refcounts_rebuilt_before_writes)
{
    int64_t size = 2 * MiB;
    SH_OK("qemu-img create -q -f qcow2 -o lazy_refcounts=on d.qcow2 2M");
    SH_OK("qemu-io -f qcow2 -c 'write -P 0x21 0 1M' d.qcow2 > /dev/null");
    /* Pretend a crash with lazy refcounts: the dirty bit is set and the
     * refcounts on disk are stale (here: the whole first block says 0). */
    patch_be64("d.qcow2", 72, 1);
    size_t flen;
    uint8_t *img = read_whole("d.qcow2", &flen);
    uint64_t rb = ld_be64(img + ld_be64(img + 48)) & REFT_OFFSET_MASK;
    free(img);
    uint8_t *zeros = calloc(1, 65536);
    patch("d.qcow2", rb, zeros, 65536);
    free(zeros);
    uint8_t *ref = calloc(1, size), buf[8192];
    memset(ref, 0x21, 1 * MiB);
    TestOpen o = open_ok("d.qcow2", true);
    memset(buf, 0x55, sizeof(buf));
    cr_assert_eq(WRITE(o.blk, 1536 * KiB, buf, sizeof(buf)), 0);
    memset(ref + 1536 * KiB, 0x55, sizeof(buf));
    close_img(&o);
    cr_assert_eq(sh("qemu-img info d.qcow2 | grep -q 'corrupt: false'"), 0);
    assert_consistent_and_equal("d.qcow2", ref, size);
    free(ref);
}

Test(qcow2, unknown_autoclear_bits_cleared_before_first_write)
{
    SH_OK("qemu-img create -q -f qcow2 a.qcow2 1M");
    patch_be64("a.qcow2", 88, 1ull << 7);
    TestOpen o = open_ok("a.qcow2", true);
    uint8_t buf[512] = { 1 };
    cr_assert_eq(WRITE(o.blk, 0, buf, 512), 0);
    close_img(&o);
    size_t len;
    uint8_t *img = read_whole("a.qcow2", &len);
    cr_assert_eq(ld_be64(img + 88), 0);
    free(img);
}

/* ------------------------------------------------------------------------
 * Compressed writes (BDRV_REQ_COMPRESS)
 */

static void compressed_write_for(const char *type)
{
    char name[64];
    int64_t size = 2 * MiB + 4096;        /* a partial last cluster */
    snprintf(name, sizeof(name), "cw-%s.qcow2", type);
    SH_OK("qemu-img create -q -f qcow2 -o compression_type=%s %s %lld", type, name,
          (long long)size);
    make_compressible_raw("cw.raw", size);
    size_t len;
    uint8_t *ref = read_whole("cw.raw", &len);
    /* one incompressible cluster: stored normally */
    for (int i = 0; i < 65536; i++) {
        ref[65536 + i] = (uint8_t)((i * 2654435761u) >> 13);
    }
    TestOpen o = open_ok(name, true);
    TestReq r = do_req((TestReq){ REQ_WRITE, o.blk, 0, size, ref, .flags = BDRV_REQ_COMPRESS });
    cr_assert_eq(r.ret, 0);
    /* overwrite one compressed cluster partially: COW from compressed data */
    memset(ref + 300000, 0x7e, 5000);
    cr_assert_eq(WRITE(o.blk, 300000, ref + 300000, 5000), 0);
    /* and recompress another over an old compressed one */
    memset(ref + 1 * MiB, 0x11, 65536);
    r = do_req((TestReq){ REQ_WRITE, o.blk, 1 * MiB, 65536, ref + 1 * MiB,
                      .flags = BDRV_REQ_COMPRESS });
    cr_assert_eq(r.ret, 0);
    close_img(&o);
    assert_consistent_and_equal(name, ref, size);
    struct stat st;
    char p[256];
    path_of(p, sizeof(p), name);
    cr_assert(stat(p, &st) == 0);
    cr_assert_lt(st.st_size, size, "%s: %lld bytes, not compressed", name,
                 (long long)st.st_size);
    cr_assert_eq(sh("qemu-img check --output=json %s | "
                    "grep -Eq '\"compressed-clusters\": (2[5-9]|3[0-9])'", name), 0,
                 "qemu-img check does not count 25..39 compressed clusters");
    free(ref);
}

Test(qcow2, compressed_writes_zstd) { compressed_write_for("zstd"); }
Test(qcow2, compressed_writes_zlib) { compressed_write_for("zlib"); }

Test(qcow2, resize_never_resurrects_old_data)
{
    /* shrink into a partial cluster, grow again: the cut bytes read as 0 */
    SH_OK("qemu-img create -q -f qcow2 rz.qcow2 1M");
    TestOpen o = open_ok("rz.qcow2", true);
    uint8_t buf[65536];
    memset(buf, 0x9d, sizeof(buf));
    cr_assert_eq(WRITE(o.blk, 1 * MiB - 65536, buf, sizeof(buf)), 0);
    TestReq r = do_req((TestReq){ REQ_TRUNCATE, o.blk, 1 * MiB - 1000 });
    cr_assert_eq(r.ret, 0, "shrink: %s", r.err);
    r = do_req((TestReq){ REQ_TRUNCATE, o.blk, 1 * MiB });
    cr_assert_eq(r.ret, 0, "grow: %s", r.err);
    close_img(&o);
    uint8_t *ref = calloc(1, 1 * MiB);
    memset(ref + 1 * MiB - 65536, 0x9d, 65536 - 1000);
    assert_consistent_and_equal("rz.qcow2", ref, 1 * MiB);
    free(ref);

    /* an overlay smaller than its backing, grown: the backing stays hidden */
    SH_OK("qemu-img create -q -f qcow2 rb.qcow2 4M");
    SH_OK("qemu-io -f qcow2 -c 'write -P 0x31 0 4M' rb.qcow2 > /dev/null");
    SH_OK("qemu-img create -q -f qcow2 -b rb.qcow2 -F qcow2 ro.qcow2 1000448");
    o = open_ok("ro.qcow2", true);
    r = do_req((TestReq){ REQ_TRUNCATE, o.blk, 3 * MiB });
    cr_assert_eq(r.ret, 0, "grow: %s", r.err);
    close_img(&o);
    ref = calloc(1, 3 * MiB);
    memset(ref, 0x31, 1000448);
    assert_consistent_and_equal("ro.qcow2", ref, 3 * MiB);
    free(ref);
}

/* ------------------------------------------------------------------------
 * Internal snapshots
 */

typedef struct SnapCall {
    BlockNode *bs;
    char op;                 /* 'c' create, 'a' apply, 'd' delete */
    const char *name;
    int ret;
    char err[512];
} SnapCall;

static void coroutine_fn snap_co(void *opaque)
{
    SnapCall *c = opaque;
    Error *err = NULL;
    global_lock_assert_held();
    c->ret = c->op == 'c' ? qcow2_snapshot_create(c->bs, c->name, &err)
           : c->op == 'a' ? qcow2_snapshot_apply(c->bs, c->name, &err)
                          : qcow2_snapshot_delete(c->bs, c->name, &err);
    if (err) {
        snprintf(c->err, sizeof(c->err), "%s", error_get_pretty(err));
        error_free(err);
    }
}

static int snap(BlockNode *bs, char op, const char *name, char *err, size_t errlen)
{
    SnapCall c = { bs, op, name };
    run_co(snap_co, &c);
    if (err) {
        snprintf(err, errlen, "%s", c.err);
    }
    return c.ret;
}

static void expect_image(const char *name, const uint8_t *ref, size_t len)
{
    TestOpen o = open_ok(name, false);
    uint8_t *got = malloc(len);
    cr_assert_eq(READ(o.blk, 0, got, len), 0);
    cr_assert(memcmp(got, ref, len) == 0, "%s content differs", name);
    close_img(&o);
    free(got);
}

Test(qcow2, snapshots_create_apply_delete_interop)
{
    size_t size = 2 * MiB;
    char err[512];
    uint8_t *a = malloc(size), *b = malloc(size), *buf = malloc(size);
    SH_OK("qemu-img create -q -f qcow2 -o cluster_size=4096 sn.qcow2 2M");
    memset(a, 0, size);
    memset(a + 4096, 0xa1, 1 * MiB);

    TestOpen o = open_ok("sn.qcow2", true);
    cr_assert_eq(WRITE(o.blk, 4096, a + 4096, 1 * MiB), 0);
    cr_assert_eq(snap(o.bs, 'c', "one", err, sizeof(err)), 0, "create: %s", err);
    cr_assert_neq(snap(o.bs, 'c', "one", err, sizeof(err)), 0);
    cr_assert(strstr(err, "already exists"), "got: %s", err);
    memcpy(b, a, size);
    memset(b + 500000, 0xb2, 700000);      /* partly over snapshot data */
    cr_assert_eq(WRITE(o.blk, 500000, b + 500000, 700000), 0);
    cr_assert_eq(ZERO(o.blk, 8192, 8192, BDRV_REQ_MAY_UNMAP), 0);
    memset(b + 8192, 0, 8192);
    Qcow2SnapshotInfo *list;
    global_lock_assert_held();     /* the test thread is the main thread */
    cr_assert_eq(qcow2_snapshot_list(o.bs, &list), 1);
    cr_assert_str_eq(list[0].name, "one");
    cr_assert_eq(list[0].disk_size, size);
    free(list);
    close_img(&o);

    assert_consistent_and_equal("sn.qcow2", b, size);
    cr_assert_eq(sh("qemu-img snapshot -l sn.qcow2 | grep -q ' one '"), 0);
    SH_OK("qemu-img convert -O raw -l snapshot.name=one sn.qcow2 sn-one.raw");
    size_t len;
    uint8_t *one = read_whole("sn-one.raw", &len);
    cr_assert(len == size && memcmp(one, a, size) == 0, "snapshot content differs");
    free(one);

    /* a snapshot qemu-img makes, applied here; then ours deleted here */
    SH_OK("qemu-img snapshot -c two sn.qcow2");
    o = open_ok("sn.qcow2", true);
    cr_assert_eq(snap(o.bs, 'a', "one", err, sizeof(err)), 0, "apply: %s", err);
    cr_assert_eq(READ(o.blk, 0, buf, size), 0);
    cr_assert(memcmp(buf, a, size) == 0, "applied snapshot reads wrong");
    cr_assert_eq(snap(o.bs, 'd', "one", err, sizeof(err)), 0, "delete: %s", err);
    cr_assert_neq(snap(o.bs, 'a', "nope", err, sizeof(err)), 0);
    cr_assert(strstr(err, "no snapshot 'nope'"), "got: %s", err);
    close_img(&o);
    assert_consistent_and_equal("sn.qcow2", a, size);
    cr_assert_neq(sh("qemu-img snapshot -l sn.qcow2 | grep -q ' one '"), 0);

    /* apply qemu's "two" (== b), delete it: back to no snapshots */
    o = open_ok("sn.qcow2", true);
    cr_assert_eq(snap(o.bs, 'a', "two", err, sizeof(err)), 0, "apply: %s", err);
    cr_assert_eq(snap(o.bs, 'd', "two", err, sizeof(err)), 0, "delete: %s", err);
    close_img(&o);
    assert_consistent_and_equal("sn.qcow2", b, size);
    expect_image("sn.qcow2", b, size);
    free(a);
    free(b);
    free(buf);
}

Test(qcow2, corruption_found_while_running_stops_writes_not_reads)
{
    SH_OK("qemu-img create -q -f qcow2 rc.qcow2 4M");
    SH_OK("qemu-io -f qcow2 -c 'write -P 0x44 0 128k' rc.qcow2 > /dev/null");
    size_t len;
    uint8_t *img = read_whole("rc.qcow2", &len);
    uint64_t l1 = ld_be64(img + 40);
    uint64_t l2 = ld_be64(img + l1) & L1E_OFFSET_MASK;
    free(img);
    /* guest cluster 1 now claims to live inside the header cluster */
    patch_be64("rc.qcow2", l2 + 8, QCOW_OFLAG_COPIED | 0x200);
    TestOpen o = open_ok("rc.qcow2", true);
    uint8_t buf[4096];
    memset(buf, 0x99, sizeof(buf));
    cr_assert_eq(WRITE(o.blk, 65536, buf, sizeof(buf)), -EIO);
    cr_assert_eq(WRITE(o.blk, 0, buf, sizeof(buf)), -EIO, "writes stay refused");
    cr_assert_eq(READ(o.blk, 4096, buf, sizeof(buf)), 0, "reads elsewhere work");
    cr_assert(buf[0] == 0x44 && buf[4095] == 0x44);
    close_img(&o);
    cr_assert_eq(sh("qemu-img info rc.qcow2 | grep -q 'corrupt: true'"), 0,
                 "corrupt bit not set on disk");
    img = read_whole("rc.qcow2", &len);
    cr_assert_eq(ld_be32(img), QCOW2_MAGIC, "header intact");
    free(img);
}

Test(qcow2, works_over_o_direct_file)
{
    int64_t size = 2 * MiB;
    SH_OK("qemu-img create -q -f qcow2 -o cluster_size=4096 od.qcow2 2M");
    SH_OK("qemu-io -f qcow2 -c 'write -c -P 0x12 0 64k' -c 'write -P 0x34 1M 100k' "
          "od.qcow2 > /dev/null");
    char p[256];
    path_of(p, sizeof(p), "od.qcow2");
    TestOpen o = { .perm = img_perm(true), .shared = BLK_PERM_CONSISTENT_READ,
               .def = json_pack("{s:s, s:s, s:{s:s, s:s, s:b}}", "driver", "qcow2",
                                "node-name", "disk", "file", "driver", "file",
                                "filename", p, "cache.direct", 1) };
    run_co(test_open_co, &o);
    cr_assert(o.bs && o.blk, "open with cache.direct: %s", o.err);
    uint8_t *ref = calloc(1, size), *buf = malloc(size);
    memset(ref, 0x12, 65536);
    memset(ref + 1 * MiB, 0x34, 100 * KiB);
    memset(buf, 0x56, 3333);
    cr_assert_eq(WRITE(o.blk, 1000, buf, 3333), 0);          /* COW from compressed */
    memcpy(ref + 1000, buf, 3333);
    cr_assert_eq(WRITE(o.blk, 1 * MiB + 777, buf, 3333), 0); /* in place */
    memcpy(ref + 1 * MiB + 777, buf, 3333);
    cr_assert_eq(READ(o.blk, 0, buf, size), 0);
    cr_assert(memcmp(buf, ref, size) == 0, "read-back differs");
    close_img(&o);
    assert_consistent_and_equal("od.qcow2", ref, size);
    free(ref);
    free(buf);
}

Test(qcow2, backing_option_overrides_the_header)
{
    SH_OK("qemu-img create -q -f qcow2 hb.qcow2 1M");
    SH_OK("qemu-io -f qcow2 -c 'write -P 0x71 0 1M' hb.qcow2 > /dev/null");
    SH_OK("qemu-img create -q -f qcow2 -b hb.qcow2 -F qcow2 ho.qcow2 1M");
    uint8_t buf[4096];

    /* backing: null -> no backing, unallocated clusters read as zeroes */
    TestOpen o = open_img("ho.qcow2", false, json_pack("{s:n}", "backing"));
    cr_assert(o.bs, "%s", o.err);
    cr_assert_eq(READ(o.blk, 0, buf, sizeof(buf)), 0);
    cr_assert(buf[0] == 0 && buf[4095] == 0);
    close_img(&o);

    /* a nested definition: a raw file of 0xee instead of the header's */
    uint8_t raw[8192];
    memset(raw, 0xee, sizeof(raw));
    write_whole("other.raw", raw, sizeof(raw));
    char p[256];
    path_of(p, sizeof(p), "other.raw");
    o = open_img("ho.qcow2", false, json_pack("{s:{s:s, s:{s:s, s:s}}}", "backing",
                 "driver", "raw", "file", "driver", "file", "filename", p));
    cr_assert(o.bs, "%s", o.err);
    cr_assert_eq(READ(o.blk, 4096, buf, sizeof(buf)), 0);
    cr_assert(buf[0] == 0xee && buf[4095] == 0xee);
    cr_assert_eq(READ(o.blk, 8192, buf, sizeof(buf)), 0);
    cr_assert(buf[0] == 0, "past the backing's end: zeroes");
    close_img(&o);

    /* no backing format in the header: opened as raw, never probed */
    SH_OK("qemu-img create -q -f qcow2 nb.qcow2 1M && "
          "qemu-img rebase -u -b hb.qcow2 nb.qcow2 2>/dev/null || "
          "qemu-img rebase -u -b hb.qcow2 -F raw nb.qcow2");
    o = open_ok("nb.qcow2", false);
    cr_assert_eq(READ(o.blk, 0, buf, 4), 0);
    cr_assert_eq(ld_be32(buf), QCOW2_MAGIC, "backing read as raw bytes");
    close_img(&o);
}

/* ------------------------------------------------------------------------
 * Errors below qcow2 (an inject node between qcow2 and its file)
 */

static TestOpen open_over_inject(const char *name)
{
    char p[256];
    path_of(p, sizeof(p), name);
    json_t *extra = json_pack("{s:{s:s, s:s, s:{s:s, s:s}}}", "file", "driver",
                              "inject", "node-name", "inj", "file", "driver", "file",
                              "filename", p);
    TestOpen o = open_img(name, true, extra);
    cr_assert(o.bs && o.blk, "open %s over inject failed: %s", name, o.err);
    return o;
}

static void set_rule(BlockNode *inj, const char *rule_json)
{
    json_error_t jerr;
    json_t *rules = json_loads(rule_json, 0, &jerr);
    Error *err = NULL;
    global_lock_assert_held();
    cr_assert(rules, "rule JSON: %s", jerr.text);
    int ret = inject_node_set(inj, rules, true, &err);
    cr_assert_eq(ret, 0, "inject set: %s", err ? error_get_pretty(err) : "");
    json_decref(rules);
}

/*
 * For each qcow2 event point: a once-rule fails the first write that
 * raises it; the write (or flush) fails with -EIO; with the rule gone the
 * same request succeeds on the same open node; after close the image has
 * no corruption (leaks allowed) and the reference content.  512-byte
 * clusters and 64-bit refcounts: an L2 table covers 32 KiB, a refcount
 * block 32 KiB of file, the refcount table 2 MiB, so each step comes soon.
 */
static void fail_step_then_recover(const char *event, int after, uint64_t step)
{
    const int64_t size = 8 * MiB;
    global_lock_assert_held();       /* the test thread is the main thread */
    SH_OK("qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 ev.qcow2 %lld",
          (long long)size);
    uint8_t *ref = calloc(1, size), *buf = malloc(step);
    TestOpen o = open_over_inject("ev.qcow2");
    BlockNode *inj = bdrv_find_node("inj");
    cr_assert(inj);
    char rule[256];
    snprintf(rule, sizeof(rule), "[{\"id\":\"r\",\"op\":\"write\",\"event\":\"%s\","
             "\"once\":true,\"after\":%d,\"errno\":\"EIO\"}]", event, after);
    set_rule(inj, rule);
    int64_t failed = -1;
    for (int64_t off = 0; off + (int64_t)step <= size && failed < 0; off += step) {
        memset(buf, (int)(off / step) % 250 + 1, step);
        int ret = WRITE(o.blk, off, buf, step);
        if (ret == 0) {
            ret = FLUSH(o.blk);        /* L2 write-back happens here */
        }
        if (ret < 0) {
            cr_assert_eq(ret, -EIO, "%s: write at %lld", event, (long long)off);
            failed = off;
        }
        memcpy(ref + off, buf, step);
    }
    cr_assert(failed >= 0, "%s: the rule never fired", event);
    Error *err = NULL;
    cr_assert_eq(inject_node_clear(inj, NULL, &err), 0);
    memset(buf, 0xee, step);
    cr_assert_eq(WRITE(o.blk, failed, buf, step), 0, "%s: rewrite", event);
    cr_assert_eq(FLUSH(o.blk), 0);
    memcpy(ref + failed, buf, step);
    uint8_t *got = malloc(size);
    cr_assert_eq(READ(o.blk, 0, got, size), 0);
    cr_assert(memcmp(got, ref, size) == 0, "%s: content differs before close", event);
    close_img(&o);
    check_and_compare("ev.qcow2", ref, size, true);
    free(got);
    free(ref);
    free(buf);
}

Test(qcow2, error_at_l2_update_recovers)        { fail_step_then_recover("l2-update", 0, 4096); }
Test(qcow2, error_at_l1_entry_update_recovers)  { fail_step_then_recover("l2-update", 1, 4096); }
Test(qcow2, error_at_refblock_alloc_recovers)   { fail_step_then_recover("refblock-alloc", 0, 4096); }
Test(qcow2, error_at_refblock_hookup_recovers)  { fail_step_then_recover("refblock-alloc", 1, 4096); }
Test(qcow2, error_at_cow_write_recovers)        { fail_step_then_recover("cow-write", 0, 1000); }
Test(qcow2, error_at_header_update_recovers)    { fail_step_then_recover("header-update", 0, 16384); }
Test(qcow2, error_in_long_run_alloc_recovers)   { fail_step_then_recover("refblock-alloc", 2, 32768); }

static json_t *captured_event;
static _Atomic bool event_seen;

/* The event sink: GS (main loop, bottom half). */
static void capture_event(const char *name, json_t *data)
{
    if (strcmp(name, "BLOCK_IMAGE_CORRUPTED") == 0 && !captured_event) {
        captured_event = data;
        atomic_store(&event_seen, true);
        return;
    }
    json_decref(data);
}

Test(qcow2, corruption_posts_block_image_corrupted_once)
{
    global_lock_assert_held();       /* the test thread is the main thread */
    SH_OK("qemu-img create -q -f qcow2 ce.qcow2 4M");
    SH_OK("qemu-io -f qcow2 -c 'write -P 0x44 0 128k' ce.qcow2 > /dev/null");
    size_t len;
    uint8_t *img = read_whole("ce.qcow2", &len);
    uint64_t l1 = ld_be64(img + 40), rt = ld_be64(img + 48);
    uint64_t l2 = ld_be64(img + l1) & L1E_OFFSET_MASK;
    free(img);
    patch_be64("ce.qcow2", l2 + 8, QCOW_OFLAG_COPIED | rt);  /* onto the refcount table */
    block_event_set_sink(capture_event);
    TestOpen o = open_ok("ce.qcow2", true);
    uint8_t buf[4096];
    cr_assert_eq(READ(o.blk, 65536, buf, sizeof(buf)), -EIO);
    cr_assert(wait_flag_guarded(&event_seen), "no BLOCK_IMAGE_CORRUPTED");
    json_t *d = captured_event;
    cr_assert_str_eq(json_string_value(json_object_get(d, "device")), "");
    cr_assert_str_eq(json_string_value(json_object_get(d, "node-name")), "disk");
    cr_assert(json_is_true(json_object_get(d, "fatal")));
    cr_assert_eq(json_integer_value(json_object_get(d, "offset")), (json_int_t)rt);
    cr_assert_eq(json_integer_value(json_object_get(d, "size")), 65536);
    cr_assert(strstr(json_string_value(json_object_get(d, "msg")), "refcount table"));
    /* a second detection: refused again, not announced again */
    atomic_store(&event_seen, false);
    cr_assert_eq(READ(o.blk, 65536, buf, sizeof(buf)), -EIO);
    cr_assert_eq(WRITE(o.blk, 0, buf, sizeof(buf)), -EIO);
    close_img(&o);
    cr_assert(!atomic_load(&event_seen), "announced twice");
    block_event_set_sink(NULL);
    json_decref(captured_event);
    captured_event = NULL;
    cr_assert_eq(sh("qemu-img info ce.qcow2 | grep -q 'corrupt: true'"), 0);
}
