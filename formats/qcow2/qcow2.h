/*
 * qcow2.h — private header of the qcow2 format driver.
 *
 * Split by concern:
 *   header.c    header, header extensions, feature table, validation, create
 *   cache.c     metadata cache for L2 tables and refcount blocks
 *   refcount.c  two-level refcounts of any width, cluster allocation
 *   cluster.c   L1/L2 mapping: lookup, L2 allocation, entry updates
 *   compress.c  compressed clusters (zlib raw deflate, zstd)
 *   qcow2.c     the driver table, open/close and the I/O callbacks
 *
 * Concurrency (the whole driver): every metadata structure (L1 table,
 * refcount table, both caches, the in-flight allocation list) is guarded by
 * s->lock, a CoMutex, so any IOThread may call in.  Data I/O to clusters that
 * are already allocated (and exclusively owned, COPIED) runs without the lock;
 * it is counted in s->data_inflight, and any code path that frees a cluster
 * first waits, holding s->lock, until no such I/O is in flight — so a cluster
 * is never reused while someone still reads or writes it.  Allocating writes
 * register their guest clusters in s->allocs; another request that touches
 * one of those clusters waits until the allocation is linked into its L2.
 *
 * Crash safety: data is written before the L2 entry pointing to it; refcount
 * increases are written and flushed before any L2 table or L1 entry that
 * depends on them; an L2 entry that stops referencing a cluster is written
 * and flushed before the cluster's refcount is decreased.  A crash can leak
 * clusters but never leaves metadata pointing to a free cluster.
 */
#ifndef DISKSTACK_QCOW2_H
#define DISKSTACK_QCOW2_H

#include <stdint.h>
#include <stdbool.h>
#include "block-common.h"
#include "block-io.h"
#include "driver.h"

#define QCOW2_MAGIC 0x514649fbu         /* "QFI\xfb" */

#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_MAX_L1_BYTES     (32 * 1024 * 1024)
#define QCOW2_MAX_RT_BYTES     (8 * 1024 * 1024)
#define QCOW2_MAX_BACKING_NAME 1023

/* Header field offsets. */
#define QH_SIZE_OFF        24
#define QH_L1_SIZE_OFF     36
#define QH_L1_OFFSET_OFF   40
#define QH_RT_OFFSET_OFF   48
#define QH_RT_CLUSTERS_OFF 56
#define QH_INCOMPAT_OFF    72
#define QH_AUTOCLEAR_OFF   88
#define QH_V2_LENGTH       72
#define QH_V3_LENGTH       104
#define QH_V3_FULL_LENGTH  112          /* with compression_type + padding */

/* Feature bits. */
#define QCOW2_INCOMPAT_DIRTY      (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT    (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE  (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2      (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN      (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT | \
                                   QCOW2_INCOMPAT_COMPRESSION)
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)

#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

/* Header extension types. */
#define QEXT_END            0x00000000u
#define QEXT_BACKING_FORMAT 0xe2792acau
#define QEXT_FEATURE_TABLE  0x6803f857u

/* L1 / L2 entry bits. */
#define QCOW_OFLAG_COPIED     (1ull << 63)
#define QCOW_OFLAG_COMPRESSED (1ull << 62)
#define QCOW_OFLAG_ZERO       (1ull << 0)
#define L1E_OFFSET_MASK       0x00fffffffffffe00ull
#define L2E_OFFSET_MASK       0x00fffffffffffe00ull
#define L1E_RESERVED_MASK     0x7f000000000001ffull
#define REFT_OFFSET_MASK      0xfffffffffffffe00ull

/* What a guest cluster is, from its L2 entry. */
typedef enum Qcow2ClusterType {
    QCOW2_CLUSTER_UNALLOCATED,
    QCOW2_CLUSTER_ZERO_PLAIN,   /* zero flag, no host cluster */
    QCOW2_CLUSTER_ZERO_ALLOC,   /* zero flag, preallocated host cluster */
    QCOW2_CLUSTER_NORMAL,
    QCOW2_CLUSTER_COMPRESSED,
} Qcow2ClusterType;

/* A header extension kept verbatim so a rewrite preserves it. */
typedef struct Qcow2UnknownExt {
    uint32_t type, len;
    uint8_t *data;
    struct Qcow2UnknownExt *next;
} Qcow2UnknownExt;

