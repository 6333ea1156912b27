/*
 * img-rebase.c — `diskstack img rebase` (qemu-img semantics, option
 * letters, messages and exit codes).
 *
 * Safe mode copies into FILE every sector that FILE does not allocate
 * itself and whose content differs between the old and the new backing
 * chain (block status first, data second), then rewrites the backing name
 * and format in the header (qcow2_change_backing).  -u only rewrites the
 * header.
 *
 * Threading: rebase_main runs in the coroutine img_run() starts on the main
 * loop (GS, global lock held) and issues its I/O through backends.  Nothing
 * here creates threads.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block-gs.h"
#include "block-io.h"
#include "cli/cli.h"
#include "cli/img.h"
#include "cli/img-content.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"

typedef struct RebaseArgs {
    const char *fmt, *backing, *backing_fmt, *file;
    bool unsafe;
    ImgCopyFlags flags;          /* -p -q -U */
} RebaseArgs;

typedef struct Rebase {
    const RebaseArgs *a;
    BlockBackend *blk;           /* FILE, with its old backing chain */
    BlockNode *top;              /* FILE's own node: what it allocates */
    BlockBackend *new_blk;       /* the new backing chain; NULL: none */
    int64_t new_len;
    uint8_t *old_buf, *new_buf;
    char new_path[PATH_MAX];
    ImgProgress progress;
} Rebase;

/* I/O: does FILE itself allocate [off, ...)?  *pnum: the run length. */
static int coroutine_fn rb_top_status(Rebase *r, int64_t off, int64_t bytes,
                                      int64_t *pnum)
{
    int st;

    bdrv_graph_co_rdlock();
    st = bdrv_co_block_status(r->top, false, off, bytes, pnum, NULL, NULL);
    bdrv_graph_co_rdunlock();
    return st;
}

/* I/O: status of the new backing at off (zeroes past its end). */
static int coroutine_fn rb_new_status(Rebase *r, int64_t off, int64_t bytes,
                                      int64_t *pnum)
{
    if (!r->new_blk || off >= r->new_len) {
        *pnum = bytes;
        return BDRV_BLOCK_ZERO;
    }
    return blk_co_block_status(r->new_blk, off, MIN(bytes, r->new_len - off), pnum);
}

/* I/O: reads [off, off+len) as the new backing shows it. */
static int coroutine_fn rb_read_new(Rebase *r, int64_t off, int64_t len)
{
    int64_t n = r->new_blk ? MAX(0, MIN(len, r->new_len - off)) : 0;
    IOVector v;

    memset(r->new_buf + n, 0, len - n);
    if (n == 0) {
        return 0;
    }
    iov_init_buf(&v, r->new_buf, n);
    return blk_co_preadv(r->new_blk, off, n, &v, 0);
}

/* I/O: copies into FILE the sectors of [off, off+len) whose old content
 * (read through FILE: unallocated there, so from the old chain) differs
 * from the new backing's. */
static int coroutine_fn rb_copy_range(Rebase *r, int64_t off, int64_t len,
                                      Error **errp)
{
    IOVector v;
    int ret;

    iov_init_buf(&v, r->old_buf, len);
    ret = blk_co_preadv(r->blk, off, len, &v, 0);
    if (ret == 0 && (ret = rb_read_new(r, off, len)) < 0) {
        error_setg_errno(errp, -ret, "error while reading '%s' at byte %lld",
                         r->new_path, (long long)off);
        return -1;
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "error while reading the old backing "
                         "chain of '%s' at byte %lld", r->a->file, (long long)off);
        return -1;
    }
    for (int64_t pos = 0; pos < len;) {
        int64_t d = img_first_diff_sector(r->old_buf + pos, r->new_buf + pos, len - pos);
        if (d < 0) {
            break;
        }
        int64_t start = pos + d, end = start;
        while (end < len && img_first_diff_sector(r->old_buf + end, r->new_buf + end,
                                              MIN(SECTOR, len - end)) == 0) {
            end += SECTOR;
        }
        end = MIN(end, len);
        iov_init_buf(&v, r->old_buf + start, end - start);
        ret = blk_co_pwritev(r->blk, off + start, end - start, &v, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "error while writing '%s' at byte %lld",
                             r->a->file, (long long)(off + start));
            return -1;
        }
        pos = end;
    }
    return 0;
}

/* I/O: the safe-mode copy over the whole of FILE. */
static int coroutine_fn rb_copy(Rebase *r, Error **errp)
{
    int64_t size = blk_getlength(r->blk);

    for (int64_t off = 0; off < size;) {
        int64_t p_top = 0, p_old = 0, p_new = 0, n;
        int st_top = rb_top_status(r, off, size - off, &p_top);
        int st_old = st_top < 0 || (st_top & BDRV_BLOCK_ALLOCATED) ? 0 :
                     blk_co_block_status(r->blk, off, p_top, &p_old);
        int st_new = st_top < 0 || (st_top & BDRV_BLOCK_ALLOCATED) || st_old < 0 ? 0 :
                     rb_new_status(r, off, p_top, &p_new);

        if (st_top < 0 || st_old < 0 || st_new < 0) {
            error_setg_errno(errp, -MIN(st_top, MIN(st_old, st_new)),
                             "error while reading the block status of '%s' at "
                             "byte %lld", r->a->file, (long long)off);
            return -1;
        }
        n = p_top;
        if (!(st_top & BDRV_BLOCK_ALLOCATED)) {
            n = MIN(MIN(n, p_old), MIN(p_new, IO_BUF_SIZE));
            if (!(img_status_reads_zero(st_old) && img_status_reads_zero(st_new)) &&
                rb_copy_range(r, off, n, errp) < 0) {
                return -1;
            }
        }
        off += n;
        img_progress_update(&r->progress, off, size);
    }
    return 0;
}

