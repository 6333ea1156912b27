/*
 * mount.c — `diskstack mount [OPTION]... IMAGE FILE`: the one-shot front door.
 *
 * Opens IMAGE as the graph {"driver": FMT, "node-name": "disk", "file":
 * {"driver": "file", "node-name": "file", "filename": IMAGE}} and exports
 * node "disk" at FILE
 * (a regular file, created if missing and removed again afterwards), then
 * serves in the foreground until FILE is unmounted or a signal arrives.
 * A QMP socket (--qmp, default <runtime dir>/mount-<pid>.qmp, printed at
 * start-up) lets the client verbs steer the mounted image: node "disk",
 * export "mount".
 *
 * --throttle iops-total=N,bps-total=10M,... (QEMU's ThrottleLimits keys,
 * sizes with k/M/G suffixes) creates the throttle group "mount-throttle"
 * with those limits and puts the throttle node "throttle" between the
 * export and "disk"; `diskstack throttle set throttle --iops-total N`
 * changes them while mounted.  The limits are checked before anything is
 * opened: a key or value that does not parse is a usage error (exit 2),
 * limits that do not fit together (QEMU's rules) an error (exit 1).
 *
 * Without -f the format is probed: a read-only `file` node is opened on its
 * own, its first bytes are read through the graph and given to
 * bdrv_probe_format().  When that answers raw, the raw node is marked
 * `probed`, so the raw driver refuses writes that would make sector 0 look
 * like another format (the classic probing hole: a guest writing a qcow2
 * header into a raw image it does not own).
 *
 * Mistakes a person makes often (a missing image, a directory as FILE, FILE
 * still mounted or left stale by a killed diskstack, no access to /dev/fuse)
 * are checked before the runtime starts, so they get a message naming the
 * way out and leave nothing behind.
 *
 * Threading: functions marked GS run in coroutines on the main loop with the
 * global lock (the daemon's start-up); the others run on the main thread
 * before the runtime exists and touch no block-layer state.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block-gs.h"
#include "block-io.h"
#include "cli/cli.h"
#include "driver.h"   /* before export.h: its option table needs the type */
#include "fuse/export.h"
#include "filters/throttle.h"
#include "options.h"
#include "qmp/server.h"
#include "cli/client.h"

#define PROBE_NODE "probe"      /* the file node that probing opens alone */
#define THROTTLE_GROUP "mount-throttle"   /* --throttle's group ... */
#define THROTTLE_NODE "throttle"          /* ... and node above "disk" */
#define MAX_IOTHREADS 1024

typedef struct MountArgs {
    const char *format;      /* NULL: probe */
    bool read_only;
    bool allow_other;
    bool growable;
    int iothreads;
    const char *image;       /* as the user wrote them, for messages */
    const char *file;
    char mountpoint[PATH_MAX];   /* FILE made absolute */
    bool created_file;       /* we created FILE, so we remove it */
    const char *qmp_path;    /* --qmp: the control socket */
    char *qmp_default;       /* without --qmp: in the runtime dir */
    json_t *throttle;        /* --throttle: ThrottleLimits, or NULL */
} MountArgs;

static void print_mount_help(void)
{
    printf("Usage: diskstack mount [OPTION]... IMAGE FILE\n"
           "\n"
           "Export the disk image IMAGE as the regular file FILE (created if\n"
           "missing, removed afterwards) and serve it in the foreground until\n"
           "FILE is unmounted ('fusermount3 -u FILE') or a signal arrives.\n"
           "\n"
           "Options:\n"
           "  -f, --format=FMT   image format (raw, qcow2); default: probe,\n"
           "                     raw if not recognisably another format\n"
           "  -r, --read-only    open the image read-only (FILE refuses writes)\n"
           "      --iothreads=N  serve with N IOThreads (default: one per CPU)\n"
           "      --allow-other  let other users access FILE (needs root or\n"
           "                     user_allow_other in /etc/fuse.conf)\n"
           "      --growable     writes past the end and truncate grow the image\n"
           "      --throttle=LIMITS  cap the file's I/O: LIMITS is\n"
           "                     iops-total=N,bps-total=10M,... (QEMU's throttle\n"
           "                     limits: iops-/bps- total, read, write, each with\n"
           "                     -max and -max-length, and iops-size); the group\n"
           "                     is 'mount-throttle', the node 'throttle'\n"
           "      --qmp=SOCKET   accept QMP commands on the unix socket SOCKET\n"
           "                     (node 'disk', export 'mount'); default:\n"
           "                     <runtime dir>/mount-PID.qmp, see diskstack(1)\n"
           "  -h, --help         show this help\n");
}

