/*
 * Preloaded after the ASan runtime into the (uninstrumented) PostgreSQL servers of
 * scripts/sanitize.sh, for two workarounds.
 *
 * swift_demangle: without it postgres, psql and initdb hang at start. A preloaded ASan
 * runtime initialises lazily, at the first malloc; here that malloc happens inside
 * bindtextdomain (libgpg-error's constructor, pulled in through libsystemd) while glibc holds
 * its gettext lock. The initialisation looks up swift_demangle with dlsym, and dlerror
 * translates the failure through dcgettext, which takes the same lock: its reader count is
 * corrupted and the next bindtextdomain waits forever. With the symbol present the lookup
 * succeeds and nothing is translated.
 *
 * __ubsan_default_options: UBSan's runtime reads UBSAN_OPTIONS from /proc/self/environ when
 * it first reports, in a backend whose process title (set_ps_display) has overwritten that
 * memory, so the variable is never seen. Its options come from here instead. log_path cannot
 * be among them: libubsan's call to __sanitizer_set_report_path binds to the ASan runtime's
 * copy, so UBSan reports go to stderr, the server log, which the driver scans.
 */
#include <stddef.h>
#include <stdint.h>

/* Declines to demangle (the signature of the Swift runtime's function; ASan calls it only for
 * Swift-mangled names). */
char *swift_demangle(const char *name, size_t length, char *out, size_t *out_size, uint32_t flags)
{
	(void)name;
	(void)length;
	(void)out;
	(void)out_size;
	(void)flags;
	return NULL;
}

/* UBSan's options in the servers: a stack with each report, then abort (SIGABRT), which the
 * postmaster treats as a crash. */
const char *__ubsan_default_options(void)
{
	return "print_stacktrace=1:halt_on_error=1:abort_on_error=1";
}
