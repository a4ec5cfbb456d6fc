// ResourceLimits*: what pgkm costs in memory for large values and for many rows, measured on
// the backend process itself (/proc/<pid>/status, read as root). A ciphertext beyond
// PostgreSQL's 1 GB value limit is refused with 54000 before any output is allocated; a
// large value costs a fixed small number of copies of itself, stored or not; hand-made
// ciphertexts fail before pgkm allocates anything proportional to them; audit records stay
// small whatever the value; decrypting millions of rows runs in constant memory at both
// audit levels; and the key cache gives its memory back when it is reset.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <sstream>
#include <thread>

namespace pgkm::it
{

namespace
{

constexpr long long kMiB = 1024 * 1024;

// PostgreSQL's MaxAllocSize (1 GB - 1) and the largest value it allows, header included.
constexpr long long kMaxAllocSize = 0x3fffffff;
// A GCM ciphertext adds 38 bytes (header 10, nonce 12, tag 16) to its plaintext, and a bytea
// has a 4-byte header: the largest plaintext whose ciphertext PostgreSQL can hold.
constexpr long long kGcmOverhead = 38;
constexpr long long kLargestPlaintext = kMaxAllocSize - 4 - kGcmOverhead; // 1,073,741,781

// The large value of the round-trip tests.
constexpr long long kLarge = 256 * kMiB;
// What a measurement may add to the copies it accounts for: allocator rounding, the
// executor, catalog caches and, in VmHWM, shared memory (the clusters here run with 16 MB
// of shared buffers, so that little of it counts).
constexpr long long kSlack = 40 * kMiB;

// One reading of /proc/<pid>/status, in bytes.
struct ProcStatus
{
	long long hwm = 0;   // VmHWM: peak resident set since start or the last reset
	long long rss = 0;   // VmRSS
	long long anon = 0;  // RssAnon: private memory (palloc, malloc), not shared buffers
	long long shmem = 0; // RssShmem: shared memory touched
};

// Reads VmHWM, VmRSS, RssAnon and RssShmem of a process.
ProcStatus ReadStatus(int pid)
{
	std::ifstream in("/proc/" + std::to_string(pid) + "/status");
	if (!in)
		throw std::runtime_error("cannot read /proc/" + std::to_string(pid) + "/status");
	ProcStatus s;
	std::string line;
	auto field = [&](const char *name, long long *out)
	{
		std::string prefix = std::string(name) + ":";
		if (line.rfind(prefix, 0) == 0)
			*out = std::stoll(line.substr(prefix.size())) * 1024; // "   1234 kB"
	};
	while (std::getline(in, line))
	{
		field("VmHWM", &s.hwm);
		field("VmRSS", &s.rss);
		field("RssAnon", &s.anon);
		field("RssShmem", &s.shmem);
	}
	return s;
}

// Resets a process's VmHWM to its current resident set (needs root or the same user).
void ResetPeak(int pid)
{
	std::ofstream out("/proc/" + std::to_string(pid) + "/clear_refs");
	out << "5";
	out.close();
	if (!out)
		throw std::runtime_error("cannot reset the peak of " + std::to_string(pid) +
								 " (/proc/<pid>/clear_refs needs root)");
}

// Formats bytes as MiB with one decimal.
std::string Mb(long long bytes)
{
	std::ostringstream s;
	s.setf(std::ios::fixed);
	s.precision(1);
	s << static_cast<double>(bytes) / static_cast<double>(kMiB) << " MiB";
	return s.str();
}

// What one statement cost its backend: how far the resident set rose above where it stood
// when the statement started (an upper bound of the private memory it allocated at its peak),
// and how long it took.
struct Cost
{
	Result result;
	long long peak = 0; // bytes
	double seconds = 0;
};

// Runs sql on db and measures its cost through VmHWM, reset just before.
Cost Measure(Connection &db, const std::string &sql)
{
	int pid = db.backendPid();
	ResetPeak(pid);
	ProcStatus before = ReadStatus(pid);
	auto start = Clock::now();
	Result r = db.query(sql);
	double seconds = std::chrono::duration<double>(Clock::now() - start).count();
	ProcStatus after = ReadStatus(pid);
	return Cost{std::move(r), after.hwm - before.rss, seconds};
}

// Measures sql like Measure, requires it to succeed, and logs the figures under a label.
Cost MeasureOk(Connection &db, const std::string &label, const std::string &sql)
{
	Cost c = Measure(db, sql);
	if (!c.result.ok())
		throw PgError(label + ": " + c.result.message(), c.result.sqlstate());
	Note(label + ": peak +" + Mb(c.peak) + ", " + std::to_string(c.seconds) + " s");
	return c;
}

// An SQL expression of a text value of exactly n ASCII bytes, built with one repeat() of a
// piece whose length divides n (so that no concatenation copies it), and volatile (random())
// so that the planner does not fold it into a constant, which would copy it once more.
std::string Generated(long long n)
{
	long long piece = 0;
	for (long long d = 4096; d >= 100 && piece == 0; --d)
		if (n % d == 0)
			piece = d;
	for (long long d = 4097; d <= 100000 && piece == 0; ++d)
		if (n % d == 0)
			piece = d;
	if (piece == 0)
		throw std::runtime_error("no piece length divides " + std::to_string(n));
	return "repeat(substr(repeat(md5('pgkm'), " + std::to_string(piece / 32 + 1) + "), 1, " +
		   std::to_string(piece) + "), " + std::to_string(n / piece) + " + (random() * 0)::int)";
}

// Samples a process's RssAnon every 2 ms on a thread while alive, keeping the maximum:
// catches memory that a statement holds while it runs and gives back at its end.
class AnonSampler
{
  public:
	explicit AnonSampler(int pid) : pid_(pid), max_(ReadStatus(pid).anon)
	{
		thread_ = std::thread(
			[this]
			{
				while (!stop_.load())
				{
					long long anon = ReadStatus(pid_).anon;
					long long seen = max_.load();
					while (anon > seen && !max_.compare_exchange_weak(seen, anon))
					{
					}
					std::this_thread::sleep_for(2ms);
				}
			});
	}
	AnonSampler(const AnonSampler &) = delete;
	AnonSampler &operator=(const AnonSampler &) = delete;
	~AnonSampler() { Stop(); }

