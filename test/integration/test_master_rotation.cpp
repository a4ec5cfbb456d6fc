// IntegrationMasterRotation: the master key is rotated twice while sessions decrypt (one
// encrypts, one connects anew each time) in a loop. No session sees an error; afterwards a new
// backend decrypts everything, the oldest master key can be retired, and every DEK is wrapped by
// the newest.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

namespace pgkm::it
{

namespace
{

constexpr long long kRows = 5000;

struct LoopLog
{
	std::atomic<long long> loops{0};
	std::atomic<bool> failed{false};
	std::vector<std::string> errors; // read only after the thread ended

	void fail(std::string error)
	{
		errors.push_back(std::move(error));
		failed = true;
	}
};

// Decrypts the whole table in a loop, each time a fresh SELECT, and checks every value.
void Decryptor(const std::string &conninfo, std::atomic<bool> &stop, LoopLog &log)
{
	try
	{
		Connection db(conninfo);
		while (!stop.load())
		{
			Result r = db.query("SELECT count(*), count(*) FILTER (WHERE pgkm_decrypt_text(secret, "
								"id::text) = " +
								SecretSql("id", "0") + ") FROM t");
			if (!r.ok())
				log.fail(r.sqlstate() + " " + r.message());
			else if (r.get(0, 0) != std::to_string(kRows) || r.get(0, 1) != std::to_string(kRows))
				log.fail("rows " + r.get(0, 0) + ", correct " + r.get(0, 1));
			if (log.errors.size() > 10)
				return;
			++log.loops;
		}
	}
	catch (const std::exception &e)
	{
		log.fail(e.what());
	}
}

// Opens a new backend in a loop (nothing cached: it unwraps through the token, possibly
// while the master key changes) and decrypts rows under every DEK.
void Connector(const std::string &conninfo, std::atomic<bool> &stop, LoopLog &log)
{
	try
	{
		while (!stop.load())
		{
			Connection db(conninfo);
			Result r =
				db.query("SELECT count(*) FILTER (WHERE pgkm_decrypt_text(secret, id::text) = " +
							 SecretSql("id", "0") + ") FROM t WHERE id <= 50 OR id > $1::int - 50",
						 {std::to_string(kRows)});
			if (!r.ok())
				log.fail(r.sqlstate() + " " + r.message());
			else if (r.get(0, 0) != "100")
				log.fail("correct: " + r.get(0, 0) + " of 100");
			if (log.errors.size() > 10)
				return;
			++log.loops;
		}
	}
	catch (const std::exception &e)
	{
		log.fail(e.what());
	}
}

// Encrypts new rows (under both keys) in a loop.
void Encryptor(const std::string &conninfo, std::atomic<bool> &stop, LoopLog &log)
{
	try
	{
		Connection db(conninfo);
		for (long long id = 1; !stop.load(); ++id)
		{
			Result r = db.query("INSERT INTO u VALUES ($1::int, pgkm_encrypt($2::text, CASE WHEN "
								"$1::int % 2 = 0 THEN 'mk_a' ELSE 'mk_b' END, $3::text))",
								{std::to_string(id), Secret(id, 0), std::to_string(id)});
			if (!r.ok())
				log.fail(r.sqlstate() + " " + r.message());
			if (log.errors.size() > 10)
				return;
			++log.loops;
		}
	}
	catch (const std::exception &e)
	{
		log.fail(e.what());
	}
}

} // namespace

TEST(IntegrationMasterRotation, RewrapWhileSessionsDecrypt)
{
	Cluster cluster({"pgkm.worker_naptime = 1"});
	cluster.start();
	Connection db = cluster.connect();
	db.exec("CREATE EXTENSION pgkm");
	db.exec("SELECT pgkm.create_key('mk_a')");
	db.exec("SELECT pgkm.create_key('mk_b')");
	// Half the rows under mk_a version 1, half under mk_a version 2, a few under mk_b: several
	// DEKs to re-wrap, and sessions that have all of them cached.
	db.exec("CREATE TABLE t (id int PRIMARY KEY, secret bytea)");
	db.exec("INSERT INTO t SELECT g, pgkm_encrypt(" + SecretSql("g", "0") +
				", 'mk_a', g::text) FROM generate_series(1, $1::int / 2) g",
			{std::to_string(kRows)});
	db.exec("SELECT pgkm.rotate_key('mk_a')");
	db.exec("INSERT INTO t SELECT g, pgkm_encrypt(" + SecretSql("g", "0") +
				", CASE WHEN g % 10 = 0 THEN 'mk_b' ELSE 'mk_a' END, g::text) "
				"FROM generate_series($1::int / 2 + 1, $1::int) g",
			{std::to_string(kRows)});
	db.exec("CREATE TABLE u (id int PRIMARY KEY, secret bytea)");
	ASSERT_EQ(db.value("SELECT label FROM pgkm.master_keys WHERE state = 'active'"),
			  "pgkm-master.v1");
	EXPECT_EQ(db.value("SELECT count(DISTINCT (pgkm_ciphertext_info(secret)).key_version) FROM t "
					   "WHERE (pgkm_ciphertext_info(secret)).key_name = 'mk_a'"),
			  "2");

	std::atomic<bool> stop{false};
	std::vector<LoopLog> logs(5);
	std::string label2, label3;
	{
		std::vector<std::jthread> threads;
		for (int i = 0; i < 3; ++i)
			threads.emplace_back(Decryptor, cluster.conninfo(), std::ref(stop), std::ref(logs[i]));
		threads.emplace_back(Encryptor, cluster.conninfo(), std::ref(stop), std::ref(logs[3]));
		threads.emplace_back(Connector, cluster.conninfo(), std::ref(stop), std::ref(logs[4]));
		// Each session makes progress (five more loops) between the steps, or has failed.
		auto progress = [&]
		{
			std::vector<long long> from;
			for (auto &log : logs)
				from.push_back(log.loops.load());
			return WaitUntil(
				[&]
				{
					for (size_t i = 0; i < logs.size(); ++i)
						if (logs[i].loops.load() < from[i] + 5 && !logs[i].failed.load())
							return false;
					return true;
				},
				60s, 10ms);
		};
		EXPECT_TRUE(progress()) << "sessions made no progress";
		label2 = db.value("SELECT pgkm.rotate_master_key()");
		Note("rotated the master key to " + label2);
		EXPECT_TRUE(progress()) << "sessions made no progress after the first rotation";
		label3 = db.value("SELECT pgkm.rotate_master_key()");
		Note("rotated the master key to " + label3);
		EXPECT_TRUE(progress()) << "sessions made no progress after the second rotation";
		// Retiring the oldest master key while the sessions go on.
		Result retire = db.query("SELECT pgkm.retire_master_key('pgkm-master.v1')");
		EXPECT_TRUE(retire.ok()) << retire.sqlstate() << " " << retire.message();
		EXPECT_TRUE(progress()) << "sessions made no progress after retiring v1";
		stop = true;
	}
	for (size_t i = 0; i < logs.size(); ++i)
	{
		EXPECT_TRUE(logs[i].errors.empty())
			<< "session " << i << " saw " << logs[i].errors.size()
			<< " errors, first: " << (logs[i].errors.empty() ? "" : logs[i].errors.front());
		EXPECT_GE(logs[i].loops.load(), 20) << "session " << i;
	}
	EXPECT_EQ(label2, "pgkm-master.v2");
	EXPECT_EQ(label3, "pgkm-master.v3");

	// A new backend (nothing cached) unwraps every DEK under the newest master key.
	Connection fresh = cluster.connect();
	EXPECT_EQ(fresh.value("SELECT count(*) FILTER (WHERE pgkm_decrypt_text(secret, id::text) = " +
						  SecretSql("id", "0") + ") FROM t"),
			  std::to_string(kRows));
	long long encrypted = fresh.intValue("SELECT count(*) FROM u");
	EXPECT_EQ(fresh.value("SELECT count(*) FILTER (WHERE pgkm_decrypt_text(secret, id::text) = " +
						  SecretSql("id", "0") + ") FROM u"),
			  std::to_string(encrypted));

	// Every wrapped DEK is wrapped by the newest master key; the states say so.
	EXPECT_EQ(fresh.value("SELECT count(*) FROM pgkm.key_versions v JOIN pgkm.master_keys m "
						  "USING (master_key_id) WHERE v.wrapped_dek IS NOT NULL AND m.label <> $1",
						  {label3}),
			  "0");
	EXPECT_EQ(fresh.value("SELECT count(*) FROM pgkm.key_versions WHERE wrapped_dek IS NOT NULL"),
			  "3");
	EXPECT_EQ(fresh.value("SELECT string_agg(label || ':' || state, ',' ORDER BY label) FROM "
						  "pgkm.master_keys"),
			  "pgkm-master.v1:retired,pgkm-master.v2:previous,pgkm-master.v3:active");
	EXPECT_EQ(fresh.value("SELECT count(*) FROM pgkm.key_status WHERE master_key IS DISTINCT "
						  "FROM $1 AND state <> 'destroyed'",
						  {label3}),
			  "0");

	// The active master key cannot be retired; v2 can, and everything still decrypts.
	Result active = fresh.query("SELECT pgkm.retire_master_key($1)", {label3});
	EXPECT_FALSE(active.ok()) << "retiring the active master key was allowed";
	Result retire2 = fresh.query("SELECT pgkm.retire_master_key('pgkm-master.v2')");
	EXPECT_TRUE(retire2.ok()) << retire2.message();
	Connection last = cluster.connect();
	EXPECT_EQ(last.value("SELECT count(*) FILTER (WHERE pgkm_decrypt_text(secret, id::text) = " +
						 SecretSql("id", "0") + ") FROM t"),
			  std::to_string(kRows));
	// A key created now is wrapped by the newest master key.
	last.exec("SELECT pgkm.create_key('mk_c')");
	EXPECT_EQ(last.value("SELECT master_key FROM pgkm.key_status WHERE key_name = 'mk_c'"), label3);
}

} // namespace pgkm::it
