// The AEAD calls of the data path, shared by pgkm_encrypt, pgkm_decrypt and pgkm_rewrap:
// reading ciphertext arguments, sealing under a cached key version, opening into a buffer.
#pragma once

#include "pgkm/core/format.hpp"

#include <cstdint>
#include <span>

#include "pgkm/pg/key_cache.hpp"

namespace pgkm::pg
{

// Returns nonce for the audit of a use of v when v is an AES-256-GCM key, otherwise nullptr:
// a deterministic value's synthetic IV would show the audit log which rows hold equal values.
inline const std::uint8_t *NonceOf(const VersionEntry *v, const std::uint8_t *nonce)
{
	return v->algorithm == core::Algorithm::Aes256Gcm ? nonce : nullptr;
}

// A plaintext buffer in a memory context that wipes it before its memory is released.
struct PlainBuffer
{
	std::uint8_t *data; // set by the caller once allocated in the context; nullptr: nothing
	std::size_t len;
};

// Creates a child of CurrentMemoryContext ("pgkm plaintext") with an empty PlainBuffer (*plain)
// whose bytes are wiped when the context is reset or deleted, on success and on error alike
// (pgkm_rewrap, pgkm_blind_index_rebuild).
MemoryContext WipingContext(PlainBuffer **plain);

// Returns the bytes of a non-null varlena.
core::ByteView Bytes(const bytea *value);

// Returns the bytes of argument arg, or an empty view when it is NULL or absent.
core::ByteView OptionalBytes(FunctionCallInfo fcinfo, int arg);

// Parses a ciphertext's header, raising invalid_binary_representation when malformed.
core::Header ParseOrReport(core::ByteView ciphertext);

// Returns the header of argument 0, a non-null ciphertext. A value stored out of line or
// compressed is read only up to the longest fixed length checked, not detoasted whole: parsing
// those bytes gives the same answer as parsing the whole value.
core::Header HeaderOfArgument(FunctionCallInfo fcinfo);

// Raises invalid_parameter_value when the value is a blind index, which is a keyed hash and
// cannot be decrypted (every other algorithm ParseHeader accepts can).
void RequireDecryptable(const core::Header &header);

// Raises data_exception when a ciphertext's header names another algorithm than its key's
// (the header was altered: authentication would fail).
void RequireKeyOfHeader(const core::Header &header, const VersionEntry *v);

// Returns where the encrypted bytes of a ciphertext of this algorithm begin.
std::size_t BodyOffset(core::Algorithm algorithm);

// Returns the length of the ciphertext of a plain_len-byte plaintext under the algorithm
// (AES-256-GCM or AES-256-SIV). Raises program_limit_exceeded when it would not fit in one
// PostgreSQL value (1 GB with its header), before anything is allocated for it.
std::size_t CiphertextSize(std::size_t plain_len,
						   core::Algorithm algorithm = core::Algorithm::Aes256Gcm);

// Encrypts plain under v (a key's active version, from KeyForEncrypt, KeyForEncryptById or
// KeyForLookup) into out, exactly CiphertextSize(plain.size(), v->algorithm) bytes: AES-256-GCM
// with a fresh random nonce (the encryption is counted), or AES-256-SIV, deterministic. plain
// may be out's own body (from BodyOffset): the value is then sealed in place.
void SealTo(VersionEntry *v, core::ByteView plain, core::ByteView context,
			std::span<std::uint8_t> out);

// Computes the blind index of plain under v (a blind-index key version) into a new palloc'd
// value: the header and the key's number of HMAC bytes.
bytea *BlindIndexInto(VersionEntry *v, core::ByteView plain);

// Encrypts plain like SealTo into a new palloc'd ciphertext.
bytea *SealInto(VersionEntry *v, core::ByteView plain, core::ByteView context);

// Decrypts a ciphertext of version v (its header parsed and matching v's algorithm) into out,
// which must hold exactly ciphertext.size() - Overhead(algorithm) bytes. Raises data_exception
// naming the key and version when authentication fails; out is wiped then.
void OpenInto(VersionEntry *v, core::ByteView ciphertext, core::ByteView context,
			  std::span<std::uint8_t> out);

} // namespace pgkm::pg
