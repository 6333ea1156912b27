/*
 * compress.c — compressed clusters.
 *
 * zlib: raw deflate (no zlib header), QEMU writes it with a 4 KiB window;
 * we inflate with the largest window so any producer is accepted.
 * zstd: no length prefix; the data may consist of several frames, and the
 * compressed range usually ends inside a sector shared with the next
 * compressed cluster, so decompression stops as soon as exactly one cluster
 * of output has been produced.
 *
 * qcow2_decompress/qcow2_compress are pure functions of their arguments:
 * thread-safe, callable anywhere.  The compressed write path at the end of
 * the file is I/O code taking s->lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include "qcow2.h"
#include "driver.h"

static int inflate_raw(const void *in, size_t in_len, void *out, size_t out_len)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, -MAX_WBITS) != Z_OK) {
        return -ENOMEM;
    }
    z.next_in = (Bytef *)in;
    z.avail_in = in_len;
    z.next_out = out;
    z.avail_out = out_len;
    int r = inflate(&z, Z_FINISH);
    size_t produced = out_len - z.avail_out;
    inflateEnd(&z);
    /* Z_BUF_ERROR with a full output buffer: the stream goes on past one
     * cluster (trailing bytes); what we need is there. */
    if ((r == Z_STREAM_END || r == Z_BUF_ERROR || r == Z_OK) && produced == out_len) {
        return 0;
    }
    return -EIO;
}

static int zstd_decompress_cluster(const void *in, size_t in_len, void *out,
                                   size_t out_len)
{
    ZSTD_DCtx *d = ZSTD_createDCtx();
    if (!d) {
        return -ENOMEM;
    }
    ZSTD_inBuffer ib = { in, in_len, 0 };
    ZSTD_outBuffer ob = { out, out_len, 0 };
    int ret = 0;
    /* Several frames are decoded one after the other by the same stream. */
    while (ob.pos < ob.size) {
        size_t r = ZSTD_decompressStream(d, &ob, &ib);
        if (ZSTD_isError(r)) {
            ret = -EIO;
            break;
        }
        if (ib.pos == ib.size && ob.pos < ob.size) {
            ret = -EIO;             /* input ended short of a cluster */
            break;
        }
    }
    ZSTD_freeDCtx(d);
    return ret;
}

int qcow2_decompress(int type, const void *in, size_t in_len, void *out,
                     size_t out_len)
{
    switch (type) {
    case QCOW2_COMPRESSION_ZLIB:
        return inflate_raw(in, in_len, out, out_len);
    case QCOW2_COMPRESSION_ZSTD:
        return zstd_decompress_cluster(in, in_len, out, out_len);
    default:
        return -ENOTSUP;
    }
}

static ssize_t deflate_raw(const void *in, size_t in_len, void *out, size_t out_len)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        return -ENOMEM;
    }
    z.next_in = (Bytef *)in;
    z.avail_in = in_len;
    z.next_out = out;
    z.avail_out = out_len;
    int r = deflate(&z, Z_FINISH);
    ssize_t len = out_len - z.avail_out;
    deflateEnd(&z);
    return r == Z_STREAM_END && (size_t)len < in_len ? len : -ENOSPC;
}

ssize_t qcow2_compress(int type, const void *in, size_t in_len, void *out,
                       size_t out_len)
{
    if (type == QCOW2_COMPRESSION_ZLIB) {
        return deflate_raw(in, in_len, out, out_len);
    }
    if (type != QCOW2_COMPRESSION_ZSTD) {
        return -ENOTSUP;
    }
    size_t r = ZSTD_compress(out, out_len, in, in_len, ZSTD_CLEVEL_DEFAULT);
    if (ZSTD_isError(r) || r >= in_len) {
        return -ENOSPC;
    }
    return (ssize_t)r;
}

/*
 * Writing compressed clusters (BDRV_REQ_COMPRESS, `img convert -c`).
 *
 * Compressed data is packed: each cluster's compressed bytes go right after
 * the previous one's when they fit in the same host cluster (every compressed
 * cluster adds one reference to each host cluster its range touches), else
 * into freshly allocated clusters.  The packing tail is forgotten whenever
 * its host cluster is freed (refcount.c calls qcow2_compress_tail_freed).
 * The whole step runs under s->lock: compressed writes are a bulk-copy path,
 * not a hot one.  A cluster that does not shrink is written normally.
 */

