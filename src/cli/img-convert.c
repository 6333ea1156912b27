/*
 * img-convert.c — `diskstack img convert | compare | rebase`: the img
 * subcommands that copy or compare image content (qemu-img semantics, option
 * letters, messages and exit codes).
 *
 * All three walk an image with block status first and touch data second:
 *
 *   convert  splits the (concatenated) sources into chunks that several
 *            worker coroutines claim in turn, so reads and writes of
 *            different chunks overlap.  A chunk is classified granule by
 *            granule (4 KiB for raw output, a cluster for qcow2): ranges the
 *            chain reports as zero or unallocated are never read, data ranges
 *            are read and then checked for zeroes, and only granules holding
 *            non-zero data are written — a fresh target reads zeroes
 *            everywhere else, so the output stays sparse.  With -B the
 *            target gets a backing file and only what the sources' top
 *            layers hold is copied (zeroes there become zero writes).  With
 *            -c every data granule is one cluster written with
 *            BDRV_REQ_COMPRESS.
 *   compare  walks both chains side by side; ranges both report as zero are
 *            skipped, a range one side reports as zero is checked for
 *            zeroes on the other, the rest is read and compared.  The first
 *            difference is reported as the 512-byte sector it starts in.
 *   rebase   (safe mode) copies into FILE every sector that FILE does not
 *            allocate itself and whose content differs between the old and
 *            the new backing chain, then rewrites the backing name and
 *            format in the header (qcow2_change_backing).  -u only rewrites
 *            the header.
 *
 * Threading: the *_main functions run in the coroutine img_run() starts on
 * the main loop (GS, global lock held); the convert workers are coroutines on
 * the same loop that only issue I/O through backends (I/O class).  Nothing
 * here creates threads.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block-gs.h"
#include "block-io.h"
#include "cli/cli.h"
#include "cli/img.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"

#define SECTOR            512
#define IO_BUF_SIZE       (2 * 1024 * 1024)   /* bytes per chunk / read */
#define RAW_GRANULE       4096                /* qemu-img's default -S */
#define DEFAULT_WORKERS   8                   /* qemu-img's default -m */
#define MAX_WORKERS       16
#define MEM_ALIGN         4096

/* Both: pure.  True if buf[0..len) is all zeroes. */
static bool buf_is_zero(const uint8_t *buf, size_t len)
{
    return len == 0 || (buf[0] == 0 && memcmp(buf, buf + 1, len - 1) == 0);
}

/* Both: pure.  Offset of the first 512-byte sector where a and b differ
 * (b NULL: where a is not zero), or -1 if none. */
static int64_t first_diff_sector(const uint8_t *a, const uint8_t *b, size_t len)
{
    for (size_t off = 0; off < len; off += SECTOR) {
        size_t n = MIN((size_t)SECTOR, len - off);
        if (b ? memcmp(a + off, b + off, n) != 0 : !buf_is_zero(a + off, n)) {
            return (int64_t)off;
        }
    }
    return -1;
}

/* Both: pure.  A block status that guarantees zeroes when read. */
static bool status_reads_zero(int st)
{
    return (st & BDRV_BLOCK_ZERO) || !(st & BDRV_BLOCK_DATA);
}

static void *alloc_buf(size_t len)
{
    void *p = NULL;
    return posix_memalign(&p, MEM_ALIGN, len) == 0 ? p : NULL;
}

/* Both: a relative backing name is relative to the overlay's directory. */
static void backing_path(const char *overlay, const char *name, char *out,
                         size_t len)
{
    char dir[PATH_MAX];

    if (name[0] == '/' || !strchr(overlay, '/')) {
        snprintf(out, len, "%s", name);
        return;
    }
    snprintf(dir, sizeof(dir), "%s", overlay);
    snprintf(out, len, "%s/%s", dirname(dir), name);
}

/* ======================================================================
 * convert
 */

typedef struct ConvertArgs {
    const char *src_fmt, *out_fmt, *options, *backing, *backing_fmt;
    bool compress, progress, quiet, no_create, force_share, target_is_zero;
    int workers;
    int64_t sparse_size;         /* granule for zero detection; 0: none */
    char **srcs;
    int nb_srcs;
    const char *dst;
    Qcow2CreateOpts qopts;       /* from -o (qcow2 output) */
    bool have_ctype;             /* -o compression_type given */
} ConvertArgs;

/* Granule classes, from block status (what the target needs there). */
enum { G_SKIP, G_ZERO, G_DATA };
/* What the bytes of a granule are, while it is being classified. */
enum { HAS_UNALLOC = 1, HAS_ZERO = 2, HAS_DATA = 4 };

