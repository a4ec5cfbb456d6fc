// The AEAD calls of the data path, shared by pgkm_encrypt, pgkm_decrypt and pgkm_rewrap:
// reading ciphertext arguments, sealing under a cached key version, opening into a buffer.
#pragma once

#include "pgkm/core/format.hpp"

#include <cstdint>
#include <span>

#include "pgkm/pg/key_cache.hpp"

namespace pgkm::pg
{

// Returns the bytes of a non-null varlena.
core::ByteView Bytes(const bytea *value);

// Returns the bytes of argument arg, or an empty view when it is NULL or absent.
core::ByteView OptionalBytes(FunctionCallInfo fcinfo, int arg);

// Parses a ciphertext's header, raising invalid_binary_representation when malformed.
core::Header ParseOrReport(core::ByteView ciphertext);

// Returns the header of argument 0, a non-null ciphertext. A value stored out of line or
// compressed is read only up to the longest fixed overhead, not detoasted whole: parsing
// those bytes gives the same answer as parsing the whole value.
core::Header HeaderOfArgument(FunctionCallInfo fcinfo);

// Raises feature_not_supported unless the ciphertext is AES-256-GCM, the one algorithm this
// version decrypts.
void RequireGcm(const core::Header &header);

// Returns the length of the ciphertext of a plain_len-byte plaintext. Raises
// program_limit_exceeded when it would not fit in one PostgreSQL value (1 GB with its
// header), before anything is allocated for it.
std::size_t CiphertextSize(std::size_t plain_len);

// Encrypts plain under v (a key's active version, from KeyForEncrypt or KeyForEncryptById)
// with a fresh random nonce into out, exactly CiphertextSize(plain.size()) bytes, and counts
// the encryption. plain may be out's own body (from offset kHeaderSize + kGcmNonceSize):
// the value is then sealed in place.
void SealTo(VersionEntry *v, core::ByteView plain, core::ByteView context,
			std::span<std::uint8_t> out);

// Encrypts plain like SealTo into a new palloc'd ciphertext.
bytea *SealInto(VersionEntry *v, core::ByteView plain, core::ByteView context);

// Decrypts a ciphertext of version v (its header parsed) into out, which must hold exactly
// ciphertext.size() - kGcmOverhead bytes. Raises data_exception naming the key and version
// when authentication fails; out is wiped then.
void OpenInto(VersionEntry *v, core::ByteView ciphertext, core::ByteView context,
			  std::span<std::uint8_t> out);

} // namespace pgkm::pg
