// The audit hash chain: the canonical encoding of a record, SHA-256 chaining, and the
// message that a checkpoint or retention anchor MACs.
#include "pgkm/core/audit_chain.hpp"

#include "pgkm/core/error.hpp"

#include <openssl/evp.h>

#include <limits>
#include <string>

namespace pgkm::core
{

namespace
{

inline constexpr std::string_view kRecordDomain = "pgkm/v1/audit-record";
inline constexpr std::string_view kCheckpointPrefix = "pgkm/v1/audit-";

// The type byte that opens every field of a record.
enum class FieldType : std::uint8_t
{
	Null = 0,
	Int = 1,
	Text = 2,
	Bool = 3,
	Bytes = 4,
};

// Appends a big-endian 32-bit integer.
void AppendBe32(std::vector<std::uint8_t> &out, std::uint32_t value)
{
	for (int shift = 24; shift >= 0; shift -= 8)
		out.push_back(static_cast<std::uint8_t>(value >> shift));
}

// Appends a big-endian 64-bit integer.
void AppendBe64(std::vector<std::uint8_t> &out, std::uint64_t value)
{
	for (int shift = 56; shift >= 0; shift -= 8)
		out.push_back(static_cast<std::uint8_t>(value >> shift));
}

// Appends a type byte, a be32 length and the bytes themselves.
void AppendLengthPrefixed(std::vector<std::uint8_t> &out, FieldType type, const std::uint8_t *data,
						  std::size_t size)
{
	if (size > std::numeric_limits<std::uint32_t>::max())
		throw Error(ErrorKind::InvalidArgument, "an audit record field must be under 4 GiB");
	out.push_back(static_cast<std::uint8_t>(type));
	AppendBe32(out, static_cast<std::uint32_t>(size));
	out.insert(out.end(), data, data + size);
}

// Reports an OpenSSL failure of the audit chain.
[[noreturn]] void ThrowOpenSsl(const char *step)
{
	throw Error(ErrorKind::Internal, std::string("SHA-256 failed in OpenSSL: ") + step);
}

} // namespace

// Starts with the domain alone, like Clear.
AuditEncoder::AuditEncoder()
{
	Clear();
}

// Keeps the allocation so that one encoder serves many records.
void AuditEncoder::Clear()
{
	buf_.assign(kRecordDomain.begin(), kRecordDomain.end());
}

// A null is its type byte alone.
void AuditEncoder::Null()
{
	buf_.push_back(static_cast<std::uint8_t>(FieldType::Null));
}

// Writes the two's complement bit pattern, big-endian.
void AuditEncoder::Int(std::int64_t value)
{
	buf_.push_back(static_cast<std::uint8_t>(FieldType::Int));
	AppendBe64(buf_, static_cast<std::uint64_t>(value));
}

// Length-prefixes the raw bytes of the text.
void AuditEncoder::Text(std::string_view value)
{
	AppendLengthPrefixed(buf_, FieldType::Text,
						 reinterpret_cast<const std::uint8_t *>(value.data()), value.size());
}

// Writes one byte, 0 or 1.
void AuditEncoder::Bool(bool value)
{
	buf_.push_back(static_cast<std::uint8_t>(FieldType::Bool));
	buf_.push_back(value ? 1 : 0);
}

// Length-prefixes the bytes.
void AuditEncoder::Bytes(ByteView value)
{
	AppendLengthPrefixed(buf_, FieldType::Bytes, value.data(), value.size());
}

// Returns the domain and every field added since the last Clear.
ByteView AuditEncoder::bytes() const noexcept
{
	return ByteView(buf_);
}

// Fetches the digest once; every Next reuses it and the context.
AuditChain::AuditChain()
{
	md_ = EVP_MD_fetch(nullptr, "SHA256", nullptr);
	ctx_ = EVP_MD_CTX_new();
	if (md_ == nullptr || ctx_ == nullptr)
	{
		EVP_MD_CTX_free(ctx_);
		EVP_MD_free(md_);
		throw Error(ErrorKind::Internal, "SHA-256 is not available in OpenSSL");
	}
}

// Frees the context and the fetched digest.
AuditChain::~AuditChain()
{
	EVP_MD_CTX_free(ctx_);
	EVP_MD_free(md_);
}

// Hashes the previous record's hash followed by this record's canonical bytes.
AuditHash AuditChain::Next(const AuditHash &prev, ByteView canonical)
{
	AuditHash hash{};
	unsigned int length = 0;
	if (EVP_DigestInit_ex(ctx_, md_, nullptr) != 1)
		ThrowOpenSsl("init");
	if (EVP_DigestUpdate(ctx_, prev.data(), prev.size()) != 1 ||
		EVP_DigestUpdate(ctx_, canonical.data(), canonical.size()) != 1)
		ThrowOpenSsl("update");
	if (EVP_DigestFinal_ex(ctx_, hash.data(), &length) != 1 || length != kAuditHashSize)
		ThrowOpenSsl("final");
	return hash;
}

// Thirty-two zero bytes.
AuditHash ZeroAuditHash()
{
	return AuditHash{};
}

// Lays out prefix + kind, 0x00, be64 seq and the hash; only the two known kinds are accepted,
// so that a message of one kind can never be read as another.
std::vector<std::uint8_t> AuditCheckpointMessage(std::string_view kind, std::int64_t seq,
												 const AuditHash &hash)
{
	if (kind != "checkpoint" && kind != "anchor")
		throw Error(ErrorKind::InvalidArgument,
					"unknown audit checkpoint kind \"" + std::string(kind) + "\"");
	std::vector<std::uint8_t> message;
	message.reserve(kCheckpointPrefix.size() + kind.size() + 1 + 8 + kAuditHashSize);
	message.insert(message.end(), kCheckpointPrefix.begin(), kCheckpointPrefix.end());
	message.insert(message.end(), kind.begin(), kind.end());
	message.push_back(0x00);
	AppendBe64(message, static_cast<std::uint64_t>(seq));
	message.insert(message.end(), hash.begin(), hash.end());
	return message;
}

} // namespace pgkm::core