typedef struct Qcow2Feature {
    uint8_t type, bit;
    char name[47];
} Qcow2Feature;

typedef struct Qcow2Cache Qcow2Cache;

/* An internal snapshot (snapshot table entry). */
typedef struct Qcow2Snapshot {
    uint64_t l1_offset;
    uint32_t l1_size;
    char *id, *name;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size;
    uint64_t disk_size;
    uint32_t extra_size;
    uint8_t *extra;               /* kept verbatim: unknown fields survive */
} Qcow2Snapshot;

/* A guest cluster range an allocating write is filling. */
typedef struct Qcow2Alloc {
    uint64_t first_cluster, nb_clusters;   /* guest cluster indices */
    struct Qcow2Alloc *next;
} Qcow2Alloc;

typedef struct Qcow2State {
    BlockNode *bs;

    /* Immutable after open. */
    int version;
    int cluster_bits;
    uint64_t cluster_size;
    int l2_bits;                  /* log2(entries per L2 table) */
    uint64_t l2_entries;
    int refcount_order;
    int refcount_bits;
    uint64_t rb_entries;          /* refcounts per refcount block */
    int rb_bits;
    uint64_t refcount_max;
    uint32_t header_length;
    uint64_t incompat, compat, autoclear;
    uint8_t compression_type;
    char *backing_file;           /* NULL: none */
    char *backing_format;         /* NULL: extension absent */
    Qcow2Feature *features;
    int nb_features;
    Qcow2UnknownExt *unknown_exts;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    /* Snapshots: changed only by snapshot.c (GS, node quiesced, s->lock). */
    Qcow2Snapshot *snaps;
    int nb_snap;
    uint64_t snap_table_bytes;

    /* Guarded by lock. */
    CoMutex lock;
    uint64_t size;
    uint64_t *l1;                 /* host endian */
    bool l1_stale;                /* a whole-L1 write failed: the next
                                   * metadata flush writes it again */
    uint32_t l1_size;
    uint64_t l1_offset;
    uint64_t *rt;                 /* host endian */
    uint64_t rt_size;             /* entries */
    uint64_t rt_offset;
    uint32_t rt_clusters;
    uint64_t free_hint;           /* lowest host cluster that may be free */
    Qcow2Cache *l2_cache, *rb_cache;
    Qcow2Alloc *allocs;
    CoQueue alloc_waiters;
    uint64_t ctail_off, ctail_left; /* packing tail for compressed data */
    bool autoclear_cleared;       /* unknown autoclear bits cleared on disk */
    bool writes_refused;          /* dirty image we could not repair */
    _Atomic bool corrupt;

    /* Lockless data I/O in flight (see the top of this file). */
    CoMutex inflight_lock;
    int data_inflight;
    CoQueue inflight_waiters;
} Qcow2State;

static inline uint64_t qcow2_offset_in_cluster(const Qcow2State *s, uint64_t off)
{
    return off & (s->cluster_size - 1);
}
static inline uint64_t qcow2_cluster_index(const Qcow2State *s, uint64_t off)
{
    return off >> s->cluster_bits;
}

/* Big-endian helpers. */
static inline uint64_t ld_be64(const void *p)
{
    const uint8_t *b = p;
    return ((uint64_t)b[0] << 56) | ((uint64_t)b[1] << 48) | ((uint64_t)b[2] << 40) |
           ((uint64_t)b[3] << 32) | ((uint64_t)b[4] << 24) | ((uint64_t)b[5] << 16) |
           ((uint64_t)b[6] << 8) | b[7];
}
static inline uint32_t ld_be32(const void *p)
{
    const uint8_t *b = p;
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
}
static inline uint16_t ld_be16(const void *p)
{
    const uint8_t *b = p;
    return (uint16_t)((b[0] << 8) | b[1]);
}
static inline void st_be64(void *p, uint64_t v)
{
    uint8_t *b = p;
    for (int i = 7; i >= 0; i--) { b[i] = v & 0xff; v >>= 8; }
}
static inline void st_be32(void *p, uint32_t v)
{
    uint8_t *b = p;
    for (int i = 3; i >= 0; i--) { b[i] = v & 0xff; v >>= 8; }
}
static inline void st_be16(void *p, uint16_t v)
{
    uint8_t *b = p;
    b[0] = v >> 8;
    b[1] = v & 0xff;
}

