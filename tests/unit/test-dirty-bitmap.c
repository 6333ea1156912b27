/*
 * test-dirty-bitmap.c — util/dirty-bitmap.c: edge cases (empty, unaligned
 * ranges, the partial last chunk, whole-bitmap ranges), next_dirty /
 * next_clean / take / count, resize, 100k random operations checked against
 * a naive byte-per-chunk model, 2-4 threads setting while a consumer takes
 * (no lost set, consistent count), and a measurement of set() from one and
 * two threads (printed, never asserted).
 *
 * Threading: the test thread, plus the setter/consumer threads of the
 * "threads" suite, which touch the bitmap only through its API and their own
 * record arrays (merged after join).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "annotations.h"
#include "loop/loop.h"
#include "util/dirty-bitmap.h"

#define KIB 1024LL
#define MIB (1024 * KIB)
#define TIB (1024 * 1024 * MIB)

TestSuite(bitmap, .timeout = 60);
TestSuite(threads, .timeout = 120);

/* xorshift64*: a fixed seed gives the same run everywhere. */
static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static int64_t rnd_below(uint64_t *s, int64_t n)
{
    return n > 0 ? (int64_t)(rnd(s) % (uint64_t)n) : 0;
}

static DirtyBitmap *new_ok(int64_t length, uint32_t gran)
{
    DirtyBitmap *b = dirty_bitmap_new(length, gran);

    cr_assert_not_null(b, "new(%lld, %u)", (long long)length, gran);
    return b;
}

/* ------------------------------------------------------------ edge cases */

Test(bitmap, new_rejects_bad_arguments)
{
    uint32_t bad[] = {0, 1, 256, 511, 1000, 3 * 1024, 65537};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_expect_null(dirty_bitmap_new(MIB, bad[i]), "granularity %u", bad[i]);
    }
    cr_expect_null(dirty_bitmap_new(-1, 512));
    cr_expect_null(dirty_bitmap_new(DIRTY_BITMAP_MAX_LENGTH + 1, 1u << 31));
    dirty_bitmap_free(new_ok(MIB, 512));
    dirty_bitmap_free(new_ok(MIB, 1u << 31));
    dirty_bitmap_free(NULL);
}

Test(bitmap, empty_bitmap)
{
    DirtyBitmap *b = new_ok(0, 65536);
    int64_t len = 7;

    dirty_bitmap_set(b, 0, 4096);
    dirty_bitmap_set_all(b);
    cr_expect_eq(dirty_bitmap_count(b), 0);
    cr_expect_not(dirty_bitmap_get(b, 0));
    cr_expect_eq(dirty_bitmap_next_dirty(b, 0, 0, &len), -1);
    cr_expect_eq(len, 7, "len untouched when nothing is dirty");
    cr_expect_eq(dirty_bitmap_next_clean(b, 0), -1);
    cr_expect_not(dirty_bitmap_take(b, 0, 4096));
    dirty_bitmap_free(b);
}

Test(bitmap, unaligned_ranges_touch_whole_chunks)
{
    DirtyBitmap *b = new_ok(MIB, 65536);

    dirty_bitmap_set(b, 1, 1);
    cr_expect(dirty_bitmap_get(b, 0));
    cr_expect(dirty_bitmap_get(b, 65535));
    cr_expect_not(dirty_bitmap_get(b, 65536));
    cr_expect_eq(dirty_bitmap_count(b), 65536);
    dirty_bitmap_set(b, 65535, 2);                  /* chunks 0 and 1 */
    cr_expect_eq(dirty_bitmap_count(b), 2 * 65536);
    dirty_bitmap_set(b, 5 * 65536, 0);              /* empty range */
    cr_expect_eq(dirty_bitmap_count(b), 2 * 65536);
    dirty_bitmap_reset(b, 65536 + 10, 1);           /* clears all of chunk 1 */
    cr_expect_not(dirty_bitmap_get(b, 65536));
    cr_expect(dirty_bitmap_get(b, 0));
    dirty_bitmap_reset(b, 100, 0);                  /* empty: nothing */
    cr_expect(dirty_bitmap_get(b, 0));
    cr_expect_eq(dirty_bitmap_count(b), 65536);
    dirty_bitmap_free(b);
}

