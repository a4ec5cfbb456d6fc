// Versioned master-key labels ("<base>.v<N>"), shared by every provider.
#include "pgkm/provider/master_label.hpp"

#include <charconv>

namespace pgkm::provider
{

// Parses the version suffix strictly, so "x.v01", "x.v" and "xy.v3" never match base "x".
std::optional<std::uint64_t> MasterKeyVersion(std::string_view base_label, std::string_view label)
{
	constexpr std::string_view kSeparator = ".v";
	if (label.size() <= base_label.size() + kSeparator.size())
		return std::nullopt;
	if (label.substr(0, base_label.size()) != base_label)
		return std::nullopt;
	if (label.substr(base_label.size(), kSeparator.size()) != kSeparator)
		return std::nullopt;
	const std::string_view digits = label.substr(base_label.size() + kSeparator.size());
	if (digits.front() < '1' || digits.front() > '9')
		return std::nullopt;
	for (const char c : digits)
	{
		if (c < '0' || c > '9')
			return std::nullopt;
	}
	std::uint64_t version = 0;
	const char *const last = digits.data() + digits.size();
	const auto [end, error] = std::from_chars(digits.data(), last, version);
	if (error != std::errc{} || end != last)
		return std::nullopt;
	return version;
}

} // namespace pgkm::provider
