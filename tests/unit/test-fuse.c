/*
 * test-fuse.c — the FUSE export, mounted for real.
 *
 * Each test builds file+raw over a temporary image, starts two IOThreads,
 * exports the node at a temporary regular file, and drives that file with
 * plain syscalls from pthreads while the main thread runs the main loop.
 * The main thread never blocks on the FUSE file: it waits for the worker by
 * iterating its loop until the worker says it is done.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block-gs.h"
#include "block-io.h"
#include "fake-drivers.h"
#include "fuse/export.h"
#include "loop/loop.h"
#include "util/threads.h"

#define IMG_SIZE (8 << 20)

static char dir[64], img[128], mnt[128];
static IOThread *io[2];

/* ---- running things on the main loop and on worker threads ---- */

typedef struct ThreadCall {
    void (*fn)(void *);
    void *arg;
    atomic_bool done;
} ThreadCall;

static void noop_bh(void *opaque) { }

static void *thread_entry(void *opaque)
{
    ThreadCall *t = opaque;

    t->fn(t->arg);
    atomic_store(&t->done, true);
    loop_schedule(loop_main(), noop_bh, NULL);   /* wakes the main loop */
    return NULL;
}

/* Runs fn(arg) on n new threads; the main loop keeps running meanwhile. */
static void run_threads(int n, void (*fn)(void *), void **args)
{
    ThreadCall t[8];
    pthread_t th[8];
    int i, left;

    for (i = 0; i < n; i++) {
        t[i] = (ThreadCall){ fn, args ? args[i] : NULL, false };
        pthread_create(&th[i], NULL, thread_entry, &t[i]);
    }
    do {
        loop_iterate(loop_main(), true);
        for (left = 0, i = 0; i < n; i++) {
            left += !atomic_load(&t[i].done);
        }
    } while (left);
    for (i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
    }
}

static void run_thread(void (*fn)(void *), void *arg)
{
    run_threads(1, fn, &arg);
}

/* ---- the graph and the export ---- */

/* Takes the global lock for the whole test (the main thread runs GS code). */
static void setup(void) NO_THREAD_SAFETY_ANALYSIS
{
    int fd;

    test_env_init();
    io[0] = iothread_create("io0");
    io[1] = iothread_create("io1");

    test_tmpdir_create(dir, sizeof(dir), "test-fuse");
    snprintf(img, sizeof(img), "%s/disk.raw", dir);
    snprintf(mnt, sizeof(mnt), "%s/disk.img", dir);
    fd = open(img, O_CREAT | O_RDWR, 0644);
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, IMG_SIZE), 0);
    close(fd);
    fd = open(mnt, O_CREAT | O_RDWR, 0600);
    cr_assert_geq(fd, 0);
    close(fd);
}

static void teardown(void)
{
    umount2(mnt, MNT_DETACH);
    unlink(img);
    unlink(mnt);
    rmdir(dir);
}

static void open_node_co(void *opaque)
{
    Error **errp = opaque;
    json_t *def = json_pack("{s:s, s:s, s:{s:s, s:s}}", "driver", "raw",
                            "node-name", "disk", "file", "driver", "file",
                            "filename", img);

    global_lock_assert_held();
    bdrv_co_open_blockdev(def, errp);
    json_decref(def);
}

typedef struct AddCall {
    json_t *def;
    BlockExport *exp;
    Error *err;
} AddCall;

static void add_co(void *opaque)
{
    AddCall *a = opaque;

    global_lock_assert_held();
    a->exp = block_export_add(a->def, &a->err);
}

static BlockExport *try_export(json_t *def, Error **errp)
{
    AddCall a = { def, NULL, NULL };

    run_co(add_co, &a);
    json_decref(def);
    *errp = a.err;
    return a.exp;
}

/* Opens the node and exports it with `extra` options merged in. */
static BlockExport *export_node_with(const char *node_def, const char *extra_json);

static BlockExport *export_with(const char *extra_json)
{
    return export_node_with(NULL, extra_json);
}

