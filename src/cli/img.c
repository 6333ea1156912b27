/*
 * img.c — `diskstack img SUBCOMMAND`: dispatch, and the pieces every img
 * subcommand shares (see img.h): running offline on the main loop, opening
 * an image chain into a backend, sizes, --output, JSON and progress output.
 *
 * Offline work reuses the daemon's start-up (daemon_run() with no IOThreads):
 * the subcommand's main function is the daemon's start() and asks for the
 * shutdown with its exit code when done, so the process start-up, signal
 * handling and the final flush-and-close of every node exist once.
 *
 * Threading: the parsers and printers are pure or main-thread code; the
 * functions marked GS run in coroutines on the main loop.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>       /* isnan */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "block-gs.h"
#include "block-io.h"
#include "cli/cli.h"
#include "cli/img.h"
#include "driver.h"
#include "options.h"

typedef struct ImgCommand {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} ImgCommand;

static const ImgCommand img_commands[] = {
    { "create", img_create, "create a new image (qcow2 or raw)" },
    { "info", img_info, "show an image's format, sizes, backing and snapshots" },
    { "check", img_check, "check a qcow2 image for leaks and corruption, -r repairs" },
    { "map", img_map, "show how the image's content is laid out" },
    { "resize", img_resize, "grow or shrink an image" },
    { "snapshot", img_snapshot, "list, create, apply or delete internal snapshots" },
    { "convert", img_convert, "copy an image into a new one (any format)" },
    { "compare", img_compare, "compare the content of two images" },
    { "rebase", img_rebase, "change the backing file of an image" },
};

/*
 * Running offline
 */

typedef struct ImgRun {
    ImgMainFn fn;
    void *opaque;
} ImgRun;

/* DaemonConfig.start (GS, coroutine on the main loop): runs the subcommand,
 * then asks for the shutdown with its exit code. */
static int coroutine_fn img_start(void *opaque, Error **errp) GS
{
    ImgRun *r = opaque;
    int ret;

    GS_CODE();
    ret = r->fn(r->opaque, errp);
    if (ret < 0) {
        return -1;              /* the daemon prints *errp and exits 1 */
    }
    daemon_shutdown(ret);
    return 0;
}

int img_run(ImgMainFn fn, void *opaque)
{
    ImgRun r = { fn, opaque };
    DaemonConfig config = { 0 };

    config.n_iothreads = 0;     /* everything on the main loop */
    config.start = img_start;
    config.opaque = &r;
    return daemon_run(&config);
}

/*
 * Opening images
 */

const char *coroutine_fn img_co_probe(const char *filename, Error **errp)
{
    const BlockDriver *drv;
    BlockNode *bs;
    json_t *def;

    GS_CODE();
    def = json_pack("{s:s, s:s, s:s, s:b, s:s}", "driver", "file",
                    "node-name", "img-probe", "filename", filename,
                    "read-only", 1, "locking", "off");
    bs = bdrv_co_open_blockdev(def, errp);
    json_decref(def);
    if (!bs) {
        return NULL;
    }
    drv = bdrv_co_probe_node(bs, errp);
    bdrv_co_blockdev_del("img-probe", NULL);
    return drv ? drv->format_name : NULL;
}

/* GS: the node definition of an image opened by img_co_open(). */
static json_t *image_definition(const char *name, const char *filename,
                                const char *fmt, int flags) GS
{
    char file_name[160];
    bool ro = !(flags & IMG_OPEN_RW);
    json_t *file, *def;

    GS_CODE();
    snprintf(file_name, sizeof(file_name), "%s-file", name);
    file = json_pack("{s:s, s:s, s:s, s:b}", "driver", "file",
                     "node-name", file_name, "filename", filename,
                     "read-only", ro);
    if (flags & IMG_OPEN_FORCE_SHARE) {
        json_object_set_new(file, "locking", json_string("off"));
    }
    /* discard=unmap, as qemu-img: zeroed clusters may be deallocated */
    def = json_pack("{s:s, s:s, s:o, s:b, s:s}", "driver", fmt, "node-name", name,
                    "file", file, "read-only", ro, "discard", "unmap");
    if ((flags & IMG_OPEN_NO_BACKING) && !strcmp(fmt, "qcow2")) {
        json_object_set_new(def, "backing", json_null());
    }
    return def;
}

