// Maps core error kinds to SQLSTATEs and raises captured failures as PostgreSQL errors.
#include "pgkm/pg/boundary.hpp"

#include <cstdio>

#include "pgkm/pg/postgres.hpp"

namespace pgkm::pg
{

namespace
{

// Returns the SQLSTATE of an error kind; the table in README.md documents it.
int SqlState(core::ErrorKind kind) noexcept
{
	switch (kind)
	{
	case core::ErrorKind::InvalidArgument:
		return ERRCODE_INVALID_PARAMETER_VALUE;
	case core::ErrorKind::MalformedCiphertext:
		return ERRCODE_INVALID_BINARY_REPRESENTATION;
	case core::ErrorKind::AuthenticationFailed:
		return ERRCODE_DATA_EXCEPTION;
	case core::ErrorKind::UnknownKey:
		return ERRCODE_UNDEFINED_OBJECT;
	case core::ErrorKind::KeyNotUsable:
		return ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
	case core::ErrorKind::WrongMasterKey:
		return ERRCODE_DATA_CORRUPTED;
	case core::ErrorKind::TokenUnavailable:
		return ERRCODE_SYSTEM_ERROR;
	case core::ErrorKind::Configuration:
		return ERRCODE_CONFIG_FILE_ERROR;
	case core::ErrorKind::NotPermitted:
		return ERRCODE_INSUFFICIENT_PRIVILEGE;
	case core::ErrorKind::Unsupported:
		return ERRCODE_FEATURE_NOT_SUPPORTED;
	case core::ErrorKind::Internal:
		break;
	}
	return ERRCODE_INTERNAL_ERROR;
}

// Copies a C string into a fixed buffer, truncating.
void CopyText(char *dst, size_t size, const char *src) noexcept
{
	snprintf(dst, size, "%s", src ? src : "");
}

} // namespace

void CaptureError(Failure &failure, const core::Error &error) noexcept
{
	failure.sqlstate = SqlState(error.kind());
	CopyText(failure.message, sizeof(failure.message), error.message().c_str());
	CopyText(failure.detail, sizeof(failure.detail), error.detail().c_str());
	CopyText(failure.hint, sizeof(failure.hint), error.hint().c_str());
}

void CaptureOutOfMemory(Failure &failure) noexcept
{
	failure.sqlstate = ERRCODE_OUT_OF_MEMORY;
	CopyText(failure.message, sizeof(failure.message), "out of memory in pgkm");
	failure.detail[0] = '\0';
	failure.hint[0] = '\0';
}

void CaptureUnexpected(Failure &failure, const char *what) noexcept
{
	failure.sqlstate = ERRCODE_INTERNAL_ERROR;
	CopyText(failure.message, sizeof(failure.message), "unexpected failure in pgkm");
	CopyText(failure.detail, sizeof(failure.detail), what);
	failure.hint[0] = '\0';
}

void ReportFailure(const Failure &failure)
{
	ereport(ERROR, (errcode(failure.sqlstate), errmsg_internal("%s", failure.message),
					failure.detail[0] ? errdetail_internal("%s", failure.detail) : 0,
					failure.hint[0] ? errhint("%s", failure.hint) : 0));
	pg_unreachable();
}

} // namespace pgkm::pg
