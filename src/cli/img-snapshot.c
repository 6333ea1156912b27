/*
 * img-snapshot.c — `diskstack img snapshot -l|-c NAME|-a NAME|-d NAME
 * [-f FMT] [-U] [-q] FILE`: qcow2 internal snapshots, as qemu-img snapshot.
 *
 * Threading: option parsing on the main thread; snapshot_main is GS code in
 * img_run()'s coroutine (the qcow2 snapshot functions quiesce the node).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block-gs.h"
#include "cli/cli.h"
#include "cli/img.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"

typedef enum SnapAction { SNAP_NONE, SNAP_LIST, SNAP_CREATE, SNAP_APPLY, SNAP_DELETE } SnapAction;

typedef struct SnapArgs {
    SnapAction action;
    const char *name;
    const char *format;
    const char *file;
    bool force_share;
    bool quiet;
} SnapArgs;

static void print_snapshot_help(void)
{
    printf("Usage: diskstack img snapshot [-l | -c NAME | -a NAME | -d NAME] "
           "[OPTION]... FILE\n"
           "\n"
           "List, create, apply (revert to) or delete internal snapshots of a\n"
           "qcow2 image.\n"
           "\n"
           "Options:\n"
           "  -l                list the snapshots\n"
           "  -c NAME           create snapshot NAME of the current content\n"
           "  -a NAME           revert the image to snapshot NAME (ID or name)\n"
           "  -d NAME           delete snapshot NAME (ID or name)\n"
           "  -f, --format=FMT  image format (default: probe)\n"
           "  -U, --force-share open even if another process uses it (-l only)\n"
           "  -q, --quiet       print nothing but errors\n"
           "  -h, --help        show this help\n");
}

/* GS: prints the table of `img snapshot -l`. */
static void list_snapshots(BlockNode *bs) GS
{
    json_t *arr;

    GS_CODE();
    arr = img_snapshots_json(bs);
    if (json_array_size(arr) > 0) {
        printf("Snapshot list:\n");
        img_print_snapshot_table(arr);
    }
    json_decref(arr);
}

/* GS (img_run). */
static int coroutine_fn snapshot_main(void *opaque, Error **errp) GS
{
    SnapArgs *a = opaque;
    int flags = a->action == SNAP_LIST ? 0 : IMG_OPEN_RW | IMG_OPEN_NO_BACKING;
    BlockBackend *blk;
    BlockNode *bs;
    int ret = 0;

    GS_CODE();
    flags |= a->force_share ? IMG_OPEN_FORCE_SHARE : 0;
    blk = img_co_open(a->file, a->format, flags, errp);
    if (!blk) {
        return -1;
    }
    bs = blk_node(blk);
    if (bs->drv != &bdrv_qcow2) {
        error_setg(errp, "Could not %s '%s': the %s format has no internal snapshots",
                   a->action == SNAP_LIST ? "list snapshots of" : "change snapshots of",
                   a->file, bs->drv->format_name);
        img_co_close(blk);
        return -1;
    }
    switch (a->action) {
    case SNAP_LIST:
        list_snapshots(bs);
        break;
    case SNAP_CREATE:
        ret = qcow2_snapshot_create(bs, a->name, errp);
        break;
    case SNAP_APPLY:
        ret = qcow2_snapshot_apply(bs, a->name, errp);
        break;
    default:
        ret = qcow2_snapshot_delete(bs, a->name, errp);
        break;
    }
    img_co_close(blk);
    if (ret < 0) {
        error_prepend(errp, "Could not %s snapshot '%s' of '%s': ",
                      a->action == SNAP_CREATE ? "create" :
                      a->action == SNAP_APPLY ? "apply" : "delete", a->name, a->file);
        return -1;
    }
    return EXIT_OK;
}

/* One action only, as qemu-img. */
static bool set_action(SnapArgs *a, SnapAction act, const char *name)
{
    if (a->action != SNAP_NONE) {
        cli_usage_error("img snapshot", "only one of -l, -c, -a, -d may be given");
        return false;
    }
    a->action = act;
    a->name = name;
    return true;
}

/* Parses the options; returns -1 to continue, else the exit code. */
static int parse_snapshot_args(int argc, char **argv, SnapArgs *a)
{
    static const struct option longopts[] = {
        { "format", required_argument, NULL, 'f' },
        { "force-share", no_argument, NULL, 'U' },
        { "quiet", no_argument, NULL, 'q' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    bool ok = true;

    while (ok && (c = getopt_long(argc, argv, ":lc:a:d:f:Uqh", longopts, NULL)) != -1) {
        switch (c) {
        case 'l': ok = set_action(a, SNAP_LIST, NULL); break;
        case 'c': ok = set_action(a, SNAP_CREATE, optarg); break;
        case 'a': ok = set_action(a, SNAP_APPLY, optarg); break;
        case 'd': ok = set_action(a, SNAP_DELETE, optarg); break;
        case 'f': a->format = optarg; break;
        case 'U': a->force_share = true; break;
        case 'q': a->quiet = true; break;
        case 'h':
            print_snapshot_help();
            return EXIT_OK;
        default:
            cli_bad_option("img snapshot", argv, optopt, c == ':');
            return EXIT_USAGE;
        }
    }
    if (!ok) {
        return EXIT_USAGE;
    }
    if (argc - optind != 1) {
        cli_usage_error("img snapshot", argc - optind ? "expects exactly one FILE"
                        : "missing FILE");
        return EXIT_USAGE;
    }
    if (a->action == SNAP_NONE) {
        a->action = SNAP_LIST;     /* qemu-img's default */
    }
    if (a->force_share && a->action != SNAP_LIST) {
        cli_usage_error("img snapshot", "-U can only be used with -l");
        return EXIT_USAGE;
    }
    a->file = argv[optind];
    return -1;
}

int img_snapshot(int argc, char **argv)
{
    SnapArgs a = { 0 };
    int ret = parse_snapshot_args(argc, argv, &a);

    return ret >= 0 ? ret : img_run(snapshot_main, &a);
}