Test(bitmap, partial_last_chunk)
{
    int64_t length = MIB + 100, len = 0;
    DirtyBitmap *b = new_ok(length, 65536);

    dirty_bitmap_set(b, length - 1, 1);
    cr_expect_eq(dirty_bitmap_count(b), 100, "partial chunk counts its size");
    cr_expect_eq(dirty_bitmap_next_dirty(b, 0, 0, &len), MIB);
    cr_expect_eq(len, 100);
    dirty_bitmap_set(b, length, 4096);              /* past the end: clipped */
    dirty_bitmap_set(b, length + 5000, 1);
    cr_expect_eq(dirty_bitmap_count(b), 100);
    cr_expect_not(dirty_bitmap_get(b, length));
    dirty_bitmap_set(b, length - 50, INT64_MAX - length);   /* clipped */
    cr_expect_eq(dirty_bitmap_count(b), 100);
    dirty_bitmap_set_all(b);
    cr_expect_eq(dirty_bitmap_count(b), length);
    cr_expect_eq(dirty_bitmap_next_clean(b, 0), -1);
    cr_expect_eq(dirty_bitmap_next_dirty(b, 0, 0, &len), 0);
    cr_expect_eq(len, length);
    cr_expect(dirty_bitmap_take(b, MIB + 99, 1));
    cr_expect_eq(dirty_bitmap_count(b), MIB);
    cr_expect_eq(dirty_bitmap_next_clean(b, 0), MIB);
    dirty_bitmap_free(b);
}

Test(bitmap, whole_range)
{
    int64_t length = 3 * MIB + 512;
    DirtyBitmap *b = new_ok(length, 4096);

    dirty_bitmap_set(b, 0, length);
    cr_expect_eq(dirty_bitmap_count(b), length);
    cr_expect_eq(dirty_bitmap_next_clean(b, 12345), -1);
    dirty_bitmap_reset(b, 0, length);
    cr_expect_eq(dirty_bitmap_count(b), 0);
    cr_expect_eq(dirty_bitmap_next_dirty(b, 0, 0, NULL), -1);
    cr_expect_eq(dirty_bitmap_next_clean(b, 12345), 12345);
    cr_expect_eq(dirty_bitmap_length(b), length);
    cr_expect_eq(dirty_bitmap_granularity(b), 4096);
    dirty_bitmap_free(b);
}

/* --------------------------------------------- next_dirty/next_clean/take */

Test(bitmap, next_dirty_runs_and_caps)
{
    int64_t g = 65536, len = 0;
    DirtyBitmap *b = new_ok(64 * MIB, (uint32_t)g);

    dirty_bitmap_set(b, 60 * g, 11 * g);            /* chunks 60..70: word edge */
    cr_expect_eq(dirty_bitmap_next_dirty(b, 0, 0, &len), 60 * g);
    cr_expect_eq(len, 11 * g);
    cr_expect_eq(dirty_bitmap_next_dirty(b, 62 * g + 7, 0, &len), 62 * g + 7,
                 "an offset inside a dirty chunk is its own answer");
    cr_expect_eq(len, 9 * g - 7);
    cr_expect_eq(dirty_bitmap_next_dirty(b, 0, 4 * g, &len), 60 * g);
    cr_expect_eq(len, 4 * g, "capped at max_len");
    cr_expect_eq(dirty_bitmap_next_dirty(b, 71 * g, 0, &len), -1);
    cr_expect_eq(dirty_bitmap_next_clean(b, 60 * g), 71 * g);
    cr_expect_eq(dirty_bitmap_next_clean(b, 59 * g + 1), 59 * g + 1);
    cr_expect_eq(dirty_bitmap_next_dirty(b, 64 * MIB, 0, &len), -1, "at the end");
    cr_expect_eq(dirty_bitmap_next_clean(b, 64 * MIB), -1, "at the end");
    dirty_bitmap_free(b);
}

