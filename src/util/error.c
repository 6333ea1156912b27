/*
 * error.c — errors that carry a message a person understands.
 *
 * Thread-safety: reentrant; an Error belongs to its caller.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util/error.h"

static char *vformat(const char *fmt, va_list ap)
{
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) {
        abort();
    }
    return s;
}

static void error_setv(Error **errp, const char *cls, char *msg)
{
    if (!errp) {
        free(msg);
        return;
    }
    if (*errp) {
        /* Keep the first error: it is usually the cause. */
        free(msg);
        return;
    }
    Error *err = calloc(1, sizeof(*err));
    if (!err) {
        abort();
    }
    err->msg = msg;
    err->cls = cls;
    *errp = err;
}

void error_setg(Error **errp, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = vformat(fmt, ap);
    va_end(ap);
    error_setv(errp, "GenericError", msg);
}

void error_setg_errno(Error **errp, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = vformat(fmt, ap);
    va_end(ap);
    char *full = NULL;
    if (asprintf(&full, "%s: %s", msg, strerror(err < 0 ? -err : err)) < 0) {
        abort();
    }
    free(msg);
    error_setv(errp, "GenericError", full);
}

void error_set_class(Error **errp, const char *cls, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = vformat(fmt, ap);
    va_end(ap);
    error_setv(errp, cls, msg);
}

void error_prepend(Error **errp, const char *fmt, ...)
{
    if (!errp || !*errp) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    char *prefix = vformat(fmt, ap);
    va_end(ap);
    char *full = NULL;
    if (asprintf(&full, "%s%s", prefix, (*errp)->msg) < 0) {
        abort();
    }
    free(prefix);
    free((*errp)->msg);
    (*errp)->msg = full;
}

void error_propagate(Error **dst, Error *src)
{
    if (!src) {
        return;
    }
    if (dst && !*dst) {
        *dst = src;
    } else {
        error_free(src);
    }
}

void error_free(Error *err)
{
    if (err) {
        free(err->msg);
        free(err);
    }
}

const char *error_get_pretty(const Error *err)
{
    return err ? err->msg : "";
}

void error_report_err(Error *err)
{
    fprintf(stderr, "diskstack: %s\n", error_get_pretty(err));
    error_free(err);
}

static void report(const char *prefix, const char *fmt, va_list ap)
{
    char *msg = vformat(fmt, ap);
    fprintf(stderr, "diskstack: %s%s\n", prefix, msg);
    free(msg);
}

void error_report(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report("", fmt, ap);
    va_end(ap);
}

void warn_report(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report("warning: ", fmt, ap);
    va_end(ap);
}