/* Pure: "64 MiB", "1.5 GiB", "1000 bytes" for the mounted message. */
static void format_size(int64_t bytes, char *buf, size_t len)
{
    static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB" };
    double v = (double)bytes;
    int u = -1;

    while (v >= 1024 && u + 1 < (int)ARRAY_SIZE(units)) {
        v /= 1024;
        u++;
    }
    if (u < 0) {
        snprintf(buf, len, "%lld bytes", (long long)bytes);
    } else if (v == (double)(int64_t)v) {
        snprintf(buf, len, "%lld %s", (long long)v, units[u]);
    } else {
        snprintf(buf, len, "%.1f %s", v, units[u]);
    }
}

/* Prints one line and returns false when IMAGE cannot be used. */
static bool check_image(const MountArgs *a, struct stat *st)
{
    if (stat(a->image, st) < 0) {
        if (errno == ENOENT) {
            fprintf(stderr, "diskstack: image '%s' does not exist\n", a->image);
        } else {
            fprintf(stderr, "diskstack: image '%s': %s\n", a->image, strerror(errno));
        }
        return false;
    }
    if (S_ISDIR(st->st_mode)) {
        fprintf(stderr, "diskstack: image '%s' is a directory\n", a->image);
        return false;
    }
    return true;
}

/* True if path is the root of a mount: its device differs from its
 * directory's (a file mountpoint is never a bind of its own parent). */
static bool is_mountpoint(const char *path, const struct stat *st)
{
    char dir[PATH_MAX];
    struct stat dst;

    snprintf(dir, sizeof(dir), "%s", path);
    return stat(dirname(dir), &dst) == 0 && dst.st_dev != st->st_dev;
}

/* Checks FILE, creating it if missing.  Prints one line on error. */
static bool prepare_mountpoint(MountArgs *a, const struct stat *image_st)
{
    struct stat st;
    int fd;

    if (stat(a->file, &st) < 0) {
        if (errno == ENOTCONN) {
            fprintf(stderr, "diskstack: '%s' is the stale mount of a diskstack "
                    "that was killed; clear it with 'fusermount3 -u %s'\n",
                    a->file, a->file);
            return false;
        }
        if (errno != ENOENT) {
            fprintf(stderr, "diskstack: '%s': %s\n", a->file, strerror(errno));
            return false;
        }
        fd = open(a->file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0) {
            fprintf(stderr, "diskstack: cannot create '%s': %s\n",
                    a->file, strerror(errno));
            return false;
        }
        close(fd);
        a->created_file = true;
    } else if (S_ISDIR(st.st_mode)) {
        fprintf(stderr, "diskstack: '%s' is a directory; the mountpoint must "
                "be a regular file (it is created if missing)\n", a->file);
        return false;
    } else if (is_mountpoint(a->file, &st)) {
        fprintf(stderr, "diskstack: '%s' is already mounted; unmount it with "
                "'fusermount3 -u %s'\n", a->file, a->file);
        return false;
    } else if (!S_ISREG(st.st_mode)) {
        fprintf(stderr, "diskstack: '%s' is not a regular file\n", a->file);
        return false;
    } else if (st.st_dev == image_st->st_dev && st.st_ino == image_st->st_ino) {
        fprintf(stderr, "diskstack: '%s' is the image itself; mount it on "
                "another file\n", a->file);
        return false;
    }
    if (!realpath(a->file, a->mountpoint)) {
        fprintf(stderr, "diskstack: '%s': %s\n", a->file, strerror(errno));
        return false;
    }
    return true;
}

/* Without /dev/fuse nothing else matters; say so before opening anything. */
static bool check_dev_fuse(void)
{
    int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);

    if (fd >= 0) {
        close(fd);
        return true;
    }
    if (errno == ENOENT || errno == ENODEV || errno == ENXIO) {
        fprintf(stderr, "diskstack: /dev/fuse is missing: load the fuse "
                "module ('modprobe fuse')\n");
    } else {
        fprintf(stderr, "diskstack: no permission for /dev/fuse (%s): run as "
                "root or give your user access to /dev/fuse\n", strerror(errno));
    }
    return false;
}

/* GS: opens IMAGE with the file driver alone and returns the name of the
 * format its first bytes look like (raw when nothing recognises them). */
static const char *coroutine_fn probe_format(const MountArgs *a, Error **errp) GS
{
    json_t *def;
    BlockNode *bs;
    const BlockDriver *drv;

    GS_CODE();
    def = json_pack("{s:s, s:s, s:s, s:b}", "driver", "file",
                    "node-name", PROBE_NODE, "filename", a->image, "read-only", 1);
    bs = bdrv_co_open_blockdev(def, errp);
    json_decref(def);
    if (!bs) {
        return NULL;
    }
    drv = bdrv_co_probe_node(bs, errp);
    /* as QMP blockdev-del: the node was opened like blockdev-add */
    bdrv_co_blockdev_del(PROBE_NODE, NULL);
    return drv ? drv->format_name : NULL;
}

