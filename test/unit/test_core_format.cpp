// Unit tests of ciphertext format v1: round trips, header fields, and every malformed input.
#include "pgkm/core/aead.hpp"
#include "pgkm/core/error.hpp"
#include "pgkm/core/format.hpp"
#include "pgkm/core/nonce_pool.hpp"
#include "pgkm/core/secure_buffer.hpp"
#include "test_core_util.hpp"

#include <gtest/gtest.h>

#include <array>
#include <string>

namespace pgkm::core
{
namespace
{

using test::Bytes;
using test::FromHex;
using test::FromText;

// Returns the kind and message of the core::Error that f throws; fails if none is thrown.
template <typename F> std::pair<ErrorKind, std::string> ErrorOf(F &&f)
{
	try
	{
		f();
	}
	catch (const Error &e)
	{
		return {e.kind(), e.message()};
	}
	ADD_FAILURE() << "no core::Error was thrown";
	return {ErrorKind::Internal, ""};
}

// A GCM cipher under a fresh random key, with helpers to seal and open whole values.
class CoreFormat : public ::testing::Test
{
  protected:
	// Draws the random working key and builds the cipher under it.
	CoreFormat() : key_(SecureBuffer::Random(32)), cipher_(key_.view()) {}

	// Seals plaintext under a fresh nonce with the given identity and context.
	Bytes Seal(ByteView plaintext, ByteView context = {}, std::uint32_t key_id = 7,
			   std::uint32_t key_version = 2)
	{
		std::array<std::uint8_t, kGcmNonceSize> nonce{};
		nonces_.Next(nonce);
		Bytes out(plaintext.size() + kGcmOverhead);
		cipher_.Seal(Header{kFormatV1, Algorithm::Aes256Gcm, key_id, key_version}, nonce, plaintext,
					 context, out);
		return out;
	}

	// Parses and opens a whole value, as the glue does.
	Bytes Open(ByteView ciphertext, ByteView context = {})
	{
		const Header header = ParseHeader(ciphertext);
		EXPECT_EQ(header.algorithm, Algorithm::Aes256Gcm);
		Bytes out(ciphertext.size() - kGcmOverhead);
		cipher_.Open(ciphertext, context, out);
		return out;
	}

