/*
 * img-create.c — `diskstack img create` and `diskstack img resize`, with
 * qemu-img's options and messages.
 *
 *   create [-f qcow2|raw] [-b BACKING -F FMT] [-o OPTS] [-q] FILE [SIZE]
 *   resize [-f FMT] [--shrink] [-q] FILE [+|-]SIZE
 *
 * A raw image is a file of SIZE bytes (preallocated if asked); a qcow2
 * image is written by qcow2_co_create() on a file node opened for it.
 * Without SIZE, a new overlay takes its backing file's size.
 *
 * Threading: parsing on the main thread; *_main are GS code in img_run().
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
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

typedef enum Prealloc { PREALLOC_OFF, PREALLOC_METADATA, PREALLOC_FALLOC, PREALLOC_FULL } Prealloc;

typedef struct CreateArgs {
    const char *format;
    const char *file;
    const char *size_text;
    uint64_t size;
    bool has_size;
    bool quiet;
    Prealloc prealloc;
    Qcow2CreateOpts q;
} CreateArgs;

static void print_create_help(void)
{
    printf("Usage: diskstack img create [OPTION]... FILE [SIZE]\n"
           "\n"
           "Create a new image FILE of SIZE bytes (suffixes k, M, G, T: binary\n"
           "units).  With -b and no SIZE, the backing file's size.\n"
           "\n"
           "Options:\n"
           "  -f FMT        qcow2 or raw (default raw)\n"
           "  -b BACKING    backing file of the new qcow2 image\n"
           "  -F FMT        format of the backing file (required with -b)\n"
           "  -o OPTS       comma-separated: cluster_size=SIZE, refcount_bits=N,\n"
           "                compression_type=zlib|zstd, lazy_refcounts=on|off,\n"
           "                compat=0.10|1.1, preallocation=off|metadata|falloc|full\n"
           "                (metadata: qcow2 only)\n"
           "  -q            print nothing but errors\n"
           "  -h, --help    show this help\n");
}

/*
 * -o
 */

static bool parse_on_off(const char *v, bool *out)
{
    if (!strcmp(v, "on") || !strcmp(v, "true")) {
        *out = true;
    } else if (!strcmp(v, "off") || !strcmp(v, "false")) {
        *out = false;
    } else {
        return false;
    }
    return true;
}

static bool parse_prealloc(const char *v, Prealloc *out)
{
    static const char *const names[] = { "off", "metadata", "falloc", "full" };

    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        if (!strcmp(v, names[i])) {
            *out = (Prealloc)i;
            return true;
        }
    }
    return false;
}

/* One key=value of -o; false (message printed) when invalid. */
static bool apply_create_option(CreateArgs *a, const char *key, const char *v)
{
    uint64_t n;
    bool ok = true;

    if (!strcmp(key, "cluster_size")) {
        ok = img_parse_size(v, &n) && n <= UINT32_MAX;
        a->q.cluster_size = (uint32_t)n;
    } else if (!strcmp(key, "refcount_bits")) {
        ok = img_parse_size(v, &n) && n <= 64;
        a->q.refcount_bits = (int)n;
    } else if (!strcmp(key, "compression_type")) {
        ok = !strcmp(v, "zlib") || !strcmp(v, "zstd");
        a->q.compression_type = !strcmp(v, "zstd") ? QCOW2_COMPRESSION_ZSTD
                                                   : QCOW2_COMPRESSION_ZLIB;
    } else if (!strcmp(key, "lazy_refcounts")) {
        ok = parse_on_off(v, &a->q.lazy_refcounts);
    } else if (!strcmp(key, "compat")) {
        ok = !strcmp(v, "0.10") || !strcmp(v, "v2") || !strcmp(v, "1.1") ||
             !strcmp(v, "v3");
        a->q.version = (!strcmp(v, "0.10") || !strcmp(v, "v2")) ? 2 : 3;
    } else if (!strcmp(key, "preallocation")) {
        ok = parse_prealloc(v, &a->prealloc);
    } else if (!strcmp(key, "backing_file")) {
        a->q.backing_file = v;
    } else if (!strcmp(key, "backing_fmt")) {
        a->q.backing_format = v;
    } else if (!strcmp(key, "size")) {
        ok = img_parse_size(v, &a->size);
        a->has_size = ok;
    } else {
        fprintf(stderr, "diskstack: Invalid parameter '%s'\n", key);
        return false;
    }
    if (!ok) {
        fprintf(stderr, "diskstack: Parameter '%s' does not accept value '%s'\n",
                key, v);
    }
    return ok;
}

