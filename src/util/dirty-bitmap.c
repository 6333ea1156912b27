/*
 * dirty-bitmap.c — the mirror job's dirty bitmap (see dirty-bitmap.h).
 *
 * Why two levels.  1 TiB at the mirror's default 64 KiB is 16M bits, 2 MiB
 * of 64-bit words.  The copy loop asks "next dirty chunk after X" again and
 * again, and late in a mirror almost everything is clean: scanning 256K
 * words per question would cost more than the copy.  A summary level keeps
 * one bit per word ("this word is non-zero"), 4K words for 1 TiB, so a
 * search skips 4096 clean chunks per summary bit.  next_clean() walks the
 * words themselves: the run it crosses is work the caller is about to do
 * (and next_dirty() scans no further than its max_len).
 * Invariants: bits past nbits are zero; summary bit w == (words[w] != 0);
 * nset == popcount of all words.
 *
 * Locking.  One mutex per bitmap guards everything.  Critical sections are
 * a few word operations (a loop over words for big ranges), never I/O or a
 * wait, so any thread may call anything, coroutine or not.  The mutex makes
 * take() atomic against set(): a set() that starts after take() returned
 * leaves its chunks dirty for the copy loop to find again — no lost write.
 * The dirty byte count is kept incrementally under the lock and published
 * in an atomic, so count() (query-jobs) is O(1) and lock-free.  Measured
 * (test-dirty-bitmap "bench", 2 cores): set() ~18 ns alone, ~35-140 ns per
 * call with two threads hammering one bitmap — noise next to a write.
 *
 * Chunk-granular semantics.  set() marks every chunk a range touches (a
 * 4 KiB write dirties its whole 64 KiB chunk, copied whole), and reset() /
 * take() clear every chunk touched, not only those fully inside: the mirror
 * takes chunk-aligned runs, and a partial chunk passed in asks for that
 * chunk's work.  A dirty partial last chunk counts its real size, so count()
 * of a fully dirty bitmap equals its length.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "annotations.h"
#include "util/dirty-bitmap.h"

typedef struct CAPABILITY("mutex") BitmapLock {
    pthread_mutex_t m;
} BitmapLock;

struct DirtyBitmap {
    BitmapLock lock;
    int shift;                  /* log2(granularity); constant */
    /* The rest: under lock (clang cannot check members' guards in C, so the
     * helpers that touch them say REQUIRES(b->lock)). */
    int64_t length;             /* bytes */
    int64_t nbits;              /* chunks: DIV_ROUND_UP(length, granularity) */
    uint64_t *words;            /* level 0: one bit per chunk */
    uint64_t *summary;          /* level 1: bit w set iff words[w] != 0 */
    int64_t nset;               /* dirty chunks */
    _Atomic int64_t dirty_bytes; /* written under lock, read lock-free */
};

#define ONES (~(uint64_t)0)

/* The analysis cannot see that the pthread mutex implements the
 * capability, hence NO_THREAD_SAFETY_ANALYSIS on these two bodies. */
static void bm_lock(DirtyBitmap *b) ACQUIRE(b->lock) NO_THREAD_SAFETY_ANALYSIS
{
    pthread_mutex_lock(&b->lock.m);
}

static void bm_unlock(DirtyBitmap *b) RELEASE(b->lock) NO_THREAD_SAFETY_ANALYSIS
{
    pthread_mutex_unlock(&b->lock.m);
}

/* DIV_ROUND_UP(n, 1 << shift) without overflow. */
static int64_t chunks_for(int64_t n, int shift)
{
    return (n >> shift) + ((n & ((1LL << shift) - 1)) != 0);
}

#define words_for(bits) chunks_for(bits, 6)

/* Bits first..last (inclusive, both in word w's range or beyond) of word w. */
static uint64_t word_mask(int64_t w, int64_t first, int64_t last)
{
    int lo = w == first >> 6 ? (int)(first & 63) : 0;
    int hi = w == last >> 6 ? (int)(last & 63) : 63;

    return (ONES << lo) & (ONES >> (63 - hi));
}

static bool bit_is_set(DirtyBitmap *b, int64_t bit) REQUIRES(b->lock)
{
    return (b->words[bit >> 6] >> (bit & 63)) & 1;
}

/* Recomputes the published byte count from nset (the partial last chunk
 * counts its real size). */
