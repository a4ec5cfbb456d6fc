// Unit tests of AES-256-GCM: NIST known answers through the raw steps, and GcmCipher's contract.
#include "pgkm/core/aead.hpp"
#include "pgkm/core/error.hpp"
#include "pgkm/core/format.hpp"
#include "test_core_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <memory>

namespace pgkm::core
{
namespace
{

using test::Bytes;
using test::FromHex;
using test::ToHex;

// One AES-256-GCM known answer with a 96-bit IV and a 128-bit tag.
struct NistVector
{
	const char *name;
	const char *key;
	const char *iv;
	const char *aad;
	const char *plaintext;
	const char *ciphertext;
	const char *tag;
};

// Test cases 13 to 16 of McGrew and Viega, "The Galois/Counter Mode of Operation" (the
// 256-bit key cases, also in NIST's GCM validation suite), and two cases of NIST CAVP
// gcmEncryptExtIV256.rsp (Keylen 256, IVlen 96, Taglen 128).
const NistVector kNistVectors[] = {
	{"McGrewViega13", "0000000000000000000000000000000000000000000000000000000000000000",
	 "000000000000000000000000", "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"},
	{"McGrewViega14", "0000000000000000000000000000000000000000000000000000000000000000",
	 "000000000000000000000000", "", "00000000000000000000000000000000",
	 "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"},
	{"McGrewViega15", "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
	 "cafebabefacedbaddecaf888", "",
	 "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
	 "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
	 "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
	 "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
	 "b094dac5d93471bdec1a502270e3cc6c"},
	{"McGrewViega16", "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
	 "cafebabefacedbaddecaf888", "feedfacedeadbeeffeedfacedeadbeefabaddad2",
	 "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
	 "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
	 "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
	 "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
	 "76fc6ece0f4e1768cddf8853bb2d551b"},
	{"CavpPt0Aad0Count0", "b52c505a37d78eda5dd34f20c22540ea1b58963cf8e5bf8ffa85f9f2492505b4",
	 "516c33929df5a3284ff463d7", "", "", "", "bdc1ac884d332457a1d2664f168c76f0"},
	{"CavpPt128Aad128Count0", "92e11dcdaa866f5ce790fd24501f92509aacf4cb8b1339d50c9c1240935dd08b",
	 "ac93a1a6145299bde902f21a", "1e0889016f67601c8ebea4943bc23ad6",
	 "2d71bcfa914e4ac045b2aa60955fad24", "8995ae2e6df3dbf96fac7b7137bae67f",
	 "eca5aa77d51d4a0a14d9c51e1da474ab"},
};

// Owns a raw context made by detail::GcmNewContext.
struct ContextDeleter
{
	// Frees the context.
	void operator()(EVP_CIPHER_CTX *ctx) const noexcept { detail::GcmFreeContext(ctx); }
};
using Context = std::unique_ptr<EVP_CIPHER_CTX, ContextDeleter>;

// Makes a raw encryption or decryption context for key.
Context MakeContext(const Bytes &key, bool encrypt)
{
	return Context(detail::GcmNewContext(key, encrypt));
}

// Views a decoded IV as the fixed-size nonce span the raw functions take.
std::span<const std::uint8_t, kGcmNonceSize> Nonce(const Bytes &iv)
{
	return std::span<const std::uint8_t, kGcmNonceSize>(iv.data(), kGcmNonceSize);
}

class CoreAeadNist : public ::testing::TestWithParam<NistVector>
{
};

// Encryption reproduces NIST's ciphertext and tag, whichever way the AAD is split in two.
TEST_P(CoreAeadNist, SealMatchesKnownAnswer)
{
	const NistVector &v = GetParam();
	const Bytes key = FromHex(v.key), iv = FromHex(v.iv), aad = FromHex(v.aad);
	const Bytes pt = FromHex(v.plaintext), ct = FromHex(v.ciphertext), tag = FromHex(v.tag);
	ASSERT_EQ(iv.size(), kGcmNonceSize);
	Context ctx = MakeContext(key, true);

	for (std::size_t split = 0; split <= aad.size(); split++)
	{
		const ByteView aad_view(aad);
		Bytes out_ct(pt.size());
		std::array<std::uint8_t, kGcmTagSize> out_tag{};
		detail::GcmSealRaw(ctx.get(), Nonce(iv), aad_view.first(split), aad_view.subspan(split), pt,
						   out_ct, out_tag);
		EXPECT_EQ(ToHex(out_ct), ToHex(ct)) << "AAD split at " << split;
		EXPECT_EQ(ToHex(out_tag), ToHex(tag)) << "AAD split at " << split;
	}
}

// Decryption recovers NIST's plaintext, and rejects (and wipes) when the tag is altered.
TEST_P(CoreAeadNist, OpenMatchesKnownAnswerAndRejectsBadTag)
{
	const NistVector &v = GetParam();
	const Bytes key = FromHex(v.key), iv = FromHex(v.iv), aad = FromHex(v.aad);
	const Bytes pt = FromHex(v.plaintext), ct = FromHex(v.ciphertext), tag = FromHex(v.tag);
	Context ctx = MakeContext(key, false);
	const std::span<const std::uint8_t, kGcmTagSize> tag_view(tag.data(), kGcmTagSize);

	Bytes out(ct.size(), 0xAA);
	ASSERT_TRUE(detail::GcmOpenRaw(ctx.get(), Nonce(iv), aad, {}, ct, tag_view, out));
	EXPECT_EQ(ToHex(out), ToHex(pt));

	for (std::size_t bit = 0; bit < kGcmTagSize * 8; bit += 7)
	{
		Bytes bad_tag = tag;
		bad_tag[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
		Bytes wiped(ct.size(), 0xAA);
		EXPECT_FALSE(detail::GcmOpenRaw(
			ctx.get(), Nonce(iv), aad, {}, ct,
			std::span<const std::uint8_t, kGcmTagSize>(bad_tag.data(), kGcmTagSize), wiped))
			<< "tag bit " << bit;
		EXPECT_TRUE(std::all_of(wiped.begin(), wiped.end(), [](std::uint8_t b) { return b == 0; }));
	}

	if (!ct.empty())
	{
		Bytes bad_ct = ct;
		bad_ct.back() ^= 0x01;
		EXPECT_FALSE(detail::GcmOpenRaw(ctx.get(), Nonce(iv), aad, {}, bad_ct, tag_view, out));
	}
	Bytes bad_aad = aad;
	bad_aad.push_back(0x00);
	EXPECT_FALSE(detail::GcmOpenRaw(ctx.get(), Nonce(iv), bad_aad, {}, ct, tag_view, out));
}

INSTANTIATE_TEST_SUITE_P(Vectors, CoreAeadNist, ::testing::ValuesIn(kNistVectors),
						 [](const ::testing::TestParamInfo<NistVector> &param_info)
						 { return std::string(param_info.param.name); });

// A fixed working key and nonce for the GcmCipher contract tests.
const Bytes kKey = FromHex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
const std::array<std::uint8_t, kGcmNonceSize> kNonce = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

// Runs f and returns the kind of core::Error it throws; fails the test if it throws nothing.
template <typename F> ErrorKind KindOf(F &&f)
{
	try
	{
		f();
	}
	catch (const Error &e)
	{
		return e.kind();
	}
	ADD_FAILURE() << "no core::Error was thrown";
	return ErrorKind::Internal;
}

// GcmCipher::Seal uses the same raw step as the NIST test: its body and tag match GcmSealRaw
// with the written header as the first half of the additional data.
TEST(CoreAead, SealIsHeaderNonceRawCiphertextTag)
{
	GcmCipher cipher(kKey);
	const Header header{kFormatV1, Algorithm::Aes256Gcm, 0x01020304, 0x05060708};
	const Bytes pt = test::FromText("attack at dawn"), ctx_bytes = test::FromText("row 7");
	Bytes out(pt.size() + kGcmOverhead);
	cipher.Seal(header, kNonce, pt, ctx_bytes, out);

	EXPECT_EQ(ToHex(ByteView(out).first(kHeaderSize)), "01010102030405060708");
	EXPECT_EQ(ToHex(ByteView(out).subspan(kHeaderSize, kGcmNonceSize)), ToHex(kNonce));

	Context raw = MakeContext(kKey, true);
	Bytes raw_ct(pt.size());
	std::array<std::uint8_t, kGcmTagSize> raw_tag{};
	detail::GcmSealRaw(raw.get(), kNonce, ByteView(out).first(kHeaderSize), ctx_bytes, pt, raw_ct,
					   raw_tag);
	EXPECT_EQ(ToHex(ByteView(out).subspan(kHeaderSize + kGcmNonceSize, pt.size())), ToHex(raw_ct));
	EXPECT_EQ(ToHex(ByteView(out).last(kGcmTagSize)), ToHex(raw_tag));
}

// Sealing in place (the plaintext already in the output's body, as pgkm_rewrap opens it)
// writes the same bytes as sealing from a separate buffer, and they open again.
TEST(CoreAead, SealInPlaceMatchesSealFromAnotherBuffer)
{
	GcmCipher cipher(kKey);
	const Header header{kFormatV1, Algorithm::Aes256Gcm, 7, 2};
	const Bytes ctx_bytes = test::FromText("row 7");
	Bytes pt(100000);
	for (std::size_t i = 0; i < pt.size(); ++i)
		pt[i] = static_cast<std::uint8_t>(i * 31 + 7);
	Bytes apart(pt.size() + kGcmOverhead);
	cipher.Seal(header, kNonce, pt, ctx_bytes, apart);

	Bytes in_place(pt.size() + kGcmOverhead, 0xee);
	const std::span<std::uint8_t> body =
		std::span<std::uint8_t>(in_place).subspan(kHeaderSize + kGcmNonceSize, pt.size());
	std::copy(pt.begin(), pt.end(), body.begin());
	cipher.Seal(header, kNonce, body, ctx_bytes, in_place);
	EXPECT_EQ(ToHex(in_place), ToHex(apart));
	EXPECT_NE(ToHex(body), ToHex(pt)) << "nothing was encrypted";

	Bytes opened(pt.size());
	cipher.Open(in_place, ctx_bytes, opened);
	EXPECT_EQ(ToHex(opened), ToHex(pt));
}

// Empty plaintext and absent spans (whose data() is nullptr) are handled.
TEST(CoreAead, EmptyAndNullSpans)
{
	GcmCipher cipher(kKey);
	const Header header{kFormatV1, Algorithm::Aes256Gcm, 1, 1};
	std::array<std::uint8_t, kGcmOverhead> out{};
	cipher.Seal(header, kNonce, ByteView{}, ByteView{}, out);
	cipher.Open(out, ByteView{}, std::span<std::uint8_t>{});

	const std::array<std::uint8_t, 1> one = {0};
	cipher.Open(out, ByteView(one).first(0), std::span<std::uint8_t>{});
	EXPECT_EQ(KindOf([&] { cipher.Open(out, one, std::span<std::uint8_t>{}); }),
			  ErrorKind::AuthenticationFailed);
}

// Output buffers of the wrong size are a caller bug (Internal) and nothing is written.
TEST(CoreAead, WrongOutputSizeIsInternal)
{
	GcmCipher cipher(kKey);
	const Header header{kFormatV1, Algorithm::Aes256Gcm, 1, 1};
	const Bytes pt(10, 0x42);
	Bytes small(pt.size() + kGcmOverhead - 1), large(pt.size() + kGcmOverhead + 1);
	EXPECT_EQ(KindOf([&] { cipher.Seal(header, kNonce, pt, {}, small); }), ErrorKind::Internal);
	EXPECT_EQ(KindOf([&] { cipher.Seal(header, kNonce, pt, {}, large); }), ErrorKind::Internal);

	Bytes sealed(pt.size() + kGcmOverhead);
	cipher.Seal(header, kNonce, pt, {}, sealed);
	Bytes open_small(pt.size() - 1), open_large(pt.size() + 1);
	EXPECT_EQ(KindOf([&] { cipher.Open(sealed, {}, open_small); }), ErrorKind::Internal);
	EXPECT_EQ(KindOf([&] { cipher.Open(sealed, {}, open_large); }), ErrorKind::Internal);
}

// The cipher refuses keys that are not 32 bytes, and headers or ciphertexts of another kind.
TEST(CoreAead, RejectsWrongKeySizeAndForeignHeaders)
{
	EXPECT_EQ(KindOf([] { GcmCipher c(Bytes(16, 1)); }), ErrorKind::InvalidArgument);
	EXPECT_EQ(KindOf([] { GcmCipher c(Bytes(33, 1)); }), ErrorKind::InvalidArgument);
	EXPECT_EQ(KindOf([] { GcmCipher c(ByteView{}); }), ErrorKind::InvalidArgument);

	GcmCipher cipher(kKey);
	const Header siv{kFormatV1, Algorithm::Aes256Siv, 1, 1};
	Bytes out(kGcmOverhead);
	EXPECT_EQ(KindOf([&] { cipher.Seal(siv, kNonce, {}, {}, out); }), ErrorKind::Internal);

	Bytes siv_ct = FromHex("01020000000100000001");
	siv_ct.resize(kGcmOverhead + 4, 0x5A);
	Bytes body(4);
	EXPECT_EQ(KindOf([&] { cipher.Open(siv_ct, {}, body); }), ErrorKind::Internal);

	const Bytes short_ct = FromHex("0101000000010000000100");
	EXPECT_EQ(KindOf([&] { cipher.Open(short_ct, {}, std::span<std::uint8_t>{}); }),
			  ErrorKind::MalformedCiphertext);
}

// A failed open says so without revealing anything, and wipes the output buffer.
TEST(CoreAead, AuthenticationFailureMessageAndWipe)
{
	GcmCipher cipher(kKey);
	const Header header{kFormatV1, Algorithm::Aes256Gcm, 9, 3};
	const Bytes pt = test::FromText("secret plaintext");
	Bytes sealed(pt.size() + kGcmOverhead);
	cipher.Seal(header, kNonce, pt, test::FromText("a"), sealed);

	Bytes out(pt.size(), 0xAA);
	try
	{
		cipher.Open(sealed, test::FromText("b"), out);
		FAIL() << "open with the wrong context succeeded";
	}
	catch (const Error &e)
	{
		EXPECT_EQ(e.kind(), ErrorKind::AuthenticationFailed);
		EXPECT_EQ(e.message(), "ciphertext authentication failed");
		EXPECT_NE(e.detail().find("context"), std::string::npos);
		EXPECT_EQ(e.message().find("secret"), std::string::npos);
	}
	EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](std::uint8_t b) { return b == 0; }));

