// Tests of the PKCS#11 provider against a throwaway SoftHSM2 token: key generation and
// versions, RFC 3394 wrapping, error kinds, master key attributes, fork and session loss.
#include "pgkm/core/error.hpp"
#include "pgkm/provider/provider.hpp"
#include "softhsm_token.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace
{

using pgkm::core::Error;
using pgkm::core::ErrorKind;
using pgkm::core::SecureBuffer;
using pgkm::provider::CkrName;
using pgkm::provider::MakePkcs11Provider;
using pgkm::provider::Pkcs11Config;
using pgkm::provider::Provider;
using pgkm::test::RawPkcs11;
using pgkm::test::SoftHsmToken;

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

// Returns the buffer's bytes as a vector, for comparisons.
std::vector<std::uint8_t> Bytes(const SecureBuffer &buffer)
{
	return {buffer.data(), buffer.data() + buffer.size()};
}

// A fresh token and a provider on it; the provider goes first, then the token.
class ProviderPkcs11 : public ::testing::Test
{
  protected:
	ProviderPkcs11() : ProviderPkcs11(SoftHsmToken::Options{}) {}
	explicit ProviderPkcs11(SoftHsmToken::Options options)
		: token_(std::move(options)), provider_(MakePkcs11Provider(token_.Config()))
	{
	}

	// Generates kMaster and wraps a random DEK under it.
	std::vector<std::uint8_t> WrapUnderMaster(const SecureBuffer &dek)
	{
		provider_->Generate(kMaster);
		return provider_->Wrap(kMaster, dek.view());
	}

	// Forks; the child unwraps with the provider object it inherited (connected by the
	// parent) and reports through its exit status. Returns that status.
	int UnwrapInChild(const std::vector<std::uint8_t> &wrapped, const SecureBuffer &dek)
	{
		const pid_t pid = fork();
		if (pid == 0)
		{
			int code = 0;
			try
			{
				code = Bytes(provider_->Unwrap(kMaster, wrapped)) == Bytes(dek) ? 0 : 2;
				provider_.reset(); // finalises the child's own initialisation
			}
			catch (...)
			{
				code = 3;
			}
			_exit(code);
		}
		int status = 0;
		if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
			return -1;
		return WEXITSTATUS(status);
	}

	SoftHsmToken token_;
	std::unique_ptr<Provider> provider_;
};

// The same, on a token whose library keeps its state across fork (Debian's default).
class ProviderPkcs11NoResetOnFork : public ProviderPkcs11
{
  protected:
	ProviderPkcs11NoResetOnFork() : ProviderPkcs11(NoReset()) {}

	// Returns token options with library.reset_on_fork = false.
	static SoftHsmToken::Options NoReset()
	{
		SoftHsmToken::Options options;
		options.reset_on_fork = false;
		return options;
	}
};

TEST_F(ProviderPkcs11, FindsTheNewestVersion)
{
	EXPECT_EQ(provider_->FindNewestMasterKey("pgkm-master"), std::nullopt);
	for (const char *label :
		 {"pgkm-master.v2", "pgkm-master.v1", "pgkm-master.v10", "pgkm-master.v01",
		  "pgkm-master.vx", "pgkm-masterx.v3", "pgkm-master.v0", "other.v99"})
		provider_->Generate(label);
	EXPECT_EQ(provider_->FindNewestMasterKey("pgkm-master"), "pgkm-master.v10");
	EXPECT_EQ(provider_->FindNewestMasterKey("other"), "other.v99");
	EXPECT_EQ(provider_->FindNewestMasterKey("pgkm-masterx"), "pgkm-masterx.v3");
	EXPECT_EQ(provider_->FindNewestMasterKey("absent"), std::nullopt);
}

TEST_F(ProviderPkcs11, RefusesToGenerateAnExistingLabel)
{
	provider_->Generate(kMaster);
	const Error error = Thrown([&] { provider_->Generate(kMaster); });
	EXPECT_EQ(error.kind(), ErrorKind::InvalidArgument);
	EXPECT_NE(error.message().find("already exists"), std::string::npos) << error.message();
	EXPECT_EQ(Thrown([&] { provider_->Generate(""); }).kind(), ErrorKind::InvalidArgument);
}

TEST_F(ProviderPkcs11, WrapsAndUnwraps)
{
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped = WrapUnderMaster(dek);
	EXPECT_EQ(wrapped.size(), 40u);
	EXPECT_EQ(provider_->Mechanism(), "CKM_AES_KEY_WRAP");
	EXPECT_EQ(Bytes(provider_->Unwrap(kMaster, wrapped)), Bytes(dek));
	EXPECT_EQ(Bytes(provider_->Unwrap(kMaster, wrapped)), Bytes(dek));
}

TEST_F(ProviderPkcs11, LeavesNoDekObjectsBehind)
{
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped = WrapUnderMaster(dek);
	provider_->Unwrap(kMaster, wrapped);
	EXPECT_EQ(
		Thrown([&] { provider_->Unwrap(kMaster, std::vector<std::uint8_t>(40, 0x5a)); }).kind(),
		ErrorKind::WrongMasterKey);
	RawPkcs11 raw(token_.label());
	raw.OpenUserSession(token_.user_pin());
	EXPECT_EQ(raw.CountSessionSecretKeys(), 0u);
	ASSERT_EQ(raw.GenerateAesKey("session-check", CK_FALSE), static_cast<CK_RV>(CKR_OK));
	EXPECT_EQ(raw.CountSessionSecretKeys(), 1u); // the count does see session objects
}

TEST_F(ProviderPkcs11, RefusesTheWrongMasterKey)
{
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped = WrapUnderMaster(dek);
	provider_->Generate("pgkm-master.v2");
	const Error error = Thrown([&] { provider_->Unwrap("pgkm-master.v2", wrapped); });
	EXPECT_EQ(error.kind(), ErrorKind::WrongMasterKey);
	EXPECT_EQ(error.message(), "wrapped key does not unwrap under master key \"pgkm-master.v2\"");
	EXPECT_EQ(error.detail().rfind("C_UnwrapKey: CKR_", 0), 0u) << error.detail();
	RecordProperty("wrong_master_key_detail", error.detail());
	// The right key still works afterwards: the failure left the session usable.
	EXPECT_EQ(Bytes(provider_->Unwrap(kMaster, wrapped)), Bytes(dek));
}

TEST_F(ProviderPkcs11, RefusesAFlippedByte)
{
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped = WrapUnderMaster(dek);
	for (std::size_t i = 0; i < wrapped.size(); ++i)
	{
		std::vector<std::uint8_t> altered = wrapped;
		altered[i] ^= 0x80;
		const Error error = Thrown([&] { provider_->Unwrap(kMaster, altered); });
		EXPECT_EQ(error.kind(), ErrorKind::WrongMasterKey) << "byte " << i;
		EXPECT_EQ(error.detail().rfind("C_UnwrapKey: CKR_", 0), 0u) << error.detail();
		if (i == 0)
			RecordProperty("flipped_byte_detail", error.detail());
	}
	EXPECT_EQ(Bytes(provider_->Unwrap(kMaster, wrapped)), Bytes(dek));
}

TEST_F(ProviderPkcs11, RefusesWrongLengths)
{
	const SecureBuffer dek = SecureBuffer::Random(32);
	std::vector<std::uint8_t> wrapped = WrapUnderMaster(dek);
	for (const std::size_t size : {0u, 8u, 32u, 39u, 41u, 48u})
	{
		wrapped.resize(size, 0);
		const Error error = Thrown([&] { provider_->Unwrap(kMaster, wrapped); });
		EXPECT_EQ(error.kind(), ErrorKind::WrongMasterKey);
		EXPECT_EQ(error.message(), "wrapped key has the wrong length");
	}
	const SecureBuffer short_dek = SecureBuffer::Random(16);
	EXPECT_EQ(Thrown([&] { provider_->Wrap(kMaster, short_dek.view()); }).kind(),
			  ErrorKind::InvalidArgument);
}

TEST_F(ProviderPkcs11, ReportsUnknownMasterKeys)
{
	provider_->Generate(kMaster);
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped(40, 0);
	const Error error = Thrown([&] { provider_->Wrap("pgkm-master.v7", dek.view()); });
	EXPECT_EQ(error.kind(), ErrorKind::UnknownKey);
	EXPECT_NE(error.message().find("\"pgkm-master.v7\""), std::string::npos);
	EXPECT_EQ(Thrown([&] { provider_->Unwrap("pgkm-master.v7", wrapped); }).kind(),
			  ErrorKind::UnknownKey);
	EXPECT_EQ(Thrown([&] { provider_->Describe("pgkm-master.v7"); }).kind(), ErrorKind::UnknownKey);
}

TEST_F(ProviderPkcs11, DescribesAMasterKey)
{
	provider_->Generate(kMaster);
	const auto info = provider_->Describe(kMaster);
	EXPECT_EQ(info.label, kMaster);
	EXPECT_EQ(info.key_bits, 256u);
	EXPECT_TRUE(info.token);
	EXPECT_TRUE(info.sensitive);
	EXPECT_FALSE(info.extractable);
	EXPECT_TRUE(info.can_wrap);
	EXPECT_TRUE(info.can_unwrap);
	EXPECT_FALSE(info.can_sign) << "a master key must not sign (SoftHSM allows it unless told)";
	EXPECT_FALSE(info.can_verify);
}

TEST_F(ProviderPkcs11, MasterKeyValueCannotBeRead)
{
	provider_->Generate(kMaster);
	RawPkcs11 raw(token_.label());
	const CK_SESSION_HANDLE session = raw.OpenUserSession(token_.user_pin());
	const std::vector<CK_OBJECT_HANDLE> keys = raw.FindSecretKeys(kMaster);
	ASSERT_EQ(keys.size(), 1u);

	std::vector<std::uint8_t> value(64);
	CK_ATTRIBUTE attribute{CKA_VALUE, value.data(), value.size()};
	EXPECT_EQ(CkrName(raw.functions()->C_GetAttributeValue(session, keys[0], &attribute, 1)),
			  "CKR_ATTRIBUTE_SENSITIVE");

	CK_BBOOL always_sensitive = CK_FALSE, never_extractable = CK_FALSE, is_private = CK_FALSE;
	CK_BBOOL encrypt = CK_TRUE, decrypt = CK_TRUE;
	CK_ATTRIBUTE flags[] = {
		{CKA_ALWAYS_SENSITIVE, &always_sensitive, sizeof always_sensitive},
		{CKA_NEVER_EXTRACTABLE, &never_extractable, sizeof never_extractable},
		{CKA_PRIVATE, &is_private, sizeof is_private},
		{CKA_ENCRYPT, &encrypt, sizeof encrypt},
		{CKA_DECRYPT, &decrypt, sizeof decrypt},
	};
	ASSERT_EQ(raw.functions()->C_GetAttributeValue(session, keys[0], flags, 5),
			  static_cast<CK_RV>(CKR_OK));
	EXPECT_EQ(always_sensitive, CK_TRUE);
	EXPECT_EQ(never_extractable, CK_TRUE);
	EXPECT_EQ(is_private, CK_TRUE);
	EXPECT_EQ(encrypt, CK_FALSE);
	EXPECT_EQ(decrypt, CK_FALSE);
}

TEST_F(ProviderPkcs11, RefusesAnAmbiguousLabel)
{
	provider_->Generate(kMaster);
	RawPkcs11 raw(token_.label());
	raw.OpenUserSession(token_.user_pin());
	ASSERT_EQ(raw.GenerateAesKey("twice.v1"), static_cast<CK_RV>(CKR_OK));
	ASSERT_EQ(raw.GenerateAesKey("twice.v1"), static_cast<CK_RV>(CKR_OK));
	const Error error = Thrown([&] { provider_->Describe("twice.v1"); });
	EXPECT_EQ(error.kind(), ErrorKind::TokenUnavailable);
	EXPECT_NE(error.message().find("holds 2 secret keys labelled \"twice.v1\""), std::string::npos)
		<< error.message();
}

TEST_F(ProviderPkcs11, ReportsAMissingToken)
{
	Pkcs11Config config = token_.Config();
	config.token_label = "no-such-token";
	auto provider = MakePkcs11Provider(config);
	const Error error = Thrown([&] { provider->FindNewestMasterKey("pgkm-master"); });
	EXPECT_EQ(error.kind(), ErrorKind::TokenUnavailable);
	EXPECT_EQ(error.message(), "PKCS#11 token \"no-such-token\" not found");
	EXPECT_NE(error.detail().find("\"" + token_.label() + "\""), std::string::npos)
		<< error.detail();

	config.token_label = std::string(40, 'x');
	EXPECT_EQ(Thrown([&] { MakePkcs11Provider(config)->Generate(kMaster); }).kind(),
			  ErrorKind::TokenUnavailable);
}

TEST_F(ProviderPkcs11, ReportsAWrongPinWithoutShowingIt)
{
	const std::string wrong_pin = "9876-not-the-pin";
	Pkcs11Config config = token_.Config();
	config.pin_file = token_.dir() + "/wrong-pin";
	SoftHsmToken::WriteFile(config.pin_file, wrong_pin + "\n", 0600);
	auto provider = MakePkcs11Provider(config);
	const Error error = Thrown([&] { provider->Generate(kMaster); });
	EXPECT_EQ(error.kind(), ErrorKind::TokenUnavailable);
	EXPECT_EQ(error.message(), "could not log in to PKCS#11 token \"" + token_.label() + "\"");
	EXPECT_EQ(error.detail(), "C_Login: CKR_PIN_INCORRECT");
	for (const std::string *text : {&error.message(), &error.detail(), &error.hint()})
	{
		EXPECT_EQ(text->find(wrong_pin), std::string::npos) << *text;
		EXPECT_EQ(text->find(token_.user_pin()), std::string::npos) << *text;
	}
}

TEST_F(ProviderPkcs11, TriesARefusedPinFileAgainOnlyOnceItChanges)
{
	Pkcs11Config config = token_.Config();
	config.pin_file = token_.dir() + "/wrong-pin";
	SoftHsmToken::WriteFile(config.pin_file, "9876-not-the-pin\n", 0600);
	auto provider = MakePkcs11Provider(config);
	EXPECT_EQ(Thrown([&] { provider->Generate(kMaster); }).detail(), "C_Login: CKR_PIN_INCORRECT");
	// Not tried again: the detail says so (a token may lock its user after a few).
	const Error again = Thrown([&] { provider->Generate(kMaster); });
	EXPECT_EQ(again.kind(), ErrorKind::TokenUnavailable);
	EXPECT_EQ(again.detail().rfind("C_Login: CKR_PIN_INCORRECT (earlier, for this version", 0), 0u)
		<< again.detail();
	// Another wrong PIN is a new version of the file: tried, and refused by the token.
	SoftHsmToken::WriteFile(config.pin_file, "1111-not-the-pin-either\n", 0600);
	EXPECT_EQ(Thrown([&] { provider->Generate(kMaster); }).detail(), "C_Login: CKR_PIN_INCORRECT");
	SoftHsmToken::WriteFile(config.pin_file, token_.user_pin() + "\n", 0600);
	provider->Generate(kMaster);
	EXPECT_TRUE(provider->Describe(kMaster).sensitive);
}

TEST_F(ProviderPkcs11, ReportsAMissingModule)
{
	Pkcs11Config config = token_.Config();
	config.module_path = token_.dir() + "/libabsent-pkcs11.so";
	auto provider = MakePkcs11Provider(config); // lazy: constructing never fails
	EXPECT_EQ(provider->Mechanism(), "CKM_AES_KEY_WRAP");
	const Error error = Thrown([&] { provider->FindNewestMasterKey("pgkm-master"); });
	EXPECT_EQ(error.kind(), ErrorKind::TokenUnavailable);
	EXPECT_NE(error.message().find("could not load PKCS#11 module"), std::string::npos);
	EXPECT_NE(error.detail().find("libabsent-pkcs11.so"), std::string::npos) << error.detail();

	config.module_path = "";
	EXPECT_EQ(Thrown([&] { MakePkcs11Provider(config)->Generate(kMaster); }).kind(),
			  ErrorKind::Configuration);
}

TEST_F(ProviderPkcs11, RefusesAPinFileOthersCanRead)
{
	ASSERT_EQ(chmod(token_.pin_file().c_str(), 0644), 0);
	const Error error = Thrown([&] { provider_->Generate(kMaster); });
	EXPECT_EQ(error.kind(), ErrorKind::Configuration);
	EXPECT_NE(error.message().find(token_.pin_file()), std::string::npos);

	ASSERT_EQ(chmod(token_.pin_file().c_str(), 0600), 0);
	provider_->Generate(kMaster); // the failure left nothing half-connected
	EXPECT_TRUE(provider_->Describe(kMaster).sensitive);
}

TEST_F(ProviderPkcs11, ForkChildInitialisesAgain)
{
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped = WrapUnderMaster(dek);
	EXPECT_EQ(UnwrapInChild(wrapped, dek), 0);
	EXPECT_EQ(Bytes(provider_->Unwrap(kMaster, wrapped)), Bytes(dek)); // parent unaffected
}

TEST_F(ProviderPkcs11NoResetOnFork, ForkChildInitialisesAgain)
{
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped = WrapUnderMaster(dek);
	EXPECT_EQ(UnwrapInChild(wrapped, dek), 0);
	EXPECT_EQ(Bytes(provider_->Unwrap(kMaster, wrapped)), Bytes(dek));
}

TEST_F(ProviderPkcs11, SecondProviderSeesTheKeys)
{
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped = WrapUnderMaster(dek);
	{
		auto second = MakePkcs11Provider(token_.Config());
		EXPECT_EQ(second->FindNewestMasterKey("pgkm-master"), kMaster);
		EXPECT_EQ(Bytes(second->Unwrap(kMaster, wrapped)), Bytes(dek));
		second->Generate("pgkm-master.v2");
		EXPECT_EQ(provider_->FindNewestMasterKey("pgkm-master"), "pgkm-master.v2");
	}
	EXPECT_EQ(Bytes(provider_->Unwrap(kMaster, wrapped)), Bytes(dek)); // first one unaffected
	provider_.reset();
	auto third = MakePkcs11Provider(token_.Config()); // after the library was finalised
	EXPECT_EQ(Bytes(third->Unwrap(kMaster, wrapped)), Bytes(dek));
}

TEST_F(ProviderPkcs11, RetriesAfterLosingTheSession)
{
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped = WrapUnderMaster(dek);
	{
		RawPkcs11 raw(token_.label());
		ASSERT_EQ(raw.functions()->C_CloseAllSessions(raw.slot()), static_cast<CK_RV>(CKR_OK));
	}
	EXPECT_EQ(Bytes(provider_->Unwrap(kMaster, wrapped)), Bytes(dek));
	{
		RawPkcs11 raw(token_.label());
		ASSERT_EQ(raw.functions()->C_CloseAllSessions(raw.slot()), static_cast<CK_RV>(CKR_OK));
	}
	EXPECT_EQ(provider_->Wrap(kMaster, dek.view()), wrapped);
}

TEST_F(ProviderPkcs11, InitialisesAgainAfterTheLibraryWasFinalised)
{
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped = WrapUnderMaster(dek);
	{
		RawPkcs11 raw(token_.label());
		ASSERT_EQ(raw.functions()->C_Finalize(nullptr), static_cast<CK_RV>(CKR_OK));
	}
	EXPECT_EQ(Bytes(provider_->Unwrap(kMaster, wrapped)), Bytes(dek));
}

// Returns the one token directory under the fixture's tokens/ (SoftHSM2's file store).
std::filesystem::path TokenDirectory(const SoftHsmToken &token)
{
	std::vector<std::filesystem::path> found;
	for (const auto &entry : std::filesystem::directory_iterator(token.dir() + "/tokens"))
		found.push_back(entry.path());
	if (found.size() != 1)
		throw std::runtime_error("expected one token directory");
	return found.front();
}

TEST_F(ProviderPkcs11, FindsTheTokenAgainWhenItsDirectoryReturns)
{
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped = WrapUnderMaster(dek); // connected, handle cached
	const std::filesystem::path dir = TokenDirectory(token_);
	const std::filesystem::path away = token_.dir() + "/away";
	std::filesystem::rename(dir, away);

	const Error error = Thrown([&] { provider_->Unwrap(kMaster, wrapped); });
	EXPECT_EQ(error.kind(), ErrorKind::TokenUnavailable);
	EXPECT_EQ(error.message(), "PKCS#11 token \"" + token_.label() + "\" not found");
	// the condition's name, and what the call on the old session got
	EXPECT_EQ(error.detail().rfind("CKR_TOKEN_NOT_PRESENT: ", 0), 0u) << error.detail();
	EXPECT_NE(error.detail().find("before reconnecting, C_"), std::string::npos) << error.detail();
	EXPECT_NE(error.hint().find("pgkm.pkcs11_token_label"), std::string::npos) << error.hint();
	// a call that connects afresh says the same, without the first attempt
	const Error again = Thrown([&] { provider_->Wrap(kMaster, dek.view()); });
	EXPECT_EQ(again.detail().rfind("CKR_TOKEN_NOT_PRESENT: ", 0), 0u) << again.detail();

	std::filesystem::rename(away, dir);
	// SoftHSM2 lists its tokens only at C_Initialize: this works only because the provider
	// initialises the library afresh after the failure.
	EXPECT_EQ(Bytes(provider_->Unwrap(kMaster, wrapped)), Bytes(dek));
	EXPECT_EQ(provider_->Wrap(kMaster, dek.view()), wrapped);
}

// A token gone and back while no call was made goes unnoticed (SoftHSM2 keeps the session).
TEST_F(ProviderPkcs11, KeepsWorkingWhenTheTokenReturnsBetweenCalls)
{
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped = WrapUnderMaster(dek);
	const std::filesystem::path dir = TokenDirectory(token_);
	const std::filesystem::path away = token_.dir() + "/away";
	std::filesystem::rename(dir, away);
	std::filesystem::rename(away, dir);
	EXPECT_EQ(Bytes(provider_->Unwrap(kMaster, wrapped)), Bytes(dek));
}

TEST_F(ProviderPkcs11, ReportsADeletedMasterKeyAndFindsItRestored)
{
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped = WrapUnderMaster(dek);
	const std::filesystem::path dir = TokenDirectory(token_);
	const std::filesystem::path backup = token_.dir() + "/backup";
	std::filesystem::copy(dir, backup, std::filesystem::copy_options::recursive);
	{
		RawPkcs11 raw(token_.label());
		const CK_SESSION_HANDLE session = raw.OpenUserSession(token_.user_pin());
		const std::vector<CK_OBJECT_HANDLE> keys = raw.FindSecretKeys(kMaster);
		ASSERT_EQ(keys.size(), 1u);
		ASSERT_EQ(raw.functions()->C_DestroyObject(session, keys.front()),
				  static_cast<CK_RV>(CKR_OK));
	}

	const Error error = Thrown([&] { provider_->Unwrap(kMaster, wrapped); });
	EXPECT_EQ(error.kind(), ErrorKind::UnknownKey);
	EXPECT_EQ(error.message(), "master key \"" + std::string(kMaster) +
								   "\" not found in PKCS#11 token \"" + token_.label() + "\"");
	EXPECT_EQ(error.detail().rfind("C_FindObjects: no secret key labelled \"", 0), 0u)
		<< error.detail();
	EXPECT_NE(error.hint().find("backup"), std::string::npos) << error.hint();

	std::filesystem::copy(backup, dir,
						  std::filesystem::copy_options::recursive |
							  std::filesystem::copy_options::overwrite_existing);
	EXPECT_EQ(Bytes(provider_->Unwrap(kMaster, wrapped)), Bytes(dek));
}

// Destroying a master key deletes it from the token for good: neither this provider, nor one
// that had its handle cached, nor a fresh one can unwrap under it again; other keys stay.
TEST_F(ProviderPkcs11, DestroysAMasterKeyForGood)
{
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped = WrapUnderMaster(dek);
	provider_->Generate("pgkm-master.v2");
	const std::vector<std::uint8_t> wrapped_v2 = provider_->Wrap("pgkm-master.v2", dek.view());
	auto other = MakePkcs11Provider(token_.Config()); // another session, handle cached
	ASSERT_EQ(Bytes(other->Unwrap(kMaster, wrapped)), Bytes(dek));

	provider_->Destroy(kMaster);

	{
		RawPkcs11 raw(token_.label());
		raw.OpenUserSession(token_.user_pin());
		EXPECT_TRUE(raw.FindSecretKeys(kMaster).empty());
		EXPECT_EQ(raw.FindSecretKeys("pgkm-master.v2").size(), 1u);
	}
	for (Provider *p : {provider_.get(), other.get()})
	{
		const Error error = Thrown([&] { p->Unwrap(kMaster, wrapped); });
		EXPECT_EQ(error.kind(), ErrorKind::UnknownKey);
		EXPECT_EQ(error.detail().rfind("C_FindObjects: no secret key labelled \"", 0), 0u)
			<< error.detail();
	}
	EXPECT_EQ(Thrown([&] { provider_->Destroy(kMaster); }).kind(), ErrorKind::UnknownKey);
	EXPECT_EQ(Thrown([&] { other->Destroy(kMaster); }).kind(), ErrorKind::UnknownKey);
	EXPECT_EQ(Bytes(provider_->Unwrap("pgkm-master.v2", wrapped_v2)), Bytes(dek));
	EXPECT_EQ(provider_->FindNewestMasterKey("pgkm-master"), "pgkm-master.v2");
	other.reset();
	provider_.reset();
	auto fresh = MakePkcs11Provider(token_.Config()); // after the library was finalised
	EXPECT_EQ(Thrown([&] { fresh->Unwrap(kMaster, wrapped); }).kind(), ErrorKind::UnknownKey);
	EXPECT_EQ(Bytes(fresh->Unwrap("pgkm-master.v2", wrapped_v2)), Bytes(dek));
}

// A key the token will not destroy (CKA_DESTROYABLE false) stays, and the error names the call
// and its return code.
TEST_F(ProviderPkcs11, ReportsAKeyTheTokenWillNotDestroy)
{
	{
		RawPkcs11 raw(token_.label());
		const CK_SESSION_HANDLE session = raw.OpenUserSession(token_.user_pin());
		CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
		CK_KEY_TYPE key_type = CKK_AES;
		CK_ULONG value_len = 32;
		CK_BBOOL yes = CK_TRUE;
		CK_BBOOL no = CK_FALSE;
		std::string label = kMaster;
		CK_ATTRIBUTE key_template[] = {
			{CKA_CLASS, &key_class, sizeof key_class},
			{CKA_KEY_TYPE, &key_type, sizeof key_type},
			{CKA_VALUE_LEN, &value_len, sizeof value_len},
			{CKA_TOKEN, &yes, sizeof yes},
			{CKA_PRIVATE, &yes, sizeof yes},
			{CKA_SENSITIVE, &yes, sizeof yes},
			{CKA_EXTRACTABLE, &no, sizeof no},
			{CKA_WRAP, &yes, sizeof yes},
			{CKA_UNWRAP, &yes, sizeof yes},
			{CKA_DESTROYABLE, &no, sizeof no},
			{CKA_LABEL, label.data(), label.size()},
		};
		CK_MECHANISM mechanism{CKM_AES_KEY_GEN, nullptr, 0};
		CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
		ASSERT_EQ(raw.functions()->C_GenerateKey(session, &mechanism, key_template,
												 sizeof key_template / sizeof key_template[0],
												 &key),
				  static_cast<CK_RV>(CKR_OK));
	}
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped = provider_->Wrap(kMaster, dek.view());
	const Error error = Thrown([&] { provider_->Destroy(kMaster); });
	EXPECT_EQ(error.kind(), ErrorKind::TokenUnavailable);
	EXPECT_EQ(error.message(), "could not destroy master key \"" + std::string(kMaster) +
								   "\" in PKCS#11 token \"" + token_.label() + "\"");
	EXPECT_EQ(error.detail(), "C_DestroyObject: CKR_ACTION_PROHIBITED");
	EXPECT_EQ(Bytes(provider_->Unwrap(kMaster, wrapped)), Bytes(dek));
}

TEST(ProviderCkrName, NamesStandardValues)
{
	EXPECT_EQ(CkrName(CKR_OK), "CKR_OK");
	EXPECT_EQ(CkrName(CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT");
	EXPECT_EQ(CkrName(CKR_SESSION_HANDLE_INVALID), "CKR_SESSION_HANDLE_INVALID");
	EXPECT_EQ(CkrName(CKR_CRYPTOKI_ALREADY_INITIALIZED), "CKR_CRYPTOKI_ALREADY_INITIALIZED");
	EXPECT_EQ(CkrName(CKR_FUNCTION_REJECTED), "CKR_FUNCTION_REJECTED");
	EXPECT_EQ(CkrName(0x80001234UL), "CKR_0x80001234");
	EXPECT_EQ(CkrName(0x1FFUL), "CKR_0x000001FF");
}

} // namespace
