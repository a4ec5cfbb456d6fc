// AES-256-GCM under one working key, with OpenSSL contexts whose key schedule is set once
// and released on request (the key itself stays in locked memory).
#pragma once

#include "pgkm/core/format.hpp"
#include "pgkm/core/pure.hpp"
#include "pgkm/core/secure_buffer.hpp"

#include <cstddef>
#include <cstdint>
#include <span>

typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;

namespace pgkm::core
{

class GcmCipher
{
  public:
	// Copies a 32-byte working key (already derived with HKDF; never the DEK itself) into a
	// locked buffer. Throws Error(InvalidArgument) for another size.
	explicit GcmCipher(ByteView key);
	~GcmCipher();
	GcmCipher(const GcmCipher &) = delete;
	GcmCipher &operator=(const GcmCipher &) = delete;

	// Writes header || nonce || ciphertext || tag into out, which must be exactly
	// plaintext.size() + kGcmOverhead bytes. Additional data = header || context. plaintext
	// may be out's own body (out.subspan(kHeaderSize + kGcmNonceSize, plaintext.size())),
	// which is then encrypted in place; it must not overlap out in any other way.
	void Seal(const Header &header, std::span<const std::uint8_t, kGcmNonceSize> nonce,
			  ByteView plaintext, ByteView context, std::span<std::uint8_t> out);

	// Opens a whole format-v1 GCM ciphertext (header included) into out, which must be
	// exactly ciphertext.size() - kGcmOverhead bytes. The header must already have been
	// parsed by the caller (ParseHeader) to choose this cipher. Throws
	// Error(AuthenticationFailed) when the tag does not verify; out is then wiped.
	void Open(ByteView ciphertext, ByteView context, std::span<std::uint8_t> out);

	// Frees the OpenSSL contexts. Their expanded key schedules live in OpenSSL's ordinary heap
	// (not locked, dumped with the process; wiped when freed), so a caller releases them when
	// the cipher goes idle; the next Seal or Open sets them up again from the locked key.
	void ReleaseContexts() noexcept;

	// Whether an OpenSSL context (and with it a key schedule) exists now.
	bool HasContexts() const noexcept { return enc_ != nullptr || dec_ != nullptr; }

	// Whether the working key's buffer is locked in memory (mlock succeeded).
	bool locked() const noexcept { return key_.locked(); }

  private:
	SecureBuffer key_;
	EVP_CIPHER_CTX *enc_ = nullptr;
	EVP_CIPHER_CTX *dec_ = nullptr;
};

// The raw AES-256-GCM steps that GcmCipher is built from, exposed so that the unit tests
// can check them against NIST's vectors. Not for use outside the core.
namespace detail
{

// Creates a context for encryption or decryption with the 32-byte key schedule set once
// and a 12-byte IV length. Throws Error(InvalidArgument) for a wrong key size and
// Error(Internal) when OpenSSL fails. Free it with GcmFreeContext.
EVP_CIPHER_CTX *GcmNewContext(ByteView key, bool encrypt);

// Frees a context made by GcmNewContext (nullptr is allowed).
void GcmFreeContext(EVP_CIPHER_CTX *ctx) noexcept;

// Encrypts plaintext into ciphertext (same size) under nonce, authenticating
// aad_first || aad_second, and writes the tag. Throws Error(Internal) when OpenSSL fails.
void GcmSealRaw(EVP_CIPHER_CTX *ctx, std::span<const std::uint8_t, kGcmNonceSize> nonce,
				ByteView aad_first, ByteView aad_second, ByteView plaintext,
				std::span<std::uint8_t> ciphertext, std::span<std::uint8_t, kGcmTagSize> tag);

// Decrypts ciphertext into plaintext (same size) and checks the tag over
// aad_first || aad_second. Returns false, with plaintext wiped, when the tag does not verify.
bool GcmOpenRaw(EVP_CIPHER_CTX *ctx, std::span<const std::uint8_t, kGcmNonceSize> nonce,
				ByteView aad_first, ByteView aad_second, ByteView ciphertext,
				std::span<const std::uint8_t, kGcmTagSize> tag, std::span<std::uint8_t> plaintext);

} // namespace detail

} // namespace pgkm::core
