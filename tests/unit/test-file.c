/*
 * test-file.c — the file protocol and raw format drivers, on real files.
 *
 * Every test opens nodes from definitions (as blockdev-add would) inside a
 * coroutine on the main loop, holds the root through a backend, and checks
 * what the requests did both through the graph and in the file itself
 * (pread, SEEK_DATA/SEEK_HOLE, fstat).  The lock tests run qemu-img and
 * qemu-storage-daemon against images diskstack holds, and the other way.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "block-gs.h"
#include "block-io.h"
#include "driver.h"
#include "loop/loop.h"
#include "util/threads.h"
#include "test-util.h"

#define MiB (1024 * 1024)

static char tmpdir[64];
/* A qemu-storage-daemon a test started; teardown stops it if the test
 * failed before it could. */
static pid_t qsd_pid;
static void stop_process(pid_t pid);

/* LeakSanitizer: criterion's runner leaks one small object of its own. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:libcriterion.so\n";
}

/* ------------------------------------------------------------------------
 * Harness: the main loop, coroutines, IOThreads
 */

/* The test thread is the main thread and holds the global lock throughout,
 * as the daemon's main loop does. */
static void setup(void) ACQUIRE(global_lock)
{
    test_runtime_init();
    test_tmpdir_create(tmpdir, sizeof(tmpdir), "ds-test-file");
}

static void teardown(void) RELEASE(global_lock)
{
    global_lock_release();
    if (qsd_pid > 0) {
        stop_process(qsd_pid);
    }
    test_tmpdir_remove(tmpdir);
}

TestSuite(file, .init = setup, .fini = teardown, .timeout = 60);

typedef struct Job Job;
struct Job {
    void coroutine_fn (*fn)(Job *j);
    BlockBackend *blk;
    int index;
    int64_t region_start, region_len;
    int errors;
};

static void coroutine_fn job_entry(void *opaque)
{
    Job *j = opaque;

    j->fn(j);
}

/* Runs each job in a coroutine on its own IOThread; waits for all. */
static void run_on_iothreads(Job *jobs, int n)
{
    run_co_on_iothreads("test-io", job_entry, jobs, sizeof(*jobs), n);
}

/* ------------------------------------------------------------------------
 * Files and definitions
 */

static void make_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmpdir, name);
}

/* A file of `size` bytes: a byte pattern that depends on the offset
 * (pattern) or a hole (!pattern). */
static void create_image(const char *path, int64_t size, bool pattern)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);

    cr_assert(fd >= 0, "create %s: %s", path, strerror(errno));
    cr_assert(ftruncate(fd, size) == 0);
    if (pattern) {
        uint8_t *buf = malloc(size);
        for (int64_t i = 0; i < size; i++) {
            buf[i] = (uint8_t)(i * 7 + (i >> 12));
        }
        cr_assert(pwrite(fd, buf, size, 0) == size);
        free(buf);
    }
    close(fd);
}

static uint8_t pattern_byte(int64_t i)
{
    return (uint8_t)(i * 7 + (i >> 12));
}

static void read_file(const char *path, int64_t off, void *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    cr_assert(fd >= 0);
    memset(buf, 0xee, len);
    cr_assert(pread(fd, buf, len, off) >= 0);
    close(fd);
}

/* The aio engine the I/O tests run with (AIO_TEST); NULL: the default. */
static const char *test_aio;

static json_t *file_def(const char *path)
{
    json_t *def = json_pack("{s:s, s:s, s:s}", "driver", "file", "node-name",
                            "f0", "filename", path);

    if (test_aio) {
        json_object_set_new(def, "aio", json_string(test_aio));
    }
    return def;
}

/* An I/O test, run once per aio engine (criterion runs each in its own
 * process, so each starts with an empty thread pool). */