/* 1 TiB at 64 KiB: one dirty chunk near the end, found across the summary. */
Test(bitmap, next_dirty_skips_clean_space)
{
    int64_t len = 0, far = TIB - 3 * 65536;
    DirtyBitmap *b = new_ok(TIB, 65536);

    dirty_bitmap_set(b, far + 100, 1);
    cr_expect_eq(dirty_bitmap_next_dirty(b, 0, 16 * MIB, &len), far);
    cr_expect_eq(len, 65536);
    cr_expect_eq(dirty_bitmap_next_dirty(b, far + 65536, 0, &len), -1);
    dirty_bitmap_set(b, 4096 * 65536LL * 64, 1);    /* first bit of summary word 1 */
    cr_expect_eq(dirty_bitmap_next_dirty(b, 1, 0, NULL), 4096 * 65536LL * 64);
    dirty_bitmap_set_all(b);
    cr_expect_eq(dirty_bitmap_count(b), TIB);
    cr_expect_eq(dirty_bitmap_next_clean(b, 0), -1);
    dirty_bitmap_free(b);
}

Test(bitmap, take_is_test_and_clear)
{
    int64_t g = 4096;
    DirtyBitmap *b = new_ok(MIB, (uint32_t)g);

    cr_expect_not(dirty_bitmap_take(b, 0, MIB), "clean: nothing to take");
    dirty_bitmap_set(b, 10 * g, 1);
    dirty_bitmap_set(b, 12 * g, 1);
    cr_expect_not(dirty_bitmap_take(b, 11 * g, g));
    cr_expect(dirty_bitmap_take(b, 10 * g + g - 1, 2 * g), "touches chunk 10 and 12");
    cr_expect_eq(dirty_bitmap_count(b), 0);
    cr_expect_not(dirty_bitmap_take(b, 10 * g, 3 * g), "taken once only");
    dirty_bitmap_free(b);
}

/* ------------------------------------------------------------ resize */

Test(bitmap, resize_grow_and_shrink)
{
    int64_t g = 65536, len = 0;
    DirtyBitmap *b = new_ok(10 * g, (uint32_t)g);

    dirty_bitmap_set_all(b);
    cr_expect_eq(dirty_bitmap_resize(b, 300 * g), 0);
    cr_expect_eq(dirty_bitmap_count(b), 10 * g, "grown chunks start clean");
    cr_expect_eq(dirty_bitmap_next_clean(b, 0), 10 * g);
    cr_expect_eq(dirty_bitmap_resize(b, 5 * g + 10), 0);   /* mid-chunk */
    cr_expect_eq(dirty_bitmap_count(b), 5 * g + 10);
    cr_expect_eq(dirty_bitmap_next_dirty(b, 0, 0, &len), 0);
    cr_expect_eq(len, 5 * g + 10);
    cr_expect_eq(dirty_bitmap_resize(b, 300 * g), 0);
    cr_expect_eq(dirty_bitmap_count(b), 6 * g, "cut chunks are gone, the partial one grew");
    cr_expect_eq(dirty_bitmap_next_dirty(b, 6 * g, 0, NULL), -1);
    cr_expect_eq(dirty_bitmap_resize(b, 0), 0);
    cr_expect_eq(dirty_bitmap_count(b), 0);
    cr_expect_eq(dirty_bitmap_resize(b, 1), 0);
    cr_expect_not(dirty_bitmap_get(b, 0));
    cr_expect_eq(dirty_bitmap_resize(b, -1), -EINVAL);
    cr_expect_eq(dirty_bitmap_resize(b, DIRTY_BITMAP_MAX_LENGTH + 1), -EINVAL);
    cr_expect_eq(dirty_bitmap_length(b), 1);
    dirty_bitmap_free(b);
}

/* ------------------------------------------------------------ random vs model */

/* The naive model: one byte per chunk, written as plainly as possible. */
#define MODEL_MAX_CHUNKS 9000
typedef struct Model {
    int64_t g, length;
    uint8_t dirty[MODEL_MAX_CHUNKS];
} Model;

static int64_t m_chunks(const Model *m)
{
    return (m->length + m->g - 1) / m->g;
}

/* Sets every chunk [off, off + bytes) touches inside the length to v; true
 * if any of them was dirty before. */
static bool m_fill(Model *m, int64_t off, int64_t bytes, uint8_t v)
{
    bool any = false;

    for (int64_t c = 0; c < m_chunks(m); c++) {
        if (c * m->g < off + bytes && off < (c + 1) * m->g && off < m->length
            && bytes > 0) {
            any |= m->dirty[c];
            m->dirty[c] = v;
        }
    }
    return any;
}

