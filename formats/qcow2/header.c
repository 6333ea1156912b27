/*
 * header.c — the qcow2 header: parsing with every field checked, header
 * extensions (backing format, feature name table, unknown ones kept),
 * in-place field updates, the corrupt bit, and image creation.
 *
 * Every offset and size read from the image is checked before use; a bad one
 * fails the open with a message that names the structure, the bad value and
 * the header offset it came from.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qcow2.h"
#include "block-gs.h"
#include "block-events.h"

static const char *const incompat_names[] = {
    "dirty bit", "corrupt bit", "external data file", "compression type",
    "extended L2 entries",
};

/* Thread-safe: pure lookup in data fixed at open. */
const char *qcow2_feature_name(const Qcow2State *s, int type, int bit)
{
    for (int i = 0; i < s->nb_features; i++) {
        if (s->features[i].type == type && s->features[i].bit == bit) {
            return s->features[i].name;
        }
    }
    if (type == 0 && bit < (int)ARRAY_SIZE(incompat_names)) {
        return incompat_names[bit];
    }
    return NULL;
}

void qcow2_free_header(Qcow2State *s)
{
    free(s->backing_file);
    free(s->backing_format);
    free(s->features);
    while (s->unknown_exts) {
        Qcow2UnknownExt *e = s->unknown_exts;
        s->unknown_exts = e->next;
        free(e->data);
        free(e);
    }
    s->backing_file = s->backing_format = NULL;
    s->features = NULL;
}

static int parse_feature_table(Qcow2State *s, const uint8_t *p, uint32_t len)
{
    int n = len / 48;
    s->features = calloc(n ? n : 1, sizeof(*s->features));
    if (!s->features) {
        return -ENOMEM;
    }
    for (int i = 0; i < n; i++) {
        s->features[i].type = p[i * 48];
        s->features[i].bit = p[i * 48 + 1];
        memcpy(s->features[i].name, p + i * 48 + 2, 46);
        s->features[i].name[46] = '\0';
    }
    s->nb_features = n;
    return 0;
}

static int keep_unknown_ext(Qcow2State *s, uint32_t type, const uint8_t *p, uint32_t len)
{
    Qcow2UnknownExt *e = calloc(1, sizeof(*e)), **tail = &s->unknown_exts;
    if (!e || !(e->data = malloc(len ? len : 1))) {
        free(e);
        return -ENOMEM;
    }
    e->type = type;
    e->len = len;
    memcpy(e->data, p, len);
    while (*tail) {
        tail = &(*tail)->next;
    }
    *tail = e;
    return 0;
}

/* Walks the extension area [start, end) of the header cluster. */
static int parse_extensions(Qcow2State *s, const uint8_t *hdr, uint64_t start,
                            uint64_t end, Error **errp)
{
    uint64_t off = start;
    bool seen_fmt = false, seen_ft = false;

    while (off + 8 <= end) {
        uint32_t type = ld_be32(hdr + off), len = ld_be32(hdr + off + 4);
        if (type == QEXT_END) {
            return 0;
        }
        if (len > end - off - 8) {
            error_setg(errp, "qcow2: header extension 0x%08x at offset %llu has "
                       "length %u, past the end of the header area (%llu)",
                       type, (unsigned long long)off, len, (unsigned long long)end);
            return -EINVAL;
        }
        const uint8_t *data = hdr + off + 8;
        int ret = 0;
        if (type == QEXT_BACKING_FORMAT && !seen_fmt) {
            if (len == 0 || len > 1023) {
                error_setg(errp, "qcow2: backing format extension at offset %llu "
                           "has bad length %u", (unsigned long long)off, len);
                return -EINVAL;
            }
            s->backing_format = strndup((const char *)data, len);
            seen_fmt = true;
        } else if (type == QEXT_FEATURE_TABLE && !seen_ft) {
            ret = parse_feature_table(s, data, len);
            seen_ft = true;
        } else {
            ret = keep_unknown_ext(s, type, data, len);
        }
        if (ret < 0) {
            error_setg_errno(errp, ret, "qcow2: reading header extensions");
            return ret;
        }
        off += 8 + ROUND_UP((uint64_t)len, 8);
    }
    return 0;
}

