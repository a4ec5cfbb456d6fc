// libFuzzer target: the key material derived from a DEK, and the key check value that binds a
// wrapped DEK to its identity, under hostile bytes (a token can return any length, and the
// stored check value comes from a catalog table a superuser can write).
//
// Input layout: dek_len (1 byte) || dek || stored check value || identity (8 bytes at the end).
//   - KeyMaterial accepts exactly 32-byte DEKs and throws InvalidArgument for any other length;
//     KeyCheckValue likewise.
//   - VerifyKeyCheckValue is true for the DEK's own check value and identity, and false for a
//     stored value taken from the input unless it is that value byte for byte, for another
//     identity, and for a check value with one bit flipped.
//   - A 32-byte DEK seals and opens under its own material, GCM and SIV; another DEK's
//     material (the DEK with one bit flipped) refuses the ciphertext with AuthenticationFailed
//     and gives another blind index. Material of one algorithm refuses (Internal) to serve
//     another, so that no key's working key serves two algorithms.
#include "pgkm/core/aead.hpp"
#include "pgkm/core/blind_index.hpp"
#include "pgkm/core/error.hpp"
#include "pgkm/core/format.hpp"
#include "pgkm/core/key_material.hpp"
#include "pgkm/core/siv.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace
{

using namespace pgkm::core;
using Bytes = std::vector<std::uint8_t>;

// Stops the run with a message; libFuzzer saves the input as a crash.
[[noreturn]] void Fail(const char *what)
{
	std::fprintf(stderr, "fuzz_key_material: property violated: %s\n", what);
	std::abort();
}

// Checks a property, failing the run when it does not hold.
void Check(bool ok, const char *what)
{
	if (!ok)
		Fail(what);
}

// Reads a big-endian 32-bit integer.
std::uint32_t LoadBe32(const std::uint8_t *p)
{
	return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
		   std::uint32_t{p[3]};
}

// Says whether a call throws a core Error of the given kind (and nothing else).
template <typename Fn> bool Throws(ErrorKind kind, Fn &&fn)
{
	try
	{
		fn();
	}
	catch (const Error &error)
	{
		return error.kind() == kind;
	}
	return false;
}

// A DEK of the wrong length is refused everywhere it can enter.
void CheckWrongLength(ByteView dek, std::uint32_t key_id, std::uint32_t version, ByteView stored)
{
	for (Algorithm algorithm : {Algorithm::Aes256Gcm, Algorithm::Aes256Siv, Algorithm::BlindIndex})
		Check(Throws(ErrorKind::InvalidArgument,
					 [&] { KeyMaterial material(key_id, version, algorithm, dek); }),
			  "key material accepted a DEK that is not 32 bytes");
	Check(Throws(ErrorKind::InvalidArgument, [&] { KeyCheckValue(dek, key_id, version); }),
		  "a key check value was computed for a DEK that is not 32 bytes");
	Check(!VerifyKeyCheckValue(dek, key_id, version, stored),
		  "a DEK that is not 32 bytes passed the key check");
}

// A 32-byte DEK: check values bind it to its identity; its material seals and opens.
void CheckDek(ByteView dek, std::uint32_t key_id, std::uint32_t version, ByteView stored,
			  ByteView plaintext)
{
	const auto own = KeyCheckValue(dek, key_id, version);
	Check(VerifyKeyCheckValue(dek, key_id, version, own), "a DEK fails its own key check");
	const bool same =
		stored.size() == own.size() && std::equal(own.begin(), own.end(), stored.begin());
	Check(VerifyKeyCheckValue(dek, key_id, version, stored) == same,
		  "a stored check value other than the DEK's own passed");
	Check(!VerifyKeyCheckValue(dek, key_id ^ 1, version, own),
		  "a check value passed for another key id");
	Check(!VerifyKeyCheckValue(dek, key_id, version ^ 0x80000000u, own),
		  "a check value passed for another version");
	auto flipped = own;
	flipped[key_id % flipped.size()] ^= 0x01;
	Check(!VerifyKeyCheckValue(dek, key_id, version, flipped), "a flipped check value passed");

	KeyMaterial material(key_id, version, Algorithm::Aes256Gcm, dek);
	Check(material.key_id() == key_id && material.key_version() == version, "identity not kept");
	Header header;
	header.key_id = key_id;
	header.key_version = version;
	std::array<std::uint8_t, kGcmNonceSize> nonce{};
	std::copy_n(dek.begin(), kGcmNonceSize, nonce.begin());
	Bytes sealed(plaintext.size() + kGcmOverhead);
	material.gcm().Seal(header, nonce, plaintext, {}, sealed);
	Bytes opened(plaintext.size());
	material.gcm().Open(sealed, {}, opened);
	Check(std::equal(opened.begin(), opened.end(), plaintext.begin(), plaintext.end()),
		  "a DEK's own material opens to other plaintext");

	Bytes other_dek(dek.begin(), dek.end());
	other_dek[version % other_dek.size()] ^= 0x40;
	KeyMaterial other(key_id, version, Algorithm::Aes256Gcm, other_dek);
	Check(!VerifyKeyCheckValue(other_dek, key_id, version, own),
		  "another DEK passed this DEK's key check");
	Check(Throws(ErrorKind::AuthenticationFailed, [&] { other.gcm().Open(sealed, {}, opened); }),
		  "another DEK's material opened the ciphertext");

	// AES-256-SIV and blind indexes under the DEK and under the other DEK.
	KeyMaterial siv(key_id, version, Algorithm::Aes256Siv, dek);
	KeyMaterial other_siv(key_id, version, Algorithm::Aes256Siv, other_dek);
	header.algorithm = Algorithm::Aes256Siv;
	Bytes siv_sealed(plaintext.size() + kSivOverhead);
	siv.siv().Seal(header, plaintext, {}, siv_sealed);
	siv.siv().Open(siv_sealed, {}, opened);
	Check(std::equal(opened.begin(), opened.end(), plaintext.begin(), plaintext.end()),
		  "a DEK's own SIV material opens to other plaintext");
	Check(Throws(ErrorKind::AuthenticationFailed,
				 [&] { other_siv.siv().Open(siv_sealed, {}, opened); }),
		  "another DEK's SIV material opened the ciphertext");
	KeyMaterial blind(key_id, version, Algorithm::BlindIndex, dek);
	KeyMaterial other_blind(key_id, version, Algorithm::BlindIndex, other_dek);
	std::array<std::uint8_t, 32> mac, other_mac;
	blind.blind_index().Mac(plaintext, mac);
	other_blind.blind_index().Mac(plaintext, other_mac);
	Check(mac != other_mac, "another DEK gave the same blind index");

	// Each material serves its own algorithm only.
	Check(Throws(ErrorKind::Internal, [&] { material.siv(); }) &&
			  Throws(ErrorKind::Internal, [&] { material.blind_index(); }) &&
			  Throws(ErrorKind::Internal, [&] { siv.gcm(); }) &&
			  Throws(ErrorKind::Internal, [&] { siv.blind_index(); }) &&
			  Throws(ErrorKind::Internal, [&] { blind.gcm(); }) &&
			  Throws(ErrorKind::Internal, [&] { blind.siv(); }),
		  "key material served another algorithm");
}

} // namespace

// libFuzzer's entry point.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size)
{
	if (size < 1 + 8)
		return 0;
	const ByteView input(data, size);
	const std::uint32_t key_id = LoadBe32(data + size - 8);
	const std::uint32_t version = LoadBe32(data + size - 4);
	const ByteView body = input.subspan(1, size - 1 - 8);
	const std::size_t dek_len = std::min<std::size_t>(data[0], body.size());
	const ByteView dek = body.first(dek_len);
	const ByteView stored = body.subspan(dek_len);

	if (dek.size() != kDekSize)
		CheckWrongLength(dek, key_id, version, stored);
	else
		CheckDek(dek, key_id, version, stored, stored);
	return 0;
}