	cipher.Open(sealed, test::FromText("a"), out);
	EXPECT_EQ(out, pt);
}

// Many messages through one cipher reuse the key schedule and stay independent of each other.
TEST(CoreAead, ReusedContextsStayCorrect)
{
	GcmCipher cipher(kKey);
	const Header header{kFormatV1, Algorithm::Aes256Gcm, 1, 1};
	Bytes first(3 + kGcmOverhead);
	cipher.Seal(header, kNonce, test::FromText("abc"), {}, first);
	for (int i = 0; i < 100; i++)
	{
		Bytes pt(static_cast<std::size_t>(i), static_cast<std::uint8_t>(i));
		Bytes sealed(pt.size() + kGcmOverhead), opened(pt.size());
		cipher.Seal(header, kNonce, pt, {}, sealed);
		if (i % 3 == 0)
		{
			EXPECT_THROW(cipher.Open(sealed, test::FromText("x"), opened), Error);
		}
		cipher.Open(sealed, {}, opened);
		EXPECT_EQ(opened, pt);
	}
	Bytes again(3 + kGcmOverhead);
	cipher.Seal(header, kNonce, test::FromText("abc"), {}, again);
	EXPECT_EQ(first, again);
}

// Contexts are made on first use and released on request; the key stays (locked) in the
// cipher, so sealing and opening after a release give the same bytes as before.
TEST(CoreAead, ReleasedContextsAreRebuiltFromTheKey)
{
	GcmCipher cipher(kKey);
	EXPECT_FALSE(cipher.HasContexts());
	EXPECT_TRUE(cipher.locked()) << "mlock of one page failed: is RLIMIT_MEMLOCK 0 here?";
	const Header header{kFormatV1, Algorithm::Aes256Gcm, 1, 1};
	const Bytes pt = test::FromText("released");
	Bytes before(pt.size() + kGcmOverhead), after(pt.size() + kGcmOverhead), opened(pt.size());
	cipher.Seal(header, kNonce, pt, {}, before);
	EXPECT_TRUE(cipher.HasContexts());
	cipher.ReleaseContexts();
	EXPECT_FALSE(cipher.HasContexts());
	cipher.ReleaseContexts(); // twice is harmless
	cipher.Open(before, {}, opened);
	EXPECT_EQ(opened, pt);
	cipher.ReleaseContexts();
	cipher.Seal(header, kNonce, pt, {}, after);
	EXPECT_EQ(before, after);
}

} // namespace
} // namespace pgkm::core
