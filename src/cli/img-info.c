/*
 * img-info.c — `diskstack img info` and `diskstack img map`: what an image
 * is and where its content lives, with qemu-img's JSON field names and a
 * human layout close to qemu-img's.
 *
 * Threading: option parsing on the main thread; the *_main functions and
 * what they call run as GS code in img_run()'s coroutine.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "block-gs.h"
#include "block-io.h"
#include "cli/cli.h"
#include "cli/img.h"
#include "driver.h"
#include "formats/qcow2/qcow2.h"

typedef struct InfoArgs {
    const char *format;
    const char *file;
    ImgOutput output;
    bool backing_chain;
    bool force_share;
} InfoArgs;

/*
 * Shared pieces
 */

/* A backing name relative to the directory of the image naming it. */
static char *full_backing_name(const char *image, const char *backing)
{
    const char *slash = strrchr(image, '/');
    char *out;

    if (backing[0] == '/' || strstr(backing, "://") || !slash) {
        return strdup(backing);
    }
    if (asprintf(&out, "%.*s%s", (int)(slash - image + 1), image, backing) < 0) {
        return NULL;
    }
    return out;
}

/* Bytes the file really occupies (qemu-img's "disk size"). */
static int64_t actual_size(const char *filename)
{
    struct stat st;
    return stat(filename, &st) == 0 ? (int64_t)st.st_blocks * 512 : -1;
}

/* Qcow2State of a qcow2 node, NULL for other formats. */
static Qcow2State *qcow2_state(BlockNode *bs)
{
    return bs->drv == &bdrv_qcow2 ? bs->opaque : NULL;
}

/*
 * info
 */

/* icount from a snapshot's extra data (bytes 16..23), -1 when absent. */
static int64_t snapshot_icount(const Qcow2Snapshot *sn)
{
    return sn->extra_size >= 24 ? (int64_t)ld_be64(sn->extra + 16) : -1;
}

static json_t *snapshot_json(const Qcow2SnapshotInfo *sn, int64_t icount)
{
    json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I}",
                          "id", sn->id, "name", sn->name,
                          "vm-state-size", (json_int_t)sn->vm_state_size,
                          "date-sec", (json_int_t)sn->date_sec,
                          "date-nsec", (json_int_t)sn->date_nsec,
                          "vm-clock-sec", (json_int_t)(sn->vm_clock_nsec / 1000000000ull),
                          "vm-clock-nsec", (json_int_t)(sn->vm_clock_nsec % 1000000000ull));
    if (icount >= 0) {
        json_object_set_new(o, "icount", json_integer(icount));
    }
    return o;
}

json_t *img_snapshots_json(BlockNode *bs)
{
    Qcow2State *s = qcow2_state(bs);
    Qcow2SnapshotInfo *list = NULL;
    json_t *arr;
    int n;

    GS_CODE();
    arr = json_array();
    n = s ? qcow2_snapshot_list(bs, &list) : 0;
    for (int i = 0; i < n; i++) {
        int64_t icount = i < s->nb_snap ? snapshot_icount(&s->snaps[i]) : -1;
        json_array_append_new(arr, snapshot_json(&list[i], icount));
    }
    free(list);     /* allocated even when there are no snapshots */
    return arr;
}

static void add_snapshots(json_t *o, BlockNode *bs) GS
{
    json_t *arr;

    GS_CODE();
    arr = img_snapshots_json(bs);
    if (json_array_size(arr) > 0) {
        json_object_set_new(o, "snapshots", arr);
    } else {
        json_decref(arr);
    }
}