typedef struct Convert {
    const ConvertArgs *a;
    int nb_src;
    BlockBackend **src;
    BlockNode **src_top;         /* -B: status of the top layer only */
    int64_t *src_start, *src_len;
    BlockBackend *dst;
    const char *dst_name;
    int64_t src_total;           /* bytes of all sources */
    int64_t total;               /* target size: src_total in whole sectors */
    int64_t chunk;               /* a multiple of granule */
    int64_t granule;
    bool zero_init;              /* the target reads zeroes where unwritten */
    bool top_only;               /* -B */
    /* shared by the workers (one loop, so no lock) */
    int64_t next;                /* next unclaimed offset */
    int64_t done;
    int running;
    int ret;
    Error *err;
    CoEvent finished;
    ImgProgress progress;
} Convert;

typedef struct Worker {
    Convert *c;
    uint8_t *buf;
    uint8_t *cls;                /* one class per granule of the chunk */
} Worker;

/* Index of the source holding target offset off. */
static int source_at(const Convert *c, int64_t off)
{
    int i = 0;
    while (i + 1 < c->nb_src && off >= c->src_start[i + 1]) {
        i++;
    }
    return i;
}

static void convert_fail(Convert *c, int ret, const char *what, int64_t off,
                         const char *file)
{
    if (c->ret == 0) {
        c->ret = ret;
        error_setg_errno(&c->err, -ret, "error while %s '%s' at byte %lld",
                         what, file, (long long)off);
    }
}

/* I/O: one block-status run of source i at its offset off, as HAS_*. */
static int coroutine_fn source_status(Convert *c, int i, int64_t off,
                                      int64_t bytes, int64_t *pnum)
{
    int st;

    if (c->top_only) {
        bdrv_graph_co_rdlock();
        st = bdrv_co_block_status(c->src_top[i], false, off, bytes, pnum,
                                  NULL, NULL);
        bdrv_graph_co_rdunlock();
        if (st >= 0 && !(st & BDRV_BLOCK_ALLOCATED)) {
            return HAS_UNALLOC;     /* the target's backing provides it */
        }
    } else {
        st = blk_co_block_status(c->src[i], off, bytes, pnum);
    }
    if (st < 0) {
        return st;
    }
    return status_reads_zero(st) ? HAS_ZERO : HAS_DATA;
}

/* Pure: the class of a granule from what its bytes are.  Zeroes next to
 * bytes the target's backing provides (-B) cannot be a zero write: the
 * granule is copied as data, read through the source's chain. */
static uint8_t granule_class(uint8_t has)
{
    if ((has & HAS_DATA) || (has & (HAS_ZERO | HAS_UNALLOC)) == (HAS_ZERO | HAS_UNALLOC)) {
        return G_DATA;
    }
    return has & HAS_ZERO ? G_ZERO : G_SKIP;
}

/* I/O: classifies the granules of [off, off+len) (target offsets) into
 * w->cls (G_*). */
static int coroutine_fn classify_chunk(Worker *w, int64_t off, int64_t len)
{
    Convert *c = w->c;
    int64_t pos = off, end = off + len;
    int64_t ng = DIV_ROUND_UP(len, c->granule);

    memset(w->cls, 0, ng);
    while (pos < end) {
        if (pos >= c->src_total) {      /* the sector-rounding tail */
            for (int64_t g = (pos - off) / c->granule; g < ng; g++) {
                w->cls[g] |= HAS_ZERO;
            }
            break;
        }
        int i = source_at(c, pos);
        int64_t local = pos - c->src_start[i];
        int64_t n = MIN(end, c->src_start[i] + c->src_len[i]) - pos, pnum = 0;
        int has = source_status(c, i, local, n, &pnum);

        if (has < 0 || pnum <= 0) {
            convert_fail(c, has < 0 ? has : -EIO, "reading the block status of",
                         local, c->a->srcs[i]);
            return -1;
        }
        for (int64_t g = (pos - off) / c->granule;
             g <= (pos + pnum - 1 - off) / c->granule; g++) {
            w->cls[g] |= has;
        }
        pos += pnum;
    }
    for (int64_t g = 0; g < ng; g++) {
        w->cls[g] = granule_class(w->cls[g]);
    }
    return 0;
}

/* I/O: reads target range [off, off+len) from the sources into buf. */
static int coroutine_fn read_sources(Convert *c, int64_t off, int64_t len,
                                     uint8_t *buf)
{
    while (len > 0) {
        if (off >= c->src_total) {
            memset(buf, 0, len);
            break;
        }
        int i = source_at(c, off);
        int64_t local = off - c->src_start[i];
        int64_t n = MIN(len, c->src_len[i] - local);
        IOVector v;
        int ret;

        iov_init_buf(&v, buf, n);
        ret = blk_co_preadv(c->src[i], local, n, &v, 0);
        if (ret < 0) {
            convert_fail(c, ret, "reading", local, c->a->srcs[i]);
            return -1;
        }
        off += n;
        buf += n;
        len -= n;
    }
    return 0;
}

