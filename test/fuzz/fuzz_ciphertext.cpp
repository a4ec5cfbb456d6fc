// libFuzzer target: the ciphertext parser, the AES-256-GCM and AES-256-SIV open paths and
// blind index values under hostile bytes.
//
// Input layout: ciphertext || context || n, where the last byte n is the context's length
// (clamped to what is there). For every input:
//   1. ParseHeader over the whole input either returns a header that its bytes justify (format
//      1; algorithm 0x01 with at least 38 bytes, 0x02 with at least 26, 0x03 with 11 to 42)
//      or throws MalformedCiphertext; nothing else.
//   2. The ciphertext part is opened under fixed key material, once as GCM and once as SIV
//      (the DEK of the gcm-empty, gcm-ssn-ctx, siv-email and bidx-0 vectors in
//      test/unit/vectors/format-v1.json, so seeds made from them open). A success must be the
//      one plaintext those bytes encrypt: sealing it again (with the same nonce for GCM)
//      gives the input back byte for byte. A failure has the kind its bytes call for
//      (malformed, another algorithm's value, or not authentic), and leaves the output wiped.
//   3. A ciphertext part that parses as a blind index value is recomputed as the blind index
//      of the context under the same header and length: the header comes back unchanged and
//      the rest is the HMAC's prefix; a length the parser refuses is refused by the MAC too.
//   4. Round trip: the ciphertext part, taken as a plaintext, is sealed under a header (and a
//      GCM nonce) drawn from the input, with GCM and with SIV; opening gives it back exactly,
//      SIV sealing is deterministic, the other cipher refuses it, and any of a set of single
//      mutations of the sealed bytes (a flipped bit in each field, a byte cut off or added,
//      another context) fails, never yielding other plaintext.
// A broken property aborts with a message, which libFuzzer reports as a crash.
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
#include <optional>
#include <vector>