static json_t *qcow2_specific_json(const Qcow2State *s)
{
    json_t *data;

    if (s->version < 3) {
        data = json_pack("{s:s, s:s, s:i}", "compat", "0.10",
                         "compression-type", "zlib",
                         "refcount-bits", s->refcount_bits);
    } else {
        data = json_pack("{s:s, s:s, s:b, s:i, s:b, s:b}", "compat", "1.1",
                         "compression-type",
                         s->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib",
                         "lazy-refcounts",
                         !!(s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS),
                         "refcount-bits", s->refcount_bits,
                         "corrupt", (int)s->corrupt,
                         "extended-l2", !!(s->incompat & QCOW2_INCOMPAT_EXTL2));
    }
    return json_pack("{s:s, s:o}", "type", "qcow2", "data", data);
}

/* The info object of one image of the chain; `name` as the user sees it.
 * Shared with QMP query-named-block-nodes (img.h). */
json_t *img_image_info(BlockNode *bs, const char *name) GS
{
    Qcow2State *s = qcow2_state(bs);
    json_t *o = json_object();

    GS_CODE();
    json_object_set_new(o, "filename", json_string(name));
    json_object_set_new(o, "format", json_string(bs->drv->format_name));
    json_object_set_new(o, "virtual-size", json_integer(bdrv_getlength(bs)));
    json_object_set_new(o, "actual-size", json_integer(actual_size(name)));
    json_object_set_new(o, "dirty-flag",
                        json_boolean(s && (s->incompat & QCOW2_INCOMPAT_DIRTY)));
    if (!s) {
        return o;
    }
    json_object_set_new(o, "cluster-size", json_integer((json_int_t)s->cluster_size));
    if (s->backing_file) {
        char *full = full_backing_name(name, s->backing_file);
        json_object_set_new(o, "backing-filename", json_string(s->backing_file));
        json_object_set_new(o, "full-backing-filename", json_string(full));
        free(full);
        if (s->backing_format) {
            json_object_set_new(o, "backing-filename-format",
                                json_string(s->backing_format));
        }
    }
    add_snapshots(o, bs);
    json_object_set_new(o, "format-specific", qcow2_specific_json(s));
    return o;
}

/* "2026-11-22 00:49:51" in local time, like qemu-img. */
static void format_date(uint64_t sec, char *buf, size_t len)
{
    time_t t = (time_t)sec;
    struct tm tm;

    localtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
}

void img_print_snapshot_table(json_t *snaps)
{
    size_t i;
    json_t *sn;

    printf("%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE",
           "VM CLOCK", "ICOUNT");
    json_array_foreach(snaps, i, sn) {
        char size[32], date[32], clock[96];
        uint64_t csec = json_integer_value(json_object_get(sn, "vm-clock-sec"));
        uint64_t cns = json_integer_value(json_object_get(sn, "vm-clock-nsec"));

        img_format_size(json_integer_value(json_object_get(sn, "vm-state-size")),
                        size, sizeof(size));
        format_date(json_integer_value(json_object_get(sn, "date-sec")),
                    date, sizeof(date));
        snprintf(clock, sizeof(clock), "%02llu:%02llu:%02llu.%03llu",
                 (unsigned long long)(csec / 3600), (unsigned long long)(csec / 60 % 60),
                 (unsigned long long)(csec % 60), (unsigned long long)(cns / 1000000));
        json_t *ic = json_object_get(sn, "icount");
        char icount[32] = "";
        if (ic) {
            snprintf(icount, sizeof(icount), "%lld", (long long)json_integer_value(ic));
        }
        printf("%-10s%-17s%8s%20s%13s%11s\n",
               json_string_value(json_object_get(sn, "id")),
               json_string_value(json_object_get(sn, "name")), size, date, clock,
               icount);
    }
}

static void print_specific_human(json_t *data)
{
    const char *key;
    json_t *v;

    printf("Format specific information:\n");
    json_object_foreach(data, key, v) {
        char label[64];
        snprintf(label, sizeof(label), "%s", key);
        for (char *p = label; *p; p++) {
            *p = *p == '-' ? ' ' : *p;
        }
        if (json_is_string(v)) {
            printf("    %s: %s\n", label, json_string_value(v));
        } else if (json_is_boolean(v)) {
            printf("    %s: %s\n", label, json_is_true(v) ? "true" : "false");
        } else {
            printf("    %s: %lld\n", label, (long long)json_integer_value(v));
        }
    }
}

