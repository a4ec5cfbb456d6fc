// Blind indexes: HMAC-SHA-256 through OpenSSL's EVP_MAC, keyed once per context.
#include "pgkm/core/blind_index.hpp"

#include "pgkm/core/error.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include <cstring>

namespace pgkm::core
{

namespace
{

// Reports an OpenSSL failure.
[[noreturn]] void ThrowOpenSsl(const char *step)
{
	throw Error(ErrorKind::Internal, std::string("HMAC-SHA-256 failed in OpenSSL: ") + step);
}

// OpenSSL's HMAC, fetched once per process.
EVP_MAC *HmacAlgorithm()
{
	static EVP_MAC *mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
	if (mac == nullptr)
		ThrowOpenSsl("fetching HMAC");
	return mac;
}

} // namespace

// Keeps the working key in a locked buffer; the context is made on first use.
BlindIndexKey::BlindIndexKey(ByteView key)
{
	if (key.size() != kBlindIndexKeySize)
		throw Error(ErrorKind::InvalidArgument, "a blind-index working key must be 32 bytes");
	key_ = SecureBuffer::CopyOf(key);
}

// Frees the context; the key buffer wipes itself.
BlindIndexKey::~BlindIndexKey()
{
	ReleaseContexts();
}

// Frees the MAC context; OpenSSL wipes the key states it holds.
void BlindIndexKey::ReleaseContexts() noexcept
{
	EVP_MAC_CTX_free(ctx_);
	ctx_ = nullptr;
}

// HMAC-SHA-256 of value; the key is set on the first call and reused (EVP_MAC_init without a
// key restarts the MAC under the key set before).
void BlindIndexKey::Mac(ByteView value, std::span<std::uint8_t, 32> mac)
{
	bool ok;
	if (ctx_ == nullptr)
	{
		ctx_ = EVP_MAC_CTX_new(HmacAlgorithm());
		char digest[] = "SHA256";
		OSSL_PARAM params[] = {
			OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
			OSSL_PARAM_construct_end(),
		};
		ok = ctx_ != nullptr && EVP_MAC_init(ctx_, key_.data(), key_.size(), params) == 1;
		if (!ok)
		{
			ReleaseContexts();
			ThrowOpenSsl("key setup");
		}
	}
	else if (EVP_MAC_init(ctx_, nullptr, 0, nullptr) != 1)
		ThrowOpenSsl("restart");
	std::size_t written = 0;
	if (EVP_MAC_update(ctx_, value.data(), value.size()) != 1 ||
		EVP_MAC_final(ctx_, mac.data(), &written, mac.size()) != 1 || written != mac.size())
		ThrowOpenSsl("update");
}

// Writes header || truncated HMAC.
void BlindIndexKey::Compute(const Header &header, ByteView value, std::span<std::uint8_t> out)
{
	if (header.format != kFormatV1 || header.algorithm != Algorithm::BlindIndex)
		throw Error(ErrorKind::Internal,
					"a blind index was asked to write a header of another kind");
	if (out.size() <= kHeaderSize || out.size() > kHeaderSize + kBlindIndexMaxBytes)
		throw Error(ErrorKind::Internal, "blind index output buffer has the wrong size");
	WriteHeader(header, out.first<kHeaderSize>());
	std::uint8_t mac[32];
	Mac(value, mac);
	std::memcpy(out.data() + kHeaderSize, mac, out.size() - kHeaderSize);
	OPENSSL_cleanse(mac, sizeof(mac));
}

} // namespace pgkm::core
