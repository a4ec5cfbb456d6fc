// Everything derived from one unwrapped data encryption key: working keys and ready ciphers.
#pragma once

#include "pgkm/core/aead.hpp"
#include "pgkm/core/blind_index.hpp"
#include "pgkm/core/siv.hpp"
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
	// Derives the working key of the key's algorithm from dek (32 bytes) once into locked
	// memory; the DEK itself is not kept, nor any other algorithm's working key (a key used
	// for one algorithm can never be used for another).
	KeyMaterial(std::uint32_t key_id, std::uint32_t key_version, Algorithm algorithm, ByteView dek);

	std::uint32_t key_id() const noexcept { return key_id_; }
	std::uint32_t key_version() const noexcept { return key_version_; }
	Algorithm algorithm() const noexcept { return algorithm_; }
	// The cipher of the key's algorithm; Error(Internal) for another algorithm (callers check
	// the algorithm first and report the mismatch themselves).
	GcmCipher &gcm();
	SivCipher &siv();
	BlindIndexKey &blind_index();
	// Frees the OpenSSL contexts of the cipher (see GcmCipher::ReleaseContexts).
	void ReleaseContexts() noexcept;
	// Whether the working key is locked in memory.
	bool locked() const noexcept;

  private:
	std::uint32_t key_id_;
	std::uint32_t key_version_;
	Algorithm algorithm_;
	std::unique_ptr<GcmCipher> gcm_;
	std::unique_ptr<SivCipher> siv_;
	std::unique_ptr<BlindIndexKey> blind_index_;
};

} // namespace pgkm::core