static int check_features(Qcow2State *s, Error **errp)
{
    uint64_t unknown = s->incompat & ~QCOW2_INCOMPAT_KNOWN;
    if (unknown) {
        int bit = __builtin_ctzll(unknown);
        const char *name = qcow2_feature_name(s, 0, bit);
        error_setg(errp, "qcow2: unsupported incompatible feature: %s "
                   "(incompatible_features bit %d, header offset 72)",
                   name ? name : "unknown feature", bit);
        return -ENOTSUP;
    }
    if ((s->incompat & QCOW2_INCOMPAT_COMPRESSION) &&
        s->compression_type != QCOW2_COMPRESSION_ZSTD) {
        error_setg(errp, "qcow2: compression type %u is not supported "
                   "(header offset 104)", s->compression_type);
        return -ENOTSUP;
    }
    if (!(s->incompat & QCOW2_INCOMPAT_COMPRESSION) && s->compression_type != 0) {
        error_setg(errp, "qcow2: compression type %u set without the compression "
                   "type feature bit (header offset 104)", s->compression_type);
        return -EINVAL;
    }
    return 0;
}

static int parse_v3_fields(Qcow2State *s, const uint8_t *h, uint64_t avail, Error **errp)
{
    /* The v3 fields end at offset 104: a shorter file must not be read past
     * its end (found by tests/fuzz). */
    if (avail < QH_V3_LENGTH) {
        error_setg(errp, "qcow2: file is too small for a version 3 header "
                   "(%llu bytes, header offset 72)", (unsigned long long)avail);
        return -EINVAL;
    }
    s->incompat = ld_be64(h + 72);
    s->compat = ld_be64(h + 80);
    s->autoclear = ld_be64(h + 88);
    uint32_t order = ld_be32(h + 96);
    s->header_length = ld_be32(h + 100);
    if (order > 6) {
        error_setg(errp, "qcow2: refcount_order %u is out of range 0..6 "
                   "(header offset 96)", order);
        return -EINVAL;
    }
    s->refcount_order = order;
    if (s->header_length < QH_V3_LENGTH || s->header_length % 8 ||
        s->header_length > s->cluster_size || s->header_length > avail) {
        error_setg(errp, "qcow2: header length %u is invalid (header offset 100)",
                   s->header_length);
        return -EINVAL;
    }
    s->compression_type = s->header_length > 104 ? h[104] : 0;
    return 0;
}

static int check_cluster_bits(uint32_t bits, Error **errp)
{
    if (bits < QCOW2_MIN_CLUSTER_BITS || bits > QCOW2_MAX_CLUSTER_BITS) {
        error_setg(errp, "qcow2: cluster_bits %u is out of range 9..21 "
                   "(header offset 20)", bits);
        return -EINVAL;
    }
    return 0;
}

static int parse_fixed_fields(Qcow2State *s, const uint8_t *h, uint64_t avail,
                              uint64_t *backing_off, uint32_t *backing_len,
                              Error **errp)
{
    if (ld_be32(h) != QCOW2_MAGIC) {
        error_setg(errp, "qcow2: bad magic (header offset 0)");
        return -EINVAL;
    }
    s->version = ld_be32(h + 4);
    if (s->version != 2 && s->version != 3) {
        error_setg(errp, "qcow2: unsupported version %d (header offset 4)", s->version);
        return -ENOTSUP;
    }
    *backing_off = ld_be64(h + 8);
    *backing_len = ld_be32(h + 16);
    int ret = check_cluster_bits(ld_be32(h + 20), errp);
    if (ret < 0) {
        return ret;
    }
    s->cluster_bits = ld_be32(h + 20);
    s->cluster_size = 1ull << s->cluster_bits;
    s->size = ld_be64(h + 24);
    if (ld_be32(h + 32) != 0) {
        error_setg(errp, "qcow2: encrypted images are not supported "
                   "(crypt_method %u, header offset 32)", ld_be32(h + 32));
        return -ENOTSUP;
    }
    s->l1_size = ld_be32(h + 36);
    s->l1_offset = ld_be64(h + 40);
    s->rt_offset = ld_be64(h + 48);
    s->rt_clusters = ld_be32(h + 56);
    s->nb_snapshots = ld_be32(h + 60);
    s->snapshots_offset = ld_be64(h + 64);
    s->refcount_order = 4;
    s->header_length = QH_V2_LENGTH;
    if (s->version == 3) {
        ret = parse_v3_fields(s, h, avail, errp);
    }
    return ret;
}

static void derive_geometry(Qcow2State *s)
{
    s->l2_bits = s->cluster_bits - 3;
    s->l2_entries = 1ull << s->l2_bits;
    s->refcount_bits = 1 << s->refcount_order;
    s->rb_bits = s->cluster_bits + 3 - s->refcount_order;
    s->rb_entries = 1ull << s->rb_bits;
    s->refcount_max = s->refcount_bits == 64 ? UINT64_MAX
                                              : (1ull << s->refcount_bits) - 1;
}

