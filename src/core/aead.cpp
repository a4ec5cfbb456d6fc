// AES-256-GCM under one working key, with OpenSSL contexts whose key schedule is set once.
#include "pgkm/core/aead.hpp"

#include "pgkm/core/error.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

namespace pgkm::core
{

namespace
{

inline constexpr std::size_t kGcmKeySize = 32;

// Largest length handed to one OpenSSL update call, which takes an int.
inline constexpr std::size_t kMaxUpdate = std::size_t{1} << 30;

// Reports an OpenSSL failure that is not an authentication failure.
[[noreturn]] void ThrowOpenSsl(const char *step)
{
	throw Error(ErrorKind::Internal, std::string("AES-256-GCM failed in OpenSSL: ") + step);
}

// Feeds input to the context in int-sized pieces; out is nullptr for additional data.
void Update(EVP_CIPHER_CTX *ctx, std::uint8_t *out, ByteView in)
{
	std::size_t done = 0;
	while (done < in.size())
	{
		const std::size_t chunk = std::min(in.size() - done, kMaxUpdate);
		int written = 0;
		if (EVP_CipherUpdate(ctx, out == nullptr ? nullptr : out + done, &written, in.data() + done,
							 static_cast<int>(chunk)) != 1)
			ThrowOpenSsl(out == nullptr ? "additional data" : "update");
		done += chunk;
	}
}

} // namespace

namespace detail
{

// Creates a context with the cipher, the 12-byte IV length and the key schedule set once.
EVP_CIPHER_CTX *GcmNewContext(ByteView key, bool encrypt)
{
	if (key.size() != kGcmKeySize)
		throw Error(ErrorKind::InvalidArgument, "an AES-256-GCM working key must be 32 bytes");

	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	if (ctx == nullptr)
		throw Error(ErrorKind::Internal, "could not allocate an OpenSSL cipher context");

	const int enc = encrypt ? 1 : 0;
	if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), nullptr, nullptr, nullptr, enc) != 1 ||
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, static_cast<int>(kGcmNonceSize),
							nullptr) != 1 ||
		EVP_CipherInit_ex(ctx, nullptr, nullptr, key.data(), nullptr, enc) != 1)
	{
		EVP_CIPHER_CTX_free(ctx);
		ThrowOpenSsl("key setup");
	}
	return ctx;
}

// Frees a context; OpenSSL wipes the key schedule it holds.
void GcmFreeContext(EVP_CIPHER_CTX *ctx) noexcept
{
	EVP_CIPHER_CTX_free(ctx);
}

// Encrypts one message under a fresh nonce, reusing the context's key schedule.
void GcmSealRaw(EVP_CIPHER_CTX *ctx, std::span<const std::uint8_t, kGcmNonceSize> nonce,
				ByteView aad_first, ByteView aad_second, ByteView plaintext,
				std::span<std::uint8_t> ciphertext, std::span<std::uint8_t, kGcmTagSize> tag)
{
	if (ciphertext.size() != plaintext.size())
		throw Error(ErrorKind::Internal, "AES-256-GCM output size does not match the input");

	if (EVP_EncryptInit_ex(ctx, nullptr, nullptr, nullptr, nonce.data()) != 1)
		ThrowOpenSsl("nonce setup");
	Update(ctx, nullptr, aad_first);
	Update(ctx, nullptr, aad_second);
	Update(ctx, ciphertext.data(), plaintext);

	std::uint8_t sink[kGcmTagSize];
	int written = 0;
	if (EVP_EncryptFinal_ex(ctx, sink, &written) != 1)
		ThrowOpenSsl("final");
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag.data(), kGcmTagSize),
		OSSL_PARAM_construct_end(),
	};
	if (EVP_CIPHER_CTX_get_params(ctx, params) != 1)
		ThrowOpenSsl("tag");
}