/* "-o a=1,b=2": the text is kept (argv) and split in place. */
static bool parse_create_options(CreateArgs *a, char *text)
{
    char *save = NULL;

    for (char *kv = strtok_r(text, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq) {
            fprintf(stderr, "diskstack: Invalid option '%s': expected key=value\n", kv);
            return false;
        }
        *eq = '\0';
        if (!apply_create_option(a, kv, eq + 1)) {
            return false;
        }
    }
    return true;
}

/*
 * create
 */

/* Writes zeroes over [0, size) (preallocation=full). */
static int write_zeroes(int fd, uint64_t size)
{
    static const char zeroes[1 << 16];

    for (uint64_t off = 0; off < size; ) {
        size_t n = (size_t)MIN(size - off, sizeof(zeroes));
        ssize_t w = pwrite(fd, zeroes, n, (off_t)off);
        if (w < 0) {
            return -errno;
        }
        off += (uint64_t)w;
    }
    return 0;
}

static int create_raw(const CreateArgs *a, Error **errp)
{
    int fd = open(a->file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int ret = 0;

    if (fd < 0) {
        error_setg_errno(errp, errno, "cannot open");
        return -1;
    }
    if (a->prealloc == PREALLOC_FALLOC) {
        ret = -posix_fallocate(fd, 0, (off_t)a->size);
    } else if (a->prealloc == PREALLOC_FULL) {
        ret = write_zeroes(fd, a->size);
    }
    if (ret == 0 && ftruncate(fd, (off_t)a->size) < 0) {
        ret = -errno;
    }
    close(fd);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "cannot size it to %llu bytes",
                         (unsigned long long)a->size);
        return -1;
    }
    return 0;
}

/* GS: preallocates the new qcow2 image on file node "img-create". */
static int coroutine_fn preallocate_qcow2(Prealloc mode, Error **errp) GS
{
    BlockNode *bs;
    json_t *def;
    int ret;

    GS_CODE();
    def = json_pack("{s:s, s:s, s:s, s:n}", "driver", "qcow2", "node-name",
                    "img-create-fmt", "file", "img-create", "backing");
    bs = bdrv_co_open_blockdev(def, errp);
    json_decref(def);
    if (!bs) {
        return -1;
    }
    /* same order as QCOW2_PREALLOC_* */
    ret = qcow2_co_preallocate(bs, (int)mode, errp);
    bdrv_co_blockdev_del("img-create-fmt", NULL);
    return ret;
}

/*
 * GS: creates FILE and opens it as a file node with write and resize
 * permissions, which takes its image lock: an image another process uses is
 * refused before a byte of it changes.  Then writes the new image.
 */
static int coroutine_fn create_image(CreateArgs *a, Error **errp) GS
{
    BlockBackend *blk;
    BlockNode *bs;
    json_t *def;
    int ret;

    GS_CODE();
    if (img_create_file(a->file, errp) < 0) {
        return -1;
    }
    def = json_pack("{s:s, s:s, s:s}", "driver", "file", "node-name",
                    "img-create", "filename", a->file);
    bs = bdrv_co_open_blockdev(def, errp);
    json_decref(def);
    if (!bs) {
        error_prepend(errp, "Could not create '%s': ", a->file);
        return -1;
    }
    blk = blk_new("img-create", BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE |
                  BLK_PERM_RESIZE, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED);
    ret = blk_insert_node(blk, bs, errp);
    if (ret == 0) {
        if (!strcmp(a->format, "raw")) {
            /* the lock is held by our node; plain file calls do the rest */
            ret = create_raw(a, errp);
        } else {
            a->q.size = a->size;
            ret = qcow2_co_create(blk, &a->q, errp);
        }
        blk_co_remove_node(blk);
    }
    if (ret == 0 && strcmp(a->format, "raw") && a->prealloc != PREALLOC_OFF) {
        ret = preallocate_qcow2(a->prealloc, errp);
    }
    blk_co_unref(blk);
    bdrv_co_blockdev_del("img-create", NULL);
    if (ret < 0) {
        error_prepend(errp, "Could not create '%s': ", a->file);
        return -1;
    }
    return 0;
}