#define AIO_TEST(name) \
    static void name(void); \
    Test(file, name##_aio_auto) { test_aio = "auto"; name(); } \
    Test(file, name##_aio_threads) { test_aio = "threads"; name(); } \
    Test(file, name##_aio_io_uring) { test_aio = "io_uring"; name(); } \
    static void name(void)

/* raw over file; extra keys (cache.direct, offset, ...) merged in. */
static json_t *raw_def(const char *path, json_t *raw_extra, json_t *file_extra)
{
    json_t *file = file_def(path);
    json_t *raw = json_pack("{s:s, s:s, s:s}", "driver", "raw", "node-name", "disk",
                            "discard", "unmap");

    if (file_extra) {
        json_object_update(file, file_extra);
        json_decref(file_extra);
    }
    if (raw_extra) {
        json_object_update(raw, raw_extra);
        json_decref(raw_extra);
    }
    json_object_set_new(raw, "file", file);
    return raw;
}

/* ------------------------------------------------------------------------
 * Opening and closing through the graph
 */

#define RW_PERM    (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE)
#define RWR_PERM   (RW_PERM | BLK_PERM_RESIZE)
/* What QEMU's own devices share: others may read, nobody else may write. */
#define QEMU_SHARED (BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED)

static TestOpen open_def(json_t *def, uint64_t perm, uint64_t shared)
{
    TestOpen o = { .def = def, .perm = perm, .shared = shared };
    run_co(test_open_co, &o);
    return o;
}

static TestOpen open_ok(json_t *def, uint64_t perm)
{
    TestOpen o = open_def(def, perm, BLK_PERM_ALL);
    cr_assert(o.bs, "open failed: %s", o.err);
    cr_assert(!perm || o.blk, "backend failed: %s", o.err);
    return o;
}

static void close_all(TestOpen *o)
{
    run_co(test_close_co, o);
}

/* ------------------------------------------------------------------------
 * Request helpers (run inside a coroutine)
 */

static int coroutine_fn blk_read(BlockBackend *blk, int64_t off, void *buf, size_t len)
{
    IOVector v;
    iov_init_buf(&v, buf, len);
    return blk_co_preadv(blk, off, len, &v, 0);
}

static int coroutine_fn blk_write(BlockBackend *blk, int64_t off, const void *buf,
                                  size_t len)
{
    IOVector v;
    iov_init_buf(&v, (void *)buf, len);
    return blk_co_pwritev(blk, off, len, &v, 0);
}

static int do_req(TestReq r_in, TestReq *out)
{
    TestReq r = r_in;
    run_co(test_req_co, &r);
    if (out) {
        *out = r;
    }
    return r.ret;
}

#define READ(blk, o, b, l)   do_req((TestReq){ REQ_READ, blk, o, l, b }, NULL)
#define WRITE(blk, o, b, l)  do_req((TestReq){ REQ_WRITE, blk, o, l, (void *)(b) }, NULL)
#define ZERO(blk, o, l, f)   do_req((TestReq){ REQ_ZERO, blk, o, l, .flags = (f) }, NULL)
#define DISCARD(blk, o, l)   do_req((TestReq){ REQ_DISCARD, blk, o, l }, NULL)
#define FLUSH(blk)           do_req((TestReq){ REQ_FLUSH, blk }, NULL)

/* The test body runs on the main thread holding the global lock. */
static BlockNode *find_node(const char *name)
{
    global_lock_assert_held();
    return bdrv_find_node(name);
}

static bool all_bytes(const uint8_t *buf, size_t len, uint8_t c)
{
    for (size_t i = 0; i < len; i++) {
        if (buf[i] != c) {
            return false;
        }
    }
    return true;
}

/* ------------------------------------------------------------------------
 * Opening: errors and basics
 */

Test(file, open_errors_name_the_file)
{
    char path[128], msg[256];
    TestOpen o;

    make_path(path, sizeof(path), "missing.img");
    o = open_def(file_def(path), 0, 0);
    cr_assert_null(o.bs);
    snprintf(msg, sizeof(msg), "Could not open '%s': No such file or directory", path);
    cr_assert(strstr(o.err, msg), "got: %s", o.err);

    o = open_def(file_def(tmpdir), 0, 0);
    cr_assert_null(o.bs);
    cr_assert(strstr(o.err, "Is a directory"), "got: %s", o.err);

    make_path(path, sizeof(path), "a.img");
    create_image(path, MiB, false);
    o = open_def(json_pack("{s:s, s:s, s:s}", "driver", "file", "filename", path,
                           "aio", "native"), 0, 0);
    cr_assert_null(o.bs);
    cr_assert(strstr(o.err, "aio=native"), "got: %s", o.err);
    o = open_def(json_pack("{s:s, s:s, s:s}", "driver", "file", "filename", path,
                           "aio", "posix"), 0, 0);
    cr_assert_null(o.bs);
    cr_assert(strstr(o.err, "aio"), "got: %s", o.err);
}

/* ------------------------------------------------------------------------
 * x-regular-only: what a format sets on a file its metadata names (a qcow2
 * backing file).  Checked on the open fd, so a symlink counts as what it
 * points to; a FIFO never blocks the open, with the option or without.
 */

/* A read-only file node on path, with or without x-regular-only. */
static json_t *typed_def(const char *path, bool regular_only)
{
    return json_pack("{s:s, s:s, s:b, s:b}", "driver", "file", "filename", path,
                     "read-only", 1, "x-regular-only", regular_only);
}

/* Opening path is refused with a message that contains want. */
static void refused_with(const char *path, bool regular_only, const char *want)
{
    TestOpen o = open_def(typed_def(path, regular_only), BLK_PERM_CONSISTENT_READ,
                          BLK_PERM_ALL);

    cr_assert_null(o.bs, "%s was opened", path);
    cr_assert(strstr(o.err, want), "%s: got '%s', want '%s'", path, o.err, want);
}

/* The message x-regular-only gives for path, of type `what`. */
static void refused_as(const char *path, const char *what)
{
    char want[512];

    snprintf(want, sizeof(want), "'%s' is %s, not a regular file: a file named "
             "by image metadata must be a regular file", path, what);
    refused_with(path, true, want);
}

Test(file, regular_only_opens_a_regular_file)
{
    char path[128];
    uint8_t buf[4096];

    make_path(path, sizeof(path), "regular.img");
    create_image(path, MiB, true);
    TestOpen o = open_ok(typed_def(path, true), BLK_PERM_CONSISTENT_READ);
    cr_assert_eq(READ(o.blk, 8192, buf, sizeof(buf)), 0);
    cr_assert_eq(buf[0], pattern_byte(8192));
    close_all(&o);
}

Test(file, regular_only_refuses_device_directory_fifo_and_symlink)
{
    char fifo[128], link[128];

    make_path(fifo, sizeof(fifo), "fifo");
    cr_assert_eq(mkfifo(fifo, 0600), 0, "mkfifo: %s", strerror(errno));
    make_path(link, sizeof(link), "zero-link");
    cr_assert_eq(symlink("/dev/zero", link), 0, "symlink: %s", strerror(errno));
    refused_as("/dev/zero", "a character device");
    refused_as(tmpdir, "a directory");
    refused_as(fifo, "a FIFO");
    refused_as(link, "a character device");
}

/* Without the option a FIFO is refused too, and at once: the open does not
 * wait for a writer that never comes (the suite's timeout would catch a
 * hang). */
Test(file, fifo_refused_promptly_without_the_option, .timeout = 10)
{
    char fifo[128], want[256];

    make_path(fifo, sizeof(fifo), "fifo");
    cr_assert_eq(mkfifo(fifo, 0600), 0, "mkfifo: %s", strerror(errno));
    snprintf(want, sizeof(want), "'%s' is not a regular file or block device", fifo);
    refused_with(fifo, false, want);
    TestOpen o = open_def(json_pack("{s:s, s:s}", "driver", "file", "filename", fifo),
                          RW_PERM, BLK_PERM_ALL);
    cr_assert_null(o.bs, "a FIFO opened read-write");
    cr_assert(strstr(o.err, want), "read-write: got '%s'", o.err);
}

/* ------------------------------------------------------------------------
 * The aio option picks the engine: the thread pool starts workers only for
 * the requests the mode sends to it.
 */

/* Opens the image with aio (NULL: the default), reads and/or writes once,
 * and returns how many pool workers exist before the close (which flushes). */
static int pool_workers_after_io(const char *aio, bool read, bool write)
{
    char path[128];
    uint8_t buf[4096];
    int workers;
    TestOpen o;

    make_path(path, sizeof(path), "aio.img");
    create_image(path, MiB, true);
    o = open_ok(raw_def(path, NULL, aio ? json_pack("{s:s}", "aio", aio) : NULL),
                RW_PERM);
    if (read) {
        cr_assert_eq(READ(o.blk, 4096, buf, sizeof(buf)), 0);
        cr_assert_eq(buf[0], pattern_byte(4096));
    }
    if (write) {
        cr_assert_eq(WRITE(o.blk, 8192, buf, sizeof(buf)), 0);
    }
    workers = thread_pool_worker_count();
    close_all(&o);
    return workers;
}

Test(file, aio_io_uring_and_auto_pick_their_engines)
{
    cr_assert_eq(pool_workers_after_io("io_uring", true, true), 0,
                 "aio=io_uring used the pool");
    cr_assert_eq(thread_pool_worker_count(), 0, "aio=io_uring flushed on the pool");
    cr_assert_eq(pool_workers_after_io("auto", true, false), 0,
                 "aio=auto read on the pool");
    /* The default is auto. */
    cr_assert(pool_workers_after_io(NULL, false, true) > 0,
              "aio=auto wrote on the ring");
}

Test(file, aio_threads_reads_on_the_pool)
{
    cr_assert(pool_workers_after_io("threads", true, false) > 0,
              "aio=threads read on the ring");
}

/* ------------------------------------------------------------------------
 * Reads and writes
 */

/* Each job writes random blocks in its own region, then reads them back,
 * and reads the untouched pattern elsewhere in its region. */
static void coroutine_fn rw_job(Job *j)
{
    unsigned seed = 1234 + j->index;
    int64_t block = 64 * 1024;
    int nblocks = j->region_len / block;
    uint8_t *wbuf = malloc(block), *rbuf = malloc(block);
    bool *written = calloc(nblocks, 1);

    for (int n = 0; n < 64; n++) {
        int b = rand_r(&seed) % nblocks;
        int64_t len = 1 + rand_r(&seed) % block;
        int64_t off = j->region_start + (int64_t)b * block;
        memset(wbuf, 0, block);
        for (int64_t i = 0; i < len; i++) {
            wbuf[i] = (uint8_t)(j->index * 31 + b);
        }
        /* Whole-block writes keep the reference simple: unwritten bytes of
         * the block are zero. */
        if (blk_write(j->blk, off, wbuf, block) < 0) {
            j->errors++;
        }
        written[b] = true;
    }
    for (int b = 0; b < nblocks; b++) {
        int64_t off = j->region_start + (int64_t)b * block;
        if (blk_read(j->blk, off, rbuf, block) < 0) {
            j->errors++;
            continue;
        }
        if (written[b]) {
            if (rbuf[0] != (uint8_t)(j->index * 31 + b)) {
                j->errors++;
            }
        } else {
            for (int64_t i = 0; i < block; i++) {
                if (rbuf[i] != pattern_byte(off + i)) {
                    j->errors++;
                    break;
                }
            }
        }
    }
    free(wbuf);
    free(rbuf);
    free(written);
}

static void check_rw_on_iothreads(bool direct)
{
    char path[128];
    Job jobs[3];
    TestOpen o;
    uint8_t buf[4];

    make_path(path, sizeof(path), "rw.img");
    create_image(path, 6 * MiB, true);
    o = open_ok(raw_def(path, NULL,
                        direct ? json_pack("{s:{s:b}}", "cache", "direct", 1) : NULL),
                RW_PERM);
    for (int i = 0; i < 3; i++) {
        jobs[i] = (Job){ .fn = rw_job, .blk = o.blk, .index = i,
                         .region_start = i * 2 * MiB, .region_len = 2 * MiB };
    }
    run_on_iothreads(jobs, 3);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(jobs[i].errors, 0, "job %d: %d errors", i, jobs[i].errors);
    }
    cr_assert_eq(FLUSH(o.blk), 0);
    close_all(&o);
    /* The data is in the file itself. */
    for (int i = 0; i < 3; i++) {
        read_file(path, i * 2 * MiB, buf, 1);
        cr_assert(buf[0] == pattern_byte(i * 2 * MiB) || buf[0] == (uint8_t)(i * 31));
    }
}

AIO_TEST(rw_on_iothreads)
{
    check_rw_on_iothreads(false);
}

AIO_TEST(rw_on_iothreads_direct)
{
    check_rw_on_iothreads(true);
}

AIO_TEST(write_lands_in_file)
{
    char path[128];
    uint8_t buf[8192], check[8192 + 64];
    TestOpen o;

    make_path(path, sizeof(path), "w.img");
    create_image(path, MiB, true);
    o = open_ok(raw_def(path, NULL, NULL), RW_PERM);
    memset(buf, 0x5a, sizeof(buf));
    cr_assert_eq(WRITE(o.blk, 1000, buf, 3000), 0);
    read_file(path, 0, check, sizeof(check));
    for (int i = 0; i < 8192; i++) {
        uint8_t want = (i >= 1000 && i < 4000) ? 0x5a : pattern_byte(i);
        cr_assert_eq(check[i], want, "byte %d", i);
    }
    close_all(&o);
}

/* The node is 1 MiB but the file shrinks behind its back: the part past
 * the new end of file reads as zeroes, the rest as data. */
AIO_TEST(short_read_at_eof_reads_zeroes)
{
    char path[128];
    uint8_t *buf = malloc(MiB);
    TestOpen o;

    make_path(path, sizeof(path), "s.img");
    create_image(path, MiB, true);
    o = open_ok(raw_def(path, NULL, NULL), BLK_PERM_CONSISTENT_READ);
    cr_assert_eq(truncate(path, 300000), 0);
    memset(buf, 0xee, MiB);
    cr_assert_eq(READ(o.blk, 0, buf, MiB), 0);
    for (int64_t i = 0; i < MiB; i++) {
        cr_assert_eq(buf[i], i < 300000 ? pattern_byte(i) : 0, "byte %lld", (long long)i);
    }
    free(buf);
    close_all(&o);
}

/* O_DIRECT on a file whose length is not a multiple of the alignment, with
 * buffers that are not aligned at all (bounce buffers). */
AIO_TEST(direct_unaligned_buffers_and_tail)
{
    char path[128];
    uint8_t *mem = malloc(3 * 65536 + 16), *buf = mem + 1;
    uint8_t check[70000];
    int64_t len = 100000 + 123;
    TestOpen o;

    make_path(path, sizeof(path), "d.img");
    create_image(path, len, true);
    o = open_ok(raw_def(path, NULL, json_pack("{s:{s:b}}", "cache", "direct", 1)),
                RW_PERM);
    /* Unaligned buffer, unaligned offset and length, up to the odd end. */
    int rr = READ(o.blk, 4097, buf, len - 4097);
    cr_assert_eq(rr, 0, "read: %s (align %u mem %u)", strerror(-rr), o.bs->bl.request_alignment, o.bs->bl.min_mem_alignment);
    for (int64_t i = 0; i < len - 4097; i++) {
        cr_assert_eq(buf[i], pattern_byte(4097 + i), "byte %lld", (long long)i);
    }
    memset(buf, 0xa5, 65536);
    cr_assert_eq(WRITE(o.blk, 333, buf, 65536), 0);
    cr_assert_eq(FLUSH(o.blk), 0);
    read_file(path, 0, check, sizeof(check));
    for (int i = 0; i < 70000; i++) {
        uint8_t want = (i >= 333 && i < 333 + 65536) ? 0xa5 : pattern_byte(i);
        cr_assert_eq(check[i], want, "byte %d", i);
    }
    /* A multi-buffer vector whose pieces are not aligned either. */
    {
        IOVector v;
        TestReq r = { .kind = REQ_READ, .blk = o.blk, .off = 73728, .len = 8192 };
        iov_init(&v, 2);
        iov_add(&v, mem + 3, 100);
        iov_add(&v, mem + 200, 8092);
        r.qiov = &v;
        cr_assert_eq(do_req(r, NULL), 0);
        for (int i = 0; i < 100; i++) {
            cr_assert_eq(mem[3 + i], pattern_byte(73728 + i));
        }
        for (int i = 0; i < 8092; i++) {
            cr_assert_eq(mem[200 + i], pattern_byte(73728 + 100 + i));
        }
        iov_destroy(&v);
    }
    cr_assert_eq(bdrv_getlength(o.bs), len);
    free(mem);
    close_all(&o);
}

/* ------------------------------------------------------------------------
 * Zeroes, discard, block status, truncate
 */

static bool is_hole(const char *path, off_t off)
{
    int fd = open(path, O_RDONLY);
    off_t h = lseek(fd, off, SEEK_HOLE);
    close(fd);
    return h == off;
}

static bool is_data(const char *path, off_t off)
{
    int fd = open(path, O_RDONLY);
    off_t d = lseek(fd, off, SEEK_DATA);
    close(fd);
    return d == off;
}

AIO_TEST(zeroes_and_discard)
{
    char path[128];
    uint8_t *buf = malloc(256 * 1024);
    TestOpen o;

    make_path(path, sizeof(path), "z.img");
    create_image(path, 2 * MiB, true);
    o = open_ok(raw_def(path, NULL, NULL), RW_PERM);

    /* MAY_UNMAP: a hole that reads as zeroes. */
    cr_assert_eq(ZERO(o.blk, 256 * 1024, 256 * 1024, BDRV_REQ_MAY_UNMAP), 0);
    cr_assert(is_hole(path, 256 * 1024));
    cr_assert_eq(READ(o.blk, 256 * 1024, buf, 256 * 1024), 0);
    cr_assert(all_bytes(buf, 256 * 1024, 0));

    /* Without it: zeroes, blocks stay allocated. */
    cr_assert_eq(ZERO(o.blk, MiB, 256 * 1024, 0), 0);
    cr_assert(is_data(path, MiB));
    cr_assert_eq(READ(o.blk, MiB, buf, 256 * 1024), 0);
    cr_assert(all_bytes(buf, 256 * 1024, 0));

    /* Discard punches a hole. */
    cr_assert_eq(DISCARD(o.blk, 1536 * 1024, 256 * 1024), 0);
    cr_assert(is_hole(path, 1536 * 1024));
    cr_assert_eq(READ(o.blk, 1536 * 1024, buf, 256 * 1024), 0);
    cr_assert(all_bytes(buf, 256 * 1024, 0));

    /* The neighbours are untouched. */
    cr_assert_eq(READ(o.blk, 0, buf, 256 * 1024), 0);
    for (int i = 0; i < 256 * 1024; i++) {
        cr_assert_eq(buf[i], pattern_byte(i));
    }
    cr_assert_eq(bdrv_getlength(o.bs), 2 * MiB);
    free(buf);
    close_all(&o);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_size, 2 * MiB);
}

/* The file shrank behind the node's back: zeroing the part past the new
 * end of file grows the file again instead of leaving it short. */
AIO_TEST(zeroes_past_end_of_shrunk_file)
{
    char path[128];
    uint8_t *buf = malloc(256 * 1024);
    struct stat st;
    TestOpen o;

    make_path(path, sizeof(path), "zt.img");
    create_image(path, MiB, true);
    o = open_ok(raw_def(path, NULL, NULL), RW_PERM);
    cr_assert_eq(truncate(path, 512 * 1024), 0);

    cr_assert_eq(ZERO(o.blk, 640 * 1024, 128 * 1024, BDRV_REQ_MAY_UNMAP), 0);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_size, 768 * 1024);
    cr_assert_eq(ZERO(o.blk, 896 * 1024, 128 * 1024, 0), 0);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_size, MiB);
    memset(buf, 0xee, 256 * 1024);
    cr_assert_eq(READ(o.blk, 768 * 1024, buf, 256 * 1024), 0);
    cr_assert(all_bytes(buf, 256 * 1024, 0));
    free(buf);
    close_all(&o);
}

