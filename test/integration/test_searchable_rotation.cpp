// IntegrationSearchableRotation: a deterministic (aes-256-siv) column and a blind-index column
// rotate online through the worker while client sessions look rows up by equality with the
// _all pattern and a writer inserts users. No lookup returns a wrong row or misses one; the
// plain "= pgkm_encrypt_det(...)" pattern does miss rows still under the old version. A
// unique index on a deterministic column fails the job, with an explanation, when a duplicate
// was written under the new version during the rotation.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <random>
#include <set>
#include <thread>

namespace pgkm::it
{

namespace
{

constexpr long long kRows = 20000;
constexpr int kReaders = 3;

std::string Email(long long id)
{
	return "user" + std::to_string(id) + "@example.com";
}

// The users known to be committed (id i has Email(i)), shared by the writer and the readers.
struct Known
{
	std::mutex mutex;
	std::vector<long long> ids;

	void add(long long id)
	{
		std::lock_guard lock(mutex);
		ids.push_back(id);
	}
	long long pick(std::mt19937_64 &rng)
	{
		std::lock_guard lock(mutex);
		std::uniform_int_distribution<size_t> d(0, ids.size() - 1);
		return ids[d(rng)];
	}
};

struct Counts
{
	std::atomic<long long> lookups{0};
	std::atomic<long long> wrong{0};
	std::atomic<long long> missing{0};
	std::mutex mutex;
	std::vector<std::string> errors;