static void publish(DirtyBitmap *b) REQUIRES(b->lock)
{
    int64_t bytes = b->nset << b->shift;

    if (b->nbits && bit_is_set(b, b->nbits - 1)) {
        bytes -= (b->nbits << b->shift) - b->length;
    }
    atomic_store_explicit(&b->dirty_bytes, bytes, memory_order_relaxed);
}

static void bits_set(DirtyBitmap *b, int64_t first, int64_t last) REQUIRES(b->lock)
{
    for (int64_t w = first >> 6; w <= last >> 6; w++) {
        uint64_t mask = word_mask(w, first, last);

        b->nset += __builtin_popcountll(mask & ~b->words[w]);
        b->words[w] |= mask;
        b->summary[w >> 6] |= (uint64_t)1 << (w & 63);
    }
}

/* Clears bits first..last; true if any of them was set. */
static bool bits_clear(DirtyBitmap *b, int64_t first, int64_t last) REQUIRES(b->lock)
{
    bool any = false;

    for (int64_t w = first >> 6; w <= last >> 6; w++) {
        uint64_t old = b->words[w] & word_mask(w, first, last);

        if (old) {
            any = true;
            b->nset -= __builtin_popcountll(old);
            b->words[w] &= ~old;
            if (!b->words[w]) {
                b->summary[w >> 6] &= ~((uint64_t)1 << (w & 63));
            }
        }
    }
    return any;
}

/* The first set bit >= bit, or -1: the rest of bit's word, then the summary
 * finds the next non-zero word. */
static int64_t find_set(DirtyBitmap *b, int64_t bit) REQUIRES(b->lock)
{
    int64_t w = bit >> 6, nsummary = chunks_for(b->nbits, 12);
    uint64_t m;

    if (bit >= b->nbits) {
        return -1;
    }
    m = b->words[w] & (ONES << (bit & 63));
    if (m) {
        return (w << 6) + __builtin_ctzll(m);
    }
    w++;                    /* summary bits past the last word are zero */
    for (int64_t s = w >> 6; s < nsummary; s++) {
        m = b->summary[s] & (s == w >> 6 ? ONES << (w & 63) : ONES);
        if (m) {
            w = (s << 6) + __builtin_ctzll(m);
            return (w << 6) + __builtin_ctzll(b->words[w]);
        }
    }
    return -1;
}

/* The first clear bit in [bit, limit), or limit (limit <= nbits). */
static int64_t find_clear(DirtyBitmap *b, int64_t bit, int64_t limit) REQUIRES(b->lock)
{
    for (int64_t w = bit >> 6; (w << 6) < limit; w++) {
        uint64_t m = ~b->words[w];

        if (w == bit >> 6) {
            m &= ONES << (bit & 63);
        }
        if (m) {
            return MIN((w << 6) + __builtin_ctzll(m), limit);
        }
    }
    return limit;
}

/* The chunks [off, off + bytes) touches, clipped to the length; false if
 * none. */
static bool range_bits(DirtyBitmap *b, int64_t off, int64_t bytes,
                       int64_t *first, int64_t *last) REQUIRES(b->lock)
{
    int64_t end;

    assert(off >= 0 && bytes >= 0);
    if (off >= b->length || bytes == 0) {
        return false;
    }
    end = bytes > b->length - off ? b->length : off + bytes;
    *first = off >> b->shift;
    *last = (end - 1) >> b->shift;
    return true;
}

/* Resizes both levels for nbits, zeroing new words; -ENOMEM leaves valid
 * (maybe larger) arrays.  Bits past nbits must already be zero. */
static int realloc_levels(DirtyBitmap *b, int64_t nbits) REQUIRES(b->lock)
{
    int64_t old_w = words_for(b->nbits), new_w = words_for(nbits);
    int64_t old_s = words_for(old_w), new_s = words_for(new_w);
    uint64_t *w = realloc(b->words, MAX(new_w, 1) * sizeof(uint64_t));
    uint64_t *s = w ? realloc(b->summary, MAX(new_s, 1) * sizeof(uint64_t)) : NULL;

    b->words = w ? w : b->words;
    b->summary = s ? s : b->summary;
    if (!s) {
        return -ENOMEM;
    }
    if (new_w > old_w) {
        memset(w + old_w, 0, (new_w - old_w) * sizeof(uint64_t));
        memset(s + old_s, 0, (new_s - old_s) * sizeof(uint64_t));
    }
    return 0;
}