typedef struct StatusRun {
    BlockNode *bs;
    int64_t off, bytes, pnum, map;
    BlockNode *file;
    int ret;
} StatusRun;

static void coroutine_fn node_status_co(void *opaque)
{
    StatusRun *s = opaque;

    bdrv_graph_co_rdlock();
    s->ret = bdrv_co_block_status(s->bs, false, s->off, s->bytes, &s->pnum,
                                  &s->map, &s->file);
    bdrv_graph_co_rdunlock();
}

static int node_status(BlockNode *bs, int64_t off, int64_t bytes, int64_t *pnum,
                       int64_t *map)
{
    StatusRun s = { .bs = bs, .off = off, .bytes = bytes };
    run_co(node_status_co, &s);
    *pnum = s.pnum;
    *map = s.map;
    return s.ret;
}

AIO_TEST(block_status_on_sparse_file)
{
    char path[128];
    uint8_t buf[65536];
    int64_t pnum, map;
    TestOpen o;
    int ret;

    make_path(path, sizeof(path), "sparse.img");
    create_image(path, 4 * MiB, false);
    o = open_ok(raw_def(path, NULL, NULL), RW_PERM);
    memset(buf, 1, sizeof(buf));
    cr_assert_eq(WRITE(o.blk, 0, buf, 65536), 0);
    cr_assert_eq(WRITE(o.blk, 2 * MiB, buf, 65536), 0);

    /* The file node: DATA / ZERO from SEEK_DATA / SEEK_HOLE. */
    BlockNode *f = find_node("f0");
    cr_assert(f);
    ret = node_status(f, 0, 4 * MiB, &pnum, &map);
    cr_assert(ret >= 0);
    cr_assert(ret & BDRV_BLOCK_DATA, "ret %x", ret);
    cr_assert(ret & BDRV_BLOCK_ALLOCATED);
    cr_assert(ret & BDRV_BLOCK_OFFSET_VALID);
    cr_assert_eq(pnum, 65536);
    cr_assert_eq(map, 0);
    ret = node_status(f, 65536, 4 * MiB - 65536, &pnum, &map);
    cr_assert(ret & BDRV_BLOCK_ZERO, "ret %x", ret);
    cr_assert(!(ret & BDRV_BLOCK_DATA));
    cr_assert_eq(pnum, 2 * MiB - 65536);
    cr_assert_eq(map, 65536);
    ret = node_status(f, 2 * MiB + 4096, 100, &pnum, &map);
    cr_assert(ret & BDRV_BLOCK_DATA);
    cr_assert_eq(pnum, 100);
    ret = node_status(f, 3 * MiB, MiB, &pnum, &map);
    cr_assert(ret & BDRV_BLOCK_ZERO);
    cr_assert_eq(pnum, MiB);

    /* Through raw and the backend: the same runs. */
    TestReq r = { .kind = REQ_STATUS, .blk = o.blk, .off = 65536, .len = 4 * MiB - 65536 };
    do_req(r, &r);
    cr_assert(r.ret >= 0 && (r.ret & BDRV_BLOCK_ZERO), "ret %x", r.ret);
    cr_assert_eq(r.pnum, 2 * MiB - 65536);
    r = (TestReq){ .kind = REQ_STATUS, .blk = o.blk, .off = 2 * MiB, .len = MiB };
    do_req(r, &r);
    cr_assert(r.ret >= 0 && (r.ret & BDRV_BLOCK_DATA), "ret %x", r.ret);
    cr_assert_eq(r.pnum, 65536);
    close_all(&o);
}