/* I/O: writes one run of granules of the same class. */
static int coroutine_fn write_run(Convert *c, int cls, int64_t off, int64_t len,
                                  uint8_t *buf)
{
    IOVector v;
    int ret = 0;

    if (cls == G_ZERO) {
        ret = blk_co_pwrite_zeroes(c->dst, off, len, BDRV_REQ_MAY_UNMAP);
    } else if (cls == G_DATA) {
        iov_init_buf(&v, buf, len);
        ret = blk_co_pwritev(c->dst, off, len, &v,
                             c->a->compress ? BDRV_REQ_COMPRESS : 0);
    }
    if (ret < 0) {
        convert_fail(c, ret, "writing", off, c->dst_name);
        return -1;
    }
    return 0;
}

/*
 * I/O: reads the data granules of the chunk, then decides per granule what
 * the target needs: nothing (zeroes on a zero-initialised target, or the
 * backing's content with -B), a zero write, or the data.
 */
static void coroutine_fn settle_classes(Worker *w, int64_t off, int64_t len)
{
    Convert *c = w->c;
    int64_t ng = DIV_ROUND_UP(len, c->granule);

    for (int64_t g = 0; g < ng; g++) {
        int64_t goff = g * c->granule, glen = MIN(c->granule, len - goff);
        if (w->cls[g] == G_DATA && c->a->sparse_size &&
            buf_is_zero(w->buf + goff, glen)) {
            w->cls[g] = G_ZERO;
        }
        if (w->cls[g] == G_ZERO && !c->a->sparse_size) {
            memset(w->buf + goff, 0, glen);
            w->cls[g] = G_DATA;     /* -S 0: write every byte */
        } else if (w->cls[g] == G_ZERO && c->zero_init && !c->top_only) {
            w->cls[g] = G_SKIP;
        }
    }
    (void)off;
}

/* I/O: copies one chunk [off, off+len) of the target. */
static int coroutine_fn convert_chunk(Worker *w, int64_t off, int64_t len)
{
    Convert *c = w->c;
    int64_t ng = DIV_ROUND_UP(len, c->granule);
    int64_t g = 0;

    if (classify_chunk(w, off, len) < 0) {
        return -1;
    }
    /* read maximal runs of data granules */
    while (g < ng) {
        int64_t e = g;
        while (e < ng && w->cls[e] == w->cls[g]) {
            e++;
        }
        int64_t roff = g * c->granule, rlen = MIN(e * c->granule, len) - roff;
        if (w->cls[g] == G_DATA && read_sources(c, off + roff, rlen, w->buf + roff) < 0) {
            return -1;
        }
        g = e;
    }
    settle_classes(w, off, len);
    for (g = 0; g < ng;) {
        int64_t e = g;
        while (e < ng && w->cls[e] == w->cls[g]) {
            e++;
        }
        int64_t roff = g * c->granule, rlen = MIN(e * c->granule, len) - roff;
        if (write_run(c, w->cls[g], off + roff, rlen, w->buf + roff) < 0) {
            return -1;
        }
        g = e;
    }
    return 0;
}

/* Coroutine entry (I/O, main loop): claims chunks until none is left. */
static void coroutine_fn convert_worker(void *opaque)
{
    Worker *w = opaque;
    Convert *c = w->c;

    while (c->ret == 0 && c->next < c->total) {
        int64_t off = c->next, len = MIN(c->chunk, c->total - off);
        c->next += len;
        if (convert_chunk(w, off, len) < 0) {
            break;
        }
        c->done += len;
        img_progress_update(&c->progress, c->done, c->total);
    }
    if (--c->running == 0) {
        co_event_set(&c->finished);
    }
}

/* GS: runs the workers and waits until every one has finished. */
static int coroutine_fn run_workers(Convert *c, Error **errp) GS
{
    int n = c->a->workers;
    Worker *w = calloc(n, sizeof(*w));
    int ret = 0;

    GS_CODE();
    co_event_init(&c->finished);
    for (int i = 0; w && i < n; i++) {
        w[i].c = c;
        w[i].buf = alloc_buf(c->chunk);
        w[i].cls = malloc(DIV_ROUND_UP(c->chunk, c->granule));
        if (!w[i].buf || !w[i].cls) {
            n = i + 1;
            ret = -ENOMEM;
            break;
        }
    }
    if (!w || ret < 0) {
        error_setg(errp, "out of memory");
    } else {
        c->running = n;
        for (int i = 0; i < n; i++) {
            co_spawn(convert_worker, &w[i]);
        }
        if (c->running > 0) {
            co_event_wait(&c->finished);
        }
    }
    for (int i = 0; w && i < n; i++) {
        free(w[i].buf);
        free(w[i].cls);
    }
    free(w);
    return ret;
}