/* [a, a+alen) and [b, b+blen) overlap? */
static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

static int check_table(Qcow2State *s, const char *what, uint64_t off, uint64_t bytes,
                       int hdr_off, int64_t file_len, Error **errp)
{
    if (!IS_ALIGNED(off, s->cluster_size)) {
        error_setg(errp, "qcow2: %s offset 0x%llx is not aligned to a cluster "
                   "(header offset %d)", what, (unsigned long long)off, hdr_off);
        return -EINVAL;
    }
    if (bytes && off == 0) {
        error_setg(errp, "qcow2: %s offset 0x0 overlaps the header "
                   "(header offset %d)", what, hdr_off);
        return -EINVAL;
    }
    if (off > (uint64_t)file_len || bytes > (uint64_t)file_len - off) {
        error_setg(errp, "qcow2: %s at offset 0x%llx (%llu bytes) is past the end "
                   "of the file (header offset %d)", what, (unsigned long long)off,
                   (unsigned long long)bytes, hdr_off);
        return -EINVAL;
    }
    return 0;
}

/* Thread-safe (open only). */
int qcow2_check_tables(Qcow2State *s, int64_t file_len, Error **errp)
{
    uint64_t l1_bytes = (uint64_t)s->l1_size * 8;
    uint64_t rt_bytes = (uint64_t)s->rt_clusters * s->cluster_size;
    uint64_t l2_span = s->cluster_size * s->l2_entries;
    uint64_t need = DIV_ROUND_UP(s->size, l2_span);
    int ret;

    if (l1_bytes > QCOW2_MAX_L1_BYTES) {
        error_setg(errp, "qcow2: L1 table size %u entries is too big (max %d MiB, "
                   "header offset 36)", s->l1_size, QCOW2_MAX_L1_BYTES >> 20);
        return -EFBIG;
    }
    if (s->size > BDRV_MAX_LENGTH || s->l1_size < need) {
        error_setg(errp, "qcow2: L1 table size %u entries is too small for the "
                   "virtual size %llu (header offset 36)", s->l1_size,
                   (unsigned long long)s->size);
        return -EINVAL;
    }
    if (rt_bytes == 0 || rt_bytes > QCOW2_MAX_RT_BYTES) {
        error_setg(errp, "qcow2: refcount table of %u clusters is invalid "
                   "(max %d MiB, header offset 56)", s->rt_clusters,
                   QCOW2_MAX_RT_BYTES >> 20);
        return -EFBIG;
    }
    ret = check_table(s, "L1 table", s->l1_offset, l1_bytes, QH_L1_OFFSET_OFF,
                      file_len, errp);
    if (!ret) {
        ret = check_table(s, "refcount table", s->rt_offset, rt_bytes,
                          QH_RT_OFFSET_OFF, file_len, errp);
    }
    if (!ret && s->nb_snapshots) {
        ret = check_table(s, "snapshot table", s->snapshots_offset,
                          s->nb_snapshots * 40ull, 64, file_len, errp);
    }
    if (!ret && ranges_overlap(s->l1_offset, l1_bytes, s->rt_offset, rt_bytes)) {
        error_setg(errp, "qcow2: L1 table at 0x%llx overlaps the refcount table at "
                   "0x%llx (header offset 40)", (unsigned long long)s->l1_offset,
                   (unsigned long long)s->rt_offset);
        ret = -EINVAL;
    }
    return ret;
}

static int read_backing_name(Qcow2State *s, const uint8_t *hdr, uint64_t avail,
                             uint64_t off, uint32_t len, Error **errp)
{
    if (len > QCOW2_MAX_BACKING_NAME || off >= avail || len > avail - off ||
        off < s->header_length) {
        error_setg(errp, "qcow2: backing file name at offset %llu, length %u is "
                   "invalid (header offset 8)", (unsigned long long)off, len);
        return -EINVAL;
    }
    s->backing_file = strndup((const char *)hdr + off, len);
    return s->backing_file ? 0 : -ENOMEM;
}