/* The same for a node given by definition (NULL: file+raw over img). */
static BlockExport *export_node_with(const char *node_def, const char *extra_json)
{
    json_t *def = json_pack("{s:s, s:s, s:s, s:s}", "type", "fuse", "id", "e0",
                            "node-name", "disk", "mountpoint", mnt);
    json_t *extra = json_loads(extra_json, 0, NULL);
    Error *err = NULL;
    BlockExport *exp;

    if (node_def) {
        global_lock_assert_held();
        cr_assert_not_null(open_def(node_def, &err), "open: %s", error_get_pretty(err));
    } else {
        run_co(open_node_co, &err);
        cr_assert_null(err, "open: %s", err ? error_get_pretty(err) : "");
    }
    json_object_update(def, extra);
    json_decref(extra);
    exp = try_export(def, &err);
    if (!exp) {
        cr_assert_fail("export: %s", error_get_pretty(err));
    }
    return exp;
}

static void del_co(void *opaque)
{
    global_lock_assert_held();
    block_export_del(opaque);
}

static bool is_mounted(const char *path)
{
    char line[8192], want[256];
    FILE *f = fopen("/proc/self/mountinfo", "r");
    bool found = false;

    snprintf(want, sizeof(want), " %s ", path);
    while (f && fgets(line, sizeof(line), f)) {
        found |= strstr(line, want) != NULL;
    }
    if (f) {
        fclose(f);
    }
    return found;
}

static void delete_export(BlockExport *exp)
{
    run_co(del_co, exp);
    cr_assert(!is_mounted(mnt), "still mounted after block_export_del");
}

/* ---- I/O bodies, run on worker threads ---- */

typedef struct Region {
    int fd;
    off_t start, len;
    uint8_t *ref;       /* the expected content of [start, start+len) */
    unsigned seed;
    int errors;
} Region;

/* Random pwrite/pread of 512 B .. 256 KiB inside the region, checked. */
static void random_io(void *opaque)
{
    Region *r = opaque;
    uint8_t *buf = malloc(256 << 10);
    int i;

    for (i = 0; i < 200; i++) {
        size_t len = 512 * (1 + rand_r(&r->seed) % 512);
        off_t off = 512 * (rand_r(&r->seed) % ((r->len - len) / 512 + 1));

        if (rand_r(&r->seed) % 2) {
            memset(buf, rand_r(&r->seed), len);
            if (pwrite(r->fd, buf, len, r->start + off) != (ssize_t)len) {
                r->errors++;
            }
            memcpy(r->ref + off, buf, len);
        } else if (pread(r->fd, buf, len, r->start + off) != (ssize_t)len ||
                   memcmp(buf, r->ref + off, len) != 0) {
            r->errors++;
        }
    }
    free(buf);
}

TestSuite(fuse, .init = setup, .fini = teardown, .timeout = 60);

Test(fuse, parallel_random_io_matches_reference)
{
    BlockExport *exp = export_with("{\"writable\": true}");
    Region r[4];
    void *args[4];
    uint8_t *all = calloc(1, IMG_SIZE), *back = malloc(IMG_SIZE);
    int fd, i;

    fd = open(mnt, O_RDWR);
    cr_assert_geq(fd, 0, "open: %s", strerror(errno));
    for (i = 0; i < 4; i++) {
        r[i] = (Region){ fd, i * (IMG_SIZE / 4), IMG_SIZE / 4,
                         all + i * (IMG_SIZE / 4), 1234u + i, 0 };
        args[i] = &r[i];
    }
    run_threads(4, random_io, args);
    for (i = 0; i < 4; i++) {
        cr_expect_eq(r[i].errors, 0, "thread %d: %d errors", i, r[i].errors);
    }
    close(fd);
    delete_export(exp);

    /* The image itself holds what was written. */
    fd = open(img, O_RDONLY);
    cr_assert_eq(pread(fd, back, IMG_SIZE, 0), IMG_SIZE);
    cr_expect(memcmp(all, back, IMG_SIZE) == 0, "image differs from reference");
    close(fd);
    free(all);
    free(back);
}

typedef struct Probe {
    int fd;
    ssize_t ret[8];
    int err[8];
    struct stat st;
} Probe;

#define PROBE(p, i, call) \
    do { errno = 0; (p)->ret[i] = (call); (p)->err[i] = errno; } while (0)

static void eof_probe(void *opaque)
{
    Probe *p = opaque;
    char buf[8192];

    memset(buf, 'x', sizeof(buf));
    fstat(p->fd, &p->st);
    PROBE(p, 0, pread(p->fd, buf, 8192, IMG_SIZE - 4096));    /* short read */
    PROBE(p, 1, pread(p->fd, buf, 4096, IMG_SIZE));           /* EOF */
    PROBE(p, 2, pwrite(p->fd, buf, 4096, IMG_SIZE));          /* ENOSPC */
    PROBE(p, 3, pwrite(p->fd, buf, 8192, IMG_SIZE - 4096));   /* short write */
    PROBE(p, 4, fsync(p->fd));
    PROBE(p, 5, ftruncate(p->fd, IMG_SIZE * 2));              /* not growable */
}

