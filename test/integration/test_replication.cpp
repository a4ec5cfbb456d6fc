// Replication (issue 7):
//  - ReplicationStreaming.HotStandbyReadsOnly: a hot standby sharing the primary's token
//    decrypts rows written before and after it started and after a rotation on the primary
//    (the keys replicate with the catalog, and a session with a warm key cache finds the new
//    version); every write (an INSERT of pgkm_encrypt, rotate_key, create_key) and a bare
//    AES-GCM pgkm_encrypt fail with 25006, while pgkm_encrypt_det lookups work; a version
//    disabled on the primary is refused at once by a standby session that had it cached; no pgkm
//    process runs there and its log shows no error loop; its decrypts are audited as pgkm_audit
//    lines in its server log.
//  - ReplicationStreaming.PromotionResumesInterruptedJob: a re-encryption job running on the
//    primary, replayed by the standby, is interrupted by an immediate stop of the primary; the
//    standby is promoted, its worker starts, the job resumes from its checkpoint and completes,
//    every row decrypts under the new version and the audit chain keeps verifying.
//  - ReplicationLogical.SubscriberWithSameKeyring: a subscriber cluster using the same token
//    subscribes first to a publication of a protected table alone (its values fail with 42704:
//    unknown key), then also to one of pgkm.master_keys, pgkm.keys and pgkm.key_versions; rows
//    then decrypt there, and after a rotation (with re-encryption) on the publisher the
//    subscriber decrypts the rows under the new version it received. A version disabled on
//    the publisher is refused at once by a subscriber session whose cache held it.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <optional>
#include <sstream>