int coroutine_fn qcow2_read_header(Qcow2State *s, BlockChild *file, Error **errp)
{
    IO_CODE();
    int64_t file_len = bdrv_getlength(file->node);
    uint64_t backing_off;
    uint32_t backing_len;
    uint8_t *hdr = NULL;
    int ret;

    if (file_len < QH_V2_LENGTH) {
        error_setg(errp, "qcow2: file is too small for a header (%lld bytes)",
                   (long long)file_len);
        return -EINVAL;
    }
    /* The whole header area is the first cluster, at most 2 MiB. */
    uint64_t avail = MIN((uint64_t)file_len, 1ull << QCOW2_MAX_CLUSTER_BITS);
    hdr = calloc(1, avail);
    if (!hdr) {
        return -ENOMEM;
    }
    ret = bdrv_co_pread(file, 0, avail, hdr, 0);
    if (ret < 0) {
        error_setg_errno(errp, ret, "qcow2: cannot read the header");
        goto out;
    }
    ret = parse_fixed_fields(s, hdr, avail, &backing_off, &backing_len, errp);
    if (ret < 0) {
        goto out;
    }
    derive_geometry(s);
    avail = MIN(avail, s->cluster_size);
    uint64_t ext_end = backing_off && backing_off < avail ? backing_off : avail;
    /* Version 2 images have extensions too (QEMU writes the backing format
     * extension for them), right after the 72-byte header. */
    ret = parse_extensions(s, hdr, s->header_length, ext_end, errp);
    if (!ret && backing_off) {
        ret = read_backing_name(s, hdr, avail, backing_off, backing_len, errp);
    }
    if (!ret) {
        ret = check_features(s, errp);
    }
    if (!ret) {
        ret = qcow2_check_tables(s, file_len, errp);
    }
out:
    free(hdr);
    if (ret < 0) {
        qcow2_free_header(s);
    }
    return ret;
}

int coroutine_fn qcow2_header_switch(Qcow2State *s, uint32_t off, const void *buf,
                                     size_t len, bool *written)
{
    IO_CODE();
    BlockChild *file = s->bs->file;
    bdrv_co_debug_event(file, BLKDBG_HEADER_UPDATE);
    int ret = bdrv_co_pwrite(file, off, len, buf, 0);
    *written = ret == 0;
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_flush(file->node);
}

int coroutine_fn qcow2_header_update(Qcow2State *s, uint32_t off, const void *buf,
                                     size_t len)
{
    IO_CODE();
    bool written;
    return qcow2_header_switch(s, off, buf, len, &written);
}

/* Unknown autoclear bits must be cleared before we write anything: we do not
 * maintain whatever they promise (e.g. bitmaps). */
int coroutine_fn qcow2_clear_autoclear(Qcow2State *s)
{
    IO_CODE();
    if (s->autoclear_cleared || s->version < 3) {
        s->autoclear_cleared = true;
        return 0;
    }
    uint8_t buf[8];
    st_be64(buf, 0);
    int ret = qcow2_header_update(s, QH_AUTOCLEAR_OFF, buf, 8);
    if (ret == 0) {
        s->autoclear = 0;
        s->autoclear_cleared = true;
    }
    return ret;
}

/* BLOCK_IMAGE_CORRUPTED with QEMU's fields (qapi/block-core.json): device
 * is "" (nodes here have no backend name), offset/size only when known;
 * every corruption this driver detects is fatal (writes refused). */
static void post_corrupted_event(Qcow2State *s, const char *msg, int64_t offset,
                                 int64_t size)
{
    json_t *d = json_pack("{s:s, s:s, s:b}", "device", "", "msg", msg, "fatal", 1);
    if (!d) {
        return;
    }
    if (s->bs->node_name[0]) {
        json_object_set_new(d, "node-name", json_string(s->bs->node_name));
    }
    if (offset >= 0) {
        json_object_set_new(d, "offset", json_integer(offset));
    }
    if (size >= 0) {
        json_object_set_new(d, "size", json_integer(size));
    }
    block_event_post("BLOCK_IMAGE_CORRUPTED", d);
}

int coroutine_fn qcow2_signal_corruption(Qcow2State *s, int64_t offset, int64_t size,
                                         const char *fmt, ...)
{
    IO_CODE();
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    /* Only the first detection (the transition to corrupt) is announced, as
     * qemu does for fatal corruptions; later ones are only logged. */
    bool was = atomic_exchange(&s->corrupt, true);
    error_report("qcow2: image '%s' is corrupt: %s%s", s->bs->filename, msg,
                 was ? "" : "; further writes are refused");
    if (was) {
        return -EIO;
    }
    post_corrupted_event(s, msg, offset, size);
    if (s->version >= 3 && !s->bs->read_only) {
        /* Best effort: the in-memory flag refuses writes even if this fails. */
        uint8_t buf[8];
        s->incompat |= QCOW2_INCOMPAT_CORRUPT;
        st_be64(buf, s->incompat);
        qcow2_header_update(s, QH_INCOMPAT_OFF, buf, 8);
    }
    return -EIO;
}

