/*
 * fuzz-qmp.c — libFuzzer harness: the input is bytes a QMP client sends.
 *
 * The bytes go through a socket-less QMP session (qmp_session_new): the
 * streaming framer, the JSON parser, the envelope and negotiation checks,
 * command lookup and argument validation.  Only side-effect-free commands
 * run (qmp_capabilities, query-*, x-debug-query-block-graph, over a small
 * raw node opened once); every other command has its arguments checked and
 * is not run.  The input is fed in chunks whose size the first byte picks,
 * so requests split across reads are exercised too.
 *
 * Oracle: besides sanitizers and leaks, every line the session writes must
 * be one JSON object with either "return" or "error" {class, desc}.
 *
 * Threading: the fuzzer's thread is the main thread, holding the global
 * lock; commands run in coroutines on the main loop, iterated here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-common.h"
#include "loop/loop.h"
#include "qmp/server.h"

#define MAX_INPUT (256 * 1024)

/* Commands that only read state. */
static bool may_run(const char *name)
{
    return !strcmp(name, "qmp_capabilities") || !strncmp(name, "query-", 6) ||
           !strcmp(name, "x-debug-query-block-graph");
}

static void drain(QmpSession *s) NO_THREAD_SAFETY_ANALYSIS
{
    while (qmp_session_busy(s)) {
        loop_iterate(loop_main(), true);
    }
}

/* GS: a node for the queries to describe (once per process). */
static void coroutine_fn open_node(void *opaque) NO_THREAD_SAFETY_ANALYSIS
{
    static const uint8_t zeroes[65536];
    const char *path = fuzz_write_image(zeroes, sizeof(zeroes));
    json_t *def = json_pack("{s:s,s:s,s:{s:s,s:s}}", "driver", "raw",
                            "node-name", "disk", "file", "driver", "file",
                            "filename", path);
    Error *err = NULL;

    if (!bdrv_co_open_blockdev(def, &err)) {
        fprintf(stderr, "fuzz-qmp: %s\n", error_get_pretty(err));
        abort();
    }
    json_decref(def);
}

/* Pure: aborts unless out is a sequence of newline-ended reply objects. */
static void check_output(const char *out, size_t len)
{
    size_t pos = 0;

    while (pos < len) {
        const char *nl = memchr(out + pos, '\n', len - pos);
        json_error_t jerr;
        json_t *r, *e;

        if (!nl) {
            fprintf(stderr, "fuzz-qmp: reply without newline\n");
            abort();
        }
        r = json_loadb(out + pos, nl - (out + pos), 0, &jerr);
        e = json_object_get(r, "error");
        if (!json_is_object(r) ||
            (!json_object_get(r, "return") &&
             (!json_is_string(json_object_get(e, "class")) ||
              !json_is_string(json_object_get(e, "desc"))))) {
            fprintf(stderr, "fuzz-qmp: bad reply: %.*s\n",
                    (int)(nl - (out + pos)), out + pos);
            abort();
        }
        json_decref(r);
        pos = nl - out + 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
    NO_THREAD_SAFETY_ANALYSIS
{
    static bool node_opened;
    static const char caps[] = "{\"execute\":\"qmp_capabilities\"}";
    QmpSession *s;
    size_t chunk, out_len;
    const char *out;

    if (size < 1 || size > MAX_INPUT) {
        return 0;
    }
    fuzz_runtime_init();
    if (!node_opened) {
        fuzz_run(open_node, NULL);
        node_opened = true;
    }
    s = qmp_session_new(may_run);
    /* first byte: bit 7 negotiates first, bits 0-5 pick the chunk size */
    if (data[0] & 0x80) {
        qmp_session_input(s, caps, sizeof(caps) - 1);
        drain(s);
    }
    chunk = (data[0] & 0x3f) ? (data[0] & 0x3f) * 7 : size;
    for (size_t off = 1; off < size; off += chunk) {
        qmp_session_input(s, data + off, off + chunk < size ? chunk : size - off);
        drain(s);
    }
    out = qmp_session_output(s, &out_len);
    check_output(out, out_len);
    qmp_session_free(s);
    return 0;
}