AIO_TEST(truncate_grows_and_shrinks)
{
    char path[128];
    uint8_t buf[4096];
    struct stat st;
    TestReq r;
    TestOpen o;

    make_path(path, sizeof(path), "t.img");
    create_image(path, MiB, true);
    o = open_ok(raw_def(path, NULL, NULL), RWR_PERM);

    r = (TestReq){ .kind = REQ_TRUNCATE, .blk = o.blk, .off = 3 * MiB };
    cr_assert_eq(do_req(r, &r), 0, "%s", r.err);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_size, 3 * MiB);
    cr_assert_eq(blk_getlength(o.blk), 3 * MiB);
    cr_assert_eq(bdrv_getlength(find_node("f0")), 3 * MiB);
    /* The new part reads as zeroes and can be written. */
    cr_assert_eq(READ(o.blk, 2 * MiB, buf, 4096), 0);
    cr_assert(all_bytes(buf, 4096, 0));
    memset(buf, 9, sizeof(buf));
    cr_assert_eq(WRITE(o.blk, 3 * MiB - 4096, buf, 4096), 0);

    r = (TestReq){ .kind = REQ_TRUNCATE, .blk = o.blk, .off = 512 * 1024 };
    cr_assert_eq(do_req(r, &r), 0, "%s", r.err);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_size, 512 * 1024);
    cr_assert_eq(blk_getlength(o.blk), 512 * 1024);
    cr_assert_neq(READ(o.blk, 512 * 1024, buf, 4096), 0);
    close_all(&o);
}

