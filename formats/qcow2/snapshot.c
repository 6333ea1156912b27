/*
 * snapshot.c — internal snapshots: the snapshot table, list, create, apply
 * (revert) and delete, with refcounts kept exact.
 *
 * Refcount rule (the one `qemu-img check` verifies): every L1 table, active
 * or snapshot, contributes one reference to each L2 table it points to and,
 * through it, one to each cluster that L2 table points to.  Creating a
 * snapshot adds one such contribution for the copied L1, deleting removes
 * the snapshot's, applying adds the snapshot's and removes the old active
 * one's.  Afterwards the COPIED flags of the active tables are recomputed
 * from the refcounts (set exactly when the refcount is 1).
 *
 * Crash ordering: references are added (and made stable) before the table
 * that needs them is published; a snapshot is unpublished before its
 * references are dropped.  A crash leaks at worst.
 *
 * Public functions are GS (main loop coroutine, global lock); they quiesce
 * the node themselves and take s->lock for the metadata work.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "qcow2.h"
#include "block-gs.h"

#define SNAP_EXTRA_MIN 16
#define SNAP_MAX       65536

static void free_snapshot(Qcow2Snapshot *sn)
{
    free(sn->id);
    free(sn->name);
    free(sn->extra);
}

void qcow2_free_snapshots(Qcow2State *s)
{
    for (int i = 0; i < s->nb_snap; i++) {
        free_snapshot(&s->snaps[i]);
    }
    free(s->snaps);
    s->snaps = NULL;
    s->nb_snap = 0;
}

/* Parses one entry at p (avail bytes); returns its padded length or -1. */
static int64_t parse_entry(Qcow2State *s, const uint8_t *p, uint64_t avail,
                           Qcow2Snapshot *sn)
{
    if (avail < 40) {
        return -1;
    }
    uint32_t extra = ld_be32(p + 36);
    uint16_t id_len = ld_be16(p + 12), name_len = ld_be16(p + 14);
    uint64_t len = 40ull + extra + id_len + name_len;
    if (extra > 1024 || len > avail) {
        return -1;
    }
    sn->l1_offset = ld_be64(p);
    sn->l1_size = ld_be32(p + 8);
    sn->date_sec = ld_be32(p + 16);
    sn->date_nsec = ld_be32(p + 20);
    sn->vm_clock_nsec = ld_be64(p + 24);
    sn->vm_state_size = ld_be32(p + 32);
    sn->disk_size = s->size;
    sn->extra_size = extra;
    sn->extra = malloc(extra + 1);
    memcpy(sn->extra, p + 40, extra);
    if (extra >= 8) {
        sn->vm_state_size = ld_be64(p + 40);
    }
    if (extra >= 16) {
        sn->disk_size = ld_be64(p + 48);
    }
    sn->id = strndup((const char *)p + 40 + extra, id_len);
    sn->name = strndup((const char *)p + 40 + extra + id_len, name_len);
    return ROUND_UP(len, 8);
}

static int check_snapshot_l1(Qcow2State *s, const Qcow2Snapshot *sn, int i,
                             int64_t file_len, Error **errp)
{
    uint64_t bytes = sn->l1_size * 8ull;
    if (!IS_ALIGNED(sn->l1_offset, s->cluster_size) || bytes > QCOW2_MAX_L1_BYTES ||
        (bytes && sn->l1_offset < s->cluster_size) ||
        sn->l1_offset + bytes > (uint64_t)file_len) {
        error_setg(errp, "qcow2: snapshot %d ('%s') has an invalid L1 table: offset "
                   "0x%llx, %u entries (snapshot table at 0x%llx)", i, sn->name,
                   (unsigned long long)sn->l1_offset, sn->l1_size,
                   (unsigned long long)s->snapshots_offset);
        return -EINVAL;
    }
    return 0;
}

