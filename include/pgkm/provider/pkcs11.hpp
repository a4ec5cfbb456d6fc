// Internals of the PKCS#11 provider: the process-wide module registry and the error helpers.
// Only src/provider/pkcs11*.cpp include this header.
#pragma once

#include "pgkm/core/error.hpp"
#include "pgkm/core/pure.hpp"

#include <p11-kit/pkcs11.h>

#include <cstdint>
#include <string>
#include <sys/types.h>

namespace pgkm::provider::pkcs11
{

// A failure that a fresh session may cure (session, login or library state lost, or a
// cached object handle gone stale). The provider reconnects and retries the operation once;
// a second failure reaches the caller as this Error(TokenUnavailable).
class SessionLost : public core::Error
{
  public:
	SessionLost(CK_RV rv, std::string message, std::string detail)
		: core::Error(core::ErrorKind::TokenUnavailable, std::move(message), std::move(detail)),
		  rv_(rv)
	{
	}

	CK_RV rv() const noexcept { return rv_; }

  private:
	CK_RV rv_;
};

// Whether rv means the session, the login or the library state is gone, so that reconnecting
// and retrying may succeed.
bool IsSessionLoss(CK_RV rv) noexcept;

// Returns "<function>: <CKR name>", the detail of every PKCS#11 error.
std::string Detail(const char *function, CK_RV rv);

// Throws unless rv is CKR_OK: SessionLost for session loss, else Error(kind, message).
void Check(CK_RV rv, const char *function, core::ErrorKind kind, const std::string &message);

// One loaded PKCS#11 library, shared by every provider in the process that loads the same
// file: PKCS#11 allows one C_Initialize per process, and two providers finalising each
// other's library would invalidate each other's handles. Tracks the process that
// initialised it, so a forked child initialises again before any other call.
// Every member function takes the registry's mutex.
class Module
{
  public:
	// Loads the library (or shares the loaded one) and counts one more user. Throws
	// Error(TokenUnavailable) with dlerror() in the detail.
	static Module &Acquire(const std::string &path);

	// Counts one user less. The last user in the process that initialised the library
	// finalises and unloads it; in any other process (a fork child) nothing is called.
	static void Release(Module &module) noexcept;

	CK_FUNCTION_LIST *functions() const noexcept { return functions_; }

	// Initialises the library unless this process already did; returns the generation,
	// which changes with every initialisation. Throws Error(TokenUnavailable).
	std::uint64_t EnsureInitialised();

	// Whether handles obtained under this generation are still valid in this process.
	bool IsCurrent(std::uint64_t generation) const noexcept;

	// Records that the library lost its state under this generation (it answered
	// CKR_CRYPTOKI_NOT_INITIALIZED), so the next EnsureInitialised initialises again.
	void MarkLost(std::uint64_t generation) noexcept;

	// How many providers of this process use the library.
	int users() const noexcept;

	Module(const Module &) = delete;
	Module &operator=(const Module &) = delete;
	~Module() = default;

  private:
	Module(std::string path, void *handle, CK_FUNCTION_LIST *functions);

	std::string path_;
	void *handle_;
	CK_FUNCTION_LIST *functions_;
	pid_t initialised_pid_ = 0; // 0: not initialised by this registry
	std::uint64_t generation_ = 0;
	int users_ = 0;
};

} // namespace pgkm::provider::pkcs11
