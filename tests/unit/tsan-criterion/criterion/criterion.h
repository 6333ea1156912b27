/*
 * A minimal stand-in for <criterion/criterion.h>, used only by the
 * ThreadSanitizer build (-Db_sanitize=thread).
 *
 * Why: Criterion 2.4 maps its "inheritable arena" at a random address in
 * 0x2000'0000'0000..0x6000'0000'0000, a range TSan reserves for itself on
 * x86-64, so every Criterion binary built with -fsanitize=thread dies with
 * "Could not initialize inheritable arena" before running a test
 * (Snaipe/Criterion issue #274, open).  This header implements the subset of
 * Criterion the unit tests use, with the same source syntax and the same
 * isolation: every test runs in a forked child, with its suite's .init, an
 * expected .signal / .exit_code, and a .timeout.  The summary line has
 * Criterion's shape ("Synthesis: Tested: N | Passing: ...").
 *
 * Supported: Test(), TestSuite(), cr_assert*, cr_expect* (eq, neq, lt, leq,
 * gt, geq, null, not_null, str_eq, str_neq, arr_eq, not, fail), cr_log_*.
 * Command line: --filter GLOB (suite/name), -l/--list.
 */
#ifndef DISKSTACK_TSAN_CRITERION_H
#define DISKSTACK_TSAN_CRITERION_H

#include <fnmatch.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct criterion_test_extra_data {
    void (*init)(void);
    void (*fini)(void);
    int signal;
    int exit_code;
    double timeout;
    bool disabled;
    const char *description;
};

struct mc_test {
    const char *suite, *name;
    void (*fn)(void);
    struct criterion_test_extra_data *data;
    struct mc_test *next;
};

struct mc_suite {
    const char *name;
    struct criterion_test_extra_data *data;
    struct mc_suite *next;
};

/* One copy per program: the header is included by one test file. */
static struct mc_test *mc_tests, **mc_tests_tail = &mc_tests;
static struct mc_suite *mc_suites;
static int mc_expect_failed;

