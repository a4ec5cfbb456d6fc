// IntegrationCrash: kill -9 of the pgkm worker (PostgreSQL then restarts the whole cluster),
// an immediate shutdown and a kill -9 of the postmaster, each in the middle of a job. After
// each, the job resumes from its checkpoint (never more than one batch back) and finishes,
// and every row decrypts to its value under the target version.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <csignal>
#include <dirent.h>
#include <fstream>
#include <sstream>

namespace pgkm::it
{

namespace
{

constexpr long long kRows = 100000;
constexpr long long kBatch = 500;

// Pids of the live children of a process (from /proc).
std::vector<int> ChildrenOf(int parent)
{
	std::vector<int> pids;
	DIR *proc = opendir("/proc");
	if (!proc)
		return pids;
	while (dirent *e = readdir(proc))
	{
		int pid = std::atoi(e->d_name);
		if (pid <= 0)
			continue;
		std::ifstream stat("/proc/" + std::string(e->d_name) + "/stat");
		std::string line;
		if (!std::getline(stat, line))
			continue;
		// pid (comm) state ppid ...: comm may contain spaces, so parse after the last ')'.
		auto close = line.rfind(')');
		if (close == std::string::npos)
			continue;
		std::istringstream rest(line.substr(close + 1));
		char state;
		int ppid;
		if (rest >> state >> ppid && ppid == parent && state != 'Z')
			pids.push_back(pid);
	}
	closedir(proc);
	return pids;
}

constexpr const char *kReinitializing = "all server processes terminated; reinitializing";

size_t Count(const std::string &haystack, const std::string &needle)
{
	size_t n = 0;
	for (size_t pos = haystack.find(needle); pos != std::string::npos;
		 pos = haystack.find(needle, pos + 1))
		++n;
	return n;
}

bool ProcessAlive(int pid)
{
	std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
	std::string line;
	if (!std::getline(stat, line))
		return false;
	auto close = line.rfind(')');
	return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
}

std::string Cmdline(int pid)
{
	std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
	std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
	for (auto &c : s)
		if (c == '\0')
			c = ' ';
	return s;
}

// Waits until the job has done at least `rows` rows and returns the checkpoint read then
// (committed by the worker, so it must survive any crash that follows).
JobSnapshot WaitProgress(Connection &db, long long job, long long rows)
{
	JobSnapshot s;
	bool reached = WaitUntil(
		[&]
		{
			s = ReadJob(db, job);
			return s.rows_done >= rows || s.state == "done" || s.state == "failed" ||
				   s.state == "cancelled";
		},
		60s, 50ms);
	if (!reached)
		throw std::runtime_error("job did not reach " + std::to_string(rows) +
								 " rows in 60 s: " + Describe(s));
	return s;
}

// After a crash: the checkpoint must not be more than one batch behind what was read
// before the crash.
void ExpectCheckpointKept(const JobSnapshot &before, const JobSnapshot &after,
						  const std::string &what)
{
	EXPECT_GE(after.rows_done, before.rows_done - kBatch)
		<< what << ": rows_done went back from " << before.rows_done << " to " << after.rows_done;
	if (before.phase == "scan" && after.phase == "scan" && before.last_key >= 0)
	{
		EXPECT_GE(after.last_key, before.last_key - kBatch)
			<< what << ": last_key went back from " << before.last_key << " to " << after.last_key;
	}
	EXPECT_NE(after.state, "failed") << what << ": " << Describe(after);
	EXPECT_NE(after.state, "cancelled") << what << ": " << Describe(after);
}

} // namespace

TEST(IntegrationCrash, JobSurvivesWorkerKillImmediateStopAndPostmasterKill)
{
	// 100,000 rows at 8,000 rows/s: each job's scan takes about 12 s.
	Cluster cluster({"pgkm.rotation_batch_size = " + std::to_string(kBatch),
					 "pgkm.rotation_max_rows_per_second = 8000", "pgkm.rotation_batch_delay = 0",
					 "pgkm.worker_naptime = 1", "restart_after_crash = on"});
	cluster.start();
	std::optional<Connection> db = cluster.connect();
	SetUpExtension(*db, "crash");
	LoadTable(*db, "t", kRows, "crash");
	db->exec("SELECT pgkm.protect_column('t', 'secret', 'crash', 'id')");
	ASSERT_NE(WaitForWorker(*db, 30s), 0);
	const auto expected = BaseExpectation(kRows);

	// (a) Job to version 2; kill -9 of the worker at ~20% and ~60%.
	ASSERT_EQ(db->value("SELECT pgkm.rotate_key('crash')"), "2");
	long long job = LatestJob(*db, "t");
	ASSERT_GT(job, 0);
	for (long long at : {kRows / 5, kRows * 3 / 5})
	{
		JobSnapshot before = WaitProgress(*db, job, at);
		ASSERT_EQ(before.state, "running")
			<< "the job is no longer running at " << at << " rows: " << Describe(before);
		int worker = WorkerPid(*db);
		ASSERT_NE(worker, 0);
		Note("kill -9 of worker " + std::to_string(worker) + " at " + Describe(before));
		size_t recoveries = Count(cluster.serverLog(), kReinitializing);
		cluster.kill9(worker);
		db.reset(); // crash recovery terminates every session
		ASSERT_TRUE(WaitUntil(
			[&] { return Count(cluster.serverLog(), kReinitializing) > recoveries; }, 30s))
			<< "the postmaster did not reinitialise after the worker was killed";
		cluster.waitReady(60s);
		db = cluster.connect();
		JobSnapshot after = ReadJob(*db, job);
		ExpectCheckpointKept(before, after, "after kill -9 of the worker");
		int again = WaitForWorker(*db, 30s, worker);
		ASSERT_NE(again, 0) << "no worker after crash recovery; job: "
							<< Describe(ReadJob(*db, job));
	}
	JobSnapshot done = WaitJobFinished(*db, job, 120s);
	ASSERT_EQ(done.state, "done") << Describe(done);
	{
		RowCheck c = CheckRows(*db, "t", expected, 2);
		EXPECT_EQ(c.rows, kRows);
		EXPECT_EQ(c.wrong_secret + c.wrong_other + c.wrong_version + c.missing + c.unexpected, 0);
	}
	EXPECT_TRUE(db->waitFor("SELECT state = 'retired' FROM pgkm.key_status WHERE key_name = "
							"'crash' AND version = 1",
							10s))
		<< "version 1 is " << VersionState(*db, "crash", 1);

	// (b) Job to version 3; immediate shutdown at ~30%, then (c) kill -9 of the postmaster
	// at ~70%: the orphaned worker must notice and exit so that the server can start again.
	ASSERT_EQ(db->value("SELECT pgkm.rotate_key('crash')"), "3");
	job = LatestJob(*db, "t");
	{
		JobSnapshot before = WaitProgress(*db, job, kRows * 3 / 10);
		ASSERT_EQ(before.state, "running") << Describe(before);
		Note("immediate shutdown at " + Describe(before));
		db.reset();
		cluster.stopImmediate();
		cluster.start();
		db = cluster.connect();
		ExpectCheckpointKept(before, ReadJob(*db, job), "after an immediate shutdown");
		ASSERT_NE(WaitForWorker(*db, 30s), 0) << "no worker after restart";
	}
	{
		JobSnapshot before = WaitProgress(*db, job, kRows * 7 / 10);
		ASSERT_EQ(before.state, "running") << Describe(before);
		int postmaster = cluster.postmasterPid();
		ASSERT_GT(postmaster, 0);
		std::vector<int> children = ChildrenOf(postmaster);
		Note("kill -9 of the postmaster at " + Describe(before) + "; " +
			 std::to_string(children.size()) + " children");
		db.reset();
		cluster.kill9(postmaster);
		// Every child, the pgkm launcher and worker included, must exit on postmaster death.
		bool orphans_gone = WaitUntil(
			[&]
			{
				for (int pid : children)
					if (ProcessAlive(pid))
						return false;
				return true;
			},
			30s);
		if (!orphans_gone)
		{
			std::string left;
			for (int pid : children)
				if (ProcessAlive(pid))
					left += "\n  " + std::to_string(pid) + ": " + Cmdline(pid);
			ADD_FAILURE() << "processes still alive 30 s after the postmaster died:" << left;
			for (int pid : children)
				if (ProcessAlive(pid))
					kill(pid, SIGKILL);
			WaitUntil(
				[&]
				{
					for (int pid : children)
						if (ProcessAlive(pid))
							return false;
					return true;
				},
				10s);
		}
		cluster.start();
		db = cluster.connect();
		ExpectCheckpointKept(before, ReadJob(*db, job), "after kill -9 of the postmaster");
		ASSERT_NE(WaitForWorker(*db, 30s), 0) << "no worker after restart";
	}
	done = WaitJobFinished(*db, job, 120s);
	ASSERT_EQ(done.state, "done") << Describe(done);
	RowCheck c = CheckRows(*db, "t", expected, 3);
	EXPECT_EQ(c.rows, kRows);
	EXPECT_EQ(c.wrong_secret + c.wrong_other + c.wrong_version + c.missing + c.unexpected, 0);
	EXPECT_TRUE(db->waitFor("SELECT state = 'retired' FROM pgkm.key_status WHERE key_name = "
							"'crash' AND version = 2",
							10s))
		<< "version 2 is " << VersionState(*db, "crash", 2);
	// No job was left behind in 'running' or 'pending'.
	EXPECT_EQ(db->value("SELECT count(*) FROM pgkm.rotation_jobs WHERE state <> 'done'"), "0");
}

} // namespace pgkm::it
