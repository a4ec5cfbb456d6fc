// IntegrationStandby: on a hot standby (a streaming replica of a primary with pgkm) neither
// the pgkm launcher nor a worker runs, yet the read path (pgkm_decrypt_text) works there and
// sees the primary's re-encryption; after the primary stops and the standby is promoted, the
// launcher and the database's worker start, and a rotation there re-encrypts every row.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <optional>

namespace pgkm::it
{

namespace
{

constexpr long long kRows = 2000;

const std::string kPgkmProcesses = "SELECT count(*) FROM pg_stat_activity WHERE backend_type IN "
								   "('pgkm launcher', 'pgkm worker')";

long long Millis(Clock::duration d)
{
	return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

// Checks that every row decrypts to its original secret under the given key version.
void ExpectAllRows(Connection &db, long long version, const std::string &where)
{
	RowCheck c = CheckRows(db, "t", BaseExpectation(kRows), version);
	EXPECT_EQ(c.rows, kRows) << where;
	EXPECT_EQ(c.wrong_secret + c.wrong_other + c.wrong_version + c.missing + c.unexpected, 0)
		<< where << ": rows that do not decrypt to their secret under version " << version;
}

} // namespace

TEST(IntegrationStandby, NoWorkerOnStandbyResumesAfterPromotion)
{
	Cluster primary({"pgkm.worker_naptime = 1"});
	primary.start();
	std::optional<Connection> pdb = primary.connect();
	SetUpExtension(*pdb, "sb");
	LoadTable(*pdb, "t", kRows, "sb");
	pdb->exec("SELECT pgkm.protect_column('t', 'secret', 'sb', 'id')");
	ASSERT_NE(WaitForWorker(*pdb, 15s), 0) << "no worker on the primary";

	// The standby: a base backup streaming from the primary over its Unix socket.
	Cluster standby = Cluster::standbyOf(primary);
	standby.start();
	standby.waitReady(60s);
	Connection sdb = standby.connect();
	ASSERT_EQ(sdb.value("SELECT pg_is_in_recovery()"), "t");
	EXPECT_TRUE(sdb.waitFor("SELECT count(*) = 1 FROM pg_stat_wal_receiver WHERE status = "
							"'streaming'",
							15s))
		<< "the standby does not stream from the primary";

	// No pgkm process on the standby, for 3 s.
	std::string seen = "0";
	bool appeared = WaitUntil(
		[&]
		{
			seen = sdb.value(kPgkmProcesses);
			return seen != "0";
		},
		3s, 100ms);
	EXPECT_FALSE(appeared) << seen << " pgkm launcher/worker process(es) on a hot standby";

	// The read path works on the standby.
	ExpectAllRows(sdb, 1, "standby before the rotation");

	// A rotation on the primary: its job finishes there, the standby replays it.
	ASSERT_EQ(pdb->value("SELECT pgkm.rotate_key('sb')"), "2");
	JobSnapshot done = WaitJobFinished(*pdb, LatestJob(*pdb, "t"), 30s);
	ASSERT_EQ(done.state, "done") << "primary: " << Describe(done);
	std::string lsn = pdb->value("SELECT pg_current_wal_lsn()");
	ASSERT_TRUE(sdb.waitFor("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", 15s, {lsn}))
		<< "the standby did not replay up to " << lsn;
	EXPECT_EQ(sdb.value(kPgkmProcesses), "0") << "a pgkm process on the standby after a rotation";
	ExpectAllRows(sdb, 2, "standby after the primary's rotation");

	// The primary goes away; the standby is promoted. Its launcher and worker start.
	pdb.reset();
	primary.stop();
	auto promoted_at = Clock::now();
	ASSERT_EQ(sdb.value("SELECT pg_promote(true, 30)"), "t") << "promotion did not finish in 30 s";
	ASSERT_EQ(sdb.value("SELECT pg_is_in_recovery()"), "f");
	EXPECT_TRUE(sdb.waitFor("SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = "
							"'pgkm launcher'",
							15s))
		<< "no pgkm launcher 15 s after promotion";
	int worker = WaitForWorker(sdb, 15s);
	ASSERT_NE(worker, 0) << "no pgkm worker 15 s after promotion";
	Note("pgkm worker " + std::to_string(worker) + " on the promoted server after " +
		 std::to_string(Millis(Clock::now() - promoted_at)) + " ms");

	// A rotation on the promoted server gets done, and every row is under the new version.
	ASSERT_EQ(sdb.value("SELECT pgkm.rotate_key('sb')"), "3");
	long long job = LatestJob(sdb, "t");
	done = WaitJobFinished(sdb, job, 30s);
	EXPECT_EQ(done.state, "done") << "promoted: " << Describe(done);
	EXPECT_EQ(done.target_version, 3);
	ExpectAllRows(sdb, 3, "promoted server after its rotation");
}

} // namespace pgkm::it