/* GS: the graph of the mount, node "disk" on top. */
static BlockNode *coroutine_fn open_disk(const MountArgs *a, const char *fmt,
                                         Error **errp) GS
{
    const BlockDriver *drv = bdrv_find_driver(fmt);
    BlockNode *bs = NULL;
    json_t *def;

    GS_CODE();
    if (!drv || !drv->is_format) {
        error_setg(errp, "'%s' is not an image format (try raw or qcow2)", fmt);
        return NULL;
    }
    /* The file node is named so that errors about it (the image lock) say
     * "Node 'file'" rather than an invented name. */
    /* discard=unmap: punching a hole in the mounted file frees space, as it
     * would in a plain file */
    def = json_pack("{s:s, s:s, s:{s:s, s:s, s:s, s:b}, s:b, s:s}",
                    "driver", fmt, "node-name", "disk",
                    "file", "driver", "file", "node-name", "file",
                    "filename", a->image, "read-only", a->read_only,
                    "read-only", a->read_only, "discard", "unmap");
    if (blockdev_def_check(def, false, errp) == 0) {
        bs = bdrv_co_open_blockdev(def, errp);
    }
    json_decref(def);
    return bs;
}

/* GS: exports node (the disk or the throttle above it) at the mountpoint. */
static BlockExport *coroutine_fn add_export(const MountArgs *a, const char *node,
                                            Error **errp) GS
{
    BlockExport *exp = NULL;
    json_t *def;

    GS_CODE();
    def = json_pack("{s:s, s:s, s:s, s:s, s:b, s:b, s:s}",
                    "type", "fuse", "id", "mount", "node-name", node,
                    "mountpoint", a->mountpoint, "writable", !a->read_only,
                    "growable", a->growable,
                    "allow-other", a->allow_other ? "on" : "off");
    if (opts_check(def, fuse_export_options, false, errp) == 0) {
        exp = block_export_add(def, errp);
    }
    json_decref(def);
    return exp;
}

/* GS: the throttle group and node of --throttle above "disk"; the name of
 * the node to export. */
static const char *coroutine_fn add_throttle(const MountArgs *a, Error **errp) GS
{
    BlockNode *bs = NULL;
    json_t *def;

    GS_CODE();
    if (!a->throttle) {
        return "disk";
    }
    if (throttle_group_create(THROTTLE_GROUP, a->throttle, errp) < 0) {
        return NULL;
    }
    def = json_pack("{s:s, s:s, s:s, s:s, s:b}", "driver", "throttle",
                    "node-name", THROTTLE_NODE, "throttle-group", THROTTLE_GROUP,
                    "file", "disk", "read-only", a->read_only);
    if (blockdev_def_check(def, false, errp) == 0) {
        bs = bdrv_co_open_blockdev(def, errp);
    }
    json_decref(def);
    return bs ? THROTTLE_NODE : NULL;
}

/* Main loop (GS): FILE was unmounted underneath us: that is how a user
 * stops a mount, so it is a clean exit. */
static void mount_gone(BlockExport *exp, void *opaque)
{
    global_lock_assert_held();
    daemon_shutdown(EXIT_OK);
}

/* GS: the one line that says where the image is and how to stop. */
static void print_mounted(const MountArgs *a, BlockNode *bs) GS
{
    char size[32];

    format_size(bdrv_getlength(bs), size, sizeof(size));
    fprintf(stderr, "diskstack: %s (%s, %s%s) mounted at %s; Ctrl-C or "
            "'fusermount3 -u %s' to stop\n", a->image, bs->drv->format_name,
            size, a->read_only ? ", read-only" : "", a->file, a->file);
}

/* GS: the control socket, so the mounted image can be steered with the
 * client verbs: --qmp, else <runtime dir>/mount-<pid>.qmp. */
static int start_qmp(MountArgs *a, Error **errp) GS
{
    const char *path = a->qmp_path;

    GS_CODE();
    if (!path && !(path = a->qmp_default = cli_default_qmp_path("mount", errp))) {
        return -1;
    }
    return qmp_server_start(path, errp);
}

/* DaemonConfig.start (GS, coroutine on the main loop). */
static int coroutine_fn mount_start(void *opaque, Error **errp) GS
{
    MountArgs *a = opaque;
    const char *fmt = a->format, *top;
    BlockNode *bs;
    BlockExport *exp;

    GS_CODE();
    if (!fmt && !(fmt = probe_format(a, errp))) {
        return -1;
    }
    bs = open_disk(a, fmt, errp);
    if (!bs) {
        return -1;
    }
    /* Set before the export exists, so before any write can arrive. */
    bs->probed = !a->format && !strcmp(fmt, "raw");
    top = add_throttle(a, errp);
    if (!top) {
        return -1;
    }
    exp = add_export(a, top, errp);
    if (!exp) {
        return -1;
    }
    block_export_set_gone_cb(exp, mount_gone, a);
    if (start_qmp(a, errp) < 0) {
        return -1;
    }
    /* the mount line first: scripts read it as the sign that it serves */
    print_mounted(a, bs);
    fprintf(stderr, "diskstack: QMP socket: %s\n",
            a->qmp_path ? a->qmp_path : a->qmp_default);
    return 0;
}