/* ------------------------------------------------------------------------
 * raw: the offset/size window
 */

Test(file, raw_window)
{
    char path[128];
    uint8_t buf[8192], check[8192 + 64];
    TestReq r;
    TestOpen o;

    make_path(path, sizeof(path), "win.img");
    create_image(path, MiB, true);
    o = open_ok(raw_def(path, json_pack("{s:I, s:I}", "offset", (json_int_t)65536,
                                        "size", (json_int_t)131072), NULL),
                RWR_PERM);
    cr_assert_eq(blk_getlength(o.blk), 131072);

    /* Reads see the file from the offset on. */
    cr_assert_eq(READ(o.blk, 0, buf, 4096), 0);
    for (int i = 0; i < 4096; i++) {
        cr_assert_eq(buf[i], pattern_byte(65536 + i));
    }
    /* Writes land at offset + x in the file. */
    memset(buf, 0x77, sizeof(buf));
    cr_assert_eq(WRITE(o.blk, 131072 - 8192, buf, 8192), 0);
    read_file(path, 65536 + 131072 - 8192, check, 8192 + 16);
    cr_assert(all_bytes(check, 8192, 0x77));
    read_file(path, 65536 + 131072, check, 16);
    for (int i = 0; i < 16; i++) {
        cr_assert_eq(check[i], pattern_byte(65536 + 131072 + i));
    }
    /* Nothing leaves the window. */
    cr_assert_lt(READ(o.blk, 131072, buf, 512), 0);
    cr_assert_lt(WRITE(o.blk, 131072 - 512, buf, 1024), 0);
    cr_assert_lt(ZERO(o.blk, 131072, 512, 0), 0);
    read_file(path, 65536 + 131072, check, 1024);
    for (int i = 0; i < 1024; i++) {
        cr_assert_eq(check[i], pattern_byte(65536 + 131072 + i));
    }
    /* Zeroes inside the window land inside it. */
    cr_assert_eq(ZERO(o.blk, 0, 4096, 0), 0);
    read_file(path, 65536 - 16, check, 4096 + 32);
    for (int i = 0; i < 16; i++) {
        cr_assert_eq(check[i], pattern_byte(65536 - 16 + i));
    }
    cr_assert(all_bytes(check + 16, 4096, 0));
    /* A window cannot be resized. */
    r = (TestReq){ .kind = REQ_TRUNCATE, .blk = o.blk, .off = 4096 };
    cr_assert_lt(do_req(r, &r), 0);
    close_all(&o);
}

