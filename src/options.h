/*
 * options.h — definitions in QEMU's two syntaxes, checked against option
 * tables.
 *
 * A definition (the arguments of blockdev-add, block-export-add, object-add)
 * is a JSON object.  On the command line it is either JSON ("{...}") or
 * QEMU's dotted key=value syntax: `driver=qcow2,node-name=disk,
 * file.driver=file,file.filename=a.qcow2` means
 * {"driver":"qcow2","node-name":"disk","file":{"driver":"file",
 * "filename":"a.qcow2"}}; a comma inside a value is written ",,".  key=value
 * gives every value as a string; coercion against the option table turns
 * them into the declared types (on/off -> bool, "1G" -> integer, ...), so
 * both syntaxes mean exactly what the same QMP command would.
 *
 * An option table is a NULL-terminated array of BlockOptionDesc (driver.h).
 * A dotted name in a table ("cache.direct") is a member of a nested object.
 *
 * Thread-safety: pure functions of their arguments; callable anywhere.
 */
#ifndef DISKSTACK_OPTIONS_H
#define DISKSTACK_OPTIONS_H

#include <stdbool.h>
#include <jansson.h>
#include "driver.h"
#include "util/error.h"

/* Parses "{json}" or key=value into a new object (values as strings for
 * key=value).  Errors name the offending key. */
json_t *defn_parse(const char *text, Error **errp);
/* True if text is the JSON syntax: its values already have their types, so
 * they are checked without coercion (as QMP would check them). */
bool defn_is_json(const char *text);
/* Parses key=value only. */
json_t *keyval_parse(const char *text, Error **errp);

/*
 * Checks obj against table: unknown keys, wrong types, missing required keys
 * and bad enum values are errors naming the key ("Parameter 'x' is
 * unexpected", "Parameter 'size' expects a size", ...).  With `coerce`,
 * string values (from key=value) are converted to the declared type in place.
 */
int opts_check(json_t *obj, const BlockOptionDesc *table, bool coerce,
               Error **errp);
/*
 * The same for a whole blockdev definition: picks the table by "driver",
 * adds the common options, and recurses into nested child definitions.
 */
int blockdev_def_check(json_t *def, bool coerce, Error **errp);

/* "1G", "512k", "4096" -> bytes; false on junk. */
bool parse_size(const char *s, uint64_t *out);
/* "on"/"off"/"true"/"false"/"yes"/"no" -> bool; false on junk. */
bool parse_bool(const char *s, bool *out);

#endif