/*
 * header.c
 */
/* Parses and validates the header and its extensions (open; GS, graph read
 * lock held).  Fills s; errors name the structure and the offset. */
int coroutine_fn qcow2_read_header(Qcow2State *s, BlockChild *file,
                                   Error **errp) GRAPH_RDLOCK;
/* Validates the L1 and refcount tables' placement against the file. */
int qcow2_check_tables(Qcow2State *s, int64_t file_len, Error **errp);
/* Writes `len` bytes of header fields at `off` in place, then flushes.
 * I/O, s->lock held (or during open/close). */
int coroutine_fn qcow2_header_update(Qcow2State *s, uint32_t off,
                                     const void *buf, size_t len) GRAPH_RDLOCK;
/* The same, for a header change that switches to a new structure: on
 * error, *written says whether the write itself succeeded (only the flush
 * failed) — then the file names the new structure and so must memory. */
int coroutine_fn qcow2_header_switch(Qcow2State *s, uint32_t off, const void *buf,
                                     size_t len, bool *written) GRAPH_RDLOCK;
/* Clears unknown autoclear bits on disk before the first write. I/O, lock. */
int coroutine_fn qcow2_clear_autoclear(Qcow2State *s) GRAPH_RDLOCK;
/* Name of a feature bit from the image's feature table, or NULL. */
const char *qcow2_feature_name(const Qcow2State *s, int type, int bit);
void qcow2_free_header(Qcow2State *s);
/*
 * Marks the image corrupt (corrupt bit on disk for v3, flag in memory):
 * further writes fail with -EIO, reads continue.  The first call posts
 * BLOCK_IMAGE_CORRUPTED (fatal) with the host `offset` and `size` of the
 * structure at fault (-1: unknown).  I/O; returns -EIO.
 */
int coroutine_fn qcow2_signal_corruption(Qcow2State *s, int64_t offset, int64_t size,
                                         const char *fmt, ...)
    GRAPH_RDLOCK __attribute__((format(printf, 4, 5)));

/*
 * cache.c (every function: I/O, s->lock held)
 */
Qcow2Cache *qcow2_cache_new(Qcow2State *s, int nb_entries, const char *name);
void qcow2_cache_free(Qcow2Cache *c);
/* The cache whose dirty entries must be stable before ours are written. */
void qcow2_cache_set_dependency(Qcow2Cache *c, Qcow2Cache *dep);
/* Pins the table at host offset `off`, loading it if `load`, else zeroed. */
int coroutine_fn qcow2_cache_get(Qcow2Cache *c, uint64_t off, bool load,
                                 uint8_t **table) GRAPH_RDLOCK;
void qcow2_cache_put(Qcow2Cache *c, uint8_t *table);
void qcow2_cache_mark_dirty(Qcow2Cache *c, uint8_t *table);
/* Writes every dirty entry back (dependency first); no file flush after. */
int coroutine_fn qcow2_cache_writeback(Qcow2Cache *c) GRAPH_RDLOCK;
/* Forgets the entry for `off` (the cluster is being freed). */
void qcow2_cache_discard(Qcow2Cache *c, uint64_t off);
int qcow2_cache_entries(const Qcow2Cache *c);

/*
 * refcount.c (every function: I/O, s->lock held)
 */
int coroutine_fn qcow2_get_refcount(Qcow2State *s, uint64_t cluster,
                                    uint64_t *refcount) GRAPH_RDLOCK;
/* Adds `delta` to the refcount of every host cluster in [off, off+len). */
int coroutine_fn qcow2_update_refcount(Qcow2State *s, uint64_t off, uint64_t len,
                                       int delta) GRAPH_RDLOCK;
/* Allocates n contiguous host clusters (refcount 1); returns the offset. */
int64_t coroutine_fn qcow2_alloc_clusters(Qcow2State *s, uint64_t n) GRAPH_RDLOCK;
/* Waits until no lockless data I/O is in flight, then decreases the
 * refcounts of [off, off+len) (frees when they reach zero). */