static void print_info_human(json_t *o)
{
    char vs[32], ds[32];
    int64_t vsize = json_integer_value(json_object_get(o, "virtual-size"));
    json_t *v;

    img_format_size(vsize, vs, sizeof(vs));
    img_format_size(json_integer_value(json_object_get(o, "actual-size")), ds, sizeof(ds));
    printf("image: %s\nfile format: %s\nvirtual size: %s (%lld bytes)\n"
           "disk size: %s\n",
           json_string_value(json_object_get(o, "filename")),
           json_string_value(json_object_get(o, "format")), vs, (long long)vsize, ds);
    if ((v = json_object_get(o, "cluster-size"))) {
        printf("cluster_size: %lld\n", (long long)json_integer_value(v));
    }
    if ((v = json_object_get(o, "backing-filename"))) {
        const char *full = json_string_value(json_object_get(o, "full-backing-filename"));
        printf("backing file: %s", json_string_value(v));
        if (strcmp(full, json_string_value(v))) {
            printf(" (actual path: %s)", full);
        }
        printf("\n");
    }
    if ((v = json_object_get(o, "backing-filename-format"))) {
        printf("backing file format: %s\n", json_string_value(v));
    }
    if (json_is_true(json_object_get(o, "dirty-flag"))) {
        printf("cleanly shut down: no\n");
    }
    if ((v = json_object_get(o, "snapshots"))) {
        printf("Snapshot list:\n");
        img_print_snapshot_table(v);
    }
    if ((v = json_object_get(o, "format-specific"))) {
        print_specific_human(json_object_get(v, "data"));
    }
}

/* GS (img_run): info of the image, or of its whole chain. */
static int coroutine_fn info_main(void *opaque, Error **errp) GS
{
    InfoArgs *a = opaque;
    int flags = a->force_share ? IMG_OPEN_FORCE_SHARE : 0;
    BlockBackend *blk;
    json_t *chain = json_array();
    char *name = strdup(a->file);
    BlockNode *bs;

    GS_CODE();
    /* The chain is opened so a missing backing file is an error, as in
     * qemu-img; without --backing-chain only the top is described. */
    blk = img_co_open(a->file, a->format, flags, errp);
    if (!blk) {
        json_decref(chain);
        free(name);
        return -1;
    }
    bdrv_graph_rdlock_main_loop();
    for (bs = blk_node(blk); bs && name; ) {
        Qcow2State *s = qcow2_state(bs);
        json_array_append_new(chain, img_image_info(bs, name));
        if (!a->backing_chain || !bs->backing || !s || !s->backing_file) {
            break;
        }
        char *next = full_backing_name(name, s->backing_file);
        free(name);
        name = next;
        bs = bs->backing->node;
    }
    bdrv_graph_rdunlock_main_loop();
    free(name);
    img_co_close(blk);
    if (a->output == IMG_OUTPUT_JSON) {
        img_print_json(a->backing_chain ? json_incref(chain)
                       : json_incref(json_array_get(chain, 0)));
    } else {
        size_t i;
        json_t *o;
        json_array_foreach(chain, i, o) {
            if (i) {
                printf("\n");
            }
            print_info_human(o);
        }
    }
    json_decref(chain);
    return EXIT_OK;
}

static void print_info_help(void)
{
    printf("Usage: diskstack img info [OPTION]... FILE\n"
           "\n"
           "Show the format, sizes, backing file and snapshots of an image.\n"
           "\n"
           "Options:\n"
           "  -f, --format=FMT        image format (default: probe)\n"
           "      --output=human|json output format (default human)\n"
           "      --backing-chain     describe every image of the backing chain\n"
           "  -U, --force-share       open even if another process uses it\n"
           "  -h, --help              show this help\n");
}