/*
 * Creation.
 */

typedef struct CreateLayout {
    uint64_t cs, rb_entries;
    uint64_t l1_entries, l1_clusters;
    uint64_t rt_clusters, rb_count;
    uint64_t rt_off, rb_off, l1_off, total_clusters;
} CreateLayout;

/* header | refcount table | refcount blocks | L1 table, refcounted by the
 * blocks; iterate until the counts agree. */
static void plan_layout(CreateLayout *L, uint64_t size, int cluster_bits, int order)
{
    L->cs = 1ull << cluster_bits;
    L->rb_entries = L->cs * 8 >> order;
    uint64_t l2_span = L->cs * (L->cs / 8);
    L->l1_entries = DIV_ROUND_UP(size, l2_span);
    L->l1_clusters = DIV_ROUND_UP(L->l1_entries * 8, L->cs);
    L->rt_clusters = 1;
    L->rb_count = 1;
    for (;;) {
        uint64_t total = 1 + L->rt_clusters + L->rb_count + L->l1_clusters;
        uint64_t rb = DIV_ROUND_UP(total, L->rb_entries);
        uint64_t rt = DIV_ROUND_UP(rb * 8, L->cs);
        if (rb == L->rb_count && rt == L->rt_clusters) {
            L->total_clusters = total;
            break;
        }
        L->rb_count = rb;
        L->rt_clusters = rt;
    }
    L->rt_off = L->cs;
    L->rb_off = L->rt_off + L->rt_clusters * L->cs;
    L->l1_off = L->rb_off + L->rb_count * L->cs;
}

static size_t put_ext(uint8_t *p, uint32_t type, const void *data, uint32_t len)
{
    st_be32(p, type);
    st_be32(p + 4, len);
    memcpy(p + 8, data, len);
    return 8 + ROUND_UP(len, 8);
}

static const struct { uint8_t type, bit; const char *name; } our_features[] = {
    { 0, 0, "dirty bit" }, { 0, 1, "corrupt bit" }, { 0, 2, "external data file" },
    { 0, 3, "compression type" }, { 0, 4, "extended L2 entries" },
    { 1, 0, "lazy refcounts" }, { 2, 0, "bitmaps" }, { 2, 1, "raw external data" },
};

static size_t put_feature_table(uint8_t *p)
{
    uint8_t tbl[ARRAY_SIZE(our_features) * 48];
    memset(tbl, 0, sizeof(tbl));
    for (size_t i = 0; i < ARRAY_SIZE(our_features); i++) {
        tbl[i * 48] = our_features[i].type;
        tbl[i * 48 + 1] = our_features[i].bit;
        strncpy((char *)tbl + i * 48 + 2, our_features[i].name, 46);
    }
    return put_ext(p, QEXT_FEATURE_TABLE, tbl, sizeof(tbl));
}

static int build_header(uint8_t *h, const CreateLayout *L, const Qcow2CreateOpts *o,
                        int cluster_bits, int order, Error **errp)
{
    size_t bf_len = o->backing_file ? strlen(o->backing_file) : 0;
    size_t fmt_len = o->backing_format ? strlen(o->backing_format) : 0;
    uint32_t hlen = o->version == 2 ? QH_V2_LENGTH : QH_V3_FULL_LENGTH;

    st_be32(h, QCOW2_MAGIC);
    st_be32(h + 4, o->version);
    st_be32(h + 20, cluster_bits);
    st_be64(h + QH_SIZE_OFF, o->size);
    st_be32(h + QH_L1_SIZE_OFF, L->l1_entries);
    st_be64(h + QH_L1_OFFSET_OFF, L->l1_off);
    st_be64(h + QH_RT_OFFSET_OFF, L->rt_off);
    st_be32(h + QH_RT_CLUSTERS_OFF, L->rt_clusters);
    if (o->version == 3) {
        uint64_t incompat = o->compression_type ? QCOW2_INCOMPAT_COMPRESSION : 0;
        st_be64(h + 72, incompat);
        st_be64(h + 80, o->lazy_refcounts ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0);
        st_be32(h + 96, order);
        st_be32(h + 100, hlen);
        h[104] = o->compression_type;
    }
    size_t p = hlen;
    if (fmt_len && o->version == 3) {
        p += put_ext(h + p, QEXT_BACKING_FORMAT, o->backing_format, fmt_len);
    }
    /* The feature table is a courtesy: leave it out when the cluster is tiny. */
    size_t ft = 8 + ARRAY_SIZE(our_features) * 48;
    if (o->version == 3 && p + ft + 8 + bf_len <= L->cs) {
        p += put_feature_table(h + p);
    }
    p += 8;                                   /* end-of-extensions marker */
    if (bf_len) {
        if (bf_len > QCOW2_MAX_BACKING_NAME || p + bf_len > L->cs) {
            error_setg(errp, "qcow2: backing file name '%s' does not fit in the "
                       "header cluster", o->backing_file);
            return -EINVAL;
        }
        memcpy(h + p, o->backing_file, bf_len);
        st_be64(h + 8, p);
        st_be32(h + 16, bf_len);
    }
    return 0;
}