static int64_t m_count(const Model *m)
{
    int64_t n = 0;

    for (int64_t c = 0; c < m_chunks(m); c++) {
        if (m->dirty[c]) {
            n += (c + 1) * m->g > m->length ? m->length - c * m->g : m->g;
        }
    }
    return n;
}

/* First byte >= off whose chunk has dirty == want, or -1. */
static int64_t m_next(const Model *m, int64_t off, uint8_t want)
{
    for (int64_t x = off; x < m->length; x = (x / m->g + 1) * m->g) {
        if (m->dirty[x / m->g] == want) {
            return x;
        }
    }
    return -1;
}

static int64_t m_run_len(const Model *m, int64_t start, int64_t max_len)
{
    int64_t end = m_next(m, start, 0);

    end = end < 0 ? m->length : end;
    return max_len > 0 && max_len < end - start ? max_len : end - start;
}

static void m_resize(Model *m, int64_t length)
{
    int64_t keep = (length + m->g - 1) / m->g;

    for (int64_t c = keep; c < MODEL_MAX_CHUNKS; c++) {
        m->dirty[c] = 0;
    }
    m->length = length;
}

static void random_range(uint64_t *s, const Model *m, int64_t *off, int64_t *bytes)
{
    int64_t kind = rnd_below(s, 10);

    *off = rnd_below(s, m->length + 2 * m->g);
    if (rnd_below(s, 2)) {
        *off -= *off % m->g;                        /* aligned half the time */
    }
    *bytes = kind < 5 ? rnd_below(s, 4 * m->g) :
             kind < 9 ? rnd_below(s, 200 * m->g) : rnd_below(s, m->length + 1);
}

static void check_one_op(DirtyBitmap *b, Model *m, uint64_t *s, int i)
{
    int64_t off, bytes, len = -1, op = rnd_below(s, 1000);

    random_range(s, m, &off, &bytes);
    if (op < 250) {
        dirty_bitmap_set(b, off, bytes);
        m_fill(m, off, bytes, 1);
    } else if (op < 400) {
        dirty_bitmap_reset(b, off, bytes);
        m_fill(m, off, bytes, 0);
    } else if (op < 550) {
        cr_assert_eq(dirty_bitmap_take(b, off, bytes), m_fill(m, off, bytes, 0),
                     "op %d: take(%lld, %lld)", i, (long long)off, (long long)bytes);
    } else if (op < 650) {
        cr_assert_eq(dirty_bitmap_get(b, off), off < m->length && m->dirty[off / m->g],
                     "op %d: get(%lld)", i, (long long)off);
    } else if (op < 850) {
        int64_t max_len = rnd_below(s, 3) ? rnd_below(s, 50) * m->g : 0;
        int64_t want = m_next(m, off, 1);

        cr_assert_eq(dirty_bitmap_next_dirty(b, off, max_len, &len), want,
                     "op %d: next_dirty(%lld)", i, (long long)off);
        if (want >= 0) {
            cr_assert_eq(len, m_run_len(m, want, max_len), "op %d: run length", i);
        }
    } else if (op < 993) {
        cr_assert_eq(dirty_bitmap_next_clean(b, off), m_next(m, off, 0),
                     "op %d: next_clean(%lld)", i, (long long)off);
    } else if (op < 995) {
        dirty_bitmap_set_all(b);
        m_fill(m, 0, m->length, 1);
    } else {
        int64_t length = rnd_below(s, (MODEL_MAX_CHUNKS - 1) * m->g);

        cr_assert_eq(dirty_bitmap_resize(b, length), 0);
        m_resize(m, length);
    }
    cr_assert_eq(dirty_bitmap_count(b), m_count(m), "op %d: count", i);
}

Test(bitmap, random_ops_match_model)
{
    static Model m;
    uint64_t seed = 0x6469727479ULL;               /* fixed */
    DirtyBitmap *b;

    m.g = 512;
    m.length = 5000 * m.g + 77;                     /* 2 summary words */
    b = new_ok(m.length, (uint32_t)m.g);
    for (int i = 0; i < 100000; i++) {
        check_one_op(b, &m, &seed, i);
        for (int64_t c = 0; i % 1000 == 999 && c < m_chunks(&m); c++) {
            cr_assert_eq(dirty_bitmap_get(b, c * m.g), m.dirty[c],
                         "op %d: chunk %lld", i, (long long)c);
        }
    }
    dirty_bitmap_free(b);
}