// Decrypts one message and verifies its tag; wipes the plaintext if the tag is wrong.
bool GcmOpenRaw(EVP_CIPHER_CTX *ctx, std::span<const std::uint8_t, kGcmNonceSize> nonce,
				ByteView aad_first, ByteView aad_second, ByteView ciphertext,
				std::span<const std::uint8_t, kGcmTagSize> tag, std::span<std::uint8_t> plaintext)
{
	if (plaintext.size() != ciphertext.size())
		throw Error(ErrorKind::Internal, "AES-256-GCM output size does not match the input");

	try
	{
		if (EVP_DecryptInit_ex(ctx, nullptr, nullptr, nullptr, nonce.data()) != 1)
			ThrowOpenSsl("nonce setup");
		Update(ctx, nullptr, aad_first);
		Update(ctx, nullptr, aad_second);
		Update(ctx, plaintext.data(), ciphertext);
		OSSL_PARAM params[] = {
			OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG,
											  const_cast<std::uint8_t *>(tag.data()), kGcmTagSize),
			OSSL_PARAM_construct_end(),
		};
		if (EVP_CIPHER_CTX_set_params(ctx, params) != 1)
			ThrowOpenSsl("tag");
	}
	catch (...)
	{
		if (!plaintext.empty())
			OPENSSL_cleanse(plaintext.data(), plaintext.size());
		throw;
	}

	std::uint8_t sink[kGcmTagSize];
	int written = 0;
	if (EVP_DecryptFinal_ex(ctx, sink, &written) != 1)
	{
		if (!plaintext.empty())
			OPENSSL_cleanse(plaintext.data(), plaintext.size());
		return false;
	}
	return true;
}

} // namespace detail

// Keeps the working key in a locked buffer; the contexts are made on first use.
GcmCipher::GcmCipher(ByteView key)
{
	if (key.size() != kGcmKeySize)
		throw Error(ErrorKind::InvalidArgument, "an AES-256-GCM working key must be 32 bytes");
	key_ = SecureBuffer::CopyOf(key);
}

// Frees both contexts and the key schedules they hold; the key buffer wipes itself.
GcmCipher::~GcmCipher()
{
	ReleaseContexts();
}

// Frees both contexts; OpenSSL wipes their key schedules (OPENSSL_clear_free).
void GcmCipher::ReleaseContexts() noexcept
{
	detail::GcmFreeContext(enc_);
	detail::GcmFreeContext(dec_);
	enc_ = nullptr;
	dec_ = nullptr;
}

// Writes header || nonce || ciphertext || tag, authenticating header || context.
void GcmCipher::Seal(const Header &header, std::span<const std::uint8_t, kGcmNonceSize> nonce,
					 ByteView plaintext, ByteView context, std::span<std::uint8_t> out)
{
	if (header.format != kFormatV1 || header.algorithm != Algorithm::Aes256Gcm)
		throw Error(ErrorKind::Internal, "AES-256-GCM was asked to write a header of another kind");
	if (plaintext.size() > SIZE_MAX - kGcmOverhead || out.size() != plaintext.size() + kGcmOverhead)
		throw Error(ErrorKind::Internal, "AES-256-GCM output buffer has the wrong size");

	if (enc_ == nullptr)
		enc_ = detail::GcmNewContext(key_.view(), true);
	const auto header_out = out.first<kHeaderSize>();
	WriteHeader(header, header_out);
	std::memcpy(out.data() + kHeaderSize, nonce.data(), kGcmNonceSize);
	detail::GcmSealRaw(enc_, nonce, header_out, context, plaintext,
					   out.subspan(kHeaderSize + kGcmNonceSize, plaintext.size()),
					   out.last<kGcmTagSize>());
}

// Opens a whole GCM ciphertext, reading the header bytes from it as additional data.
void GcmCipher::Open(ByteView ciphertext, ByteView context, std::span<std::uint8_t> out)
{
	if (ciphertext.size() < kGcmOverhead || ciphertext[0] != kFormatV1 ||
		ciphertext[1] != static_cast<std::uint8_t>(Algorithm::Aes256Gcm))
	{
		ParseHeader(ciphertext);
		throw Error(ErrorKind::Internal,
					"AES-256-GCM was asked to open a ciphertext of another kind");
	}
	const std::size_t body = ciphertext.size() - kGcmOverhead;
	if (out.size() != body)
		throw Error(ErrorKind::Internal, "AES-256-GCM output buffer has the wrong size");
	if (dec_ == nullptr)
		dec_ = detail::GcmNewContext(key_.view(), false);

	const bool ok = detail::GcmOpenRaw(dec_, ciphertext.subspan<kHeaderSize, kGcmNonceSize>(),
									   ciphertext.first<kHeaderSize>(), context,
									   ciphertext.subspan(kHeaderSize + kGcmNonceSize, body),
									   ciphertext.last<kGcmTagSize>(), out);
	if (!ok)
		throw Error(ErrorKind::AuthenticationFailed, "ciphertext authentication failed",
					"The ciphertext was altered, or the context does not match the one used to "
					"encrypt it.");
}

} // namespace pgkm::core