	SecureBuffer key_;
	GcmCipher cipher_;
	NoncePool nonces_;
};

// Values of many sizes come back unchanged, with and without a context.
TEST_F(CoreFormat, RoundTripSizes)
{
	for (std::size_t size : {0, 1, 15, 16, 17, 64, 1000, 1 << 20})
	{
		SCOPED_TRACE(size);
		const SecureBuffer random = SecureBuffer::Random(size);
		const Bytes pt(random.view().begin(), random.view().end());
		const Bytes sealed = Seal(pt);
		EXPECT_EQ(sealed.size(), size + kGcmOverhead);
		EXPECT_EQ(Open(sealed), pt);
		const Bytes context = FromText("pk=42");
		EXPECT_EQ(Open(Seal(pt, context), context), pt);
	}
}

// The same plaintext sealed twice differs (fresh nonces), and both open.
TEST_F(CoreFormat, RandomNoncesMakeDistinctCiphertexts)
{
	const Bytes pt = FromText("same value");
	const Bytes a = Seal(pt), b = Seal(pt);
	EXPECT_NE(a, b);
	EXPECT_EQ(Open(a), pt);
	EXPECT_EQ(Open(b), pt);
}

// Header fields are written big-endian and read back, including the largest values.
TEST_F(CoreFormat, HeaderFieldsRoundTrip)
{
	const Bytes sealed = Seal(FromText("x"), {}, 0xFFFFFFFFu, 0x7FFFFFFFu);
	EXPECT_EQ(test::ToHex(ByteView(sealed).first(kHeaderSize)), "0101ffffffff7fffffff");
	const Header header = ParseHeader(sealed);
	EXPECT_EQ(header.format, kFormatV1);
	EXPECT_EQ(header.algorithm, Algorithm::Aes256Gcm);
	EXPECT_EQ(header.key_id, 0xFFFFFFFFu);
	EXPECT_EQ(header.key_version, 0x7FFFFFFFu);

	std::array<std::uint8_t, kHeaderSize> raw{};
	WriteHeader(Header{kFormatV1, Algorithm::Aes256Siv, 0x01020304, 0xA0B0C0D0}, raw);
	EXPECT_EQ(test::ToHex(raw), "010201020304a0b0c0d0");
}

// Names and overheads of the algorithms.
TEST(CoreFormatNames, AlgorithmNamesAndOverheads)
{
	EXPECT_STREQ(AlgorithmName(Algorithm::Aes256Gcm), "aes-256-gcm");
	EXPECT_STREQ(AlgorithmName(Algorithm::Aes256Siv), "aes-256-siv");
	EXPECT_EQ(Overhead(Algorithm::Aes256Gcm), 38u);
	EXPECT_EQ(Overhead(Algorithm::Aes256Siv), 26u);
}

// Empty input, and anything shorter than the header, is malformed with a clear message.
TEST_F(CoreFormat, EmptyAndShorterThanHeader)
{
	auto [kind, message] = ErrorOf([] { ParseHeader(ByteView{}); });
	EXPECT_EQ(kind, ErrorKind::MalformedCiphertext);
	EXPECT_EQ(message, "ciphertext is empty");

	const Bytes sealed = Seal(FromText("hello"));
	for (std::size_t size = 1; size < kHeaderSize; size++)
	{
		SCOPED_TRACE(size);
		auto [k, m] = ErrorOf([&] { ParseHeader(ByteView(sealed).first(size)); });
		EXPECT_EQ(k, ErrorKind::MalformedCiphertext);
		EXPECT_EQ(m, "ciphertext is too short: " + std::to_string(size) +
						 (size == 1 ? " byte" : " bytes") + ", at least 10 needed for the header");
	}
}

// A header alone, or one byte short of the GCM minimum, is malformed.
TEST_F(CoreFormat, ShorterThanAlgorithmMinimum)
{
	const Bytes sealed = Seal(ByteView{});
	ASSERT_EQ(sealed.size(), kGcmOverhead);
	for (std::size_t size = kHeaderSize; size < kGcmOverhead; size++)
	{
		SCOPED_TRACE(size);
		auto [k, m] = ErrorOf([&] { ParseHeader(ByteView(sealed).first(size)); });
		EXPECT_EQ(k, ErrorKind::MalformedCiphertext);
		EXPECT_EQ(m, "ciphertext is too short: " + std::to_string(size) +
						 " bytes, at least 38 needed for aes-256-gcm");
		EXPECT_EQ(ErrorOf(
					  [&]
					  {
						  Bytes out;
						  cipher_.Open(ByteView(sealed).first(size), {}, out);
					  })
					  .first,
				  ErrorKind::MalformedCiphertext);
	}
	EXPECT_EQ(ParseHeader(sealed).key_id, 7u);

	Bytes siv = FromHex("01020000000100000001");
	siv.resize(kSivOverhead - 1);
	auto [k, m] = ErrorOf([&] { ParseHeader(siv); });
	EXPECT_EQ(k, ErrorKind::MalformedCiphertext);
	EXPECT_EQ(m, "ciphertext is too short: 25 bytes, at least 26 needed for aes-256-siv");
	siv.push_back(0);
	EXPECT_EQ(ParseHeader(siv).algorithm, Algorithm::Aes256Siv);
}

// Unknown format and algorithm bytes are reported, format first, without their values (the
// value may be an unencrypted one whose bytes must not reach the logs).
TEST_F(CoreFormat, UnknownFormatAndAlgorithm)
{
	Bytes sealed = Seal(FromText("hello"));
	sealed[0] = 0x07;
	auto [k1, m1] = ErrorOf([&] { ParseHeader(sealed); });
	EXPECT_EQ(k1, ErrorKind::MalformedCiphertext);
	EXPECT_EQ(m1, "unknown ciphertext format version");

	sealed[1] = 0x09;
	EXPECT_EQ(ErrorOf([&] { ParseHeader(sealed); }).second, "unknown ciphertext format version");

	sealed[0] = kFormatV1;
	auto [k2, m2] = ErrorOf([&] { ParseHeader(sealed); });
	EXPECT_EQ(k2, ErrorKind::MalformedCiphertext);
	EXPECT_EQ(m2, "unknown ciphertext algorithm");

	for (int value : {0x00, 0x04, 0x7F, 0xFF})
	{
		sealed[1] = static_cast<std::uint8_t>(value);
		EXPECT_EQ(ErrorOf([&] { ParseHeader(sealed); }).first, ErrorKind::MalformedCiphertext);
	}

	const Bytes nine = FromHex("0209");
	EXPECT_EQ(ErrorOf([&] { ParseHeader(nine); }).second,
			  "ciphertext is too short: 2 bytes, at least 10 needed for the header");
}

// Dropping 1 to 16 bytes from the end never opens: too short, or the tag fails.
TEST_F(CoreFormat, TruncatedTag)
{
	const Bytes empty_pt = Seal(ByteView{});
	const Bytes long_pt = Seal(Bytes(64, 0x61));
	for (std::size_t drop = 1; drop <= kGcmTagSize; drop++)
	{
		SCOPED_TRACE(drop);
		EXPECT_EQ(ErrorOf([&] { Open(ByteView(empty_pt).first(empty_pt.size() - drop)); }).first,
				  ErrorKind::MalformedCiphertext);
		EXPECT_EQ(ErrorOf([&] { Open(ByteView(long_pt).first(long_pt.size() - drop)); }).first,
				  ErrorKind::AuthenticationFailed);
	}
}

// Flipping any single bit of a ciphertext makes it fail: the format and algorithm bytes as
// malformed, every other bit (key id and version included) as an authentication failure.
TEST_F(CoreFormat, EveryBitFlipFails)
{
	const Bytes pt(64, 0x5A);
	const Bytes sealed = Seal(pt, FromText("ctx"));
	ASSERT_EQ(Open(sealed, FromText("ctx")), pt);
	for (std::size_t bit = 0; bit < sealed.size() * 8; bit++)
	{
		SCOPED_TRACE(bit);
		Bytes flipped = sealed;
		flipped[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
		if (bit < 16)
		{
			EXPECT_EQ(ErrorOf([&] { ParseHeader(flipped); }).first, ErrorKind::MalformedCiphertext);
			continue;
		}
		const Header header = ParseHeader(flipped);
		if (bit < 48)
		{
			EXPECT_NE(header.key_id, 7u);
		}
		else if (bit < 80)
		{
			EXPECT_NE(header.key_version, 2u);
		}
		Bytes out(pt.size(), 0xEE);
		EXPECT_EQ(ErrorOf([&] { cipher_.Open(flipped, FromText("ctx"), out); }).first,
				  ErrorKind::AuthenticationFailed);
		EXPECT_EQ(out, Bytes(pt.size(), 0));
	}
}

// The context must match exactly: a different one, a missing one, one added, or a prefix.
TEST_F(CoreFormat, ContextMustMatch)
{
	const Bytes pt = FromText("555-12-3456");
	const Bytes with_ctx = Seal(pt, FromText("row:12"));
	EXPECT_EQ(Open(with_ctx, FromText("row:12")), pt);
	for (const char *other : {"row:13", "row:1", "row:123", "ROW:12", "", "w:12"})
	{
		SCOPED_TRACE(other);
		EXPECT_EQ(ErrorOf([&] { Open(with_ctx, FromText(other)); }).first,
				  ErrorKind::AuthenticationFailed);
	}
	EXPECT_EQ(ErrorOf([&] { Open(with_ctx); }).first, ErrorKind::AuthenticationFailed);

	const Bytes without_ctx = Seal(pt);
	EXPECT_EQ(ErrorOf([&] { Open(without_ctx, FromText("row:12")); }).first,
			  ErrorKind::AuthenticationFailed);
	EXPECT_EQ(ErrorOf([&] { Open(without_ctx, Bytes{0}); }).first, ErrorKind::AuthenticationFailed);
}

// An empty context is the same as an absent one, in both directions.
TEST_F(CoreFormat, EmptyContextIsAbsentContext)
{
	const Bytes pt = FromText("value");
	const std::array<std::uint8_t, 1> storage = {0};
	const ByteView empty_non_null = ByteView(storage).first(0);
	ASSERT_NE(empty_non_null.data(), nullptr);

	EXPECT_EQ(Open(Seal(pt, ByteView{}), empty_non_null), pt);
	EXPECT_EQ(Open(Seal(pt, empty_non_null), ByteView{}), pt);
	EXPECT_EQ(Open(Seal(pt, Bytes{}), Bytes{}), pt);
}

// A ciphertext cannot move to another key id or version: the header is additional data.
TEST_F(CoreFormat, HeaderIsBoundToTheCiphertext)
{
	const Bytes pt = FromText("value");
	Bytes sealed = Seal(pt, {}, 7, 2);
	Bytes moved = sealed;
	moved[9] = 3;
	EXPECT_EQ(ParseHeader(moved).key_version, 3u);
	EXPECT_EQ(ErrorOf([&] { Open(moved); }).first, ErrorKind::AuthenticationFailed);
	moved = sealed;
	moved[5] = 8;
	EXPECT_EQ(ParseHeader(moved).key_id, 8u);
	EXPECT_EQ(ErrorOf([&] { Open(moved); }).first, ErrorKind::AuthenticationFailed);
}

} // namespace
} // namespace pgkm::core
