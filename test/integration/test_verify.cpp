// Verify: pgkm.verify() over a 200,000-row protected table. Its backend's private memory
// (RssAnon, sampled while it runs) stays flat where a materialized scan would grow by tens of
// megabytes; a throttled run is visible in pgkm.verify_progress and in pg_stat_activity while
// it runs, and pg_cancel_backend stops it, leaving the view empty; a version disabled while a
// run reads its values is counted as disabled from then on, not raised. Figures are printed,
// never asserted against the clock.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <memory>
#include <optional>
#include <thread>

namespace pgkm::it
{

namespace
{

constexpr long long kRows = 200000;
constexpr long long kPayload = 300; // plaintext bytes per value: 200,000 of them is ~67 MB
// A materialized scan of the table would hold kRows * kPayload bytes at once; the verify
// backend may grow by far less than that.
constexpr long long kFlatBytes = 16LL * 1024 * 1024;

// The private memory (RssAnon) of a process, in bytes.
long long RssAnon(int pid)
{
	std::ifstream in("/proc/" + std::to_string(pid) + "/status");
	std::string line;
	while (std::getline(in, line))
		if (line.rfind("RssAnon:", 0) == 0)
			return std::stoll(line.substr(8)) * 1024;
	return -1; // the process is gone
}

// The outcome of a statement run on another thread.
struct Background
{
	std::thread thread;
	std::atomic<bool> done{false};
	std::string sqlstate; // empty: succeeded
	long long value = 0;
};

// Runs sql (one integer result) on db in a thread of its own.
void RunInBackground(Background &bg, Connection &db, const std::string &sql)
{
	bg.thread = std::thread(
		[&bg, &db, sql]()
		{
			try
			{
				bg.value = db.intValue(sql);
			}
			catch (const PgError &e)
			{
				bg.sqlstate = e.sqlstate();
			}
			bg.done = true;
		});
}

// The PostgreSQL client programs: PGKM_PG_BINDIR, or pg_config's.
std::string ServerBinDir()
{
	if (const char *bindir = std::getenv("PGKM_PG_BINDIR"); bindir && *bindir)
		return bindir;
	FILE *p = popen("pg_config --bindir", "r");
	char buf[512] = {};
	std::string out = p && fgets(buf, sizeof buf, p) ? buf : "";
	if (p)
		pclose(p);
	while (!out.empty() && out.back() == '\n')
		out.pop_back();
	return out;
}

// Runs sql (one integer result) on db and samples its backend's RssAnon while it runs;
// returns the result and the peak growth over the RssAnon before it.
std::pair<long long, long long> PeakGrowth(Connection &db, int pid, const std::string &sql)
{
	const long long before = RssAnon(pid);
	long long peak = before;
	Background bg;
	RunInBackground(bg, db, sql);
	while (!bg.done)
	{
		peak = std::max(peak, RssAnon(pid));
		std::this_thread::sleep_for(5ms);
	}
	bg.thread.join();
	EXPECT_EQ(bg.sqlstate, "") << sql;
	return {bg.value, peak - before};
}

} // namespace

class Verify : public ::testing::Test
{
  protected:
	// One cluster: key vt and table big(id, secret) of kRows values of kPayload bytes.
	static void SetUpTestSuite()
	{
		cluster_ = std::make_unique<Cluster>();
		cluster_->start();
		Connection db = cluster_->connect();
		SetUpExtension(db, "vt");
		db.exec("CREATE TABLE big (id int PRIMARY KEY, secret bytea)");
		db.exec("SELECT pgkm.protect_column('big', 'secret', 'vt', 'id')");
		db.exec("INSERT INTO big SELECT g, pgkm_encrypt(repeat('v', $1::int - 8) || "
				"lpad(g::text, 8, '0'), 'vt', g::text) FROM generate_series(1, $2::int) g",
				{std::to_string(kPayload), std::to_string(kRows)});
		db.exec("ANALYZE big");
	}

	static void TearDownTestSuite() { cluster_.reset(); }

