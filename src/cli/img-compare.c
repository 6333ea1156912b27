/*
 * img-compare.c — `diskstack img compare` (qemu-img semantics, option
 * letters, messages and exit codes).
 *
 * Walks both chains side by side with block status first: ranges both
 * report as zero are skipped, a range one side reports as zero is checked
 * for zeroes on the other, the rest is read and compared.  The first
 * difference is reported as the 512-byte sector it starts in.
 *
 * Threading: compare_main runs in the coroutine img_run() starts on the main
 * loop (GS, global lock held) and issues its I/O through backends.  Nothing
 * here creates threads.
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "block-gs.h"
#include "block-io.h"
#include "cli/cli.h"
#include "cli/img.h"
#include "cli/img-content.h"

enum { CMP_SAME = 0, CMP_DIFFERENT = 1, CMP_ERROR = 2 };

typedef struct CompareArgs {
    const char *fmt1, *fmt2;
    const char *file1, *file2;
    bool strict;
    ImgCopyFlags flags;          /* -p -q -U */
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

    if (!c->a->flags.quiet) {
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
    bool zero0 = img_status_reads_zero(st[0]), zero1 = img_status_reads_zero(st[1]);
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
        d = img_first_diff_sector(c->buf[zero0 ? 1 : 0], NULL, len);
    } else {
        d = img_first_diff_sector(c->buf[0], c->buf[1], len);
    }
    if (d >= 0) {
        cmp_say(c, "Content mismatch at offset %lld!\n", (long long)(off + d));
        return CMP_DIFFERENT;
    }
    return CMP_SAME;
}

/* I/O: compares [from, to) of both images.  Image `absent` (0 or 1; -1:
 * neither) ends before `from`: past its end it reads as zeroes. */
static int coroutine_fn cmp_walk(Compare *c, int64_t from, int64_t to,
                                 int absent, Error **errp)
{
    for (int64_t off = from; off < to;) {
        int64_t pnum[2] = { INT64_MAX, INT64_MAX }, n;
        int st[2] = { BDRV_BLOCK_ZERO, BDRV_BLOCK_ZERO };

        for (int i = 0; i < 2; i++) {
            if (i != absent &&
                (st[i] = cmp_status(c, i, off, to - off, &pnum[i], errp)) < 0) {
                return CMP_ERROR;
            }
        }
        n = MIN(MIN(pnum[0], pnum[1]), IO_BUF_SIZE);
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

/* GS: opens both images; CMP_ERROR with *errp on failure. */
static int coroutine_fn cmp_open(Compare *c, Error **errp) GS
{
    int flags = img_copy_open_flags(&c->a->flags);

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
    c->buf[0] = img_alloc_buf(IO_BUF_SIZE);
    c->buf[1] = img_alloc_buf(IO_BUF_SIZE);
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
    img_progress_start(&c->progress, img_copy_shows_progress(&c->a->flags));
    ret = cmp_walk(c, 0, MIN(len0, len1), -1, errp);
    if (ret == CMP_SAME && len0 != len1) {
        /* strict mode has returned above: the statuses may differ here */
        cmp_say(c, "Warning: Image size mismatch!\n");
        ret = cmp_walk(c, MIN(len0, len1), MAX(len0, len1), len1 > len0 ? 0 : 1,
                       errp);
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
        default:
            if (img_parse_copy_flag(&a.flags, c)) {
                break;
            }
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
