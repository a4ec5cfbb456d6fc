// Unit tests of the audit hash chain: canonical record encoding, SHA-256 chaining and the
// checkpoint message layout.
#include "pgkm/core/audit_chain.hpp"
#include "pgkm/core/error.hpp"
#include "test_core_util.hpp"

#include <gtest/gtest.h>

#include <openssl/evp.h>

#include <array>
#include <cstdint>
#include <set>
#include <string>

namespace pgkm::core
{
namespace
{

using test::Bytes;
using test::FromHex;
using test::FromText;
using test::ToHex;

const std::string kDomainHex = ToHex(FromText("pgkm/v1/audit-record"));

// Returns the encoder's bytes as a vector, for comparisons.
Bytes Encoded(const AuditEncoder &encoder)
{
	return Bytes(encoder.bytes().begin(), encoder.bytes().end());
}

// Computes SHA-256(prev || canonical) in one EVP_Digest call, independently of AuditChain.
AuditHash OneShot(const AuditHash &prev, ByteView canonical)
{
	Bytes input(prev.begin(), prev.end());
	input.insert(input.end(), canonical.begin(), canonical.end());
	AuditHash hash{};
	unsigned int length = 0;
	EXPECT_EQ(EVP_Digest(input.data(), input.size(), hash.data(), &length, EVP_sha256(), nullptr),
			  1);
	EXPECT_EQ(length, kAuditHashSize);
	return hash;
}

// A fresh encoder holds the 20-byte domain alone, and Clear returns to it.
TEST(CoreAuditChain, EncoderStartsWithTheDomain)
{
	AuditEncoder encoder;
	EXPECT_EQ(encoder.bytes().size(), 20u);
	EXPECT_EQ(ToHex(encoder.bytes()), "70676b6d2f76312f61756469742d7265636f7264");
	encoder.Int(1);
	encoder.Text("x");
	encoder.Clear();
	EXPECT_EQ(ToHex(encoder.bytes()), kDomainHex);
}

// Each field type is encoded byte for byte as documented.
TEST(CoreAuditChain, EncodesEachType)
{
	const struct
	{
		const char *name;
		void (*add)(AuditEncoder &);
		const char *hex;
	} cases[] = {
		{"null", [](AuditEncoder &e) { e.Null(); }, "00"},
		{"int 0", [](AuditEncoder &e) { e.Int(0); }, "010000000000000000"},
		{"int 42", [](AuditEncoder &e) { e.Int(42); }, "01000000000000002a"},
		{"int 0x0102030405060708", [](AuditEncoder &e) { e.Int(0x0102030405060708); },
		 "010102030405060708"},
		{"int -1", [](AuditEncoder &e) { e.Int(-1); }, "01ffffffffffffffff"},
		{"int -2", [](AuditEncoder &e) { e.Int(-2); }, "01fffffffffffffffe"},
		{"int min", [](AuditEncoder &e) { e.Int(INT64_MIN); }, "018000000000000000"},
		{"int max", [](AuditEncoder &e) { e.Int(INT64_MAX); }, "017fffffffffffffff"},
		{"text", [](AuditEncoder &e) { e.Text("abc"); }, "0200000003616263"},
		{"empty text", [](AuditEncoder &e) { e.Text(""); }, "0200000000"},
		{"text with NUL and non-UTF-8",
		 [](AuditEncoder &e) { e.Text(std::string_view("a\0\xff", 3)); }, "02000000036100ff"},
		{"true", [](AuditEncoder &e) { e.Bool(true); }, "0301"},
		{"false", [](AuditEncoder &e) { e.Bool(false); }, "0300"},
		{"bytes", [](AuditEncoder &e) { e.Bytes(FromHex("00dead")); }, "040000000300dead"},
		{"empty bytes", [](AuditEncoder &e) { e.Bytes(ByteView{}); }, "0400000000"},
	};
	for (const auto &c : cases)
	{
		AuditEncoder encoder;
		c.add(encoder);
		EXPECT_EQ(ToHex(encoder.bytes()), kDomainHex + c.hex) << c.name;
	}
}

// Fields follow each other in the order added, with nothing between or after them.
TEST(CoreAuditChain, EncodesFieldsInOrder)
{
	AuditEncoder encoder;
	encoder.Int(42);
	encoder.Text("alice");
	encoder.Null();
	encoder.Bool(true);
	encoder.Bytes(FromHex("dead"));
	EXPECT_EQ(ToHex(encoder.bytes()), kDomainHex + "01000000000000002a"
												   "0200000005616c696365"
												   "00"
												   "0301"
												   "0400000002dead");
}

// Null, empty text, empty bytes, false and zero are five different records.
TEST(CoreAuditChain, EmptyValuesAreDistinct)
{
	std::set<Bytes> seen;
	for (void (*add)(AuditEncoder &) :
		 {+[](AuditEncoder &e) { e.Null(); }, +[](AuditEncoder &e) { e.Text(""); },
		  +[](AuditEncoder &e) { e.Bytes(ByteView{}); }, +[](AuditEncoder &e) { e.Bool(false); },
		  +[](AuditEncoder &e) { e.Int(0); }})
	{
		AuditEncoder encoder;
		add(encoder);
		EXPECT_TRUE(seen.insert(Encoded(encoder)).second) << ToHex(encoder.bytes());
	}
	AuditEncoder none;
	EXPECT_TRUE(seen.insert(Encoded(none)).second); // and no field at all is a sixth
}

// Moving a byte from one text field to the next changes the encoding, as does splitting a
// field in two or changing a field's type.
TEST(CoreAuditChain, FieldBoundariesMatter)
{
	AuditEncoder a, b, c, d;
	a.Text("ab");
	a.Text("c");
	b.Text("a");
	b.Text("bc");
	c.Text("abc");
	d.Bytes(FromText("abc"));
	EXPECT_NE(Encoded(a), Encoded(b));
	EXPECT_EQ(a.bytes().size(), b.bytes().size());
	EXPECT_NE(Encoded(a), Encoded(c));
	EXPECT_NE(Encoded(c), Encoded(d));
	EXPECT_EQ(c.bytes().size(), d.bytes().size());
}

// The zero hash is 32 zero bytes.
TEST(CoreAuditChain, ZeroHashIsZero)
{
	EXPECT_EQ(ToHex(ZeroAuditHash()), std::string(64, '0'));
}

// Next equals a one-shot SHA-256 of prev || canonical, for empty and non-empty input, and
// the reused context gives the same answer on every call.
TEST(CoreAuditChain, NextIsSha256OfPrevAndRecord)
{
	AuditChain chain;
	AuditEncoder encoder;
	encoder.Text("update");
	AuditHash prev{};
	for (std::size_t i = 0; i < prev.size(); ++i)
		prev[i] = static_cast<std::uint8_t>(i * 7 + 1);
	EXPECT_EQ(chain.Next(prev, encoder.bytes()), OneShot(prev, encoder.bytes()));
	EXPECT_EQ(chain.Next(prev, encoder.bytes()), OneShot(prev, encoder.bytes()));
	EXPECT_EQ(chain.Next(prev, ByteView{}), OneShot(prev, ByteView{}));
	EXPECT_NE(chain.Next(prev, encoder.bytes()), chain.Next(ZeroAuditHash(), encoder.bytes()));
}

// A fixed record hashes to a value computed independently with Python's hashlib.
TEST(CoreAuditChain, NextKnownAnswer)
{
	AuditEncoder encoder;
	encoder.Int(42);
	encoder.Text("alice");
	encoder.Null();
	encoder.Bool(true);
	encoder.Bytes(FromHex("dead"));
	AuditChain chain;
	// python3 -c 'import hashlib, struct;
	//   rec = b"pgkm/v1/audit-record" + b"\x01" + struct.pack(">q", 42)
	//       + b"\x02" + struct.pack(">I", 5) + b"alice" + b"\x00" + b"\x03\x01"
	//       + b"\x04" + struct.pack(">I", 2) + b"\xde\xad";
	//   print(hashlib.sha256(bytes(32) + rec).hexdigest())'
	EXPECT_EQ(ToHex(chain.Next(ZeroAuditHash(), encoder.bytes())),
			  "b1a75e6359aaed31694a07430db3212867ad0a9b1f0fe59356546f190594e16d");
}

// Changing the first of three records changes every later hash.
TEST(CoreAuditChain, ChangingARecordChangesEveryLaterHash)
{
	AuditChain chain;
	// Hashes a chain of three records whose first carries the given actor.
	const auto hashes = [&chain](std::string_view first_actor)
	{
		std::array<AuditHash, 3> out{};
		AuditHash prev = ZeroAuditHash();
		for (std::int64_t seq = 1; seq <= 3; ++seq)
		{
			AuditEncoder encoder;
			encoder.Int(seq);
			encoder.Text(seq == 1 ? first_actor : "bob");
			prev = chain.Next(prev, encoder.bytes());
			out[seq - 1] = prev;
		}
		return out;
	};
	const auto original = hashes("alice");
	const auto altered = hashes("alicf");
	EXPECT_EQ(original, hashes("alice"));
	for (std::size_t i = 0; i < original.size(); ++i)
		EXPECT_NE(original[i], altered[i]) << "record " << i + 1;
}

// The checkpoint message is the prefix, the kind, 0x00, be64 seq and the hash.
TEST(CoreAuditChain, CheckpointMessageLayout)
{
	AuditHash hash{};
	for (std::size_t i = 0; i < hash.size(); ++i)
		hash[i] = static_cast<std::uint8_t>(0xa0 + i);
	const std::string hash_hex = ToHex(hash);

	EXPECT_EQ(ToHex(AuditCheckpointMessage("checkpoint", 0x0102030405060708, hash)),
			  ToHex(FromText("pgkm/v1/audit-checkpoint")) + "00" + "0102030405060708" + hash_hex);
	EXPECT_EQ(ToHex(AuditCheckpointMessage("anchor", 5, hash)),
			  ToHex(FromText("pgkm/v1/audit-anchor")) + "00" + "0000000000000005" + hash_hex);
	EXPECT_EQ(AuditCheckpointMessage("checkpoint", 1, hash).size(), 24u + 1 + 8 + 32);
	EXPECT_EQ(AuditCheckpointMessage("anchor", 1, hash).size(), 20u + 1 + 8 + 32);
	EXPECT_NE(AuditCheckpointMessage("anchor", 5, hash),
			  AuditCheckpointMessage("checkpoint", 5, hash));
}

// A negative seq is written as its two's complement bit pattern.
TEST(CoreAuditChain, CheckpointMessageNegativeSeq)
{
	const AuditHash zero = ZeroAuditHash();
	const std::string prefix = ToHex(FromText("pgkm/v1/audit-checkpoint")) + "00";
	EXPECT_EQ(ToHex(AuditCheckpointMessage("checkpoint", -1, zero)),
			  prefix + "ffffffffffffffff" + std::string(64, '0'));
	EXPECT_EQ(ToHex(AuditCheckpointMessage("checkpoint", -256, zero)),
			  prefix + "ffffffffffffff00" + std::string(64, '0'));
	EXPECT_EQ(ToHex(AuditCheckpointMessage("checkpoint", INT64_MIN, zero)),
			  prefix + "8000000000000000" + std::string(64, '0'));
}

// Only the two documented kinds are accepted.
TEST(CoreAuditChain, CheckpointMessageRefusesUnknownKinds)
{
	for (const char *kind : {"", "Checkpoint", "record", "anchors"})
	{
		try
		{
			AuditCheckpointMessage(kind, 1, ZeroAuditHash());
			ADD_FAILURE() << "no error for kind \"" << kind << "\"";
		}
		catch (const Error &error)
		{
			EXPECT_EQ(error.kind(), ErrorKind::InvalidArgument) << kind;
		}
	}
	EXPECT_THROW(AuditCheckpointMessage(std::string_view("anchor\0", 7), 1, ZeroAuditHash()),
				 Error);
}

} // namespace
} // namespace pgkm::core