/* GS: the size of the backing file, for an overlay created without SIZE. */
static int coroutine_fn backing_size(CreateArgs *a, Error **errp) GS
{
    const char *b = a->q.backing_file;
    const char *slash = strrchr(a->file, '/');
    char *path;
    BlockBackend *blk;

    GS_CODE();
    /* a relative backing name is relative to the new image's directory */
    if (b[0] != '/' && slash) {
        if (asprintf(&path, "%.*s%s", (int)(slash - a->file + 1), a->file, b) < 0) {
            return -1;
        }
    } else {
        path = strdup(b);
    }
    blk = img_co_open(path, a->q.backing_format, IMG_OPEN_FORCE_SHARE, errp);
    free(path);
    if (!blk) {
        error_prepend(errp, "%s: ", a->file);
        return -1;
    }
    if (!a->has_size) {
        a->size = (uint64_t)blk_getlength(blk);
        a->has_size = true;
    }
    img_co_close(blk);
    return 0;
}

static void print_formatting(const CreateArgs *a)
{
    static const char *const prealloc_names[] = { "off", "metadata", "falloc", "full" };

    printf("Formatting '%s', fmt=%s", a->file, a->format);
    if (!strcmp(a->format, "qcow2")) {
        printf(" cluster_size=%u extended_l2=off", a->q.cluster_size ? a->q.cluster_size
                                                                     : 65536);
        if (a->prealloc != PREALLOC_OFF) {
            printf(" preallocation=%s", prealloc_names[a->prealloc]);
        }
        printf(" compression_type=%s size=%llu",
               a->q.compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib",
               (unsigned long long)a->size);
        if (a->q.backing_file) {
            printf(" backing_file=%s", a->q.backing_file);
        }
        if (a->q.backing_format) {
            printf(" backing_fmt=%s", a->q.backing_format);
        }
        printf(" lazy_refcounts=%s refcount_bits=%d\n",
               a->q.lazy_refcounts ? "on" : "off",
               a->q.refcount_bits ? a->q.refcount_bits : 16);
    } else {
        if (a->prealloc != PREALLOC_OFF) {
            printf(" preallocation=%s", prealloc_names[a->prealloc]);
        }
        printf(" size=%llu\n", (unsigned long long)a->size);
    }
    fflush(stdout);
}

/* GS (img_run). */
static int coroutine_fn create_main(void *opaque, Error **errp) GS
{
    CreateArgs *a = opaque;

    GS_CODE();
    if (a->q.backing_file && backing_size(a, errp) < 0) {
        return -1;
    }
    if (!a->has_size) {
        error_setg(errp, "%s: Image creation needs a size parameter", a->file);
        return -1;
    }
    if (!a->quiet) {
        print_formatting(a);
    }
    return create_image(a, errp) < 0 ? -1 : EXIT_OK;
}

/* Checks the combination of options; prints and returns false if wrong. */
static bool check_create_args(CreateArgs *a)
{
    if (strcmp(a->format, "raw") && strcmp(a->format, "qcow2")) {
        fprintf(stderr, "diskstack: Unknown file format '%s' (raw or qcow2)\n",
                a->format);
        return false;
    }
    if (!strcmp(a->format, "raw") && a->q.backing_file) {
        fprintf(stderr, "diskstack: %s: raw images cannot have a backing file\n",
                a->file);
        return false;
    }
    if (a->q.backing_file && !a->q.backing_format) {
        fprintf(stderr, "diskstack: %s: Backing file specified without backing "
                "format (add -F raw or -F qcow2)\n", a->file);
        return false;
    }
    if (!strcmp(a->format, "raw") && a->prealloc == PREALLOC_METADATA) {
        fprintf(stderr, "diskstack: %s: preallocation=metadata is not supported "
                "for raw images\n", a->file);
        return false;
    }
    if (a->size_text && !img_parse_size(a->size_text, &a->size)) {
        fprintf(stderr, "diskstack: Invalid image size '%s' specified: use a "
                "number with an optional k, M, G, T, P or E suffix\n", a->size_text);
        return false;
    }
    a->has_size |= a->size_text != NULL;
    return true;
}

/* Parses the options; returns -1 to continue, else the exit code. */
static int parse_create_args(int argc, char **argv, CreateArgs *a)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    a->format = "raw";
    while ((c = getopt_long(argc, argv, ":f:b:F:o:quh", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': a->format = optarg; break;
        case 'b': a->q.backing_file = optarg; break;
        case 'F': a->q.backing_format = optarg; break;
        case 'q': a->quiet = true; break;
        case 'u': break;     /* qemu-img's "unsafe": we never need the backing */
        case 'o':
            if (!parse_create_options(a, optarg)) {
                return EXIT_ERROR;
            }
            break;
        case 'h':
            print_create_help();
            return EXIT_OK;
        default:
            cli_bad_option("img create", argv, optopt, c == ':');
            return EXIT_USAGE;
        }
    }
    if (argc - optind < 1 || argc - optind > 2) {
        cli_usage_error("img create", argc - optind ? "expects FILE [SIZE]"
                        : "missing FILE");
        return EXIT_USAGE;
    }
    a->file = argv[optind];
    a->size_text = argc - optind == 2 ? argv[optind + 1] : NULL;
    return check_create_args(a) ? -1 : EXIT_ERROR;
}

