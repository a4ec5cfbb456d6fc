/*
 * Preloaded after the ASan runtime into the (uninstrumented) PostgreSQL servers of
 * scripts/sanitize.sh. Without it, postgres, psql and initdb hang at start: a preloaded
 * runtime initialises lazily, at the first malloc, and here that malloc happens inside
 * bindtextdomain (libgpg-error's constructor, pulled in through libsystemd) while glibc
 * holds its gettext lock; the runtime's initialisation looks up swift_demangle with dlsym,
 * and the failure message is translated through dcgettext, which takes the same lock: the
 * lock's reader count is corrupted and the next bindtextdomain waits forever. With this
 * symbol present the lookup succeeds and nothing is translated. ASan only calls it for
 * Swift-mangled names; returning NULL means "not demangled".
 */
#include <stddef.h>
#include <stdint.h>

/* Declines to demangle (the signature of the Swift runtime's function). */
char *swift_demangle(const char *name, size_t length, char *out, size_t *out_size, uint32_t flags)
{
	(void)name;
	(void)length;
	(void)out;
	(void)out_size;
	(void)flags;
	return NULL;
}