int coroutine_fn qcow2_load_snapshots(Qcow2State *s, Error **errp)
{
    IO_CODE();
    int64_t file_len = bdrv_getlength(s->bs->file->node);
    if (s->nb_snapshots == 0) {
        return 0;
    }
    if (s->nb_snapshots > SNAP_MAX) {
        error_setg(errp, "qcow2: %u snapshots is too many (header offset 60)",
                   s->nb_snapshots);
        return -EINVAL;
    }
    /* Bound the table: each entry is at most 40 + 1024 + 2 * 65535 bytes. */
    uint64_t avail = MIN((uint64_t)file_len - s->snapshots_offset,
                         (uint64_t)s->nb_snapshots * (40 + 1024 + 131070));
    avail = MIN(avail, 64ull << 20);
    uint8_t *buf = malloc(avail);
    s->snaps = calloc(s->nb_snapshots, sizeof(*s->snaps));
    if (!buf || !s->snaps) {
        free(buf);
        return -ENOMEM;
    }
    int ret = bdrv_co_pread(s->bs->file, s->snapshots_offset, avail, buf, 0);
    uint64_t off = 0;
    for (uint32_t i = 0; ret == 0 && i < s->nb_snapshots; i++) {
        int64_t len = parse_entry(s, buf + off, avail - off, &s->snaps[i]);
        if (len < 0) {
            error_setg(errp, "qcow2: snapshot table entry %u at offset 0x%llx is "
                       "truncated or invalid", i,
                       (unsigned long long)(s->snapshots_offset + off));
            ret = -EINVAL;
            break;
        }
        s->nb_snap = i + 1;
        off += len;
        ret = check_snapshot_l1(s, &s->snaps[i], i, file_len, errp);
    }
    s->snap_table_bytes = off;
    free(buf);
    return ret;
}

/* ------------------------------------------------------------------------
 * Reference walking (I/O, s->lock held)
 */

static int coroutine_fn GRAPH_RDLOCK update_l2_refs(Qcow2State *s, uint64_t l2_off,
                                                    int delta)
{
    uint64_t *e = malloc(s->l2_entries * 8);
    uint8_t *t;
    int ret = e ? qcow2_cache_get(s->l2_cache, l2_off, true, &t) : -ENOMEM;
    if (ret < 0) {
        free(e);
        return ret;
    }
    for (uint64_t i = 0; i < s->l2_entries; i++) {
        e[i] = ld_be64(t + i * 8);
    }
    qcow2_cache_put(s->l2_cache, t);
    uint64_t file_len = (uint64_t)bdrv_getlength(s->bs->file->node);
    for (uint64_t i = 0; ret == 0 && i < s->l2_entries; i++) {
        uint64_t off = e[i] & L2E_OFFSET_MASK, len = s->cluster_size;
        switch (qcow2_l2_entry_type(s, e[i])) {
        case QCOW2_CLUSTER_COMPRESSED:
            qcow2_compressed_range(s, e[i], &off, &len);
            /* fall through */
        case QCOW2_CLUSTER_NORMAL:
        case QCOW2_CLUSTER_ZERO_ALLOC:
            /* A reference past the end of the file would make the refcount
             * update create refcount blocks (and grow the file) out to it:
             * found by tests/fuzz, a bogus entry grew a 24 KiB image to
             * 244 GiB on snapshot create. */
            if (off + len > file_len || off + len < off) {
                ret = qcow2_signal_corruption(s, (int64_t)l2_off, (int64_t)s->cluster_size,
                    "L2 entry %llu of the table at "
                    "0x%llx points to 0x%llx, past the end of the file",
                    (unsigned long long)i, (unsigned long long)l2_off,
                    (unsigned long long)off);
                break;
            }
            ret = delta < 0 ? qcow2_free_clusters(s, off, len)
                            : qcow2_update_refcount(s, off, len, delta);
            break;
        default:
            break;
        }
    }
    free(e);
    if (ret == 0) {
        ret = delta < 0 ? qcow2_free_clusters(s, l2_off, s->cluster_size)
                        : qcow2_update_refcount(s, l2_off, s->cluster_size, delta);
    }
    return ret;
}

static int coroutine_fn GRAPH_RDLOCK update_l1_refs(Qcow2State *s, const uint64_t *l1,
                                                    uint32_t n, int delta)
{
    int ret = 0;
    for (uint32_t i = 0; ret == 0 && i < n; i++) {
        uint64_t l2_off = l1[i] & L1E_OFFSET_MASK;
        if (l2_off) {
            ret = update_l2_refs(s, l2_off, delta);
        }
    }
    return ret;
}

