// ManyKeys: 10,000 per-subject keys (issue 6). Keys are created a few statements at a time, a
// value is encrypted under each, and a random mix of 20,000 values is decrypted through a
// key cache bounded by pgkm.key_cache_size (LRU): with a small cache every value still
// decrypts while versions are evicted and memory stays bounded; with a large one each key is
// unwrapped once. pgkm_rewrap works at the smallest cache size. Throughput figures (keys/s,
// decrypts/s, token unwraps/s) are printed, never asserted.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <sstream>

namespace pgkm::it
{

namespace
{

constexpr int kKeys = 10000;
constexpr int kMix = 20000;       // values in the random mix
constexpr int kSmallCache = 1000; // pgkm.key_cache_size's default
constexpr int kLargeCache = 20000;
constexpr long long kPage = 4096;

// One reading of pgkm.key_cache_stats().
struct CacheStats
{
	long long capacity = 0, cached_versions = 0, cached_keys = 0, hits = 0, misses = 0, unwraps = 0,
			  evictions = 0, resets = 0, locked_bytes = 0, arena_pages = 0;
	double unwrap_ms = 0;
};

// Reads this connection's pgkm.key_cache_stats().
CacheStats ReadStats(Connection &db)
{
	Result r = db.exec("SELECT capacity, cached_versions, cached_keys, hits, misses, unwraps, "
					   "unwrap_ms, evictions, resets, locked_bytes, arena_pages "
					   "FROM pgkm.key_cache_stats()");
	CacheStats s;
	s.capacity = r.getInt(0, 0);
	s.cached_versions = r.getInt(0, 1);
	s.cached_keys = r.getInt(0, 2);
	s.hits = r.getInt(0, 3);
	s.misses = r.getInt(0, 4);
	s.unwraps = r.getInt(0, 5);
	s.unwrap_ms = std::stod(r.get(0, 6));
	s.evictions = r.getInt(0, 7);
	s.resets = r.getInt(0, 8);
	s.locked_bytes = r.getInt(0, 9);
	s.arena_pages = r.getInt(0, 10);
	return s;
}

// Formats the difference of two readings and the cache's state after them.
std::string Describe(const CacheStats &before, const CacheStats &after)
{
	std::ostringstream s;
	s << "hits " << after.hits - before.hits << ", misses " << after.misses - before.misses
	  << ", unwraps " << after.unwraps - before.unwraps << ", evictions "
	  << after.evictions - before.evictions << "; cached versions " << after.cached_versions
	  << ", keys " << after.cached_keys << ", locked " << after.locked_bytes << " bytes in "
	  << after.arena_pages << " arena pages";
	return s.str();
}

// The private memory (RssAnon) of a process, in bytes.
long long RssAnon(int pid)
{
	std::ifstream in("/proc/" + std::to_string(pid) + "/status");
	std::string line;
	while (std::getline(in, line))
		if (line.rfind("RssAnon:", 0) == 0)
			return std::stoll(line.substr(8)) * 1024;
	throw std::runtime_error("no RssAnon in /proc/" + std::to_string(pid) + "/status");
}

// Runs sql and returns its first value and the seconds it took.
std::pair<long long, double> Timed(Connection &db, const std::string &sql)
{
	auto start = Clock::now();
	long long value = db.intValue(sql);
	return {value, std::chrono::duration<double>(Clock::now() - start).count()};
}

// Formats a rate.
std::string PerSecond(double count, double seconds)
{
	return std::to_string(static_cast<long long>(count / seconds)) + "/s";
}

// Decrypts every value of the mix in its random order; the count of right plaintexts.
const std::string kDecryptMix = "SELECT count(*) FILTER (WHERE pgkm_decrypt_text(c, id::text) = "
								"'value-' || id) FROM mix";
// Decrypts every subject's value once, in key order.
const std::string kDecryptAll = "SELECT count(*) FILTER (WHERE pgkm_decrypt_text(c, id::text) = "
								"'value-' || id) FROM subjects";

} // namespace

class ManyKeys : public ::testing::Test
{
  protected:
	// One cluster for the suite: 10,000 keys (subject_<even>, customer:<odd>), one value under
	// each in subjects(id, key_name, c), and mix(n, id, c): 20,000 of those values drawn at
	// random (with repeats), stored in the order drawn.
	static void SetUpTestSuite()
	{
		cluster_ = std::make_unique<Cluster>(
			std::vector<std::string>{"shared_buffers = 64MB", "pgkm.key_cache_ttl = '1h'"});
		cluster_->start();
		Connection db = cluster_->connect();
		db.exec("CREATE EXTENSION pgkm");
		auto start = Clock::now();
		const int statements = 4;
		for (int i = 0; i < statements; ++i)
		{
			const int first = i * kKeys / statements + 1, last = (i + 1) * kKeys / statements;
			db.exec("SELECT count(pgkm.create_key(CASE WHEN g % 2 = 0 THEN 'subject_' ELSE "
					"'customer:' END || g)) FROM generate_series($1::int, $2::int) g",
					{std::to_string(first), std::to_string(last)});
		}
		double seconds = std::chrono::duration<double>(Clock::now() - start).count();
		Note("10,000 keys created in " + std::to_string(statements) + " statements in " +
			 std::to_string(seconds) + " s: " + PerSecond(kKeys, seconds));

		db.exec("CREATE TABLE subjects (id int PRIMARY KEY, key_name text NOT NULL, c bytea)");
		start = Clock::now();
		db.exec("INSERT INTO subjects SELECT g, k, pgkm_encrypt('value-' || g, k, g::text) FROM "
				"generate_series(1, $1::int) g, LATERAL (SELECT CASE WHEN g % 2 = 0 THEN "
				"'subject_' ELSE 'customer:' END || g AS k) n",
				{std::to_string(kKeys)});
		seconds = std::chrono::duration<double>(Clock::now() - start).count();
		CacheStats s = ReadStats(db);
		Note("one value encrypted under each key in " + std::to_string(seconds) +
			 " s: " + PerSecond(kKeys, seconds) + " (" + std::to_string(s.unwraps) +
			 " unwraps, cache of " + std::to_string(s.capacity) + ")");
		EXPECT_EQ(db.intValue("SELECT count(DISTINCT pgkm.ciphertext_key_id(c)) FROM subjects"),
				  kKeys);

		db.exec("SELECT setseed(0.42)");
		db.exec("CREATE TABLE mix AS SELECT r.n, s.id, s.c FROM (SELECT n, 1 + floor(random() * "
				"$1::int)::int AS id FROM generate_series(1, $2::int) n) r JOIN subjects s USING "
				"(id) ORDER BY r.n",
				{std::to_string(kKeys), std::to_string(kMix)});
		distinct_ = db.intValue("SELECT count(DISTINCT id) FROM mix");
		// The mix is read in the order drawn, not grouped by key.
		long long runs = db.intValue("SELECT count(*) FROM (SELECT id, lag(id) OVER (ORDER BY "
									 "ctid) AS prev FROM mix) x WHERE id IS DISTINCT FROM prev");
		Note("mix: " + std::to_string(kMix) + " values of " + std::to_string(distinct_) +
			 " distinct keys (" + std::to_string(runs) + " runs of one key)");
		ASSERT_GT(runs, kMix * 9 / 10) << "the mix is not in random key order";
	}