/* ------------------------------------------------------------ threads */

/* Setters and one consumer on a shared bitmap.  A global tick orders the
 * operations: each records, per chunk, the ticks just before and just after
 * its last set() (setters) or take() (consumer).  After join:
 *   - a chunk whose last set() began after the last take() ended is dirty
 *     (no lost set);
 *   - a dirty chunk had a set() end after the last take() began.
 * Only the consumer clears, so a run next_dirty() found is still there for
 * its take(). */
#define TH_GRAN 4096
#define TH_CHUNKS 1025                              /* last one partial */
#define TH_LENGTH ((TH_CHUNKS - 1) * TH_GRAN + 1000)
#define TH_OPS 100000
#define TH_TAKES 1000

typedef struct ThreadRun {
    DirtyBitmap *b;
    _Atomic uint64_t tick;
    _Atomic int setters_left;
    int nthreads;
    bool overlap;
    int64_t set_start[4][TH_CHUNKS], set_end[4][TH_CHUNKS];
    int64_t take_start[TH_CHUNKS], take_end[TH_CHUNKS];
    _Atomic int64_t takes;
    int64_t take_failed;
} ThreadRun;

typedef struct Setter {
    ThreadRun *run;
    int id;
} Setter;

static void record(int64_t *start, int64_t *end, int64_t off, int64_t bytes,
                   uint64_t s, uint64_t e)
{
    int64_t last = MIN(off + bytes, (int64_t)TH_LENGTH) - 1;

    for (int64_t c = off / TH_GRAN; bytes > 0 && c <= last / TH_GRAN; c++) {
        start[c] = (int64_t)s;
        end[c] = (int64_t)e;
    }
}

static void *setter_thread(void *opaque)
{
    Setter *st = opaque;
    ThreadRun *run = st->run;
    uint64_t seed = 0x5e77e4 + (uint64_t)st->id;
    int64_t lo = 0, span = TH_LENGTH;

    if (!run->overlap) {                            /* disjoint regions */
        span = TH_LENGTH / run->nthreads / TH_GRAN * TH_GRAN;
        lo = st->id * span;
    }
    /* at least TH_OPS, and on until the consumer has taken TH_TAKES times,
     * so the two really overlap however the threads get scheduled */
    for (int i = 0; i < TH_OPS || atomic_load(&run->takes) < TH_TAKES; i++) {
        int64_t off = lo + rnd_below(&seed, span);
        int64_t bytes = 1 + rnd_below(&seed, MIN(8 * TH_GRAN, lo + span - off));
        uint64_t s = atomic_fetch_add(&run->tick, 1) + 1;

        dirty_bitmap_set(run->b, off, bytes);
        record(run->set_start[st->id], run->set_end[st->id], off, bytes, s,
               atomic_fetch_add(&run->tick, 1) + 1);
    }
    atomic_fetch_sub(&run->setters_left, 1);
    return NULL;
}

static void *consumer_thread(void *opaque)
{
    ThreadRun *run = opaque;
    int64_t cursor = 0, len;

    while (atomic_load(&run->setters_left) > 0) {
        int64_t off = dirty_bitmap_next_dirty(run->b, cursor, 16 * TH_GRAN, &len);
        uint64_t s;

        if (off < 0) {
            cursor = 0;
            continue;
        }
        s = atomic_fetch_add(&run->tick, 1) + 1;
        run->take_failed += !dirty_bitmap_take(run->b, off, len);
        record(run->take_start, run->take_end, off, len, s,
               atomic_fetch_add(&run->tick, 1) + 1);
        atomic_fetch_add(&run->takes, 1);
        cursor = off + len;
    }
    return NULL;
}