static int coroutine_fn GRAPH_RDLOCK fix_l2_copied(Qcow2State *s, uint64_t l2_off)
{
    uint8_t *t = NULL;
    int ret = qcow2_cache_get(s->l2_cache, l2_off, true, &t);
    bool changed = false;
    for (uint64_t i = 0; ret == 0 && i < s->l2_entries; i++) {
        uint64_t e = ld_be64(t + i * 8), rc = 0, want = e & ~QCOW_OFLAG_COPIED;
        Qcow2ClusterType type = qcow2_l2_entry_type(s, e);
        if (type == QCOW2_CLUSTER_NORMAL || type == QCOW2_CLUSTER_ZERO_ALLOC) {
            ret = qcow2_get_refcount(s, (e & L2E_OFFSET_MASK) >> s->cluster_bits, &rc);
            want |= rc == 1 ? QCOW_OFLAG_COPIED : 0;
        }
        if (want != e) {
            st_be64(t + i * 8, want);
            changed = true;
        }
    }
    if (ret == 0 && changed) {
        qcow2_cache_mark_dirty(s->l2_cache, t);
    }
    if (t) {
        qcow2_cache_put(s->l2_cache, t);
    }
    return ret;
}

/* Recomputes COPIED in the active L1 and its L2 tables.  Shared L2 tables
 * are updated too: COPIED only has meaning in active tables, and `qemu-img
 * check` verifies it for every cluster reachable from the active L1. */
static int coroutine_fn GRAPH_RDLOCK fix_copied_flags(Qcow2State *s)
{
    int ret = 0;
    for (uint32_t i = 0; ret == 0 && i < s->l1_size; i++) {
        uint64_t l2_off = s->l1[i] & L1E_OFFSET_MASK, rc = 0;
        if (!l2_off) {
            continue;
        }
        ret = qcow2_get_refcount(s, l2_off >> s->cluster_bits, &rc);
        s->l1[i] = l2_off | (rc == 1 ? QCOW_OFLAG_COPIED : 0);
        if (ret == 0) {
            ret = fix_l2_copied(s, l2_off);
        }
    }
    return ret ? ret : qcow2_write_l1(s);
}

/* ------------------------------------------------------------------------
 * The snapshot table
 */

static uint64_t entry_len(const Qcow2Snapshot *sn)
{
    return ROUND_UP(40ull + MAX(sn->extra_size, SNAP_EXTRA_MIN) + strlen(sn->id) +
                    strlen(sn->name), 8);
}

static void put_entry(uint8_t *p, const Qcow2Snapshot *sn)
{
    uint32_t extra = MAX(sn->extra_size, SNAP_EXTRA_MIN);
    size_t id_len = strlen(sn->id), name_len = strlen(sn->name);
    memset(p, 0, entry_len(sn));
    st_be64(p, sn->l1_offset);
    st_be32(p + 8, sn->l1_size);
    st_be16(p + 12, id_len);
    st_be16(p + 14, name_len);
    st_be32(p + 16, sn->date_sec);
    st_be32(p + 20, sn->date_nsec);
    st_be64(p + 24, sn->vm_clock_nsec);
    st_be32(p + 32, sn->vm_state_size > UINT32_MAX ? 0 : sn->vm_state_size);
    st_be32(p + 36, extra);
    if (sn->extra_size) {
        memcpy(p + 40, sn->extra, sn->extra_size);
    }
    st_be64(p + 40, sn->vm_state_size);
    st_be64(p + 48, sn->disk_size);
    memcpy(p + 40 + extra, sn->id, id_len);
    memcpy(p + 40 + extra + id_len, sn->name, name_len);
}

