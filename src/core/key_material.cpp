// Everything derived from one unwrapped data encryption key: working keys, check values, ciphers.
#include "pgkm/core/key_material.hpp"

#include "pgkm/core/error.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <cstring>
#include <string>

namespace pgkm::core
{

namespace
{

inline constexpr std::size_t kGcmKeySize = 32;

// Owns an EVP_KDF and its context for the length of one derivation.
struct KdfHandles
{
	EVP_KDF *kdf = nullptr;
	EVP_KDF_CTX *ctx = nullptr;

	// Frees the context and the fetched algorithm.
	~KdfHandles()
	{
		EVP_KDF_CTX_free(ctx);
		EVP_KDF_free(kdf);
	}
};

// Writes a big-endian 32-bit integer.
void StoreBe32(std::uint8_t *p, std::uint32_t value) noexcept
{
	p[0] = static_cast<std::uint8_t>(value >> 24);
	p[1] = static_cast<std::uint8_t>(value >> 16);
	p[2] = static_cast<std::uint8_t>(value >> 8);
	p[3] = static_cast<std::uint8_t>(value);
}

} // namespace

// Derives a working key with HKDF-SHA-256 (no salt, the label as info).
SecureBuffer DeriveKey(ByteView dek, const char *label, std::size_t out_len)
{
	if (dek.empty())
		throw Error(ErrorKind::InvalidArgument, "key derivation needs a non-empty key");
	if (label == nullptr || out_len == 0)
		throw Error(ErrorKind::InvalidArgument, "key derivation needs a label and a length");

	KdfHandles handles;
	handles.kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
	if (handles.kdf != nullptr)
		handles.ctx = EVP_KDF_CTX_new(handles.kdf);
	if (handles.ctx == nullptr)
		throw Error(ErrorKind::Internal, "HKDF-SHA-256 is not available in OpenSSL");

	char digest[] = "SHA256";
	const OSSL_PARAM params[] = {
		OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
										  const_cast<std::uint8_t *>(dek.data()), dek.size()),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<char *>(label),
										  std::strlen(label)),
		OSSL_PARAM_construct_end(),
	};

	SecureBuffer out(out_len);
	if (EVP_KDF_derive(handles.ctx, out.data(), out.size(), params) != 1)
		throw Error(ErrorKind::Internal, std::string("HKDF-SHA-256 failed for label ") + label);
	return out;
}

// Computes HMAC-SHA-256 under the key-check working key over be32(key_id) || be32(key_version).
std::array<std::uint8_t, kCheckValueSize> KeyCheckValue(ByteView dek, std::uint32_t key_id,
														std::uint32_t key_version)
{
	if (dek.size() != kDekSize)
		throw Error(ErrorKind::InvalidArgument, "a data encryption key must be 32 bytes");

	const SecureBuffer check_key = DeriveKey(dek, kLabelKeyCheck, kCheckValueSize);
	std::uint8_t identity[8];
	StoreBe32(identity, key_id);
	StoreBe32(identity + 4, key_version);

	std::array<std::uint8_t, kCheckValueSize> value{};
	unsigned int length = 0;
	if (HMAC(EVP_sha256(), check_key.data(), static_cast<int>(check_key.size()), identity,
			 sizeof(identity), value.data(), &length) == nullptr ||
		length != kCheckValueSize)
		throw Error(ErrorKind::Internal, "HMAC-SHA-256 failed while computing a key check value");
	return value;
}

// Recomputes the check value and compares it in constant time; any mismatch is false.
bool VerifyKeyCheckValue(ByteView dek, std::uint32_t key_id, std::uint32_t key_version,
						 ByteView stored)
{
	if (dek.size() != kDekSize || stored.size() != kCheckValueSize)
		return false;
	const auto expected = KeyCheckValue(dek, key_id, key_version);
	return CRYPTO_memcmp(expected.data(), stored.data(), kCheckValueSize) == 0;
}

// Derives the working key of the algorithm into locked memory and builds its cipher; the DEK
// is not kept.
KeyMaterial::KeyMaterial(std::uint32_t key_id, std::uint32_t key_version, Algorithm algorithm,
						 ByteView dek)
	: key_id_(key_id), key_version_(key_version), algorithm_(algorithm)
{
	if (dek.size() != kDekSize)
		throw Error(ErrorKind::InvalidArgument, "a data encryption key must be 32 bytes (key " +
													std::to_string(key_id) + " version " +
													std::to_string(key_version) + ")");
	switch (algorithm)
	{
	case Algorithm::Aes256Gcm:
		gcm_ = std::make_unique<GcmCipher>(DeriveKey(dek, kLabelGcm, kGcmKeySize).view());
		return;
	case Algorithm::Aes256Siv:
		siv_ = std::make_unique<SivCipher>(DeriveKey(dek, kLabelSiv, kSivKeySize).view());
		return;
	case Algorithm::BlindIndex:
		blind_index_ = std::make_unique<BlindIndexKey>(
			DeriveKey(dek, kLabelBlindIndex, kBlindIndexKeySize).view());
		return;
	}
	throw Error(ErrorKind::InvalidArgument, "unknown key algorithm");
}

// Reports a request for a cipher of another algorithm than the key's.
[[noreturn]] static void ThrowWrongAlgorithm(Algorithm have, Algorithm want)
{
	throw Error(ErrorKind::Internal, std::string("key material of a ") + AlgorithmName(have) +
										 " key was asked for " + AlgorithmName(want));
}

GcmCipher &KeyMaterial::gcm()
{
	if (!gcm_)
		ThrowWrongAlgorithm(algorithm_, Algorithm::Aes256Gcm);
	return *gcm_;
}

SivCipher &KeyMaterial::siv()
{
	if (!siv_)
		ThrowWrongAlgorithm(algorithm_, Algorithm::Aes256Siv);
	return *siv_;
}

BlindIndexKey &KeyMaterial::blind_index()
{
	if (!blind_index_)
		ThrowWrongAlgorithm(algorithm_, Algorithm::BlindIndex);
	return *blind_index_;
}

// Frees whichever cipher's OpenSSL contexts exist.
void KeyMaterial::ReleaseContexts() noexcept
{
	if (gcm_)
		gcm_->ReleaseContexts();
	if (siv_)
		siv_->ReleaseContexts();
	if (blind_index_)
		blind_index_->ReleaseContexts();
}

// Whether the one working key is locked.
bool KeyMaterial::locked() const noexcept
{
	if (gcm_)
		return gcm_->locked();
	if (siv_)
		return siv_->locked();
	return blind_index_ && blind_index_->locked();
}

} // namespace pgkm::core