Test(fuse, end_of_file_behaves_like_a_device)
{
    BlockExport *exp = export_with("{\"writable\": true}");
    Probe p = { .fd = open(mnt, O_RDWR) };

    cr_assert_geq(p.fd, 0);
    run_thread(eof_probe, &p);
    cr_expect_eq(p.st.st_size, IMG_SIZE);
    cr_expect(S_ISREG(p.st.st_mode));
    cr_expect_eq(p.st.st_mode & 0777, 0644);
    cr_expect_eq(p.ret[0], 4096);
    cr_expect_eq(p.ret[1], 0);
    cr_expect(p.ret[2] == -1 && p.err[2] == ENOSPC, "write at EOF: %zd %d", p.ret[2], p.err[2]);
    cr_expect_eq(p.ret[3], 4096);
    cr_expect_eq(p.ret[4], 0);
    cr_expect(p.ret[5] == -1 && p.err[5] == EINVAL, "truncate: %zd %d", p.ret[5], p.err[5]);
    close(p.fd);
    delete_export(exp);
}

static void grow_probe(void *opaque)
{
    Probe *p = opaque;
    char buf[4096];

    memset(buf, 'g', sizeof(buf));
    PROBE(p, 0, pwrite(p->fd, buf, 4096, IMG_SIZE + 65536));
    fstat(p->fd, &p->st);
    PROBE(p, 1, ftruncate(p->fd, IMG_SIZE / 2));
    PROBE(p, 2, pread(p->fd, buf, 4096, IMG_SIZE / 2));       /* now EOF */
}

Test(fuse, growable_export_grows_and_shrinks)
{
    BlockExport *exp = export_with("{\"writable\": true, \"growable\": true}");
    Probe p = { .fd = open(mnt, O_RDWR) };
    struct stat st;

    cr_assert_geq(p.fd, 0);
    run_thread(grow_probe, &p);
    cr_expect_eq(p.ret[0], 4096, "write past EOF: %zd %d", p.ret[0], p.err[0]);
    cr_expect_eq(p.st.st_size, IMG_SIZE + 65536 + 4096);
    cr_expect_eq(p.ret[1], 0, "truncate: %d", p.err[1]);
    cr_expect_eq(p.ret[2], 0);
    close(p.fd);
    delete_export(exp);
    stat(img, &st);
    cr_expect_eq(st.st_size, IMG_SIZE / 2);
}

static void falloc_probe(void *opaque)
{
    Probe *p = opaque;
    char *buf = malloc(1 << 20), *zero = calloc(1, 1 << 20);

    memset(buf, 'f', 1 << 20);
    PROBE(p, 0, pwrite(p->fd, buf, 1 << 20, 1 << 20));
    PROBE(p, 1, fallocate(p->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                          (1 << 20) + 4096, 65536));
    PROBE(p, 2, fallocate(p->fd, FALLOC_FL_ZERO_RANGE, (1 << 20) + 262144, 8192));
    PROBE(p, 3, fallocate(p->fd, FALLOC_FL_COLLAPSE_RANGE, 0, 65536));
    pread(p->fd, buf, 1 << 20, 1 << 20);
    /* zeroes exactly where punched and zeroed, data elsewhere */
    p->ret[4] = memcmp(buf + 4096, zero, 65536) == 0 &&
                memcmp(buf + 262144, zero, 8192) == 0 &&
                buf[4095] == 'f' && buf[4096 + 65536] == 'f' &&
                buf[262143] == 'f' && buf[262144 + 8192] == 'f';
    free(buf);
    free(zero);
}

Test(fuse, fallocate_punches_and_zeroes)
{
    BlockExport *exp = export_with("{\"writable\": true}");
    Probe p = { .fd = open(mnt, O_RDWR) };

    cr_assert_geq(p.fd, 0);
    run_thread(falloc_probe, &p);
    cr_expect_eq(p.ret[0], 1 << 20);
    cr_expect_eq(p.ret[1], 0, "punch: %d", p.err[1]);
    cr_expect_eq(p.ret[2], 0, "zero range: %d", p.err[2]);
    cr_expect(p.ret[3] == -1 && p.err[3] == EOPNOTSUPP, "collapse: %zd %d", p.ret[3], p.err[3]);
    cr_expect(p.ret[4], "content after punch/zero is wrong");
    close(p.fd);
    delete_export(exp);
}