Test(file, raw_window_errors)
{
    char path[128];
    TestOpen o;

    make_path(path, sizeof(path), "win.img");
    create_image(path, MiB, false);
    o = open_def(raw_def(path, json_pack("{s:I}", "offset", (json_int_t)2 * MiB), NULL),
                 0, 0);
    cr_assert_null(o.bs);
    cr_assert(strstr(o.err, "Offset (2097152) cannot be greater than size of the "
                     "containing file (1048576)"), "got: %s", o.err);
    o = open_def(raw_def(path, json_pack("{s:I, s:I}", "offset", (json_int_t)4096,
                                         "size", (json_int_t)MiB), NULL), 0, 0);
    cr_assert_null(o.bs);
    cr_assert(strstr(o.err, "The sum of offset (4096) and size (1048576)"), "got: %s", o.err);
    o = open_def(raw_def(path, json_pack("{s:I}", "size", (json_int_t)1000), NULL), 0, 0);
    cr_assert_null(o.bs);
    cr_assert(strstr(o.err, "Specified size is not multiple of 512"), "got: %s", o.err);
    /* Nothing was left open: the same node names are free again. */
    o = open_ok(raw_def(path, NULL, NULL), 0);
    close_all(&o);
}

/* ------------------------------------------------------------------------
 * raw: the probing guard
 */

static int fake_qcow2_probe(const uint8_t *buf, int len, const char *filename)
{
    return len >= 4 && memcmp(buf, "QFI\xfb", 4) == 0 ? 100 : 0;
}

static const BlockDriver fake_qcow2 = {
    .format_name = "qcow2",
    .probe = fake_qcow2_probe,
};

static void coroutine_fn register_fake_qcow2_co(void *opaque)
{
    global_lock_assert_held();
    if (!bdrv_find_driver("qcow2")) {
        bdrv_register(&fake_qcow2);
    }
}

/* A qcow2 version 3 header start: what the real qcow2 probe looks for too. */
static void qcow2_magic(uint8_t *buf)
{
    memcpy(buf, "QFI\xfb\0\0\0\3", 8);
}

