/*
 * mount.c — mounting the export's FUSE file system on a regular file.
 *
 * libfuse does only the mount here: fuse_session_new() with an empty
 * operation table, then fuse_session_mount(), which knows both the mount(2)
 * path (root) and the fusermount3 path (everyone else) and sets rootmode for
 * a regular-file mountpoint.  We never run libfuse's loop: libfuse 3.14 can
 * serve cloned fds only from its own thread pool, so the export reads and
 * answers /dev/fuse itself (proto.c), one cloned fd per IOThread.
 *
 * Everything in this file is GS code (main thread, global lock).
 */
#define FUSE_USE_VERSION 31

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include <fuse_lowlevel.h>

#include "fuse/fuse-int.h"

static const struct fuse_lowlevel_ops no_ops;

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static void unescape_mountinfo(char *s)
{
    char *out = s;

    while (*s) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '7' && s[2] && s[3]) {
            *out++ = (char)(((s[1] - '0') << 6) | ((s[2] - '0') << 3) | (s[3] - '0'));
            s += 4;
        } else {
            *out++ = *s++;
        }
    }
    *out = '\0';
}

/*
 * Finds the last mount on abs_path in /proc/self/mountinfo.  Returns true
 * and the device minor (for anonymous devices such as FUSE's, the fusectl
 * directory name) if there is one.
 */
static bool find_mount(const char *abs_path, unsigned *minor_out)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char *line = NULL;
    size_t cap = 0;
    bool found = false;

    if (!f) {
        return false;
    }
    while (getline(&line, &cap, f) > 0) {
        unsigned id, parent, major, minor;
        char root[4096], mnt[4096];

        if (sscanf(line, "%u %u %u:%u %4095s %4095s", &id, &parent, &major,
                   &minor, root, mnt) != 6) {
            continue;
        }
        unescape_mountinfo(mnt);
        if (strcmp(mnt, abs_path) == 0) {
            found = true;
            if (minor_out) {
                *minor_out = (major << 20) | minor;
            }
        }
    }
    free(line);
    fclose(f);
    return found;
}

bool fuse_path_is_mounted(const char *abs_path) GS
{
    GS_CODE();
    return find_mount(abs_path, NULL);
}

char *fuse_abs_path(const char *path) GS
{
    char *copy_dir = strdup(path), *copy_base = strdup(path);
    char *dir_real, *out = NULL;
    const char *base;

    GS_CODE();
    dir_real = realpath(dirname(copy_dir), NULL);
    base = basename(copy_base);
    if (dir_real) {
        if (asprintf(&out, "%s/%s", strcmp(dir_real, "/") ? dir_real : "", base) < 0) {
            out = NULL;
        }
        free(dir_real);
    }
    free(copy_dir);
    free(copy_base);
    return out;
}

static struct fuse_session *new_session(bool allow_other, bool read_only)
{
    char opts[256];
    char *argv[4];
    struct fuse_args args;
    struct fuse_session *se;

    /* max_read must match the max_pages we negotiate in INIT. */
    snprintf(opts, sizeof(opts), "max_read=%d,default_permissions%s%s",
             FUSE_EXPORT_MAX_IO, allow_other ? ",allow_other" : "",
             read_only ? ",ro" : "");
    argv[0] = (char *)"diskstack";
    argv[1] = (char *)"-o";
    argv[2] = opts;
    argv[3] = NULL;
    args = (struct fuse_args)FUSE_ARGS_INIT(3, argv);
    se = fuse_session_new(&args, &no_ops, sizeof(no_ops), NULL);
    /* Option parsing may have replaced argv with an allocated copy. */
    fuse_opt_free_args(&args);
    return se;
}

int fuse_mount_file(FuseMount *m, const char *path, bool allow_other,
                    bool read_only, Error **errp) GS
{
    struct fuse_session *se;

    GS_CODE();
    se = new_session(allow_other, read_only);
    if (!se) {
        error_setg(errp, "Failed to set up a FUSE session for '%s'", path);
        return -EIO;
    }
    if (fuse_session_mount(se, path) < 0) {
        fuse_session_destroy(se);
        error_setg(errp, "Failed to mount FUSE file system on '%s'", path);
        return -EIO;
    }
    m->session = se;
    m->path = strdup(path);
    m->allow_other = allow_other;
    m->conn_id = 0;
    find_mount(path, &m->conn_id);
    return 0;
}

int fuse_mount_fd(FuseMount *m) GS
{
    GS_CODE();
    return fuse_session_fd(m->session);
}

/*
 * Lazy unmount (libfuse: umount2(MNT_DETACH) as root, fusermount3 -u -z
 * otherwise).  If nobody has the file open the connection ends right here
 * and every cloned fd reports ENODEV; otherwise fuse_abort_conn() ends it.
 */
void fuse_unmount_file(FuseMount *m) GS
{
    GS_CODE();
    if (!m->session) {
        return;
    }
    fuse_session_unmount(m->session);
    fuse_session_destroy(m->session);
    m->session = NULL;
}

/* fusectl is where a FUSE connection can be aborted; mount it if missing. */
static int open_abort_file(unsigned conn_id)
{
    char p[64];
    int fd;

    snprintf(p, sizeof(p), "/sys/fs/fuse/connections/%u/abort", conn_id);
    fd = open(p, O_WRONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && geteuid() == 0 &&
        !find_mount("/sys/fs/fuse/connections", NULL)) {
        if (mount("fusectl", "/sys/fs/fuse/connections", "fusectl", 0, NULL) == 0) {
            fd = open(p, O_WRONLY | O_CLOEXEC);
        }
    }
    return fd;
}

void fuse_abort_conn(FuseMount *m) GS
{
    int fd;

    GS_CODE();
    if (!m->conn_id) {
        return;
    }
    fd = open_abort_file(m->conn_id);
    if (fd >= 0) {
        if (write(fd, "1", 1) < 0) {
            /* Already gone: nothing to abort. */
        }
        close(fd);
    }
}
