// AES-256-SIV (RFC 5297) under one 64-byte working key: deterministic authenticated
// encryption, the same plaintext, header and context giving the same ciphertext.
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

inline constexpr std::size_t kSivKeySize = 64;

class SivCipher
{
  public:
	// Copies a 64-byte working key (derived with HKDF, never the DEK) into a locked buffer.
	// Throws Error(InvalidArgument) for another size.
	explicit SivCipher(ByteView key);
	~SivCipher();
	SivCipher(const SivCipher &) = delete;
	SivCipher &operator=(const SivCipher &) = delete;

	// Writes header || synthetic IV || ciphertext into out, exactly plaintext.size() +
	// kSivOverhead bytes, with one associated-data component: header || context. plaintext
	// may be out's own body (out.subspan(kSivOverhead)), which is then encrypted in place; it
	// must not overlap out in any other way.
	void Seal(const Header &header, ByteView plaintext, ByteView context,
			  std::span<std::uint8_t> out);

	// Opens a whole format-v1 SIV ciphertext (header included, parsed by the caller) into out,
	// exactly ciphertext.size() - kSivOverhead bytes. Throws Error(AuthenticationFailed) when
	// the synthetic IV does not verify; out is then wiped.
	void Open(ByteView ciphertext, ByteView context, std::span<std::uint8_t> out);

	// Frees the keyed OpenSSL context (its CMAC and AES key schedules live in OpenSSL's
	// ordinary heap); the next Seal or Open sets it up again from the locked key.
	void ReleaseContexts() noexcept;

	// Whether the keyed OpenSSL context exists now.
	bool HasContexts() const noexcept { return work_ != nullptr; }

	// Whether the working key's buffer is locked in memory.
	bool locked() const noexcept { return key_.locked(); }

  private:
	// Computes the synthetic IV of an empty plaintext, which OpenSSL 3.0's EVP interface
	// cannot (NOTES.md): RFC 5297's S2V over CMAC.
	void EmptyIv(ByteView associated, std::span<std::uint8_t, kSivIvSize> iv);

	// Returns a context for one message: a copy of the keyed context of that direction.
	EVP_CIPHER_CTX *Start(bool encrypt);

	SecureBuffer key_;
	EVP_CIPHER_CTX *keyed_[2] = {nullptr, nullptr}; // decrypt, encrypt: key set once
	EVP_CIPHER_CTX *work_ = nullptr;
};

} // namespace pgkm::core