/* Writes snaps[0..n) as a new table, publishes it, frees the old one. */
static int coroutine_fn GRAPH_RDLOCK publish_table(Qcow2State *s, Qcow2Snapshot *snaps,
                                                   int n)
{
    uint64_t bytes = 0, off = 0;
    for (int i = 0; i < n; i++) {
        bytes += entry_len(&snaps[i]);
    }
    uint8_t *buf = calloc(1, bytes + 8);
    int64_t table = 0;
    int ret = buf ? 0 : -ENOMEM;
    if (ret == 0 && bytes) {
        table = qcow2_alloc_clusters(s, DIV_ROUND_UP(bytes, s->cluster_size));
        ret = table < 0 ? (int)table : 0;
    }
    for (int i = 0; ret == 0 && i < n; i++) {
        put_entry(buf + off, &snaps[i]);
        off += entry_len(&snaps[i]);
    }
    if (ret == 0 && bytes) {
        ret = bdrv_co_pwrite(s->bs->file, table, bytes, buf, 0);
    }
    free(buf);
    if (ret == 0) {
        ret = qcow2_flush_metadata(s);   /* refcounts + table before the header */
    }
    if (ret == 0) {
        uint8_t hdr[12];
        st_be32(hdr, n);
        st_be64(hdr + 4, table);
        ret = qcow2_header_update(s, 60, hdr, 12);
    }
    if (ret < 0) {
        return ret;
    }
    uint64_t old = s->snapshots_offset, old_bytes = s->snap_table_bytes;
    s->snapshots_offset = table;
    s->nb_snapshots = n;
    s->snap_table_bytes = bytes;
    return old_bytes ? qcow2_free_clusters(s, old, old_bytes) : 0;
}

static int find_snapshot(Qcow2State *s, const char *id_or_name)
{
    for (int i = 0; i < s->nb_snap; i++) {
        if (!strcmp(s->snaps[i].id, id_or_name)) {
            return i;
        }
    }
    for (int i = 0; i < s->nb_snap; i++) {
        if (!strcmp(s->snaps[i].name, id_or_name)) {
            return i;
        }
    }
    return -1;
}

/* ------------------------------------------------------------------------
 * The operations (s->lock held)
 */

static char *next_id(Qcow2State *s)
{
    long max = 0;
    for (int i = 0; i < s->nb_snap; i++) {
        max = MAX(max, strtol(s->snaps[i].id, NULL, 10));
    }
    char buf[32];
    snprintf(buf, sizeof(buf), "%ld", max + 1);
    return strdup(buf);
}

static int coroutine_fn GRAPH_RDLOCK copy_active_l1(Qcow2State *s, uint64_t *off)
{
    uint64_t bytes = s->l1_size * 8ull;
    *off = 0;
    if (!bytes) {
        return 0;
    }
    int64_t l1 = qcow2_alloc_clusters(s, DIV_ROUND_UP(bytes, s->cluster_size));
    if (l1 < 0) {
        return (int)l1;
    }
    uint8_t *buf = malloc(bytes);
    if (!buf) {
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < s->l1_size; i++) {
        st_be64(buf + i * 8ull, s->l1[i] & ~QCOW_OFLAG_COPIED);
    }
    int ret = bdrv_co_pwrite(s->bs->file, l1, bytes, buf, 0);
    free(buf);
    *off = l1;
    return ret;
}

static int coroutine_fn GRAPH_RDLOCK do_create(Qcow2State *s, const char *name,
                                               Error **errp)
{
    if (find_snapshot(s, name) >= 0) {
        error_setg(errp, "qcow2: a snapshot named '%s' already exists", name);
        return -EEXIST;
    }
    Qcow2Snapshot sn = { 0 };
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int ret = qcow2_flush_metadata(s);
    if (ret == 0) {
        ret = copy_active_l1(s, &sn.l1_offset);
    }
    if (ret == 0) {
        ret = update_l1_refs(s, s->l1, s->l1_size, 1);
    }
    if (ret == 0) {
        ret = fix_copied_flags(s);
    }
    Qcow2Snapshot *snaps = ret ? NULL : realloc(s->snaps, (s->nb_snap + 1) * sizeof(sn));
    if (ret == 0 && !snaps) {
        ret = -ENOMEM;
    }
    if (ret < 0) {
        error_setg_errno(errp, ret, "qcow2: cannot create snapshot '%s'", name);
        return ret;
    }
    s->snaps = snaps;
    sn.l1_size = s->l1_size;
    sn.id = next_id(s);
    sn.name = strdup(name);
    sn.date_sec = ts.tv_sec;
    sn.date_nsec = ts.tv_nsec;
    sn.disk_size = s->size;
    snaps[s->nb_snap] = sn;
    ret = publish_table(s, snaps, s->nb_snap + 1);
    if (ret < 0) {
        free_snapshot(&snaps[s->nb_snap]);
        error_setg_errno(errp, ret, "qcow2: cannot write the snapshot table");
        return ret;
    }
    s->nb_snap++;
    return 0;
}

