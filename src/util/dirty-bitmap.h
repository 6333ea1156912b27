/*
 * dirty-bitmap.h — which chunks of a disk changed (the mirror job's bitmap).
 *
 * A bitmap covers `length` bytes in chunks of `granularity` bytes (a power
 * of two >= 512; the last chunk may be partial).  Semantics are
 * chunk-granular: set() dirties, and reset()/take() clean, EVERY chunk the
 * byte range touches, even partly.  Ranges are clipped to the length; an
 * empty range does nothing.  Offsets returned are byte offsets.
 *
 * Threading: every function is thread-safe and may be called from any
 * thread, inside a coroutine or not (class "both": no global lock, no graph
 * lock, never blocks for long: one short internal mutex).  Only _free() must
 * not race with anything else.  See dirty-bitmap.c for the design.
 */
#ifndef DISKSTACK_DIRTY_BITMAP_H
#define DISKSTACK_DIRTY_BITMAP_H

#include <stdbool.h>
#include <stdint.h>

typedef struct DirtyBitmap DirtyBitmap;

#define DIRTY_BITMAP_MAX_LENGTH (INT64_MAX / 2)     /* no overflow in bytes */

/* NULL if granularity is not a power of two >= 512, length is negative or
 * above the maximum, or out of memory.  All chunks start clean. */
DirtyBitmap *dirty_bitmap_new(int64_t length, uint32_t granularity);
void dirty_bitmap_free(DirtyBitmap *b);

uint32_t dirty_bitmap_granularity(DirtyBitmap *b);
int64_t dirty_bitmap_length(DirtyBitmap *b);

/* Marks / clears every chunk that [off, off + bytes) touches. */
void dirty_bitmap_set(DirtyBitmap *b, int64_t off, int64_t bytes);
void dirty_bitmap_reset(DirtyBitmap *b, int64_t off, int64_t bytes);
/* Marks every chunk. */
void dirty_bitmap_set_all(DirtyBitmap *b);

/* Is the chunk holding byte `off` dirty?  false past the end. */
bool dirty_bitmap_get(DirtyBitmap *b, int64_t off);
/* Dirty bytes (a dirty partial last chunk counts its real size); O(1),
 * lock-free. */
int64_t dirty_bitmap_count(DirtyBitmap *b);

/* The first dirty byte >= off (off itself if its chunk is dirty), or -1.
 * If len is not NULL it receives the length of the dirty run from there,
 * capped at max_len (max_len <= 0: no cap) and at the end of the bitmap. */
int64_t dirty_bitmap_next_dirty(DirtyBitmap *b, int64_t off,
                                int64_t max_len, int64_t *len);
/* The first clean byte >= off, or -1 if [off, length) is all dirty. */
int64_t dirty_bitmap_next_clean(DirtyBitmap *b, int64_t off);

/* Atomically: if [off, off + bytes) touches a dirty chunk, clears every
 * chunk it touches and returns true; else false.  The copy loop's "take the
 * work": a set() that returns after take() is never lost. */
bool dirty_bitmap_take(DirtyBitmap *b, int64_t off, int64_t bytes);

/* New length: chunks past the new end are dropped, new chunks start
 * clean.  0, -EINVAL (length out of range) or -ENOMEM (bitmap unchanged). */
int dirty_bitmap_resize(DirtyBitmap *b, int64_t length);

#endif
