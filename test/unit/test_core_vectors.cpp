// Unit tests against shared/vectors/format-v1.json, computed by an independent implementation.
#include "pgkm/core/aead.hpp"
#include "pgkm/core/error.hpp"
#include "pgkm/core/format.hpp"
#include "pgkm/core/key_material.hpp"
#include "pgkm/core/siv.hpp"
#include "test_core_util.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <array>
#include <fstream>
#include <string>

namespace pgkm::core
{
namespace
{

using test::Bytes;
using test::FromHex;
using test::ToHex;

// Loads the vectors file named by the build.
nlohmann::json LoadVectors()
{
	std::ifstream in(PGKM_VECTORS_FILE);
	if (!in)
		throw std::runtime_error(std::string("cannot open ") + PGKM_VECTORS_FILE);
	return nlohmann::json::parse(in);
}

// Returns a vector's context bytes; null (absent) is empty.
Bytes ContextOf(const nlohmann::json &v)
{
	if (!v.contains("context") || v["context"].is_null())
		return {};
	return FromHex(v["context"].get<std::string>());
}

// Says whether an error kind is what the vector's "why" announces.
bool KindMatchesWhy(ErrorKind kind, const std::string &why)
{
	auto starts = [&](const char *prefix) { return why.rfind(prefix, 0) == 0; };
	if (starts("authentication or too short"))
		return kind == ErrorKind::AuthenticationFailed || kind == ErrorKind::MalformedCiphertext;
	if (starts("authentication"))
		return kind == ErrorKind::AuthenticationFailed;
	if (starts("too short") || starts("unknown format") || starts("unknown algorithm") ||
		starts("empty"))
		return kind == ErrorKind::MalformedCiphertext;
	ADD_FAILURE() << "unrecognised reason in the vectors file: " << why;
	return false;
}

// Every aes-256-gcm vector: valid ones open to their plaintext and seal byte for byte;
// invalid ones throw the error their reason names and never return plaintext.
TEST(CoreVectors, Gcm)
{
	const nlohmann::json doc = LoadVectors();
	int valid = 0, invalid = 0;
	for (const auto &v : doc.at("vectors"))
	{
		if (v.at("algorithm") != "aes-256-gcm")
			continue;
		const std::string name = v.at("name");
		SCOPED_TRACE(name);
		const Bytes dek = FromHex(v.at("dek").get<std::string>());
		const Bytes ct = FromHex(v.at("ciphertext").get<std::string>());
		const Bytes context = ContextOf(v);
		const SecureBuffer key = DeriveKey(dek, kLabelGcm, 32);
		GcmCipher cipher(key.view());

		if (v.at("valid").get<bool>())
		{
			const Bytes pt = FromHex(v.at("plaintext").get<std::string>());
			const Bytes nonce = FromHex(v.at("nonce").get<std::string>());
			ASSERT_EQ(nonce.size(), kGcmNonceSize);

			const Header header = ParseHeader(ct);
			EXPECT_EQ(header.algorithm, Algorithm::Aes256Gcm);
			EXPECT_EQ(header.key_id, v.at("key_id").get<std::uint32_t>());
			EXPECT_EQ(header.key_version, v.at("key_version").get<std::uint32_t>());
			ASSERT_EQ(ct.size(), pt.size() + kGcmOverhead);

			Bytes opened(ct.size() - kGcmOverhead);
			cipher.Open(ct, context, opened);
			EXPECT_EQ(ToHex(opened), ToHex(pt));

			KeyMaterial material(header.key_id, header.key_version, Algorithm::Aes256Gcm, dek);
			Bytes opened_again(ct.size() - kGcmOverhead);
			material.gcm().Open(ct, context, opened_again);
			EXPECT_EQ(ToHex(opened_again), ToHex(pt));

			Bytes sealed(pt.size() + kGcmOverhead);
			cipher.Seal(header, std::span<const std::uint8_t, kGcmNonceSize>(nonce.data(), 12), pt,
						context, sealed);
			EXPECT_EQ(ToHex(sealed), ToHex(ct));
			valid++;
		}
		else
		{
			const std::string why = v.at("why");
			try
			{
				const Header header = ParseHeader(ct);
				ASSERT_EQ(header.algorithm, Algorithm::Aes256Gcm);
				Bytes opened(ct.size() - kGcmOverhead);
				cipher.Open(ct, context, opened);
				ADD_FAILURE() << "an invalid vector returned plaintext";
			}
			catch (const Error &e)
			{
				EXPECT_TRUE(KindMatchesWhy(e.kind(), why))
					<< "reason '" << why << "', got error '" << e.message() << "'";
			}
			invalid++;
		}
	}
	EXPECT_GT(valid, 0);
	EXPECT_GT(invalid, 0);
}

// Every aes-256-siv vector: valid ones open to their plaintext and seal to their ciphertext
// byte for byte (deterministic: no nonce is given), the empty plaintext included (OpenSSL's
// EVP cannot do that one; S2V over CMAC does); invalid ones throw the error their reason
// names and never return plaintext.
TEST(CoreVectors, Siv)
{
	const nlohmann::json doc = LoadVectors();
	int valid = 0, invalid = 0, empty = 0;
	for (const auto &v : doc.at("vectors"))
	{
		if (v.at("algorithm") != "aes-256-siv")
			continue;
		SCOPED_TRACE(v.at("name").get<std::string>());
		const Bytes dek = FromHex(v.at("dek").get<std::string>());
		const Bytes ct = FromHex(v.at("ciphertext").get<std::string>());
		const Bytes context = ContextOf(v);
		KeyMaterial material(1, 1, Algorithm::Aes256Siv, dek);
		SivCipher &cipher = material.siv();
		const Header header = ParseHeader(ct);
		EXPECT_EQ(header.algorithm, Algorithm::Aes256Siv);
		if (v.at("valid").get<bool>())
		{
			const Bytes pt = FromHex(v.at("plaintext").get<std::string>());
			EXPECT_EQ(header.key_id, v.at("key_id").get<std::uint32_t>());
			EXPECT_EQ(header.key_version, v.at("key_version").get<std::uint32_t>());
			ASSERT_EQ(ct.size(), pt.size() + kSivOverhead);
			Bytes opened(pt.size());
			cipher.Open(ct, context, opened);
			EXPECT_EQ(ToHex(opened), ToHex(pt));
			Bytes sealed(pt.size() + kSivOverhead);
			cipher.Seal(header, pt, context, sealed);
			EXPECT_EQ(ToHex(sealed), ToHex(ct));
			// Again, from the reused contexts.
			cipher.Seal(header, pt, context, sealed);
			EXPECT_EQ(ToHex(sealed), ToHex(ct));
			empty += pt.empty() ? 1 : 0;
			valid++;
		}
		else
		{
			const std::string why = v.at("why");
			Bytes opened(ct.size() - kSivOverhead, 0xEE);
			try
			{
				cipher.Open(ct, context, opened);
				ADD_FAILURE() << "an invalid vector returned plaintext";
			}
			catch (const Error &e)
			{
				EXPECT_TRUE(KindMatchesWhy(e.kind(), why))
					<< "reason '" << why << "', got error '" << e.message() << "'";
			}
			for (std::uint8_t b : opened)
				ASSERT_EQ(b, 0) << "the output was not wiped";
			invalid++;
		}
	}
	EXPECT_GE(valid, 3);
	EXPECT_EQ(empty, 1);
	EXPECT_GE(invalid, 2);
}

// Every blind-index vector: the full HMAC-SHA-256 under the derived key, and each truncation
// behind its header.
TEST(CoreVectors, BlindIndex)
{
	const nlohmann::json doc = LoadVectors();
	int count = 0;
	for (const auto &v : doc.at("blind_index"))
	{
		SCOPED_TRACE(v.at("name").get<std::string>());
		const Bytes dek = FromHex(v.at("dek").get<std::string>());
		const Bytes pt = FromHex(v.at("plaintext").get<std::string>());
		const std::string expected = v.at("hmac_sha256");
		KeyMaterial material(9, 4, Algorithm::BlindIndex, dek);
		std::array<std::uint8_t, 32> mac{};
		material.blind_index().Mac(pt, mac);
		EXPECT_EQ(ToHex(Bytes(mac.begin(), mac.end())), expected);
		for (std::size_t n : {1u, 4u, 8u, 16u, 32u})
		{
			Bytes out(kHeaderSize + n);
			material.blind_index().Compute(Header{kFormatV1, Algorithm::BlindIndex, 9, 4}, pt, out);
			EXPECT_EQ(ToHex(out), "01030000000900000004" + expected.substr(0, 2 * n));
			const Header parsed = ParseHeader(out);
			EXPECT_EQ(parsed.algorithm, Algorithm::BlindIndex);
			EXPECT_EQ(parsed.key_version, 4u);
		}
		count++;
	}
	EXPECT_EQ(count, 4);
}

} // namespace
} // namespace pgkm::core
