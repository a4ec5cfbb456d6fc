// IntegrationConcurrentWriters: while the worker re-encrypts 200,000 rows, client threads
// update `other`, update the protected column and insert rows. Afterwards every row holds
// exactly what the clients committed, under the new version, and the old version is retired.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <random>
#include <thread>

namespace pgkm::it
{

namespace
{

constexpr long long kRows = 200000;
constexpr int kWriters = 4;
constexpr auto kWriteTime = 12s;

// What one writer committed: rows it owns ((id - 1) % kWriters == its index) and rows it
// inserted.
struct WriterLog
{
	std::map<long long, std::pair<long long, long long>> rows; // id -> (generation, other)
	long long updates_other = 0;
	long long updates_secret = 0;
	long long inserts = 0;
	long long transactions = 0;
	std::vector<std::string> errors;
};

// One statement of a writer's transaction; applied to the log only after COMMIT.
struct Op
{
	enum Kind
	{
		kOther,
		kSecret,
		kInsert
	} kind;
	long long id;
	long long generation;
};

void Writer(const std::string &conninfo, int index, std::atomic<bool> &stop, WriterLog &log)
{
	try
	{
		Connection db(conninfo);
		std::mt19937_64 rng(0x5eed0000ULL + static_cast<unsigned long long>(index));
		// Rows this writer owns; no other writer touches them, so commit order is known.
		auto owned = [&]
		{
			std::uniform_int_distribution<long long> d(0, kRows / kWriters - 1);
			return d(rng) * kWriters + index + 1;
		};
		long long next_insert = kRows + 1 + index;
		std::uniform_int_distribution<int> pick(0, 99);
		auto generation = [&](long long id)
		{
			auto it = log.rows.find(id);
			return it == log.rows.end() ? 0LL : it->second.first;
		};
		while (!stop.load())
		{
			int p = pick(rng);
			int statements = p < 15 ? 4 : 1; // 15%: a transaction of several statements
			std::vector<Op> ops;
			std::map<long long, long long> pending_generation; // within this transaction
			bool failed = false;
			if (statements > 1)
				db.exec("BEGIN");
			for (int s = 0; s < statements && !failed; ++s)
			{
				int kind = pick(rng);
				Op op{};
				if (kind < 45)
					op = {Op::kOther, owned(), 0};
				else if (kind < 88)
				{
					long long id = owned();
					long long g =
						pending_generation.count(id) ? pending_generation[id] : generation(id);
					op = {Op::kSecret, id, g + 1};
					pending_generation[id] = g + 1;
				}
				else
				{
					op = {Op::kInsert, next_insert, 0};
					next_insert += kWriters;
				}
				const std::string id = std::to_string(op.id);
				Result r =
					op.kind == Op::kOther
						? db.query("UPDATE t SET other = other + 1 WHERE id = $1::int", {id})
					: op.kind == Op::kSecret
						? db.query("UPDATE t SET secret = pgkm_encrypt($2::text, 'cw', $3::text) "
								   "WHERE id = $1::int",
								   {id, Secret(op.id, op.generation), id})
						: db.query("INSERT INTO t VALUES ($1::int, pgkm_encrypt($2::text, 'cw', "
								   "$3::text), 0)",
								   {id, Secret(op.id, 0), id});
				if (!r.ok() || r.affected() != 1)
				{
					log.errors.push_back("writer " + std::to_string(index) + ": row " +
										 std::to_string(op.id) + ": " +
										 (r.ok() ? "affected " + std::to_string(r.affected())
												 : r.sqlstate() + " " + r.message()));
					failed = true;
				}
				ops.push_back(op);
			}
			if (statements > 1)
			{
				Result c = db.query(failed ? "ROLLBACK" : "COMMIT");
				if (!c.ok())
				{
					log.errors.push_back("writer " + std::to_string(index) +
										 ": COMMIT: " + c.message());
					failed = true;
				}
			}
			if (failed)
			{
				if (log.errors.size() > 20)
					return;
				continue;
			}
			// Committed: now the rows hold these values.
			++log.transactions;
			for (const auto &op : ops)
			{
				auto &row = log.rows.try_emplace(op.id, 0LL, 0LL).first->second;
				switch (op.kind)
				{
				case Op::kOther:
					++row.second;
					++log.updates_other;
					break;
				case Op::kSecret:
					row.first = op.generation;
					++log.updates_secret;
					break;
				case Op::kInsert:
					++log.inserts;
					break;
				}
			}
		}
	}
	catch (const std::exception &e)
	{
		log.errors.push_back("writer " + std::to_string(index) + ": " + e.what());
	}
}

} // namespace

TEST(IntegrationConcurrentWriters, JobUnderWritesLosesNothing)
{
	// Batches of 500 capped at 10,000 rows/s: the scan alone takes about 20 s, so the
	// writers run while it is in progress.
	Cluster cluster({"pgkm.rotation_batch_size = 500", "pgkm.rotation_max_rows_per_second = 10000",
					 "pgkm.rotation_batch_delay = 0", "pgkm.worker_naptime = 1"});
	cluster.start();
	Connection db = cluster.connect();
	SetUpExtension(db, "cw");
	LoadTable(db, "t", kRows, "cw");
	db.exec("SELECT pgkm.protect_column('t', 'secret', 'cw', 'id')");
	ASSERT_NE(WaitForWorker(db, 30s), 0) << "no pgkm worker for the database";

	ASSERT_EQ(db.value("SELECT pgkm.rotate_key('cw')"), "2");
	long long job = LatestJob(db, "t");
	ASSERT_GT(job, 0) << "rotate_key queued no job for t.secret";
	ASSERT_TRUE(db.waitFor("SELECT rows_done > 0 FROM pgkm.rotation_jobs WHERE job_id = $1", 30s,
						   {std::to_string(job)}))
		<< "the job did not start: " << Describe(ReadJob(db, job));
	Note("job " + std::to_string(job) + " running; " + std::to_string(kWriters) + " writers for " +
		 std::to_string(kWriteTime.count()) + " s");

	std::atomic<bool> stop{false};
	std::vector<WriterLog> logs(kWriters);
	{
		std::vector<std::jthread> writers;
		for (int i = 0; i < kWriters; ++i)
			writers.emplace_back(Writer, cluster.conninfo(), i, std::ref(stop), std::ref(logs[i]));
		std::this_thread::sleep_for(kWriteTime); // the workload's duration, not an assertion
		stop = true;
	}
	JobSnapshot at_end_of_writes = ReadJob(db, job);
	long long updates_other = 0, updates_secret = 0, inserts = 0, transactions = 0;
	for (const auto &log : logs)
	{
		for (const auto &e : log.errors)
			ADD_FAILURE() << e;
		updates_other += log.updates_other;
		updates_secret += log.updates_secret;
		inserts += log.inserts;
		transactions += log.transactions;
	}
	Note("writers committed " + std::to_string(transactions) +
		 " transactions: " + std::to_string(updates_other) + " updates of other, " +
		 std::to_string(updates_secret) + " of secret, " + std::to_string(inserts) +
		 " inserts; job then: " + Describe(at_end_of_writes));
	EXPECT_NE(at_end_of_writes.state, "done")
		<< "the job finished before the writers stopped: the throttle did not hold it, and the "
		   "writes did not all overlap the job";
	EXPECT_GT(updates_secret, 1000);
	EXPECT_GT(updates_other, 1000);
	EXPECT_GT(inserts, 100);

	JobSnapshot done = WaitJobFinished(db, job, 120s);
	ASSERT_EQ(done.state, "done") << Describe(done);
	Note(
		"job done: " + Describe(done) + " sweeps=" +
		db.value("SELECT sweeps FROM pgkm.rotation_jobs WHERE job_id = $1", {std::to_string(job)}));

	// Everything the clients committed, and nothing else, under version 2.
	auto expected = BaseExpectation(kRows);
	for (const auto &log : logs)
		for (const auto &[id, row] : log.rows)
			expected[id] = row;
	RowCheck c = CheckRows(db, "t", expected, 2);
	EXPECT_EQ(c.rows, static_cast<long long>(expected.size()));
	EXPECT_EQ(c.wrong_secret, 0) << "protected values lost or overwritten";
	EXPECT_EQ(c.wrong_other, 0) << "client updates of other lost";
	EXPECT_EQ(c.wrong_version, 0) << "rows left under an old version";
	EXPECT_EQ(c.missing, 0);
	EXPECT_EQ(c.unexpected, 0);
	EXPECT_EQ(db.value("SELECT count(*) FROM t WHERE pgkm.ciphertext_version(secret) < 2"), "0");

	// Version 1 is referenced by nothing now: retired (right after the job, by the worker).
	EXPECT_TRUE(db.waitFor("SELECT state = 'retired' FROM pgkm.key_status WHERE key_name = 'cw' "
						   "AND version = 1",
						   10s))
		<< "version 1 is " << VersionState(db, "cw", 1);
	EXPECT_EQ(VersionState(db, "cw", 2), "active");
	EXPECT_EQ(db.value("SELECT phase FROM pgkm.rotation_progress WHERE job_id = $1",
					   {std::to_string(job)}),
			  "finished");
}

} // namespace pgkm::it