int img_create(int argc, char **argv)
{
    CreateArgs a = { 0 };
    int ret = parse_create_args(argc, argv, &a);

    return ret >= 0 ? ret : img_run(create_main, &a);
}

/*
 * resize
 */

typedef struct ResizeArgs {
    const char *format;
    const char *file;
    const char *size_text;
    bool shrink;
    bool quiet;
} ResizeArgs;

static void print_resize_help(void)
{
    printf("Usage: diskstack img resize [OPTION]... FILE [+|-]SIZE\n"
           "\n"
           "Change the virtual size of an image to SIZE, or by +SIZE / -SIZE.\n"
           "\n"
           "Options:\n"
           "  -f FMT        image format (default: probe)\n"
           "      --shrink  allow making the image smaller (data past the new\n"
           "                end is lost)\n"
           "  -q            print nothing but errors\n"
           "  -h, --help    show this help\n");
}

/* The new length from "+1G", "-512M" or "10G"; false on junk. */
static bool resize_target(const char *text, int64_t cur, int64_t *out)
{
    uint64_t n;
    int sign = 0;

    if (*text == '+' || *text == '-') {
        sign = *text == '+' ? 1 : -1;
        text++;
    }
    if (!img_parse_size(text, &n) || n > (uint64_t)BDRV_MAX_LENGTH) {
        return false;
    }
    *out = sign == 0 ? (int64_t)n : cur + sign * (int64_t)n;
    return *out >= 0 && *out <= BDRV_MAX_LENGTH;
}

/* GS (img_run). */
static int coroutine_fn resize_main(void *opaque, Error **errp) GS
{
    ResizeArgs *a = opaque;
    BlockBackend *blk;
    int64_t cur, target;
    int ret;

    GS_CODE();
    blk = img_co_open(a->file, a->format, IMG_OPEN_RW | IMG_OPEN_RESIZE, errp);
    if (!blk) {
        return -1;
    }
    cur = blk_getlength(blk);
    if (!resize_target(a->size_text, cur, &target)) {
        error_setg(errp, "Invalid image size '%s' specified for '%s'",
                   a->size_text, a->file);
        img_co_close(blk);
        return -1;
    }
    if (target < cur && !a->shrink) {
        error_setg(errp, "Use the --shrink option to perform a shrink operation "
                   "(on '%s')", a->file);
        img_co_close(blk);
        return -1;
    }
    ret = target == cur ? 0 : blk_co_truncate(blk, target, false, errp);
    img_co_close(blk);
    if (ret < 0) {
        error_prepend(errp, "Could not resize '%s': ", a->file);
        return -1;
    }
    if (!a->quiet) {
        printf("Image resized.\n");
    }
    return EXIT_OK;
}

int img_resize(int argc, char **argv)
{
    enum { OPT_SHRINK = 256 };
    static const struct option longopts[] = {
        { "shrink", no_argument, NULL, OPT_SHRINK },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    ResizeArgs a = { 0 };
    int c;

    /* "resize FILE -1G": a negative size would look like an option */
    if (argc >= 3 && argv[argc - 1][0] == '-' && argv[argc - 1][1] >= '0' &&
        argv[argc - 1][1] <= '9') {
        a.size_text = argv[--argc];
    }
    while ((c = getopt_long(argc, argv, ":f:qh", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': a.format = optarg; break;
        case 'q': a.quiet = true; break;
        case OPT_SHRINK: a.shrink = true; break;
        case 'h':
            print_resize_help();
            return EXIT_OK;
        default:
            cli_bad_option("img resize", argv, optopt, c == ':');
            return EXIT_USAGE;
        }
    }
    if (argc - optind != (a.size_text ? 1 : 2)) {
        cli_usage_error("img resize", "expects FILE and [+|-]SIZE");
        return EXIT_USAGE;
    }
    a.file = argv[optind];
    a.size_text = a.size_text ? a.size_text : argv[optind + 1];
    return img_run(resize_main, &a);
}
