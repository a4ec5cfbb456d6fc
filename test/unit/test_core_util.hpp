// Small helpers shared by the core unit tests: hex decoding and byte-vector shorthands.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace pgkm::core::test
{

using Bytes = std::vector<std::uint8_t>;

// Decodes a hex string (even length, either case) into bytes; throws on bad input.
inline Bytes FromHex(std::string_view hex)
{
	auto nibble = [](char c) -> int
	{
		if (c >= '0' && c <= '9')
			return c - '0';
		if (c >= 'a' && c <= 'f')
			return c - 'a' + 10;
		if (c >= 'A' && c <= 'F')
			return c - 'A' + 10;
		throw std::invalid_argument("bad hex digit");
	};
	if (hex.size() % 2 != 0)
		throw std::invalid_argument("odd hex length");
	Bytes out(hex.size() / 2);
	for (std::size_t i = 0; i < out.size(); i++)
		out[i] = static_cast<std::uint8_t>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
	return out;
}

// Encodes bytes as lower-case hex, for readable assertion messages.
inline std::string ToHex(std::span<const std::uint8_t> bytes)
{
	static const char digits[] = "0123456789abcdef";
	std::string out;
	out.reserve(bytes.size() * 2);
	for (std::uint8_t b : bytes)
	{
		out.push_back(digits[b >> 4]);
		out.push_back(digits[b & 0x0f]);
	}
	return out;
}

// Returns the bytes of a string, without a terminating NUL.
inline Bytes FromText(std::string_view text)
{
	return Bytes(text.begin(), text.end());
}

} // namespace pgkm::core::test