/* -o for qcow2 (and "preallocation=off" for raw).  Pure; prints nothing. */
static int parse_create_options(ConvertArgs *a, bool qcow2, Error **errp)
{
    char *copy = strdup(a->options ? a->options : "");
    char *save = NULL;
    int ret = 0;

    for (char *kv = strtok_r(copy, ",", &save); kv && ret == 0;
         kv = strtok_r(NULL, ",", &save)) {
        char *val = strchr(kv, '=');
        uint64_t n;
        if (val) {
            *val++ = '\0';
        }
        if (!val) {
            error_setg(errp, "Invalid parameter '%s'", kv);
            ret = -1;
        } else if (!strcmp(kv, "preallocation") && !strcmp(val, "off")) {
            /* the default */
        } else if (!qcow2) {
            error_setg(errp, "Invalid parameter '%s'", kv);
            ret = -1;
        } else if (!strcmp(kv, "cluster_size") && img_parse_size(val, &n) &&
                   n <= UINT32_MAX) {
            a->qopts.cluster_size = n;
        } else if (!strcmp(kv, "refcount_bits") && img_parse_size(val, &n) &&
                   n <= 64) {
            a->qopts.refcount_bits = n;
        } else if (!strcmp(kv, "compression_type") &&
                   (!strcmp(val, "zlib") || !strcmp(val, "zstd"))) {
            a->qopts.compression_type = !strcmp(val, "zstd") ?
                QCOW2_COMPRESSION_ZSTD : QCOW2_COMPRESSION_ZLIB;
            a->have_ctype = true;
        } else if (!strcmp(kv, "lazy_refcounts") &&
                   (!strcmp(val, "on") || !strcmp(val, "off"))) {
            a->qopts.lazy_refcounts = !strcmp(val, "on");
        } else if (!strcmp(kv, "compat") &&
                   (!strcmp(val, "0.10") || !strcmp(val, "v2"))) {
            a->qopts.version = 2;
        } else if (!strcmp(kv, "compat") &&
                   (!strcmp(val, "1.1") || !strcmp(val, "v3"))) {
            a->qopts.version = 3;
        } else if (!strcmp(kv, "cluster_size") || !strcmp(kv, "refcount_bits") ||
                   !strcmp(kv, "compression_type") || !strcmp(kv, "compat") ||
                   !strcmp(kv, "lazy_refcounts") || !strcmp(kv, "preallocation")) {
            error_setg(errp, "Parameter '%s' does not accept value '%s'", kv, val);
            ret = -1;
        } else {
            error_setg(errp, "Invalid parameter '%s'", kv);
            ret = -1;
        }
    }
    free(copy);
    return ret;
}

/* Main thread: makes sure the target file exists, without truncating it
 * yet: that waits until we hold its image lock. */
static int touch_file(const char *path, Error **errp)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);

    if (fd < 0) {
        error_setg_errno(errp, errno, "Could not create '%s'", path);
        return -1;
    }
    close(fd);
    return 0;
}

/* GS: the backing format for -B without -F: probed like qemu-img does. */
static const char *coroutine_fn target_backing_fmt(const ConvertArgs *a,
                                                   Error **errp) GS
{
    char path[PATH_MAX];

    GS_CODE();
    if (a->backing_fmt) {
        return a->backing_fmt;
    }
    backing_path(a->dst, a->backing, path, sizeof(path));
    return img_co_probe(path, errp);
}

/* GS: writes a fresh qcow2 image of `size` bytes through blk. */
static int coroutine_fn format_qcow2(ConvertArgs *a, BlockBackend *blk,
                                     int64_t size, Error **errp) GS
{
    GS_CODE();
    a->qopts.size = size;
    if (a->backing) {
        a->qopts.backing_file = a->backing;
        a->qopts.backing_format = target_backing_fmt(a, errp);
        if (!a->qopts.backing_format) {
            return -1;
        }
    }
    if (a->compress && !a->have_ctype) {
        a->qopts.compression_type = QCOW2_COMPRESSION_ZSTD;
    }
    return qcow2_co_create(blk, &a->qopts, errp) < 0 ? -1 : 0;
}

/* GS: empties the target file and lays out the new image in it.  The file
 * is opened through the block layer first, so an image some other process
 * uses (it holds the image lock) is refused before anything is destroyed. */
static int coroutine_fn create_target(ConvertArgs *a, int64_t size,
                                      Error **errp) GS
{
    BlockBackend *blk;
    int ret;

    GS_CODE();
    if (touch_file(a->dst, errp) < 0) {
        return -1;
    }
    blk = img_co_open(a->dst, "raw", IMG_OPEN_RW | IMG_OPEN_RESIZE, errp);
    if (!blk) {
        return -1;
    }
    if (!strcmp(a->out_fmt, "qcow2")) {
        ret = format_qcow2(a, blk, size, errp);
    } else {
        ret = blk_co_truncate(blk, 0, true, errp);
        if (ret == 0) {
            ret = blk_co_truncate(blk, size, true, errp);
        }
    }
    img_co_close(blk);
    if (ret < 0) {
        error_prepend(errp, "Could not create '%s': ", a->dst);
        return -1;
    }
    return 0;
}