	// Stops sampling and returns the largest RssAnon seen, in bytes.
	long long Stop()
	{
		stop_.store(true);
		if (thread_.joinable())
			thread_.join();
		return max_.load();
	}

  private:
	int pid_;
	std::atomic<long long> max_;
	std::atomic<bool> stop_{false};
	std::thread thread_;
};

// The private memory a statement held at most while it ran, above what the backend held
// before it, and how long it took.
struct AnonCost
{
	long long before = 0;
	long long peak = 0; // max RssAnon during the statement minus before
	long long after = 0;
	double seconds = 0;
};

// Runs sql (which must succeed) while sampling its backend's RssAnon; logs the figures.
AnonCost SampleAnon(Connection &db, const std::string &label, const std::string &sql)
{
	int pid = db.backendPid();
	AnonCost c;
	c.before = ReadStatus(pid).anon;
	AnonSampler sampler(pid);
	auto start = Clock::now();
	db.exec(sql);
	c.seconds = std::chrono::duration<double>(Clock::now() - start).count();
	c.peak = sampler.Stop() - c.before;
	c.after = ReadStatus(pid).anon;
	Note(label + ": RssAnon " + Mb(c.before) + " before, peak +" + Mb(c.peak) + ", after " +
		 Mb(c.after) + ", " + std::to_string(c.seconds) + " s");
	return c;
}

// A cluster with small shared buffers, so that VmHWM mostly shows private memory.
std::vector<std::string> Settings()
{
	return {"shared_buffers = 16MB", "pgkm.audit_level = statement"};
}

// Waits for the audit worker and returns the records of key_name as one string per record:
// "action sqlstate row_context_bytes detail_bytes record_bytes".
std::vector<std::string> AuditSizes(Connection &db, const std::string &key_name)
{
	db.exec("SELECT pgkm.audit_flush()");
	Result r = db.exec("SELECT action || ' ' || coalesce(sqlstate, '-') || ' ' || "
					   "coalesce(octet_length(row_context), 0) || ' ' || "
					   "coalesce(octet_length(detail), 0) || ' ' || pg_column_size(a.*) "
					   "FROM pgkm.audit_log a WHERE key_name = $1 ORDER BY seq",
					   {key_name});
	std::vector<std::string> out;
	for (int i = 0; i < r.rows(); ++i)
		out.push_back(r.get(i, 0));
	return out;
}

// The largest record (pg_column_size of the row) of key_name in pgkm.audit_log.
long long LargestRecord(Connection &db, const std::string &key_name)
{
	db.exec("SELECT pgkm.audit_flush()");
	return db.intValue("SELECT coalesce(max(pg_column_size(a.*)), 0) FROM pgkm.audit_log a "
					   "WHERE key_name = $1",
					   {key_name});
}

} // namespace

// The probes themselves: a reset peak follows a large allocation and nothing else, and the
// sampler sees memory a statement holds only while it runs. Without this, every bound below
// could pass for a probe that reads nothing.
TEST(ResourceLimitsProbe, PeakAndSamplerSeeAllocations)
{
	Cluster cluster(Settings());
	cluster.start();
	Connection db = cluster.connect();
	db.exec("SELECT 1");
	Cost small =
		MeasureOk(db, "probe: octet_length(1 MiB)", "SELECT octet_length(" + Generated(kMiB) + ")");
	Cost big = MeasureOk(db, "probe: octet_length(256 MiB)",
						 "SELECT octet_length(" + Generated(kLarge) + ")");
	EXPECT_EQ(big.result.get(0, 0), std::to_string(kLarge));
	EXPECT_LT(small.peak, kSlack);
	EXPECT_GE(big.peak, kLarge - kMiB) << "VmHWM did not see a 256 MiB value";
	EXPECT_LT(big.peak, kLarge + kSlack) << "the generator copies its value";

	// array_agg holds about 8 bytes per row until the statement ends.
	AnonCost held = SampleAnon(db, "probe: array_agg of 4 M integers",
							   "SELECT cardinality(array_agg(g)) FROM generate_series(1, "
							   "4000000) g");
	EXPECT_GT(held.peak, 24 * kMiB) << "the sampler did not see memory held during a statement";
}

// A plaintext whose ciphertext would pass PostgreSQL's 1 GB limit is refused with 54000 and
// a clear message before pgkm allocates its output (the peak is the input's own); the backend
// lives on. The largest plaintext that fits is encrypted and decrypted, so the limit is exact.
TEST(ResourceLimits, OversizedValueIsRefusedBeforeAllocating)
{
	Cluster cluster(Settings());
	cluster.start();
	Connection db = cluster.connect();
	SetUpExtension(db, "big");
	const int pid = db.backendPid();
	const long long too_big = kLargestPlaintext + 1;

	struct Variant
	{
		const char *what;
		std::string input; // the plaintext as SQL, of type text or bytea
	};
	const Variant variants[] = {
		{"text", Generated(too_big)},
		// convert_to() makes a bytea at the cost of a second copy (text::bytea would be two).
		{"bytea", "convert_to(" + Generated(too_big) + ", 'UTF8')"},
	};
	long long text_input = 0;
	for (const Variant &v : variants)
	{
		SCOPED_TRACE(std::string("pgkm_encrypt(") + v.what + ")");
		// What PostgreSQL spends on the input before pgkm is called.
		Cost input = MeasureOk(db, std::string("1 GB + 1, ") + v.what + ": the input alone",
							   "SELECT octet_length(" + v.input + ")");
		EXPECT_EQ(input.result.get(0, 0), std::to_string(too_big));
		if (text_input == 0)
			text_input = input.peak;
		Cost refused = Measure(db, "SELECT octet_length(pgkm_encrypt(" + v.input + ", 'big'))");
		Note(std::string("1 GB + 1, ") + v.what + ": refused at peak +" + Mb(refused.peak) + ", " +
			 std::to_string(refused.seconds) + " s");
		EXPECT_EQ(refused.result.sqlstate(), "54000") << refused.result.message();
		EXPECT_NE(refused.result.message().find("value of " + std::to_string(too_big) +
												" bytes is too large to encrypt"),
				  std::string::npos)
			<< refused.result.message();
		// pgkm allocated nothing proportional to the value.
		EXPECT_LT(refused.peak, input.peak + kSlack);
		EXPECT_EQ(db.backendPid(), pid);
		EXPECT_EQ(db.value("SELECT 1"), "1") << "the backend did not survive";
	}
	// The detail gives the limit and the hint a way out; PL/pgSQL catches the error by name
	// and the session goes on.
	db.exec("CREATE FUNCTION refusal() RETURNS text LANGUAGE plpgsql AS $$ DECLARE d text; "
			"h text; BEGIN PERFORM pgkm_encrypt(" +
			Generated(too_big) +
			", 'big'); RETURN 'no error'; EXCEPTION WHEN program_limit_exceeded THEN GET "
			"STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT; RETURN d || "
			"' | ' || h; END $$");
	std::string refusal = db.value("SELECT refusal()");
	Note("1 GB + 1: " + refusal);
	EXPECT_NE(refusal.find("the largest plaintext is 1073741781 bytes"), std::string::npos)
		<< refusal;
	EXPECT_NE(refusal.find("Split the value"), std::string::npos) << refusal;

	// The largest plaintext that fits: its ciphertext is exactly 1 GB - 1 with its header,
	// and it decrypts. pgkm adds the ciphertext and the plaintext to the input.
	Cost fits = MeasureOk(db, "1 GB: largest plaintext, encrypt and decrypt",
						  "SELECT octet_length(c), octet_length(pgkm_decrypt(c)) FROM "
						  "(SELECT pgkm_encrypt(" +
							  Generated(kLargestPlaintext) + ", 'big') c OFFSET 0) s");
	EXPECT_EQ(fits.result.get(0, 0), std::to_string(kMaxAllocSize - 4));
	EXPECT_EQ(fits.result.get(0, 1), std::to_string(kLargestPlaintext));
	EXPECT_LT(fits.peak, text_input + 2 * kLargestPlaintext + kSlack);

	// The audit records the refusals with their SQLSTATE and message, not the value.
	db.exec("SELECT pgkm.audit_flush()");
	Result failed = db.exec("SELECT octet_length(detail), pg_column_size(a.*) FROM "
							"pgkm.audit_log a WHERE sqlstate = '54000' ORDER BY seq");
	ASSERT_EQ(failed.rows(), 3);
	for (int i = 0; i < failed.rows(); ++i)
	{
		EXPECT_LT(failed.getInt(i, 0), 256);
		EXPECT_LT(failed.getInt(i, 1), 4096);
	}
	EXPECT_LT(LargestRecord(db, "big"), 4096);
}

// A 256 MiB value encrypts and decrypts (bytea and text, with and without a context) with
// its digest intact. pgkm's own cost is its outputs: the ciphertext, then the plaintext; the
// input is PostgreSQL's, and PostgreSQL keeps each until the row is done. Audit records, at
// row level too, hold a nonce and counts, nothing proportional to the value.
TEST(ResourceLimits, LargeValueRoundTripsAtTheCostOfItsOutputs)
{
	Cluster cluster(Settings());
	cluster.start();
	Connection db = cluster.connect();
	SetUpExtension(db, "big");
	const std::string text = Generated(kLarge);
	const std::string bytes = "convert_to(" + text + ", 'UTF8')";
	const std::string sha256 = db.value("SELECT encode(sha256(" + bytes + "), 'hex')");
	const std::string md5 = db.value("SELECT md5(" + text + ")");
	Cost text_input =
		MeasureOk(db, "256 MiB text: the input alone", "SELECT octet_length(" + text + ")");
	Cost bytes_input =
		MeasureOk(db, "256 MiB bytea: the input alone", "SELECT octet_length(" + bytes + ")");

	Cost encrypt =
		MeasureOk(db, "256 MiB: encrypt", "SELECT octet_length(pgkm_encrypt(" + text + ", 'big'))");
	EXPECT_EQ(encrypt.result.get(0, 0), std::to_string(kLarge + kGcmOverhead));
	EXPECT_LT(encrypt.peak - text_input.peak, kLarge + kSlack);

	Cost bytea =
		MeasureOk(db, "256 MiB: encrypt + decrypt (bytea) + sha256",
				  "SELECT encode(sha256(pgkm_decrypt(pgkm_encrypt(" + bytes + ", 'big'))), 'hex')");
	EXPECT_EQ(bytea.result.get(0, 0), sha256);
	EXPECT_LT(bytea.peak - bytes_input.peak, 2 * kLarge + kSlack);

	db.exec("SET pgkm.audit_level = row");
	Cost text_trip =
		MeasureOk(db, "256 MiB: encrypt + decrypt_text with context + md5, row audit",
				  "SELECT md5(pgkm_decrypt_text(pgkm_encrypt(" + text + ", 'big', 'ctx'), 'ctx'))");
	EXPECT_EQ(text_trip.result.get(0, 0), md5);
	EXPECT_LT(text_trip.peak - text_input.peak, 2 * kLarge + kSlack);
	db.exec("RESET pgkm.audit_level");

	// Row-level records carry one 'nonce:<24 hex digits>' (30 bytes) per use.
	std::vector<std::string> records = AuditSizes(db, "big");
	ASSERT_FALSE(records.empty());
	bool row_level = false;
	for (const std::string &r : records)
		row_level = row_level || r.find(" 30 ") != std::string::npos;
	EXPECT_TRUE(row_level) << "no row-level record with one nonce";
	EXPECT_LT(LargestRecord(db, "big"), 4096);
}

// A stored 256 MiB ciphertext (out of line in TOAST) is detoasted once per call: decrypt
// and decrypt_text cost the detoasted ciphertext and the plaintext; rewrap the same, the new
// ciphertext taking the plaintext's place; ciphertext_info reads only the header; a value
// already under the active version is passed through by rewrap without being read; a
// compressed stored plaintext costs its decompressed copy and the ciphertext.
TEST(ResourceLimits, StoredLargeValueIsDetoastedOnce)
{
	Cluster cluster(Settings());
	cluster.start();
	Connection db = cluster.connect();
	SetUpExtension(db, "big");
	const std::string text = Generated(kLarge);
	const std::string sha256 =
		db.value("SELECT encode(sha256(convert_to(" + text + ", 'UTF8')), 'hex')");
	const std::string md5 = db.value("SELECT md5(" + text + ")");
	db.exec("CREATE UNLOGGED TABLE big (id int PRIMARY KEY, c bytea)");
	db.exec("ALTER TABLE big ALTER c SET STORAGE EXTERNAL"); // ciphertext does not compress
	MeasureOk(db, "256 MiB: INSERT of the ciphertext (PostgreSQL's own copies included)",
			  "INSERT INTO big SELECT 1, pgkm_encrypt(" + text + ", 'big')");
	EXPECT_EQ(db.value("SELECT pg_column_size(c) FROM big"), std::to_string(kLarge + kGcmOverhead));

	Cost decrypt = MeasureOk(db, "256 MiB stored: decrypt + sha256",
							 "SELECT encode(sha256(pgkm_decrypt(c)), 'hex') FROM big");
	EXPECT_EQ(decrypt.result.get(0, 0), sha256);
	EXPECT_LT(decrypt.peak, 2 * kLarge + kSlack) << "the ciphertext is detoasted more than once";

	Cost text_decrypt = MeasureOk(db, "256 MiB stored: decrypt_text + md5",
								  "SELECT md5(pgkm_decrypt_text(c)) FROM big");
	EXPECT_EQ(text_decrypt.result.get(0, 0), md5);
	EXPECT_LT(text_decrypt.peak, 2 * kLarge + kSlack)
		<< "the ciphertext is detoasted more than once";

	Cost info = MeasureOk(db, "256 MiB stored: ciphertext_info",
						  "SELECT (pgkm_ciphertext_info(c)).key_version FROM big");
	EXPECT_EQ(info.result.get(0, 0), "1");
	EXPECT_LT(info.peak, kSlack) << "the whole value is read for its header";

	db.exec("SELECT pgkm.rotate_key('big')");
	Cost rewrap = MeasureOk(db, "256 MiB stored: rewrap to version 2",
							"SELECT octet_length(pgkm_rewrap(c)) FROM big");
	EXPECT_EQ(rewrap.result.get(0, 0), std::to_string(kLarge + kGcmOverhead));
	EXPECT_LT(rewrap.peak, 2 * kLarge + kSlack) << "rewrap copies the plaintext";
	Result rewrapped = db.exec("SELECT pgkm.ciphertext_version(r), encode(sha256(pgkm_decrypt(r)), "
							   "'hex') FROM (SELECT pgkm_rewrap(c) r FROM big OFFSET 0) s");
	EXPECT_EQ(rewrapped.get(0, 0), "2");
	EXPECT_EQ(rewrapped.get(0, 1), sha256);

	// A value under the active version comes back as it is, unread.
	db.exec("INSERT INTO big SELECT 2, pgkm_encrypt(" + Generated(64 * kMiB) + ", 'big')");
	Cost current = MeasureOk(db, "64 MiB stored, already current: rewrap",
							 "SELECT octet_length(pgkm_rewrap(c)) FROM big WHERE id = 2");
	EXPECT_EQ(current.result.get(0, 0), std::to_string(64 * kMiB + kGcmOverhead));
	EXPECT_LT(current.peak, kSlack) << "rewrap reads a value it returns unchanged";
	EXPECT_EQ(db.value("SELECT pgkm_rewrap(c) = c FROM big WHERE id = 2"), "t");

	// A plaintext stored compressed is decompressed once and encrypted: its copy and the
	// ciphertext.
	db.exec("CREATE UNLOGGED TABLE plain (p text)");
	(void)db.query("ALTER TABLE plain ALTER p SET COMPRESSION lz4"); // faster, where built in
	db.exec("INSERT INTO plain SELECT " + text);
	EXPECT_LT(db.intValue("SELECT pg_column_size(p) FROM plain"), kLarge / 16);
	Cost from_stored = MeasureOk(db, "256 MiB stored compressed plaintext: encrypt",
								 "SELECT octet_length(pgkm_encrypt(p, 'big')) FROM plain");
	EXPECT_EQ(from_stored.result.get(0, 0), std::to_string(kLarge + kGcmOverhead));
	EXPECT_LT(from_stored.peak, 2 * kLarge + kSlack);
	EXPECT_EQ(db.value("SELECT md5(pgkm_decrypt_text(pgkm_encrypt(p, 'big'))) FROM plain"), md5);

	// Audit records of these calls stay small.
	EXPECT_LT(LargestRecord(db, "big"), 4096);
}

// Hand-made ciphertexts. Format v1 has no length field: the length is the value's own, which
// PostgreSQL bounds, so a header cannot claim more than the value holds. A malformed header
// or an unknown key fails before pgkm allocates anything; a well-formed header over forged
// bytes costs one output buffer, fails authentication (22000), and the backend lives on.
TEST(ResourceLimits, HandMadeCiphertextsFailBeforeAllocating)
{
	Cluster cluster(Settings());
	cluster.start();
	Connection db = cluster.connect();
	SetUpExtension(db, "big");
	db.exec("SELECT pgkm.rotate_key('big')"); // version 1 decrypt-only: rewrap must open it
	const int pid = db.backendPid();
	const long long size = 128 * kMiB;
	char key_id[9];
	snprintf(key_id, sizeof(key_id), "%08llx",
			 db.intValue("SELECT key_id FROM pgkm.keys WHERE name = 'big'"));
	const std::string v1 = std::string("0101") + key_id + "00000001"; // key "big", version 1
	// A header over forged bytes.
	auto forged = [&](const std::string &header)
	{ return "('\\x" + header + "'::bytea || convert_to(" + Generated(size) + ", 'UTF8'))"; };
	Cost input =
		MeasureOk(db, "128 MiB forged: the input alone", "SELECT octet_length(" + forged(v1) + ")");

	struct Case
	{
		const char *what;
		std::string header;
		const char *sqlstate;
		long long allowed; // what pgkm may allocate beyond the input
	};
	const Case cases[] = {
		{"unknown format", "02" + v1.substr(2), "22P03", kSlack},
		{"unknown algorithm", "0109" + v1.substr(4), "22P03", kSlack},
		{"unknown key", "01010000270f00000001", "42704", kSlack},
		{"forged bytes under a real key", v1, "22000", size + kSlack},
	};
	for (const Case &c : cases)
	{
		for (const char *fn : {"pgkm_decrypt", "pgkm_decrypt_text", "pgkm_rewrap"})
		{
			SCOPED_TRACE(std::string(fn) + ": " + c.what);
			Cost cost = Measure(db, std::string("SELECT octet_length(") + fn + "(" +
										forged(c.header) + "))");
			Note(std::string("128 MiB forged, ") + c.what + ", " + fn + ": " +
				 cost.result.sqlstate() + " at peak +" + Mb(cost.peak));
			EXPECT_EQ(cost.result.sqlstate(), c.sqlstate) << cost.result.message();
			EXPECT_LT(cost.peak, input.peak + c.allowed);
			EXPECT_EQ(db.backendPid(), pid);
			EXPECT_EQ(db.value("SELECT 1"), "1");
		}
	}
	// The failures are audited with their SQLSTATE; no record grows with the value.
	db.exec("SELECT pgkm.audit_flush()");
	EXPECT_GE(db.intValue("SELECT count(*) FROM pgkm.audit_log WHERE sqlstate = '22000'"), 3);
	EXPECT_LT(db.intValue("SELECT max(pg_column_size(a.*)) FROM pgkm.audit_log a"), 4096);
}

// Decrypting 3 M rows in one statement, with the key cache warm, holds no more private
// memory than decrypting 200 k: nothing per row stays behind in the key cache, the call
// sites or the audit path, at statement and at row level.
TEST(ResourceLimitsRows, MillionsOfRowsDecryptInConstantMemory)
{
	Cluster cluster(Settings());
	cluster.start();
	Connection db = cluster.connect();
	SetUpExtension(db, "rows");
	const long long rows = 3000000;
	db.exec("CREATE UNLOGGED TABLE many (id int, c bytea)");
	auto start = Clock::now();
	db.exec("INSERT INTO many SELECT g, pgkm_encrypt('value-' || g, 'rows', g::text) FROM "
			"generate_series(1, " +
			std::to_string(rows) + ") g");
	db.exec("ANALYZE many");
	Note("3 M rows: table built in " +
		 std::to_string(std::chrono::duration<double>(Clock::now() - start).count()) + " s");

	// The control: a statement that does hold memory per row is seen growing.
	auto agg = [&](long long n)
	{ return "SELECT cardinality(array_agg(id)) FROM many WHERE id <= " + std::to_string(n); };
	AnonCost agg_small = SampleAnon(db, "control: array_agg over 200 k rows", agg(200000));
	AnonCost agg_all = SampleAnon(db, "control: array_agg over 3 M rows", agg(rows));
	EXPECT_GT(agg_all.peak - agg_small.peak, 16 * kMiB) << "the sampler misses per-row growth";

	auto decrypt = [&](long long n)
	{
		return "SELECT count(*) FROM many WHERE id <= " + std::to_string(n) +
			   " AND pgkm_decrypt_text(c, id::text) LIKE 'value-%'";
	};
	// The worker writes what the audit produced (at row level, one record per 48 rows): its
	// private memory after writing 3 M rows' records is compared with that after 200 k.
	const int worker = WorkerPid(db);
	ASSERT_NE(worker, 0);
	auto worker_anon = [&]
	{
		db.exec("SELECT pgkm.audit_flush()");
		return ReadStatus(worker).anon;
	};
	for (const char *level : {"statement", "row"})
	{
		SCOPED_TRACE(std::string("pgkm.audit_level = ") + level);
		db.exec(std::string("SET pgkm.audit_level = ") + level);
		db.exec(decrypt(1000)); // warm: the key cache, the call site, the audit catalog
		AnonCost small =
			SampleAnon(db, std::string(level) + ": decrypt 200 k rows", decrypt(200000));
		long long worker_small = worker_anon();
		long long records = db.intValue("SELECT count(*) FROM pgkm.audit_log");
		AnonCost all = SampleAnon(db, std::string(level) + ": decrypt 3 M rows", decrypt(rows));
		long long worker_all = worker_anon();
		records = db.intValue("SELECT count(*) FROM pgkm.audit_log") - records;
		Note(std::string(level) + ": the worker wrote " + std::to_string(records) +
			 " records for 3 M rows; its RssAnon " + Mb(worker_small) + " after 200 k rows, " +
			 Mb(worker_all) + " after 3 M");
		EXPECT_EQ(db.value(decrypt(rows)), std::to_string(rows));
		EXPECT_LT(all.peak - small.peak, 4 * kMiB) << "memory grows with the row count";
		EXPECT_LT(all.after - small.before, 4 * kMiB) << "memory stays behind after the rows";
		EXPECT_LT(worker_all - worker_small, 4 * kMiB) << "the worker keeps memory per record";
	}
	db.exec("RESET pgkm.audit_level");

	// Encrypting is the same: the 3 M-row INSERT again, sampled, against 200 k.
	auto encrypt = [&](long long n)
	{
		return "SELECT count(*) FROM generate_series(1, " + std::to_string(n) +
			   ") g WHERE octet_length(pgkm_encrypt('value-' || g, 'rows')) > 0";
	};
	AnonCost enc_small = SampleAnon(db, "statement: encrypt 200 k values", encrypt(200000));
	AnonCost enc_all = SampleAnon(db, "statement: encrypt 3 M values", encrypt(rows));
	EXPECT_LT(enc_all.peak - enc_small.peak, 4 * kMiB) << "memory grows with the row count";
}

// One statement over 1,000 keys: the key cache holds every key it used (1,000 is
// pgkm.key_cache_size's default, so nothing is evicted; test_many_keys.cpp goes beyond); its
// memory is measured per key, and a reset of the cache (any committed key change) gives it
// back, so repeated rounds do not accumulate.
TEST(ResourceLimitsKeys, ThousandKeysInOneStatementAndCacheResets)
{
	Cluster cluster(Settings());
	cluster.start();
	Connection db = cluster.connect();
	db.exec("CREATE EXTENSION pgkm");
	const int keys = 1000;
	auto start = Clock::now();
	db.exec("SELECT count(pgkm.create_key('k' || g)) FROM generate_series(1, " +
			std::to_string(keys) + ") g");
	db.exec("CREATE TABLE multi AS SELECT g AS id, pgkm_encrypt('value-' || g, 'k' || g) AS c "
			"FROM generate_series(1, " +
			std::to_string(keys) + ") g, generate_series(1, 10) r");
	Note("1,000 keys and 10,000 rows made in " +
		 std::to_string(std::chrono::duration<double>(Clock::now() - start).count()) + " s");
	db.exec("SELECT pgkm.audit_flush()");

	// A fresh backend: its cache is empty.
	Connection fresh = cluster.connect();
	const std::string decrypt_all =
		"SELECT count(*) FROM multi WHERE pgkm_decrypt_text(c) = 'value-' || id";
	const std::string decrypt_one =
		"SELECT count(*) FROM multi WHERE id = 1 AND pgkm_decrypt_text(c) = 'value-1'";
	fresh.exec(decrypt_one); // the catalog caches, one key
	AnonCost first = SampleAnon(fresh, "1,000 keys: first statement (cache filled)", decrypt_all);
	EXPECT_EQ(fresh.value(decrypt_all), std::to_string(keys * 10));
	long long per_key = (first.after - first.before) / keys;
	Note("1,000 keys: the cache holds about " + std::to_string(per_key) + " bytes per key");
	EXPECT_GT(first.after - first.before, 0) << "a full cache costs nothing: the probe is blind";
	// Measured: about 2.2 kB per key: the cache entry and its working key's 32-byte slot in a
	// shared locked page (about 540 bytes, see ManyKeys.MemoryIsBoundedBySmallCache), the
	// key's OpenSSL context until the statement's transaction ends, and SoftHSM's objects.
	// When each key had a locked page of its own it was about 8.9 kB.
	EXPECT_LT(per_key, 4 * 1024) << "a cached key costs more than 4 kB";

	// Each committed key change resets every backend's cache; refilling it reuses the memory
	// pgkm gave back. What remains per round is SoftHSM 2.6.1's: it never frees the session
	// object of a destroyed unwrapped key (about 250 bytes per unwrap, SoftHSMv2 issue 562).
	// The first refill after a reset settles the heap, so the rate is taken over the rounds
	// after it (measured: 252 bytes per key a round). A leaked cache entry would add its
	// 540 bytes or so per key every round: the bound lies between.
	const int rounds = 5;
	long long settled = first.after;
	long long last = first.after;
	for (int round = 1; round <= rounds; ++round)
	{
		db.exec("SELECT pgkm.create_key('reset" + std::to_string(round) + "')");
		AnonCost again =
			SampleAnon(fresh, "1,000 keys: round " + std::to_string(round + 1) + " after a reset",
					   decrypt_all);
		EXPECT_GT(again.seconds, first.seconds / 10) << "the cache was not reset: nothing measured";
		if (round == 1)
			settled = again.after;
		last = again.after;
	}
	long long per_key_round = (last - settled) / (rounds - 1) / keys;
	Note("1,000 keys: each reset and refill leaves " + std::to_string(per_key_round) +
		 " bytes per key behind");
	EXPECT_LT(per_key_round, 450) << "a reset cache does not give its memory back";
}

} // namespace pgkm::it
