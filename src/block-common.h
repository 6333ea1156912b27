/*
 * block-common.h — types shared by the GS and I/O halves of the block layer.
 *
 * Who may call whom:
 *   block-gs.h  GS functions: main thread, global lock held.  May call
 *               block-io.h functions (holding the graph read lock).
 *   block-io.h  I/O functions: any thread, in a coroutine, graph read lock
 *               held.  Must not call block-gs.h (clang refuses to compile it).
 *   this file   types and the few I/O-or-GS helpers.
 *
 * The graph: a BlockNode has a driver, options, a length, children and
 * parents.  A BlockChild is an edge from a parent (a node or a backend) to a
 * child node, with a role and the permissions the parent takes and shares.
 * A BlockBackend is how a user (an export, a job) holds a root node.
 */
#ifndef DISKSTACK_BLOCK_COMMON_H
#define DISKSTACK_BLOCK_COMMON_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>
#include "annotations.h"
#include "coroutine/coroutine.h"
#include "util/error.h"
#include "util/iov.h"

#define BDRV_SECTOR_SIZE 512
#define BDRV_MAX_LENGTH  (INT64_MAX / 2)

typedef struct BlockDriver BlockDriver;
typedef struct BlockNode BlockNode;
typedef struct BlockChild BlockChild;
typedef struct BlockBackend BlockBackend;
typedef struct BlockChildClass BlockChildClass;

/* Permissions a parent takes on a child, or shares with the other parents. */
enum {
    BLK_PERM_CONSISTENT_READ = 1 << 0,  /* reads see consistent data */
    BLK_PERM_WRITE           = 1 << 1,  /* may change the visible content */
    BLK_PERM_WRITE_UNCHANGED = 1 << 2,  /* writes that do not change content */
    BLK_PERM_RESIZE          = 1 << 3,  /* may change the length */
    BLK_PERM_ALL             = (1 << 4) - 1,
};
/* "consistent read, write, ..." for error messages; returns a static or
 * thread-local string. */
const char *blk_perm_names(uint64_t perm);

/* The role of an edge (flags, may combine). */
typedef enum BdrvChildRole {
    BDRV_CHILD_DATA     = 1 << 0,  /* holds guest-visible data */
    BDRV_CHILD_METADATA = 1 << 1,  /* holds format metadata */
    BDRV_CHILD_FILTERED = 1 << 2,  /* filter child or backing */
    BDRV_CHILD_COW      = 1 << 3,  /* a backing file */
    BDRV_CHILD_PRIMARY  = 1 << 4,  /* the main child (a format's "file") */
    BDRV_CHILD_IMAGE    = BDRV_CHILD_DATA | BDRV_CHILD_METADATA,
} BdrvChildRole;

/* Request flags. */
typedef enum BdrvRequestFlags {
    BDRV_REQ_FUA          = 1 << 0,  /* write through to stable storage */
    BDRV_REQ_MAY_UNMAP    = 1 << 1,  /* write_zeroes may deallocate */
    BDRV_REQ_NO_FALLBACK  = 1 << 2,  /* write_zeroes: fail rather than write buffers */
    BDRV_REQ_ZERO_WRITE   = 1 << 3,  /* internal: pwritev carries zeroes */
    BDRV_REQ_WRITE_UNCHANGED = 1 << 4,
    BDRV_REQ_COMPRESS     = 1 << 5,  /* format should compress (qcow2) */
    /* write only where this layer allocates nothing yet, atomically with
     * the format's own allocation (skip the rest): the stream job's copy,
     * which a guest write racing it must win.  Formats that support it
     * list it in supported_write_flags (qcow2); io.c drops it elsewhere. */
    BDRV_REQ_IF_UNALLOCATED = 1 << 6,
    BDRV_REQ_MASK         = (1 << 7) - 1,
} BdrvRequestFlags;

/* Block status (block_status callback and bdrv_co_block_status). */
enum {
    BDRV_BLOCK_DATA      = 1 << 0,  /* reads return data from this layer or below */
    BDRV_BLOCK_ZERO      = 1 << 1,  /* reads return zeroes */
    BDRV_BLOCK_OFFSET_VALID = 1 << 2, /* *map is the offset in *file */
    BDRV_BLOCK_ALLOCATED = 1 << 3,  /* this layer defines the content */
    BDRV_BLOCK_RECURSE   = 1 << 4,  /* ask *file for DATA/ZERO (formats) */
};

/*
 * Named event points inside a format (fault injection, DESIGN "inject"
 * filter): the format raises one on its file child just before the I/O of
 * that step, so that a rule of an `inject` node below can fail exactly that
 * I/O.  The names are the QMP/CLI spelling (bdrv_debug_event_name).
 */
