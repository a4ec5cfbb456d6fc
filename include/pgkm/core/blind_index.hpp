// Blind indexes: HMAC-SHA-256 under a 32-byte working key, truncated, behind a format-v1
// header (algorithm 0x03) that names the key version.
#pragma once

#include "pgkm/core/format.hpp"
#include "pgkm/core/pure.hpp"
#include "pgkm/core/secure_buffer.hpp"

#include <cstddef>
#include <cstdint>
#include <span>

typedef struct evp_mac_ctx_st EVP_MAC_CTX;

namespace pgkm::core
{

inline constexpr std::size_t kBlindIndexKeySize = 32;

class BlindIndexKey
{
  public:
	// Copies a 32-byte working key (derived with HKDF, never the DEK) into a locked buffer.
	// Throws Error(InvalidArgument) for another size.
	explicit BlindIndexKey(ByteView key);
	~BlindIndexKey();
	BlindIndexKey(const BlindIndexKey &) = delete;
	BlindIndexKey &operator=(const BlindIndexKey &) = delete;

	// Writes the full HMAC-SHA-256 of value.
	void Mac(ByteView value, std::span<std::uint8_t, 32> mac);

	// Writes header || the first out.size() - kHeaderSize bytes of the HMAC of value; out
	// must be 1 to 32 bytes longer than the header, whose algorithm must be BlindIndex.
	void Compute(const Header &header, ByteView value, std::span<std::uint8_t> out);

	// Frees the keyed OpenSSL MAC context (its padded key states live in ordinary heap).
	void ReleaseContexts() noexcept;

	// Whether the keyed OpenSSL context exists now.
	bool HasContexts() const noexcept { return ctx_ != nullptr; }

	// Whether the working key's buffer is locked in memory.
	bool locked() const noexcept { return key_.locked(); }

  private:
	SecureBuffer key_;
	EVP_MAC_CTX *ctx_ = nullptr;
};

} // namespace pgkm::core
