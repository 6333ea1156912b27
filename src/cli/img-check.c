/*
 * img-check.c — `diskstack img check [-f FMT] [-r leaks|all] [--output
 * human|json] [-q] [-U] FILE`: qemu-img check's counts, output and exit
 * codes (0 clean, 1 the check could not run, 2 corruptions, 3 leaks only).
 *
 * The walk itself is formats/qcow2/check.c; this file parses, opens and
 * prints.  Threading: main thread; check_main runs as GS code (img_run).
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "block-gs.h"
#include "cli/cli.h"
#include "cli/img.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"

typedef struct CheckArgs {
    const char *format;
    const char *file;
    int fix;                 /* QCOW2_CHECK_FIX_* */
    ImgOutput output;
    bool quiet;
    bool force_share;
} CheckArgs;

static void print_check_help(void)
{
    printf("Usage: diskstack img check [OPTION]... FILE\n"
           "\n"
           "Check a qcow2 image for leaked clusters and corruption.\n"
           "Exit code: 0 no errors, 1 the check could not run, 2 corruptions,\n"
           "3 leaked clusters only.\n"
           "\n"
           "Options:\n"
           "  -f, --format=FMT        image format (default: probe)\n"
           "  -r, --repair=leaks|all  repair leaks, or leaks and corruptions\n"
           "      --output=human|json output format (default human)\n"
           "  -U, --force-share       open even if another process uses it\n"
           "  -q, --quiet             print nothing but errors\n"
           "  -h, --help              show this help\n");
}

/* Optional counts are left out when zero, as qemu-img does. */
static void set_nonzero(json_t *o, const char *key, uint64_t v)
{
    if (v) {
        json_object_set_new(o, key, json_integer((json_int_t)v));
    }
}

static void print_check_json(const CheckArgs *a, const char *fmt,
                             const Qcow2CheckResult *r)
{
    json_t *o = json_object();

    json_object_set_new(o, "filename", json_string(a->file));
    json_object_set_new(o, "format", json_string(fmt));
    json_object_set_new(o, "check-errors", json_integer((json_int_t)r->check_errors));
    set_nonzero(o, "corruptions", r->corruptions);
    set_nonzero(o, "leaks", r->leaks);
    set_nonzero(o, "corruptions-fixed", r->corruptions_fixed);
    set_nonzero(o, "leaks-fixed", r->leaks_fixed);
    set_nonzero(o, "image-end-offset", r->image_end_offset);
    set_nonzero(o, "total-clusters", r->total_clusters);
    set_nonzero(o, "allocated-clusters", r->allocated_clusters);
    set_nonzero(o, "fragmented-clusters", r->fragmented_clusters);
    set_nonzero(o, "compressed-clusters", r->compressed_clusters);
    img_print_json(o);
}

static void print_check_human(const Qcow2CheckResult *r)
{
    if (r->leaks_fixed || r->corruptions_fixed) {
        printf("The following inconsistencies were found and repaired:\n\n"
               "    %llu leaked clusters\n    %llu corruptions\n\n"
               "Double checking the fixed image now...\n",
               (unsigned long long)r->leaks_fixed,
               (unsigned long long)r->corruptions_fixed);
    }
    if (!r->corruptions && !r->leaks && !r->check_errors) {
        printf("No errors were found on the image.\n");
    }
    if (r->corruptions) {
        printf("\n%llu errors were found on the image.\nData may be corrupted, "
               "or further writes to the image may corrupt it.\n",
               (unsigned long long)r->corruptions);
    }
    if (r->leaks) {
        printf("\n%llu leaked clusters were found on the image.\nThis means "
               "waste of disk space, but no harm to data.\n",
               (unsigned long long)r->leaks);
    }
    if (r->check_errors) {
        printf("\n%llu internal errors have occurred during the check.\n",
               (unsigned long long)r->check_errors);
    }
    if (r->total_clusters && r->allocated_clusters) {
        printf("%llu/%llu = %0.2f%% allocated, %0.2f%% fragmented, "
               "%0.2f%% compressed clusters\n",
               (unsigned long long)r->allocated_clusters,
               (unsigned long long)r->total_clusters,
               r->allocated_clusters * 100.0 / r->total_clusters,
               r->fragmented_clusters * 100.0 / r->allocated_clusters,
               r->compressed_clusters * 100.0 / r->allocated_clusters);
    }
    if (r->image_end_offset) {
        printf("Image end offset: %llu\n", (unsigned long long)r->image_end_offset);
    }
}