/* GS: opens FILE (and, in safe mode, the new backing). */
static int coroutine_fn rb_open(Rebase *r, Error **errp) GS
{
    const RebaseArgs *a = r->a;
    int flags = IMG_OPEN_RW | (a->unsafe ? IMG_OPEN_NO_BACKING : 0);

    GS_CODE();
    r->blk = img_co_open(a->file, a->fmt, flags, errp);
    if (!r->blk) {
        return -1;
    }
    r->top = blk_node(r->blk);
    if (r->top->drv != &bdrv_qcow2) {
        error_setg(errp, "Could not change the backing file of '%s': the %s "
                   "format has no backing file", a->file, r->top->drv->format_name);
        return -1;
    }
    if (a->unsafe || !a->backing[0]) {
        return 0;
    }
    img_backing_path(a->file, a->backing, r->new_path, sizeof(r->new_path));
    r->new_blk = img_co_open(r->new_path, a->backing_fmt,
                             img_copy_open_flags(&a->flags), errp);
    if (!r->new_blk) {
        error_prepend(errp, "Could not open new backing file '%s': ", r->new_path);
        return -1;
    }
    r->new_len = blk_getlength(r->new_blk);
    return 0;
}

/* img_run main (GS). */
static int coroutine_fn rebase_main(void *opaque, Error **errp) GS
{
    Rebase r = { .a = opaque };
    int ret = -1;

    GS_CODE();
    if (rb_open(&r, errp) < 0) {
        goto out;
    }
    if (!r.a->unsafe) {
        r.old_buf = img_alloc_buf(IO_BUF_SIZE);
        r.new_buf = img_alloc_buf(IO_BUF_SIZE);
        if (!r.old_buf || !r.new_buf) {
            error_setg(errp, "out of memory");
            goto out;
        }
        img_progress_start(&r.progress, img_copy_shows_progress(&r.a->flags));
        ret = rb_copy(&r, errp);
        if (ret == 0 && (ret = blk_co_flush(r.blk)) < 0) {
            error_setg_errno(errp, -ret, "error while flushing '%s'", r.a->file);
        }
        img_progress_end(&r.progress);
        if (ret < 0) {
            ret = -1;
            goto out;
        }
    }
    ret = qcow2_change_backing(r.top, r.a->backing, r.a->backing_fmt, errp);
    if (ret < 0) {
        error_prepend(errp, "Could not change the backing file to '%s': ",
                      r.a->backing);
        ret = -1;
    }
out:
    free(r.old_buf);
    free(r.new_buf);
    return ret;
}

static void print_rebase_help(void)
{
    printf("Usage: diskstack img rebase [OPTION]... -b BACKING [-F FMT] FILE\n"
           "\n"
           "Make BACKING the backing file of the qcow2 image FILE.  In the\n"
           "default safe mode, every range FILE does not hold itself and whose\n"
           "content differs between the old and the new backing chain is first\n"
           "copied into FILE, so what FILE shows does not change.  A relative\n"
           "BACKING is relative to FILE's directory.  -b \"\" removes the backing\n"
           "file (safe mode copies everything FILE shows from it).\n"
           "\n"
           "Options:\n"
           "  -b BACKING  the new backing file (\"\" for none)\n"
           "  -F FMT      format of BACKING (required with a non-empty -b)\n"
           "  -f FMT      format of FILE (default: probe)\n"
           "  -u          unsafe: only rewrite the header, copy nothing (the old\n"
           "              backing file need not exist)\n"
           "  -U          open the new backing file without taking its lock\n"
           "  -p          show progress\n"
           "  -q          quiet\n"
           "  -h, --help  show this help\n");
}

int img_rebase(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    RebaseArgs a = { 0 };
    int c;

    while ((c = getopt_long(argc, argv, ":hf:F:b:upqU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': print_rebase_help(); return EXIT_OK;
        case 'f': a.fmt = optarg; break;
        case 'F': a.backing_fmt = optarg; break;
        case 'b': a.backing = optarg; break;
        case 'u': a.unsafe = true; break;
        default:
            if (img_parse_copy_flag(&a.flags, c)) {
                break;
            }
            cli_bad_option("img rebase", argv, optopt, c == ':');
            return EXIT_USAGE;
        }
    }
    if (argc - optind != 1) {
        cli_usage_error("img rebase", "expects exactly one image FILE");
        return EXIT_USAGE;
    }
    a.file = argv[optind];
    if (!a.backing) {
        cli_usage_error("img rebase", "Must specify backing file (-b)");
        return EXIT_USAGE;
    }
    if (a.backing[0] && !a.backing_fmt) {
        fprintf(stderr, "diskstack: Could not change the backing file to '%s': "
                "backing format must be specified (-F)\n", a.backing);
        return EXIT_ERROR;
    }
    return img_run(rebase_main, &a);
}
