// Everything derived from one unwrapped data encryption key: working keys and ready ciphers.
#pragma once

#include "pgkm/core/aead.hpp"
#include "pgkm/core/pure.hpp"
#include "pgkm/core/secure_buffer.hpp"

#include <array>
#include <cstdint>
#include <memory>

namespace pgkm::core
{

inline constexpr std::size_t kDekSize = 32;
inline constexpr std::size_t kCheckValueSize = 32;
inline constexpr const char *kLabelGcm = "pgkm/v1/aes-256-gcm";
inline constexpr const char *kLabelSiv = "pgkm/v1/aes-256-siv";
inline constexpr const char *kLabelBlindIndex = "pgkm/v1/blind-index";
inline constexpr const char *kLabelKeyCheck = "pgkm/v1/key-check";

// HKDF-SHA-256 with no salt and the label as info, out_len bytes.
SecureBuffer DeriveKey(ByteView dek, const char *label, std::size_t out_len);

// The key check value stored beside each wrapped DEK: HMAC-SHA-256 under
// DeriveKey(dek, kLabelKeyCheck, 32) over be32(key_id) || be32(key_version).
// Binds a wrapped DEK to its identity, so a swapped or foreign blob is recognised.
std::array<std::uint8_t, kCheckValueSize> KeyCheckValue(ByteView dek, std::uint32_t key_id,
														std::uint32_t key_version);

// Compares a stored check value with the DEK in constant time.
bool VerifyKeyCheckValue(ByteView dek, std::uint32_t key_id, std::uint32_t key_version,
						 ByteView stored);

class KeyMaterial
{
  public:
	// Derives the working keys from dek (32 bytes) once into locked buffers; the DEK itself
	// is not kept.
	KeyMaterial(std::uint32_t key_id, std::uint32_t key_version, ByteView dek);

	std::uint32_t key_id() const noexcept { return key_id_; }
	std::uint32_t key_version() const noexcept { return key_version_; }
	GcmCipher &gcm() noexcept { return *gcm_; }
	// Frees the OpenSSL contexts of the ciphers (see GcmCipher::ReleaseContexts).
	void ReleaseContexts() noexcept { gcm_->ReleaseContexts(); }
	// Whether every working key is locked in memory.
	bool locked() const noexcept { return gcm_->locked(); }

  private:
	std::uint32_t key_id_;
	std::uint32_t key_version_;
	std::unique_ptr<GcmCipher> gcm_;
};

} // namespace pgkm::core