static void seek_probe(void *opaque)
{
    Probe *p = opaque;

    PROBE(p, 0, lseek(p->fd, 0, SEEK_DATA));
    PROBE(p, 1, lseek(p->fd, 2 << 20, SEEK_HOLE));
    PROBE(p, 2, lseek(p->fd, (2 << 20) + (1 << 20), SEEK_DATA));
    PROBE(p, 3, lseek(p->fd, IMG_SIZE, SEEK_DATA));
    PROBE(p, 4, lseek(p->fd, 0, SEEK_HOLE));
}

Test(fuse, seek_data_and_hole_follow_the_image)
{
    BlockExport *exp;
    Probe p = { 0 };
    char buf[65536];
    int fd = open(img, O_RDWR);

    /* data at [2 MiB, 2 MiB + 64 KiB), holes elsewhere */
    memset(buf, 'd', sizeof(buf));
    cr_assert_eq(pwrite(fd, buf, sizeof(buf), 2 << 20), (ssize_t)sizeof(buf));
    close(fd);
    exp = export_with("{}");
    p.fd = open(mnt, O_RDONLY);
    cr_assert_geq(p.fd, 0);
    run_thread(seek_probe, &p);
    cr_expect_eq(p.ret[0], 2 << 20, "SEEK_DATA 0: %zd %d", p.ret[0], p.err[0]);
    cr_expect_eq(p.ret[1], (2 << 20) + 65536, "SEEK_HOLE: %zd %d", p.ret[1], p.err[1]);
    cr_expect(p.ret[2] == -1 && p.err[2] == ENXIO, "SEEK_DATA after data: %zd %d", p.ret[2], p.err[2]);
    cr_expect(p.ret[3] == -1 && p.err[3] == ENXIO, "SEEK_DATA at EOF: %zd %d", p.ret[3], p.err[3]);
    cr_expect_eq(p.ret[4], 0);
    close(p.fd);
    delete_export(exp);
}

static void ro_probe(void *opaque)
{
    Probe *p = opaque;
    char buf[4096];
    int fd;

    PROBE(p, 0, open(mnt, O_RDWR));
    if (p->ret[0] >= 0) {
        close(p->ret[0]);
    }
    fd = open(mnt, O_RDONLY);
    PROBE(p, 1, pread(fd, buf, sizeof(buf), 0));
    fstat(fd, &p->st);
    close(fd);
}

Test(fuse, read_only_export_refuses_writes)
{
    BlockExport *exp = export_with("{\"iothread\": [\"io1\"]}");
    Probe p = { 0 };

    run_thread(ro_probe, &p);
    cr_expect(p.ret[0] == -1 && (p.err[0] == EROFS || p.err[0] == EACCES),
              "open O_RDWR: %zd %d", p.ret[0], p.err[0]);
    cr_expect_eq(p.ret[1], 4096);
    cr_expect_eq(p.st.st_mode & 0777, 0444);
    delete_export(exp);
}

static void unmount_from_outside(void *opaque)
{
    *(int *)opaque = umount2(mnt, 0);
}

static void on_gone(BlockExport *exp, void *opaque)
{
    atomic_store((atomic_bool *)opaque, true);
}

Test(fuse, unmount_underneath_calls_gone_callback)
{
    BlockExport *exp = export_with("{\"iothread\": \"io0\"}");
    atomic_bool gone = false;
    int ret = -1;

    global_lock_assert_held();
    block_export_set_gone_cb(exp, on_gone, &gone);
    run_thread(unmount_from_outside, &ret);
    cr_assert_eq(ret, 0, "umount: %s", strerror(errno));
    while (!atomic_load(&gone)) {
        loop_iterate(loop_main(), true);
    }
    delete_export(exp);
    /* The same file can be mounted again. */
    exp = try_export(json_pack("{s:s, s:s, s:s, s:s}", "type", "fuse", "id",
                               "e1", "node-name", "disk", "mountpoint", mnt),
                     &(Error *){ NULL });
    cr_assert_not_null(exp);
    delete_export(exp);
}

static char *add_error(json_t *def)
{
    Error *err = NULL;
    BlockExport *exp = try_export(def, &err);
    static char msg[512];

    cr_assert_null(exp);
    cr_assert_not_null(err);
    snprintf(msg, sizeof(msg), "%s", error_get_pretty(err));
    error_free(err);
    return msg;
}