static int coroutine_fn GRAPH_RDLOCK do_delete(Qcow2State *s, int i, Error **errp)
{
    Qcow2Snapshot sn = s->snaps[i];
    Qcow2Snapshot *rest = calloc(s->nb_snap, sizeof(sn));
    int n = 0, ret = rest ? 0 : -ENOMEM;
    for (int k = 0; ret == 0 && k < s->nb_snap; k++) {
        if (k != i) {
            rest[n++] = s->snaps[k];
        }
    }
    if (ret == 0) {
        ret = publish_table(s, rest, n);     /* unpublish before dropping refs */
    }
    if (ret < 0) {
        free(rest);
        error_setg_errno(errp, ret, "qcow2: cannot delete snapshot '%s'", sn.name);
        return ret;
    }
    free(s->snaps);
    s->snaps = rest;
    s->nb_snap = n;
    uint64_t *l1 = calloc(sn.l1_size + 1, 8);
    uint8_t *buf = malloc(sn.l1_size * 8ull + 8);
    ret = (!l1 || !buf) ? -ENOMEM
          : bdrv_co_pread(s->bs->file, sn.l1_offset, sn.l1_size * 8ull, buf, 0);
    for (uint32_t k = 0; ret == 0 && k < sn.l1_size; k++) {
        l1[k] = ld_be64(buf + k * 8ull);
    }
    if (ret == 0) {
        ret = update_l1_refs(s, l1, sn.l1_size, -1);
    }
    if (ret == 0 && sn.l1_size) {
        ret = qcow2_free_clusters(s, sn.l1_offset, sn.l1_size * 8ull);
    }
    if (ret == 0) {
        ret = fix_copied_flags(s);
    }
    free(l1);
    free(buf);
    free_snapshot(&sn);
    if (ret < 0) {
        error_setg_errno(errp, ret, "qcow2: snapshot deleted, but dropping its "
                         "references failed (clusters may leak)");
    }
    return ret;
}

static int coroutine_fn GRAPH_RDLOCK load_snapshot_l1(Qcow2State *s, const Qcow2Snapshot *sn,
                                                      uint64_t **l1)
{
    uint8_t *buf = malloc(sn->l1_size * 8ull + 8);
    *l1 = calloc(MAX(sn->l1_size, s->l1_size) + 1, 8);
    int ret = (!buf || !*l1) ? -ENOMEM
              : bdrv_co_pread(s->bs->file, sn->l1_offset, sn->l1_size * 8ull, buf, 0);
    for (uint32_t k = 0; ret == 0 && k < sn->l1_size; k++) {
        (*l1)[k] = ld_be64(buf + k * 8ull) & ~QCOW_OFLAG_COPIED;
    }
    free(buf);
    return ret;
}

static int coroutine_fn GRAPH_RDLOCK do_apply(BlockNode *bs, int i, Error **errp)
{
    Qcow2State *s = bs->opaque;
    Qcow2Snapshot *sn = &s->snaps[i];
    uint64_t *new_l1 = NULL;
    int ret = qcow2_flush_metadata(s);
    if (ret == 0) {
        ret = load_snapshot_l1(s, sn, &new_l1);
    }
    if (ret == 0) {
        ret = qcow2_grow_l1(s, sn->l1_size);
    }
    if (ret == 0) {
        ret = update_l1_refs(s, new_l1, sn->l1_size, 1);   /* add first */
    }
    uint64_t *old_l1 = s->l1;
    uint32_t old_size = s->l1_size;
    if (ret == 0) {
        s->l1 = calloc(s->l1_size, 8);
        ret = s->l1 ? 0 : -ENOMEM;
        if (ret < 0) {
            s->l1 = old_l1;
        }
    }
    if (ret == 0) {
        memcpy(s->l1, new_l1, sn->l1_size * 8ull);
        ret = qcow2_write_l1(s);
        if (ret < 0) {
            /* Not applied: keep the active L1 the disk still has (the new
             * references taken above leak).  Stale-marked, it is simply
             * rewritten with the same content. */
            free(s->l1);
            s->l1 = old_l1;
            old_l1 = NULL;
        }
        if (ret == 0) {
            ret = bdrv_co_flush(bs->file->node);
        }
        if (ret == 0) {
            ret = update_l1_refs(s, old_l1, old_size, -1);
        }
        free(old_l1);
    }
    if (ret == 0) {
        ret = fix_copied_flags(s);
    }
    if (ret == 0 && sn->disk_size != s->size) {
        uint8_t b[8];
        st_be64(b, sn->disk_size);
        ret = qcow2_header_update(s, QH_SIZE_OFF, b, 8);
        if (ret == 0) {
            s->size = sn->disk_size;
            atomic_store(&bs->length, (int64_t)s->size);
        }
    }
    free(new_l1);
    if (ret < 0) {
        error_setg_errno(errp, ret, "qcow2: cannot apply snapshot '%s'", sn->name);
    }
    return ret;
}

