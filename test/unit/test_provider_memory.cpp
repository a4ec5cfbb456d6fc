// Tests of the in-memory provider (RFC 3394 with OpenSSL) and of versioned master-key labels.
#include "pgkm/core/error.hpp"
#include "pgkm/provider/master_label.hpp"
#include "pgkm/provider/provider.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace
{

using pgkm::core::Error;
using pgkm::core::ErrorKind;
using pgkm::core::SecureBuffer;
using pgkm::provider::MakeMemoryProvider;
using pgkm::provider::MasterKeyVersion;

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

TEST(ProviderMemory, WrapsAndUnwraps)
{
	auto provider = MakeMemoryProvider();
	provider->Generate("m.v1");
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped = provider->Wrap("m.v1", dek.view());
	EXPECT_EQ(wrapped.size(), 40u);
	EXPECT_EQ(provider->Mechanism(), "CKM_AES_KEY_WRAP");
	EXPECT_EQ(Bytes(provider->Unwrap("m.v1", wrapped)), Bytes(dek));
}

TEST(ProviderMemory, RefusesTheWrongMasterKey)
{
	auto provider = MakeMemoryProvider();
	provider->Generate("m.v1");
	provider->Generate("m.v2");
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped = provider->Wrap("m.v1", dek.view());
	const Error error = Thrown([&] { provider->Unwrap("m.v2", wrapped); });
	EXPECT_EQ(error.kind(), ErrorKind::WrongMasterKey);
	EXPECT_EQ(error.message(), "wrapped key does not unwrap under master key \"m.v2\"");
}

TEST(ProviderMemory, RefusesAFlippedByte)
{
	auto provider = MakeMemoryProvider();
	provider->Generate("m.v1");
	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped = provider->Wrap("m.v1", dek.view());
	for (std::size_t i = 0; i < wrapped.size(); ++i)
	{
		std::vector<std::uint8_t> altered = wrapped;
		altered[i] ^= 0x01;
		EXPECT_EQ(Thrown([&] { provider->Unwrap("m.v1", altered); }).kind(),
				  ErrorKind::WrongMasterKey)
			<< "byte " << i;
	}
}

TEST(ProviderMemory, RefusesWrongLengths)
{
	auto provider = MakeMemoryProvider();
	provider->Generate("m.v1");
	const SecureBuffer dek = SecureBuffer::Random(32);
	std::vector<std::uint8_t> wrapped = provider->Wrap("m.v1", dek.view());
	for (const std::size_t size : {0u, 8u, 32u, 39u, 41u, 48u})
	{
		wrapped.resize(size);
		const Error error = Thrown([&] { provider->Unwrap("m.v1", wrapped); });
		EXPECT_EQ(error.kind(), ErrorKind::WrongMasterKey);
		EXPECT_EQ(error.message(), "wrapped key has the wrong length");
	}
	const SecureBuffer short_dek = SecureBuffer::Random(16);
	EXPECT_EQ(Thrown([&] { provider->Wrap("m.v1", short_dek.view()); }).kind(),
			  ErrorKind::InvalidArgument);
}

TEST(ProviderMemory, KnowsItsKeys)
{
	auto provider = MakeMemoryProvider();
	EXPECT_EQ(provider->FindNewestMasterKey("m"), std::nullopt);
	for (const char *label : {"m.v1", "m.v2", "m.v10", "m.v01", "m.vx", "mx.v3"})
		provider->Generate(label);
	EXPECT_EQ(provider->FindNewestMasterKey("m"), "m.v10");
	EXPECT_EQ(Thrown([&] { provider->Generate("m.v2"); }).kind(), ErrorKind::InvalidArgument);

	const auto info = provider->Describe("m.v2");
	EXPECT_EQ(info.label, "m.v2");
	EXPECT_EQ(info.key_bits, 256u);
	EXPECT_FALSE(info.token);
	EXPECT_TRUE(info.sensitive);
	EXPECT_FALSE(info.extractable);

	const SecureBuffer dek = SecureBuffer::Random(32);
	const std::vector<std::uint8_t> wrapped(40, 0);
	EXPECT_EQ(Thrown([&] { provider->Wrap("m.v3", dek.view()); }).kind(), ErrorKind::UnknownKey);
	EXPECT_EQ(Thrown([&] { provider->Unwrap("m.v3", wrapped); }).kind(), ErrorKind::UnknownKey);
	EXPECT_EQ(Thrown([&] { provider->Describe("m.v3"); }).kind(), ErrorKind::UnknownKey);

	const std::vector<std::uint8_t> under_v2 = provider->Wrap("m.v2", dek.view());
	provider->Destroy("m.v2");
	EXPECT_EQ(Thrown([&] { provider->Unwrap("m.v2", under_v2); }).kind(), ErrorKind::UnknownKey);
	EXPECT_EQ(Thrown([&] { provider->Destroy("m.v2"); }).kind(), ErrorKind::UnknownKey);
	EXPECT_EQ(provider->FindNewestMasterKey("m"), "m.v10");
}

TEST(ProviderMasterLabel, ParsesOnlyCanonicalVersions)
{
	EXPECT_EQ(MasterKeyVersion("pgkm-master", "pgkm-master.v1"), 1u);
	EXPECT_EQ(MasterKeyVersion("pgkm-master", "pgkm-master.v10"), 10u);
	EXPECT_EQ(MasterKeyVersion("pgkm-master", "pgkm-master.v18446744073709551615"),
			  18446744073709551615u);
	for (const char *label :
		 {"pgkm-master", "pgkm-master.", "pgkm-master.v", "pgkm-master.v0", "pgkm-master.v01",
		  "pgkm-master.vx", "pgkm-master.v1x", "pgkm-master.v-1", "pgkm-master.v+1",
		  "pgkm-master.v 1", "pgkm-masterx.v3", "xpgkm-master.v3", "pgkm-master.V3",
		  "pgkm-master.v18446744073709551616"})
		EXPECT_EQ(MasterKeyVersion("pgkm-master", label), std::nullopt) << label;
}

} // namespace
