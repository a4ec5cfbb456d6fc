// The exception/longjmp boundary: core code runs inside RunCore, which catches every C++
// exception into a plain struct; the caller reports it with ereport only after the C++
// scope has closed. See STYLE.md, "The exception/longjmp boundary".
#pragma once

#include "pgkm/core/error.hpp"

#include <exception>
#include <new>

namespace pgkm::pg
{

// A failure copied out of a C++ exception: plain data, safe to keep across a longjmp.
struct Failure
{
	int sqlstate;
	char message[512];
	char detail[512];
	char hint[256];
};

// Copies a core error into failure with its SQLSTATE.
void CaptureError(Failure &failure, const core::Error &error) noexcept;
// Records an allocation failure.
void CaptureOutOfMemory(Failure &failure) noexcept;
// Records any other exception as an internal error.
void CaptureUnexpected(Failure &failure, const char *what) noexcept;
// Raises failure as a PostgreSQL ERROR; never returns.
[[noreturn]] void ReportFailure(const Failure &failure);

// Runs fn and returns true, or catches whatever it throws into failure and returns false.
// fn must not call anything that can ereport.
template <typename Fn> bool RunCore(Failure &failure, Fn &&fn) noexcept
{
	try
	{
		fn();
		return true;
	}
	catch (const core::Error &error)
	{
		CaptureError(failure, error);
	}
	catch (const std::bad_alloc &)
	{
		CaptureOutOfMemory(failure);
	}
	catch (const std::exception &error)
	{
		CaptureUnexpected(failure, error.what());
	}
	catch (...)
	{
		CaptureUnexpected(failure, "unknown exception");
	}
	return false;
}

} // namespace pgkm::pg

// Runs a statement of core code; on an exception, raises it as an ERROR with its SQLSTATE
// once the C++ scope is gone. The one pattern every call from the glue into core follows.
#define PGKM_CORE(...)                                                                             \
	do                                                                                             \
	{                                                                                              \
		::pgkm::pg::Failure pgkm_failure_;                                                         \
		if (!::pgkm::pg::RunCore(pgkm_failure_, [&]() { __VA_ARGS__; }))                           \
			::pgkm::pg::ReportFailure(pgkm_failure_);                                              \
	} while (0)
