/*
 * img.h — shared pieces of `diskstack img SUBCOMMAND` (offline image work).
 *
 * img.c dispatches the subcommands and provides what they share: running a
 * coroutine on the main loop without IOThreads (img_run), opening an image
 * chain into a BlockBackend (img_co_open), size parsing, --output parsing,
 * JSON printing in qemu-img's layout and a progress line.
 *
 * A subcommand's shape:
 *
 *     static int coroutine_fn info_main(void *opaque, Error **errp) GS
 *     {
 *         BlockBackend *blk = img_co_open(a->file, a->fmt, 0, errp);
 *         if (!blk) return -1;            // printed, exit 1
 *         ...
 *         img_co_close(blk);
 *         return 0;                        // the exit code
 *     }
 *     int img_info(int argc, char **argv) { parse...; return img_run(info_main, &a); }
 *
 * Threading: img_run() and the parsers run on the main thread before the
 * runtime exists; functions marked GS run in the coroutine img_run() starts
 * on the main loop, with the global lock held.
 */
#ifndef DISKSTACK_CLI_IMG_H
#define DISKSTACK_CLI_IMG_H

#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>
#include "block-common.h"

/* Exit codes beyond cli.h's (qemu-img check). */
enum {
    IMG_EXIT_CORRUPT = 2,   /* check: corruptions found */
    IMG_EXIT_LEAKS = 3,     /* check: leaks only */
};

/*
 * Runs fn(opaque, errp) in a coroutine on the main loop (GS, no IOThreads)
 * and returns the process exit code: fn's return value when >= 0, or 1 after
 * printing *errp as one line when fn returns < 0.  Every node still open
 * when fn returns is flushed and closed.  Main thread, once per process.
 */
typedef int coroutine_fn (*ImgMainFn)(void *opaque, Error **errp);
int img_run(ImgMainFn fn, void *opaque);

/* img_co_open() flags. */
enum {
    IMG_OPEN_RW          = 1 << 0,  /* writable (default read-only) */
    IMG_OPEN_FORCE_SHARE = 1 << 1,  /* -U: no image lock, share everything */
    IMG_OPEN_NO_BACKING  = 1 << 2,  /* do not open the backing chain */
    IMG_OPEN_RESIZE      = 1 << 3,  /* the backend takes the resize perm */
};

/*
 * GS: opens `filename` as a chain (format `fmt`, or probed when NULL) and
 * returns a backend holding its top node; NULL with *errp set (naming the
 * file) on failure.  Backends are named "img0", "img1", ... and the nodes
 * "img0", "img0-file" etc. so several images can be open at once.
 */
BlockBackend *coroutine_fn img_co_open(const char *filename, const char *fmt,
                                       int flags, Error **errp) GS;
/* GS: detaches the backend and closes its chain (flushes first). */
void coroutine_fn img_co_close(BlockBackend *blk) GS;
/* GS: the format name of a probed file ("raw" if not recognised), or NULL
 * with *errp set when the file cannot be read. */
const char *coroutine_fn img_co_probe(const char *filename, Error **errp) GS;

/* Main thread: creates the image file if missing; an existing one is left
 * as it is (not truncated) until its image lock is held: it may be in use.
 * -1 with *errp set on failure. */
int img_create_file(const char *path, Error **errp);

/*
 * Sizes: "1024", "512k", "64M", "10G", "1T" (binary, case-insensitive,
 * optional trailing "B"/"iB"), "1.5G".  Both: pure.  False on junk or
 * overflow.
 */
bool img_parse_size(const char *text, uint64_t *out);
/* "64 MiB", "1.5 GiB", "1000 B" as qemu-img prints sizes.  Pure. */
void img_format_size(uint64_t bytes, char *buf, size_t len);

/* --output. */
typedef enum ImgOutput { IMG_OUTPUT_HUMAN, IMG_OUTPUT_JSON } ImgOutput;
/* Prints the usage error and returns false on anything but human|json. */
bool img_parse_output(const char *cmd, const char *text, ImgOutput *out);

/* Prints j to stdout as qemu-img does (4-space indent, keys in insertion
 * order, newline at the end) and takes the reference.  Pure. */
void img_print_json(json_t *j);

/*
 * Progress ("-p"): prints "    (12.34/100%)" rewritten in place on a
 * terminal, plain lines at whole percents otherwise, like qemu-img.
 * Main thread.
 */
typedef struct ImgProgress {
    bool enabled;
    int last_tenths;    /* last printed, in 0.01 % units; -1: none yet */
} ImgProgress;
void img_progress_start(ImgProgress *p, bool enabled);
void img_progress_update(ImgProgress *p, uint64_t done, uint64_t total);
void img_progress_end(ImgProgress *p);

/* Prints qemu-img's snapshot table ("ID  TAG  VM SIZE ...") for a JSON
 * array of info snapshots (img info's "snapshots").  Main thread. */
void img_print_snapshot_table(json_t *snaps);
/* GS: the internal snapshots of node bs (qcow2; an empty array for other
 * formats) as img info's "snapshots" JSON array (new reference). */
json_t *img_snapshots_json(BlockNode *bs) GS;
/* GS: QEMU's ImageInfo of node bs (filename, format, virtual-size,
 * actual-size, dirty-flag; for qcow2 also cluster-size, backing-filename,
 * full-backing-filename, backing-filename-format, snapshots,
 * format-specific) as `img info --output=json` prints it, with `name` as
 * the filename (relative backing names are resolved against it).  Used by
 * img info and by QMP query-named-block-nodes.  New reference. */
json_t *img_image_info(BlockNode *bs, const char *name) GS;

/* Subcommand entry points: argv[0] is the subcommand name. */
int img_create(int argc, char **argv);
int img_info(int argc, char **argv);
int img_check(int argc, char **argv);
int img_map(int argc, char **argv);
int img_resize(int argc, char **argv);
int img_snapshot(int argc, char **argv);
/* img-convert.c (the other img engineer). */
int img_convert(int argc, char **argv);
int img_compare(int argc, char **argv);
int img_rebase(int argc, char **argv);

/* `diskstack img` itself (registered in main.c). */
int cmd_img(int argc, char **argv);

#endif
