// Helpers shared by the integration tests: table loading, expected values, jobs, workers.
#pragma once

#include "cluster.hpp"

#include <gtest/gtest.h>

#include <map>
#include <string>

namespace pgkm::it
{

// The plaintext a test expects in row id after `generation` writes of the secret column.
inline std::string Secret(long long id, long long generation)
{
	return "secret-" + std::to_string(id) + "." + std::to_string(generation);
}

// The same, as an SQL expression over column id and a generation expression.
inline std::string SecretSql(const std::string &id, const std::string &generation)
{
	return "'secret-' || " + id + " || '.' || " + generation;
}

// Creates table(id int primary key, secret bytea, other int) with rows 1..rows, the secret
// of each row being Secret(id, 0) encrypted under key with context id::text.
inline void LoadTable(Connection &db, const std::string &table, long long rows,
					  const std::string &key)
{
	db.exec("CREATE TABLE " + table + " (id int PRIMARY KEY, secret bytea, other int NOT NULL)");
	db.exec("INSERT INTO " + table + " SELECT g, pgkm_encrypt(" + SecretSql("g", "0") + ", $1, " +
				"g::text), 0 FROM generate_series(1, $2::int) g",
			{key, std::to_string(rows)});
	db.exec("ANALYZE " + table);
}

// Creates the extension and a key; starts nothing else.
inline void SetUpExtension(Connection &db, const std::string &key)
{
	db.exec("CREATE EXTENSION pgkm");
	db.exec("SELECT pgkm.create_key($1)", {key});
}

// The open job of a table's column (latest), or 0.
inline long long LatestJob(Connection &db, const std::string &table)
{
	auto v = db.valueOrNull("SELECT max(job_id) FROM pgkm.rotation_jobs WHERE table_name = "
							"$1::regclass",
							{table});
	return v ? std::stoll(*v) : 0;
}

struct JobSnapshot
{
	std::string state;
	std::string phase;
	long long rows_done = 0;
	long long rows_total = -1;
	long long last_key = -1; // -1: NULL
	long long target_version = 0;
	std::string error;
};

inline JobSnapshot ReadJob(Connection &db, long long job)
{
	Result r = db.exec("SELECT state, phase, rows_done, coalesce(rows_total, -1), "
					   "coalesce(last_key::bigint, -1), target_version, coalesce(error, '') "
					   "FROM pgkm.rotation_jobs WHERE job_id = $1",
					   {std::to_string(job)});
	if (r.rows() != 1)
		throw std::runtime_error("no job " + std::to_string(job));
	JobSnapshot s;
	s.state = r.get(0, 0);
	s.phase = r.get(0, 1);
	s.rows_done = r.getInt(0, 2);
	s.rows_total = r.getInt(0, 3);
	s.last_key = r.getInt(0, 4);
	s.target_version = r.getInt(0, 5);
	s.error = r.get(0, 6);
	return s;
}

inline std::string Describe(const JobSnapshot &s)
{
	return "state=" + s.state + " phase=" + s.phase + " rows_done=" + std::to_string(s.rows_done) +
		   " rows_total=" + std::to_string(s.rows_total) +
		   " last_key=" + std::to_string(s.last_key) + (s.error.empty() ? "" : " error=" + s.error);
}

// Waits until the job is in a final state (done, failed, cancelled); returns its snapshot.
inline JobSnapshot WaitJobFinished(Connection &db, long long job, std::chrono::milliseconds timeout)
{
	JobSnapshot s;
	WaitUntil(
		[&]
		{
			s = ReadJob(db, job);
			return s.state == "done" || s.state == "failed" || s.state == "cancelled";
		},
		timeout, 200ms);
	return s;
}

// Pid of this database's pgkm worker, 0 if none.
inline int WorkerPid(Connection &db, const std::string &datname = "")
{
	auto v = db.valueOrNull("SELECT min(pid) FROM pg_stat_activity WHERE backend_type = "
							"'pgkm worker' AND datname = coalesce(nullif($1, ''), "
							"current_database())",
							{datname});
	return v ? std::stoi(*v) : 0;
}

// Number of pgkm workers of a database.
inline long long WorkerCount(Connection &db, const std::string &datname)
{
	return db.intValue("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgkm worker' "
					   "AND datname = $1",
					   {datname});
}

// Waits for a worker of the database (optionally with a pid other than not_pid); returns
// its pid or 0 after the timeout.
inline int WaitForWorker(Connection &db, std::chrono::milliseconds timeout, int not_pid = 0,
						 const std::string &datname = "")
{
	int pid = 0;
	WaitUntil(
		[&]
		{
			pid = WorkerPid(db, datname);
			return pid != 0 && pid != not_pid;
		},
		timeout, 100ms);
	return pid != not_pid ? pid : 0;
}

// State of one key version in pgkm.key_status, "" if absent.
inline std::string VersionState(Connection &db, const std::string &key, int version)
{
	auto v =
		db.valueOrNull("SELECT state FROM pgkm.key_status WHERE key_name = $1 AND version = $2",
					   {key, std::to_string(version)});
	return v.value_or("");
}

// Rows of the table whose secret does not decrypt to its expected value, with the
// expected secrets given by generation per id (missing ids: generation 0) and the expected
// `other` values; also counts rows whose ciphertext version differs from version (when
// version > 0). Reports up to max_report mismatches through ADD_FAILURE.
struct RowCheck
{
	long long rows = 0;
	long long wrong_secret = 0;
	long long wrong_other = 0;
	long long wrong_version = 0;
	long long missing = 0;
	long long unexpected = 0;
};

inline RowCheck CheckRows(Connection &db, const std::string &table,
						  const std::map<long long, std::pair<long long, long long>> &expected,
						  long long version, int max_report = 10)
{
	// expected: id -> (generation, other)
	RowCheck c;
	Result r = db.exec(std::string("SELECT id, pgkm_decrypt_text(secret, id::text), other, ") +
					   (version > 0 ? "pgkm.ciphertext_version(secret)" : "0") + " FROM " + table +
					   " ORDER BY id");
	int reported = 0;
	auto report = [&](const std::string &what)
	{
		if (reported++ < max_report)
			ADD_FAILURE() << table << ": " << what;
	};
	auto it = expected.begin();
	for (int i = 0; i < r.rows(); ++i)
	{
		long long id = r.getInt(i, 0);
		while (it != expected.end() && it->first < id)
		{
			++c.missing;
			report("row " + std::to_string(it->first) + " is missing");
			++it;
		}
		if (it == expected.end() || it->first != id)
		{
			++c.unexpected;
			report("unexpected row " + std::to_string(id));
			continue;
		}
		++c.rows;
		std::string want = Secret(id, it->second.first);
		std::string got = r.get(i, 1);
		if (got != want)
		{
			++c.wrong_secret;
			report("row " + std::to_string(id) + " decrypts to '" + got + "', expected '" + want +
				   "'");
		}
		if (r.getInt(i, 2) != it->second.second)
		{
			++c.wrong_other;
			report("row " + std::to_string(id) + " has other = " + r.get(i, 2) + ", expected " +
				   std::to_string(it->second.second));
		}
		if (version > 0 && r.getInt(i, 3) != version)
		{
			++c.wrong_version;
			report("row " + std::to_string(id) + " is under version " + r.get(i, 3) +
				   ", expected " + std::to_string(version));
		}
		++it;
	}
	for (; it != expected.end(); ++it)
	{
		++c.missing;
		report("row " + std::to_string(it->first) + " is missing");
	}
	return c;
}

// expected map for rows 1..n at generation 0, other 0.
inline std::map<long long, std::pair<long long, long long>> BaseExpectation(long long rows)
{
	std::map<long long, std::pair<long long, long long>> m;
	for (long long id = 1; id <= rows; ++id)
		m.emplace_hint(m.end(), id, std::make_pair(0LL, 0LL));
	return m;
}

} // namespace pgkm::it
