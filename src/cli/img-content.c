/*
 * img-content.c — helpers shared by img convert, compare and rebase (see
 * img-content.h).
 */
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block-common.h"
#include "cli/img.h"
#include "cli/img-content.h"

#define MEM_ALIGN         4096

bool img_buf_is_zero(const uint8_t *buf, size_t len)
{
    return len == 0 || (buf[0] == 0 && memcmp(buf, buf + 1, len - 1) == 0);
}

int64_t img_first_diff_sector(const uint8_t *a, const uint8_t *b, size_t len)
{
    for (size_t off = 0; off < len; off += SECTOR) {
        size_t n = MIN((size_t)SECTOR, len - off);
        if (b ? memcmp(a + off, b + off, n) != 0 : !img_buf_is_zero(a + off, n)) {
            return (int64_t)off;
        }
    }
    return -1;
}

bool img_status_reads_zero(int st)
{
    return (st & BDRV_BLOCK_ZERO) || !(st & BDRV_BLOCK_DATA);
}

void *img_alloc_buf(size_t len)
{
    void *p = NULL;
    return posix_memalign(&p, MEM_ALIGN, len) == 0 ? p : NULL;
}

void img_backing_path(const char *overlay, const char *name, char *out,
                      size_t len)
{
    char dir[PATH_MAX];

    if (name[0] == '/' || !strchr(overlay, '/')) {
        snprintf(out, len, "%s", name);
        return;
    }
    snprintf(dir, sizeof(dir), "%s", overlay);
    snprintf(out, len, "%s/%s", dirname(dir), name);
}

bool img_parse_copy_flag(ImgCopyFlags *f, int c)
{
    switch (c) {
    case 'p': f->progress = true; return true;
    case 'q': f->quiet = true; return true;
    case 'U': f->force_share = true; return true;
    default: return false;
    }
}

bool img_copy_shows_progress(const ImgCopyFlags *f)
{
    return f->progress && !f->quiet;
}

int img_copy_open_flags(const ImgCopyFlags *f)
{
    return f->force_share ? IMG_OPEN_FORCE_SHARE : 0;
}
