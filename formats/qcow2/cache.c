/*
 * cache.c — the qcow2 metadata cache (L2 tables and refcount blocks).
 *
 * Design
 * ------
 * Both kinds of table are exactly one cluster, addressed by their host
 * offset, so one cache type serves both; a qcow2 node has two instances.
 *
 * What is cached: the table in its on-disk (big-endian) form, so a write-back
 * is a plain write of the buffer and nothing has to be converted twice.
 *
 * Lookup: a hash table of chains over the entry array (offset >> cluster
 * bits, multiplicative hash).  With 512-byte clusters a 32 MiB cache has
 * 65536 entries, so a linear scan is not an option.
 *
 * Replacement: least recently used.  Every get stamps the entry with a
 * per-cache clock; eviction scans for the oldest unpinned entry.  The scan is
 * linear but only runs on a miss, which costs a read of a cluster anyway.
 * A pinned entry (a caller holds the table between get and put) is never
 * evicted; callers hold at most a handful of pins, so a cache always has a
 * free victim (the minimum size is 4 entries).
 *
 * Dirty entries and ordering: an L2 table may point to clusters whose
 * refcount increase is only in the refcount cache.  So the L2 cache depends
 * on the refcount cache: before any dirty L2 table is written, every dirty
 * refcount block is written and the file is flushed.  That one rule gives
 * both crash-safety orderings the driver needs for allocations: data (whose
 * write completed before the L2 entry was set) and refcounts are on stable
 * storage before the L2 entry that depends on them.  (The reverse ordering
 * for frees — L2 entry gone before the refcount drops — is done by the
 * callers, which write back and flush the L2 cache before freeing.)
 *
 * Locking: none here.  Every function runs with the qcow2 node's s->lock
 * held (a CoMutex), which serialises all metadata access; a load or
 * write-back yields while holding it, which is fine for a CoMutex.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "qcow2.h"

/* Each table buffer sits 4 KiB into its allocation (keeping O_DIRECT
 * alignment); the slot index is stored in front of it, so put and
 * mark_dirty find their entry in O(1). */
#define TABLE_PREFIX 4096

typedef struct CacheEntry {
    uint64_t offset;          /* host offset; 0 = empty slot */
    uint8_t *table;
    uint64_t lru;
    int pin;
    bool dirty;
    int next;                 /* hash chain, -1 = end */
} CacheEntry;

struct Qcow2Cache {
    Qcow2State *s;
    const char *name;
    CacheEntry *e;
    int n;
    int *buckets;
    int nb_buckets;
    uint64_t clock;
    Qcow2Cache *dep;
};

static int bucket_of(const Qcow2Cache *c, uint64_t off)
{
    uint64_t k = (off >> c->s->cluster_bits) * 0x9e3779b97f4a7c15ull;
    return (int)(k >> 40) & (c->nb_buckets - 1);
}

/* Thread-safe: called at open, before the node is reachable. */
Qcow2Cache *qcow2_cache_new(Qcow2State *s, int nb_entries, const char *name)
{
    Qcow2Cache *c = calloc(1, sizeof(*c));
    if (!c) {
        return NULL;
    }
    c->s = s;
    c->name = name;
    c->n = MAX(nb_entries, 4);
    c->nb_buckets = 1;
    while (c->nb_buckets < c->n) {
        c->nb_buckets <<= 1;
    }
    c->e = calloc(c->n, sizeof(*c->e));
    c->buckets = malloc(c->nb_buckets * sizeof(int));
    if (!c->e || !c->buckets) {
        qcow2_cache_free(c);
        return NULL;
    }
    memset(c->buckets, 0xff, c->nb_buckets * sizeof(int));
    for (int i = 0; i < c->n; i++) {
        c->e[i].next = -1;
    }
    return c;
}

void qcow2_cache_free(Qcow2Cache *c)
{
    if (!c) {
        return;
    }
    for (int i = 0; c->e && i < c->n; i++) {
        if (c->e[i].table) {
            free(c->e[i].table - TABLE_PREFIX);
        }
    }
    free(c->e);
    free(c->buckets);
    free(c);
}

void qcow2_cache_set_dependency(Qcow2Cache *c, Qcow2Cache *dep)
{
    c->dep = dep;
}

int qcow2_cache_entries(const Qcow2Cache *c)
{
    return c->n;
}

static int find(const Qcow2Cache *c, uint64_t off)
{
    for (int i = c->buckets[bucket_of(c, off)]; i >= 0; i = c->e[i].next) {
        if (c->e[i].offset == off) {
            return i;
        }
    }
    return -1;
}

static void unlink_entry(Qcow2Cache *c, int i)
{
    int *p = &c->buckets[bucket_of(c, c->e[i].offset)];
    while (*p != i) {
        p = &c->e[*p].next;
    }
    *p = c->e[i].next;
    c->e[i].next = -1;
    c->e[i].offset = 0;
}

static void link_entry(Qcow2Cache *c, int i, uint64_t off)
{
    int b = bucket_of(c, off);
    c->e[i].offset = off;
    c->e[i].next = c->buckets[b];
    c->buckets[b] = i;
}