static TestOpen open_probed(const char *path)
{
    TestOpen o = { .def = raw_def(path, NULL, NULL), .perm = RW_PERM,
               .shared = BLK_PERM_ALL, .probed = true };
    run_co(register_fake_qcow2_co, NULL);
    run_co(test_open_co, &o);
    cr_assert(o.blk, "open: %s", o.err);
    return o;
}

Test(file, probed_raw_refuses_format_header)
{
    char path[128];
    uint8_t buf[4096], check[512];
    TestOpen o;

    make_path(path, sizeof(path), "p.img");
    create_image(path, MiB, true);
    o = open_probed(path);

    /* A whole first sector carrying a qcow2 header. */
    memset(buf, 0, sizeof(buf));
    qcow2_magic(buf);
    cr_assert_eq(WRITE(o.blk, 0, buf, 4096), -EPERM);
    /* Just the magic bytes, at offset 0. */
    cr_assert_eq(WRITE(o.blk, 0, buf, 8), -EPERM);
    read_file(path, 0, check, 512);
    for (int i = 0; i < 512; i++) {
        cr_assert_eq(check[i], pattern_byte(i), "byte %d changed", i);
    }
    /* The magic in two halves: the second write would complete it. */
    cr_assert_eq(WRITE(o.blk, 0, "QF", 2), 0);
    cr_assert_eq(WRITE(o.blk, 2, "I\xfb\0\0\0\3", 6), -EPERM);
    read_file(path, 0, check, 4);
    cr_assert(check[0] == 'Q' && check[1] == 'F' && check[2] == pattern_byte(2));
    /* Ordinary data in sector 0, and anything past it, are fine. */
    memset(buf, 0x11, sizeof(buf));
    cr_assert_eq(WRITE(o.blk, 0, buf, 4096), 0);
    qcow2_magic(buf);
    cr_assert_eq(WRITE(o.blk, 512, buf, 512), 0);
    cr_assert_eq(ZERO(o.blk, 0, 4096, 0), 0);
    close_all(&o);

    /* Not probed: the user said raw, so the header may be written. */
    o = open_ok(raw_def(path, NULL, NULL), RW_PERM);
    qcow2_magic(buf);
    cr_assert_eq(WRITE(o.blk, 0, buf, 512), 0);
    close_all(&o);
}

/* ------------------------------------------------------------------------
 * Image locking against QEMU
 */

