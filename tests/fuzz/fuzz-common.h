/*
 * fuzz-common.h — what the qcow2 fuzz harnesses share: the runtime started
 * once per process (main thread, global lock, main loop, no IOThreads), a way
 * to run a coroutine on the main loop to completion, and opening an image
 * file as a qcow2 node over a file node through the real graph.
 *
 * Threading: the fuzzer's thread is the main thread and holds the global
 * lock for the whole process lifetime; every block-layer call happens in a
 * coroutine on the main loop (GS code, or I/O code through a backend).
 */
#ifndef DISKSTACK_FUZZ_COMMON_H
#define DISKSTACK_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "block-gs.h"
#include "block-io.h"

/* Main thread: starts the runtime the first time; later calls do nothing. */
void fuzz_runtime_init(void);

typedef void coroutine_fn FuzzFn(void *opaque);
/* Main thread: runs fn(opaque) in a coroutine on the main loop and iterates
 * the loop until it returns. */
void fuzz_run(FuzzFn *fn, void *opaque);

/* Writes data to a fresh file in /dev/shm (tmpfs) unique to this process;
 * returns its path (static storage, same for every call). */
const char *fuzz_write_image(const uint8_t *data, size_t size);

typedef struct FuzzImage {
    BlockNode *bs;
    BlockBackend *blk;
} FuzzImage;

/* GS, coroutine: opens path as {"driver":"qcow2","backing":null,"file":
 * {"driver":"file"}} with a small metadata cache; false if refused. */
bool coroutine_fn fuzz_open(const char *path, bool writable, FuzzImage *img) GS;
/* GS, coroutine: closes everything fuzz_open() opened (flushes). */
void coroutine_fn fuzz_close(FuzzImage *img) GS;

/* Inputs larger than this are skipped: the interesting structure of a
 * qcow2 image is in its first clusters. */
#define FUZZ_MAX_INPUT (1024 * 1024)

#endif