static int entry_of(const Qcow2Cache *c, const uint8_t *table)
{
    int i = *(const int *)(table - TABLE_PREFIX);
    return i >= 0 && i < c->n && c->e[i].table == table ? i : -1;
}

static int alloc_table(Qcow2Cache *c, int i)
{
    uint8_t *raw;
    if (posix_memalign((void **)&raw, 4096, TABLE_PREFIX + c->s->cluster_size)) {
        return -ENOMEM;
    }
    *(int *)raw = i;
    c->e[i].table = raw + TABLE_PREFIX;
    return 0;
}

/* Writes every dirty entry of the cache we depend on, then flushes the file. */
static int coroutine_fn GRAPH_RDLOCK write_dependency(Qcow2Cache *c)
{
    if (!c->dep) {
        return 0;
    }
    int ret = qcow2_cache_writeback(c->dep);
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_flush(c->s->bs->file->node);
}

static int coroutine_fn GRAPH_RDLOCK write_entry(Qcow2Cache *c, int i)
{
    Qcow2State *s = c->s;
    CacheEntry *e = &c->e[i];
    if (e->offset < s->cluster_size) {
        /* Never write over the header, whatever the metadata says. */
        return qcow2_signal_corruption(s, (int64_t)e->offset, (int64_t)s->cluster_size,
                                       "%s table at host offset 0x%llx "
                                       "overlaps the header", c->name,
                                       (unsigned long long)e->offset);
    }
    if (c == s->l2_cache) {
        bdrv_co_debug_event(s->bs->file, BLKDBG_L2_UPDATE);
    }
    /* A failed write leaves the entry dirty and in place (evict gives up
     * on it rather than reuse its slot): the next write-back retries it. */
    int ret = bdrv_co_pwrite(s->bs->file, e->offset, s->cluster_size, e->table, 0);
    if (ret == 0) {
        e->dirty = false;
    }
    return ret;
}

int coroutine_fn qcow2_cache_writeback(Qcow2Cache *c)
{
    IO_CODE();
    bool any = false;
    for (int i = 0; i < c->n && !any; i++) {
        any = c->e[i].dirty;
    }
    if (!any) {
        return 0;
    }
    int ret = write_dependency(c);
    for (int i = 0; i < c->n && ret == 0; i++) {
        if (c->e[i].dirty) {
            ret = write_entry(c, i);
        }
    }
    return ret;
}

/* Picks an empty slot or the least recently used unpinned entry. */
static int coroutine_fn GRAPH_RDLOCK evict(Qcow2Cache *c)
{
    int victim = -1;
    for (int i = 0; i < c->n; i++) {
        if (c->e[i].offset == 0 && !c->e[i].pin) {
            return i;
        }
        if (!c->e[i].pin && (victim < 0 || c->e[i].lru < c->e[victim].lru)) {
            victim = i;
        }
    }
    if (victim < 0) {
        return -ENOSPC;
    }
    if (c->e[victim].dirty) {
        int ret = write_dependency(c);
        if (ret == 0) {
            ret = write_entry(c, victim);
        }
        if (ret < 0) {
            return ret;
        }
    }
    unlink_entry(c, victim);
    return victim;
}

int coroutine_fn qcow2_cache_get(Qcow2Cache *c, uint64_t off, bool load,
                                 uint8_t **table)
{
    IO_CODE();
    Qcow2State *s = c->s;
    int i = find(c, off);
    if (i < 0) {
        i = evict(c);
        if (i < 0) {
            return i;
        }
        if (!c->e[i].table && alloc_table(c, i) < 0) {
            return -ENOMEM;
        }
        c->e[i].pin++;               /* hold the slot while we yield */
        int ret = load ? bdrv_co_pread(s->bs->file, off, s->cluster_size,
                                       c->e[i].table, 0) : 0;
        c->e[i].pin--;
        if (ret < 0) {
            return ret;
        }
        if (!load) {
            memset(c->e[i].table, 0, s->cluster_size);
        }
        c->e[i].dirty = false;
        link_entry(c, i, off);
    } else if (!load) {
        /* A new table at a reused offset: the old content is meaningless. */
        memset(c->e[i].table, 0, s->cluster_size);
    }
    c->e[i].pin++;
    c->e[i].lru = ++c->clock;
    *table = c->e[i].table;
    return 0;
}

void qcow2_cache_put(Qcow2Cache *c, uint8_t *table)
{
    int i = entry_of(c, table);
    if (i >= 0 && c->e[i].pin > 0) {
        c->e[i].pin--;
    }
}

void qcow2_cache_mark_dirty(Qcow2Cache *c, uint8_t *table)
{
    int i = entry_of(c, table);
    if (i >= 0) {
        c->e[i].dirty = true;
    }
}

void qcow2_cache_discard(Qcow2Cache *c, uint64_t off)
{
    int i = find(c, off);
    if (i >= 0 && !c->e[i].pin) {
        c->e[i].dirty = false;
        unlink_entry(c, i);
    }
}
