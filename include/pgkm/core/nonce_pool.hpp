// Random GCM nonces drawn from a buffer refilled in bulk from OpenSSL's CSPRNG.
#pragma once

#include "pgkm/core/format.hpp"
#include "pgkm/core/pure.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <sys/types.h>

namespace pgkm::core
{

class NoncePool
{
  public:
	static constexpr std::size_t kPoolBytes = 4096 - 4096 % kGcmNonceSize;

	NoncePool() noexcept = default;
	~NoncePool();
	NoncePool(const NoncePool &) = delete;
	NoncePool &operator=(const NoncePool &) = delete;

	// Writes a fresh 12-byte nonce. Never hands out the same bytes twice, and never
	// hands a child process bytes drawn by its parent: a pid change discards the pool.
	// Throws Error(Internal) if the CSPRNG fails.
	void Next(std::span<std::uint8_t, kGcmNonceSize> out);

  private:
	void Refill();

	std::array<std::uint8_t, kPoolBytes> pool_{};
	std::size_t used_ = kPoolBytes;
	pid_t owner_ = 0;
};

} // namespace pgkm::core
