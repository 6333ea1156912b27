/*
 * latency-probe.c — request latency of a file, phase by phase, for the
 * stress test (tests/func/test_stress.py).
 *
 *     latency-probe FILE SIZE
 *
 * Reads 4 KiB with O_DIRECT at random aligned offsets below SIZE, one
 * request at a time, and files each request's latency under the current
 * phase.  The python test cannot time requests this cleanly: its threads
 * also wait for the interpreter lock.  Reads only, so the test's own
 * verified writers and readers of the same file are not disturbed.
 *
 * Commands on stdin, one per line: "phase N" (0 <= N < MAX_PHASES) files
 * the next requests under phase N; "stop" (or end of input) ends the run.
 * Then one line per phase that saw requests on stdout:
 *
 *     phase N: COUNT requests, p99 X ms, worst Y ms
 *
 * A failed read prints one line on stderr and exits 1.
 *
 * Threading: two threads.  The main thread reads the commands; the prober
 * thread does the I/O and owns the samples until it is joined.  They share
 * only the atomics `phase` and `stopping`.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096
#define MAX_PHASES 8

typedef struct Samples {
    double *ms;
    size_t n, cap;
} Samples;

typedef struct Probe {
    int fd;
    uint64_t blocks;          /* readable 4 KiB blocks */
    atomic_int phase;
    atomic_bool stopping;
    Samples samples[MAX_PHASES];
    int error;                /* errno of a failed read, 0 if none */
} Probe;

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* xorshift64: the offsets need to be spread, not unpredictable. */
static uint64_t next_random(uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

static int add_sample(Samples *s, double ms)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4096;
        double *p = realloc(s->ms, cap * sizeof(*p));
        if (!p) {
            return -ENOMEM;
        }
        s->ms = p;
        s->cap = cap;
    }
    s->ms[s->n++] = ms;
    return 0;
}

/* Prober thread: one O_DIRECT read at a time until stopping is set. */
static void *probe_loop(void *opaque)
{
    Probe *p = opaque;
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    void *buf;

    if (posix_memalign(&buf, BLOCK, BLOCK)) {
        p->error = ENOMEM;
        return NULL;
    }
    while (!atomic_load(&p->stopping)) {
        off_t off = (off_t)(next_random(&rng) % p->blocks) * BLOCK;
        int phase = atomic_load(&p->phase);
        double t0 = now_ms();
        ssize_t n = pread(p->fd, buf, BLOCK, off);

        if (n != BLOCK) {
            p->error = n < 0 ? errno : EIO;
            break;
        }
        if (add_sample(&p->samples[phase], now_ms() - t0) < 0) {
            p->error = ENOMEM;
            break;
        }
    }
    free(buf);
    return NULL;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static void print_phase(int phase, Samples *s)
{
    size_t p99;

    if (!s->n) {
        return;
    }
    qsort(s->ms, s->n, sizeof(*s->ms), compare_doubles);
    p99 = s->n * 99 / 100;
    printf("phase %d: %zu requests, p99 %.2f ms, worst %.2f ms\n", phase, s->n,
           s->ms[p99 < s->n ? p99 : s->n - 1], s->ms[s->n - 1]);
}

/* Main thread: applies the commands on stdin until "stop" or EOF. */
static void read_commands(Probe *p)
{
    char line[64];
    int phase;

    while (fgets(line, sizeof(line), stdin)) {
        if (!strncmp(line, "stop", 4)) {
            break;
        }
        if (sscanf(line, "phase %d", &phase) == 1 && phase >= 0 && phase < MAX_PHASES) {
            atomic_store(&p->phase, phase);
        } else {
            fprintf(stderr, "latency-probe: ignoring command: %s", line);
        }
    }
}

int main(int argc, char **argv)
{
    static Probe probe;
    pthread_t thread;
    char *end;

    if (argc != 3) {
        fprintf(stderr, "usage: latency-probe FILE SIZE\n");
        return 2;
    }
    probe.blocks = strtoull(argv[2], &end, 0) / BLOCK;
    if (*end || probe.blocks == 0) {
        fprintf(stderr, "latency-probe: bad size '%s'\n", argv[2]);
        return 2;
    }
    probe.fd = open(argv[1], O_RDONLY | O_DIRECT);
    if (probe.fd < 0) {
        fprintf(stderr, "latency-probe: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    if (pthread_create(&thread, NULL, probe_loop, &probe)) {
        fprintf(stderr, "latency-probe: cannot start a thread\n");
        return 1;
    }
    read_commands(&probe);
    atomic_store(&probe.stopping, true);
    pthread_join(thread, NULL);
    close(probe.fd);
    if (probe.error) {
        fprintf(stderr, "latency-probe: read: %s\n", strerror(probe.error));
        return 1;
    }
    for (int i = 0; i < MAX_PHASES; i++) {
        print_phase(i, &probe.samples[i]);
        free(probe.samples[i].ms);
    }
    return 0;
}
