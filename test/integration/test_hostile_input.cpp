// HostileInput: every byte string handed to the data path (pgkm_decrypt in both signatures,
// pgkm_decrypt_text, pgkm_ciphertext_info, pgkm_rewrap, the header readers) gets exactly the
// right answer or an error with exactly the SQLSTATE that its bytes call for, through binary
// bind parameters. The seeds are randomized (AES-256-GCM) and deterministic (AES-256-SIV)
// ciphertexts and blind index values (never decryptable); they get every truncation, every
// single-bit flip, inserted and deleted bytes, each header field altered, fields swapped
// between values and algorithms, random bytes (bare and behind a plausible header),
// ciphertexts of another database, disabled versions, empty values, NULLs, wrong contexts and
// megabyte inputs. The expected outcome of each call is computed here from the bytes and the
// catalog (an oracle independent of pgkm's parser), so a crash, a wrong SQLSTATE, a wrong
// plaintext or a plaintext in a message all fail. The lookup functions (pgkm_encrypt_det[_all],
// pgkm_blind_index[_all]) get NULLs, empty and 1 MiB values, unknown names, keys of another
// algorithm, unusable versions, a denied role and swapped arguments. The server must never
// restart: the postmaster keeps its pid and a second, idle session stays connected to the
// same backend throughout.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace pgkm::it
{

namespace
{

using Bytes = std::string; // binary-safe

constexpr unsigned kByteaOid = 17;
constexpr unsigned kTextOid = 25;

// Format v1 (include/pgkm/core/format.hpp), restated for an oracle of its own.
constexpr std::size_t kHeaderSize = 10;
constexpr std::size_t kGcmOverhead = 38;
constexpr std::size_t kSivOverhead = 26;
constexpr std::size_t kBlindIndexMin = 11; // header + 1 byte of HMAC
constexpr std::size_t kBlindIndexMax = 42; // header + 32 bytes of HMAC
constexpr std::uint8_t kGcm = 0x01, kSiv = 0x02, kBlindIndex = 0x03;

// What the header of some bytes says, by the format's rules.
struct Header
{
	bool parses = false;
	std::uint8_t algorithm = 0;
	std::uint32_t key_id = 0;
	std::uint32_t version = 0;
};

// Reads a big-endian 32-bit integer.
std::uint32_t LoadBe32(const Bytes &b, std::size_t at)
{
	auto u = [&](std::size_t i)
	{ return static_cast<std::uint32_t>(static_cast<unsigned char>(b[i])); };
	return u(at) << 24 | u(at + 1) << 16 | u(at + 2) << 8 | u(at + 3);
}

// Writes a big-endian 32-bit integer at an offset.
Bytes WithBe32(Bytes b, std::size_t at, std::uint32_t value)
{
	for (int i = 0; i < 4; i++)
		b[at + i] = static_cast<char>(value >> (24 - 8 * i));
	return b;
}

// Parses a header the way DESIGN.md's format table says: algorithm 0x01 (GCM, at least 38
// bytes), 0x02 (SIV, at least 26) or 0x03 (blind index, 11 to 42 bytes).
Header ParseHeader(const Bytes &b)
{
	Header h;
	if (b.size() < kHeaderSize || b[0] != 0x01 || b[1] < kGcm || b[1] > kBlindIndex)
		return h;
	h.algorithm = static_cast<std::uint8_t>(b[1]);
	const std::size_t min = h.algorithm == kGcm   ? kGcmOverhead
							: h.algorithm == kSiv ? kSivOverhead
												  : kBlindIndexMin;
	if (b.size() < min || (h.algorithm == kBlindIndex && b.size() > kBlindIndexMax))
		return h;
	h.parses = true;
	h.key_id = LoadBe32(b, 2);
	h.version = LoadBe32(b, 6);
	return h;
}

// Lower-case hex of some bytes, for failure messages.
std::string Hex(const Bytes &b, std::size_t max = 48)
{
	static const char digits[] = "0123456789abcdef";
	std::string out;
	for (std::size_t i = 0; i < b.size() && i < max; i++)
	{
		out.push_back(digits[static_cast<unsigned char>(b[i]) >> 4]);
		out.push_back(digits[static_cast<unsigned char>(b[i]) & 0x0f]);
	}
	return b.size() > max ? out + "...(" + std::to_string(b.size()) + " bytes)" : out;
}

// The name pgkm_ciphertext_info gives an algorithm byte.
std::string AlgorithmName(std::uint8_t algorithm)
{
	return algorithm == kGcm ? "aes-256-gcm" : algorithm == kSiv ? "aes-256-siv" : "blind-index";
}

// A genuine ciphertext made by pgkm_encrypt or pgkm_encrypt_det, with what it must decrypt to.
struct Genuine
{
	std::string name;
	Bytes ciphertext;
	Bytes plaintext;
	std::optional<Bytes> context; // nullopt: encrypted without one
	// A deterministic value's rewrap: pgkm_encrypt_det under the key's active version, if that
	// is another version than the value's (a SIV rewrap must give exactly these bytes).
	std::optional<Bytes> rewrapped = std::nullopt;
};

// One input of the run: ciphertext and context (nullopt: SQL NULL), and what it was made from.
struct Input
{
	std::string label;
	std::optional<Bytes> ciphertext;
	std::optional<Bytes> context;
	int row_id = 0; // > 0: the ciphertext is read from hostile_values (stored, maybe toasted)
};

// The result of one call: success (value, or NULL) or an error with its SQLSTATE and text.
struct Outcome
{
	bool ok = false;
	bool null = false;
	std::vector<std::optional<std::string>> row; // every column (one for all but info)
	std::string sqlstate;
	std::string text; // message, detail, hint and context of an error
};

// The statements under test: name, SQL with the ciphertext as a parameter and as a column of
// hostile_values (table SQL: $1 is the row id), whether the context is text.
struct Statement
{
	const char *name;
	const char *sql;
	const char *table_sql;
	bool text_context; // $2 is text: only inputs whose context is valid text go here
	bool has_context;
};

const Statement kStatements[] = {
	{"decrypt(bytea,bytea)", "SELECT pgkm_decrypt($1::bytea, $2::bytea)",
	 "SELECT pgkm_decrypt(v, $2::bytea) FROM hostile_values WHERE id = $1::int", false, true},
	{"decrypt(bytea,text)", "SELECT pgkm_decrypt($1::bytea, $2::text)",
	 "SELECT pgkm_decrypt(v, $2::text) FROM hostile_values WHERE id = $1::int", true, true},
	{"decrypt_text", "SELECT pgkm_decrypt_text($1::bytea, $2::text)",
	 "SELECT pgkm_decrypt_text(v, $2::text) FROM hostile_values WHERE id = $1::int", true, true},
	{"ciphertext_info",
	 "SELECT format_version, algorithm, key_id, key_name, key_version "
	 "FROM pgkm_ciphertext_info($1::bytea)",
	 "SELECT i.format_version, i.algorithm, i.key_id, i.key_name, i.key_version "
	 "FROM hostile_values, pgkm_ciphertext_info(v) i WHERE id = $1::int",
	 false, false},
	{"rewrap(bytea,bytea)", "SELECT pgkm_rewrap($1::bytea, $2::bytea)",
	 "SELECT pgkm_rewrap(v, $2::bytea) FROM hostile_values WHERE id = $1::int", false, true},
	{"rewrap(bytea,text)", "SELECT pgkm_rewrap($1::bytea, $2::text)",
	 "SELECT pgkm_rewrap(v, $2::text) FROM hostile_values WHERE id = $1::int", true, true},
	// The header readers of the rotation worker's predicates (admin schema): the same bytes,
	// read through a detoasting slice for stored values.
	{"ciphertext_key_id", "SELECT pgkm.ciphertext_key_id($1::bytea)",
	 "SELECT pgkm.ciphertext_key_id(v) FROM hostile_values WHERE id = $1::int", false, false},
	{"ciphertext_version", "SELECT pgkm.ciphertext_version($1::bytea)",
	 "SELECT pgkm.ciphertext_version(v) FROM hostile_values WHERE id = $1::int", false, false},
};

// What the catalog says about key versions: state by (key id, version), names, active version.
struct Catalog
{
	std::map<std::pair<std::uint32_t, std::uint32_t>, std::string> state;
	std::map<std::uint32_t, std::string> name;
	std::map<std::uint32_t, std::uint32_t> active;
	std::map<std::uint32_t, std::uint8_t> algorithm; // the algorithm byte of each key's values
};

// Runs the prepared statements with binary parameters and checks every answer.
class Prober
{
  public:
	Prober(Connection &db, Catalog catalog, std::vector<Genuine> genuine,
		   std::vector<std::string> secrets)
		: db_(db), catalog_(std::move(catalog)), genuine_(std::move(genuine)),
		  secrets_(std::move(secrets))
	{
		for (const auto &s : kStatements)
		{
			unsigned types[2] = {kByteaOid, s.text_context ? kTextOid : kByteaOid};
			Result r(PQprepare(db_.raw(), s.name, s.sql, s.has_context ? 2 : 1, types));
			if (!r.ok())
				throw std::runtime_error(std::string("prepare ") + s.name + ": " + r.message());
		}
	}

	// Prepares the statements that read the ciphertext from hostile_values (once it exists).
	void PrepareTableStatements()
	{
		for (const auto &s : kStatements)
		{
			unsigned types[2] = {23 /* int4 */, s.text_context ? kTextOid : kByteaOid};
			Result r(PQprepare(db_.raw(), (std::string("table ") + s.name).c_str(), s.table_sql,
							   s.has_context ? 2 : 1, types));
			if (!r.ok())
				throw std::runtime_error(std::string("prepare table ") + s.name + ": " +
										 r.message());
		}
	}

	// Sends one input to every statement it fits and checks each outcome.
	void Probe(const Input &in)
	{
		for (const auto &s : kStatements)
		{
			if (s.text_context && in.context && !IsText(*in.context))
				continue;
			Check(s, in, Call(s, in));
		}
	}

	// Per statement: calls, successes, and the SQLSTATEs seen with their counts.
	std::string Summary() const
	{
		std::string out;
		for (const auto &s : kStatements)
		{
			const auto &c = counts_.at(s.name);
			out += std::string("  ") + s.name + ": " + std::to_string(c.calls) + " calls, " +
				   std::to_string(c.ok) + " ok, " + std::to_string(c.null) + " null";
			for (const auto &[state, n] : c.sqlstates)
				out += ", " + state + " x" + std::to_string(n);
			out += "\n";
		}
		return out;
	}

	long long calls() const
	{
		long long n = 0;
		for (const auto &[name, c] : counts_)
			n += c.calls;
		return n;
	}
	long long mismatches() const { return mismatches_; }
	// Deterministic values that decrypted to their plaintext, and that rewrapped correctly.
	long long sivDecrypts() const { return siv_decrypts_; }
	long long sivRewraps() const { return siv_rewraps_; }
	bool broken() const { return broken_; }
	const std::set<std::string> &sqlstates() const { return seen_; }
	long long okCount(const std::string &statement) const
	{
		auto it = counts_.find(statement);
		return it == counts_.end() ? 0 : it->second.ok;
	}

  private:
	struct Counts
	{
		long long calls = 0, ok = 0, null = 0;
		std::map<std::string, long long> sqlstates;
	};

	// Text parameters must be valid UTF-8 without NUL bytes; ours are ASCII when they are.
	static bool IsText(const Bytes &b)
	{
		return std::all_of(b.begin(), b.end(),
						   [](char c) { return c > 0 && static_cast<unsigned char>(c) < 0x80; });
	}

	// Executes one statement with binary parameters (and binary results, but for info).
	Outcome Call(const Statement &s, const Input &in)
	{
		const std::string row_id = std::to_string(in.row_id);
		const char *values[2] = {in.ciphertext ? in.ciphertext->data() : nullptr,
								 in.context ? in.context->data() : nullptr};
		int lengths[2] = {in.ciphertext ? static_cast<int>(in.ciphertext->size()) : 0,
						  in.context ? static_cast<int>(in.context->size()) : 0};
		int formats[2] = {1, 1};
		const std::string name = s.name;
		const std::string statement = in.row_id > 0 ? "table " + name : name;
		if (in.row_id > 0)
		{
			values[0] = row_id.c_str();
			formats[0] = 0;
		}
		// Results in binary (bytea and text as their bytes), but the rows of numbers and names.
		const bool text_result = name == "ciphertext_info" || name.rfind("ciphertext_", 0) == 0;
		PGresult *res = PQexecPrepared(db_.raw(), statement.c_str(), s.has_context ? 2 : 1, values,
									   lengths, formats, text_result ? 0 : 1);
		Outcome o;
		if (res == nullptr || PQstatus(db_.raw()) != CONNECTION_OK)
		{
			broken_ = true;
			ADD_FAILURE() << s.name << " on " << in.label
						  << " broke the connection: " << PQerrorMessage(db_.raw());
			if (res)
				PQclear(res);
			throw std::runtime_error("connection lost");
		}
		Result r(res);
		if (r.ok())
		{
			o.ok = true;
			if (r.rows() != 1)
				o.sqlstate = "rows:" + std::to_string(r.rows());
			for (int c = 0; r.rows() == 1 && c < r.cols(); c++)
			{
				if (r.isNull(0, c))
					o.row.push_back(std::nullopt);
				else
					o.row.emplace_back(std::string(PQgetvalue(res, 0, c), PQgetlength(res, 0, c)));
			}
			o.null = o.row.size() == 1 && !o.row[0];
		}
		else
		{
			o.sqlstate = r.sqlstate();
			for (int field : {PG_DIAG_MESSAGE_PRIMARY, PG_DIAG_MESSAGE_DETAIL, PG_DIAG_MESSAGE_HINT,
							  PG_DIAG_CONTEXT, PG_DIAG_INTERNAL_QUERY})
				if (const char *f = PQresultErrorField(res, field))
					o.text += std::string(f) + "\n";
		}
		return o;
	}

	// The genuine ciphertext these exact bytes are, if any.
	const Genuine *FindGenuine(const Bytes &b) const
	{
		for (const auto &g : genuine_)
			if (g.ciphertext == b)
				return &g;
		return nullptr;
	}

	// Whether a context is the one a genuine value was encrypted with (NULL and empty alike).
	static bool SameContext(const std::optional<Bytes> &a, const std::optional<Bytes> &b)
	{
		return a.value_or("") == b.value_or("");
	}

	// The SQLSTATE the header and catalog call for before any decryption, or "" if none: a
	// blind index is refused before the catalog is read, a header whose algorithm is not its
	// key's fails like an altered value once the version is found usable.
	std::string HeaderFailure(const Header &h) const
	{
		if (!h.parses)
			return "22P03";
		if (h.algorithm == kBlindIndex)
			return "22023";
		auto it = catalog_.state.find({h.key_id, h.version});
		if (it == catalog_.state.end())
			return "42704";
		if (it->second != "active" && it->second != "decrypt_only")
			return "55000";
		if (catalog_.algorithm.at(h.key_id) != h.algorithm)
			return "22000";
		return "";
	}

	// Reports a mismatch (the first few in full) and counts it.
	void Mismatch(const Statement &s, const Input &in, const Outcome &o, const std::string &want)
	{
		if (mismatches_++ < 25)
			ADD_FAILURE() << s.name << " on " << in.label << " ("
						  << (in.ciphertext ? Hex(*in.ciphertext) : "NULL") << "): expected "
						  << want << ", got "
						  << (o.ok ? (o.null ? "NULL" : "success") : o.sqlstate + " " + o.text);
	}

	// Checks one outcome against what the bytes call for.
	void Check(const Statement &s, const Input &in, const Outcome &o)
	{
		auto &c = counts_[s.name];
		c.calls++;
		if (o.ok)
			(o.null ? c.null : c.ok)++;
		else
		{
			c.sqlstates[o.sqlstate]++;
			seen_.insert(o.sqlstate);
			for (const auto &secret : secrets_)
				if (o.text.find(secret) != std::string::npos)
					Mismatch(s, in, o, "an error without plaintext");
		}
		const std::string name = s.name;
		if (name == "ciphertext_info")
			CheckInfo(s, in, o);
		else if (name == "ciphertext_key_id" || name == "ciphertext_version")
			CheckHeaderField(s, in, o, name == "ciphertext_key_id");
		else if (name.rfind("rewrap", 0) == 0)
			CheckRewrap(s, in, o);
		else
			CheckDecrypt(s, in, o, name == "decrypt_text");
	}

	// ciphertext_info: the header's fields, 22P03, or a row of NULLs for NULL.
	void CheckInfo(const Statement &s, const Input &in, const Outcome &o)
	{
		if (!in.ciphertext)
		{
			bool nulls =
				o.ok && std::all_of(o.row.begin(), o.row.end(), [](auto &v) { return !v; });
			if (!nulls)
				Mismatch(s, in, o, "a row of NULLs");
			return;
		}
		const Header h = ParseHeader(*in.ciphertext);
		if (!h.parses)
		{
			if (o.ok || o.sqlstate != "22P03")
				Mismatch(s, in, o, "22P03");
			return;
		}
		auto name = catalog_.name.find(h.key_id);
		std::vector<std::optional<std::string>> want = {
			"1", AlgorithmName(h.algorithm), std::to_string(h.key_id),
			name == catalog_.name.end() ? std::nullopt : std::optional<std::string>(name->second),
			std::to_string(h.version)};
		if (!o.ok || o.row != want)
			Mismatch(s, in, o, "the header's fields");
	}

	// ciphertext_key_id / ciphertext_version (STRICT): the header's field, 22P03, or NULL.
	void CheckHeaderField(const Statement &s, const Input &in, const Outcome &o, bool key_id)
	{
		if (!in.ciphertext)
		{
			if (!o.ok || !o.null)
				Mismatch(s, in, o, "NULL");
			return;
		}
		const Header h = ParseHeader(*in.ciphertext);
		if (!h.parses)
		{
			if (o.ok || o.sqlstate != "22P03")
				Mismatch(s, in, o, "22P03");
			return;
		}
		const std::string want = std::to_string(key_id ? h.key_id : h.version);
		if (!o.ok || o.null || o.row.size() != 1 || *o.row[0] != want)
			Mismatch(s, in, o, want);
	}

	// decrypt / decrypt_text: the plaintext for a genuine value and its context, else the
	// SQLSTATE the bytes call for.
	void CheckDecrypt(const Statement &s, const Input &in, const Outcome &o, bool text)
	{
		if (!in.ciphertext)
		{
			if (!o.ok || !o.null)
				Mismatch(s, in, o, "NULL");
			return;
		}
		std::string want = HeaderFailure(ParseHeader(*in.ciphertext));
		const Genuine *g = FindGenuine(*in.ciphertext);
		if (want.empty())
		{
			if (g == nullptr || !SameContext(g->context, in.context))
				want = "22000";
			else if (text && !ValidUtf8(g->plaintext))
				want = "22021";
		}
		if (!want.empty())
		{
			if (o.ok || o.sqlstate != want)
				Mismatch(s, in, o, want);
			return;
		}
		if (!o.ok || o.null || o.row.size() != 1 || *o.row[0] != g->plaintext)
			Mismatch(s, in, o, "the plaintext of " + g->name);
		else if (g->ciphertext[1] == kSiv)
			siv_decrypts_++;
	}

	// rewrap: unchanged when the header names the key's active version, a new ciphertext under
	// it that decrypts to the same plaintext for a genuine value and its context, else the
	// SQLSTATE the bytes call for.
	void CheckRewrap(const Statement &s, const Input &in, const Outcome &o)
	{
		if (!in.ciphertext)
		{
			if (!o.ok || !o.null)
				Mismatch(s, in, o, "NULL");
			return;
		}
		const Header h = ParseHeader(*in.ciphertext);
		std::string want = HeaderFailure(h);
		if (want.empty())
		{
			auto active = catalog_.active.find(h.key_id);
			if (active == catalog_.active.end())
				want = "55000";
			else if (active->second == h.version)
			{
				// Documented: a value under the active version is returned as it is, unread.
				if (!o.ok || o.null || *o.row[0] != *in.ciphertext)
					Mismatch(s, in, o, "the input unchanged");
				return;
			}
		}
		const Genuine *g = FindGenuine(*in.ciphertext);
		if (want.empty() && (g == nullptr || !SameContext(g->context, in.context)))
			want = "22000";
		if (!want.empty())
		{
			if (o.ok || o.sqlstate != want)
				Mismatch(s, in, o, want);
			return;
		}
		if (!o.ok || o.null)
		{
			Mismatch(s, in, o, "a new ciphertext of " + g->name);
			return;
		}
		const Bytes &out = *o.row[0];
		const Header nh = ParseHeader(out);
		bool good = nh.parses && nh.algorithm == h.algorithm && nh.key_id == h.key_id &&
					nh.version == catalog_.active.at(h.key_id);
		// A deterministic value stays deterministic: exactly pgkm_encrypt_det's bytes.
		if (h.algorithm == kSiv && (!g->rewrapped || out != *g->rewrapped))
			good = false;
		for (const auto &secret : secrets_)
			if (out.find(secret) != std::string::npos)
				good = false;
		if (good)
		{
			const char *values[2] = {out.data(), g->context ? g->context->data() : nullptr};
			int lengths[2] = {static_cast<int>(out.size()),
							  g->context ? static_cast<int>(g->context->size()) : 0};
			int formats[2] = {1, 1};
			PGresult *res =
				PQexecPrepared(db_.raw(), "decrypt(bytea,bytea)", 2, values, lengths, formats, 1);
			Result r(res);
			good = r.ok() && r.rows() == 1 &&
				   std::string(PQgetvalue(res, 0, 0), PQgetlength(res, 0, 0)) == g->plaintext;
		}
		if (!good)
			Mismatch(s, in, o, "a new ciphertext under the active version of " + g->name);
		else if (h.algorithm == kSiv)
			siv_rewraps_++;
	}

	// Whether bytes are valid UTF-8 (the test database's encoding).
	static bool ValidUtf8(const Bytes &b)
	{
		for (std::size_t i = 0; i < b.size();)
		{
			auto c = static_cast<unsigned char>(b[i]);
			std::size_t n = c < 0x80           ? 1
							: (c >> 5) == 0x6  ? 2
							: (c >> 4) == 0xe  ? 3
							: (c >> 3) == 0x1e ? 4
											   : 0;
			if (n == 0 || c == 0 || i + n > b.size())
				return false;
			for (std::size_t k = 1; k < n; k++)
				if ((static_cast<unsigned char>(b[i + k]) & 0xc0) != 0x80)
					return false;
			i += n;
		}
		return true;
	}

	Connection &db_;
	Catalog catalog_;
	std::vector<Genuine> genuine_;
	std::vector<std::string> secrets_;
	std::map<std::string, Counts> counts_;
	std::set<std::string> seen_;
	long long mismatches_ = 0;
	long long siv_decrypts_ = 0;
	long long siv_rewraps_ = 0;
	bool broken_ = false;
};

// Encrypts a plaintext with a key (binary parameters) and returns the ciphertext.
Bytes Encrypt(Connection &db, const Bytes &plain, const std::string &key,
			  const std::optional<Bytes> &context)
{
	const char *values[3] = {plain.data(), key.c_str(), context ? context->data() : nullptr};
	int lengths[3] = {static_cast<int>(plain.size()), static_cast<int>(key.size()),
					  context ? static_cast<int>(context->size()) : 0};
	int formats[3] = {1, 0, 1};
	unsigned types[3] = {kByteaOid, kTextOid, kByteaOid};
	PGresult *res = PQexecParams(db.raw(), "SELECT pgkm_encrypt($1, $2, $3)", 3, types, values,
								 lengths, formats, 1);
	Result r(res);
	if (!r.ok())
		throw std::runtime_error("pgkm_encrypt failed: " + r.message());
	return Bytes(PQgetvalue(res, 0, 0), PQgetlength(res, 0, 0));
}

// Runs a one-row, one-column statement with binary parameters (nullopt: NULL) and a binary
// result; throws with the server's message if it fails.
Bytes BinaryValue(Connection &db, const std::string &sql,
				  const std::vector<std::optional<Bytes>> &params)
{
	std::vector<const char *> values;
	std::vector<int> lengths, formats;
	for (const auto &p : params)
	{
		values.push_back(p ? p->data() : nullptr);
		lengths.push_back(p ? static_cast<int>(p->size()) : 0);
		formats.push_back(1);
	}
	PGresult *res = PQexecParams(db.raw(), sql.c_str(), static_cast<int>(params.size()), nullptr,
								 values.data(), lengths.data(), formats.data(), 1);
	Result r(res);
	if (!r.ok() || r.rows() != 1 || r.isNull(0, 0))
		throw std::runtime_error(sql + " failed: " + r.message());
	return Bytes(PQgetvalue(res, 0, 0), PQgetlength(res, 0, 0));
}

// pgkm_encrypt_det of a plaintext under a key, with a context or none (binary parameters).
Bytes EncryptDet(Connection &db, const Bytes &plain, const std::string &key,
				 const std::optional<Bytes> &context)
{
	return BinaryValue(db, "SELECT pgkm_encrypt_det($1::bytea, $2::text, $3::bytea)",
					   {plain, key, context});
}

// pgkm_blind_index of a value under a blind-index key (binary parameters).
Bytes BlindIndex(Connection &db, const Bytes &plain, const std::string &key)
{
	return BinaryValue(db, "SELECT pgkm_blind_index($1::bytea, $2::text)", {plain, key});
}

// Reads the key versions of the database.
Catalog ReadCatalog(Connection &db)
{
	Catalog c;
	Result r = db.exec("SELECT v.key_id, v.version, v.state, k.name, k.algorithm "
					   "FROM pgkm.key_versions v JOIN pgkm.keys k USING (key_id)");
	for (int i = 0; i < r.rows(); i++)
	{
		auto id = static_cast<std::uint32_t>(r.getInt(i, 0));
		auto version = static_cast<std::uint32_t>(r.getInt(i, 1));
		c.state[{id, version}] = r.get(i, 2);
		c.name[id] = r.get(i, 3);
		const std::string algorithm = r.get(i, 4);
		c.algorithm[id] = algorithm == "aes-256-gcm"   ? kGcm
						  : algorithm == "aes-256-siv" ? kSiv
						  : algorithm == "blind-index" ? kBlindIndex
													   : 0;
		if (r.get(i, 2) == "active")
			c.active[id] = version;
	}
	return c;
}

// Random bytes of a given length.
Bytes RandomBytes(std::mt19937 &rng, std::size_t n)
{
	Bytes b(n, '\0');
	for (auto &ch : b)
		ch = static_cast<char>(rng() & 0xff);
	return b;
}

} // namespace

TEST(HostileInput, EveryByteStringGetsItsPlaintextOrItsSqlstate)
{
	const auto started = Clock::now();
	Cluster cluster;
	cluster.start();
	Connection db = cluster.connect();
	// A second session that stays idle throughout: it survives only if no backend crashes.
	Connection watcher = cluster.connect();
	const int watcher_pid = watcher.backendPid();
	const int postmaster_pid = cluster.postmasterPid();
	const std::string start_time = watcher.value("SELECT pg_postmaster_start_time()::text");
	ASSERT_GT(postmaster_pid, 0);

	// Another database with keys of the same names and algorithms: the same ids name other
	// DEKs there (key id 4 is a SIV key in both), and its last key's id is unknown here.
	db.exec("CREATE DATABASE foreign_db");
	Connection foreign = cluster.connect("foreign_db");
	foreign.exec("CREATE EXTENSION pgkm");
	for (const char *k : {"hostile", "f2", "f3"})
		foreign.exec("SELECT pgkm.create_key($1)", {k});
	foreign.exec("SELECT pgkm.create_key('det', algorithm => 'aes-256-siv')");
	for (int i = 5; i <= 12; i++)
		foreign.exec("SELECT pgkm.create_key($1)", {"f" + std::to_string(i)});

	SetUpExtension(db, "hostile");
	db.exec("SELECT pgkm.create_key('other')");
	db.exec("SELECT pgkm.create_key('disabled_key')");
	db.exec("SELECT pgkm.create_key('det', algorithm => 'aes-256-siv')");
	db.exec("SELECT pgkm.create_key('bidx', algorithm => 'blind-index')");
	db.exec("SELECT pgkm.create_key('bidx32', algorithm => 'blind-index', "
			"blind_index_bytes => 32)");
	db.exec("SELECT pgkm.create_key('bidx1', algorithm => 'blind-index', blind_index_bytes => 1)");
	db.exec("SET pgkm.audit_level = row");

	const Bytes p1 = "HOSTILE-PLAINTEXT-one-7f3a9c51";
	const Bytes p2 = "HOSTILE-PLAINTEXT-two-0b4e8d22";
	const Bytes p3 = "HOSTILE-PLAINTEXT-three-93c1aa07";
	const Bytes p4 = "HOSTILE-PLAINTEXT-foreign-55e01b";
	const Bytes p5 = "HOSTILE-PLAINTEXT-disabled-c3d2e1";
	const Bytes p6 = "HOSTILE-PLAINTEXT-det-one-2b9f41";
	const Bytes p7 = "HOSTILE-PLAINTEXT-det-two-e8a035";
	const Bytes p8 = "HOSTILE-PLAINTEXT-blind-77c10d";
	const Bytes p_swapped = "HOSTILE-PLAINTEXT-swapped-6d2e90";
	Bytes p_big;
	for (int i = 0; p_big.size() < 1000; i++)
		p_big += "HOSTILE-PLAINTEXT-big-" + std::to_string(i) + ";";
	p_big.resize(1000);
	const Bytes p_binary("\xff\xfe\x00\x41 not text", 13);
	const Bytes ctx1 = "row-17";
	const Bytes ctx_bin("\x00ctx\x00\xff", 6);

	std::vector<Genuine> genuine = {
		{"g1 (v1, context)", Encrypt(db, p1, "hostile", ctx1), p1, ctx1},
		{"g0 (v1, empty plaintext)", Encrypt(db, "", "hostile", std::nullopt), "", std::nullopt},
		{"gbig (v1, 1000 bytes, binary context)", Encrypt(db, p_big, "hostile", ctx_bin), p_big,
		 ctx_bin},
		{"gbin (v1, not text)", Encrypt(db, p_binary, "hostile", std::nullopt), p_binary,
		 std::nullopt},
		{"gother (other key)", Encrypt(db, p3, "other", std::nullopt), p3, std::nullopt},
		{"gdis (disabled version)", Encrypt(db, p5, "disabled_key", ctx1), p5, ctx1},
		{"d1 (siv v1, context)", EncryptDet(db, p6, "det", ctx1), p6, ctx1},
		{"d0 (siv v1, empty plaintext)", EncryptDet(db, "", "det", std::nullopt), "", std::nullopt},
		{"dbin (siv v1, not text, binary context)", EncryptDet(db, p_binary + p6, "det", ctx_bin),
		 p_binary + p6, ctx_bin},
	};
	db.exec("SELECT pgkm.rotate_key('hostile')");
	db.exec("SELECT pgkm.rotate_key('det')");
	genuine.push_back({"g2 (v2 active, context)", Encrypt(db, p2, "hostile", ctx1), p2, ctx1});
	genuine.push_back({"d2 (siv v2 active, context)", EncryptDet(db, p7, "det", ctx1), p7, ctx1});
	// The rewrap of a deterministic v1 value: the deterministic value under v2.
	for (auto &g : genuine)
		if (g.ciphertext[1] == kSiv && ParseHeader(g.ciphertext).version == 1)
			g.rewrapped = EncryptDet(db, g.plaintext, "det", g.context);
	db.exec("SELECT pgkm.disable_key_version('disabled_key', 1)");
	const auto genuine_named = [&](const std::string &prefix) -> const Bytes &
	{
		for (const auto &g : genuine)
			if (g.name.rfind(prefix + " ", 0) == 0)
				return g.ciphertext;
		throw std::runtime_error("no genuine value " + prefix);
	};
	const Bytes g1 = genuine_named("g1"), g0 = genuine_named("g0"), gbig = genuine_named("gbig"),
				gother = genuine_named("gother"), g2 = genuine_named("g2"),
				d1 = genuine_named("d1"), d0 = genuine_named("d0"), d2 = genuine_named("d2");
	// Blind index values of 8, 32 and 1 bytes: parsed, never decrypted.
	const Bytes bi8 = BlindIndex(db, p8, "bidx"), bi32 = BlindIndex(db, p8, "bidx32"),
				bi1 = BlindIndex(db, p8, "bidx1");
	ASSERT_EQ(bi8.size(), 18u);
	ASSERT_EQ(bi32.size(), 42u);
	ASSERT_EQ(bi1.size(), 11u);
	ASSERT_EQ(d1.size(), kSivOverhead + p6.size());
	ASSERT_EQ(EncryptDet(db, p7, "det", ctx1), d2)
		<< "deterministic encryption should repeat itself";
	const Bytes foreign1 = Encrypt(foreign, p4, "hostile", ctx1);
	const Bytes foreign12 = Encrypt(foreign, p4, "f12", std::nullopt);
	const Bytes foreign_det = EncryptDet(foreign, p4, "det", ctx1);
	const Catalog catalog = ReadCatalog(db);
	ASSERT_EQ(catalog.state.size(), 9u);
	ASSERT_EQ(ParseHeader(foreign1).key_id, ParseHeader(g1).key_id)
		<< "the foreign ciphertext should name a key id that exists here too";
	ASSERT_EQ(ParseHeader(foreign_det).key_id, ParseHeader(d1).key_id)
		<< "the foreign SIV ciphertext should name the SIV key's id here";
	ASSERT_EQ(catalog.name.count(ParseHeader(foreign12).key_id), 0u);

	std::vector<std::string> secrets = {
		p1, p2, p3, p4, p5, p6, p7, p8, p_swapped, p_big.substr(0, 40), "not text"};
	Prober prober(db, catalog, genuine, secrets);
	std::mt19937 rng(20240605);
	long long inputs = 0;
	auto probe = [&](std::string label, std::optional<Bytes> ct, std::optional<Bytes> ctx)
	{
		prober.Probe({std::move(label), std::move(ct), std::move(ctx)});
		inputs++;
	};

	// The untouched values with their contexts, and with every wrong context.
	for (const auto &g : genuine)
	{
		probe(g.name, g.ciphertext, g.context);
		const Bytes c = g.context.value_or("");
		probe(g.name + " NULL context", g.ciphertext, std::nullopt);
		probe(g.name + " empty context", g.ciphertext, Bytes());
		probe(g.name + " context+x", g.ciphertext, c + "x");
		probe(g.name + " context+NUL", g.ciphertext, c + Bytes(1, '\0'));
		if (!c.empty())
		{
			probe(g.name + " context-1", g.ciphertext, c.substr(0, c.size() - 1));
			Bytes upper = c;
			std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
			probe(g.name + " context upper", g.ciphertext, upper);
		}
		probe(g.name + " 100 kB context", g.ciphertext, Bytes(100000, 'c'));
	}
	// NULLs and empty values.
	probe("NULL", std::nullopt, std::nullopt);
	probe("NULL with context", std::nullopt, ctx1);
	probe("empty", Bytes(), std::nullopt);
	probe("empty with context", Bytes(), ctx1);
	// The blind index values as they are: parsed by the readers, refused by the rest.
	for (const Bytes *b : {&bi8, &bi32, &bi1})
	{
		probe("blind index of " + std::to_string(b->size()) + " bytes", *b, std::nullopt);
		probe("blind index of " + std::to_string(b->size()) + " bytes, context", *b, ctx1);
	}

	// The context each seed was made with (ctx1 for the blind index values).
	const auto ctx_of = [&](const Bytes &b) -> std::optional<Bytes>
	{
		for (const auto &g : genuine)
			if (g.ciphertext == b)
				return g.context;
		return ctx1;
	};
	// Short seeds of each kind: GCM, SIV and blind index, under each version.
	const std::vector<std::pair<std::string, const Bytes *>> short_seeds = {
		{"g1", &g1}, {"g0", &g0}, {"g2", &g2},   {"gother", &gother}, {"d1", &d1},
		{"d0", &d0}, {"d2", &d2}, {"bi8", &bi8}, {"bi32", &bi32},     {"bi1", &bi1},
	};

	// Every truncation.
	for (const auto &[name, g] : short_seeds)
		for (std::size_t n = 0; n < g->size(); n++)
			probe(name + " truncated to " + std::to_string(n), g->substr(0, n), ctx_of(*g));
	for (std::size_t n = 0; n < gbig.size(); n++)
		probe("gbig truncated to " + std::to_string(n), gbig.substr(0, n), ctx_bin);

	// Every single-bit flip of the short ones.
	for (const auto &[name, g] : short_seeds)
		for (std::size_t bit = 0; bit < 8 * g->size(); bit++)
		{
			Bytes m = *g;
			m[bit / 8] = static_cast<char>(m[bit / 8] ^ (1 << (bit % 8)));
			probe(name + " bit " + std::to_string(bit) + " flipped", m, ctx_of(*g));
		}

	// A byte inserted or deleted at each position; bytes appended (a blind index past 42 bytes
	// is malformed).
	for (const auto &[name, g] : std::vector<std::pair<std::string, const Bytes *>>{
			 {"g1", &g1}, {"d1", &d1}, {"bi8", &bi8}, {"bi32", &bi32}})
	{
		for (std::size_t i = 0; i <= g->size(); i++)
		{
			Bytes ins = *g;
			ins.insert(ins.begin() + static_cast<long>(i), static_cast<char>(rng()));
			probe(name + " byte inserted at " + std::to_string(i), ins, ctx_of(*g));
			if (i < g->size())
			{
				Bytes del = *g;
				del.erase(del.begin() + static_cast<long>(i));
				probe(name + " byte deleted at " + std::to_string(i), del, ctx_of(*g));
			}
		}
		for (std::size_t n = 1; n <= 40; n++)
		{
			probe(name + " " + std::to_string(n) + " zero bytes appended", *g + Bytes(n, '\0'),
				  ctx_of(*g));
			probe(name + " " + std::to_string(n) + " random bytes appended",
				  *g + RandomBytes(rng, n), ctx_of(*g));
		}
	}

	// Each header field altered: format and algorithm bytes (all values), key id (every key of
	// the catalog and beyond), version. A GCM header on a SIV value or the reverse fails as
	// altered; a blind index header fails as one, whatever follows.
	for (const auto &[name, g] : std::vector<std::pair<std::string, const Bytes *>>{
			 {"g1", &g1}, {"d1", &d1}, {"d0", &d0}, {"bi8", &bi8}, {"bi32", &bi32}})
		for (int v = 0; v < 256; v++)
		{
			Bytes f = *g, a = *g;
			f[0] = static_cast<char>(v);
			a[1] = static_cast<char>(v);
			probe(name + " format byte " + std::to_string(v), f, ctx_of(*g));
			probe(name + " algorithm byte " + std::to_string(v), a, ctx_of(*g));
		}
	const std::uint32_t ids[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 0x7fffffff, 0x80000000, 0xffffffff};
	for (std::uint32_t id : ids)
		for (const auto &[name, g] : std::vector<std::pair<std::string, const Bytes *>>{
				 {"g1", &g1}, {"g2", &g2}, {"d1", &d1}, {"d2", &d2}, {"bi8", &bi8}})
		{
			probe(name + " key id " + std::to_string(id), WithBe32(*g, 2, id), ctx_of(*g));
			probe(name + " version " + std::to_string(id), WithBe32(*g, 6, id), ctx_of(*g));
		}
	// A real SIV header over random bytes of every length around its minimum, and a blind
	// index header over every length around its bounds.
	for (std::size_t n = 10; n < 60; n++)
	{
		probe("siv header + " + std::to_string(n - 10) + " random bytes",
			  d1.substr(0, 10) + RandomBytes(rng, n - 10), ctx1);
		probe("blind index header + " + std::to_string(n - 10) + " random bytes",
			  bi8.substr(0, 10) + RandomBytes(rng, n - 10), std::nullopt);
	}

	// Fields swapped between ciphertexts: header, nonce, body and tag of another value.
	auto part = [](const Bytes &b, std::size_t from, std::size_t n) { return b.substr(from, n); };
	probe("g1 under g2's header", part(g2, 0, 10) + g1.substr(10), ctx1);
	probe("g2 under g1's header", part(g1, 0, 10) + g2.substr(10), ctx1);
	probe("g1 with g2's nonce", g1.substr(0, 10) + part(g2, 10, 12) + g1.substr(22), ctx1);
	probe("g1 with g2's tag", g1.substr(0, g1.size() - 16) + g2.substr(g2.size() - 16), ctx1);
	probe("g1 with g2's body", g1.substr(0, 22) + g2.substr(22), ctx1);
	probe("gother under g1's header", part(g1, 0, 10) + gother.substr(10), std::nullopt);
	probe("g1 twice", g1 + g1, ctx1);
	probe("g1 with tag zeroed", g1.substr(0, g1.size() - 16) + Bytes(16, '\0'), ctx1);
	probe("d1 under d2's header", part(d2, 0, 10) + d1.substr(10), ctx1);
	probe("d2 under d1's header", part(d1, 0, 10) + d2.substr(10), ctx1);
	probe("d1 with d2's IV", d1.substr(0, 10) + part(d2, 10, 16) + d1.substr(26), ctx1);
	probe("d1 with IV zeroed", d1.substr(0, 10) + Bytes(16, '\0') + d1.substr(26), ctx1);
	probe("d1 with d2's body", d1.substr(0, 26) + d2.substr(26), ctx1);
	probe("g1's nonce, body and tag under d1's header", part(d1, 0, 10) + g1.substr(10), ctx1);
	probe("d1's IV and body under g1's header", part(g1, 0, 10) + d1.substr(10), ctx1);
	probe("d0 under g1's header (too short for GCM)", part(g1, 0, 10) + d0.substr(10), ctx1);
	probe("d1 twice", d1 + d1, ctx1);
	probe("bi8 under bi32's header", part(bi32, 0, 10) + bi8.substr(10), std::nullopt);
	probe("bi8 naming the SIV key", WithBe32(bi8, 2, ParseHeader(d1).key_id), std::nullopt);
	probe("bi8 naming no key", WithBe32(bi8, 2, 0x7fffffff), std::nullopt);
	probe("bi8 twice", bi8 + bi8, std::nullopt);
	probe("bi32 then bi8", bi32 + bi8, std::nullopt);
	probe("bi32's HMAC under d1's header", part(d1, 0, 10) + bi32.substr(10), ctx1);
	probe("d1's first 32 bytes under bi32's header", part(bi32, 0, 10) + d1.substr(10, 32), ctx1);

	// Ciphertexts of another database: the same key id names another DEK here, or none.
	probe("foreign (same key id, other DEK)", foreign1, ctx1);
	probe("foreign (same key id, other DEK), no context", foreign1, std::nullopt);
	probe("foreign (key id unknown here)", foreign12, std::nullopt);
	probe("foreign body under g1's header", g1.substr(0, 10) + foreign1.substr(10), ctx1);
	probe("foreign SIV (same key id, other DEK)", foreign_det, ctx1);
	probe("foreign SIV body under d1's header", d1.substr(0, 10) + foreign_det.substr(10), ctx1);

	// Random bytes: bare, and behind a plausible header of each version in the catalog.
	for (int i = 0; i < 600; i++)
		probe("random " + std::to_string(i), RandomBytes(rng, rng() % 120),
			  i % 3 ? std::optional<Bytes>(RandomBytes(rng, rng() % 16)) : std::nullopt);
	const Bytes *headers[] = {&g1, &g2, &gother, &d1, &d2, &bi8};
	for (int i = 0; i < 600; i++)
	{
		const Bytes &like = *headers[i % 6];
		Bytes b = RandomBytes(rng, like == bi8 ? 10 + rng() % 40 : 26 + rng() % 80);
		std::copy(like.begin(), like.begin() + 10, b.begin());
		probe("random behind a header " + std::to_string(i), b, ctx1);
	}

	// Megabyte inputs: random, and a plausible header in front of random bytes.
	Bytes mb = RandomBytes(rng, 1 << 20);
	probe("1 MiB random", mb, std::nullopt);
	std::copy(g1.begin(), g1.begin() + 10, mb.begin());
	probe("1 MiB behind g1's header", mb, ctx1);
	std::copy(d1.begin(), d1.begin() + 10, mb.begin());
	probe("1 MiB behind d1's header", mb, ctx1);
	std::copy(bi8.begin(), bi8.begin() + 10, mb.begin());
	probe("1 MiB behind bi8's header", mb, std::nullopt);
	probe(
		"1 MiB of g1 repeated",
		[&]
		{
			Bytes r;
			while (r.size() < (1u << 20))
				r += g1;
			return r;
		}(),
		ctx1);

	// Stored values, read from a table: out of line, compressed inline, compressed out of line
	// (pglz and lz4), so the functions detoast (and the header readers slice) hostile bytes.
	db.exec("CREATE TABLE hostile_values (id int PRIMARY KEY, v bytea)");
	const Bytes siv_header = [&]
	{
		Bytes h = g1.substr(0, 10);
		h[1] = 0x02;
		return h;
	}();
	std::vector<std::pair<std::string, Input>> stored_values = {
		{"g1", {"", g1, ctx1}},
		{"gbig", {"", gbig, ctx_bin}},
		{"g2", {"", g2, ctx1}},
		{"g1 header + 100 kB zeros", {"", g1.substr(0, 10) + Bytes(100000, '\0'), ctx1}},
		{"g1 header + 1 MiB zeros", {"", g1.substr(0, 10) + Bytes(1 << 20, '\0'), ctx1}},
		{"g2 header + 100 kB zeros", {"", g2.substr(0, 10) + Bytes(100000, '\0'), ctx1}},
		{"g1 header + 4 kB random", {"", g1.substr(0, 10) + RandomBytes(rng, 4000), ctx1}},
		{"g1 x 2000",
		 {"",
		  [&]
		  {
			  Bytes r;
			  for (int i = 0; i < 2000; i++)
				  r += g1;
			  return r;
		  }(),
		  ctx1}},
		{"siv header + 100 kB zeros", {"", siv_header + Bytes(100000, '\0'), ctx1}},
		{"d1", {"", d1, ctx1}},
		{"d2", {"", d2, ctx1}},
		{"bi32", {"", bi32, std::nullopt}},
		{"d1 header + 100 kB zeros", {"", d1.substr(0, 10) + Bytes(100000, '\0'), ctx1}},
		{"bi8 header + 100 kB zeros", {"", bi8.substr(0, 10) + Bytes(100000, '\0'), ctx1}},
		{"bi8 header + 5 kB random", {"", bi8.substr(0, 10) + RandomBytes(rng, 5000), ctx1}},
		{"bi32 + 1 byte", {"", bi32 + "x", std::nullopt}},
		{"100 kB of A", {"", Bytes(100000, 'A'), std::nullopt}},
		{"5 kB zeros", {"", Bytes(5000, '\0'), std::nullopt}},
		{"format 2 + 100 kB zeros", {"", Bytes(1, '\x02') + Bytes(100000, '\0'), std::nullopt}},
		{"g1 truncated to 37", {"", g1.substr(0, 37), ctx1}},
		{"header only + 3 kB of header",
		 {"",
		  [&]
		  {
			  Bytes r;
			  while (r.size() < 3000)
				  r += g1.substr(0, 10);
			  return r;
		  }(),
		  ctx1}},
		{"empty", {"", Bytes(), std::nullopt}},
		{"NULL", {"", std::nullopt, std::nullopt}},
	};
	const char *storage[] = {
		"ALTER TABLE hostile_values ALTER COLUMN v SET STORAGE EXTERNAL",
		"ALTER TABLE hostile_values ALTER COLUMN v SET STORAGE MAIN, ALTER COLUMN v SET "
		"COMPRESSION pglz",
		"ALTER TABLE hostile_values ALTER COLUMN v SET STORAGE EXTENDED, ALTER COLUMN v SET "
		"COMPRESSION pglz",
		"ALTER TABLE hostile_values ALTER COLUMN v SET STORAGE EXTENDED, ALTER COLUMN v SET "
		"COMPRESSION lz4",
	};
	std::vector<Input> stored;
	for (const char *mode : storage)
	{
		db.exec(mode);
		for (const auto &[name, value] : stored_values)
		{
			Input in = value;
			in.row_id = static_cast<int>(stored.size()) + 1;
			in.label = "stored " + name + " (" + std::string(mode).substr(48) + ")";
			const std::string id = std::to_string(in.row_id);
			const char *values[2] = {id.c_str(), in.ciphertext ? in.ciphertext->data() : nullptr};
			int lengths[2] = {0, in.ciphertext ? static_cast<int>(in.ciphertext->size()) : 0};
			int formats[2] = {0, 1};
			Result r(PQexecParams(db.raw(),
								  "INSERT INTO hostile_values VALUES ($1::int, $2::bytea)", 2,
								  nullptr, values, lengths, formats, 0));
			ASSERT_TRUE(r.ok()) << r.message();
			stored.push_back(in);
		}
	}
	// Each way of storing happened: out of line uncompressed (longer than a page and not
	// compressed), and compressed with each method.
	EXPECT_GT(db.intValue("SELECT count(*) FROM hostile_values WHERE pg_column_compression(v) "
						  "IS NULL AND octet_length(v) > 8192"),
			  0);
	EXPECT_GT(db.intValue("SELECT count(*) FROM hostile_values WHERE pg_column_compression(v) "
						  "= 'pglz'"),
			  0);
	EXPECT_GT(db.intValue("SELECT count(*) FROM hostile_values WHERE pg_column_compression(v) "
						  "= 'lz4'"),
			  0);
	prober.PrepareTableStatements();
	for (const auto &in : stored)
	{
		prober.Probe(in);
		inputs++;
	}

	const auto elapsed =
		std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
	Note("hostile input: " + std::to_string(inputs) + " inputs, " + std::to_string(prober.calls()) +
		 " calls in " + std::to_string(elapsed.count()) + " ms\n" + prober.Summary());

	EXPECT_EQ(prober.mismatches(), 0);
	// The run reached every outcome: each decrypt signature returned plaintext for the
	// genuine values, and every SQLSTATE the inputs call for was seen.
	EXPECT_GE(prober.okCount("decrypt(bytea,bytea)"), 10);
	EXPECT_GE(prober.okCount("rewrap(bytea,bytea)"), 8);
	// Each deterministic seed (d1, d0, dbin, d2) decrypted in each decrypt statement that takes
	// its context, and the v1 ones rewrapped to pgkm_encrypt_det's bytes under v2.
	EXPECT_GE(prober.sivDecrypts(), 8);
	EXPECT_GE(prober.sivRewraps(), 3);
	for (const char *state : {"22P03", "22000", "42704", "55000", "22023", "22021"})
		EXPECT_EQ(prober.sqlstates().count(state), 1u) << state << " was never seen";
	EXPECT_EQ(prober.sqlstates().size(), 6u);

	// The lookup functions under hostile arguments: NULLs, empty and 1 MiB values, unknown
	// names (one of 1 MiB), keys of another algorithm, versions that may not be used, a role
	// without the key's roles, and arguments swapped so that a plaintext is the key name. Each
	// call gets exactly its SQLSTATE or its value, and no error repeats a plaintext.
	db.exec("SELECT pgkm.create_key('det_off', algorithm => 'aes-256-siv')");
	db.exec("SELECT pgkm.create_key('bidx_off', algorithm => 'blind-index')");
	db.exec("SELECT pgkm.disable_key_version('det_off', 1)");
	db.exec("SELECT pgkm.disable_key_version('bidx_off', 1)");
	db.exec("CREATE ROLE hostile_nobody");
	std::map<std::string, long long> lookup_states;
	long long lookup_calls = 0;
	// want: a SQLSTATE, the row's columns as text joined by '|', or "" for any value.
	const auto is_sqlstate = [](const std::string &w)
	{
		return w.size() == 5 &&
			   std::all_of(w.begin(), w.end(),
						   [](char c) { return std::isdigit(c) || std::isupper(c); });
	};
	const auto lookup = [&](const std::string &label, const std::string &sql,
							std::vector<std::optional<Bytes>> params, const std::string &want)
	{
		lookup_calls++;
		std::vector<const char *> values;
		std::vector<int> lengths, formats;
		for (const auto &v : params)
		{
			values.push_back(v ? v->data() : nullptr);
			lengths.push_back(v ? static_cast<int>(v->size()) : 0);
			formats.push_back(1);
		}
		PGresult *res = PQexecParams(db.raw(), sql.c_str(), static_cast<int>(params.size()),
									 nullptr, values.data(), lengths.data(), formats.data(), 0);
		ASSERT_EQ(PQstatus(db.raw()), CONNECTION_OK) << label << " broke the connection";
		Result r(res);
		std::string got;
		if (r.ok())
		{
			for (int c = 0; r.rows() == 1 && c < r.cols(); c++)
				got += (c ? "|" : "") + (r.isNull(0, c) ? std::string("<NULL>") : r.get(0, c));
			if (is_sqlstate(want))
				ADD_FAILURE() << label << ": expected " << want << ", got a value";
			else if (!want.empty())
				EXPECT_EQ(got, want) << label;
			else
				EXPECT_TRUE(r.rows() == 1 && !r.isNull(0, 0)) << label << ": expected a value";
			return;
		}
		lookup_states[r.sqlstate()]++;
		EXPECT_EQ(r.sqlstate(), want) << label << ": " << r.message();
		std::string text;
		for (int field : {PG_DIAG_MESSAGE_PRIMARY, PG_DIAG_MESSAGE_DETAIL, PG_DIAG_MESSAGE_HINT,
						  PG_DIAG_CONTEXT})
			if (const char *f = PQresultErrorField(res, field))
				text += std::string(f) + "\n";
		for (const auto &secret : secrets)
			EXPECT_EQ(text.find(secret), std::string::npos)
				<< label << ": the error repeats a plaintext";
	};
	struct LookupFunction
	{
		std::string sql; // $1 data, $2 key name, $3 context where there is one
		int args;
		std::string key;                     // a key it accepts
		std::string key_off;                 // a key of its algorithm without a usable version
		std::vector<std::string> wrong_keys; // keys of another algorithm
		bool text;                           // $1 (and $3) are text
	};
	const std::vector<std::string> not_siv = {"hostile", "bidx", "bidx32"};
	const std::vector<std::string> not_blind = {"hostile", "det", "disabled_key"};
	const std::vector<LookupFunction> lookups = {
		{"SELECT pgkm_encrypt_det($1::bytea, $2::text)", 2, "det", "det_off", not_siv, false},
		{"SELECT pgkm_encrypt_det($1::bytea, $2::text, $3::bytea)", 3, "det", "det_off", not_siv,
		 false},
		{"SELECT pgkm_encrypt_det($1::text, $2::text, $3::text)", 3, "det", "det_off", not_siv,
		 true},
		{"SELECT pgkm_encrypt_det_all($1::bytea, $2::text, $3::bytea)", 3, "det", "det_off",
		 not_siv, false},
		{"SELECT pgkm_encrypt_det_all($1::text, $2::text)", 2, "det", "det_off", not_siv, true},
		{"SELECT pgkm_blind_index($1::bytea, $2::text)", 2, "bidx", "bidx_off", not_blind, false},
		{"SELECT pgkm_blind_index($1::text, $2::text)", 2, "bidx32", "bidx_off", not_blind, true},
		{"SELECT pgkm_blind_index_all($1::bytea, $2::text)", 2, "bidx1", "bidx_off", not_blind,
		 false},
		{"SELECT pgkm_blind_index_all($1::text, $2::text)", 2, "bidx", "bidx_off", not_blind, true},
	};
	Bytes ascii_mb;
	while (ascii_mb.size() < (1u << 20))
		ascii_mb += "lookup-value-" + std::to_string(ascii_mb.size()) + ";";
	const Bytes binary_mb = RandomBytes(rng, 1 << 20);
	Bytes swapped_mb;
	while (swapped_mb.size() < (1u << 20))
		swapped_mb += p_swapped;
	const Bytes colon_name = "customer:4711/none";
	for (const auto &f : lookups)
	{
		const auto call = [&](const std::string &label, std::optional<Bytes> data,
							  std::optional<Bytes> key, const std::string &want)
		{
			std::vector<std::optional<Bytes>> params = {std::move(data), std::move(key)};
			if (f.args == 3)
				params.push_back(ctx1);
			lookup(f.sql + ": " + label, f.sql, params, want);
		};
		call("NULL value", std::nullopt, f.key, "<NULL>");
		call("NULL value, NULL key name", std::nullopt, std::nullopt, "<NULL>");
		call("NULL key name", p8, std::nullopt, "22004");
		call("empty value", Bytes(), f.key, "");
		call("1 MiB value", f.text ? ascii_mb : binary_mb, f.key, "");
		for (const Bytes &name :
			 {Bytes("no_such_key"), Bytes(), Bytes(100, 'k'), colon_name, Bytes(1 << 20, 'k')})
			call("unknown key of " + std::to_string(name.size()) + " bytes", p8, name, "42704");
		for (const auto &k : f.wrong_keys)
			call("key " + k + " of another algorithm", p8, k, "42809");
		call("key without a usable version", p8, f.key_off, "55000");
		call("arguments swapped", f.key, p_swapped, "42704");
		call("arguments swapped, 1 MiB", f.key, swapped_mb, "42704");
		db.exec("SET ROLE hostile_nobody");
		call("denied role", p8, f.key, "42501");
		call("denied role, arguments swapped", f.key, p_swapped, "42704");
		db.exec("RESET ROLE");
	}
	// The values are right: empty and 1 MiB values round-trip and repeat, text and bytea of the
	// same bytes match, NULL and empty contexts match, _all lists the active version first.
	lookup("det 1 MiB round trip (value)",
		   "SELECT octet_length(v), pgkm_decrypt(v, $2::bytea) = $1::bytea, "
		   "v = pgkm_encrypt_det($1::bytea, 'det', $2::bytea) "
		   "FROM (SELECT pgkm_encrypt_det($1::bytea, 'det', $2::bytea) v) s",
		   {binary_mb, ctx1}, std::to_string((1 << 20) + kSivOverhead) + "|t|t");
	lookup("det of an empty value",
		   "SELECT octet_length(v), pgkm_decrypt(v) = ''::bytea, pgkm_decrypt_text(v, NULL::text) "
		   "= '' FROM (SELECT pgkm_encrypt_det(''::bytea, 'det') v) s",
		   {}, std::to_string(kSivOverhead) + "|t|t");
	lookup("det_all of 1 MiB",
		   "SELECT array_length(a, 1), a[1] = pgkm_encrypt_det($1::bytea, 'det'), "
		   "pgkm_decrypt(a[2]) = $1::bytea, pgkm.ciphertext_version(a[2]) "
		   "FROM (SELECT pgkm_encrypt_det_all($1::bytea, 'det') a) s",
		   {binary_mb}, "2|t|t|1");
	lookup("blind index of 1 MiB",
		   "SELECT octet_length(b), b = (pgkm_blind_index_all($1::bytea, 'bidx'))[1], "
		   "(pgkm_ciphertext_info(b)).algorithm "
		   "FROM (SELECT pgkm_blind_index($1::bytea, 'bidx') b) s",
		   {binary_mb}, "18|t|blind-index");
	lookup("text and bytea, NULL and empty context",
		   "SELECT pgkm_encrypt_det($1::text, 'det') = pgkm_encrypt_det(convert_to($1::text, "
		   "'UTF8'), 'det', NULL::bytea), pgkm_encrypt_det($1::text, 'det', '') = "
		   "pgkm_encrypt_det($1::text, 'det'), pgkm_encrypt_det($1::text, 'det', 'x') <> "
		   "pgkm_encrypt_det($1::text, 'det'), pgkm_blind_index($1::text, 'bidx') = "
		   "pgkm_blind_index(convert_to($1::text, 'UTF8'), 'bidx')",
		   {p8}, "t|t|t|t");
	// pgkm_encrypt refuses the keys of the other algorithms; the blind index is never a key for
	// decryption.
	for (const char *k : {"det", "bidx"})
		lookup(std::string("pgkm_encrypt with ") + k, "SELECT pgkm_encrypt($1::bytea, $2::text)",
			   {p8, Bytes(k)}, "42809");
	lookup("pgkm_encrypt, arguments swapped", "SELECT pgkm_encrypt($1::bytea, $2::text)",
		   {Bytes("det"), p_swapped}, "42704");
	Note("lookup functions: " + std::to_string(lookup_calls) + " calls");
	for (const char *state : {"22004", "42704", "42809", "55000", "42501"})
		EXPECT_GT(lookup_states[state], 0) << state << " was never seen";
	EXPECT_EQ(lookup_states.count("XX000"), 0u);

	// The server never restarted: same postmaster, same start time, the idle session alive
	// in the same backend.
	EXPECT_EQ(cluster.postmasterPid(), postmaster_pid);
	ASSERT_TRUE(watcher.alive());
	EXPECT_EQ(watcher.backendPid(), watcher_pid);
	EXPECT_EQ(watcher.value("SELECT pg_backend_pid()"), std::to_string(watcher_pid));
	EXPECT_EQ(watcher.value("SELECT pg_postmaster_start_time()::text"), start_time);

	// No plaintext in the server log or the audit log. The probe shows that a value which
	// reaches an error message does reach the log.
	Result probe_error = db.query("SELECT 'PROBE-MARKER-4d1c'::int");
	EXPECT_EQ(probe_error.sqlstate(), "22P02");
	db.exec("SELECT pgkm.audit_flush(false)");
	const std::string log = cluster.serverLog();
	EXPECT_NE(log.find("PROBE-MARKER-4d1c"), std::string::npos);
	for (const auto &secret : secrets)
		EXPECT_EQ(log.find(secret), std::string::npos) << "the server log contains a plaintext";
	EXPECT_EQ(log.find("terminated by signal"), std::string::npos);
	const long long failed_records =
		db.intValue("SELECT count(*) FROM pgkm.audit_log WHERE action = 'failed'");
	Note("audit records of failed calls: " + std::to_string(failed_records));
	EXPECT_GT(failed_records, 1000);
	// The lookup functions' refusals are audited: denied for the role, failed otherwise.
	for (const char *op : {"encrypt_det", "blind_index"})
	{
		EXPECT_GT(db.intValue("SELECT count(*) FROM pgkm.audit_log WHERE action = 'denied' AND "
							  "sqlstate = '42501' AND detail LIKE $1 || ':%'",
							  {op}),
				  0)
			<< op;
		EXPECT_GT(db.intValue("SELECT count(*) FROM pgkm.audit_log WHERE action = 'failed' AND "
							  "sqlstate = '42809' AND detail LIKE $1 || ':%'",
							  {op}),
				  0)
			<< op;
	}
	for (const auto &secret : secrets)
		EXPECT_EQ(db.value("SELECT count(*) FROM pgkm.audit_log a WHERE "
						   "strpos(row_to_json(a)::text, $1) > 0",
						   {secret}),
				  "0");
}

} // namespace pgkm::it