int coroutine_fn qcow2_free_clusters(Qcow2State *s, uint64_t off, uint64_t len) GRAPH_RDLOCK;
/* Grows the file child to at least `end` bytes (before writing there). */
int coroutine_fn qcow2_grow_file(Qcow2State *s, uint64_t end) GRAPH_RDLOCK;
/* Writes refcount blocks back, then flushes the file (before L2 writes). */
int coroutine_fn qcow2_flush_refcounts(Qcow2State *s) GRAPH_RDLOCK;
/* Loads the refcount table (open). */
int coroutine_fn qcow2_load_refcount_table(Qcow2State *s, Error **errp) GRAPH_RDLOCK;
/* Rebuilds every refcount from the metadata (dirty image). */
int coroutine_fn qcow2_rebuild_refcounts(Qcow2State *s, Error **errp) GRAPH_RDLOCK;

/*
 * cluster.c (every function: I/O, s->lock held unless stated)
 */
int coroutine_fn qcow2_load_l1(Qcow2State *s, Error **errp) GRAPH_RDLOCK;
Qcow2ClusterType qcow2_l2_entry_type(const Qcow2State *s, uint64_t l2e);
/*
 * Maps guest offset `off` for at most `bytes`: *l2e = the L2 entry of its
 * cluster (0 if no L2 table), *nb = bytes from `off` whose clusters have the
 * same type and (for NORMAL) contiguous host clusters.  Never crosses an L2
 * table.  Returns 0 or -errno (corruption found: -EIO).
 */
int coroutine_fn qcow2_get_mapping(Qcow2State *s, uint64_t off, uint64_t bytes,
                                   uint64_t *l2e, uint64_t *nb) GRAPH_RDLOCK;
/* Makes sure the L2 table for guest offset `off` exists and is exclusively
 * ours (COPIED), allocating or copying it; returns its host offset. */
int64_t coroutine_fn qcow2_ensure_l2(Qcow2State *s, uint64_t off) GRAPH_RDLOCK;
/* Reads the L2 entries of n clusters from guest offset off (one L2 table). */
int coroutine_fn qcow2_get_l2_entries(Qcow2State *s, uint64_t off, uint64_t n,
                                      uint64_t *out) GRAPH_RDLOCK;
/* Sets the L2 entries of n clusters from guest offset off (one L2 table,
 * which must exist and be COPIED). */
int coroutine_fn qcow2_set_l2_entries(Qcow2State *s, uint64_t off, uint64_t n,
                                      const uint64_t *entries) GRAPH_RDLOCK;
/* Drops the references the given old L2 entries held (after the L2 table no
 * longer points to them has been made stable). */
int coroutine_fn qcow2_free_l2_entries(Qcow2State *s, const uint64_t *old, uint64_t n)
    GRAPH_RDLOCK;
/* Writes dirty L2 tables after the refcounts they depend on are stable
 * (and the whole L1 table if an earlier write of it failed). */
int coroutine_fn qcow2_flush_metadata(Qcow2State *s) GRAPH_RDLOCK;
/* Writes the whole active L1 table (snapshots).  On failure the table is
 * marked stale and written again by the next qcow2_flush_metadata. */
int coroutine_fn qcow2_write_l1(Qcow2State *s) GRAPH_RDLOCK;
/* Grows the L1 table to at least min_size entries. */
int coroutine_fn qcow2_grow_l1(Qcow2State *s, uint64_t min_size) GRAPH_RDLOCK;
/* Host range [*off, *off+*len) of a compressed L2 entry. */
void qcow2_compressed_range(const Qcow2State *s, uint64_t l2e, uint64_t *off,
                            uint64_t *len);

/*
 * compress.c (pure functions, thread-safe)
 */
/* Decompresses exactly one cluster into out (cluster_size bytes). */
int qcow2_decompress(int type, const void *in, size_t in_len, void *out,
                     size_t out_len);
/* Compresses one cluster; returns the compressed length, or -ENOSPC if it
 * would not be smaller than out_len. */
ssize_t qcow2_compress(int type, const void *in, size_t in_len, void *out,
                       size_t out_len);

/* Writes whole clusters compressed (the last one may be partial at the
 * image end); clusters that do not shrink are written normally.  I/O. */
