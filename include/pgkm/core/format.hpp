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

enum class Algorithm : std::uint8_t
{
	Aes256Gcm = 0x01,
	Aes256Siv = 0x02,
};

// The fixed 10-byte header of every ciphertext.
struct Header
{
	std::uint8_t format = kFormatV1;
	Algorithm algorithm = Algorithm::Aes256Gcm;
	std::uint32_t key_id = 0;
	std::uint32_t key_version = 0;
};

// Returns the algorithm's name as SQL shows it ("aes-256-gcm", "aes-256-siv").
const char *AlgorithmName(Algorithm algorithm) noexcept;

// Minimum total length of a ciphertext of the given algorithm.
std::size_t Overhead(Algorithm algorithm) noexcept;

// Parses and checks the header and the minimum length for its algorithm.
// Throws Error(MalformedCiphertext) for empty, short, unknown format or unknown algorithm input.
Header ParseHeader(ByteView ciphertext);

// Writes the 10-byte big-endian header.
void WriteHeader(const Header &header, std::span<std::uint8_t, kHeaderSize> out) noexcept;

} // namespace pgkm::core