	void error(const std::string &e)
	{
		std::lock_guard lock(mutex);
		if (errors.size() < 10)
			errors.push_back(e);
	}
};

const char *kDetLookup =
	"SELECT id FROM users WHERE email_det = ANY(pgkm_encrypt_det_all($1, 'user_email'))";
const char *kBidxLookup = "SELECT id, pgkm_decrypt_text(email_enc, id::text) FROM users"
						  " WHERE email_bidx = ANY(pgkm_blind_index_all($1, 'user_email_bidx'))";

// Checks that a lookup found exactly the row id (rows: the ids it returned).
void Tally(Counts &c, const std::set<long long> &rows, long long id)
{
	c.lookups++;
	if (!rows.contains(id))
		c.missing++;
	for (long long r : rows)
		if (r != id)
			c.wrong++;
}

// Looks up random known users by both patterns until stop.
void Reader(const std::string &conninfo, int index, Known &known, std::atomic<bool> &stop,
			Counts &c)
{
	try
	{
		Connection db(conninfo);
		std::mt19937_64 rng(0x10000ULL + static_cast<unsigned long long>(index));
		while (!stop)
		{
			long long id = known.pick(rng);
			std::string email = Email(id);
			std::set<long long> det;
			Result r = db.exec(kDetLookup, {email});
			for (int i = 0; i < r.rows(); ++i)
				det.insert(r.getInt(i, 0));
			Tally(c, det, id);
			// A blind index admits false positives: keep the rows whose value matches.
			std::set<long long> bidx;
			Result b = db.exec(kBidxLookup, {email});
			for (int i = 0; i < b.rows(); ++i)
				if (b.get(i, 1) == email)
					bidx.insert(b.getInt(i, 0));
			Tally(c, bidx, id);
		}
	}
	catch (const std::exception &e)
	{
		c.error(std::string("reader: ") + e.what());
	}
}

// Inserts new users (ids above kRows) until stop; each is known once committed.
void Writer(const std::string &conninfo, Known &known, std::atomic<bool> &stop, Counts &c,
			std::atomic<long long> &inserted)
{
	try
	{
		Connection db(conninfo);
		for (long long id = kRows + 1; !stop; ++id)
		{
			db.exec("INSERT INTO users VALUES ($1::bigint, pgkm_encrypt($2::text, "
					"'user_email_enc', $1::text),"
					" pgkm_encrypt_det($2, 'user_email'), pgkm_blind_index($2, 'user_email_bidx'))",
					{std::to_string(id), Email(id)});
			known.add(id);
			inserted++;
			std::this_thread::sleep_for(5ms);
		}
	}
	catch (const std::exception &e)
	{
		c.error(std::string("writer: ") + e.what());
	}
}

// Creates the three keys and the users table with kRows rows, protected and indexed.
void SetUpUsers(Connection &db)
{
	db.exec("CREATE EXTENSION pgkm");
	db.exec("SELECT pgkm.create_key('user_email_enc')");
	db.exec("SELECT pgkm.create_key('user_email', algorithm => 'aes-256-siv')");
	db.exec("SELECT pgkm.create_key('user_email_bidx', algorithm => 'blind-index')");
	db.exec("CREATE TABLE users (id bigint PRIMARY KEY, email_enc bytea, email_det bytea,"
			" email_bidx bytea)");
	db.exec("INSERT INTO users SELECT g, pgkm_encrypt(e, 'user_email_enc', g::text),"
			" pgkm_encrypt_det(e, 'user_email'), pgkm_blind_index(e, 'user_email_bidx')"
			" FROM generate_series(1, $1::bigint) g, LATERAL (SELECT 'user' || g || '@example.com'"
			" AS e) x",
			{std::to_string(kRows)});
	db.exec("CREATE INDEX ON users (email_det)");
	db.exec("CREATE INDEX ON users (email_bidx)");
	db.exec("ANALYZE users");
	db.exec("SELECT pgkm.protect_column('users', 'email_enc', 'user_email_enc', 'id')");
	db.exec("SELECT pgkm.protect_column('users', 'email_det', 'user_email')");
	db.exec("SELECT pgkm.protect_column('users', 'email_bidx', 'user_email_bidx',"
			" source_column => 'email_enc')");
}

// The job of a column queued last, or 0.
long long ColumnJob(Connection &db, const std::string &column)
{
	auto v = db.valueOrNull("SELECT max(job_id) FROM pgkm.rotation_jobs WHERE table_name ="
							" 'users'::regclass AND column_name = $1",
							{column});
	return v ? std::stoll(*v) : 0;
}

} // namespace

TEST(IntegrationSearchableRotation, LookupsKeepFindingRowsDuringRotation)
{
	// 20,000 rows at 2,000 rows/s: each job takes about 10 s, so lookups overlap it.
	Cluster cluster({"pgkm.rotation_batch_size = 200", "pgkm.rotation_max_rows_per_second = 2000",
					 "pgkm.rotation_batch_delay = 0", "pgkm.worker_naptime = 1"});
	cluster.start();
	Connection db = cluster.connect();
	SetUpUsers(db);
	ASSERT_NE(WaitForWorker(db, 30s), 0) << "no pgkm worker for the database";

	// The lookups use the indexes.
	for (const char *q : {kDetLookup, kBidxLookup})
	{
		std::string plan;
		Result r = db.exec(std::string("EXPLAIN ") + q, {Email(42)});
		for (int i = 0; i < r.rows(); ++i)
			plan += r.get(i, 0) + "\n";
		EXPECT_NE(plan.find("Index"), std::string::npos) << "no index scan:\n" << plan;
		EXPECT_EQ(plan.find("Seq Scan"), std::string::npos) << "sequential scan:\n" << plan;
	}

	Known known;
	for (long long i = 1; i <= kRows; ++i)
		known.ids.push_back(i);
	Counts counts;
	std::atomic<long long> inserted{0};
	std::atomic<bool> stop{false};
	long long lookups_at_rotation = 0, lookups_at_done = 0;
	long long naive_probes = 0, naive_miss_old = 0, naive_miss_new = 0;
	JobSnapshot det_done, bidx_done;
	auto started = Clock::now();
	double seconds = 0;
	{
		std::vector<std::jthread> threads;
		for (int i = 0; i < kReaders; ++i)
			threads.emplace_back(Reader, cluster.conninfo(), i, std::ref(known), std::ref(stop),
								 std::ref(counts));
		threads.emplace_back(Writer, cluster.conninfo(), std::ref(known), std::ref(stop),
							 std::ref(counts), std::ref(inserted));
		ASSERT_TRUE(WaitUntil([&] { return counts.lookups > 100; }, 30s)) << "readers idle";

		lookups_at_rotation = counts.lookups;
		started = Clock::now();
		EXPECT_EQ(db.value("SELECT pgkm.rotate_key('user_email')"), "2");
		EXPECT_EQ(db.value("SELECT pgkm.rotate_key('user_email_bidx')"), "2");
		long long det_job = ColumnJob(db, "email_det");
		long long bidx_job = ColumnJob(db, "email_bidx");
		ASSERT_GT(det_job, 0);
		ASSERT_GT(bidx_job, 0);
		EXPECT_EQ(ColumnJob(db, "email_enc"), 0) << "user_email_enc was not rotated";

		// The plain pattern under the active version only: a row still under version 1 is
		// not found. Each probe reads the row's version in the same snapshot, so a miss is
		// attributed to the version the row really held.
		std::mt19937_64 rng(7);
		std::uniform_int_distribution<long long> d(kRows / 2, kRows);
		while (ReadJob(db, det_job).state != "done" && naive_probes < 2000)
		{
			long long id = d(rng);
			Result r = db.exec("SELECT (SELECT count(*) FROM users WHERE email_det ="
							   " pgkm_encrypt_det($1, 'user_email')),"
							   " (SELECT pgkm.ciphertext_version(email_det) FROM users"
							   " WHERE id = $2)",
							   {Email(id), std::to_string(id)});
			naive_probes++;
			if (r.getInt(0, 0) == 0)
				(r.getInt(0, 1) == 1 ? naive_miss_old : naive_miss_new)++;
			std::this_thread::sleep_for(2ms);
		}

		det_done = WaitJobFinished(db, det_job, 180s);
		bidx_done = WaitJobFinished(db, bidx_job, 180s);
		seconds = std::chrono::duration<double>(Clock::now() - started).count();
		lookups_at_done = counts.lookups;
		stop = true;
	}
	for (const auto &e : counts.errors)
		ADD_FAILURE() << e;
	ASSERT_EQ(det_done.state, "done") << Describe(det_done);
	ASSERT_EQ(bidx_done.state, "done") << Describe(bidx_done);
	long long during = lookups_at_done - lookups_at_rotation;
	Note("lookups: " + std::to_string(counts.lookups.load()) + " in all, " +
		 std::to_string(during) + " during the rotation (" + std::to_string(seconds) +
		 " s); wrong rows " + std::to_string(counts.wrong.load()) + ", missing rows " +
		 std::to_string(counts.missing.load()) + "; users inserted " +
		 std::to_string(inserted.load()) + "; email_det job " + Describe(det_done) +
		 "; email_bidx job " + Describe(bidx_done));
	Note("plain '= pgkm_encrypt_det' probes during the rotation: " + std::to_string(naive_probes) +
		 ", missed rows under version 1: " + std::to_string(naive_miss_old) +
		 ", missed rows under version 2: " + std::to_string(naive_miss_new));
	EXPECT_EQ(counts.wrong, 0);
	EXPECT_EQ(counts.missing, 0);
	EXPECT_GT(during, 1000) << "too few lookups overlapped the rotation to show anything";
	EXPECT_GT(inserted, 100);
	EXPECT_GT(naive_miss_old, 0) << "the plain pattern never missed a row under version 1";
	EXPECT_EQ(naive_miss_new, 0);

	// Every row under the new versions, and the values right: the blind index and the
	// deterministic value are those of the row's own e-mail address.
	EXPECT_EQ(db.value("SELECT count(*) FROM users WHERE pgkm.ciphertext_version(email_det) <> 2"
					   " OR pgkm.ciphertext_version(email_bidx) <> 2"),
			  "0");
	EXPECT_EQ(db.value("SELECT count(*) FROM users WHERE pgkm.ciphertext_version(email_enc) <> 1"),
			  "0");
	EXPECT_EQ(db.value("SELECT count(*) FROM users, LATERAL (SELECT pgkm_decrypt_text(email_enc,"
					   " id::text) AS e) x WHERE e <> 'user' || id || '@example.com'"
					   " OR email_det <> pgkm_encrypt_det(e, 'user_email')"
					   " OR pgkm_decrypt_text(email_det) <> e"
					   " OR email_bidx <> pgkm_blind_index(e, 'user_email_bidx')"),
			  "0");
	EXPECT_EQ(db.intValue("SELECT count(*) FROM users"), kRows + inserted);
	// Version 1 of both keys is referenced by nothing now: retired by the worker.
	for (const char *key : {"user_email", "user_email_bidx"})
	{
		EXPECT_TRUE(db.waitFor("SELECT state = 'retired' FROM pgkm.key_status WHERE key_name = $1"
							   " AND version = 1",
							   20s, {key}))
			<< key << " version 1 is " << VersionState(db, key, 1);
		EXPECT_EQ(VersionState(db, key, 2), "active");
	}
	EXPECT_EQ(VersionState(db, "user_email_enc", 1), "active");
	// After retirement a lookup tries one version only, and still finds the row.
	EXPECT_EQ(db.value("SELECT array_length(pgkm_blind_index_all('x', 'user_email_bidx'), 1)"),
			  "1");
	EXPECT_EQ(db.value(kDetLookup, {Email(777)}), "777");
}

TEST(IntegrationSearchableRotation, UniqueDeterministicDuplicateFailsTheJob)
{
	Cluster cluster({"pgkm.worker_naptime = 1"});
	cluster.start();
	Connection db = cluster.connect();
	db.exec("CREATE EXTENSION pgkm");
	db.exec("SELECT pgkm.create_key('uq', algorithm => 'aes-256-siv')");
	db.exec("CREATE TABLE accounts (id bigint PRIMARY KEY, email_det bytea UNIQUE)");
	db.exec("INSERT INTO accounts SELECT g, pgkm_encrypt_det('a' || g || '@example.com', 'uq')"
			" FROM generate_series(1, 100) g");
	db.exec("SELECT pgkm.protect_column('accounts', 'email_det', 'uq')");
	ASSERT_NE(WaitForWorker(db, 30s), 0);

	// The job is held back (paused in the rotation's own transaction) while a duplicate of
	// account 1's address is written under version 2: the unique index cannot see it.
	db.exec("BEGIN");
	db.exec("SELECT pgkm.rotate_key('uq')");
	long long job = LatestJob(db, "accounts");
	db.exec("SELECT pgkm.pause_job($1)", {std::to_string(job)});
	db.exec("COMMIT");
	db.exec("INSERT INTO accounts VALUES (101, pgkm_encrypt_det('a1@example.com', 'uq'))");
	EXPECT_EQ(db.value("SELECT count(*) FROM accounts WHERE email_det ="
					   " ANY(pgkm_encrypt_det_all('a1@example.com', 'uq'))"),
			  "2");

	db.exec("SELECT pgkm.resume_job($1)", {std::to_string(job)});
	JobSnapshot s = WaitJobFinished(db, job, 60s);
	Note("job with a duplicate: " + Describe(s));
	EXPECT_EQ(s.state, "failed");
	EXPECT_NE(s.error.find("duplicate key value violates unique constraint"), std::string::npos)
		<< s.error;
	EXPECT_NE(s.error.find("another row already holds this value under the new key version"),
			  std::string::npos)
		<< s.error;
	// Nothing was corrupted: account 1 still reads back, under version 1; version 1 stays.
	EXPECT_EQ(db.value("SELECT pgkm_decrypt_text(email_det) FROM accounts WHERE id = 1"),
			  "a1@example.com");
	EXPECT_EQ(db.value("SELECT pgkm.ciphertext_version(email_det) FROM accounts WHERE id = 1"),
			  "1");
	EXPECT_EQ(VersionState(db, "uq", 1), "decrypt_only");

	// Once the duplicate is gone, a new job completes and version 1 retires.
	db.exec("DELETE FROM accounts WHERE id = 101");
	long long again = db.intValue("SELECT pgkm.start_reencryption('accounts', 'email_det')");
	JobSnapshot done = WaitJobFinished(db, again, 60s);
	EXPECT_EQ(done.state, "done") << Describe(done);
	EXPECT_EQ(
		db.value("SELECT count(*) FROM accounts WHERE pgkm.ciphertext_version(email_det) <> 2"),
		"0");
	EXPECT_TRUE(db.waitFor("SELECT state = 'retired' FROM pgkm.key_status WHERE key_name = 'uq'"
						   " AND version = 1",
						   20s));
}

} // namespace pgkm::it
