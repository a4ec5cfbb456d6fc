// IntegrationWorkerLifecycle: one launcher, one worker per database that has the extension,
// started by CREATE EXTENSION (also inside a longer transaction) and gone after DROP
// EXTENSION; DROP DATABASE is not blocked by it; SIGHUP keeps the worker; SIGTERM stops it
// cleanly (no crash) in the middle of a job, and it comes back and finishes the job.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <thread>

namespace pgkm::it
{

namespace
{

size_t CountIn(const std::string &haystack, const std::string &needle)
{
	size_t n = 0;
	for (size_t pos = haystack.find(needle); pos != std::string::npos;
		 pos = haystack.find(needle, pos + 1))
		++n;
	return n;
}

} // namespace

TEST(IntegrationWorkerLifecycle, PerDatabaseWorkersReloadAndTerminate)
{
	Cluster cluster({"pgkm.worker_naptime = 1", "pgkm.rotation_batch_size = 200",
					 "pgkm.rotation_max_rows_per_second = 4000"});
	cluster.start();
	Connection db = cluster.connect();
	EXPECT_TRUE(db.waitFor("SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = "
						   "'pgkm launcher'",
						   15s))
		<< "no pgkm launcher";
	// No database has the extension yet: no worker.
	EXPECT_EQ(db.value("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgkm worker'"),
			  "0");

	SetUpExtension(db, "wl");
	int worker = WaitForWorker(db, 15s);
	ASSERT_NE(worker, 0) << "CREATE EXTENSION started no worker";

	// A second database: its own worker after CREATE EXTENSION, none after DROP EXTENSION.
	db.exec("CREATE DATABASE second");
	{
		Connection second = cluster.connect("second");
		EXPECT_EQ(WorkerCount(db, "second"), 0);
		second.exec("CREATE EXTENSION pgkm");
		EXPECT_TRUE(db.waitFor("SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = "
							   "'pgkm worker' AND datname = 'second'",
							   15s))
			<< "CREATE EXTENSION started no worker in database second";
		second.exec("DROP EXTENSION pgkm");
		EXPECT_TRUE(db.waitFor("SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = "
							   "'pgkm worker' AND datname = 'second'",
							   15s))
			<< "the worker of database second did not exit after DROP EXTENSION";
	}
	// The first database's worker is unaffected; the second database can be dropped.
	EXPECT_EQ(WorkerPid(db), worker);
	{
		Result drop = db.query("DROP DATABASE second");
		EXPECT_TRUE(drop.ok()) << drop.message();
	}

	// A job that takes a few seconds, for what follows.
	LoadTable(db, "t", 20000, "wl");
	db.exec("SELECT pgkm.protect_column('t', 'secret', 'wl', 'id')");

	// SIGHUP with a changed setting: same worker afterwards, and it still works (it finishes a
	// job after the reload, so it went through its loop since).
	db.exec("ALTER SYSTEM SET pgkm.rotation_max_rows_per_second = 5000");
	ASSERT_EQ(db.value("SELECT pg_reload_conf()"), "t");
	ASSERT_EQ(db.value("SELECT pgkm.rotate_key('wl')"), "2");
	long long job = LatestJob(db, "t");
	JobSnapshot done = WaitJobFinished(db, job, 60s);
	EXPECT_EQ(done.state, "done") << Describe(done);
	EXPECT_EQ(WorkerPid(db), worker) << "the worker changed after SIGHUP";
	EXPECT_EQ(db.value("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgkm worker'"),
			  "1");

	// SIGTERM in the middle of a job: the worker exits cleanly (no crash, no cluster restart),
	// comes back within 15 s and finishes the job from its checkpoint.
	const std::string log_before = cluster.serverLog();
	ASSERT_EQ(db.value("SELECT pgkm.rotate_key('wl')"), "3");
	job = LatestJob(db, "t");
	ASSERT_TRUE(db.waitFor("SELECT rows_done >= 4000 FROM pgkm.rotation_jobs WHERE job_id = $1",
						   30s, {std::to_string(job)}))
		<< Describe(ReadJob(db, job));
	JobSnapshot before = ReadJob(db, job);
	ASSERT_EQ(before.state, "running") << Describe(before);
	ASSERT_EQ(db.value("SELECT pg_terminate_backend($1)", {std::to_string(worker)}), "t");
	EXPECT_TRUE(db.waitFor("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $1", 15s,
						   {std::to_string(worker)}))
		<< "the worker did not exit on SIGTERM";
	int back = WaitForWorker(db, 15s, worker);
	EXPECT_NE(back, 0) << "the worker did not come back within 15 s of SIGTERM";
	done = WaitJobFinished(db, job, 60s);
	EXPECT_EQ(done.state, "done") << Describe(done);
	EXPECT_GE(done.rows_done, before.rows_done);
	std::string log_after = cluster.serverLog().substr(log_before.size());
	EXPECT_EQ(CountIn(log_after, "terminated by signal"), 0u) << log_after;
	EXPECT_EQ(CountIn(log_after, "all server processes terminated"), 0u)
		<< "SIGTERM of the worker restarted the cluster:\n"
		<< log_after;
	RowCheck c = CheckRows(db, "t", BaseExpectation(20000), 3);
	EXPECT_EQ(c.rows, 20000);
	EXPECT_EQ(c.wrong_secret + c.wrong_version + c.missing + c.unexpected, 0);

	// DROP EXTENSION in the first database stops its worker as well; the launcher stays.
	db.exec("DROP TABLE t");
	db.exec("DROP EXTENSION pgkm");
	EXPECT_TRUE(db.waitFor("SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = "
						   "'pgkm worker'",
						   15s));
	EXPECT_EQ(db.value("SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
					   "'pgkm launcher'"),
			  "1");
}

} // namespace pgkm::it