/* s->lock held. */
void qcow2_compress_tail_freed(Qcow2State *s, uint64_t host_cluster_off)
{
    if (s->ctail_left && ROUND_DOWN(s->ctail_off, s->cluster_size) == host_cluster_off) {
        s->ctail_off = s->ctail_left = 0;
    }
}

static int64_t coroutine_fn GRAPH_RDLOCK place_compressed(Qcow2State *s, uint64_t len)
{
    if (s->ctail_left >= len) {
        uint64_t off = s->ctail_off;
        int ret = qcow2_update_refcount(s, off, len, 1);
        if (ret < 0) {
            return ret;
        }
        s->ctail_off += len;
        s->ctail_left -= len;
        return (int64_t)off;
    }
    uint64_t n = DIV_ROUND_UP(len, s->cluster_size);
    int64_t host = qcow2_alloc_clusters(s, n);
    if (host < 0) {
        return host;
    }
    s->ctail_off = host + len;
    s->ctail_left = n * s->cluster_size - len;
    return host;
}

static uint64_t compressed_entry(const Qcow2State *s, uint64_t off, uint64_t len)
{
    int x = 62 - (s->cluster_bits - 8);
    uint64_t nsec = ((off + len - 1) >> 9) - (off >> 9);
    return QCOW_OFLAG_COMPRESSED | (nsec << x) | off;
}

/* Stores one compressed cluster at guest offset `guest`.  s->lock held. */
static int coroutine_fn GRAPH_RDLOCK store_compressed(Qcow2State *s, uint64_t guest,
                                                      const uint8_t *data, uint64_t len)
{
    uint64_t old;
    int64_t l2 = qcow2_ensure_l2(s, guest);
    int ret = l2 < 0 ? (int)l2 : qcow2_get_l2_entries(s, guest, 1, &old);
    int64_t host = ret < 0 ? ret : place_compressed(s, len);
    if (host < 0) {
        return (int)host;
    }
    if ((uint64_t)host + len > (1ull << (62 - (s->cluster_bits - 8)))) {
        return -EFBIG;
    }
    ret = bdrv_co_pwrite(s->bs->file, host, len, data, 0);
    if (ret == 0) {
        uint64_t e = compressed_entry(s, host, len);
        ret = qcow2_set_l2_entries(s, guest, 1, &e);
    }
    if (ret == 0) {
        ret = qcow2_free_l2_entries(s, &old, 1);
    }
    return ret;
}

static int coroutine_fn GRAPH_RDLOCK compress_one(BlockNode *bs, uint64_t guest,
                                                  uint64_t n, IOVector *qiov,
                                                  size_t qoff, bool *stored)
{
    Qcow2State *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    uint8_t *in = calloc(1, cs), *out = malloc(cs);
    int ret = (!in || !out) ? -ENOMEM : 0;
    ssize_t clen = 0;

    *stored = false;
    if (ret == 0) {
        iov_to_buf(qiov, qoff, in, n);
        clen = qcow2_compress(s->compression_type, in, cs, out, cs);
    }
    if (ret == 0 && clen > 0) {
        co_mutex_lock(&s->lock);
        ret = atomic_load(&s->corrupt) ? -EIO : s->writes_refused ? -EACCES
              : qcow2_clear_autoclear(s);
        while (ret == 0 && s->allocs) {
            co_queue_wait(&s->alloc_waiters, &s->lock);   /* rare: bulk path */
        }
        if (ret == 0) {
            ret = store_compressed(s, guest, out, clen);
            *stored = ret == 0;
        }
        co_mutex_unlock(&s->lock);
    }
    free(in);
    free(out);
    return ret;
}

int coroutine_fn qcow2_co_write_compressed(BlockNode *bs, uint64_t offset, uint64_t bytes,
                                           IOVector *qiov, size_t qoff)
{
    IO_CODE();
    Qcow2State *s = bs->opaque;
    if (!IS_ALIGNED(offset, s->cluster_size) ||
        (!IS_ALIGNED(bytes, s->cluster_size) && offset + bytes != s->size)) {
        return -EINVAL;
    }
    while (bytes > 0) {
        uint64_t n = MIN(bytes, s->cluster_size);
        bool stored;
        int ret = compress_one(bs, offset, n, qiov, qoff, &stored);
        if (ret == 0 && !stored) {
            ret = bdrv_qcow2.co_pwritev(bs, offset, n, qiov, qoff, 0);
        }
        if (ret < 0) {
            return ret;
        }
        offset += n;
        qoff += n;
        bytes -= n;
    }
    return 0;
}