#define Test(suite, name, ...) \
    static void suite##_##name##_impl(void); \
    static struct criterion_test_extra_data suite##_##name##_data = { __VA_ARGS__ }; \
    __attribute__((constructor)) static void suite##_##name##_register(void) \
    { \
        static struct mc_test t = { #suite, #name, suite##_##name##_impl, \
                                    &suite##_##name##_data, NULL }; \
        *mc_tests_tail = &t; \
        mc_tests_tail = &t.next; \
    } \
    static void suite##_##name##_impl(void)

#define TestSuite(suite, ...) \
    static struct criterion_test_extra_data suite##_suite_data = { __VA_ARGS__ }; \
    __attribute__((constructor)) static void suite##_suite_register(void) \
    { \
        static struct mc_suite s = { #suite, &suite##_suite_data, NULL }; \
        s.next = mc_suites; \
        mc_suites = &s; \
    } \
    struct mc_suite_dummy_##suite

static void mc_report(const char *file, int line, const char *expr,
                      const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "[----] %s:%d: Assertion failed: %s", file, line, expr);
    if (fmt && *fmt) {
        fputs(": ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
    }
    fputc('\n', stderr);
}

/* An assertion ends the test (any thread): the child exits with status 1. */
#define mc_check(fatal, cond, expr, ...) \
    do { \
        if (!(cond)) { \
            mc_report(__FILE__, __LINE__, expr, "" __VA_ARGS__); \
            if (fatal) { \
                fflush(NULL); \
                _exit(1); \
            } \
            mc_expect_failed = 1; \
        } \
    } while (0)

#define cr_assert(c, ...)        mc_check(1, (c), #c, __VA_ARGS__)
#define cr_expect(c, ...)        mc_check(0, (c), #c, __VA_ARGS__)
#define cr_assert_not(c, ...)    mc_check(1, !(c), "!(" #c ")", __VA_ARGS__)
#define cr_expect_not(c, ...)    mc_check(0, !(c), "!(" #c ")", __VA_ARGS__)
#define cr_assert_fail(...)      mc_check(1, 0, "fail", __VA_ARGS__)
#define mc_cmp(f, a, op, b, ...) mc_check(f, (a) op (b), #a " " #op " " #b, __VA_ARGS__)
#define cr_assert_eq(a, b, ...)  mc_cmp(1, a, ==, b, __VA_ARGS__)
#define cr_assert_neq(a, b, ...) mc_cmp(1, a, !=, b, __VA_ARGS__)
#define cr_assert_lt(a, b, ...)  mc_cmp(1, a, <, b, __VA_ARGS__)
#define cr_assert_leq(a, b, ...) mc_cmp(1, a, <=, b, __VA_ARGS__)
#define cr_assert_gt(a, b, ...)  mc_cmp(1, a, >, b, __VA_ARGS__)
#define cr_assert_geq(a, b, ...) mc_cmp(1, a, >=, b, __VA_ARGS__)
#define cr_expect_eq(a, b, ...)  mc_cmp(0, a, ==, b, __VA_ARGS__)
#define cr_expect_neq(a, b, ...) mc_cmp(0, a, !=, b, __VA_ARGS__)
#define cr_expect_lt(a, b, ...)  mc_cmp(0, a, <, b, __VA_ARGS__)
#define cr_expect_leq(a, b, ...) mc_cmp(0, a, <=, b, __VA_ARGS__)
#define cr_expect_gt(a, b, ...)  mc_cmp(0, a, >, b, __VA_ARGS__)
#define cr_expect_geq(a, b, ...) mc_cmp(0, a, >=, b, __VA_ARGS__)
#define cr_assert_null(p, ...)     mc_check(1, (p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_assert_not_null(p, ...) mc_check(1, (p) != NULL, #p " != NULL", __VA_ARGS__)
#define cr_expect_null(p, ...)     mc_check(0, (p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_expect_not_null(p, ...) mc_check(0, (p) != NULL, #p " != NULL", __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...)  mc_check(1, strcmp((a), (b)) == 0, #a " eq " #b, __VA_ARGS__)
#define cr_assert_str_neq(a, b, ...) mc_check(1, strcmp((a), (b)) != 0, #a " neq " #b, __VA_ARGS__)
#define cr_expect_str_eq(a, b, ...)  mc_check(0, strcmp((a), (b)) == 0, #a " eq " #b, __VA_ARGS__)
#define cr_assert_arr_eq(a, b, n, ...) mc_check(1, memcmp((a), (b), (n)) == 0, #a " eq " #b, __VA_ARGS__)
#define cr_expect_arr_eq(a, b, n, ...) mc_check(0, memcmp((a), (b), (n)) == 0, #a " eq " #b, __VA_ARGS__)
#define cr_log_info(...)  (fprintf(stderr, __VA_ARGS__), fputc('\n', stderr))
#define cr_log_warn(...)  cr_log_info(__VA_ARGS__)
#define cr_log_error(...) cr_log_info(__VA_ARGS__)

static struct criterion_test_extra_data *mc_suite_data(const char *name)
{
    for (struct mc_suite *s = mc_suites; s; s = s->next) {
        if (strcmp(s->name, name) == 0) {
            return s->data;
        }
    }
    return NULL;
}

static void mc_run_child(struct mc_test *t, struct criterion_test_extra_data *sd)
{
    double timeout = t->data->timeout ? t->data->timeout
                   : sd && sd->timeout ? sd->timeout : 0;

    if (timeout > 0) {
        alarm((unsigned)timeout + 1);
    }
    if (sd && sd->init) {
        sd->init();
    }
    if (t->data->init) {
        t->data->init();
    }
    t->fn();
    if (t->data->fini) {
        t->data->fini();
    }
    if (sd && sd->fini) {
        sd->fini();
    }
    fflush(NULL);
    _exit(mc_expect_failed ? 1 : 0);
}

/* True if the child ended as the test expects. */
static bool mc_judge(struct mc_test *t, int status)
{
    int want_signal = t->data->signal, want_code = t->data->exit_code;

    if (WIFSIGNALED(status)) {
        if (WTERMSIG(status) == want_signal) {
            return true;
        }
        fprintf(stderr, "[FAIL] %s::%s: CRASH (signal %d)\n", t->suite,
                t->name, WTERMSIG(status));
        return false;
    }
    if (!want_signal && WEXITSTATUS(status) == want_code) {
        return true;
    }
    fprintf(stderr, "[FAIL] %s::%s: exit status %d\n", t->suite, t->name,
            WEXITSTATUS(status));
    return false;
}

int main(int argc, char **argv)
{
    const char *filter = NULL;
    int tested = 0, passed = 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc) {
            filter = argv[++i];
        } else if (strcmp(argv[i], "-l") == 0 || strcmp(argv[i], "--list") == 0) {
            for (struct mc_test *t = mc_tests; t; t = t->next) {
                printf("%s::%s\n", t->suite, t->name);
            }
            return 0;
        }
    }
    for (struct mc_test *t = mc_tests; t; t = t->next) {
        char full[512];
        struct criterion_test_extra_data *sd = mc_suite_data(t->suite);
        int status;
        pid_t pid;

        snprintf(full, sizeof(full), "%s/%s", t->suite, t->name);
        if (t->data->disabled || (filter && fnmatch(filter, full, 0) != 0)) {
            continue;
        }
        fflush(NULL);
        pid = fork();
        if (pid == 0) {
            mc_run_child(t, sd);
        }
        waitpid(pid, &status, 0);
        tested++;
        if (mc_judge(t, status)) {
            passed++;
            fprintf(stderr, "[PASS] %s::%s\n", t->suite, t->name);
        }
    }
    fprintf(stderr, "[====] Synthesis: Tested: %d | Passing: %d | Failing: %d | Crashing: 0\n",
            tested, passed, tested - passed);
    return passed == tested ? 0 : 1;
}

#endif
