/*
 * img-convert.c — `diskstack img convert` (qemu-img semantics, option
 * letters, messages and exit codes).
 *
 * The (concatenated) sources are split into chunks that several worker
 * coroutines claim in turn, so reads and writes of different chunks overlap.
 * A chunk is classified granule by granule (4 KiB for raw output, a cluster
 * for qcow2) with block status first: ranges the chain reports as zero or
 * unallocated are never read, data ranges are read and then checked for
 * zeroes, and only granules holding non-zero data are written — a fresh
 * target reads zeroes everywhere else, so the output stays sparse.  With -B
 * the target gets a backing file and only what the sources' top layers hold
 * is copied (zeroes there become zero writes).  With -c every data granule
 * is one cluster written with BDRV_REQ_COMPRESS.
 *
 * Threading: convert_main runs in the coroutine img_run() starts on the main
 * loop (GS, global lock held); the workers are coroutines on the same loop
 * that only issue I/O through backends (I/O class).  Nothing here creates
 * threads.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block-gs.h"
#include "block-io.h"
#include "cli/cli.h"
#include "cli/img.h"
#include "cli/img-content.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"

#define RAW_GRANULE       4096                /* qemu-img's default -S */
#define DEFAULT_WORKERS   8                   /* qemu-img's default -m */
#define MAX_WORKERS       16

typedef struct ConvertArgs {
    const char *src_fmt, *out_fmt, *options, *backing, *backing_fmt;
    bool compress, no_create, target_is_zero;
    ImgCopyFlags flags;          /* -p -q -U */
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
    return img_status_reads_zero(st) ? HAS_ZERO : HAS_DATA;
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
            img_buf_is_zero(w->buf + goff, glen)) {
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
        w[i].buf = img_alloc_buf(c->chunk);
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

/* GS: the backing format for -B without -F: probed like qemu-img does. */
static const char *coroutine_fn target_backing_fmt(const ConvertArgs *a,
                                                   Error **errp) GS
{
    char path[PATH_MAX];

    GS_CODE();
    if (a->backing_fmt) {
        return a->backing_fmt;
    }
    img_backing_path(a->dst, a->backing, path, sizeof(path));
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
    if (img_create_file(a->dst, errp) < 0) {
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
    int flags = img_copy_open_flags(&a->flags);

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
    img_progress_start(&c.progress, img_copy_shows_progress(&a->flags));
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
            if (img_parse_copy_flag(&a->flags, c)) {
                break;
            }
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
