// Versioned master-key labels ("<base>.v<N>"), shared by every provider.
#pragma once

#include "pgkm/core/pure.hpp"

#include <cstdint>
#include <optional>
#include <string_view>

namespace pgkm::provider
{

// Returns N when label is exactly "<base>.v<N>" with N a positive decimal integer written
// without leading zeros (and small enough for 64 bits); nullopt for any other label.
std::optional<std::uint64_t> MasterKeyVersion(std::string_view base_label, std::string_view label);

} // namespace pgkm::provider