static void print_map_help(void)
{
    printf("Usage: diskstack img map [OPTION]... FILE\n"
           "\n"
           "Show how the content of an image (and its backing chain) is laid\n"
           "out: which layer defines each range, data or zeroes, and where.\n"
           "\n"
           "Options:\n"
           "  -f, --format=FMT        image format (default: probe)\n"
           "      --output=human|json output format (default human)\n"
           "  -U, --force-share       open even if another process uses it\n"
           "  -h, --help              show this help\n");
}

/* Shared by info and map; returns -1 to continue, else the exit code. */
static int parse_info_args(const char *cmd, int argc, char **argv, InfoArgs *a,
                           void (*help)(void), bool chain_opt)
{
    enum { OPT_OUTPUT = 256, OPT_CHAIN };
    static const struct option longopts[] = {
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "backing-chain", no_argument, NULL, OPT_CHAIN },
        { "force-share", no_argument, NULL, 'U' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    while ((c = getopt_long(argc, argv, ":f:Uh", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': a->format = optarg; break;
        case 'U': a->force_share = true; break;
        case OPT_CHAIN:
            if (!chain_opt) {
                cli_bad_option(cmd, argv, 0, false);
                return EXIT_USAGE;
            }
            a->backing_chain = true;
            break;
        case OPT_OUTPUT:
            if (!img_parse_output(cmd, optarg, &a->output)) {
                return EXIT_USAGE;
            }
            break;
        case 'h':
            help();
            return EXIT_OK;
        default:
            cli_bad_option(cmd, argv, optopt, c == ':');
            return EXIT_USAGE;
        }
    }
    if (argc - optind != 1) {
        cli_usage_error(cmd, argc - optind ? "expects exactly one FILE"
                        : "missing FILE");
        return EXIT_USAGE;
    }
    a->file = argv[optind];
    return -1;
}

int img_info(int argc, char **argv)
{
    InfoArgs a = { 0 };
    int ret = parse_info_args("img info", argc, argv, &a, print_info_help, true);

    return ret >= 0 ? ret : img_run(info_main, &a);
}

/*
 * map
 */

typedef struct MapEntry {
    int64_t start, length;
    int depth;
    bool present, zero, data, has_offset;
    int64_t offset;
    const char *filename;
} MapEntry;

/* I/O (graph read lock): the status of [off, off+bytes) looked up down the
 * chain from bs. */
static int coroutine_fn GRAPH_RDLOCK map_one(BlockNode *bs, int64_t off,
                                             int64_t bytes, MapEntry *e)
{
    int depth = 0;

    IO_CODE();
    memset(e, 0, sizeof(*e));
    e->start = off;
    for (;;) {
        int64_t pnum = 0, map = 0;
        BlockNode *file = NULL;
        int ret = bdrv_co_block_status(bs, false, off, bytes, &pnum, &map, &file);

        if (ret < 0) {
            return ret;
        }
        if (pnum <= 0) {
            return -EIO;
        }
        bytes = pnum;
        if ((ret & BDRV_BLOCK_ALLOCATED) || !bs->backing ||
            off >= bdrv_getlength(bs->backing->node)) {
            e->present = !!(ret & BDRV_BLOCK_ALLOCATED);
            e->zero = !!(ret & BDRV_BLOCK_ZERO) || !e->present;
            e->data = !!(ret & BDRV_BLOCK_DATA);
            e->has_offset = (ret & BDRV_BLOCK_OFFSET_VALID) && file;
            e->offset = map;
            e->filename = file ? file->filename : bs->filename;
            e->depth = depth;
            e->length = bytes;
            return 0;
        }
        bs = bs->backing->node;
        bytes = MIN(bytes, bdrv_getlength(bs) - off);
        depth++;
    }
}

/* Two entries qemu-img map would print as one. */
static bool map_mergeable(const MapEntry *a, const MapEntry *b)
{
    return a->start + a->length == b->start && a->depth == b->depth &&
           a->present == b->present && a->zero == b->zero && a->data == b->data &&
           a->has_offset == b->has_offset &&
           (!a->has_offset || a->offset + a->length == b->offset) &&
           (!a->filename || !b->filename || !strcmp(a->filename, b->filename));
}

/* Prints one merged run; -1 when the human format cannot show it. */
static int print_map_entry(const MapEntry *e, ImgOutput out, bool first,
                           Error **errp)
{
    if (out == IMG_OUTPUT_HUMAN && e->data && !e->has_offset) {
        /* qemu-img: a host offset is the point of the human table */
        error_setg(errp, "File contains external, encrypted or compressed "
                   "clusters.");
        return -1;
    }
    if (out == IMG_OUTPUT_JSON) {
        printf("%s{ \"start\": %lld, \"length\": %lld, \"depth\": %d, "
               "\"present\": %s, \"zero\": %s, \"data\": %s",
               first ? "" : ",\n", (long long)e->start, (long long)e->length,
               e->depth, e->present ? "true" : "false", e->zero ? "true" : "false",
               e->data ? "true" : "false");
        if (e->has_offset) {
            printf(", \"offset\": %lld", (long long)e->offset);
        }
        printf("}");
    } else if (e->data && e->has_offset) {
        /* a backing file opened relative to "." is named as the user
         * would write it (qemu-img shows "base.raw", not "./base.raw") */
        const char *name = strncmp(e->filename, "./", 2) ? e->filename
                                                         : e->filename + 2;
        printf("%#-16llx%#-16llx%#-16llx%s\n", (unsigned long long)e->start,
               (unsigned long long)e->length, (unsigned long long)e->offset, name);
    }
    return 0;
}

/* GS (img_run): walks the image, merging runs like qemu-img map. */
static int coroutine_fn map_main(void *opaque, Error **errp) GS
{
    InfoArgs *a = opaque;
    int flags = a->force_share ? IMG_OPEN_FORCE_SHARE : 0;
    BlockBackend *blk;
    MapEntry cur = { 0 }, next;
    bool have = false, first = true;
    int64_t len, off = 0;
    int ret = 0;

    GS_CODE();
    blk = img_co_open(a->file, a->format, flags, errp);
    if (!blk) {
        return -1;
    }
    len = blk_getlength(blk);
    if (a->output == IMG_OUTPUT_JSON) {
        printf("[");
    } else {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    }
    bdrv_graph_co_rdlock();
    while (off < len) {
        ret = map_one(blk_node(blk), off, MIN(len - off, (int64_t)1 << 30), &next);
        if (ret < 0) {
            break;
        }
        off += next.length;
        if (have && map_mergeable(&cur, &next)) {
            cur.length += next.length;
            continue;
        }
        if (have && print_map_entry(&cur, a->output, first, errp) < 0) {
            ret = -EINVAL;
            break;
        }
        first = first && !have;
        cur = next;
        have = true;
    }
    bdrv_graph_co_rdunlock();
    if (have && ret == 0 && print_map_entry(&cur, a->output, first, errp) < 0) {
        ret = -EINVAL;
    }
    if (a->output == IMG_OUTPUT_JSON) {
        printf("]\n");
    }
    img_co_close(blk);
    if (ret < 0) {
        if (!*errp) {
            error_setg_errno(errp, -ret, "cannot map '%s' at offset %lld",
                             a->file, (long long)off);
        }
        return -1;
    }
    return EXIT_OK;
}

int img_map(int argc, char **argv)
{
    InfoArgs a = { 0 };
    int ret = parse_info_args("img map", argc, argv, &a, print_map_help, false);

    return ret >= 0 ? ret : img_run(map_main, &a);
}
