// Unit tests of AES-256-SIV and blind indexes beyond the vectors: determinism, binding of the
// header and context, every bit flip, in-place sealing, truncation and length rules.
#include "pgkm/core/blind_index.hpp"
#include "pgkm/core/error.hpp"
#include "pgkm/core/format.hpp"
#include "pgkm/core/key_material.hpp"
#include "pgkm/core/siv.hpp"
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
using test::ToHex;

const Bytes kDek = FromHex("450b08422415e4a3b747a5679e5aad02853a35be21e915be3d8048c92f7fd43f");

// Returns the error kind fn throws, failing the test if it throws nothing.
template <typename F> ErrorKind KindOf(F fn)
{
	try
	{
		fn();
	}
	catch (const Error &e)
	{
		return e.kind();
	}
	ADD_FAILURE() << "no error was thrown";
	return ErrorKind::Internal;
}

class CoreSiv : public ::testing::Test
{
  protected:
	KeyMaterial material_{5, 2, Algorithm::Aes256Siv, kDek};

	// Seals plaintext under (5, version) with context.
	Bytes Seal(const Bytes &plaintext, const Bytes &context, std::uint32_t version = 2)
	{
		Bytes out(plaintext.size() + kSivOverhead);
		material_.siv().Seal(Header{kFormatV1, Algorithm::Aes256Siv, 5, version}, plaintext,
							 context, out);
		return out;
	}

	// Opens a whole ciphertext.
	Bytes Open(const Bytes &ciphertext, const Bytes &context)
	{
		Bytes out(ciphertext.size() - kSivOverhead);
		material_.siv().Open(ciphertext, context, out);
		return out;
	}
};

// Same plaintext, header and context: same bytes; any of them different: different bytes.
TEST_F(CoreSiv, DeterministicAndBound)
{
	const Bytes email = FromText("alice@example.org");
	const Bytes a = Seal(email, {});
	EXPECT_EQ(ToHex(a), ToHex(Seal(email, {})));
	EXPECT_NE(ToHex(a), ToHex(Seal(FromText("alice@example.orh"), {})));
	EXPECT_NE(ToHex(a), ToHex(Seal(email, FromText("tenant-1"))));
	EXPECT_NE(ToHex(a), ToHex(Seal(email, {}, 3)));
	EXPECT_EQ(ToHex(Open(a, {})), ToHex(email));
	// An empty context is an absent one.
	EXPECT_EQ(ToHex(Seal(email, Bytes{})), ToHex(a));
	KeyMaterial other(5, 2, Algorithm::Aes256Siv, Bytes(32, 0x42));
	Bytes b(email.size() + kSivOverhead);
	other.siv().Seal(Header{kFormatV1, Algorithm::Aes256Siv, 5, 2}, email, {}, b);
	EXPECT_NE(ToHex(a), ToHex(b));
}

// Flipping any bit anywhere fails: the header is authenticated as associated data, the IV and
// the body by S2V. The output buffer is wiped on failure.
TEST_F(CoreSiv, EveryBitFlipFails)
{
	for (const Bytes &pt : {FromText("123-45-6789"), Bytes{}})
	{
		const Bytes ct = Seal(pt, FromText("row-7"));
		for (std::size_t i = 0; i < ct.size() * 8; i++)
		{
			Bytes bad = ct;
			bad[i / 8] ^= static_cast<std::uint8_t>(1u << (i % 8));
			SCOPED_TRACE(i);
			if (i / 8 < 2)
			{
				// Format and algorithm bytes: the parser or the cipher refuses the value.
				EXPECT_THROW(Open(bad, FromText("row-7")), Error);
				continue;
			}
			Bytes out(bad.size() - kSivOverhead, 0xAA);
			EXPECT_EQ(KindOf([&] { material_.siv().Open(bad, FromText("row-7"), out); }),
					  ErrorKind::AuthenticationFailed);
			for (std::uint8_t b : out)
				ASSERT_EQ(b, 0);
		}
		EXPECT_EQ(KindOf([&] { Open(ct, FromText("row-8")); }), ErrorKind::AuthenticationFailed);
		EXPECT_EQ(KindOf([&] { Open(ct, {}); }), ErrorKind::AuthenticationFailed);
	}
}

// Sealing the plaintext in place (it is the output's own body) gives the same bytes.
TEST_F(CoreSiv, InPlace)
{
	const Bytes pt = FromText("a value that is longer than one AES block, to be sure");
	const Bytes expected = Seal(pt, FromText("ctx"));
	Bytes out(pt.size() + kSivOverhead);
	std::copy(pt.begin(), pt.end(), out.begin() + kSivOverhead);
	material_.siv().Seal(Header{kFormatV1, Algorithm::Aes256Siv, 5, 2},
						 std::span<const std::uint8_t>(out).subspan(kSivOverhead), FromText("ctx"),
						 out);
	EXPECT_EQ(ToHex(out), ToHex(expected));
}

