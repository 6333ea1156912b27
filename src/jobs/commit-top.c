/*
 * commit-top.c — the intermediate commit job's filter node (QEMU's
 * commit_top), between the overlay and top while the job runs: the
 * overlay's backing edge reaches top through it.  Not user-creatable: it
 * is not in the driver registry (blockdev-add refuses driver=commit_top);
 * commit.c opens it with bdrv_co_open_internal() and inserts it with
 * bdrv_co_insert_filter().
 *
 * Reads, flushes and block status pass through to the "file" child (top);
 * nothing else reaches it (a backing edge only reads), so the other I/O
 * members stay NULL (-ENOTSUP).  Permissions pass through (the core's
 * default for a FILTERED child): the overlay reads top as before.
 *
 * Thread-safety: no state.
 */
#include "block-io.h"
#include "driver.h"
#include "filters/filter-util.h"
#include "jobs/stream.h"

const BlockDriver bdrv_commit_top = {
    .format_name = "commit_top",
    .is_filter = true,

    .co_preadv = filter_co_preadv,     /* reads pass through */
    .co_flush = filter_co_flush,
    .co_block_status = filter_co_block_status,
};
