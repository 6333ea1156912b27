/*
 * rebase.c — changing the backing file name and format recorded in the
 * header (for `diskstack img rebase`).
 *
 * The header cluster is rebuilt from what is on disk: the fixed header
 * fields verbatim (so the compression type, feature bits and any fields we
 * do not know survive), then the new backing format extension, then every
 * other extension verbatim in its old order, the end marker, and the backing
 * file name.  The whole cluster is written in one request and flushed, so a
 * crash leaves either the old or the new header, as in QEMU.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "qcow2.h"
#include "block-gs.h"

/* Bytes of the backing format extension for fmt (none for NULL). */
static size_t fmt_ext_bytes(const char *fmt)
{
    return fmt ? 8 + ROUND_UP(strlen(fmt), 8) : 0;
}

/*
 * Copies the extensions of the old header area [start, end) except the
 * backing format into out at *p, keeping room for `reserve` bytes after them.
 * Pure.
 */
static int copy_other_exts(const uint8_t *old, uint64_t start, uint64_t end,
                           uint8_t *out, size_t *p, size_t reserve, size_t cs,
                           Error **errp)
{
    for (uint64_t off = start; off + 8 <= end;) {
        uint32_t type = ld_be32(old + off), len = ld_be32(old + off + 4);
        uint64_t n = 8 + ROUND_UP((uint64_t)len, 8);
        if (type == QEXT_END) {
            return 0;
        }
        if (len > end - off - 8) {
            error_setg(errp, "qcow2: header extension 0x%08x at offset %llu runs "
                       "past the header area", type, (unsigned long long)off);
            return -EINVAL;
        }
        if (type != QEXT_BACKING_FORMAT) {
            if (*p + n + reserve > cs) {
                error_setg(errp, "qcow2: the new backing file name does not fit "
                           "in the header cluster");
                return -ENOSPC;
            }
            memcpy(out + *p, old + off, 8 + len);
            *p += n;
        }
        off += n;
    }
    return 0;
}

/* Builds the new header cluster in out (cs bytes, zeroed).  Pure. */
static int build_new_header(const Qcow2State *s, const uint8_t *old,
                            const char *name, const char *fmt, uint8_t *out,
                            Error **errp)
{
    size_t cs = s->cluster_size, p = s->header_length;
    size_t name_len = name ? strlen(name) : 0;
    uint64_t old_name_off = ld_be64(old + 8);
    uint64_t ext_end = old_name_off && old_name_off < cs ? old_name_off : cs;
    int ret;

    if (name_len > QCOW2_MAX_BACKING_NAME ||
        p + fmt_ext_bytes(fmt) + 8 + name_len > cs) {
        error_setg(errp, "qcow2: backing file name '%s' does not fit in the "
                   "header cluster", name);
        return -ENOSPC;
    }
    memcpy(out, old, s->header_length);
    if (fmt) {
        st_be32(out + p, QEXT_BACKING_FORMAT);
        st_be32(out + p + 4, strlen(fmt));
        memcpy(out + p + 8, fmt, strlen(fmt));
        p += fmt_ext_bytes(fmt);
    }
    ret = copy_other_exts(old, s->header_length, ext_end, out, &p,
                          8 + name_len, cs, errp);
    if (ret < 0) {
        return ret;
    }
    p += 8;                                   /* end-of-extensions marker */
    memcpy(out + p, name ? name : "", name_len);
    st_be64(out + 8, name_len ? p : 0);
    st_be32(out + 16, name_len);
    return 0;
}

/* Replaces the in-memory copy of the backing name and format. */
static int remember_backing(Qcow2State *s, const char *name, const char *fmt)
{
    char *n = name ? strdup(name) : NULL, *f = fmt ? strdup(fmt) : NULL;

    if ((name && !n) || (fmt && !f)) {
        free(n);
        free(f);
        return -ENOMEM;
    }
    free(s->backing_file);
    free(s->backing_format);
    s->backing_file = n;
    s->backing_format = f;
    return 0;
}

/* I/O, s->lock held: metadata written back, header cluster rewritten. */
static int coroutine_fn GRAPH_RDLOCK rewrite_header(Qcow2State *s, const char *name,
                                                    const char *fmt, Error **errp)
{
    size_t cs = s->cluster_size;
    uint8_t *old = calloc(1, cs), *out = calloc(1, cs);
    int ret = (!old || !out) ? -ENOMEM : qcow2_flush_metadata(s);

    if (ret == 0) {
        ret = bdrv_co_pread(s->bs->file, 0, cs, old, 0);
    }
    if (ret == 0) {
        ret = build_new_header(s, old, name, fmt, out, errp);
    }
    if (ret == 0) {
        ret = bdrv_co_pwrite(s->bs->file, 0, cs, out, 0);
        if (ret == 0) {
            ret = bdrv_co_flush(s->bs->file->node);
        }
    }
    if (ret == 0) {
        ret = remember_backing(s, name, fmt);
    }
    if (ret < 0 && errp && !*errp) {
        error_setg_errno(errp, -ret, "qcow2: cannot rewrite the header of '%s'",
                         s->bs->filename);
    }
    free(old);
    free(out);
    return ret;
}

int coroutine_fn qcow2_change_backing(BlockNode *bs, const char *backing_file,
                                      const char *backing_fmt, Error **errp)
{
    GS_CODE();
    Qcow2State *s = bs->opaque;
    int ret;

    if (bs->drv != &bdrv_qcow2) {
        error_setg(errp, "'%s' is not a qcow2 image", bs->filename);
        return -ENOTSUP;
    }
    if (bs->read_only) {
        error_setg(errp, "'%s' is open read-only", bs->filename);
        return -EACCES;
    }
    if (backing_file && !backing_file[0]) {
        backing_file = NULL;
    }
    if (!backing_file) {
        backing_fmt = NULL;
    }
    bdrv_co_quiesce_begin(bs);
    bdrv_graph_rdlock_main_loop();
    co_mutex_lock(&s->lock);
    ret = atomic_load(&s->corrupt) ? -EIO : qcow2_clear_autoclear(s);
    if (ret == 0) {
        ret = rewrite_header(s, backing_file, backing_fmt, errp);
    } else {
        error_setg_errno(errp, -ret, "qcow2: cannot write to '%s'", bs->filename);
    }
    co_mutex_unlock(&s->lock);
    bdrv_graph_rdunlock_main_loop();
    bdrv_quiesce_end(bs);
    return ret;
}