/* ------------------------------------------------------------------------
 * Public GS API
 */

typedef enum { SNAP_CREATE, SNAP_APPLY, SNAP_DELETE } SnapOp;

static int coroutine_fn run_op(BlockNode *bs, SnapOp op, const char *name,
                               Error **errp) GS
{
    Qcow2State *s = bs->opaque;
    int ret;
    if (bs->drv != &bdrv_qcow2) {
        error_setg(errp, "node '%s' is not a qcow2 image", bs->node_name);
        return -ENOTSUP;
    }
    if (bs->read_only) {
        error_setg(errp, "qcow2: '%s' is read-only", bs->filename);
        return -EACCES;
    }
    bdrv_co_quiesce_begin(bs);
    bdrv_graph_rdlock_main_loop();
    co_mutex_lock(&s->lock);
    ret = atomic_load(&s->corrupt) ? -EIO : qcow2_clear_autoclear(s);
    int i = op == SNAP_CREATE ? 0 : find_snapshot(s, name);
    if (ret < 0) {
        error_setg_errno(errp, ret, "qcow2: '%s' cannot be written", bs->filename);
    } else if (i < 0) {
        error_setg(errp, "qcow2: no snapshot '%s' in '%s'", name, bs->filename);
        ret = -ENOENT;
    } else if (op == SNAP_CREATE) {
        ret = do_create(s, name, errp);
    } else if (op == SNAP_APPLY) {
        ret = do_apply(bs, i, errp);
    } else {
        ret = do_delete(s, i, errp);
    }
    if (ret == 0) {
        ret = qcow2_flush_metadata(s);
    }
    co_mutex_unlock(&s->lock);
    bdrv_graph_rdunlock_main_loop();
    bdrv_quiesce_end(bs);
    return ret;
}

int coroutine_fn qcow2_snapshot_create(BlockNode *bs, const char *name, Error **errp)
{
    GS_CODE();
    return run_op(bs, SNAP_CREATE, name, errp);
}

int coroutine_fn qcow2_snapshot_apply(BlockNode *bs, const char *id_or_name,
                                      Error **errp)
{
    GS_CODE();
    return run_op(bs, SNAP_APPLY, id_or_name, errp);
}

int coroutine_fn qcow2_snapshot_delete(BlockNode *bs, const char *id_or_name,
                                       Error **errp)
{
    GS_CODE();
    return run_op(bs, SNAP_DELETE, id_or_name, errp);
}

int qcow2_snapshot_list(BlockNode *bs, Qcow2SnapshotInfo **out)
{
    GS_CODE();
    Qcow2State *s = bs->opaque;
    *out = NULL;
    if (bs->drv != &bdrv_qcow2) {
        return -ENOTSUP;
    }
    *out = calloc(s->nb_snap + 1, sizeof(**out));
    if (!*out) {
        return -ENOMEM;
    }
    for (int i = 0; i < s->nb_snap; i++) {
        Qcow2SnapshotInfo *o = &(*out)[i];
        const Qcow2Snapshot *sn = &s->snaps[i];
        snprintf(o->id, sizeof(o->id), "%s", sn->id);
        snprintf(o->name, sizeof(o->name), "%s", sn->name);
        o->date_sec = sn->date_sec;
        o->date_nsec = sn->date_nsec;
        o->vm_clock_nsec = sn->vm_clock_nsec;
        o->vm_state_size = sn->vm_state_size;
        o->disk_size = sn->disk_size;
        /* icount lives in the extra data (bytes 16..23) when recorded */
        o->icount = sn->extra_size >= 24 ? ld_be64(sn->extra + 16) : UINT64_MAX;
    }
    return s->nb_snap;
}
