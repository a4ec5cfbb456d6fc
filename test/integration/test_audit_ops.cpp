// AuditOps: the audit under operational stress. A ring that fills while the worker is held
// up (its writer lock taken by another session) shows each pgkm.audit_overflow policy: drop
// loses records but counts them in a 'dropped' record, error refuses the decrypt (fail
// closed), wait blocks until the worker makes room (and statement_timeout applies).
// Retention drops whole partitions behind an anchor, and the chain still verifies.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <thread>

namespace pgkm::it
{

namespace
{

// A table of n rows under key, protected; audit records of its decrypts are what fills the
// ring.
void SetUpAudited(Connection &db, long long rows)
{
	SetUpExtension(db, "ops");
	LoadTable(db, "t", rows, "ops");
	db.exec("SELECT pgkm.protect_column('t', 'secret', 'ops', 'id')");
	db.exec("SELECT pgkm.audit_flush()");
}

// The decrypt statement of one row.
const char *kDecrypt = "SELECT pgkm_decrypt_text(secret, id::text) FROM t WHERE id = $1";

} // namespace

// With the worker held up, a ring of 64 records fills; drop, error and wait behave as
// documented, and the drop count reaches the log once the worker runs again.
TEST(AuditOps, OverflowPolicies)
{
	Cluster cluster({"pgkm.audit_ring_size = 64", "pgkm.worker_naptime = 1"});
	cluster.start();
	Connection db = cluster.connect();
	SetUpAudited(db, 500);
	Connection holder = cluster.connect();
	// The worker appends under a row lock of pgkm.audit_state: hold it.
	holder.exec("BEGIN");
	holder.exec("SELECT * FROM pgkm.audit_state FOR UPDATE");

	Connection app = cluster.connect();
	app.exec("SET pgkm.audit_level = row");
	app.exec("SET pgkm.audit_overflow = drop");
	// A different application_name each time: one record per decrypt, none gathered.
	for (int i = 1; i <= 200; i++)
	{
		app.exec("SET application_name = 'ops" + std::to_string(i) + "'");
		ASSERT_TRUE(app.query(kDecrypt, {std::to_string(i)}).ok());
	}
	// The ring holds 64; at least 200 - 64 records were dropped.

	app.exec("SET pgkm.audit_overflow = error");
	app.exec("SET application_name = 'ops-error'"); // a new record, which needs a slot
	Result refused = app.query(kDecrypt, {"1"});
	EXPECT_FALSE(refused.ok()) << "a decrypt returned plaintext with a full ring in error mode";
	EXPECT_EQ(refused.sqlstate(), "53000") << refused.message();

	app.exec("SET pgkm.audit_overflow = wait");
	app.exec("SET application_name = 'ops-wait'");
	app.exec("SET statement_timeout = '500ms'");
	Result waited = app.query(kDecrypt, {"1"});
	EXPECT_FALSE(waited.ok()) << "a decrypt did not wait for room in the ring";
	EXPECT_EQ(waited.sqlstate(), "57014") << waited.message();
	app.exec("RESET statement_timeout");

	// A waiting decrypt finishes once the worker runs again.
	std::thread release(
		[&holder]()
		{
			std::this_thread::sleep_for(1s);
			holder.exec("COMMIT");
		});
	auto started = std::chrono::steady_clock::now();
	Result late = app.query(kDecrypt, {"2"});
	release.join();
	EXPECT_TRUE(late.ok()) << late.message();
	EXPECT_GE(std::chrono::steady_clock::now() - started, 900ms);

	db.exec("SELECT pgkm.audit_flush()");
	long long dropped =
		db.intValue("SELECT coalesce(sum(row_count), 0) FROM pgkm.audit_log WHERE action = "
					"'dropped'");
	long long kept = db.intValue("SELECT coalesce(sum(row_count), 0) FROM pgkm.audit_log WHERE "
								 "action = 'decrypt' AND backend_pid = $1",
								 {std::to_string(app.backendPid())});
	Note("ring of 64, worker held: " + std::to_string(kept) + " decrypt records kept, " +
		 std::to_string(dropped) + " counted as dropped");
	// Every decrypt that returned is accounted for: kept or counted (the refused ones did
	// not return plaintext; the timed-out one was never queued).
	EXPECT_EQ(kept + dropped, 201);
	EXPECT_GE(dropped, 200 - 64);
	EXPECT_EQ(db.value("SELECT ok FROM pgkm.verify_audit_log()"), "t");
}

// Partitions of one second; retention of two: old partitions go, an anchor seals the first
// record kept, and verify_audit_log() starts from it.
TEST(AuditOps, RetentionDropsPartitionsBehindAnAnchor)
{
	Cluster cluster({"pgkm.audit_partition_interval = '1s'", "pgkm.worker_naptime = 3600"});
	cluster.start();
	Connection db = cluster.connect();
	SetUpAudited(db, 10);
	for (int i = 0; i < 4; i++)
	{
		db.query(kDecrypt, {"1"});
		db.exec("SELECT pgkm.audit_flush(true)");
		std::this_thread::sleep_for(1100ms);
	}
	long long partitions = db.intValue("SELECT count(*) FROM pgkm.audit_partitions");
	ASSERT_GE(partitions, 3) << "expected a partition per second";
	long long first_before = db.intValue("SELECT min(seq) FROM pgkm.audit_log");
	EXPECT_EQ(first_before, 1);

	db.exec("ALTER SYSTEM SET pgkm.audit_retention = '2s'");
	ASSERT_EQ(db.value("SELECT pg_reload_conf()"), "t");
	// The worker applies the retention it has read: until it has processed the reload (a
	// moment, longer on a loaded machine), it drops nothing. Ask again until it does.
	long long dropped = 0;
	for (int attempt = 0; attempt < 60 && dropped == 0; attempt++)
	{
		std::this_thread::sleep_for(500ms);
		dropped = db.intValue("SELECT pgkm.apply_audit_retention()");
	}
	EXPECT_GE(dropped, 1);
	EXPECT_EQ(db.intValue("SELECT count(*) FROM pgkm.audit_partitions"), partitions - dropped);
	EXPECT_GT(db.intValue("SELECT min(seq) FROM pgkm.audit_log"), 1);
	EXPECT_EQ(db.intValue("SELECT count(*) FROM pgkm.audit_log WHERE action = 'anchor'"), 1);
	Result verdict = db.query("SELECT ok, first_seq, problem FROM pgkm.verify_audit_log()");
	ASSERT_TRUE(verdict.ok()) << verdict.message();
	EXPECT_EQ(verdict.get(0, 0), "t") << verdict.get(0, 2);
	EXPECT_GT(std::stoll(verdict.get(0, 1)), 1);

	// Without the anchor, the missing start is reported.
	db.exec("SET session_replication_role = replica");
	db.exec("CREATE TEMP TABLE anchor AS SELECT * FROM pgkm.audit_log WHERE action = 'anchor'");
	db.exec("DELETE FROM pgkm.audit_log WHERE action = 'anchor'");
	Result broken = db.query("SELECT ok, problem FROM pgkm.verify_audit_log()");
	EXPECT_EQ(broken.get(0, 0), "f");
	EXPECT_NE(broken.get(0, 1).find("missing"), std::string::npos) << broken.get(0, 1);
}

} // namespace pgkm::it