typedef enum BlkDebugEvent {
    BLKDBG_L2_UPDATE,        /* "l2-update": an L2 table (or L1 entry) is written */
    BLKDBG_REFBLOCK_ALLOC,   /* "refblock-alloc": a refcount block is allocated */
    BLKDBG_COW_READ,         /* "cow-read": the unchanged part of a cluster is read for COW */
    BLKDBG_COW_WRITE,        /* "cow-write": ... and written to the new cluster */
    BLKDBG_HEADER_UPDATE,    /* "header-update": a header field is rewritten */
    BLKDBG_EVENT_MAX,
} BlkDebugEvent;
/* "l2-update", ...; NULL for an out-of-range value.  Pure. */
const char *bdrv_debug_event_name(BlkDebugEvent ev);
/* The event called name, or -1.  Pure. */
int bdrv_debug_event_parse(const char *name);

/* Limits a node publishes (refresh_limits); io.c enforces them. */
typedef struct BlockLimits {
    uint32_t request_alignment;   /* bytes; reads/writes are aligned to this */
    uint32_t min_mem_alignment;   /* buffer alignment (O_DIRECT) */
    uint64_t max_transfer;        /* 0 = unlimited; io.c splits above it */
    uint32_t opt_transfer;
    uint64_t max_pwrite_zeroes;   /* 0 = unlimited */
    uint64_t max_pdiscard;        /* 0 = unlimited */
    uint32_t pdiscard_alignment;
    uint32_t pwrite_zeroes_alignment;
} BlockLimits;

/*
 * An edge.  `parent_node` is set when the parent is a node, `parent_opaque`
 * (with `klass`) when it is a backend or a job; exactly one is used.
 * Fields written only under the graph write lock (or during open/close
 * before the node is reachable) and read under the read lock.
 */
struct BlockChild {
    char *name;                  /* "file", "backing", "root", ... */
    BdrvChildRole role;
    BlockNode *node GUARDED_BY(graph_lock);
    BlockNode *parent_node;
    const BlockChildClass *klass;
    void *parent_opaque;
    uint64_t perm, shared_perm;
    /* quiesce sections this edge has propagated into its parent */
    int parent_quiesced;
    /* GS: jobs relying on this edge (a stream or commit job's chain);
     * bdrv_set_backing_locked() refuses to move a frozen backing edge */
    int frozen;
    /* links: the parent's children list, the child's parents list */
    struct BlockChild *next_child, *next_parent;
};

/*
 * What a parent that is not a node (a backend, a job) does when its child is
 * quiesced or changes.  All GS, main thread.
 */
struct BlockChildClass {
    const char *(*get_name)(BlockChild *c);         /* for error messages */
    /* The child is being quiesced: stop sending new requests. */
    void (*quiesce_begin)(BlockChild *c);
    void (*quiesce_end)(BlockChild *c);
    /* Requests of this parent still in flight (counted at the backend). */
    bool (*has_in_flight)(BlockChild *c);
    /* The child's length changed. */
    void (*resize)(BlockChild *c);
    /* Optional: true if this edge stays on its node when every parent of
     * the node moves to another (a snapshot's overlay, a filter inserted
     * above): a block job's. */
    bool (*stay_at_node)(BlockChild *c);
};

/*
 * A node.  The driver's state is `opaque` (driver->instance_size bytes).
 */
struct BlockNode {
    char node_name[128];
    const BlockDriver *drv;
    void *opaque;
    json_t *options;             /* the definition it was opened with */
    char filename[4096];         /* for humans and for relative backing names */
    bool read_only;
    bool probed;                 /* raw chosen by probing: guard sector 0 */
    _Atomic int64_t length;      /* bytes; set by the driver */
    BlockLimits bl;
    /* Supported request flags (beyond the basics) */
    unsigned supported_write_flags, supported_zero_flags;

    BlockChild *children GUARDED_BY(graph_lock);
    BlockChild *parents GUARDED_BY(graph_lock);
    BlockChild *file GUARDED_BY(graph_lock);      /* shortcut: the "file" child */
    BlockChild *backing GUARDED_BY(graph_lock);   /* shortcut: the "backing" child */

    int refcnt;                  /* GS */
    _Atomic int in_flight;       /* requests inside this node (io.c) */
    _Atomic int quiesce_counter; /* nested quiesced sections covering it */
    int open_perm, open_shared;  /* the cumulative perms currently taken */

    struct BlockNode *next_named;                  /* GS: all named nodes */
};

/*
 * Global-state-agnostic helpers.
 */

/* I/O or GS: picks the format for an image by its first bytes — the
 * highest-scoring format driver, raw if none recognises it.  The driver
 * registry is frozen once block_init() has run. */
const BlockDriver *bdrv_probe_format(const uint8_t *buf, int len,
                                     const char *filename);
static inline int64_t bdrv_getlength(BlockNode *bs)   /* I/O or GS */
{
    return atomic_load_explicit(&bs->length, memory_order_acquire);
}

#endif