namespace
{

using namespace pgkm::core;
using Bytes = std::vector<std::uint8_t>;

// The DEK of the gcm-empty, gcm-1byte, gcm-ssn-ctx, gcm-1000, siv-email and bidx-0 vectors.
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

// The key material of the fixed DEK for one algorithm, derived once for the whole run.
KeyMaterial &Material(Algorithm algorithm)
{
	static KeyMaterial gcm(1, 1, Algorithm::Aes256Gcm, ByteView(kDek.data(), kDek.size()));
	static KeyMaterial siv(1, 1, Algorithm::Aes256Siv, ByteView(kDek.data(), kDek.size()));
	static KeyMaterial blind(1, 1, Algorithm::BlindIndex, ByteView(kDek.data(), kDek.size()));
	return algorithm == Algorithm::Aes256Gcm   ? gcm
		   : algorithm == Algorithm::Aes256Siv ? siv
											   : blind;
}

// The fixed overhead of a cipher's values: header, nonce or synthetic IV, and tag.
std::size_t CipherOverhead(Algorithm cipher)
{
	return cipher == Algorithm::Aes256Siv ? kSivOverhead : kGcmOverhead;
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

// The error kind opening these bytes with a cipher must give if it fails: what the header
// calls for.
ErrorKind ExpectedFailure(ByteView ciphertext, Algorithm cipher)
{
	try
	{
		const Header header = ParseHeader(ciphertext);
		if (header.algorithm != cipher)
			return ErrorKind::Internal; // a cipher refuses another algorithm's value
		return ErrorKind::AuthenticationFailed;
	}
	catch (const Error &)
	{
		return ErrorKind::MalformedCiphertext;
	}
}

// Opens ciphertext with a cipher (GCM or SIV) under the fixed material; returns the
// plaintext, or nullopt with *kind set. A failed open must leave the output wiped.
std::optional<Bytes> Open(ByteView ciphertext, ByteView context, Algorithm cipher, ErrorKind *kind)
{
	const std::size_t overhead = CipherOverhead(cipher);
	const std::size_t body = ciphertext.size() >= overhead ? ciphertext.size() - overhead : 0;
	Bytes out(body, 0xa5);
	try
	{
		if (cipher == Algorithm::Aes256Siv)
			Material(cipher).siv().Open(ciphertext, context, out);
		else
			Material(cipher).gcm().Open(ciphertext, context, out);
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
		Check(static_cast<std::uint8_t>(header.algorithm) == data[1], "algorithm misread");
		const std::size_t minimum = data[1] == 0x01 ? 38 : data[1] == 0x02 ? 26 : 11;
		Check(data.size() >= minimum && Overhead(header.algorithm) == minimum,
			  "parsed a ciphertext below its overhead");
		Check(data[1] != 0x03 || data.size() <= 42, "parsed a blind index value over 42 bytes");
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

// Step 2: opening the ciphertext part under the fixed material with one cipher.
void CheckOpen(ByteView ciphertext, ByteView context, Algorithm cipher)
{
	ErrorKind kind{};
	const std::optional<Bytes> plain = Open(ciphertext, context, cipher, &kind);
	if (!plain)
	{
		Check(kind == ExpectedFailure(ciphertext, cipher), "open failed with the wrong kind");
		return;
	}
	// Accepted: the bytes must be the genuine encryption of what came out.
	const Header header = ParseHeader(ciphertext);
	Check(header.algorithm == cipher, "opened another algorithm's value");
	Bytes again(plain->size() + CipherOverhead(cipher));
	if (cipher == Algorithm::Aes256Siv)
		Material(cipher).siv().Seal(header, *plain, context, again);
	else
	{
		std::array<std::uint8_t, kGcmNonceSize> nonce;
		std::memcpy(nonce.data(), ciphertext.data() + kHeaderSize, kGcmNonceSize);
		Material(cipher).gcm().Seal(header, nonce, *plain, context, again);
	}
	Check(std::equal(again.begin(), again.end(), ciphertext.begin(), ciphertext.end()),
		  "open accepted bytes that are not the encryption of what it returned");
}

// Step 3: a blind index value, recomputed as the blind index of the context.
void CheckBlindIndex(ByteView value, ByteView context)
{
	if (value.size() < kHeaderSize || value[0] != kFormatV1 || value[1] != 0x03)
		return;
	Header header;
	header.algorithm = Algorithm::BlindIndex;
	header.key_id = LoadBe32(value.data() + 2);
	header.key_version = LoadBe32(value.data() + 6);
	bool parses = true;
	try
	{
		ParseHeader(value);
	}
	catch (const Error &)
	{
		parses = false;
	}
	Bytes out(value.size());
	try
	{
		Material(Algorithm::BlindIndex).blind_index().Compute(header, context, out);
	}
	catch (const Error &error)
	{
		Check(!parses && error.kind() == ErrorKind::Internal,
			  "a blind index of a length the parser accepts was refused");
		return;
	}
	Check(parses, "a blind index of a length the parser refuses was computed");
	Check(std::equal(out.begin(), out.begin() + kHeaderSize, value.begin()),
		  "a blind index header does not round-trip");
	std::array<std::uint8_t, 32> mac;
	Material(Algorithm::BlindIndex).blind_index().Mac(context, mac);
	Check(std::equal(out.begin() + kHeaderSize, out.end(), mac.begin()),
		  "a blind index is not the prefix of the HMAC");
}

// Opens a mutated ciphertext, which must fail with the kind its bytes call for.
void CheckRefused(const Bytes &mutated, ByteView context, Algorithm cipher, const char *what)
{
	ErrorKind kind{};
	if (Open(mutated, context, cipher, &kind))
		Fail(what);
	Check(kind == ExpectedFailure(mutated, cipher),
		  "a mutated ciphertext failed with the wrong kind");
}

// Seals plaintext with a cipher under header (and nonce, for GCM) into a new buffer.
Bytes Seal(Algorithm cipher, const Header &header,
		   const std::array<std::uint8_t, kGcmNonceSize> &nonce, ByteView plaintext,
		   ByteView context)
{
	Bytes sealed(plaintext.size() + CipherOverhead(cipher));
	if (cipher == Algorithm::Aes256Siv)
		Material(cipher).siv().Seal(header, plaintext, context, sealed);
	else
		Material(cipher).gcm().Seal(header, nonce, plaintext, context, sealed);
	return sealed;
}

// Step 4: seal with one cipher, open, and single mutations of the sealed bytes.
void CheckRoundTrip(ByteView plaintext, ByteView context, std::uint64_t h, Algorithm cipher)
{
	Header header;
	header.algorithm = cipher;
	header.key_id = static_cast<std::uint32_t>(h);
	header.key_version = static_cast<std::uint32_t>(h >> 32);
	std::array<std::uint8_t, kGcmNonceSize> nonce;
	for (std::size_t i = 0; i < kGcmNonceSize; i++)
		nonce[i] = static_cast<std::uint8_t>(h >> (8 * (i % 8))) ^ static_cast<std::uint8_t>(i);

	const Bytes sealed = Seal(cipher, header, nonce, plaintext, context);
	const Header parsed = ParseHeader(sealed);
	Check(parsed.key_id == header.key_id && parsed.key_version == header.key_version &&
			  parsed.algorithm == cipher,
		  "sealed header does not parse back");
	if (cipher == Algorithm::Aes256Siv)
		Check(Seal(cipher, header, nonce, plaintext, context) == sealed,
			  "AES-256-SIV sealed the same input to other bytes");

	ErrorKind kind{};
	const std::optional<Bytes> opened = Open(sealed, context, cipher, &kind);
	Check(opened.has_value(), "a sealed value does not open");
	Check(std::equal(opened->begin(), opened->end(), plaintext.begin(), plaintext.end()),
		  "a sealed value opens to other plaintext");
	// The other cipher refuses it as another algorithm's value.
	const Algorithm other_cipher =
		cipher == Algorithm::Aes256Siv ? Algorithm::Aes256Gcm : Algorithm::Aes256Siv;
	CheckRefused(sealed, context, other_cipher, "a value opened with the other cipher");

	// One flipped bit in each field: header, nonce or synthetic IV, body (if any), GCM tag.
	const auto mask = static_cast<std::uint8_t>(1u << ((h >> 40) % 8));
	const std::size_t body = plaintext.size();
	const bool siv = cipher == Algorithm::Aes256Siv;
	const std::size_t body_at = siv ? kSivOverhead : kHeaderSize + kGcmNonceSize;
	std::size_t positions[] = {
		(h >> 8) % kHeaderSize,
		kHeaderSize + (h >> 16) % (siv ? kSivIvSize : kGcmNonceSize),
		body ? body_at + (h >> 24) % body : sealed.size() - 1,
		siv ? kHeaderSize + (h >> 32) % kSivIvSize
			: sealed.size() - kGcmTagSize + (h >> 32) % kGcmTagSize,
	};
	for (std::size_t pos : positions)
	{
		Bytes mutated = sealed;
		mutated[pos] ^= mask;
		CheckRefused(mutated, context, cipher, "a ciphertext with a flipped bit opened");
	}

	// A byte cut off, a byte added.
	Bytes shorter(sealed.begin(), sealed.end() - 1);
	CheckRefused(shorter, context, cipher, "a truncated ciphertext opened");
	Bytes longer = sealed;
	longer.push_back(static_cast<std::uint8_t>(h));
	CheckRefused(longer, context, cipher, "an extended ciphertext opened");

	// Another context: one byte more, and (if there is one) one byte less.
	Bytes other(context.begin(), context.end());
	other.push_back(static_cast<std::uint8_t>(h >> 48));
	CheckRefused(sealed, other, cipher, "a ciphertext opened under a longer context");
	if (!context.empty())
	{
		ErrorKind k{};
		Check(!Open(sealed, context.first(context.size() - 1), cipher, &k).has_value(),
			  "a ciphertext opened under a shorter context");
		Check(k == ErrorKind::AuthenticationFailed, "a wrong context failed with the wrong kind");
	}
}

} // namespace

// libFuzzer's entry point: runs the four steps on one input.
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

	CheckOpen(ciphertext, context, Algorithm::Aes256Gcm);
	CheckOpen(ciphertext, context, Algorithm::Aes256Siv);
	CheckBlindIndex(ciphertext, context);
	const std::uint64_t h = Hash(input);
	CheckRoundTrip(ciphertext, context, h, Algorithm::Aes256Gcm);
	CheckRoundTrip(ciphertext, context, h, Algorithm::Aes256Siv);
	return 0;
}