/* GS: opens every source; fills the offsets of the concatenation. */
static int coroutine_fn open_sources(Convert *c, Error **errp) GS
{
    const ConvertArgs *a = c->a;
    int flags = a->force_share ? IMG_OPEN_FORCE_SHARE : 0;

    GS_CODE();
    c->nb_src = a->nb_srcs;
    c->src = calloc(c->nb_src, sizeof(*c->src));
    c->src_top = calloc(c->nb_src, sizeof(*c->src_top));
    c->src_start = calloc(c->nb_src, sizeof(*c->src_start));
    c->src_len = calloc(c->nb_src, sizeof(*c->src_len));
    if (!c->src || !c->src_top || !c->src_start || !c->src_len) {
        error_setg(errp, "out of memory");
        return -1;
    }
    for (int i = 0; i < c->nb_src; i++) {
        c->src[i] = img_co_open(a->srcs[i], a->src_fmt, flags, errp);
        if (!c->src[i]) {
            return -1;
        }
        c->src_top[i] = blk_node(c->src[i]);
        c->src_start[i] = c->src_total;
        c->src_len[i] = blk_getlength(c->src[i]);
        c->src_total += c->src_len[i];
    }
    /* as qemu-img: the target holds whole sectors */
    c->total = ROUND_UP(c->src_total, SECTOR);
    return 0;
}

/* GS: creates (unless -n) and opens the target. */
static int coroutine_fn open_target(Convert *c, ConvertArgs *a, Error **errp) GS
{
    GS_CODE();
    if (!a->no_create && create_target(a, c->total, errp) < 0) {
        return -1;
    }
    c->dst = img_co_open(a->dst, a->out_fmt, IMG_OPEN_RW, errp);
    if (!c->dst) {
        return -1;
    }
    if (blk_getlength(c->dst) < c->total) {
        error_setg(errp, "'%s' is smaller than the source (%lld < %lld bytes)",
                   a->dst, (long long)blk_getlength(c->dst), (long long)c->total);
        return -1;
    }
    c->dst_name = a->dst;
    c->zero_init = !a->no_create || a->target_is_zero;
    c->top_only = a->backing != NULL;
    return 0;
}

/* GS: the write granule and chunk size for the target's format. */
static void choose_granule(Convert *c, const ConvertArgs *a) GS
{
    int64_t cs = 0;

    GS_CODE();
    if (!strcmp(a->out_fmt, "qcow2")) {
        BlockNode *bs = blk_node(c->dst);
        cs = ((Qcow2State *)bs->opaque)->cluster_size;
    }
    if (cs) {
        c->granule = cs;
    } else {
        c->granule = a->sparse_size > 0 ? ROUND_UP(a->sparse_size, SECTOR) : RAW_GRANULE;
    }
    c->chunk = MAX(ROUND_UP(IO_BUF_SIZE, c->granule), c->granule);
}

static void close_convert(Convert *c) GS
{
    GS_CODE();
    /* img_run closes every node still open; we only free our arrays */
    free(c->src);
    free(c->src_top);
    free(c->src_start);
    free(c->src_len);
}

/* img_run main (GS). */
static int coroutine_fn convert_main(void *opaque, Error **errp) GS
{
    ConvertArgs *a = opaque;
    Convert c = { .a = a };
    int ret = -1;

    GS_CODE();
    if (open_sources(&c, errp) < 0 || open_target(&c, a, errp) < 0) {
        goto out;
    }
    choose_granule(&c, a);
    img_progress_start(&c.progress, a->progress && !a->quiet);
    img_progress_update(&c.progress, 0, c.total);
    if (run_workers(&c, errp) < 0) {
        goto out;
    }
    if (c.ret == 0) {
        int r = blk_co_flush(c.dst);
        if (r < 0) {
            convert_fail(&c, r, "flushing", 0, a->dst);
        }
    }
    img_progress_end(&c.progress);
    if (c.ret < 0) {
        error_propagate(errp, c.err);
        goto out;
    }
    ret = 0;
out:
    close_convert(&c);
    return ret;
}

static void print_convert_help(void)
{
    printf("Usage: diskstack img convert [OPTION]... SOURCE... TARGET\n"
           "\n"
           "Copy the content of SOURCE (the whole backing chain; several\n"
           "sources are concatenated) into a new image TARGET.  Ranges that\n"
           "read as zeroes are not written, so TARGET stays sparse.\n"
           "\n"
           "Options:\n"
           "  -f FMT        format of the sources (default: probe)\n"
           "  -O FMT        format of TARGET: raw (default) or qcow2\n"
           "  -o OPTIONS    qcow2 creation options: cluster_size=SIZE,\n"
           "                compression_type=zlib|zstd, refcount_bits=N,\n"
           "                lazy_refcounts=on|off, compat=0.10|1.1\n"
           "  -c            compress the data clusters (qcow2; zstd unless\n"
           "                -o compression_type=zlib)\n"
           "  -B BACKING    TARGET gets BACKING as backing file; only what the\n"
           "                sources' top layers hold is copied\n"
           "  -F FMT        format of BACKING (default: probe)\n"
           "  -n            do not create TARGET: it exists and is large enough\n"
           "      --target-is-zero  with -n: TARGET already reads as zeroes\n"
           "  -S SIZE       zero detection granule for raw output (default 4k;\n"
           "                0 writes every byte)\n"
           "  -m N          requests in flight (1..%d, default %d)\n"
           "  -W            allow out-of-order writes (always the case)\n"
           "  -U            open the sources without taking their image locks\n"
           "  -p            show progress\n"
           "  -q            quiet\n"
           "  -h, --help    show this help\n", MAX_WORKERS, DEFAULT_WORKERS);
}

