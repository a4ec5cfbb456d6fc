// The audit hash chain: the canonical encoding of a record, SHA-256 chaining, and the
// message that a checkpoint or retention anchor MACs.
#pragma once

#include "pgkm/core/format.hpp"
#include "pgkm/core/pure.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

typedef struct evp_md_st EVP_MD;
typedef struct evp_md_ctx_st EVP_MD_CTX;

namespace pgkm::core
{

inline constexpr std::size_t kAuditHashSize = 32;
using AuditHash = std::array<std::uint8_t, kAuditHashSize>;

// Builds the canonical byte encoding of one audit record, field by field, in the order
// the caller adds them. Encoding: the ASCII domain "pgkm/v1/audit-record" (20 bytes), then
// per field one type byte and its value: 0 null (no value), 1 int (8 bytes big-endian two's
// complement), 2 text (be32 length, bytes), 3 bool (1 byte 0/1), 4 bytes (be32 length, bytes).
// After the last field nothing else (the field count is implied; a record with different
// fields has different bytes because every field is typed and length-prefixed).
class AuditEncoder
{
  public:
	AuditEncoder();

	// Drops every field added so far: back to just the domain.
	void Clear();

	// Appends a null field.
	void Null();

	// Appends a 64-bit integer field.
	void Int(std::int64_t value);

	// Appends a text field: any bytes, not necessarily UTF-8. Throws Error(InvalidArgument)
	// for a value longer than 2^32 - 1 bytes.
	void Text(std::string_view value);

	// Appends a boolean field.
	void Bool(bool value);

	// Appends a byte string field. Throws Error(InvalidArgument) past 2^32 - 1 bytes.
	void Bytes(ByteView value);

	// The encoding so far; valid until the next call that changes the encoder.
	ByteView bytes() const noexcept;

  private:
	std::vector<std::uint8_t> buf_;
};

// SHA-256 chaining with one reusable digest context (the digest is fetched once).
class AuditChain
{
  public:
	// Fetches SHA-256 and allocates the context. Throws Error(Internal) if OpenSSL fails.
	AuditChain();
	~AuditChain();
	AuditChain(const AuditChain &) = delete;
	AuditChain &operator=(const AuditChain &) = delete;

	// hash = SHA-256(prev || canonical). Throws Error(Internal) if OpenSSL fails.
	AuditHash Next(const AuditHash &prev, ByteView canonical);

  private:
	EVP_MD *md_ = nullptr;
	EVP_MD_CTX *ctx_ = nullptr;
};

// The zero hash that the first record of a chain carries as prev_hash.
AuditHash ZeroAuditHash();

// The message a checkpoint MACs: the ASCII "pgkm/v1/audit-" + kind, one 0x00 byte, be64 seq,
// then the 32-byte hash. kind is "checkpoint" (seq and hash of the newest record covered) or
// "anchor" (seq of the first record kept after retention, and that record's prev_hash);
// any other kind throws Error(InvalidArgument).
std::vector<std::uint8_t> AuditCheckpointMessage(std::string_view kind, std::int64_t seq,
												 const AuditHash &hash);

} // namespace pgkm::core