static void check_chunks(ThreadRun *run)
{
    int64_t bytes = 0;

    for (int64_t c = 0; c < TH_CHUNKS; c++) {
        int64_t last_start = 0, last_end = 0;
        bool dirty = dirty_bitmap_get(run->b, c * TH_GRAN);

        for (int t = 0; t < run->nthreads; t++) {
            last_start = MAX(last_start, run->set_start[t][c]);
            last_end = MAX(last_end, run->set_end[t][c]);
        }
        if (last_start > run->take_end[c]) {
            cr_assert(dirty, "chunk %lld: set at %lld after take ended %lld, lost",
                      (long long)c, (long long)last_start, (long long)run->take_end[c]);
        }
        if (dirty) {
            cr_assert_gt(last_end, run->take_start[c], "chunk %lld dirty but no set "
                         "after its last take", (long long)c);
            bytes += MIN((int64_t)TH_GRAN, TH_LENGTH - c * TH_GRAN);
        }
    }
    cr_assert_eq(dirty_bitmap_count(run->b), bytes);
}

static void run_threads(int nthreads, bool overlap)
{
    static ThreadRun run;
    Setter st[4];
    pthread_t th[5];

    memset(&run, 0, sizeof(run));
    run.b = new_ok(TH_LENGTH, TH_GRAN);
    run.nthreads = nthreads;
    run.overlap = overlap;
    atomic_store(&run.setters_left, nthreads);
    pthread_create(&th[nthreads], NULL, consumer_thread, &run);
    for (int i = 0; i < nthreads; i++) {
        st[i] = (Setter){ &run, i };
        pthread_create(&th[i], NULL, setter_thread, &st[i]);
    }
    for (int i = 0; i <= nthreads; i++) {
        pthread_join(th[i], NULL);
    }
    cr_assert_eq(run.take_failed, 0, "a run next_dirty found vanished before take");
    cr_assert_geq(atomic_load(&run.takes), TH_TAKES);
    check_chunks(&run);
    while (dirty_bitmap_next_dirty(run.b, 0, 0, &(int64_t){0}) >= 0) {
        dirty_bitmap_take(run.b, 0, TH_LENGTH);
    }
    cr_assert_eq(dirty_bitmap_count(run.b), 0);
    dirty_bitmap_free(run.b);
}

Test(threads, two_disjoint)     { run_threads(2, false); }
Test(threads, two_overlapping)  { run_threads(2, true); }
Test(threads, three_overlapping) { run_threads(3, true); }
Test(threads, four_disjoint)    { run_threads(4, false); }
Test(threads, four_overlapping) { run_threads(4, true); }

/* ------------------------------------------------------------ measurement */

#define BENCH_OPS 1000000

typedef struct Bench {
    DirtyBitmap *b;
    int64_t lo, span;
} Bench;

/* 4 KiB writes at random 4 KiB-aligned offsets of [lo, lo + span). */
static void *bench_thread(void *opaque)
{
    Bench *bench = opaque;
    uint64_t seed = 0xbe4c + (uint64_t)bench->lo;

    for (int i = 0; i < BENCH_OPS; i++) {
        int64_t off = bench->lo + rnd_below(&seed, bench->span / 4096) * 4096;

        dirty_bitmap_set(bench->b, off, 4096);
    }
    return NULL;
}

/* ns per set() per thread, nthreads at once on one 1 TiB / 64 KiB bitmap. */
static double bench_set(int nthreads, bool overlap)
{
    DirtyBitmap *b = new_ok(TIB, 65536);
    Bench bench[2];
    pthread_t th[2];
    int64_t t0 = clock_ns();

    for (int i = 0; i < nthreads; i++) {
        bench[i] = (Bench){ b, overlap ? 0 : i * (TIB / 2), overlap ? TIB : TIB / 2 };
        pthread_create(&th[i], NULL, bench_thread, &bench[i]);
    }
    for (int i = 0; i < nthreads; i++) {
        pthread_join(th[i], NULL);
    }
    t0 = clock_ns() - t0;
    dirty_bitmap_free(b);
    return (double)t0 / BENCH_OPS;
}

Test(threads, bench)
{
    fprintf(stderr, "dirty-bitmap set() (1 TiB @ 64 KiB, random 4 KiB writes): "
            "1 thread %.1f ns/op; 2 threads disjoint halves %.1f ns/op each; "
            "2 threads same range %.1f ns/op each\n",
            bench_set(1, false), bench_set(2, false), bench_set(2, true));
}