namespace pgkm::it
{

namespace
{

const std::string kPgkmProcesses = "SELECT count(*) FROM pg_stat_activity WHERE backend_type IN "
								   "('pgkm launcher', 'pgkm worker')";

// Checks that rows 1..rows decrypt to their secrets, all under version (0: any).
void ExpectRows(Connection &db, long long rows, long long version, const std::string &where)
{
	RowCheck c = CheckRows(db, "t", BaseExpectation(rows), version);
	EXPECT_EQ(c.rows, rows) << where;
	EXPECT_EQ(c.wrong_secret + c.wrong_other + c.wrong_version + c.missing + c.unexpected, 0)
		<< where << ": rows that do not decrypt to their secret under version " << version;
}

// Inserts rows first..last of t (as LoadTable does) under key.
void InsertRows(Connection &db, long long first, long long last, const std::string &key)
{
	db.exec("INSERT INTO t SELECT g, pgkm_encrypt(" + SecretSql("g", "0") +
				", $1, g::text), 0 FROM generate_series($2::int, $3::int) g",
			{key, std::to_string(first), std::to_string(last)});
}

// Waits until the standby has replayed everything the primary wrote so far.
bool WaitReplayed(Connection &primary, Connection &standby, std::chrono::milliseconds timeout)
{
	std::string lsn = primary.value("SELECT pg_current_wal_lsn()");
	return standby.waitFor("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", timeout, {lsn});
}

// Lines of a server log that contain all of the given words.
long long CountLines(const std::string &log, const std::vector<std::string> &words)
{
	std::istringstream in(log);
	std::string line;
	long long n = 0;
	while (std::getline(in, line))
	{
		bool all = true;
		for (const auto &w : words)
			all = all && line.find(w) != std::string::npos;
		n += all ? 1 : 0;
	}
	return n;
}

// Server log lines at ERROR, FATAL or PANIC.
long long ErrorLines(const std::string &log)
{
	return CountLines(log, {"ERROR:"}) + CountLines(log, {"FATAL:"}) + CountLines(log, {"PANIC:"});
}

} // namespace

TEST(ReplicationStreaming, HotStandbyReadsOnly)
{
	// A day-long key cache TTL: only an invalidation can empty a warm cache.
	Cluster primary({"pgkm.worker_naptime = 1", "pgkm.key_cache_ttl = 1d"});
	primary.start();
	Connection pdb = primary.connect();
	SetUpExtension(pdb, "rk");
	LoadTable(pdb, "t", 400, "rk");
	pdb.exec("SELECT pgkm.protect_column('t', 'secret', 'rk', 'id')");

	Cluster standby = Cluster::standbyOf(primary);
	standby.start();
	standby.waitReady(60s);
	Connection sdb = standby.connect();
	ASSERT_EQ(sdb.value("SELECT pg_is_in_recovery()"), "t");
	ASSERT_TRUE(sdb.waitFor("SELECT count(*) = 1 FROM pg_stat_wal_receiver WHERE status = "
							"'streaming'",
							15s))
		<< "the standby does not stream from the primary";

	// Rows written after the standby started: they decrypt there (this session's key cache is
	// then warm with version 1).
	InsertRows(pdb, 401, 500, "rk");
	// And a deterministic (SIV) column, for an equality lookup on the standby.
	pdb.exec("SELECT pgkm.create_key('dk', algorithm => 'aes-256-siv')");
	pdb.exec("CREATE TABLE d AS SELECT pgkm_encrypt_det('needle'::text, 'dk') AS c");
	ASSERT_TRUE(WaitReplayed(pdb, sdb, 15s));
	ASSERT_EQ(sdb.intValue("SELECT count(*) FROM t"), 500);
	long long audit_before = CountLines(standby.serverLog(), {"pgkm_audit:"});
	ExpectRows(sdb, 500, 1, "standby, rows written after it started");

	// Its decrypts are audited in its own server log.
	EXPECT_TRUE(WaitUntil(
		[&] {
			return CountLines(standby.serverLog(), {"pgkm_audit:", "decrypt"}) > audit_before;
		},
		10s))
		<< "no pgkm_audit line for the standby's decrypts in its server log";

	// A rotation on the primary (its job re-encrypts everything), then rows under version 2.
	ASSERT_EQ(pdb.value("SELECT pgkm.rotate_key('rk')"), "2");
	JobSnapshot done = WaitJobFinished(pdb, LatestJob(pdb, "t"), 60s);
	ASSERT_EQ(done.state, "done") << "primary: " << Describe(done);
	InsertRows(pdb, 501, 600, "rk");
	ASSERT_TRUE(WaitReplayed(pdb, sdb, 15s));
	ExpectRows(sdb, 600, 2, "standby (warm cache) after the primary's rotation");
	Connection fresh = standby.connect();
	ExpectRows(fresh, 600, 2, "standby (new session) after the primary's rotation");

	// The standby's pgkm stays idle: no process, no job progress of its own, no error loop
	// in its log over several naptimes.
	std::string seen = "0";
	EXPECT_FALSE(WaitUntil(
		[&]
		{
			seen = sdb.value(kPgkmProcesses);
			return seen != "0";
		},
		3s))
		<< seen << " pgkm launcher/worker process(es) on the hot standby";
	EXPECT_EQ(ErrorLines(standby.serverLog()), 0)
		<< "errors in the standby's log before any write was tried:\n"
		<< standby.serverLogTail(20);

	// Every write fails with read_only_sql_transaction (25006), naming the read-only
	// transaction; nothing pgkm does turns it into another error.
	struct Attempt
	{
		const char *what;
		std::string sql;
	};
	for (const Attempt &a : {
			 Attempt{"INSERT of pgkm_encrypt",
					 "INSERT INTO t VALUES (9999, pgkm_encrypt('x'::text, 'rk', '9999'), 0)"},
			 Attempt{"UPDATE with pgkm_encrypt",
					 "UPDATE t SET secret = pgkm_encrypt('x'::text, 'rk', id::text) WHERE id = 1"},
			 Attempt{"rotate_key", "SELECT pgkm.rotate_key('rk')"},
			 Attempt{"create_key", "SELECT pgkm.create_key('rk_standby')"},
			 Attempt{"start_reencryption", "SELECT pgkm.start_reencryption('t', 'secret')"},
		 })
	{
		Result r = sdb.query(a.sql);
		EXPECT_FALSE(r.ok()) << a.what << " succeeded on a hot standby";
		EXPECT_EQ(r.sqlstate(), "25006") << a.what << ": " << r.message();
		Note(std::string("standby: ") + a.what + ": " + r.sqlstate() + " " + r.message());
	}
	// A bare pgkm_encrypt (nothing stored) on the standby: refused too, since its random-nonce
	// encryption could not be counted in the catalog.
	Result bare = sdb.query("SELECT pgkm_encrypt('x'::text, 'rk', '1')");
	Note("standby: SELECT pgkm_encrypt: " +
		 (bare.ok() ? std::string("succeeds") : bare.sqlstate() + " " + bare.message()));
	EXPECT_FALSE(bare.ok()) << "pgkm_encrypt succeeded on a hot standby";
	EXPECT_EQ(bare.sqlstate(), "25006") << bare.message();
	// Deterministic encryption (lookups) and decryption are reads: they work on the standby.
	EXPECT_EQ(sdb.intValue("SELECT count(*) FROM d WHERE c = pgkm_encrypt_det('needle'::text, "
						   "'dk')"),
			  1);
	EXPECT_EQ(sdb.value("SELECT pgkm_decrypt_text(c) FROM d"), "needle");
	ExpectRows(sdb, 600, 2, "standby after the refused writes");
	EXPECT_EQ(sdb.value(kPgkmProcesses), "0");

	// A version disabled on the primary is refused by a standby session whose cache holds it,
	// at its next statement after replay (not after pgkm.key_cache_ttl).
	const std::string one = "SELECT pgkm_decrypt_text(secret, id::text) FROM t WHERE id = 1";
	ASSERT_EQ(sdb.value(one), Secret(1, 0));
	pdb.exec("SELECT pgkm.disable_key_version('rk', 2)");
	ASSERT_TRUE(WaitReplayed(pdb, sdb, 15s));
	Result refused = sdb.query(one);
	EXPECT_FALSE(refused.ok()) << "a standby session with a warm cache still decrypts under a "
								  "version the primary disabled";
	EXPECT_EQ(refused.sqlstate(), "55000") << refused.message();
}

TEST(ReplicationStreaming, PromotionResumesInterruptedJob)
{
	constexpr long long kRows = 3000;
	// About 400 rows/s: the job takes several seconds, long enough to be interrupted.
	Cluster primary({"pgkm.worker_naptime = 1", "pgkm.rotation_batch_size = 50",
					 "pgkm.rotation_max_rows_per_second = 400"});
	primary.start();
	std::optional<Connection> pdb = primary.connect();
	SetUpExtension(*pdb, "pk");
	LoadTable(*pdb, "t", kRows, "pk");
	pdb->exec("SELECT pgkm.protect_column('t', 'secret', 'pk', 'id')");
	ASSERT_NE(WaitForWorker(*pdb, 15s), 0) << "no worker on the primary";

	Cluster standby = Cluster::standbyOf(primary);
	standby.start();
	standby.waitReady(60s);
	Connection sdb = standby.connect();
	ASSERT_TRUE(sdb.waitFor("SELECT count(*) = 1 FROM pg_stat_wal_receiver WHERE status = "
							"'streaming'",
							15s));

	ASSERT_EQ(pdb->value("SELECT pgkm.rotate_key('pk')"), "2");
	long long job = LatestJob(*pdb, "t");
	ASSERT_TRUE(pdb->waitFor("SELECT rows_done >= 300 FROM pgkm.rotation_jobs WHERE job_id = $1",
							 30s, {std::to_string(job)}))
		<< "primary: " << Describe(ReadJob(*pdb, job));
	ASSERT_TRUE(WaitReplayed(*pdb, sdb, 15s));
	JobSnapshot replayed = ReadJob(sdb, job);
	Note("standby replayed job " + std::to_string(job) + ": " + Describe(replayed));
	ASSERT_EQ(replayed.state, "running") << Describe(replayed);
	ASSERT_GT(replayed.rows_done, 0);
	ASSERT_LT(replayed.rows_done, kRows) << "the job finished before the primary stopped";
	// Rows under both versions on the standby: the job is half done there.
	long long old_rows = sdb.intValue("SELECT count(*) FROM t WHERE "
									  "pgkm.ciphertext_version(secret) = 1");
	EXPECT_GT(old_rows, 0);
	EXPECT_LT(old_rows, kRows);

	// The primary dies in the middle of the job; the standby is promoted.
	pdb.reset();
	primary.stopImmediate();
	ASSERT_EQ(sdb.value("SELECT pg_promote(true, 60)"), "t") << "promotion did not finish";
	ASSERT_EQ(sdb.value("SELECT pg_is_in_recovery()"), "f");
	ASSERT_NE(WaitForWorker(sdb, 20s), 0) << "no pgkm worker after promotion";

	// The interrupted job resumes and completes; every row decrypts under version 2.
	JobSnapshot done = WaitJobFinished(sdb, job, 90s);
	EXPECT_EQ(done.state, "done") << "promoted: " << Describe(done);
	EXPECT_EQ(sdb.intValue("SELECT count(*) FROM pgkm.rotation_jobs WHERE job_id > $1",
						   {std::to_string(job)}),
			  0)
		<< "the promoted server queued a new job instead of resuming job " << job;
	ExpectRows(sdb, kRows, 2, "promoted server after the resumed job");

	// The audit chain keeps being written there and verifies.
	long long before = sdb.intValue("SELECT coalesce(max(seq), 0) FROM pgkm.audit_log");
	ASSERT_EQ(sdb.intValue("SELECT count(pgkm_decrypt_text(secret, id::text)) FROM t"), kRows);
	long long head = sdb.intValue("SELECT pgkm.audit_flush(true)");
	EXPECT_GT(head, before) << "no audit record written after promotion";
	Result v = sdb.exec("SELECT ok, coalesce(problem, '') FROM pgkm.verify_audit_log()");
	EXPECT_EQ(v.get(0, 0), "t") << "verify_audit_log after promotion: " << v.get(0, 1);
}

TEST(ReplicationLogical, SubscriberWithSameKeyring)
{
	Cluster pub({"wal_level = logical", "pgkm.worker_naptime = 1"});
	pub.start();
	// A day-long key cache TTL: only an invalidation can empty a warm cache.
	Cluster sub =
		Cluster::sharingTokenOf(pub, {"pgkm.worker_naptime = 1", "pgkm.key_cache_ttl = 1d"});
	sub.start();
	Connection pdb = pub.connect();
	Connection sdb = sub.connect();

	SetUpExtension(pdb, "lk");
	LoadTable(pdb, "t", 300, "lk");
	pdb.exec("SELECT pgkm.protect_column('t', 'secret', 'lk', 'id')");

	// The subscriber: pgkm without keys of its own, and the table's definition.
	sdb.exec("CREATE EXTENSION pgkm");
	sdb.exec("CREATE TABLE t (id int PRIMARY KEY, secret bytea, other int NOT NULL)");

	// The key catalog (extension member tables) is publishable, like the table.
	pdb.exec("CREATE PUBLICATION pgkm_keyring FOR TABLE pgkm.master_keys, pgkm.keys, "
			 "pgkm.key_versions");
	pdb.exec("CREATE PUBLICATION app FOR TABLE t");
	std::string conninfo;
	for (char c : pub.conninfo())
		conninfo += c == '\'' ? std::string("''") : std::string(1, c);

	// The table alone: its ciphertexts arrive but the subscriber does not know their key.
	sdb.exec("CREATE SUBSCRIPTION s CONNECTION '" + conninfo + "' PUBLICATION app");
	ASSERT_TRUE(
		sdb.waitFor("SELECT count(*) = 1 FROM pg_subscription_rel WHERE srsubstate = 'r'", 60s))
		<< "initial synchronisation of t did not finish";
	ASSERT_EQ(sdb.intValue("SELECT count(*) FROM t"), 300);
	Result unknown = sdb.query("SELECT pgkm_decrypt_text(secret, id::text) FROM t WHERE id = 1");
	EXPECT_FALSE(unknown.ok()) << "decrypted on a subscriber without the key catalog";
	EXPECT_EQ(unknown.sqlstate(), "42704") << unknown.message();
	Note("subscriber without the keyring: " + unknown.sqlstate() + " " + unknown.message());
	long long sub_errors = ErrorLines(sub.serverLog()); // this one, logged before it returned

	// With the keyring publication added (its tables copied), the same session decrypts.
	sdb.exec("ALTER SUBSCRIPTION s ADD PUBLICATION pgkm_keyring");
	ASSERT_TRUE(
		sdb.waitFor("SELECT count(*) = 4 FROM pg_subscription_rel WHERE srsubstate = 'r'", 60s))
		<< "initial synchronisation of the keyring did not finish";
	ExpectRows(sdb, 300, 1, "subscriber after the initial copy");

	// New rows replicate and decrypt (same session: its cache is warm).
	InsertRows(pdb, 301, 400, "lk");
	ASSERT_TRUE(sdb.waitFor("SELECT count(*) = 400 FROM t", 30s));
	ExpectRows(sdb, 400, 1, "subscriber after new rows");

	// A rotation with re-encryption on the publisher: the new version replicates with the
	// keyring publication, and the rewritten rows with the table's.
	ASSERT_EQ(pdb.value("SELECT pgkm.rotate_key('lk')"), "2");
	JobSnapshot done = WaitJobFinished(pdb, LatestJob(pdb, "t"), 60s);
	ASSERT_EQ(done.state, "done") << "publisher: " << Describe(done);
	InsertRows(pdb, 401, 450, "lk");
	ASSERT_TRUE(sdb.waitFor("SELECT count(*) = 450 AND bool_and(pgkm.ciphertext_version(secret) "
							"= 2) FROM t",
							30s))
		<< "the re-encrypted rows did not reach the subscriber";
	ExpectRows(sdb, 450, 2, "subscriber (warm cache) after the publisher's rotation");
	Connection fresh = sub.connect();
	ExpectRows(fresh, 450, 2, "subscriber (new session) after the publisher's rotation");
	EXPECT_EQ(sdb.value("SELECT state FROM pgkm.key_status WHERE key_name = 'lk' AND version = 2"),
			  "active");
	// The subscriber never generated a master key of its own: one row, the publisher's.
	EXPECT_EQ(sdb.intValue("SELECT count(*) FROM pgkm.master_keys"), 1);
	EXPECT_EQ(ErrorLines(sub.serverLog()), sub_errors)
		<< "errors on the subscriber (apply worker, pgkm worker):\n"
		<< sub.serverLogTail(20);

	// A state change on the publisher reaches the subscriber's warm caches: the apply worker
	// writes the catalog with session_replication_role = replica, and the catalog triggers
	// fire there too (ENABLE ALWAYS), so the subscriber's sessions refuse the version at once.
	const std::string one = "SELECT pgkm_decrypt_text(secret, id::text) FROM t WHERE id = 1";
	ASSERT_EQ(sdb.value(one), Secret(1, 0)) << "the subscriber session's cache is not warm";
	pdb.exec("SELECT pgkm.disable_key_version('lk', 2)");
	ASSERT_TRUE(fresh.waitFor("SELECT state = 'disabled' FROM pgkm.key_versions v JOIN pgkm.keys "
							  "k USING (key_id) WHERE k.name = 'lk' AND v.version = 2",
							  30s))
		<< "the disabled version did not reach the subscriber";
	Result refused = sdb.query(one);
	EXPECT_FALSE(refused.ok())
		<< "a subscriber session with a warm cache still decrypts under a version the "
		   "publisher disabled";
	EXPECT_EQ(refused.sqlstate(), "55000") << refused.message();
	sdb.exec("DROP SUBSCRIPTION s");
}

} // namespace pgkm::it