/* The permissions the backend takes and shares (as qemu-img: a reader does
 * not share write unless -U, a writer shares only reads). */
static void backend_perms(int flags, uint64_t *perm, uint64_t *shared)
{
    *perm = BLK_PERM_CONSISTENT_READ;
    *shared = BLK_PERM_ALL & ~(uint64_t)BLK_PERM_WRITE;
    if (flags & IMG_OPEN_RW) {
        *perm |= BLK_PERM_WRITE;
        *shared = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED;
    }
    if (flags & IMG_OPEN_RESIZE) {
        *perm |= BLK_PERM_RESIZE;
        *shared &= ~(uint64_t)BLK_PERM_RESIZE;
    }
    if (flags & IMG_OPEN_FORCE_SHARE) {
        *shared = BLK_PERM_ALL;
    }
}

/* Before the runtime touches it: a missing file gets a plain message. */
static bool image_exists(const char *filename, Error **errp)
{
    if (access(filename, F_OK) < 0) {
        error_setg(errp, "Could not open '%s': %s", filename, strerror(errno));
        return false;
    }
    return true;
}

BlockBackend *coroutine_fn img_co_open(const char *filename, const char *fmt,
                                       int flags, Error **errp)
{
    static int counter;
    char name[128];
    const BlockDriver *drv;
    BlockBackend *blk;
    BlockNode *bs = NULL;
    uint64_t perm, shared;
    json_t *def;

    GS_CODE();
    if (!image_exists(filename, errp)) {
        return NULL;
    }
    if (!fmt && !(fmt = img_co_probe(filename, errp))) {
        return NULL;
    }
    drv = bdrv_find_driver(fmt);
    if (!drv || !drv->is_format) {
        error_setg(errp, "Unknown image format '%s' for '%s' (try raw or qcow2)",
                   fmt, filename);
        return NULL;
    }
    snprintf(name, sizeof(name), "img%d", counter++);
    def = image_definition(name, filename, fmt, flags);
    if (blockdev_def_check(def, false, errp) == 0) {
        bs = bdrv_co_open_blockdev(def, errp);
    }
    json_decref(def);
    if (!bs) {
        error_prepend(errp, "Could not open '%s': ", filename);
        return NULL;
    }
    bs->probed = false;
    backend_perms(flags, &perm, &shared);
    blk = blk_new(name, perm, shared);
    if (blk_insert_node(blk, bs, errp) < 0) {
        blk_co_unref(blk);
        bdrv_co_blockdev_del(name, NULL);
        error_prepend(errp, "Could not open '%s': ", filename);
        return NULL;
    }
    return blk;
}

void coroutine_fn img_co_close(BlockBackend *blk)
{
    char name[128];

    GS_CODE();
    if (!blk) {
        return;
    }
    snprintf(name, sizeof(name), "%s", blk_node(blk)->node_name);
    blk_co_remove_node(blk);
    blk_co_unref(blk);
    bdrv_co_blockdev_del(name, NULL);
}

/*
 * Sizes
 */

/* Multiplier of a size suffix letter (binary units, as qemu-img). */
static uint64_t suffix_shift(char c)
{
    static const char units[] = "bkmgtpe";
    const char *p = strchr(units, c | 0x20);

    if (c == '\0') {
        return 0;
    }
    return p ? (uint64_t)(p - units) * 10 : UINT64_MAX;
}

int img_create_file(const char *path, Error **errp)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);

    if (fd < 0) {
        error_setg_errno(errp, errno, "Could not create '%s'", path);
        return -1;
    }
    close(fd);
    return 0;
}