static int check_exit_code(const Qcow2CheckResult *r)
{
    if (r->check_errors) {
        return EXIT_ERROR;
    }
    if (r->corruptions) {
        return IMG_EXIT_CORRUPT;
    }
    return r->leaks ? IMG_EXIT_LEAKS : EXIT_OK;
}

/* GS (img_run): opens, checks, prints. */
static int coroutine_fn check_main(void *opaque, Error **errp) GS
{
    CheckArgs *a = opaque;
    Qcow2CheckResult r;
    BlockBackend *blk;
    BlockNode *bs;
    int flags = IMG_OPEN_NO_BACKING;
    int ret;

    GS_CODE();
    flags |= a->fix ? IMG_OPEN_RW : 0;
    flags |= a->force_share ? IMG_OPEN_FORCE_SHARE : 0;
    blk = img_co_open(a->file, a->format, flags, errp);
    if (!blk) {
        return -1;
    }
    bs = blk_node(blk);
    if (bs->drv != &bdrv_qcow2) {
        error_setg(errp, "This image format (%s) does not support checks",
                   bs->drv->format_name);
        img_co_close(blk);
        return -1;
    }
    ret = qcow2_co_check(bs, a->fix, &r, errp);
    if (ret == 0 && !a->quiet) {
        if (a->output == IMG_OUTPUT_JSON) {
            print_check_json(a, bs->drv->format_name, &r);
        } else {
            print_check_human(&r);
        }
    }
    img_co_close(blk);
    return ret < 0 ? -1 : check_exit_code(&r);
}

/* Parses the options; returns -1 to continue, else the exit code. */
static int parse_check_args(int argc, char **argv, CheckArgs *a)
{
    enum { OPT_OUTPUT = 256 };
    static const struct option longopts[] = {
        { "format", required_argument, NULL, 'f' },
        { "repair", required_argument, NULL, 'r' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "force-share", no_argument, NULL, 'U' },
        { "quiet", no_argument, NULL, 'q' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    while ((c = getopt_long(argc, argv, ":f:r:Uqh", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': a->format = optarg; break;
        case 'U': a->force_share = true; break;
        case 'q': a->quiet = true; break;
        case 'r':
            if (!strcmp(optarg, "leaks")) {
                a->fix = QCOW2_CHECK_FIX_LEAKS;
            } else if (!strcmp(optarg, "all")) {
                a->fix = QCOW2_CHECK_FIX_LEAKS | QCOW2_CHECK_FIX_ERRORS;
            } else {
                cli_usage_error("img check", "-r expects 'leaks' or 'all', not '%s'",
                                optarg);
                return EXIT_USAGE;
            }
            break;
        case OPT_OUTPUT:
            if (!img_parse_output("img check", optarg, &a->output)) {
                return EXIT_USAGE;
            }
            break;
        case 'h':
            print_check_help();
            return EXIT_OK;
        default:
            cli_bad_option("img check", argv, optopt, c == ':');
            return EXIT_USAGE;
        }
    }
    if (argc - optind != 1) {
        cli_usage_error("img check", argc - optind ? "expects exactly one FILE"
                        : "missing FILE");
        return EXIT_USAGE;
    }
    a->file = argv[optind];
    return -1;
}

int img_check(int argc, char **argv)
{
    CheckArgs a = { 0 };
    int ret = parse_check_args(argc, argv, &a);

    if (ret >= 0) {
        return ret;
    }
    if (a.force_share && a.fix) {
        cli_usage_error("img check", "-U cannot be used with -r");
        return EXIT_USAGE;
    }
    return img_run(check_main, &a);
}
