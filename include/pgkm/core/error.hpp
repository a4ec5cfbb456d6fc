// The one exception type of the pure layers, tagged with a kind that the glue maps to a SQLSTATE.
#pragma once

#include "pgkm/core/pure.hpp"

#include <exception>
#include <string>

namespace pgkm::core
{

// What went wrong, in the categories a caller must be able to tell apart.
enum class ErrorKind
{
	InvalidArgument,      // a caller passed a value outside the documented domain
	MalformedCiphertext,  // not a pgkm ciphertext: empty, too short, unknown format or algorithm
	AuthenticationFailed, // AEAD tag did not verify: altered bytes or the wrong context
	UnknownKey,           // no such key or key version
	KeyNotUsable,         // the version exists but its state forbids this use
	WrongMasterKey,       // a wrapped DEK does not belong to this master key or this (key, version)
	TokenUnavailable,     // PKCS#11 module, token, session or login failed
	Configuration,        // a setting or the PIN file is wrong
	NotPermitted,         // the caller lacks the role the key requires
	Unsupported,          // a known but not yet supported feature (e.g. an algorithm)
	Internal,             // a bug or a resource failure (OpenSSL out of memory, ...)
};

// An error raised by core or provider code. Messages never contain key material,
// plaintext, PINs or wrapped keys; they may name keys, versions and labels.
class Error : public std::exception
{
  public:
	Error(ErrorKind kind, std::string message, std::string detail = {}, std::string hint = {})
		: kind_(kind), message_(std::move(message)), detail_(std::move(detail)),
		  hint_(std::move(hint))
	{
	}

	ErrorKind kind() const noexcept { return kind_; }
	const std::string &message() const noexcept { return message_; }
	const std::string &detail() const noexcept { return detail_; }
	const std::string &hint() const noexcept { return hint_; }
	const char *what() const noexcept override { return message_.c_str(); }

  private:
	ErrorKind kind_;
	std::string message_;
	std::string detail_;
	std::string hint_;
};

} // namespace pgkm::core