/*
 * --throttle LIMITS into a->throttle: key=value coerced against
 * throttle_limit_options (a bad key or value: usage error, exit 2), then
 * checked with QEMU's rules by the bucket code (exit 1).  Returns -1 to
 * continue, else the exit code.
 */
static int parse_throttle(MountArgs *a, const char *text)
{
    Error *err = NULL;
    ThrottleConfig cfg;
    json_t *limits = keyval_parse(text, &err);

    if (!limits || opts_check(limits, throttle_limit_options, true, &err) < 0) {
        cli_usage_error("mount", "--throttle %s: %s", text, error_get_pretty(err));
        error_free(err);
        json_decref(limits);
        return EXIT_USAGE;
    }
    if (throttle_config_parse(limits, NULL, &cfg, &err) < 0) {
        error_prepend(&err, "--throttle %s: ", text);
        cli_report_error(err);
        json_decref(limits);
        return EXIT_ERROR;
    }
    json_decref(a->throttle);
    a->throttle = limits;
    return -1;
}

/* Parses the options; returns -1 to continue, else the exit code. */
static int parse_mount_args(int argc, char **argv, MountArgs *a)
{
    enum { OPT_IOTHREADS = 256, OPT_ALLOW_OTHER, OPT_GROWABLE, OPT_QMP,
           OPT_THROTTLE };
    static const struct option longopts[] = {
        { "format", required_argument, NULL, 'f' },
        { "read-only", no_argument, NULL, 'r' },
        { "iothreads", required_argument, NULL, OPT_IOTHREADS },
        { "allow-other", no_argument, NULL, OPT_ALLOW_OTHER },
        { "growable", no_argument, NULL, OPT_GROWABLE },
        { "qmp", required_argument, NULL, OPT_QMP },
        { "throttle", required_argument, NULL, OPT_THROTTLE },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c, ret;

    a->iothreads = cli_default_iothreads();
    while ((c = getopt_long(argc, argv, ":f:rh", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': a->format = optarg; break;
        case 'r': a->read_only = true; break;
        case OPT_ALLOW_OTHER: a->allow_other = true; break;
        case OPT_GROWABLE: a->growable = true; break;
        case OPT_QMP: a->qmp_path = optarg; break;
        case OPT_THROTTLE:
            if ((ret = parse_throttle(a, optarg)) >= 0) {
                return ret;
            }
            break;
        case OPT_IOTHREADS:
            if (!cli_parse_count("mount", "--iothreads", optarg,
                                 MAX_IOTHREADS, &a->iothreads)) {
                return EXIT_USAGE;
            }
            break;
        case 'h':
            print_mount_help();
            return EXIT_OK;
        default:
            cli_bad_option("mount", argv, optopt, c == ':');
            return EXIT_USAGE;
        }
    }
    if (argc - optind < 2) {
        cli_usage_error("mount", "expects IMAGE and FILE");
        return EXIT_USAGE;
    }
    if (argc - optind > 2) {
        cli_usage_error("mount", "unexpected argument '%s'", argv[optind + 2]);
        return EXIT_USAGE;
    }
    a->image = argv[optind];
    a->file = argv[optind + 1];
    return -1;
}

int cmd_mount(int argc, char **argv)
{
    MountArgs a = { 0 };
    DaemonConfig config = { 0 };
    struct stat image_st;
    int ret = parse_mount_args(argc, argv, &a);

    if (ret >= 0) {
        json_decref(a.throttle);
        return ret;
    }
    if (!check_image(&a, &image_st) || !check_dev_fuse() ||
        !prepare_mountpoint(&a, &image_st)) {
        if (a.created_file) {
            unlink(a.file);
        }
        json_decref(a.throttle);
        return EXIT_ERROR;
    }
    config.n_iothreads = a.iothreads;
    config.start = mount_start;
    config.opaque = &a;
    ret = daemon_run(&config);
    /* The export is gone (unmounted) by now, so this is our plain file. */
    if (a.created_file && unlink(a.mountpoint) < 0 && errno != ENOENT) {
        fprintf(stderr, "diskstack: cannot remove '%s': %s\n",
                a.file, strerror(errno));
    }
    free(a.qmp_default);
    json_decref(a.throttle);
    return ret;
}