static json_t *def_at(const char *id, const char *node, const char *path)
{
    return json_pack("{s:s, s:s, s:s, s:s}", "type", "fuse", "id", id,
                     "node-name", node, "mountpoint", path);
}

Test(fuse, bad_definitions_get_one_line_errors)
{
    BlockExport *exp = export_with("{}");
    char missing[160];

    global_lock_assert_held();
    snprintf(missing, sizeof(missing), "%s/nope", dir);
    cr_expect(strstr(add_error(def_at("e1", "disk", missing)), "does not exist"));
    cr_expect(strstr(add_error(def_at("e1", "disk", dir)), "is a directory"));
    cr_expect(strstr(add_error(def_at("e1", "disk", mnt)), "already mounted"));
    cr_expect(strstr(add_error(def_at("e1", "nosuchnode", missing)), "nosuchnode"));
    cr_expect(strstr(add_error(def_at("e0", "disk", missing)), "already in use"));
    cr_expect_eq(block_export_find("e0"), exp);
    cr_expect_null(block_export_find("e1"));
    delete_export(exp);
    cr_expect_null(block_export_find("e0"));
}

static void open_rw(void *opaque)
{
    *(int *)opaque = open(mnt, O_RDWR);
}

static void read_after_delete(void *opaque)
{
    Probe *p = opaque;
    char buf[512];

    PROBE(p, 0, pread(p->fd, buf, sizeof(buf), 0));
}

Test(fuse, delete_with_file_still_open_aborts_the_connection)
{
    BlockExport *exp = export_with("{\"writable\": true}");
    Probe p = { .fd = -1 };

    run_thread(open_rw, &p.fd);
    cr_assert_geq(p.fd, 0);
    /* Must not wait for the holder to close the file. */
    delete_export(exp);
    run_thread(read_after_delete, &p);
    cr_expect(p.ret[0] == -1 && (p.err[0] == ENOTCONN || p.err[0] == ENODEV ||
                                 p.err[0] == ECONNABORTED),
              "read after delete: %zd %d", p.ret[0], p.err[0]);
    close(p.fd);
}

Test(fuse, second_writer_of_the_node_is_refused)
{
    BlockExport *exp = export_with("{\"writable\": true}");
    char other[160], *msg;
    json_t *def;
    int fd;

    snprintf(other, sizeof(other), "%s/other.img", dir);
    fd = open(other, O_CREAT | O_RDWR, 0600);
    close(fd);
    def = def_at("e1", "disk", other);
    json_object_set_new(def, "writable", json_true());
    msg = add_error(def);
    /* The conflict names the user already holding the node. */
    cr_expect(strstr(msg, "e0") != NULL, "error does not name export e0: %s", msg);
    cr_expect(!is_mounted(other), "failed export left a mount behind");
    delete_export(exp);
    unlink(other);
}

/* ---- the buffer pool: more requests than buffers ---- */

#define POOL_READERS 40         /* > FUSE_POOL_MAX (32) buffers of one queue */

static BlockNode *hold_node;
static atomic_int max_held;

/* Runs on the IOThread whenever the hold filter parks a request. */
static void note_held(void *opaque)
{
    int now = hold_held(hold_node), old = atomic_load(&max_held);

    while (now > old && !atomic_compare_exchange_weak(&max_held, &old, now)) {
    }
    loop_schedule(loop_main(), noop_bh, NULL);   /* wake the main loop */
}

typedef struct PoolReader {
    int fd;
    off_t off;
    bool ok;
} PoolReader;

static void pool_read(void *opaque)
{
    PoolReader *r = opaque;
    char buf[4096];

    r->ok = pread(r->fd, buf, sizeof(buf), r->off) == (ssize_t)sizeof(buf);
}

/* Requests the kernel has not seen answered yet (fusectl), or -1. */
static int fuse_waiting(dev_t dev)
{
    char path[96];
    int n = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/sys/fs/fuse/connections/%u/waiting",
             (unsigned)dev);
    f = fopen(path, "r");
    if (f) {
        if (fscanf(f, "%d", &n) != 1) {
            n = -1;
        }
        fclose(f);
    }
    return n;
}

typedef struct PoolRun {
    PoolReader r[POOL_READERS];
    pthread_t th[POOL_READERS];
} PoolRun;

