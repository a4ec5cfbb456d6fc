// Tests of the audit MAC key: EnsureMacKey, Mac and VerifyMac on both providers, and, on a
// throwaway SoftHSM2 token, the key's attributes, persistence, races and session loss.
#include "pgkm/core/error.hpp"
#include "pgkm/provider/provider.hpp"
#include "softhsm_token.hpp"
#include "test_core_util.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <latch>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace
{

using pgkm::core::Error;
using pgkm::core::ErrorKind;
using pgkm::core::SecureBuffer;
using pgkm::core::test::FromText;
using pgkm::core::test::ToHex;
using pgkm::provider::CkrName;
using pgkm::provider::kMacSize;
using pgkm::provider::MakeMemoryProvider;
using pgkm::provider::MakePkcs11Provider;
using pgkm::provider::Provider;
using pgkm::test::RawPkcs11;
using pgkm::test::SoftHsmToken;

using Bytes = std::vector<std::uint8_t>;
using MacValue = std::array<std::uint8_t, kMacSize>;

constexpr const char *kMacKey = "pgkm-audit-mac";
constexpr const char *kMaster = "pgkm-master.v1";

// Runs the call and returns the Error it throws (a test failure if it throws nothing).
template <typename Call> Error Thrown(Call &&call)
{
	try
	{
		call();
	}
	catch (const Error &error)
	{
		return error;
	}
	ADD_FAILURE() << "no pgkm::core::Error thrown";
	return Error(ErrorKind::Internal, "nothing thrown");
}

// Returns the MAC's bytes as a vector, for truncating and altering.
Bytes MacBytes(const MacValue &mac)
{
	return Bytes(mac.begin(), mac.end());
}

// Creates a secret key with a known value through a raw session, bypassing the provider.
CK_RV ImportSecret(RawPkcs11 &raw, CK_SESSION_HANDLE session, const std::string &label,
				   CK_KEY_TYPE key_type, const Bytes &value)
{
	CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
	CK_BBOOL yes = CK_TRUE;
	CK_ATTRIBUTE key_template[] = {
		{CKA_CLASS, &key_class, sizeof key_class},
		{CKA_KEY_TYPE, &key_type, sizeof key_type},
		{CKA_VALUE, const_cast<std::uint8_t *>(value.data()), value.size()},
		{CKA_TOKEN, &yes, sizeof yes},
		{CKA_PRIVATE, &yes, sizeof yes},
		{CKA_SIGN, &yes, sizeof yes},
		{CKA_VERIFY, &yes, sizeof yes},
		{CKA_LABEL, const_cast<char *>(label.data()), label.size()},
	};
	CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
	return raw.functions()->C_CreateObject(session, key_template,
										   sizeof key_template / sizeof key_template[0], &key);
}

// The behaviour both providers share, run once with each: "pkcs11" on a fresh SoftHSM2
// token, "memory" in process memory.
class ProviderMac : public ::testing::TestWithParam<std::string>
{
  protected:
	// Makes the provider named by the parameter (and its token for PKCS#11).
	ProviderMac()
	{
		if (GetParam() == "pkcs11")
		{
			token_.emplace();
			provider_ = MakePkcs11Provider(token_->Config());
		}
		else
			provider_ = MakeMemoryProvider();
	}

	std::optional<SoftHsmToken> token_; // declared first: destroyed after the provider
	std::unique_ptr<Provider> provider_;
};

TEST_P(ProviderMac, EnsureMacKeyCreatesOnce)
{
	EXPECT_TRUE(provider_->EnsureMacKey(kMacKey));
	EXPECT_FALSE(provider_->EnsureMacKey(kMacKey));
	EXPECT_FALSE(provider_->EnsureMacKey(kMacKey));
	EXPECT_TRUE(provider_->EnsureMacKey("other-mac"));
	EXPECT_EQ(Thrown([&] { provider_->EnsureMacKey(""); }).kind(), ErrorKind::InvalidArgument);
}

TEST_P(ProviderMac, DescribesTheMacKey)
{
	provider_->EnsureMacKey(kMacKey);
	const auto info = provider_->Describe(kMacKey);
	EXPECT_EQ(info.label, kMacKey);
	EXPECT_EQ(info.key_bits, 256u);
	EXPECT_EQ(info.token, GetParam() == "pkcs11");
	EXPECT_TRUE(info.sensitive);
	EXPECT_FALSE(info.extractable);
	EXPECT_TRUE(info.can_sign);
	EXPECT_TRUE(info.can_verify);
	EXPECT_FALSE(info.can_wrap);
	EXPECT_FALSE(info.can_unwrap);
}

TEST_P(ProviderMac, MacIsDeterministicAndKeyed)
{
	provider_->EnsureMacKey(kMacKey);
	provider_->EnsureMacKey("other-mac");
	const Bytes data = FromText("pgkm/v1/audit-checkpoint");
	const MacValue mac = provider_->Mac(kMacKey, data);
	static_assert(sizeof mac == 32);
	EXPECT_NE(ToHex(mac), std::string(64, '0'));
	EXPECT_EQ(provider_->Mac(kMacKey, data), mac);
	EXPECT_EQ(provider_->Mac(kMacKey, Bytes(data)), mac);

	Bytes altered = data;
	altered.back() ^= 0x01;
	EXPECT_NE(provider_->Mac(kMacKey, altered), mac);
	EXPECT_NE(provider_->Mac(kMacKey, Bytes(data.begin(), data.end() - 1)), mac);
	EXPECT_NE(provider_->Mac("other-mac", data), mac);

	const MacValue empty = provider_->Mac(kMacKey, Bytes{});
	EXPECT_EQ(provider_->Mac(kMacKey, Bytes{}), empty);
	EXPECT_NE(empty, mac);
	EXPECT_TRUE(provider_->VerifyMac(kMacKey, Bytes{}, empty));
}

TEST_P(ProviderMac, VerifiesOnlyTheRightMac)
{
	provider_->EnsureMacKey(kMacKey);
	provider_->EnsureMacKey("other-mac");
	const Bytes data = FromText("checkpoint 42");
	const Bytes mac = MacBytes(provider_->Mac(kMacKey, data));
	EXPECT_TRUE(provider_->VerifyMac(kMacKey, data, mac));

	for (const std::size_t bit : {0u, 7u, 100u, 255u})
	{
		Bytes flipped = mac;
		flipped[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
		EXPECT_FALSE(provider_->VerifyMac(kMacKey, data, flipped)) << "bit " << bit;
	}
	for (const std::size_t size : {0u, 1u, 16u, 31u})
		EXPECT_FALSE(provider_->VerifyMac(kMacKey, data, Bytes(mac.begin(), mac.begin() + size)))
			<< size << " bytes";
	Bytes longer = mac;
	longer.push_back(0);
	EXPECT_FALSE(provider_->VerifyMac(kMacKey, data, longer));
	EXPECT_FALSE(provider_->VerifyMac(kMacKey, FromText("checkpoint 43"), mac));
	EXPECT_FALSE(provider_->VerifyMac("other-mac", data, mac));

	// The refusals left the provider usable.
	EXPECT_TRUE(provider_->VerifyMac(kMacKey, data, mac));
	EXPECT_EQ(MacBytes(provider_->Mac(kMacKey, data)), mac);
}

TEST_P(ProviderMac, ReportsUnknownMacKeys)
{
	provider_->EnsureMacKey(kMacKey);
	const Bytes data = FromText("data");
	const Bytes mac(32, 0);
	const Error error = Thrown([&] { provider_->Mac("absent-mac", data); });
	EXPECT_EQ(error.kind(), ErrorKind::UnknownKey);
	EXPECT_NE(error.message().find("\"absent-mac\""), std::string::npos) << error.message();
	EXPECT_EQ(Thrown([&] { provider_->VerifyMac("absent-mac", data, mac); }).kind(),
			  ErrorKind::UnknownKey);
	EXPECT_EQ(Thrown([&] { provider_->Describe("absent-mac"); }).kind(), ErrorKind::UnknownKey);
}

TEST_P(ProviderMac, KeepsMasterAndMacKeysApart)
{
	provider_->Generate(kMaster);
	provider_->EnsureMacKey(kMacKey);
	const Bytes data = FromText("data");

	const Error ensure = Thrown([&] { provider_->EnsureMacKey(kMaster); });
	EXPECT_EQ(ensure.kind(), ErrorKind::KeyNotUsable);
	EXPECT_NE(ensure.message().find("\"" + std::string(kMaster) + "\""), std::string::npos);
	EXPECT_EQ(Thrown([&] { provider_->Mac(kMaster, data); }).kind(), ErrorKind::KeyNotUsable);
	EXPECT_EQ(Thrown([&] { provider_->VerifyMac(kMaster, data, Bytes(32, 0)); }).kind(),
			  ErrorKind::KeyNotUsable);
	EXPECT_EQ(Thrown([&] { provider_->Generate(kMacKey); }).kind(), ErrorKind::InvalidArgument);

	const auto master = provider_->Describe(kMaster);
	EXPECT_TRUE(master.can_wrap);
	EXPECT_TRUE(master.can_unwrap);
	// The master key still works, and the MAC key is untouched.
	const SecureBuffer dek = SecureBuffer::Random(32);
	EXPECT_EQ(provider_->Unwrap(kMaster, provider_->Wrap(kMaster, dek.view())).size(), 32u);
	EXPECT_TRUE(provider_->VerifyMac(kMacKey, data, provider_->Mac(kMacKey, data)));
}

INSTANTIATE_TEST_SUITE_P(Providers, ProviderMac, ::testing::Values("pkcs11", "memory"),
						 [](const ::testing::TestParamInfo<std::string> &param)
						 { return param.param; });

// A fresh token and a PKCS#11 provider on it; the provider goes first, then the token.
class ProviderMacPkcs11 : public ::testing::Test
{
  protected:
	ProviderMacPkcs11() : provider_(MakePkcs11Provider(token_.Config())) {}

	SoftHsmToken token_;
	std::unique_ptr<Provider> provider_;
};

TEST_F(ProviderMacPkcs11, MacKeyValueCannotBeRead)
{
	ASSERT_TRUE(provider_->EnsureMacKey(kMacKey));
	RawPkcs11 raw(token_.label());
	const CK_SESSION_HANDLE session = raw.OpenUserSession(token_.user_pin());
	const std::vector<CK_OBJECT_HANDLE> keys = raw.FindSecretKeys(kMacKey);
	ASSERT_EQ(keys.size(), 1u);

	Bytes value(64);
	CK_ATTRIBUTE attribute{CKA_VALUE, value.data(), value.size()};
	EXPECT_EQ(CkrName(raw.functions()->C_GetAttributeValue(session, keys[0], &attribute, 1)),
			  "CKR_ATTRIBUTE_SENSITIVE");

	CK_KEY_TYPE key_type = CKK_AES;
	CK_BBOOL always_sensitive = CK_FALSE, never_extractable = CK_FALSE, is_private = CK_FALSE;
	CK_BBOOL encrypt = CK_TRUE, decrypt = CK_TRUE, wrap = CK_TRUE, unwrap = CK_TRUE;
	CK_BBOOL derive = CK_TRUE;
	Bytes id(64);
	CK_ATTRIBUTE flags[] = {
		{CKA_KEY_TYPE, &key_type, sizeof key_type},
		{CKA_ALWAYS_SENSITIVE, &always_sensitive, sizeof always_sensitive},
		{CKA_NEVER_EXTRACTABLE, &never_extractable, sizeof never_extractable},
		{CKA_PRIVATE, &is_private, sizeof is_private},
		{CKA_ENCRYPT, &encrypt, sizeof encrypt},
		{CKA_DECRYPT, &decrypt, sizeof decrypt},
		{CKA_WRAP, &wrap, sizeof wrap},
		{CKA_UNWRAP, &unwrap, sizeof unwrap},
		{CKA_DERIVE, &derive, sizeof derive},
		{CKA_ID, id.data(), id.size()},
	};
	ASSERT_EQ(raw.functions()->C_GetAttributeValue(session, keys[0], flags,
												   sizeof flags / sizeof flags[0]),
			  static_cast<CK_RV>(CKR_OK));
	EXPECT_EQ(key_type, static_cast<CK_KEY_TYPE>(CKK_GENERIC_SECRET));
	EXPECT_EQ(always_sensitive, CK_TRUE);
	EXPECT_EQ(never_extractable, CK_TRUE);
	EXPECT_EQ(is_private, CK_TRUE);
	EXPECT_EQ(encrypt, CK_FALSE);
	EXPECT_EQ(decrypt, CK_FALSE);
	EXPECT_EQ(wrap, CK_FALSE);
	EXPECT_EQ(unwrap, CK_FALSE);
	EXPECT_EQ(derive, CK_FALSE);
	id.resize(flags[9].ulValueLen);
	EXPECT_EQ(id, FromText(kMacKey));
}

TEST_F(ProviderMacPkcs11, KeyPersistsForANewSession)
{
	ASSERT_TRUE(provider_->EnsureMacKey(kMacKey));
	const Bytes data = FromText("checkpoint 7");
	const MacValue mac = provider_->Mac(kMacKey, data);
	{
		auto second = MakePkcs11Provider(token_.Config());
		EXPECT_FALSE(second->EnsureMacKey(kMacKey));
		EXPECT_TRUE(second->VerifyMac(kMacKey, data, mac));
		EXPECT_EQ(second->Mac(kMacKey, data), mac);
	}
	provider_.reset();
	auto third = MakePkcs11Provider(token_.Config()); // after the library was finalised
	EXPECT_TRUE(third->VerifyMac(kMacKey, data, mac));
	EXPECT_FALSE(third->EnsureMacKey(kMacKey));

	RawPkcs11 raw(token_.label());
	raw.OpenUserSession(token_.user_pin());
	EXPECT_EQ(raw.FindSecretKeys(kMacKey).size(), 1u);
}

TEST_F(ProviderMacPkcs11, MacIsHmacSha256)
{
	// RFC 4231 test case 6: a 131-byte key of 0xaa (SoftHSM refuses HMAC keys under 32 bytes,
	// which rules out the shorter-keyed cases).
	RawPkcs11 raw(token_.label());
	const CK_SESSION_HANDLE session = raw.OpenUserSession(token_.user_pin());
	ASSERT_EQ(ImportSecret(raw, session, "rfc4231-6", CKK_GENERIC_SECRET, Bytes(131, 0xaa)),
			  static_cast<CK_RV>(CKR_OK));
	const Bytes data = FromText("Test Using Larger Than Block-Size Key - Hash Key First");
	const MacValue mac = provider_->Mac("rfc4231-6", data);
	EXPECT_EQ(ToHex(mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
	EXPECT_TRUE(provider_->VerifyMac("rfc4231-6", data, mac));
	EXPECT_FALSE(provider_->EnsureMacKey("rfc4231-6")); // found, and fit to be a MAC key
}

TEST_F(ProviderMacPkcs11, RefusesAnUnfitKeyUnderTheLabel)
{
	RawPkcs11 raw(token_.label());
	const CK_SESSION_HANDLE session = raw.OpenUserSession(token_.user_pin());
	ASSERT_EQ(ImportSecret(raw, session, "short-mac", CKK_GENERIC_SECRET, Bytes(16, 0x42)),
			  static_cast<CK_RV>(CKR_OK));
	const Error error = Thrown([&] { provider_->Mac("short-mac", FromText("data")); });
	EXPECT_EQ(error.kind(), ErrorKind::KeyNotUsable);
	EXPECT_EQ(error.detail(), "C_SignInit: CKR_KEY_SIZE_RANGE");
	EXPECT_EQ(raw.FindSecretKeys("short-mac").size(), 1u);

	ASSERT_EQ(raw.GenerateAesKey("aes-under-mac-label"), static_cast<CK_RV>(CKR_OK));
	EXPECT_EQ(Thrown([&] { provider_->EnsureMacKey("aes-under-mac-label"); }).kind(),
			  ErrorKind::KeyNotUsable);
	EXPECT_EQ(raw.FindSecretKeys("aes-under-mac-label").size(), 1u); // nothing generated
}

TEST_F(ProviderMacPkcs11, RacingCallsCreateOneKey)
{
	constexpr int kThreads = 4;
	constexpr int kRounds = 5;
	std::vector<std::unique_ptr<Provider>> providers;
	for (int i = 0; i < kThreads; ++i)
	{
		providers.push_back(MakePkcs11Provider(token_.Config()));
		providers.back()->FindNewestMasterKey("connect"); // log in before the race
	}
	for (int round = 0; round < kRounds; ++round)
	{
		const std::string label = "race-mac-" + std::to_string(round);
		std::atomic<int> created = 0;
		std::atomic<int> failed = 0;
		std::latch start(kThreads);
		std::vector<std::thread> threads;
		for (int i = 0; i < kThreads; ++i)
			threads.emplace_back(
				[&, i]
				{
					start.arrive_and_wait();
					try
					{
						if (providers[i]->EnsureMacKey(label))
							++created;
					}
					catch (const Error &)
					{
						++failed;
					}
				});
		for (std::thread &thread : threads)
			thread.join();
		EXPECT_EQ(created.load(), 1) << label;
		EXPECT_EQ(failed.load(), 0) << label;
		EXPECT_NO_THROW(provider_->Mac(label, FromText("data"))) << label;
	}
	RawPkcs11 raw(token_.label());
	raw.OpenUserSession(token_.user_pin());
	for (int round = 0; round < kRounds; ++round)
		EXPECT_EQ(raw.FindSecretKeys("race-mac-" + std::to_string(round)).size(), 1u);
}

TEST_F(ProviderMacPkcs11, RetriesAfterLosingTheSession)
{
	provider_->EnsureMacKey(kMacKey);
	const Bytes data = FromText("data");
	const MacValue mac = provider_->Mac(kMacKey, data);
	{
		RawPkcs11 raw(token_.label());
		ASSERT_EQ(raw.functions()->C_CloseAllSessions(raw.slot()), static_cast<CK_RV>(CKR_OK));
	}
	EXPECT_EQ(provider_->Mac(kMacKey, data), mac);
	{
		RawPkcs11 raw(token_.label());
		ASSERT_EQ(raw.functions()->C_CloseAllSessions(raw.slot()), static_cast<CK_RV>(CKR_OK));
	}
	EXPECT_TRUE(provider_->VerifyMac(kMacKey, data, mac));
	{
		RawPkcs11 raw(token_.label());
		ASSERT_EQ(raw.functions()->C_CloseAllSessions(raw.slot()), static_cast<CK_RV>(CKR_OK));
	}
	EXPECT_FALSE(provider_->EnsureMacKey(kMacKey));
}

TEST(ProviderMacMemory, MasterKeysCannotSign)
{
	auto provider = MakeMemoryProvider();
	provider->Generate(kMaster);
	provider->EnsureMacKey(kMacKey);
	const auto master = provider->Describe(kMaster);
	EXPECT_FALSE(master.can_sign);
	EXPECT_FALSE(master.can_verify);
	const SecureBuffer dek = SecureBuffer::Random(32);
	EXPECT_EQ(Thrown([&] { provider->Wrap(kMacKey, dek.view()); }).kind(), ErrorKind::KeyNotUsable);
	EXPECT_EQ(Thrown([&] { provider->Unwrap(kMacKey, Bytes(40, 0)); }).kind(),
			  ErrorKind::KeyNotUsable);
}

} // namespace