// Wrong sizes, headers and key sizes are internal errors, never a silent result.
TEST_F(CoreSiv, MisuseIsRefused)
{
	Bytes out(10);
	EXPECT_EQ(KindOf(
				  [&] {
					  material_.siv().Seal(Header{kFormatV1, Algorithm::Aes256Gcm, 5, 2},
										   FromText("x"), {}, out);
				  }),
			  ErrorKind::Internal);
	EXPECT_EQ(KindOf(
				  [&] {
					  material_.siv().Seal(Header{kFormatV1, Algorithm::Aes256Siv, 5, 2},
										   FromText("x"), {}, out);
				  }),
			  ErrorKind::Internal);
	EXPECT_EQ(KindOf([&] { SivCipher bad(Bytes(32, 1)); }), ErrorKind::InvalidArgument);
	EXPECT_EQ(KindOf([&] { BlindIndexKey bad(Bytes(64, 1)); }), ErrorKind::InvalidArgument);
	// A key serves one algorithm.
	EXPECT_EQ(KindOf([&] { material_.gcm(); }), ErrorKind::Internal);
	EXPECT_EQ(KindOf([&] { material_.blind_index(); }), ErrorKind::Internal);
	KeyMaterial gcm(1, 1, Algorithm::Aes256Gcm, kDek);
	EXPECT_EQ(KindOf([&] { gcm.siv(); }), ErrorKind::Internal);
}

// Releasing the contexts and sealing again gives the same bytes.
TEST_F(CoreSiv, ContextsReleasedAndRebuilt)
{
	const Bytes a = Seal(FromText("x@y.z"), {});
	EXPECT_TRUE(material_.siv().HasContexts());
	material_.ReleaseContexts();
	EXPECT_FALSE(material_.siv().HasContexts());
	EXPECT_EQ(ToHex(Seal(FromText("x@y.z"), {})), ToHex(a));
	EXPECT_EQ(ToHex(Open(a, {})), ToHex(FromText("x@y.z")));
}

// Blind indexes: deterministic, keyed by the version's DEK, truncated as asked; the header
// names the key version; lengths outside 1..32 and wrong headers are refused; blind index
// values parse, and values longer than a header and 32 bytes do not.
TEST(CoreBlindIndex, TruncationAndHeader)
{
	KeyMaterial m(3, 1, Algorithm::BlindIndex, kDek);
	KeyMaterial other(3, 2, Algorithm::BlindIndex, Bytes(32, 7));
	const Header h{kFormatV1, Algorithm::BlindIndex, 3, 1};
	Bytes a(kHeaderSize + 8), b(kHeaderSize + 8), c(kHeaderSize + 8);
	m.blind_index().Compute(h, FromText("123-45-6789"), a);
	m.blind_index().Compute(h, FromText("123-45-6789"), b);
	other.blind_index().Compute(h, FromText("123-45-6789"), c);
	EXPECT_EQ(ToHex(a), ToHex(b));
	EXPECT_NE(ToHex(a), ToHex(c));
	EXPECT_EQ(ToHex(a).substr(0, 20), "01030000000300000001");
	Bytes too_long(kHeaderSize + 33), empty(kHeaderSize);
	EXPECT_EQ(KindOf([&] { m.blind_index().Compute(h, {}, too_long); }), ErrorKind::Internal);
	EXPECT_EQ(KindOf([&] { m.blind_index().Compute(h, {}, empty); }), ErrorKind::Internal);
	EXPECT_EQ(KindOf(
				  [&] {
					  m.blind_index().Compute(Header{kFormatV1, Algorithm::Aes256Siv, 3, 1}, {}, a);
				  }),
			  ErrorKind::Internal);
	Bytes longest(kHeaderSize + 32);
	m.blind_index().Compute(h, {}, longest);
	EXPECT_EQ(ParseHeader(longest).algorithm, Algorithm::BlindIndex);
	longest.push_back(0);
	EXPECT_EQ(KindOf([&] { ParseHeader(longest); }), ErrorKind::MalformedCiphertext);
	EXPECT_EQ(KindOf([&] { ParseHeader(empty); }), ErrorKind::MalformedCiphertext);
	EXPECT_STREQ(AlgorithmName(Algorithm::BlindIndex), "blind-index");
}

} // namespace
} // namespace pgkm::core