bool img_parse_size(const char *text, uint64_t *out)
{
    char *end;
    double v;
    uint64_t shift;

    if (!text || !*text || *text == '-' || *text == '+') {
        return false;
    }
    errno = 0;
    v = strtod(text, &end);
    if (end == text || errno || v < 0 || isnan(v)) {
        return false;
    }
    shift = suffix_shift(*end);
    if (shift == UINT64_MAX) {
        return false;
    }
    if (*end) {
        end++;
        /* "G", "GB", "GiB" */
        if ((end[0] | 0x20) == 'i' && (end[1] | 0x20) == 'b') {
            end += 2;
        } else if ((end[0] | 0x20) == 'b' && shift) {
            end++;
        }
    }
    if (*end) {
        return false;
    }
    v *= (double)(1ull << shift);     /* no libm: shift <= 60 */
    if (v >= 18446744073709551616.0 || v != (double)(uint64_t)v) {
        return false;
    }
    *out = (uint64_t)v;
    return true;
}

void img_format_size(uint64_t bytes, char *buf, size_t len)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
    double v = (double)bytes;
    int u = 0;

    while (v >= 1024 && u + 1 < (int)ARRAY_SIZE(units)) {
        v /= 1024;
        u++;
    }
    if (u == 0) {
        snprintf(buf, len, "%llu B", (unsigned long long)bytes);
    } else {
        /* qemu's size_to_str: three significant digits */
        snprintf(buf, len, "%0.3g %s", v, units[u]);
    }
}

bool img_parse_output(const char *cmd, const char *text, ImgOutput *out)
{
    if (!strcmp(text, "human")) {
        *out = IMG_OUTPUT_HUMAN;
    } else if (!strcmp(text, "json")) {
        *out = IMG_OUTPUT_JSON;
    } else {
        cli_usage_error(cmd, "--output must be 'human' or 'json', not '%s'", text);
        return false;
    }
    return true;
}

void img_print_json(json_t *j)
{
    char *text = json_dumps(j, JSON_INDENT(4) | JSON_PRESERVE_ORDER |
                            JSON_ENCODE_ANY);

    if (text) {
        printf("%s\n", text);
        free(text);
    }
    json_decref(j);
}

/*
 * Progress
 */

void img_progress_start(ImgProgress *p, bool enabled)
{
    p->enabled = enabled;
    p->last_tenths = -1;
    img_progress_update(p, 0, 1);
}

void img_progress_update(ImgProgress *p, uint64_t done, uint64_t total)
{
    int now;
    bool tty = isatty(STDOUT_FILENO);

    if (!p->enabled) {
        return;
    }
    now = total ? (int)((double)done * 10000 / (double)total) : 10000;
    /* a terminal gets every hundredth of a percent, a pipe whole percents */
    if (now == p->last_tenths || (!tty && p->last_tenths >= 0 &&
                                  now / 100 == p->last_tenths / 100)) {
        return;
    }
    p->last_tenths = now;
    printf("    (%.2f/100%%)%s", now / 100.0, tty ? "\r" : "\n");
    fflush(stdout);
}

void img_progress_end(ImgProgress *p)
{
    if (p->enabled) {
        p->last_tenths = -1;
        img_progress_update(p, 1, 1);
        if (isatty(STDOUT_FILENO)) {
            printf("\n");
        }
    }
}

/*
 * Dispatch
 */

static void print_img_help(void)
{
    printf("Usage: diskstack img SUBCOMMAND [OPTION]... ARG...\n"
           "\n"
           "Offline image work on the diskstack block layer (qemu-img's\n"
           "options, output and exit codes).\n"
           "\n"
           "Subcommands:\n");
    for (size_t i = 0; i < ARRAY_SIZE(img_commands); i++) {
        printf("  %-9s %s\n", img_commands[i].name, img_commands[i].summary);
    }
    printf("\nRun 'diskstack img SUBCOMMAND --help' for its options.\n");
}

int cmd_img(int argc, char **argv)
{
    if (argc < 2) {
        cli_usage_error("img", "missing subcommand");
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        print_img_help();
        return EXIT_OK;
    }
    for (size_t i = 0; i < ARRAY_SIZE(img_commands); i++) {
        if (!strcmp(img_commands[i].name, argv[1])) {
            optind = 0;
            return img_commands[i].run(argc - 1, argv + 1);
        }
    }
    cli_usage_error("img", "unknown subcommand '%s'", argv[1]);
    return EXIT_USAGE;
}
