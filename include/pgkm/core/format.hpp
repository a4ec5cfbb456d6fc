// Ciphertext format version 1 (DESIGN.md): the header and the length rules.
#pragma once

#include "pgkm/core/pure.hpp"

#include <cstddef>
#include <cstdint>
#include <span>

namespace pgkm::core
{

using ByteView = std::span<const std::uint8_t>;

inline constexpr std::uint8_t kFormatV1 = 0x01;
inline constexpr std::size_t kHeaderSize = 10;
inline constexpr std::size_t kGcmNonceSize = 12;
inline constexpr std::size_t kGcmTagSize = 16;
inline constexpr std::size_t kSivIvSize = 16;
inline constexpr std::size_t kGcmOverhead = kHeaderSize + kGcmNonceSize + kGcmTagSize; // 38
inline constexpr std::size_t kSivOverhead = kHeaderSize + kSivIvSize;                  // 26
// A blind index value is a header followed by 1 to 32 bytes of a truncated HMAC-SHA-256.
inline constexpr std::size_t kBlindIndexMaxBytes = 32;

enum class Algorithm : std::uint8_t
{
	Aes256Gcm = 0x01,
	Aes256Siv = 0x02,
	// Not a ciphertext: a blind index value (header || truncated HMAC), which cannot be
	// decrypted. It carries the header so that lookups and rotation know its key version.
	BlindIndex = 0x03,
};

// The fixed 10-byte header of every ciphertext.
struct Header
{
	std::uint8_t format = kFormatV1;
	Algorithm algorithm = Algorithm::Aes256Gcm;
	std::uint32_t key_id = 0;
	std::uint32_t key_version = 0;
};

// Returns the algorithm's name as SQL shows it ("aes-256-gcm", "aes-256-siv", "blind-index").
const char *AlgorithmName(Algorithm algorithm) noexcept;

// Minimum total length of a ciphertext (or blind index value) of the given algorithm.
std::size_t Overhead(Algorithm algorithm) noexcept;

// Parses and checks the header and the minimum length for its algorithm.
// Throws Error(MalformedCiphertext) for empty, short, unknown format or unknown algorithm input,
// and for a blind index value longer than a header and 32 bytes.
Header ParseHeader(ByteView ciphertext);

// Writes the 10-byte big-endian header.
void WriteHeader(const Header &header, std::span<std::uint8_t, kHeaderSize> out) noexcept;

} // namespace pgkm::core