int coroutine_fn qcow2_co_write_compressed(BlockNode *bs, uint64_t offset, uint64_t bytes,
                                           IOVector *qiov, size_t qoff) GRAPH_RDLOCK;
/* The host cluster at this offset was freed: forget it as packing tail. */
void qcow2_compress_tail_freed(Qcow2State *s, uint64_t host_cluster_off);

/*
 * snapshot.c
 */
/* Reads and checks the snapshot table (open). */
int coroutine_fn qcow2_load_snapshots(Qcow2State *s, Error **errp) GRAPH_RDLOCK;
void qcow2_free_snapshots(Qcow2State *s);

/* The driver-generic snapshot description (driver.h). */
typedef BdrvSnapshotInfo Qcow2SnapshotInfo;
/* Internal snapshots (for `diskstack img snapshot`).  GS: in a coroutine on
 * the main loop; each quiesces the node itself.  bs must be a qcow2 node. */
int coroutine_fn qcow2_snapshot_create(BlockNode *bs, const char *name, Error **errp) GS;
int coroutine_fn qcow2_snapshot_apply(BlockNode *bs, const char *id_or_name,
                                      Error **errp) GS;
int coroutine_fn qcow2_snapshot_delete(BlockNode *bs, const char *id_or_name,
                                       Error **errp) GS;
/* *out: a calloc'ed array (free() it); returns the count or -errno. */
int qcow2_snapshot_list(BlockNode *bs, Qcow2SnapshotInfo **out) GS;

/*
 * Image creation (for `diskstack img create`).  GS: runs in a coroutine on
 * the main loop; `file` is a backend holding the freshly opened (empty or
 * to-be-truncated) file node with write and resize permissions.
 */
typedef struct Qcow2CreateOpts {
    uint64_t size;
    uint32_t cluster_size;        /* 0: 64 KiB */
    int refcount_bits;            /* 0: 16 */
    int version;                  /* 0: 3 */
    const char *backing_file;     /* NULL: none */
    const char *backing_format;   /* NULL: no extension */
    int compression_type;         /* QCOW2_COMPRESSION_* */
    bool lazy_refcounts;
} Qcow2CreateOpts;
int coroutine_fn qcow2_co_create(BlockBackend *file, const Qcow2CreateOpts *opts,
                                 Error **errp) GS;

/*
 * check.c (for `diskstack img check`): counts like qemu-img check.
 * GS: coroutine on the main loop; quiesces the node and holds s->lock.
 * Leaks and corruptions are printed to stderr one per line.  Returns 0
 * (the counts are in *res) or -errno with *errp set.
 */
typedef struct Qcow2CheckResult {
    uint64_t corruptions, leaks, check_errors;
    uint64_t corruptions_fixed, leaks_fixed;
    uint64_t image_end_offset;
    uint64_t total_clusters, allocated_clusters;
    uint64_t fragmented_clusters, compressed_clusters;
} Qcow2CheckResult;
enum { QCOW2_CHECK_FIX_LEAKS = 1, QCOW2_CHECK_FIX_ERRORS = 2 };
int coroutine_fn qcow2_co_check(BlockNode *bs, int fix, Qcow2CheckResult *res,
                                Error **errp) GS;

/*
 * rebase.c: records a new backing file name and format in the header (for
 * `diskstack img rebase`; NULL or "" removes the backing).  Only the header
 * changes: the caller copies data first if the content must stay the same,
 * and the node's backing edge is not touched.  GS: in a coroutine on the
 * main loop; quiesces the node itself.  bs must be a writable qcow2 node.
 */
int coroutine_fn qcow2_change_backing(BlockNode *bs, const char *backing_file,
                                      const char *backing_fmt, Error **errp) GS;

/*
 * prealloc.c (for `diskstack img create -o preallocation=...`): gives every
 * guest cluster of a new, empty image a host cluster.  GS: coroutine on the
 * main loop; quiesces the node and holds s->lock.  Returns 0 or -errno.
 */
enum { QCOW2_PREALLOC_OFF, QCOW2_PREALLOC_METADATA, QCOW2_PREALLOC_FALLOC,
       QCOW2_PREALLOC_FULL };
int coroutine_fn qcow2_co_preallocate(BlockNode *bs, int mode, Error **errp) GS;

extern const BlockDriver bdrv_qcow2;

#endif