Test(fuse, full_buffer_pool_stops_reading_until_a_request_ends)
{
    BlockExport *exp;
    PoolRun *run = calloc(1, sizeof(*run));
    struct stat st;
    int64_t deadline;
    int fd, i;

    exp = export_node_with("{\"driver\": \"hold\", \"node-name\": \"disk\", "
                           "\"file\": {\"driver\": \"mem\", \"size\": 1048576}}",
                           "{\"iothread\": \"io0\"}");
    global_lock_assert_held();
    hold_node = bdrv_find_node("disk");
    hold_set_notifier(hold_node, note_held, NULL);
    hold_set_enabled(hold_node, true);
    fd = open(mnt, O_RDONLY);       /* OPEN is not held by the filter */
    cr_assert_geq(fd, 0);
    cr_assert_eq(fstat(fd, &st), 0);
    for (i = 0; i < POOL_READERS; i++) {
        run->r[i] = (PoolReader){ fd, i * 4096, false };
        pthread_create(&run->th[i], NULL, (void *(*)(void *))(void *)pool_read, &run->r[i]);
    }
    /* One queue has 32 buffers: exactly 32 reads reach the filter. */
    while (hold_held(hold_node) < 32) {
        loop_iterate(loop_main(), true);
    }
    /*
     * Once all 40 reads are in the kernel (fusectl's "waiting" counts them),
     * the reader must leave the other 8 there: watch for 200 ms that no
     * more reach the filter.  (A negative check needs a window; the event
     * it watches for is a held request, which wakes the loop.)
     */
    if (fuse_waiting(st.st_dev) >= 0) {
        while (fuse_waiting(st.st_dev) < POOL_READERS) {
            loop_iterate(loop_main(), false);
        }
        deadline = clock_ns() + 200 * 1000 * 1000;
        while (clock_ns() < deadline && hold_held(hold_node) <= 32) {
            loop_iterate(loop_main(), false);
        }
        cr_expect_eq(hold_held(hold_node), 32, "the reader read past its buffers");
    }
    hold_set_enabled(hold_node, false);
    hold_release_all(hold_node);
    for (i = 0; i < POOL_READERS; i++) {
        while (pthread_tryjoin_np(run->th[i], NULL) != 0) {
            loop_iterate(loop_main(), false);
        }
        cr_expect(run->r[i].ok, "reader %d failed", i);
    }
    cr_expect_leq(atomic_load(&max_held), 32, "more requests than buffers: %d",
                  atomic_load(&max_held));
    close(fd);
    delete_export(exp);
    free(run);
}

/* ---- mmap, with and without direct I/O ---- */

static void mmap_probe(void *opaque)
{
    Probe *p = opaque;
    char buf[4096];
    uint8_t *map;

    memset(buf, 'm', sizeof(buf));
    PROBE(p, 0, pwrite(p->fd, buf, sizeof(buf), 8192));
    /* A shared writable mapping: with direct I/O the kernel allows it only
     * when INIT agreed on FUSE_DIRECT_IO_ALLOW_MMAP. */
    map = mmap(NULL, 16384, PROT_READ | PROT_WRITE, MAP_SHARED, p->fd, 0);
    p->ret[1] = map != MAP_FAILED;
    p->err[1] = errno;
    if (map != MAP_FAILED) {
        p->ret[2] = map[8192] == 'm' && map[0] == 0;
        map[100] = 'w';
        PROBE(p, 3, msync(map, 16384, MS_SYNC));
        munmap(map, 16384);
        p->ret[4] = pread(p->fd, buf, 1, 100) == 1 && buf[0] == 'w';
    }
}

static void check_mmap(const char *opts)
{
    BlockExport *exp = export_with(opts);
    Probe p = { .fd = open(mnt, O_RDWR) };

    cr_assert_geq(p.fd, 0);
    run_thread(mmap_probe, &p);
    cr_expect_eq(p.ret[0], 4096);
    cr_expect(p.ret[1], "mmap with %s: %s", opts, strerror(p.err[1]));
    cr_expect(p.ret[2], "mapped content wrong with %s", opts);
    cr_expect_eq(p.ret[3], 0, "msync with %s: %s", opts, strerror(p.err[3]));
    cr_expect(p.ret[4], "write through the mapping lost with %s", opts);
    close(p.fd);
    delete_export(exp);
}

Test(fuse, mmap_works_with_direct_io)
{
    check_mmap("{\"writable\": true}");
}

Test(fuse, mmap_works_with_page_cache)
{
    check_mmap("{\"writable\": true, \"direct-io\": false}");
}