DirtyBitmap *dirty_bitmap_new(int64_t length, uint32_t granularity)
{
    DirtyBitmap *b;

    if (length < 0 || length > DIRTY_BITMAP_MAX_LENGTH || granularity < 512 || (granularity & (granularity - 1))) {
        return NULL;
    }
    b = calloc(1, sizeof(*b));
    if (!b) {
        return NULL;
    }
    pthread_mutex_init(&b->lock.m, NULL);
    b->shift = __builtin_ctz(granularity);
    if (dirty_bitmap_resize(b, length) < 0) {
        dirty_bitmap_free(b);
        return NULL;
    }
    return b;
}

void dirty_bitmap_free(DirtyBitmap *b)
{
    if (b) {
        pthread_mutex_destroy(&b->lock.m);
        free(b->words);
        free(b->summary);
        free(b);
    }
}

uint32_t dirty_bitmap_granularity(DirtyBitmap *b)
{
    return (uint32_t)1 << b->shift;
}

int64_t dirty_bitmap_length(DirtyBitmap *b)
{
    int64_t length;

    bm_lock(b);
    length = b->length;
    bm_unlock(b);
    return length;
}

void dirty_bitmap_set(DirtyBitmap *b, int64_t off, int64_t bytes)
{
    int64_t first, last;

    bm_lock(b);
    if (range_bits(b, off, bytes, &first, &last)) {
        bits_set(b, first, last);
        publish(b);
    }
    bm_unlock(b);
}

void dirty_bitmap_reset(DirtyBitmap *b, int64_t off, int64_t bytes)
{
    dirty_bitmap_take(b, off, bytes);
}

void dirty_bitmap_set_all(DirtyBitmap *b)
{
    dirty_bitmap_set(b, 0, INT64_MAX);      /* clipped to the length */
}

bool dirty_bitmap_get(DirtyBitmap *b, int64_t off)
{
    bool dirty;

    assert(off >= 0);
    bm_lock(b);
    dirty = off < b->length && bit_is_set(b, off >> b->shift);
    bm_unlock(b);
    return dirty;
}

int64_t dirty_bitmap_count(DirtyBitmap *b)
{
    return atomic_load_explicit(&b->dirty_bytes, memory_order_relaxed);
}

int64_t dirty_bitmap_next_dirty(DirtyBitmap *b, int64_t off,
                                int64_t max_len, int64_t *len)
{
    int64_t bit, start = -1, end, limit;

    assert(off >= 0);
    bm_lock(b);
    bit = off < b->length ? find_set(b, off >> b->shift) : -1;
    if (bit >= 0) {
        start = MAX(off, bit << b->shift);
        end = b->length;
        if (max_len > 0 && max_len < end - start) {
            end = start + max_len;
        }
        limit = chunks_for(end, b->shift);  /* scan no further than the cap */
        end = MIN(end, find_clear(b, bit, limit) << b->shift);
        if (len) {
            *len = end - start;
        }
    }
    bm_unlock(b);
    return start;
}

int64_t dirty_bitmap_next_clean(DirtyBitmap *b, int64_t off)
{
    int64_t bit, ret = -1;

    assert(off >= 0);
    bm_lock(b);
    if (off < b->length) {
        bit = find_clear(b, off >> b->shift, b->nbits);
        if (bit < b->nbits) {
            ret = MAX(off, bit << b->shift);
        }
    }
    bm_unlock(b);
    return ret;
}

bool dirty_bitmap_take(DirtyBitmap *b, int64_t off, int64_t bytes)
{
    int64_t first, last;
    bool any = false;

    bm_lock(b);
    if (range_bits(b, off, bytes, &first, &last)) {
        any = bits_clear(b, first, last);
        if (any) {
            publish(b);
        }
    }
    bm_unlock(b);
    return any;
}

int dirty_bitmap_resize(DirtyBitmap *b, int64_t length)
{
    int64_t nbits;
    int ret = 0;

    if (length < 0 || length > DIRTY_BITMAP_MAX_LENGTH) {
        return -EINVAL;
    }
    nbits = chunks_for(length, b->shift);
    bm_lock(b);
    if (nbits > b->nbits) {
        ret = realloc_levels(b, nbits);
    } else if (nbits < b->nbits) {
        bits_clear(b, nbits, b->nbits - 1);  /* keeps "past nbits is zero" */
        realloc_levels(b, nbits);            /* shrinking: failure is harmless */
    }
    if (ret == 0) {
        b->nbits = nbits;
        b->length = length;
        publish(b);
    }
    bm_unlock(b);
    return ret;
}