/* Runs a shell command; returns its exit status and its output. */
static int run_cmd(char *out, size_t outlen, const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;
    FILE *p;
    size_t n = 0;
    int status;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    p = popen(cmd, "r");
    cr_assert(p, "popen %s", cmd);
    while (n + 1 < outlen) {
        size_t r = fread(out + n, 1, outlen - 1 - n, p);
        if (r == 0) {
            break;
        }
        n += r;
    }
    out[n] = 0;
    status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/*
 * qemu-img as the oracle.  Which qemu-img commands conflict depends on the
 * format: for a qcow2 image `qemu-img info` refuses to share "write" (its
 * metadata could change under it); for a raw image QEMU 7.2's `info` takes
 * and refuses nothing, but `convert` reads and does not share "write".
 */
Test(file, qemu_img_info_refuses_image_we_write)
{
    char path[128], out[4096];
    TestOpen o;

    make_path(path, sizeof(path), "lock.qcow2");
    cr_assert_eq(run_cmd(out, sizeof(out), "qemu-img create -q -f qcow2 '%s' 1M 2>&1",
                         path), 0, "%s", out);
    /* The file node alone, held for writing as a qcow2 node would. */
    o = open_def(file_def(path), RW_PERM, QEMU_SHARED);
    cr_assert(o.blk, "open: %s", o.err);

    cr_assert_neq(run_cmd(out, sizeof(out), "qemu-img info '%s' 2>&1", path), 0,
                  "qemu-img info succeeded on a locked image: %s", out);
    cr_assert(strstr(out, "Failed to get shared \"write\" lock\n"
                          "Is another process using the image"), "got: %s", out);
    cr_assert_eq(run_cmd(out, sizeof(out), "qemu-img info -U '%s' 2>&1", path), 0,
                 "qemu-img info -U: %s", out);

    close_all(&o);
    cr_assert_eq(run_cmd(out, sizeof(out), "qemu-img info '%s' 2>&1", path), 0,
                 "after release: %s", out);
}

Test(file, qemu_img_convert_and_resize_refuse_raw_we_write)
{
    char path[128], copy[128], out[4096];
    TestOpen o;

    make_path(path, sizeof(path), "lock.img");
    make_path(copy, sizeof(copy), "copy.img");
    create_image(path, MiB, false);
    o = open_def(raw_def(path, NULL, NULL), RW_PERM, QEMU_SHARED);
    cr_assert(o.blk, "open: %s", o.err);

    cr_assert_neq(run_cmd(out, sizeof(out), "qemu-img convert -f raw -O raw '%s' '%s' 2>&1",
                          path, copy), 0, "convert succeeded: %s", out);
    cr_assert(strstr(out, "Failed to get shared \"write\" lock"), "got: %s", out);
    cr_assert_neq(run_cmd(out, sizeof(out), "qemu-img resize -f raw '%s' 2M 2>&1", path),
                  0, "resize succeeded: %s", out);
    cr_assert(strstr(out, "Failed to get \"write\" lock"), "got: %s", out);
    cr_assert_eq(run_cmd(out, sizeof(out), "qemu-img convert -U -f raw -O raw '%s' '%s' 2>&1",
                         path, copy), 0, "convert -U: %s", out);

    close_all(&o);
    cr_assert_eq(run_cmd(out, sizeof(out), "qemu-img convert -f raw -O raw '%s' '%s' 2>&1",
                         path, copy), 0, "after release: %s", out);
}

Test(file, locking_off_takes_no_locks)
{
    char path[128], out[4096];
    TestOpen o;

    make_path(path, sizeof(path), "nolock.img");
    create_image(path, MiB, false);
    o = open_def(raw_def(path, NULL, json_pack("{s:s}", "locking", "off")),
                 RW_PERM, QEMU_SHARED);
    cr_assert(o.blk, "open: %s", o.err);
    cr_assert_eq(run_cmd(out, sizeof(out), "qemu-img resize -f raw '%s' 2M 2>&1", path),
                 0, "qemu-img resize: %s", out);
    close_all(&o);
}

/* A read-only user that shares everything does not stand in QEMU's way,
 * and its file is really opened read-only. */
Test(file, read_only_sharing_reader_lets_qemu_write)
{
    char path[128], out[4096];
    uint8_t buf[512];
    TestOpen o;

    make_path(path, sizeof(path), "ro.img");
    create_image(path, MiB, true);
    o = open_def(raw_def(path, json_pack("{s:b}", "read-only", 1),
                         json_pack("{s:s, s:s}", "locking", "on", "aio", "io_uring")),
                 BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    cr_assert(o.blk, "open: %s", o.err);
    cr_assert(find_node("f0")->read_only);
    cr_assert_eq(READ(o.blk, 0, buf, 512), 0);
    cr_assert_eq(buf[5], pattern_byte(5));
    cr_assert_eq(run_cmd(out, sizeof(out), "qemu-io -f raw -c 'write -P 7 0 512' '%s' 2>&1",
                         path), 0, "qemu-io write: %s", out);
    cr_assert(!strstr(out, "lock"), "got: %s", out);
    close_all(&o);
}

/* Two nodes of this process on one file conflict like two processes. */
Test(file, second_writer_in_process_refused)
{
    char path[128];
    TestOpen a, b;

    make_path(path, sizeof(path), "two.img");
    create_image(path, MiB, false);
    a = open_def(raw_def(path, NULL, NULL), RW_PERM, QEMU_SHARED);
    cr_assert(a.blk, "open: %s", a.err);
    b = open_def(json_pack("{s:s, s:s, s:{s:s, s:s}}", "driver", "raw", "node-name",
                           "disk2", "file", "driver", "file", "filename", path),
                 RW_PERM, QEMU_SHARED);
    cr_assert_null(b.blk);
    cr_assert(strstr(b.err, "lock"), "got: %s", b.err);
    cr_assert(strstr(b.err, "Is another process using the image"), "got: %s", b.err);
    close_all(&a);
}

static pid_t read_pidfile(const char *path)
{
    FILE *f = fopen(path, "r");
    int pid = -1;

    if (f) {
        if (fscanf(f, "%d", &pid) != 1) {
            pid = -1;
        }
        fclose(f);
    }
    return pid;
}

/* Terminates a (non-child) process and waits for it to be gone, through a
 * pidfd; the poll timeout is only a guard. */
static void stop_process(pid_t pid)
{
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    struct pollfd p = { .fd = pidfd, .events = POLLIN };

    cr_expect(pidfd >= 0, "pidfd_open: %s", strerror(errno));
    if (pidfd < 0 || kill(pid, SIGTERM) < 0) {
        return;
    }
    cr_expect_eq(poll(&p, 1, 20000), 1, "qemu-storage-daemon did not exit");
    close(pidfd);
}

Test(file, qemu_storage_daemon_lock_refuses_our_writer, .timeout = 90)
{
    char path[128], mnt[128], pidfile[128], out[4096];
    pid_t pid;
    TestOpen o;
    int fd;

    make_path(path, sizeof(path), "qsd.img");
    make_path(mnt, sizeof(mnt), "qsd.mnt");
    make_path(pidfile, sizeof(pidfile), "qsd.pid");
    create_image(path, MiB, false);
    fd = open(mnt, O_CREAT | O_WRONLY, 0644);
    cr_assert(fd >= 0);
    close(fd);

    /* --daemonize: the command returns once the export is up. */
    cr_assert_eq(run_cmd(out, sizeof(out),
                         "qemu-storage-daemon --daemonize --pidfile '%s' "
                         "--blockdev driver=file,node-name=f,filename='%s' "
                         "--blockdev driver=raw,node-name=r,file=f "
                         "--export type=fuse,id=e,node-name=r,mountpoint='%s',"
                         "writable=on 2>&1", pidfile, path, mnt), 0,
                 "qemu-storage-daemon: %s", out);
    pid = read_pidfile(pidfile);
    cr_assert(pid > 0);
    qsd_pid = pid;

    o = open_def(raw_def(path, NULL, NULL), RW_PERM, QEMU_SHARED);
    cr_assert_null(o.blk, "opened for writing while qemu-storage-daemon writes");
    cr_assert(strstr(o.err, "Failed to get shared \"write\" lock"), "got: %s", o.err);
    cr_assert(strstr(o.err, "Is another process using the image"), "got: %s", o.err);
    /* Reading while sharing writes is fine. */
    o = open_def(raw_def(path, NULL, NULL), BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    cr_assert(o.blk, "read-only user refused: %s", o.err);
    close_all(&o);

    stop_process(pid);
    qsd_pid = 0;
    o = open_def(raw_def(path, NULL, NULL), RW_PERM, QEMU_SHARED);
    cr_assert(o.blk, "after qemu-storage-daemon exited: %s", o.err);
    close_all(&o);
}