	static void TearDownTestSuite() { cluster_.reset(); }

	static std::unique_ptr<Cluster> cluster_;
	static long long distinct_;
};

std::unique_ptr<Cluster> ManyKeys::cluster_;
long long ManyKeys::distinct_ = 0;

// Every one of the 10,000 AES-GCM versions has its encryption counted (shared memory holds
// pgkm.max_counted_versions counters, and frees those of versions that can no longer
// encrypt); a statement over a hundred keys, its rows interleaved, gives one audit record
// per key version with the right row count, not one per row.
TEST_F(ManyKeys, EveryVersionCountedAndAuditedOncePerStatement)
{
	Connection db = cluster_->connect();
	db.exec("SELECT pgkm.flush_encryption_counts()");
	EXPECT_EQ(db.intValue("SELECT count(*) FROM pgkm.key_versions WHERE encryptions = 0"), 0)
		<< "an encryption under one of the 10,000 keys was not counted";
	EXPECT_GE(db.intValue("SELECT sum(encryptions) FROM pgkm.key_versions"), kKeys);

	// A counter lives while its version can encrypt, and is freed once it cannot.
	db.exec("SELECT pgkm.create_key('released:1')");
	db.exec("SELECT pgkm_encrypt('x', 'released:1')");
	const std::string listed = "SELECT count(*) FROM pgkm.encryption_counts() e JOIN pgkm.keys k "
							   "USING (key_id) WHERE k.name = 'released:1'";
	db.exec("SELECT pgkm.flush_encryption_counts()");
	EXPECT_EQ(db.intValue(listed), 1) << "the active version's counter was freed";
	EXPECT_EQ(db.intValue("SELECT encryptions FROM pgkm.key_versions JOIN pgkm.keys k USING "
						  "(key_id) WHERE k.name = 'released:1'"),
			  1);
	db.exec("SELECT pgkm.erase_subject('released:1')");
	db.exec("SELECT pgkm.flush_encryption_counts()");
	EXPECT_EQ(db.intValue(listed), 0) << "an erased version's counter was not freed";

	// Statement-level audit, one record per statement and key version (gathering off).
	db.exec("SET pgkm.audit_gather = off");
	db.exec("SET application_name = 'many-keys-audit'");
	// About 110 keys, under the 128 distinct versions a statement counts before it queues
	// them early (the old code kept 32 and wrote about one record per row).
	const std::string subset = "FROM mix WHERE id <= 130";
	const long long rows = db.intValue("SELECT count(*) " + subset);
	const long long keys = db.intValue("SELECT count(DISTINCT id) " + subset);
	auto [right, seconds] = Timed(
		db,
		"SELECT count(*) FILTER (WHERE pgkm_decrypt_text(c, id::text) = 'value-' || id) " + subset);
	EXPECT_EQ(right, rows);
	db.exec("SELECT pgkm.audit_flush()");
	Result r = db.exec("SELECT count(*), sum(row_count) FROM pgkm.audit_log WHERE "
					   "application_name = 'many-keys-audit' AND action = 'decrypt'");
	Note(std::to_string(rows) + " decrypts under " + std::to_string(keys) +
		 " keys in one statement: " + r.get(0, 0) + " audit records, " + PerSecond(rows, seconds));
	EXPECT_EQ(r.getInt(0, 0), keys) << "not one record per key version of the statement";
	EXPECT_EQ(r.getInt(0, 1), rows) << "the records' row counts do not add up";
}

// With pgkm.key_cache_size = 1000 and 10,000 keys, the random mix evicts versions all the
// time: every value still decrypts to its plaintext, the cache never holds more than 1,000
// versions or key names, every miss is one token unwrap, and locked memory stays a few pages.
TEST_F(ManyKeys, SmallCacheEvictsAndEveryValueDecrypts)
{
	Connection db = cluster_->connect();
	db.exec("SET pgkm.key_cache_size = " + std::to_string(kSmallCache));
	CacheStats before = ReadStats(db);
	auto [right, seconds] = Timed(db, kDecryptMix);
	CacheStats after = ReadStats(db);
	const long long unwraps = after.unwraps - before.unwraps;
	Note("cache 1,000, random mix: " + PerSecond(kMix, seconds) + " decrypts (" +
		 std::to_string(seconds) + " s); token unwraps " +
		 PerSecond(unwraps, (after.unwrap_ms - before.unwrap_ms) / 1000) + " (" +
		 std::to_string((after.unwrap_ms - before.unwrap_ms) / unwraps * 1000) + " us each); " +
		 Describe(before, after));
	EXPECT_EQ(right, kMix) << "a value did not decrypt to its plaintext";
	EXPECT_EQ(after.capacity, kSmallCache);
	EXPECT_EQ(after.cached_versions, kSmallCache);
	EXPECT_LE(after.cached_keys, kSmallCache);
	EXPECT_EQ(after.hits - before.hits + after.misses - before.misses, kMix);
	EXPECT_EQ(after.misses - before.misses, unwraps) << "a decrypt miss is one unwrap";
	EXPECT_GT(unwraps, distinct_) << "evicted keys were not unwrapped again";
	EXPECT_EQ(after.evictions - before.evictions, unwraps - kSmallCache);
	// 1,000 working keys of 32 bytes fill 8 pages of 126 slots; the DEK and derivation
	// buffers of an unwrap, the PIN, and one kept empty page per slot size add a few.
	EXPECT_LE(after.locked_bytes, 16 * kPage) << "locked memory grows with the keys touched";
	EXPECT_GE(after.arena_pages, 8);

	// Once more: the same bound, and the same right answers, from a full cache.
	before = after;
	std::tie(right, seconds) = Timed(db, kDecryptMix);
	after = ReadStats(db);
	EXPECT_EQ(right, kMix);
	EXPECT_EQ(after.cached_versions, kSmallCache);
	EXPECT_LE(after.locked_bytes, 16 * kPage);
	Note("cache 1,000, the mix again: " + PerSecond(kMix, seconds) + " decrypts; " +
		 Describe(before, after));
}

// With pgkm.key_cache_size = 20000 nothing is evicted: each distinct key of the mix is
// unwrapped exactly once, and the mix decrypted again is all hits. Lowering the size then
// evicts down to it at the next use of the cache, not before.
TEST_F(ManyKeys, LargeCacheUnwrapsEachKeyOnce)
{
	Connection db = cluster_->connect();
	db.exec("SET pgkm.key_cache_size = " + std::to_string(kLargeCache));
	CacheStats before = ReadStats(db);
	auto [right, seconds] = Timed(db, kDecryptMix);
	CacheStats after = ReadStats(db);
	const long long unwraps = after.unwraps - before.unwraps;
	Note("cache 20,000, random mix: " + PerSecond(kMix, seconds) + " decrypts (" +
		 std::to_string(seconds) + " s); token unwraps " +
		 PerSecond(unwraps, (after.unwrap_ms - before.unwrap_ms) / 1000) + "; " +
		 Describe(before, after));
	EXPECT_EQ(right, kMix);
	EXPECT_EQ(unwraps, distinct_) << "unwraps differ from the distinct keys touched";
	EXPECT_EQ(after.evictions, before.evictions);
	EXPECT_EQ(after.cached_versions, distinct_);
	EXPECT_EQ(after.hits - before.hits, kMix - distinct_);

	before = after;
	std::tie(right, seconds) = Timed(db, kDecryptMix);
	after = ReadStats(db);
	Note("cache 20,000, the mix again (all cached): " + PerSecond(kMix, seconds) + " decrypts; " +
		 Describe(before, after));
	EXPECT_EQ(right, kMix);
	EXPECT_EQ(after.unwraps, before.unwraps);
	EXPECT_EQ(after.hits - before.hits, kMix);

	// A lower size is applied at the next use of the cache. The key decrypted last is
	// decrypted again: a hit, so that exactly the surplus is evicted.
	db.exec("SET pgkm.key_cache_size = 100");
	before = ReadStats(db);
	EXPECT_EQ(before.capacity, 100);
	EXPECT_EQ(before.cached_versions, distinct_) << "evicted before the cache was used";
	const std::string last = " FROM mix WHERE n = " + std::to_string(kMix);
	EXPECT_EQ(db.value("SELECT pgkm_decrypt_text(c, id::text)" + last),
			  db.value("SELECT 'value-' || id" + last));
	after = ReadStats(db);
	EXPECT_EQ(after.cached_versions, 100);
	EXPECT_LE(after.cached_keys, 100);
	EXPECT_EQ(after.evictions - before.evictions, distinct_ - 100);
	EXPECT_GT(before.locked_bytes, after.locked_bytes) << "evicted keys kept their pages";
	Note("size lowered to 100: " + Describe(before, after));
}

// Touching all 10,000 keys once, 1,000 per transaction: with the small cache the backend's
// private memory grows by what 1,000 cached keys cost plus what every unwrap leaves in SoftHSM
// (about 250 bytes, its issue 562), with the large one by 10,000 cached keys plus the same.
// The difference gives the memory a cached key holds between transactions. A cache that
// ignored its bound, or kept the memory of the versions it evicts, would grow like the large
// one: the small one must save at least 256 bytes per key it does not hold (a version entry
// alone is larger). A transaction also holds an OpenSSL context per key it used until it
// ends: 1,000 at most here, in both runs.
TEST_F(ManyKeys, MemoryIsBoundedBySmallCache)
{
	long long growth[2] = {0, 0};
	long long locked[2] = {0, 0};
	const int sizes[2] = {kSmallCache, kLargeCache};
	for (int i = 0; i < 2; ++i)
	{
		Connection db = cluster_->connect();
		db.exec("SET pgkm.key_cache_size = " + std::to_string(sizes[i]));
		// Warm: the catalog caches, the saved plans, the call site, the stats function.
		ASSERT_EQ(db.intValue(kDecryptAll + " WHERE id = 1"), 1);
		CacheStats before = ReadStats(db);
		const int pid = db.backendPid();
		const long long anon = RssAnon(pid);
		long long right = 0;
		double seconds = 0;
		for (int first = 1; first <= kKeys; first += 1000)
		{
			auto [n, s] = Timed(db, kDecryptAll + " WHERE id BETWEEN " + std::to_string(first) +
										" AND " + std::to_string(first + 999));
			right += n;
			seconds += s;
		}
		CacheStats after = ReadStats(db);
		growth[i] = RssAnon(pid) - anon;
		locked[i] = after.locked_bytes;
		EXPECT_EQ(right, kKeys);
		EXPECT_EQ(after.unwraps - before.unwraps, kKeys - 1);
		Note("cache " + std::to_string(sizes[i]) +
			 ", all 10,000 keys once: " + PerSecond(kKeys, seconds) + " decrypts; RssAnon +" +
			 std::to_string(growth[i]) + " bytes; " + Describe(before, after));
	}
	const long long per_key = (growth[1] - growth[0]) / (kKeys - kSmallCache);
	Note("memory per cached key version: " + std::to_string(per_key) + " bytes (" +
		 std::to_string(growth[1]) + " - " + std::to_string(growth[0]) + " over " +
		 std::to_string(kKeys - kSmallCache) + " keys); locked " + std::to_string(locked[0]) +
		 " vs " + std::to_string(locked[1]) + " bytes");
	EXPECT_GT(growth[1], 0) << "the probe sees no memory";
	EXPECT_GT(growth[1] - growth[0], (kKeys - kSmallCache) * 256LL)
		<< "the small cache grew like an unbounded one";
	EXPECT_GT(locked[1], locked[0] * 4);
	EXPECT_LT(per_key, 2048) << "a cached key costs more than 2 kB";
}

// pgkm_rewrap at the smallest cache size (2): it holds the decrypt entry while it looks up
// the encrypt entry, and neither is evicted under it. Values of 300 rotated keys move to
// version 2, those of 300 others stay as they are, and a mix of rewrap and decrypt in random
// key order (three lookups a row) returns every plaintext.
TEST_F(ManyKeys, RewrapAtTheSmallestCacheSize)
{
	Connection admin = cluster_->connect();
	EXPECT_EQ(admin.intValue("SELECT count(pgkm.rotate_key(key_name)) FROM subjects "
							 "WHERE id <= 300"),
			  300);
	Connection db = cluster_->connect();
	db.exec("SET pgkm.key_cache_size = 2");
	CacheStats before = ReadStats(db);
	auto start = Clock::now();
	db.exec("UPDATE subjects SET c = pgkm_rewrap(c, id::text) WHERE id <= 600");
	double seconds = std::chrono::duration<double>(Clock::now() - start).count();
	CacheStats after = ReadStats(db);
	Note("cache 2: 600 values rewrapped in " + std::to_string(seconds) + " s; " +
		 Describe(before, after));
	EXPECT_EQ(db.intValue("SELECT count(*) FROM subjects WHERE id <= 300 AND "
						  "pgkm.ciphertext_version(c) = 2"),
			  300);
	EXPECT_EQ(db.intValue("SELECT count(*) FROM subjects WHERE id > 300 AND id <= 600 AND "
						  "pgkm.ciphertext_version(c) = 1"),
			  300);
	EXPECT_EQ(db.intValue(kDecryptAll + " WHERE id <= 600"), 600);
	EXPECT_LE(after.cached_versions, 2);
	EXPECT_GT(after.evictions - before.evictions, 600);

	before = ReadStats(db);
	EXPECT_EQ(db.intValue("SELECT count(*) FROM mix WHERE n <= 2000 AND pgkm_decrypt_text("
						  "pgkm_rewrap(c, id::text), id::text) = 'value-' || id"),
			  2000);
	after = ReadStats(db);
	EXPECT_LE(after.cached_versions, 2);
	EXPECT_GT(after.evictions - before.evictions, 2000);
	Note("cache 2: rewrap + decrypt of 2,000 mixed values; " + Describe(before, after));
}

} // namespace pgkm::it