namespace pgkm::it
{

// CREATE EXTENSION inside a longer transaction (a migration tool, a restore in one
// transaction): the worker must still be running once the transaction commits.
TEST(IntegrationWorkerLifecycle, CreateExtensionInsideTransaction)
{
	Cluster cluster({"pgkm.worker_naptime = 1"});
	cluster.start();
	Connection db = cluster.connect();
	db.exec("BEGIN");
	db.exec("CREATE EXTENSION pgkm");
	db.exec("SELECT pg_sleep(0.5)"); // the rest of the migration: widens the window
	db.exec("COMMIT");
	EXPECT_NE(WaitForWorker(db, 15s), 0)
		<< "no worker 15 s after a CREATE EXTENSION that committed 0.5 s after it ran";
	// Whatever started it, a rotation gets done.
	db.exec("SELECT pgkm.create_key('tx')");
	LoadTable(db, "t", 1000, "tx");
	db.exec("SELECT pgkm.protect_column('t', 'secret', 'tx', 'id')");
	db.exec("SELECT pgkm.rotate_key('tx')");
	JobSnapshot done = WaitJobFinished(db, LatestJob(db, "t"), 15s);
	EXPECT_EQ(done.state, "done") << Describe(done);
}

namespace
{

// Creates database name with pgkm, waits for its worker, then drops it (options after the
// name, e.g. " WITH (FORCE)"), which must succeed.
void DropDatabaseWithWorker(Cluster &cluster, Connection &db, const std::string &name,
							const std::string &options)
{
	db.exec("CREATE DATABASE " + name);
	{
		Connection created = cluster.connect(name);
		created.exec("CREATE EXTENSION pgkm");
	}
	ASSERT_NE(WaitForWorker(db, 15s, 0, name), 0) << "no worker in database " << name;
	Result drop = db.query("DROP DATABASE " + name + options);
	ASSERT_TRUE(drop.ok()) << drop.sqlstate() << " " << drop.message();
}

} // namespace

// DROP DATABASE of a database that has the extension: its worker must not block it.
TEST(IntegrationWorkerLifecycle, DropDatabaseWithExtension)
{
	Cluster cluster({"pgkm.worker_naptime = 1"});
	cluster.start();
	Connection db = cluster.connect();
	DropDatabaseWithWorker(cluster, db, "third", "");
	if (HasFatalFailure())
		return;
	EXPECT_TRUE(db.waitFor("SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = "
						   "'pgkm worker'",
						   15s));
}

// DROP DATABASE ... WITH (FORCE) terminates the worker instead of waiting for it to step
// aside: the worker is not restarted into the dropped database (it used to be, every 5 s,
// failing to connect for good and holding a worker slot).
TEST(IntegrationWorkerLifecycle, DropDatabaseWithForce)
{
	Cluster cluster({"pgkm.worker_naptime = 1"});
	cluster.start();
	Connection db = cluster.connect();
	DropDatabaseWithWorker(cluster, db, "fourth", " WITH (FORCE)");
	if (HasFatalFailure())
		return;
	// Longer than the worker's restart interval (5 s).
	std::this_thread::sleep_for(8s);
	EXPECT_EQ(db.intValue("SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
						  "'pgkm worker'"),
			  0);
	EXPECT_EQ(cluster.serverLog().find("does not exist"), std::string::npos)
		<< "a worker was restarted into the dropped database:\n"
		<< cluster.serverLogTail();
}

} // namespace pgkm::it