/* Returns -1 to continue, else the exit code. */
static int check_convert_args(ConvertArgs *a)
{
    Error *err = NULL;
    bool qcow2;

    if (strcmp(a->out_fmt, "raw") && strcmp(a->out_fmt, "qcow2")) {
        fprintf(stderr, "diskstack: Unknown file format '%s'\n", a->out_fmt);
        return EXIT_ERROR;
    }
    qcow2 = !strcmp(a->out_fmt, "qcow2");
    if (a->compress && !qcow2) {
        fprintf(stderr, "diskstack: Compression not supported for this file "
                "format\n");
        return EXIT_ERROR;
    }
    if (a->backing && !qcow2) {
        fprintf(stderr, "diskstack: Backing file not supported for file "
                "format '%s'\n", a->out_fmt);
        return EXIT_ERROR;
    }
    if (a->backing_fmt && !a->backing) {
        cli_usage_error("img convert", "-F requires -B");
        return EXIT_USAGE;
    }
    if (a->target_is_zero && !a->no_create) {
        cli_usage_error("img convert", "--target-is-zero requires -n");
        return EXIT_USAGE;
    }
    if (parse_create_options(a, qcow2, &err) < 0) {
        cli_report_error(err);
        return EXIT_ERROR;
    }
    return -1;
}

static int parse_convert_args(int argc, char **argv, ConvertArgs *a)
{
    enum { OPT_TARGET_IS_ZERO = 256 };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO },
        { NULL, 0, NULL, 0 },
    };
    const char *cmd = "img convert";
    uint64_t n;
    int c;

    a->out_fmt = "raw";
    a->workers = DEFAULT_WORKERS;
    a->sparse_size = RAW_GRANULE;
    while ((c = getopt_long(argc, argv, ":hf:O:o:cB:F:nS:m:WUpq",
                            longopts, NULL)) != -1) {
        switch (c) {
        case 'h': print_convert_help(); return EXIT_OK;
        case 'f': a->src_fmt = optarg; break;
        case 'O': a->out_fmt = optarg; break;
        case 'o': a->options = optarg; break;
        case 'c': a->compress = true; break;
        case 'B': a->backing = optarg; break;
        case 'F': a->backing_fmt = optarg; break;
        case 'n': a->no_create = true; break;
        case 'W': break;
        case 'U': a->force_share = true; break;
        case 'p': a->progress = true; break;
        case 'q': a->quiet = true; break;
        case OPT_TARGET_IS_ZERO: a->target_is_zero = true; break;
        case 'S':
            if (!img_parse_size(optarg, &n) || n > INT32_MAX) {
                cli_usage_error(cmd, "invalid sparse size '%s'", optarg);
                return EXIT_USAGE;
            }
            a->sparse_size = n;
            break;
        case 'm':
            if (!cli_parse_count(cmd, "-m", optarg, MAX_WORKERS, &a->workers)) {
                return EXIT_USAGE;
            }
            break;
        default:
            cli_bad_option(cmd, argv, optopt, c == ':');
            return EXIT_USAGE;
        }
    }
    if (argc - optind < 2) {
        cli_usage_error(cmd, "expects at least one SOURCE and a TARGET");
        return EXIT_USAGE;
    }
    a->srcs = argv + optind;
    a->nb_srcs = argc - optind - 1;
    a->dst = argv[argc - 1];
    return check_convert_args(a);
}

int img_convert(int argc, char **argv)
{
    ConvertArgs a = { 0 };
    int ret = parse_convert_args(argc, argv, &a);

    if (ret >= 0) {
        return ret;
    }
    return img_run(convert_main, &a);
}

/* ======================================================================
 * compare
 */

enum { CMP_SAME = 0, CMP_DIFFERENT = 1, CMP_ERROR = 2 };

typedef struct CompareArgs {
    const char *fmt1, *fmt2;
    const char *file1, *file2;
    bool strict, progress, quiet, force_share;
} CompareArgs;

typedef struct Compare {
    const CompareArgs *a;
    BlockBackend *blk[2];
    const char *name[2];
    uint8_t *buf[2];
    ImgProgress progress;
    int64_t progress_total;
} Compare;

