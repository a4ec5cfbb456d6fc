// libFuzzer target: the ciphertext parser and the AES-256-GCM open path under hostile bytes.
//
// Input layout: ciphertext || context || n, where the last byte n is the context's length
// (clamped to what is there). For every input:
//   1. ParseHeader over the whole input either returns a header that its bytes justify or
//      throws MalformedCiphertext; nothing else.
//   2. The ciphertext part is opened under fixed key material (the DEK of the gcm-* vectors
//      in test/unit/vectors/format-v1.json, so seeds made from them open). A success must be
//      the one plaintext those bytes encrypt: sealing it again with the same nonce gives the
//      input back byte for byte. A failure has the kind its bytes call for, and leaves the
//      output buffer wiped.
//   3. Round trip: the ciphertext part, taken as a plaintext, is sealed under a header and
//      nonce drawn from the input; opening gives it back exactly, and any of a set of single
//      mutations of the sealed bytes (a flipped bit in each field, a byte cut off or added,
//      another context) fails, never yielding other plaintext.
// A broken property aborts with a message, which libFuzzer reports as a crash.
#include "pgkm/core/aead.hpp"
#include "pgkm/core/error.hpp"
#include "pgkm/core/format.hpp"
#include "pgkm/core/key_material.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

namespace
{

using namespace pgkm::core;
using Bytes = std::vector<std::uint8_t>;

// The DEK of the gcm-empty, gcm-1byte, gcm-ssn-ctx and gcm-1000 vectors.
constexpr std::array<std::uint8_t, kDekSize> kDek = {
	0x93, 0x2d, 0xc5, 0x2f, 0x01, 0x16, 0x0f, 0x22, 0x38, 0xb0, 0x76, 0x33, 0xb1, 0x7e, 0x98, 0x46,
	0x2c, 0xe2, 0x0e, 0x92, 0xd8, 0x8b, 0xf1, 0x8b, 0xfb, 0x43, 0x90, 0x11, 0x0f, 0x0b, 0x9e, 0x1a,
};

// Stops the run with a message; libFuzzer saves the input as a crash.
[[noreturn]] void Fail(const char *what)
{
	std::fprintf(stderr, "fuzz_ciphertext: property violated: %s\n", what);
	std::abort();
}

// Checks a property, failing the run when it does not hold.
void Check(bool ok, const char *what)
{
	if (!ok)
		Fail(what);
}

// The key material of the fixed DEK, derived once for the whole run.
KeyMaterial &Material()
{
	static KeyMaterial material(1, 1, Algorithm::Aes256Gcm, ByteView(kDek.data(), kDek.size()));
	return material;
}

// Reads a big-endian 32-bit integer.
std::uint32_t LoadBe32(const std::uint8_t *p)
{
	return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
		   std::uint32_t{p[3]};
}

// FNV-1a over the input: a deterministic source of positions, masks and header fields.
std::uint64_t Hash(ByteView data)
{
	std::uint64_t h = 0xcbf29ce484222325ULL;
	for (std::uint8_t b : data)
		h = (h ^ b) * 0x100000001b3ULL;
	return h;
}

// Says whether every byte of a buffer is zero.
bool AllZero(const Bytes &bytes)
{
	return std::all_of(bytes.begin(), bytes.end(), [](std::uint8_t b) { return b == 0; });
}

// The error kind opening these bytes must give if it fails: what the header calls for.
ErrorKind ExpectedFailure(ByteView ciphertext)
{
	try
	{
		const Header header = ParseHeader(ciphertext);
		if (header.algorithm != Algorithm::Aes256Gcm)
			return ErrorKind::Internal; // GcmCipher refuses another algorithm's ciphertext
		return ErrorKind::AuthenticationFailed;
	}
	catch (const Error &)
	{
		return ErrorKind::MalformedCiphertext;
	}
}

// Opens ciphertext under the fixed material; returns the plaintext, or nullopt with *kind set.
// A failed open must leave the output wiped.
std::optional<Bytes> Open(ByteView ciphertext, ByteView context, ErrorKind *kind)
{
	const std::size_t body =
		ciphertext.size() >= kGcmOverhead ? ciphertext.size() - kGcmOverhead : 0;
	Bytes out(body, 0xa5);
	try
	{
		Material().gcm().Open(ciphertext, context, out);
		return out;
	}
	catch (const Error &error)
	{
		*kind = error.kind();
		if (error.kind() == ErrorKind::AuthenticationFailed)
			Check(AllZero(out), "a failed authentication left bytes in the output");
		else
			Check(std::all_of(out.begin(), out.end(), [](std::uint8_t b) { return b == 0xa5; }) ||
					  AllZero(out),
				  "a refused ciphertext left bytes in the output");
		return std::nullopt;
	}
}

// Step 1: the parser over arbitrary bytes.
void CheckParser(ByteView data)
{
	try
	{
		const Header header = ParseHeader(data);
		Check(data.size() >= kHeaderSize && data[0] == kFormatV1, "parsed a bad format byte");
		Check(data[1] == 0x01 || data[1] == 0x02 || data[1] == 0x03, "parsed an unknown algorithm");
		Check(data[1] != 0x03 || data.size() <= kHeaderSize + kBlindIndexMaxBytes,
			  "parsed a blind index value longer than 32 bytes of HMAC");
		Check(static_cast<std::uint8_t>(header.algorithm) == data[1], "algorithm misread");
		Check(data.size() >= Overhead(header.algorithm), "parsed a ciphertext below its overhead");
		Check(header.key_id == LoadBe32(data.data() + 2), "key id misread");
		Check(header.key_version == LoadBe32(data.data() + 6), "key version misread");

		std::array<std::uint8_t, kHeaderSize> written{};
		WriteHeader(header, written);
		Check(std::equal(written.begin(), written.end(), data.begin()),
			  "header does not round-trip");
	}
	catch (const Error &error)
	{
		Check(error.kind() == ErrorKind::MalformedCiphertext, "parser threw another kind");
		Check(!error.message().empty(), "parser error without a message");
	}
}

// Step 2: opening the ciphertext part under the fixed material.
void CheckOpen(ByteView ciphertext, ByteView context)
{
	ErrorKind kind{};
	const std::optional<Bytes> plain = Open(ciphertext, context, &kind);
	if (!plain)
	{
		Check(kind == ExpectedFailure(ciphertext), "open failed with the wrong kind");
		return;
	}
	// Accepted: the bytes must be the genuine encryption of what came out.
	const Header header = ParseHeader(ciphertext);
	Check(header.algorithm == Algorithm::Aes256Gcm, "opened a non-GCM ciphertext");
	std::array<std::uint8_t, kGcmNonceSize> nonce;
	std::memcpy(nonce.data(), ciphertext.data() + kHeaderSize, kGcmNonceSize);
	Bytes again(plain->size() + kGcmOverhead);
	Material().gcm().Seal(header, nonce, *plain, context, again);
	Check(std::equal(again.begin(), again.end(), ciphertext.begin(), ciphertext.end()),
		  "open accepted bytes that are not the encryption of what it returned");
}

// Opens a mutated ciphertext, which must fail with the kind its bytes call for.
void CheckRefused(const Bytes &mutated, ByteView context, const char *what)
{
	ErrorKind kind{};
	if (Open(mutated, context, &kind))
		Fail(what);
	Check(kind == ExpectedFailure(mutated), "a mutated ciphertext failed with the wrong kind");
}

// Step 3: seal, open, and single mutations of the sealed bytes.
void CheckRoundTrip(ByteView plaintext, ByteView context, std::uint64_t h)
{
	Header header;
	header.key_id = static_cast<std::uint32_t>(h);
	header.key_version = static_cast<std::uint32_t>(h >> 32);
	std::array<std::uint8_t, kGcmNonceSize> nonce;
	for (std::size_t i = 0; i < kGcmNonceSize; i++)
		nonce[i] = static_cast<std::uint8_t>(h >> (8 * (i % 8))) ^ static_cast<std::uint8_t>(i);

	Bytes sealed(plaintext.size() + kGcmOverhead);
	Material().gcm().Seal(header, nonce, plaintext, context, sealed);
	const Header parsed = ParseHeader(sealed);
	Check(parsed.key_id == header.key_id && parsed.key_version == header.key_version &&
			  parsed.algorithm == Algorithm::Aes256Gcm,
		  "sealed header does not parse back");

	ErrorKind kind{};
	const std::optional<Bytes> opened = Open(sealed, context, &kind);
	Check(opened.has_value(), "a sealed value does not open");
	Check(std::equal(opened->begin(), opened->end(), plaintext.begin(), plaintext.end()),
		  "a sealed value opens to other plaintext");

	// One flipped bit in each field: header, nonce, body (if any), tag.
	const auto mask = static_cast<std::uint8_t>(1u << ((h >> 40) % 8));
	const std::size_t body = plaintext.size();
	std::size_t positions[] = {
		(h >> 8) % kHeaderSize,
		kHeaderSize + (h >> 16) % kGcmNonceSize,
		body ? kHeaderSize + kGcmNonceSize + (h >> 24) % body : sealed.size() - 1,
		sealed.size() - kGcmTagSize + (h >> 32) % kGcmTagSize,
	};
	for (std::size_t pos : positions)
	{
		Bytes mutated = sealed;
		mutated[pos] ^= mask;
		CheckRefused(mutated, context, "a ciphertext with a flipped bit opened");
	}

	// A byte cut off, a byte added, the tag moved into the body.
	Bytes shorter(sealed.begin(), sealed.end() - 1);
	CheckRefused(shorter, context, "a truncated ciphertext opened");
	Bytes longer = sealed;
	longer.push_back(static_cast<std::uint8_t>(h));
	CheckRefused(longer, context, "an extended ciphertext opened");

	// Another context: one byte more, and (if there is one) one byte less.
	Bytes other(context.begin(), context.end());
	other.push_back(static_cast<std::uint8_t>(h >> 48));
	CheckRefused(sealed, other, "a ciphertext opened under a longer context");
	if (!context.empty())
	{
		ErrorKind k{};
		Check(!Open(sealed, context.first(context.size() - 1), &k).has_value(),
			  "a ciphertext opened under a shorter context");
		Check(k == ErrorKind::AuthenticationFailed, "a wrong context failed with the wrong kind");
	}
}

} // namespace

// libFuzzer's entry point: runs the three steps on one input.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size)
{
	const ByteView input(data, size);
	CheckParser(input);

	std::size_t context_len = 0;
	ByteView rest = input;
	if (!rest.empty())
	{
		context_len = std::min<std::size_t>(rest.back(), rest.size() - 1);
		rest = rest.first(rest.size() - 1);
	}
	const ByteView ciphertext = rest.first(rest.size() - context_len);
	const ByteView context = rest.last(context_len);

	CheckOpen(ciphertext, context);
	CheckRoundTrip(ciphertext, context, Hash(input));
	return 0;
}
