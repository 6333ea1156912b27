/*
 * iov.c — scatter/gather vectors.
 *
 * Thread-safety: an IOVector belongs to one request; functions are reentrant.
 */
#include <stdlib.h>
#include <string.h>
#include "util/iov.h"

void iov_init_buf(IOVector *v, void *buf, size_t len)
{
    v->local.iov_base = buf;
    v->local.iov_len = len;
    v->iov = &v->local;
    v->niov = 1;
    v->nalloc = -1;
    v->size = len;
}

void iov_init(IOVector *v, int hint)
{
    v->nalloc = hint > 0 ? hint : 1;
    v->iov = calloc(v->nalloc, sizeof(struct iovec));
    if (!v->iov) {
        abort();
    }
    v->niov = 0;
    v->size = 0;
}

void iov_add(IOVector *v, void *base, size_t len)
{
    if (len == 0) {
        return;
    }
    if (v->nalloc < 0) {
        abort();      /* external vectors do not grow */
    }
    if (v->niov == v->nalloc) {
        v->nalloc *= 2;
        v->iov = realloc(v->iov, v->nalloc * sizeof(struct iovec));
        if (!v->iov) {
            abort();
        }
    }
    v->iov[v->niov].iov_base = base;
    v->iov[v->niov].iov_len = len;
    v->niov++;
    v->size += len;
}

void iov_concat(IOVector *v, const IOVector *src, size_t off, size_t len)
{
    for (int i = 0; i < src->niov && len > 0; i++) {
        size_t l = src->iov[i].iov_len;
        if (off >= l) {
            off -= l;
            continue;
        }
        size_t n = l - off < len ? l - off : len;
        iov_add(v, (char *)src->iov[i].iov_base + off, n);
        len -= n;
        off = 0;
    }
}

void iov_reset(IOVector *v)
{
    if (v->nalloc >= 0) {
        v->niov = 0;
        v->size = 0;
    }
}

void iov_destroy(IOVector *v)
{
    if (v->nalloc >= 0) {
        free(v->iov);
    }
    memset(v, 0, sizeof(*v));
}

/* Calls fn on every piece of [off, off+len); returns the bytes visited. */
typedef int IovPieceFn(void *base, size_t len, size_t done, void *opaque);

static size_t iov_walk(const IOVector *v, size_t off, size_t len,
                       IovPieceFn *fn, void *opaque)
{
    size_t done = 0;
    for (int i = 0; i < v->niov && done < len; i++) {
        size_t l = v->iov[i].iov_len;
        if (off >= l) {
            off -= l;
            continue;
        }
        size_t n = l - off < len - done ? l - off : len - done;
        if (fn((char *)v->iov[i].iov_base + off, n, done, opaque)) {
            return (size_t)-1;
        }
        done += n;
        off = 0;
    }
    return done;
}

static int piece_to_buf(void *base, size_t len, size_t done, void *opaque)
{
    memcpy((char *)opaque + done, base, len);
    return 0;
}

static int piece_from_buf(void *base, size_t len, size_t done, void *opaque)
{
    memcpy(base, (const char *)opaque + done, len);
    return 0;
}

static int piece_memset(void *base, size_t len, size_t done, void *opaque)
{
    memset(base, *(int *)opaque, len);
    return 0;
}

static int piece_nonzero(void *base, size_t len, size_t done, void *opaque)
{
    const unsigned char *p = base;
    for (size_t i = 0; i < len; i++) {
        if (p[i]) {
            return 1;
        }
    }
    return 0;
}

static int piece_misaligned(void *base, size_t len, size_t done, void *opaque)
{
    size_t align = *(size_t *)opaque;
    return ((uintptr_t)base % align) || (len % align);
}

size_t iov_to_buf(const IOVector *v, size_t off, void *buf, size_t len)
{
    return iov_walk(v, off, len, piece_to_buf, buf);
}

size_t iov_from_buf(const IOVector *v, size_t off, const void *buf, size_t len)
{
    return iov_walk(v, off, len, piece_from_buf, (void *)buf);
}

size_t iov_memset(const IOVector *v, size_t off, int c, size_t len)
{
    return iov_walk(v, off, len, piece_memset, &c);
}

int iov_is_zero(const IOVector *v, size_t off, size_t len)
{
    return iov_walk(v, off, len, piece_nonzero, NULL) != (size_t)-1;
}

int iov_is_aligned(const IOVector *v, size_t off, size_t len, size_t align)
{
    if (align <= 1) {
        return 1;
    }
    return iov_walk(v, off, len, piece_misaligned, &align) != (size_t)-1;
}