static void cmp_say(const Compare *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void cmp_say(const Compare *c, const char *fmt, ...)
{
    va_list ap;

    if (!c->a->quiet) {
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
    }
}

/* I/O: reads [off, off+len) of image i into c->buf[i]; 2 on error. */
static int coroutine_fn cmp_read(Compare *c, int i, int64_t off, int64_t len,
                                 Error **errp)
{
    IOVector v;
    int ret;

    iov_init_buf(&v, c->buf[i], len);
    ret = blk_co_preadv(c->blk[i], off, len, &v, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "error while reading '%s' at byte %lld",
                         c->name[i], (long long)off);
        return CMP_ERROR;
    }
    return CMP_SAME;
}

/* I/O: block status of image i; -1 with *errp on error. */
static int coroutine_fn cmp_status(Compare *c, int i, int64_t off, int64_t bytes,
                                   int64_t *pnum, Error **errp)
{
    int st = blk_co_block_status(c->blk[i], off, bytes, pnum);

    if (st < 0 || *pnum <= 0) {
        error_setg_errno(errp, st < 0 ? -st : EIO, "error while reading the "
                         "block status of '%s' at byte %lld", c->name[i],
                         (long long)off);
        return -1;
    }
    return st & (BDRV_BLOCK_DATA | BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED);
}

/* I/O: compares one range whose status is st[0], st[1]; reports the first
 * difference.  Returns CMP_*. */
static int coroutine_fn cmp_range(Compare *c, const int st[2], int64_t off,
                                  int64_t len, Error **errp)
{
    bool zero0 = status_reads_zero(st[0]), zero1 = status_reads_zero(st[1]);
    int64_t d;

    if (zero0 && zero1) {
        return CMP_SAME;
    }
    for (int i = 0; i < 2; i++) {
        if (!(i ? zero1 : zero0) && cmp_read(c, i, off, len, errp)) {
            return CMP_ERROR;
        }
    }
    if (zero0 || zero1) {
        d = first_diff_sector(c->buf[zero0 ? 1 : 0], NULL, len);
    } else {
        d = first_diff_sector(c->buf[0], c->buf[1], len);
    }
    if (d >= 0) {
        cmp_say(c, "Content mismatch at offset %lld!\n", (long long)(off + d));
        return CMP_DIFFERENT;
    }
    return CMP_SAME;
}

/* I/O: compares [0, size) of both images. */
static int coroutine_fn cmp_common(Compare *c, int64_t size, Error **errp)
{
    for (int64_t off = 0; off < size;) {
        int64_t p0, p1, n;
        int st[2];

        st[0] = cmp_status(c, 0, off, size - off, &p0, errp);
        st[1] = st[0] < 0 ? -1 : cmp_status(c, 1, off, size - off, &p1, errp);
        if (st[0] < 0 || st[1] < 0) {
            return CMP_ERROR;
        }
        n = MIN(MIN(p0, p1), IO_BUF_SIZE);
        if (c->a->strict && st[0] != st[1]) {
            cmp_say(c, "Strict mode: Offset %lld block status mismatch!\n",
                    (long long)off);
            return CMP_DIFFERENT;
        }
        int ret = cmp_range(c, st, off, n, errp);
        if (ret != CMP_SAME) {
            return ret;
        }
        off += n;
        img_progress_update(&c->progress, off, c->progress_total);
    }
    return CMP_SAME;
}

/* I/O: the part of the larger image past the smaller one must read zero. */
static int coroutine_fn cmp_tail(Compare *c, int big, int64_t from, int64_t to,
                                 Error **errp)
{
    for (int64_t off = from; off < to;) {
        int64_t p, n;
        int st[2];

        st[big] = cmp_status(c, big, off, to - off, &p, errp);
        if (st[big] < 0) {
            return CMP_ERROR;
        }
        st[!big] = BDRV_BLOCK_ZERO;
        n = MIN(p, IO_BUF_SIZE);
        int ret = cmp_range(c, st, off, n, errp);
        if (ret != CMP_SAME) {
            return ret;
        }
        off += n;
        img_progress_update(&c->progress, off, c->progress_total);
    }
    return CMP_SAME;
}

/* GS: opens both images; CMP_ERROR with *errp on failure. */
static int coroutine_fn cmp_open(Compare *c, Error **errp) GS
{
    int flags = c->a->force_share ? IMG_OPEN_FORCE_SHARE : 0;

    GS_CODE();
    c->name[0] = c->a->file1;
    c->name[1] = c->a->file2;
    c->blk[0] = img_co_open(c->a->file1, c->a->fmt1, flags, errp);
    if (!c->blk[0]) {
        return CMP_ERROR;
    }
    c->blk[1] = img_co_open(c->a->file2, c->a->fmt2, flags, errp);
    if (!c->blk[1]) {
        return CMP_ERROR;
    }
    c->buf[0] = alloc_buf(IO_BUF_SIZE);
    c->buf[1] = alloc_buf(IO_BUF_SIZE);
    if (!c->buf[0] || !c->buf[1]) {
        error_setg(errp, "out of memory");
        return CMP_ERROR;
    }
    return CMP_SAME;
}

