/*
 * fuzz-qcow2-open.c — libFuzzer harness: the input is a qcow2 image file.
 *
 * It is opened read-only as qcow2 over a file node through the real graph
 * (no backing file), then walked the way a reader would: the block status of
 * every run of clusters (bounded, the virtual size may be huge), a sample of
 * data reads from each run (every allocated run, both ends), and the internal
 * snapshot list.  Refusing the image is a fine answer; a sanitizer report, a
 * crash or a hang is not.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz-common.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"

#define MAX_STATUS_CALLS 2048
#define MAX_READS        256
#define READ_CHUNK       (64 * 1024)

static uint8_t read_buf[READ_CHUNK];

/* I/O, coroutine: reads up to READ_CHUNK bytes at off (errors are fine). */
static void coroutine_fn sample_read(BlockBackend *blk, int64_t off, int64_t len)
{
    IOVector v;
    len = MIN(len, READ_CHUNK);
    iov_init_buf(&v, read_buf, len);
    (void)blk_co_preadv(blk, off, len, &v, 0);
}

/* I/O, coroutine: block status over the image, sampling data on the way. */
static void coroutine_fn walk_clusters(BlockBackend *blk)
{
    int64_t size = blk_getlength(blk), off = 0;
    int reads = 0;

    for (int calls = 0; off < size && calls < MAX_STATUS_CALLS; calls++) {
        int64_t pnum = 0;
        int st = blk_co_block_status(blk, off, size - off, &pnum);
        if (st < 0 || pnum <= 0) {
            /* an error may be local to one L2 table: skip ahead, read it */
            pnum = MIN(size - off, READ_CHUNK);
        }
        if (reads < MAX_READS) {
            sample_read(blk, off, MIN(pnum, READ_CHUNK));
            reads++;
            if (pnum > READ_CHUNK && reads < MAX_READS) {
                sample_read(blk, off + pnum - READ_CHUNK, READ_CHUNK);
                reads++;
            }
        }
        off += pnum;
    }
    /* the very end of the image, through whatever the walk skipped */
    if (size > 0) {
        sample_read(blk, size - MIN(size, 4096), MIN(size, 4096));
    }
}

/* GS: lists the internal snapshots (names must be strings we can print). */
static void list_snapshots(BlockNode *bs) GS
{
    Qcow2SnapshotInfo *info = NULL;
    GS_CODE();
    int n = qcow2_snapshot_list(bs, &info);
    for (int i = 0; i < n; i++) {
        if (strlen(info[i].id) >= sizeof(info[i].id) ||
            strlen(info[i].name) >= sizeof(info[i].name)) {
            abort();
        }
    }
    free(info);
}

static void coroutine_fn one_input(void *opaque)
{
    FuzzImage img;

    global_lock_assert_held();
    if (!fuzz_open(opaque, false, &img)) {
        return;
    }
    walk_clusters(img.blk);
    list_snapshots(img.bs);
    fuzz_close(&img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FUZZ_MAX_INPUT) {
        return -1;
    }
    fuzz_runtime_init();
    const char *path = fuzz_write_image(data, size);
    fuzz_run(one_input, (void *)path);
    return 0;
}
