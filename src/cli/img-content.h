/*
 * img-content.h — private to img-convert.c, img-compare.c and img-rebase.c:
 * what the img subcommands that copy or compare image content share (zero
 * and difference scans over a buffer, the I/O buffer, backing names
 * relative to their overlay, and the -p/-q/-U flags).
 *
 * Threading: everything here is pure or main-thread (option parsing).
 */
#ifndef DISKSTACK_CLI_IMG_CONTENT_H
#define DISKSTACK_CLI_IMG_CONTENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SECTOR            512
#define IO_BUF_SIZE       (2 * 1024 * 1024)   /* bytes per chunk / read */

/* Both: pure.  True if buf[0..len) is all zeroes. */
bool img_buf_is_zero(const uint8_t *buf, size_t len);
/* Both: pure.  Offset of the first 512-byte sector where a and b differ
 * (b NULL: where a is not zero), or -1 if none. */
int64_t img_first_diff_sector(const uint8_t *a, const uint8_t *b, size_t len);
/* Both: pure.  A block status that guarantees zeroes when read. */
bool img_status_reads_zero(int st);
/* Both: a page-aligned buffer of len bytes (free() it), or NULL. */
void *img_alloc_buf(size_t len);
/* Both: a relative backing name is relative to the overlay's directory. */
void img_backing_path(const char *overlay, const char *name, char *out,
                      size_t len);

/* The options convert, compare and rebase share. */
typedef struct ImgCopyFlags {
    bool progress;       /* -p */
    bool quiet;          /* -q */
    bool force_share;    /* -U */
} ImgCopyFlags;
/* Main thread: records getopt's c in f if it is p, q or U; false if it is
 * none of them. */
bool img_parse_copy_flag(ImgCopyFlags *f, int c);
/* Pure: whether to show progress (-p and not -q). */
bool img_copy_shows_progress(const ImgCopyFlags *f);
/* Pure: the img_co_open() flags -U asks for. */
int img_copy_open_flags(const ImgCopyFlags *f);

#endif
