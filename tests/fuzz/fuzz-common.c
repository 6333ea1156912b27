/*
 * fuzz-common.c — runtime, coroutine runner and image opening for the qcow2
 * fuzz harnesses (see fuzz-common.h).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz-common.h"
#include "driver.h"
#include "loop/loop.h"
#include "util/threads.h"

static bool runtime_started;

/* The global lock is taken once and never released (the analysis cannot
 * follow a lock held for the rest of the process). */
void fuzz_runtime_init(void) NO_THREAD_SAFETY_ANALYSIS
{
    if (runtime_started) {
        return;
    }
    runtime_started = true;
    threads_init_main();
    global_lock_acquire();      /* held until the process exits */
    loop_init_main();
    block_init();
}

typedef struct FuzzRun {
    FuzzFn *fn;
    void *opaque;
    bool done;
} FuzzRun;

static void coroutine_fn run_entry(void *opaque)
{
    FuzzRun *r = opaque;
    r->fn(r->opaque);
    r->done = true;
}

void fuzz_run(FuzzFn *fn, void *opaque)
{
    FuzzRun r = { fn, opaque, false };
    co_spawn(run_entry, &r);
    while (!r.done) {
        loop_iterate(loop_main(), true);
    }
}

static char image_path[64];

static void remove_image(void)
{
    unlink(image_path);
}

const char *fuzz_write_image(const uint8_t *data, size_t size)
{
    char *path = image_path;
    if (!path[0]) {
        snprintf(image_path, sizeof(image_path), "/dev/shm/ds-fuzz-%d.qcow2",
                 (int)getpid());
        /* a crash leaves the file behind: it is the image after the run */
        atexit(remove_image);
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size)) {
        perror(path);
        abort();
    }
    close(fd);
    return path;
}

bool coroutine_fn fuzz_open(const char *path, bool writable, FuzzImage *img)
{
    Error *err = NULL;

    GS_CODE();
    memset(img, 0, sizeof(*img));
    /* No backing file: an input must not make us open arbitrary paths.
     * A small cache makes evictions (and their write-back order) common. */
    json_t *def = json_pack("{s:s, s:s, s:n, s:I, s:{s:s, s:s, s:s}, s:b}",
                            "driver", "qcow2", "node-name", "fuzz",
                            "backing", "cache-size", (json_int_t)(256 * 1024),
                            "file", "driver", "file", "node-name", "fuzz-file",
                            "filename", path, "read-only", !writable);
    img->bs = bdrv_co_open_blockdev(def, &err);
    json_decref(def);
    if (!img->bs) {
        error_free(err);
        return false;
    }
    uint64_t perm = BLK_PERM_CONSISTENT_READ | (writable ? BLK_PERM_WRITE : 0);
    img->blk = blk_new("fuzz", perm, BLK_PERM_CONSISTENT_READ);
    if (blk_insert_node(img->blk, img->bs, &err) < 0) {
        error_free(err);
        fuzz_close(img);
        return false;
    }
    return true;
}

void coroutine_fn fuzz_close(FuzzImage *img)
{
    GS_CODE();
    if (img->blk) {
        blk_co_unref(img->blk);
    }
    bdrv_co_close_all();
    memset(img, 0, sizeof(*img));
}
