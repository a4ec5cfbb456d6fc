// Unit tests of key derivation, key check values and KeyMaterial.
#include "pgkm/core/error.hpp"
#include "pgkm/core/key_material.hpp"
#include "test_core_util.hpp"

#include <gtest/gtest.h>

#include <array>

namespace pgkm::core
{
namespace
{

using test::Bytes;
using test::FromHex;
using test::ToHex;

const Bytes kDek = FromHex("932dc52f01160f2238b07633b17e98462ce20e92d88bf18bfb4390110f0b9e1a");

// HKDF-SHA-256 matches RFC 5869 test case 3 (no salt, empty info).
TEST(CoreKeyMaterial, DeriveKeyMatchesRfc5869)
{
	const SecureBuffer okm = DeriveKey(Bytes(22, 0x0b), "", 42);
	EXPECT_EQ(ToHex(okm.view()), "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c73"
								 "8d2d9d201395faa4b61a96c8");
}

// Working keys use their label as info: the GCM key matches an independent computation,
// and different labels give different keys.
TEST(CoreKeyMaterial, DeriveKeyUsesTheLabel)
{
	const SecureBuffer gcm = DeriveKey(kDek, kLabelGcm, 32);
	EXPECT_EQ(ToHex(gcm.view()),
			  "9bb0b19c527375c7c533cbf261fa7b8edc5fa6d92588298b15772523aefcf1a3");
	const SecureBuffer index = DeriveKey(kDek, kLabelBlindIndex, 32);
	EXPECT_NE(ToHex(gcm.view()), ToHex(index.view()));
	EXPECT_EQ(DeriveKey(kDek, kLabelSiv, 64).size(), 64u);
}

// Derivation refuses an empty key, a missing label and a zero length.
TEST(CoreKeyMaterial, DeriveKeyRejectsBadArguments)
{
	EXPECT_THROW(DeriveKey(ByteView{}, kLabelGcm, 32), Error);
	EXPECT_THROW(DeriveKey(kDek, nullptr, 32), Error);
	EXPECT_THROW(DeriveKey(kDek, kLabelGcm, 0), Error);
}

// The key check value matches an independent computation of its definition.
TEST(CoreKeyMaterial, KeyCheckValueKnownAnswer)
{
	EXPECT_EQ(ToHex(KeyCheckValue(kDek, 7, 2)),
			  "01056d475e442bf57132dff93d0ad56f8ce99ac77f60d577868c2732a28cee63");
}

// The check value binds the DEK to its identity: another key id or version, another DEK,
// or a stored value of the wrong length does not verify.
TEST(CoreKeyMaterial, KeyCheckValueBindsIdentity)
{
	const auto stored = KeyCheckValue(kDek, 7, 2);
	EXPECT_TRUE(VerifyKeyCheckValue(kDek, 7, 2, stored));
	EXPECT_FALSE(VerifyKeyCheckValue(kDek, 8, 2, stored));
	EXPECT_FALSE(VerifyKeyCheckValue(kDek, 7, 3, stored));
	EXPECT_FALSE(VerifyKeyCheckValue(kDek, 2, 7, stored));

	Bytes other_dek = kDek;
	other_dek[31] ^= 0x01;
	EXPECT_FALSE(VerifyKeyCheckValue(other_dek, 7, 2, stored));
	EXPECT_FALSE(VerifyKeyCheckValue(ByteView(kDek).first(31), 7, 2, stored));

	EXPECT_FALSE(VerifyKeyCheckValue(kDek, 7, 2, ByteView(stored).first(31)));
	EXPECT_FALSE(VerifyKeyCheckValue(kDek, 7, 2, ByteView(stored).first(16)));
	EXPECT_FALSE(VerifyKeyCheckValue(kDek, 7, 2, ByteView{}));
	Bytes longer(stored.begin(), stored.end());
	longer.push_back(0);
	EXPECT_FALSE(VerifyKeyCheckValue(kDek, 7, 2, longer));
	Bytes altered(stored.begin(), stored.end());
	altered[0] ^= 0x80;
	EXPECT_FALSE(VerifyKeyCheckValue(kDek, 7, 2, altered));

	EXPECT_THROW(KeyCheckValue(Bytes(16, 1), 7, 2), Error);
}

// KeyMaterial keeps its identity and a cipher under the derived GCM key.
TEST(CoreKeyMaterial, KeyMaterialUsesTheDerivedGcmKey)
{
	KeyMaterial material(7, 2, Algorithm::Aes256Gcm, kDek);
	EXPECT_EQ(material.key_id(), 7u);
	EXPECT_EQ(material.key_version(), 2u);

	const SecureBuffer gcm_key = DeriveKey(kDek, kLabelGcm, 32);
	GcmCipher direct(gcm_key.view());
	const std::array<std::uint8_t, kGcmNonceSize> nonce{};
	const Bytes pt = test::FromText("hello");
	Bytes a(pt.size() + kGcmOverhead), b(pt.size() + kGcmOverhead);
	const Header header{kFormatV1, Algorithm::Aes256Gcm, 7, 2};
	material.gcm().Seal(header, nonce, pt, {}, a);
	direct.Seal(header, nonce, pt, {}, b);
	EXPECT_EQ(a, b);

	GcmCipher raw_dek(kDek);
	Bytes c(pt.size() + kGcmOverhead);
	raw_dek.Seal(header, nonce, pt, {}, c);
	EXPECT_NE(a, c);
}

// KeyMaterial refuses a DEK that is not 32 bytes.
TEST(CoreKeyMaterial, KeyMaterialRejectsWrongDekSize)
{
	for (std::size_t size : {0, 16, 31, 33, 64})
	{
		try
		{
			KeyMaterial material(1, 1, Algorithm::Aes256Gcm, Bytes(size, 0x11));
			ADD_FAILURE() << "accepted a DEK of " << size << " bytes";
		}
		catch (const Error &e)
		{
			EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
		}
	}
}

} // namespace
} // namespace pgkm::core