/* GS: the comparison proper, once both images are open. */
static int coroutine_fn cmp_images(Compare *c, Error **errp) GS
{
    int64_t len0 = blk_getlength(c->blk[0]), len1 = blk_getlength(c->blk[1]);
    int ret;

    GS_CODE();
    c->progress_total = MAX(len0, len1);
    if (c->a->strict && len0 != len1) {
        cmp_say(c, "Strict mode: Image size mismatch!\n");
        return CMP_DIFFERENT;
    }
    img_progress_start(&c->progress, c->a->progress && !c->a->quiet);
    ret = cmp_common(c, MIN(len0, len1), errp);
    if (ret == CMP_SAME && len0 != len1) {
        cmp_say(c, "Warning: Image size mismatch!\n");
        ret = cmp_tail(c, len1 > len0, MIN(len0, len1), MAX(len0, len1), errp);
    }
    img_progress_end(&c->progress);
    if (ret == CMP_SAME) {
        cmp_say(c, "Images are identical.\n");
    }
    return ret;
}

/* img_run main (GS): returns 0 identical, 1 different, 2 error (printed
 * here: img_run would exit 1 for a negative return). */
static int coroutine_fn compare_main(void *opaque, Error **errp) GS
{
    Compare c = { .a = opaque };
    Error *err = NULL;
    int ret;

    GS_CODE();
    (void)errp;
    ret = cmp_open(&c, &err);
    if (ret == CMP_SAME) {
        ret = cmp_images(&c, &err);
    }
    fflush(stdout);
    if (ret == CMP_ERROR) {
        cli_report_error(err);
    }
    free(c.buf[0]);
    free(c.buf[1]);
    return ret;
}

static void print_compare_help(void)
{
    printf("Usage: diskstack img compare [OPTION]... IMAGE1 IMAGE2\n"
           "\n"
           "Compare the content of two images (their whole backing chains).\n"
           "Images of different sizes compare equal when the extra part of the\n"
           "larger one reads as zeroes (unless -s).\n"
           "Exit status: 0 identical, 1 different, 2 error.\n"
           "\n"
           "Options:\n"
           "  -f FMT      format of IMAGE1 (default: probe)\n"
           "  -F FMT      format of IMAGE2 (default: probe)\n"
           "  -s          strict: sizes and allocation must match too\n"
           "  -U          open the images without taking their image locks\n"
           "  -p          show progress\n"
           "  -q          quiet: report only through the exit status\n"
           "  -h, --help  show this help\n");
}

int img_compare(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    CompareArgs a = { 0 };
    int c;

    while ((c = getopt_long(argc, argv, ":hf:F:spqU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': print_compare_help(); return EXIT_OK;
        case 'f': a.fmt1 = optarg; break;
        case 'F': a.fmt2 = optarg; break;
        case 's': a.strict = true; break;
        case 'p': a.progress = true; break;
        case 'q': a.quiet = true; break;
        case 'U': a.force_share = true; break;
        default:
            cli_bad_option("img compare", argv, optopt, c == ':');
            return CMP_ERROR;
        }
    }
    if (argc - optind != 2) {
        cli_usage_error("img compare", "expects exactly two images");
        return CMP_ERROR;
    }
    a.file1 = argv[optind];
    a.file2 = argv[optind + 1];
    return img_run(compare_main, &a);
}

/* ======================================================================
 * rebase
 */

typedef struct RebaseArgs {
    const char *fmt, *backing, *backing_fmt, *file;
    bool unsafe, progress, quiet, force_share;
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
        int64_t d = first_diff_sector(r->old_buf + pos, r->new_buf + pos, len - pos);
        if (d < 0) {
            break;
        }
        int64_t start = pos + d, end = start;
        while (end < len && first_diff_sector(r->old_buf + end, r->new_buf + end,
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
            if (!(status_reads_zero(st_old) && status_reads_zero(st_new)) &&
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
    backing_path(a->file, a->backing, r->new_path, sizeof(r->new_path));
    r->new_blk = img_co_open(r->new_path, a->backing_fmt,
                             a->force_share ? IMG_OPEN_FORCE_SHARE : 0, errp);
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
        r.old_buf = alloc_buf(IO_BUF_SIZE);
        r.new_buf = alloc_buf(IO_BUF_SIZE);
        if (!r.old_buf || !r.new_buf) {
            error_setg(errp, "out of memory");
            goto out;
        }
        img_progress_start(&r.progress, r.a->progress && !r.a->quiet);
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
        case 'p': a.progress = true; break;
        case 'q': a.quiet = true; break;
        case 'U': a.force_share = true; break;
        default:
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