/* Sets refcount 1 for clusters [0, total) in the refcount blocks. */
static void fill_refblocks(uint8_t *rb, const CreateLayout *L, int order)
{
    int bits = 1 << order;
    for (uint64_t c = 0; c < L->total_clusters; c++) {
        uint64_t bitpos = c * bits;
        if (bits >= 8) {
            rb[(bitpos + bits) / 8 - 1] = 1;   /* big endian: last byte */
        } else {
            rb[bitpos / 8] |= 1 << (bitpos % 8);
        }
    }
}

static int check_create_opts(const Qcow2CreateOpts *o, int *cbits, int *order,
                             Error **errp)
{
    uint32_t cs = o->cluster_size ? o->cluster_size : 65536;
    int rbits = o->refcount_bits ? o->refcount_bits : 16;
    if (cs & (cs - 1) || cs < 512 || cs > (2u << 20)) {
        error_setg(errp, "qcow2: cluster size %u must be a power of two between "
                   "512 and 2M", cs);
        return -EINVAL;
    }
    if (rbits & (rbits - 1) || rbits > 64) {
        error_setg(errp, "qcow2: refcount bits %d must be a power of two up to 64",
                   rbits);
        return -EINVAL;
    }
    if (o->version == 2 && (rbits != 16 || o->compression_type || o->lazy_refcounts)) {
        error_setg(errp, "qcow2: version 2 images only support 16 refcount bits, "
                   "zlib and no lazy refcounts");
        return -EINVAL;
    }
    *cbits = __builtin_ctz(cs);
    *order = __builtin_ctz(rbits);
    return 0;
}

int coroutine_fn qcow2_co_create(BlockBackend *file, const Qcow2CreateOpts *opts,
                                 Error **errp)
{
    GS_CODE();
    Qcow2CreateOpts o = *opts;
    int cbits, order, ret;
    CreateLayout L;

    o.version = o.version ? o.version : 3;
    ret = check_create_opts(&o, &cbits, &order, errp);
    if (ret < 0) {
        return ret;
    }
    plan_layout(&L, o.size, cbits, order);
    if (L.l1_entries * 8 > QCOW2_MAX_L1_BYTES) {
        error_setg(errp, "qcow2: virtual size %llu needs an L1 table over 32 MiB; "
                   "use a bigger cluster size", (unsigned long long)o.size);
        return -EFBIG;
    }
    uint64_t meta = L.total_clusters * L.cs;
    uint8_t *buf = calloc(1, meta);
    if (!buf) {
        return -ENOMEM;
    }
    ret = build_header(buf, &L, &o, cbits, order, errp);
    if (ret == 0) {
        for (uint64_t i = 0; i < L.rb_count; i++) {
            st_be64(buf + L.rt_off + i * 8, L.rb_off + i * L.cs);
        }
        fill_refblocks(buf + L.rb_off, &L, order);
        /* Start from an empty file: stale bytes past our metadata would look
         * like leaked clusters to qemu-img check. */
        blk_co_truncate(file, 0, true, NULL);
        ret = blk_co_truncate(file, meta, true, errp);
        if (ret == 0) {
            IOVector v;
            iov_init_buf(&v, buf, meta);
            ret = blk_co_pwritev(file, 0, meta, &v, 0);
        }
        if (ret == 0) {
            ret = blk_co_flush(file);
        }
        if (ret < 0 && errp && !*errp) {
            error_setg_errno(errp, ret, "qcow2: cannot write the new image");
        }
    }
    free(buf);
    return ret;
}
