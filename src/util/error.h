/*
 * error.h — errors that carry a message a person understands.
 *
 * A function that can fail takes `Error **errp` last; on failure it sets
 * *errp (if errp is non-NULL) with error_setg() and returns a failure value.
 * The QMP layer maps an Error to {"class": ..., "desc": ...}: `cls` is
 * QEMU's error class ("GenericError" unless stated otherwise).
 *
 * Thread-safety: an Error belongs to one caller; the functions are reentrant.
 */
#ifndef DISKSTACK_ERROR_H
#define DISKSTACK_ERROR_H

#include <stdarg.h>

typedef struct Error {
    char *msg;
    const char *cls;
} Error;

void error_setg(Error **errp, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Like error_setg, with ": strerror(-err)" appended (err is -errno or errno). */
void error_setg_errno(Error **errp, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void error_set_class(Error **errp, const char *cls, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefixes the message: "prefix: old message". */
void error_prepend(Error **errp, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void error_propagate(Error **dst, Error *src);
void error_free(Error *err);
const char *error_get_pretty(const Error *err);
/* Prints "diskstack: msg" to stderr and frees. */
void error_report_err(Error *err);
void error_report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void warn_report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
