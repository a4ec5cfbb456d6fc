// Ciphertext format version 1: reading and writing the header, and the length rules.
#include "pgkm/core/format.hpp"

#include "pgkm/core/error.hpp"

#include <string>

namespace pgkm::core
{

namespace
{

// Reads a big-endian 32-bit integer.
std::uint32_t LoadBe32(const std::uint8_t *p) noexcept
{
	return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
		   std::uint32_t{p[3]};
}

// Writes a big-endian 32-bit integer.
void StoreBe32(std::uint8_t *p, std::uint32_t value) noexcept
{
	p[0] = static_cast<std::uint8_t>(value >> 24);
	p[1] = static_cast<std::uint8_t>(value >> 16);
	p[2] = static_cast<std::uint8_t>(value >> 8);
	p[3] = static_cast<std::uint8_t>(value);
}

// Says how many bytes a ciphertext has, in words ("1 byte", "5 bytes").
std::string ByteCount(std::size_t count)
{
	return std::to_string(count) + (count == 1 ? " byte" : " bytes");
}

// Reports an input shorter than a required minimum.
[[noreturn]] void ThrowTooShort(std::size_t size, std::size_t needed, const std::string &what)
{
	throw Error(ErrorKind::MalformedCiphertext,
				"ciphertext is too short: " + ByteCount(size) + ", at least " +
					std::to_string(needed) + " needed for " + what,
				"The value was truncated, or it is not a pgkm ciphertext.");
}

} // namespace

// Returns the algorithm's name as SQL shows it.
const char *AlgorithmName(Algorithm algorithm) noexcept
{
	switch (algorithm)
	{
	case Algorithm::Aes256Gcm:
		return "aes-256-gcm";
	case Algorithm::Aes256Siv:
		return "aes-256-siv";
	case Algorithm::BlindIndex:
		return "blind-index";
	}
	return "unknown";
}

// Returns the minimum total length of a ciphertext of the algorithm (0 if unknown).
std::size_t Overhead(Algorithm algorithm) noexcept
{
	switch (algorithm)
	{
	case Algorithm::Aes256Gcm:
		return kGcmOverhead;
	case Algorithm::Aes256Siv:
		return kSivOverhead;
	case Algorithm::BlindIndex:
		return kHeaderSize + 1;
	}
	return 0;
}

// Checks the header and the minimum length before any field is trusted. The messages never
// repeat the value's bytes: a column that still holds some unencrypted values (during a
// migration) must not leak them into logs and the audit log.
Header ParseHeader(ByteView ciphertext)
{
	if (ciphertext.empty())
		throw Error(ErrorKind::MalformedCiphertext, "ciphertext is empty",
					"A pgkm ciphertext has at least a 10-byte header.");
	if (ciphertext.size() < kHeaderSize)
		ThrowTooShort(ciphertext.size(), kHeaderSize, "the header");

	const std::uint8_t *p = ciphertext.data();
	if (p[0] != kFormatV1)
		throw Error(ErrorKind::MalformedCiphertext, "unknown ciphertext format version",
					"This value was not produced by pgkm, or by a newer version of it.");

	Header header;
	header.format = p[0];
	switch (p[1])
	{
	case static_cast<std::uint8_t>(Algorithm::Aes256Gcm):
		header.algorithm = Algorithm::Aes256Gcm;
		break;
	case static_cast<std::uint8_t>(Algorithm::Aes256Siv):
		header.algorithm = Algorithm::Aes256Siv;
		break;
	case static_cast<std::uint8_t>(Algorithm::BlindIndex):
		header.algorithm = Algorithm::BlindIndex;
		break;
	default:
		throw Error(ErrorKind::MalformedCiphertext, "unknown ciphertext algorithm",
					"This value was not produced by pgkm, or by a newer version of it.");
	}

	const std::size_t needed = Overhead(header.algorithm);
	if (ciphertext.size() < needed)
		ThrowTooShort(ciphertext.size(), needed, AlgorithmName(header.algorithm));
	if (header.algorithm == Algorithm::BlindIndex &&
		ciphertext.size() > kHeaderSize + kBlindIndexMaxBytes)
		throw Error(ErrorKind::MalformedCiphertext, "blind index value is too long",
					"A blind index value is a 10-byte header and at most 32 bytes.");

	header.key_id = LoadBe32(p + 2);
	header.key_version = LoadBe32(p + 6);
	return header;
}

// Writes the 10-byte big-endian header.
void WriteHeader(const Header &header, std::span<std::uint8_t, kHeaderSize> out) noexcept
{
	out[0] = header.format;
	out[1] = static_cast<std::uint8_t>(header.algorithm);
	StoreBe32(out.data() + 2, header.key_id);
	StoreBe32(out.data() + 6, header.key_version);
}

} // namespace pgkm::core