	static std::unique_ptr<Cluster> cluster_;
};

std::unique_ptr<Cluster> Verify::cluster_;

TEST_F(Verify, ConstantMemoryOverTheWholeTable)
{
	Connection db = cluster_->connect();
	const int pid = db.backendPid();
	// Warm the backend: key cache, catalog caches, the function itself.
	ASSERT_EQ(db.intValue("SELECT count(*) FROM pgkm.verify('big') WHERE false"), 0);
	db.exec("SELECT count(*) FROM pgkm.verify('big')");

	auto start = Clock::now();
	auto [ok, growth] =
		PeakGrowth(db, pid, "SELECT sum(values_ok) FROM pgkm.verify('big') WHERE values_ok > 0");
	double seconds = std::chrono::duration<double>(Clock::now() - start).count();
	EXPECT_EQ(ok, kRows);
	Note("verify of " + std::to_string(kRows) + " values of " + std::to_string(kPayload) +
		 " bytes: " + std::to_string(seconds) + " s (" +
		 std::to_string(static_cast<long long>(kRows / seconds)) + " values/s); peak RssAnon +" +
		 std::to_string(growth) + " bytes");
	EXPECT_LT(growth, kFlatBytes) << "the verify backend's memory grew with the table";

	// The bound can fail: holding the decrypted values at once in the same backend passes it.
	auto [length, held] = PeakGrowth(
		db, pid, "SELECT length(string_agg(pgkm_decrypt(secret, id::text), '')) FROM big");
	EXPECT_EQ(length, kRows * kPayload);
	Note("all plaintexts held at once (string_agg): peak RssAnon +" + std::to_string(held) +
		 " bytes");
	EXPECT_GT(held, kFlatBytes);
}

TEST_F(Verify, ThrottledRunShowsProgressAndCancels)
{
	Connection runner = cluster_->connect();
	Connection watcher = cluster_->connect();
	const std::string pid = std::to_string(runner.backendPid());
	// 20,000 rows a second: about ten seconds for the table, plenty to watch.
	Background bg;
	RunInBackground(bg, runner, "SELECT sum(values_ok) FROM pgkm.verify('big', 20000)");
	ASSERT_TRUE(watcher.waitFor("SELECT EXISTS (SELECT FROM pgkm.verify_progress WHERE pid = "
								"$1::int AND rows_done > 0)",
								60s, {pid}))
		<< "the run never showed in pgkm.verify_progress";
	Result row = watcher.exec("SELECT table_name::text, column_name::text, rows_done, rows_total, "
							  "failures FROM pgkm.verify_progress WHERE pid = $1::int",
							  {pid});
	EXPECT_EQ(row.get(0, 0), "big");
	EXPECT_EQ(row.get(0, 1), "secret");
	EXPECT_GT(row.getInt(0, 2), 0);
	EXPECT_LT(row.getInt(0, 2), kRows) << "the throttle did not slow the run";
	EXPECT_EQ(row.getInt(0, 3), kRows); // the estimate of the analysed table
	EXPECT_EQ(row.getInt(0, 4), 0);
	EXPECT_EQ(watcher.value("SELECT query FROM pg_stat_activity WHERE pid = $1::int", {pid}),
			  "pgkm.verify: public.big.secret");
	// The rows done advance.
	long long first = row.getInt(0, 2);
	EXPECT_TRUE(watcher.waitFor("SELECT rows_done > $2::bigint FROM pgkm.verify_progress WHERE "
								"pid = $1::int",
								60s, {pid, std::to_string(first)}));

	// Writers are not blocked by the run (it holds what a SELECT holds): an update of a row it
	// has yet to read, and one it has read, commit under a lock timeout.
	Connection writer = cluster_->connect();
	writer.exec("SET lock_timeout = '5s'");
	writer.exec("UPDATE big SET secret = secret WHERE id IN (1, $1::int)", {std::to_string(kRows)});
	EXPECT_GT(
		watcher.intValue("SELECT count(*) FROM pgkm.verify_progress WHERE pid = $1::int", {pid}), 0)
		<< "the run ended before the writer was checked against it";

	// Cancellable while it sleeps.
	EXPECT_EQ(watcher.value("SELECT pg_cancel_backend($1::int)", {pid}), "t");
	ASSERT_TRUE(WaitUntil([&]() { return bg.done.load(); }, 60s));
	bg.thread.join();
	EXPECT_EQ(bg.sqlstate, "57014");
	EXPECT_EQ(watcher.intValue("SELECT count(*) FROM pgkm.verify_progress"), 0);
	EXPECT_EQ(watcher.intValue("SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int AND "
							   "query LIKE 'pgkm.verify:%'",
							   {pid}),
			  0)
		<< "the cancelled run left its activity string behind";
	// The backend survives and verifies again.
	EXPECT_EQ(runner.intValue("SELECT count(*) FROM pgkm.verify('big') WHERE false"), 0);
}

TEST_F(Verify, VersionDisabledDuringARunIsCountedNotRaised)
{
	// A DBA disables the version while a throttled run reads its values: the run ends
	// normally, counting the values read before as ok and those after as disabled (before,
	// the key cache's refusal ended the run with 55000).
	Connection runner = cluster_->connect();
	Connection admin = cluster_->connect();
	const std::string pid = std::to_string(runner.backendPid());
	std::optional<Result> result;
	std::atomic<bool> done{false};
	std::thread thread(
		[&]()
		{
			result.emplace(runner.query("SELECT key_version, values_total, values_ok, disabled,"
										" first_failures::text FROM pgkm.verify('big', 40000)"));
			done = true;
		});
	bool seen = admin.waitFor("SELECT EXISTS (SELECT FROM pgkm.verify_progress WHERE pid = "
							  "$1::int AND rows_done > 0)",
							  60s, {pid});
	// Rows read by now were read before the change.
	long long rows_before = admin.intValue(
		"SELECT coalesce(max(rows_done), -1) FROM pgkm.verify_progress WHERE pid = $1::int", {pid});
	admin.exec("SELECT pgkm.disable_key_version('vt', 1)");
	bool finished = WaitUntil([&]() { return done.load(); }, 120s);
	if (!finished)
		admin.exec("SELECT pg_cancel_backend($1::int)", {pid});
	thread.join();
	admin.exec("SELECT pgkm.enable_key_version('vt', 1)");
	ASSERT_TRUE(seen) << "the run never showed in pgkm.verify_progress";
	ASSERT_TRUE(finished) << "the run did not end";
	ASSERT_TRUE(result->ok()) << result->sqlstate() << ": " << result->message();
	ASSERT_EQ(result->rows(), 1);
	EXPECT_EQ(result->getInt(0, 0), 1);
	EXPECT_EQ(result->getInt(0, 1), kRows);
	const long long ok = result->getInt(0, 2);
	const long long disabled = result->getInt(0, 3);
	EXPECT_GE(ok, rows_before) << "values read before the change count as ok";
	EXPECT_GT(disabled, 0) << "values read after the change count as disabled";
	EXPECT_EQ(ok + disabled, kRows);
	EXPECT_NE(result->get(0, 4).find("disabled: "), std::string::npos) << result->get(0, 4);
	Note("version disabled after " + std::to_string(rows_before) + " rows: " + std::to_string(ok) +
		 " ok, " + std::to_string(disabled) + " disabled");
	// Enabled again, every value verifies.
	EXPECT_EQ(runner.intValue("SELECT sum(values_ok) FROM pgkm.verify('big')"), kRows);
}

TEST_F(Verify, RestoreDrill)
{
	// Production: a database with a protected table. The drill: pg_dump it, restore into a
	// fresh database of a cluster with the same token, and verify there.
	Connection admin = cluster_->connect();
	admin.exec("CREATE DATABASE prod");
	admin.exec("CREATE DATABASE drill");
	{
		Connection prod = cluster_->connect("prod");
		SetUpExtension(prod, "drill_key");
		prod.exec("CREATE TABLE accounts (id int PRIMARY KEY, secret bytea)");
		prod.exec("SELECT pgkm.protect_column('accounts', 'secret', 'drill_key', 'id')");
		prod.exec("INSERT INTO accounts SELECT g, pgkm_encrypt('account ' || g, 'drill_key', "
				  "g::text) FROM generate_series(1, 1000) g");
	}
	const std::string bindir = ServerBinDir();
	const std::string port = admin.value("SHOW port");
	const std::string where = " -h " + cluster_->dir() + " -p " + port + " -U postgres";
	const std::string dump = cluster_->dir() + "/drill.dump";
	ASSERT_EQ(std::system((bindir + "/pg_dump -Fc -f " + dump + where + " -d prod").c_str()), 0);
	std::string restore_output = cluster_->dir() + "/drill.restore";
	int rc = std::system(
		(bindir + "/pg_restore" + where + " -d drill " + dump + " >" + restore_output + " 2>&1")
			.c_str());
	std::ifstream in(restore_output);
	std::string output((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
	ASSERT_EQ(rc, 0) << output;

	Connection drill = cluster_->connect("drill");
	Result r = drill.exec("SELECT table_name::text, key_name, values_total, values_ok, "
						  "cardinality(first_failures) FROM pgkm.verify()");
	ASSERT_EQ(r.rows(), 1);
	EXPECT_EQ(r.get(0, 0), "accounts");
	EXPECT_EQ(r.get(0, 1), "drill_key");
	EXPECT_EQ(r.getInt(0, 2), 1000);
	EXPECT_EQ(r.getInt(0, 3), 1000) << "a restored value does not decrypt";
	// The drill can fail: a value damaged in the restored copy is reported by its key.
	drill.exec("UPDATE accounts SET secret = set_byte(secret, 30, get_byte(secret, 30) # 1) "
			   "WHERE id = 777");
	EXPECT_EQ(drill.value("SELECT first_failures::text FROM pgkm.verify('accounts')"),
			  "{\"auth_failed: 777\"}");

	// A drill against a cluster whose token lacks the master key: every value is counted as
	// wrong_master_key, none raises and none decrypts to garbage.
	Cluster other;
	other.start();
	Connection other_admin = other.connect();
	other_admin.exec("CREATE DATABASE drill");
	const std::string other_where =
		" -h " + other.dir() + " -p " + other_admin.value("SHOW port") + " -U postgres";
	rc = std::system(
		(bindir + "/pg_restore" + other_where + " -d drill " + dump + " >/dev/null 2>&1").c_str());
	ASSERT_EQ(rc, 0);
	Connection foreign = other.connect("drill");
	r = foreign.exec("SELECT values_total, values_ok, wrong_master_key, first_failures[1] "
					 "FROM pgkm.verify()");
	ASSERT_EQ(r.rows(), 1);
	EXPECT_EQ(r.getInt(0, 0), 1000);
	EXPECT_EQ(r.getInt(0, 1), 0);
	EXPECT_EQ(r.getInt(0, 2), 1000);
	EXPECT_EQ(r.get(0, 3), "wrong_master_key: 1");
}

} // namespace pgkm::it
