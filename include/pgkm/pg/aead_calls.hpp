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

// Raises feature_not_supported unless the ciphertext is AES-256-GCM, the one algorithm this
// version decrypts.
void RequireGcm(const core::Header &header);

// Encrypts plain under v (a key's active version, from KeyForEncrypt or KeyForEncryptById)
// with a fresh random nonce into a new palloc'd ciphertext, and counts the encryption.
bytea *SealInto(VersionEntry *v, core::ByteView plain, core::ByteView context);

// Decrypts a ciphertext of version v (its header parsed) into out, which must hold exactly
// ciphertext.size() - kGcmOverhead bytes. Raises data_exception naming the key and version
// when authentication fails; out is wiped then.
void OpenInto(VersionEntry *v, core::ByteView ciphertext, core::ByteView context,
			  std::span<std::uint8_t> out);

} // namespace pgkm::pg
