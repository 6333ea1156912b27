/*
 * iov.h — scatter/gather vectors for requests.
 *
 * An IOVector describes the caller's buffers for one request.  Layers slice
 * it (iov_slice) instead of copying: a request travels from the FUSE buffer
 * down to the io_uring SQE without a copy.
 *
 * Thread-safety: an IOVector belongs to one request; functions are reentrant.
 */
#ifndef DISKSTACK_IOV_H
#define DISKSTACK_IOV_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

typedef struct IOVector {
    struct iovec *iov;
    int niov;
    int nalloc;           /* -1: external array not owned by the vector */
    size_t size;          /* sum of iov_len */
    struct iovec local;   /* storage for the single-buffer case */
} IOVector;

/* One external buffer, no allocation. */
void iov_init_buf(IOVector *v, void *buf, size_t len);
/* An owned, growable vector. */
void iov_init(IOVector *v, int hint);
void iov_add(IOVector *v, void *base, size_t len);
/* Appends the part [off, off+len) of src to v (no data copy). */
void iov_concat(IOVector *v, const IOVector *src, size_t off, size_t len);
void iov_reset(IOVector *v);
void iov_destroy(IOVector *v);

size_t iov_to_buf(const IOVector *v, size_t off, void *buf, size_t len);
size_t iov_from_buf(const IOVector *v, size_t off, const void *buf, size_t len);
size_t iov_memset(const IOVector *v, size_t off, int c, size_t len);
/* True if the part [off, off+len) is all zero bytes. */
int iov_is_zero(const IOVector *v, size_t off, size_t len);
/* True if every base and length in [off, off+len) is a multiple of align. */
int iov_is_aligned(const IOVector *v, size_t off, size_t len, size_t align);

#endif
