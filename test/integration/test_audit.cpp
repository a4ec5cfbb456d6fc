// Audit*: the access audit of pgkm 1.2 (pgkm.audit_log) against a real server: denied and
// failed calls are logged across a rollback, concurrent decrypts are counted exactly at row
// and statement level, sync durability survives an immediate shutdown, async loss stays within
// the ring, tampering is detected at the first broken link, and a hot standby writes its
// records to the server log and the JSON-lines file.
#include "helpers.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

namespace pgkm::it
{

namespace
{

// One decrypt of one row of table t (LoadTable's layout).
const std::string kDecryptOne =
	"SELECT pgkm_decrypt_text(secret, id::text) FROM t WHERE id = $1::int";

// The row_context a row-level record carries for the row's ciphertext: its 12-byte nonce,
// which follows the 10-byte header (include/pgkm/core/format.hpp: kHeaderSize). The spec's
// "substring(ct from 9 for 12)" would take the key version's last two bytes instead.
const std::string kNonceOf = "'nonce:' || encode(substring(secret from 11 for 12), 'hex')";

// The join condition of a record (alias a) and the rows (of t) whose row contexts it lists: a
// session's uses of one statement gather in one record, up to 48 row contexts.
// How many row-level uses one record gathers at most (kAuditRowContexts): an async crash
// loses at most pgkm.audit_ring_size records, so at most this many times as many uses.
constexpr long long kRowContextsPerRecord = 48;

const std::string kListsRow = kNonceOf + " = ANY (string_to_array(a.row_context, ' '))";

// The conninfo of a cluster for another role (trust authentication: no password).
std::string ConninfoAs(const Cluster &cluster, const std::string &role)
{
	std::string info = cluster.conninfo();
	const std::string user = "user=postgres";
	auto pos = info.find(user);
	if (pos == std::string::npos)
		throw std::runtime_error("no user in conninfo: " + info);
	return info.replace(pos, user.size(), "user=" + role);
}

// Checks that a statement fails with the given SQLSTATE.
::testing::AssertionResult FailsWith(Connection &db, const std::string &sql,
									 const std::string &sqlstate, const Params &params = {})
{
	Result r = db.query(sql, params);
	if (r.ok())
		return ::testing::AssertionFailure() << "succeeded: " << sql;
	if (r.sqlstate() != sqlstate)
		return ::testing::AssertionFailure()
			   << "failed with " << r.sqlstate() << " (" << r.message() << "), expected "
			   << sqlstate << ": " << sql;
	return ::testing::AssertionSuccess();
}

// Waits until the worker has committed every record queued so far; returns the newest seq.
long long Flush(Connection &db, bool seal = false)
{
	return db.intValue(std::string("SELECT pgkm.audit_flush(") + (seal ? "true" : "false") + ")");
}

// One row of pgkm.verify_audit_log(); -1 stands for NULL.
struct Verification
{
	bool ok = false;
	long long records = -1;
	long long checkpoints = -1;
	long long first_seq = -1;
	long long last_seq = -1;
	long long sealed_through = -1;
	long long broken_seq = -1;
	std::string problem;
};

// Runs pgkm.verify_audit_log().
Verification Verify(Connection &db)
{
	Result r = db.exec("SELECT ok, records, checkpoints, first_seq, last_seq, sealed_through, "
					   "broken_seq, problem FROM pgkm.verify_audit_log()");
	if (r.rows() != 1)
		throw std::runtime_error("verify_audit_log() returned " + std::to_string(r.rows()) +
								 " rows");
	auto num = [&](int col) { return r.isNull(0, col) ? -1 : r.getInt(0, col); };
	Verification v;
	v.ok = r.get(0, 0) == "t";
	v.records = num(1);
	v.checkpoints = num(2);
	v.first_seq = num(3);
	v.last_seq = num(4);
	v.sealed_through = num(5);
	v.broken_seq = num(6);
	v.problem = r.isNull(0, 7) ? "" : r.get(0, 7);
	return v;
}

// A verification as one line, for messages.
std::string Describe(const Verification &v)
{
	return std::string("ok=") + (v.ok ? "t" : "f") + " records=" + std::to_string(v.records) +
		   " checkpoints=" + std::to_string(v.checkpoints) +
		   " seqs=" + std::to_string(v.first_seq) + ".." + std::to_string(v.last_seq) +
		   " sealed_through=" + std::to_string(v.sealed_through) +
		   " broken_seq=" + std::to_string(v.broken_seq) + " problem=" + v.problem;
}

// Checks that the chain verifies: ok, no broken link, no problem.
::testing::AssertionResult Intact(Connection &db)
{
	Verification v = Verify(db);
	if (v.ok && v.broken_seq == -1 && v.problem.empty())
		return ::testing::AssertionSuccess();
	return ::testing::AssertionFailure() << "verify_audit_log: " << Describe(v);
}

// Checks that the chain does not verify and names broken_seq (or one of accepted) as the first
// broken link; notes the problem reported.
::testing::AssertionResult BrokenAt(Connection &db, const std::string &what,
									std::vector<long long> accepted)
{
	Verification v = Verify(db);
	Note(what + ": " + Describe(v));
	if (v.ok)
		return ::testing::AssertionFailure() << what << ": not detected: " << Describe(v);
	if (v.problem.empty())
		return ::testing::AssertionFailure() << what << ": no problem named: " << Describe(v);
	for (long long seq : accepted)
		if (v.broken_seq == seq)
			return ::testing::AssertionSuccess();
	return ::testing::AssertionFailure()
		   << what << ": broken_seq " << v.broken_seq << ", expected " << accepted.front()
		   << (accepted.size() > 1 ? " (or " + std::to_string(accepted.back()) + ")" : "") << ": "
		   << Describe(v);
}

// Checks that the log's seqs run from 1 with neither gap nor duplicate.
::testing::AssertionResult Gapless(Connection &db)
{
	Result r = db.exec("SELECT count(*), count(DISTINCT seq), coalesce(min(seq), 0), "
					   "coalesce(max(seq), 0) FROM pgkm.audit_log");
	long long count = r.getInt(0, 0), distinct = r.getInt(0, 1);
	long long min = r.getInt(0, 2), max = r.getInt(0, 3);
	if (count > 0 && count == distinct && min == 1 && max - min + 1 == count)
		return ::testing::AssertionSuccess();
	return ::testing::AssertionFailure() << "seqs " << min << ".." << max << ": " << count
										 << " records, " << distinct << " distinct seqs";
}

// What one client thread did: its backend, its statements, and what went wrong.
struct ClientLog
{
	int pid = 0;
	long long statements = 0;
	long long decrypts = 0;
	std::vector<std::string> errors;
};

// Decrypts rows first..last of t, in statements of 1, 2, ..., max_batch rows in turn, at the
// given audit level; checks every plaintext.
void DecryptClient(const std::string &conninfo, const std::string &level, long long first,
				   long long last, int max_batch, bool gather, ClientLog &log)
{
	try
	{
		Connection db(conninfo);
		log.pid = db.backendPid();
		db.exec("SET pgkm.audit_level = " + level);
		db.exec(std::string("SET pgkm.audit_gather = ") + (gather ? "on" : "off"));
		int batch = 1;
		for (long long from = first; from <= last;)
		{
			long long to = std::min(last, from + batch - 1);
			Result r = db.query("SELECT id, pgkm_decrypt_text(secret, id::text) FROM t WHERE id "
								"BETWEEN $1::int AND $2::int ORDER BY id",
								{std::to_string(from), std::to_string(to)});
			if (!r.ok() || r.rows() != to - from + 1)
			{
				log.errors.push_back("rows " + std::to_string(from) + ".." + std::to_string(to) +
									 ": " +
									 (r.ok() ? std::to_string(r.rows()) + " rows" : r.message()));
				if (log.errors.size() > 10)
					return;
			}
			else
			{
				for (int i = 0; i < r.rows(); ++i)
					if (r.get(i, 1) != Secret(r.getInt(i, 0), 0))
						log.errors.push_back("row " + r.get(i, 0) + " decrypts to " + r.get(i, 1));
				++log.statements;
				log.decrypts += r.rows();
			}
			from = to + 1;
			batch = batch % max_batch + 1;
		}
	}
	catch (const std::exception &e)
	{
		log.errors.push_back(e.what());
	}
}

// Runs clients threads over rows 1..rows of t (a contiguous share each); returns their logs.
std::vector<ClientLog> RunClients(const Cluster &cluster, const std::string &level, long long rows,
								  int clients, int max_batch, bool gather = true)
{
	std::vector<ClientLog> logs(clients);
	{
		std::vector<std::jthread> threads;
		long long share = rows / clients;
		for (int i = 0; i < clients; ++i)
			threads.emplace_back(DecryptClient, cluster.conninfo(), level, i * share + 1,
								 (i + 1) * share, max_batch, gather, std::ref(logs[i]));
	}
	for (const auto &log : logs)
		for (const auto &e : log.errors)
			ADD_FAILURE() << "client " << log.pid << ": " << e;
	return logs;
}

// Sends a statement without waiting for its result (see Arrived and Collect).
void Send(Connection &db, const std::string &sql, const Params &params)
{
	std::vector<const char *> values;
	for (const auto &p : params)
		values.push_back(p.c_str());
	if (!PQsendQueryParams(db.raw(), sql.c_str(), static_cast<int>(values.size()), nullptr,
						   values.data(), nullptr, nullptr, 0))
		throw PgError(std::string("cannot send: ") + PQerrorMessage(db.raw()), "");
}

// True once the result of a sent statement has arrived (never blocks).
bool Arrived(Connection &db)
{
	if (!PQconsumeInput(db.raw()))
		throw PgError(std::string("connection lost: ") + PQerrorMessage(db.raw()), "");
	return !PQisBusy(db.raw());
}

// The result of a sent statement; leaves the connection ready for the next one.
Result Collect(Connection &db)
{
	Result first(PQgetResult(db.raw()));
	while (PGresult *more = PQgetResult(db.raw()))
		PQclear(more);
	return first;
}

// The JSON payloads of the `pgkm_audit: {...}` lines of a server log, parsed; lines that do
// not parse are reported through ADD_FAILURE.
std::vector<nlohmann::json> AuditLogLines(const std::string &log)
{
	const std::string tag = "pgkm_audit: ";
	std::vector<nlohmann::json> out;
	std::istringstream in(log);
	std::string line;
	while (std::getline(in, line))
	{
		auto pos = line.find(tag + "{");
		if (pos == std::string::npos)
			continue;
		std::string payload = line.substr(pos + tag.size());
		try
		{
			out.push_back(nlohmann::json::parse(payload));
		}
		catch (const std::exception &e)
		{
			ADD_FAILURE() << "server log line is not JSON (" << e.what() << "): " << line;
		}
	}
	return out;
}

// A string field of a JSON record, "" if absent or not a string.
std::string Field(const nlohmann::json &record, const std::string &name)
{
	auto it = record.find(name);
	return it != record.end() && it->is_string() ? it->get<std::string>() : "";
}

// True if a JSON record is a decrypt of key with row_count rows (0: any).
bool IsDecryptOf(const nlohmann::json &record, const std::string &key, long long row_count = 0)
{
	if (!record.is_object() || Field(record, "action") != "decrypt" ||
		Field(record, "key_name") != key)
		return false;
	if (row_count == 0)
		return true;
	auto it = record.find("row_count");
	if (it == record.end())
		return false;
	if (it->is_number_integer())
		return it->get<long long>() == row_count;
	return Field(record, "row_count") == std::to_string(row_count);
}

} // namespace

// A denied decrypt (42501), a failed decrypt (22000) and successful decrypts are all logged
// although their transactions roll back: the worker writes records in its own transactions.
TEST(AuditAcrossAbort, DeniedFailedAndRolledBackDecryptsAreLogged)
{
	Cluster cluster;
	cluster.start();
	Connection db = cluster.connect();
	SetUpExtension(db, "abort_key");
	LoadTable(db, "t", 10, "abort_key");
	db.exec("CREATE ROLE audit_clerk LOGIN");
	db.exec("GRANT SELECT ON t TO audit_clerk");
	Flush(db);

	// A role without the decrypt role, inside a transaction that rolls back.
	{
		Connection clerk(ConninfoAs(cluster, "audit_clerk"));
		int clerk_pid = clerk.backendPid();
		clerk.exec("BEGIN");
		EXPECT_TRUE(FailsWith(clerk, kDecryptOne, "42501", {"1"}));
		clerk.exec("ROLLBACK");
		Flush(db);
		Result r = db.exec("SELECT sqlstate, success, key_name, session_user_name, backend_pid, "
						   "detail FROM pgkm.audit_log WHERE action = 'denied'");
		ASSERT_EQ(r.rows(), 1) << "denied records after the rollback";
		EXPECT_EQ(r.get(0, 0), "42501");
		EXPECT_EQ(r.get(0, 1), "f");
		EXPECT_EQ(r.get(0, 2), "abort_key");
		EXPECT_EQ(r.get(0, 3), "audit_clerk");
		EXPECT_EQ(r.getInt(0, 4), clerk_pid);
		EXPECT_EQ(r.get(0, 5).rfind("decrypt: ", 0), 0u) << "detail: " << r.get(0, 5);
	}

	// Successful decrypts in transactions that roll back: explicitly, or after an error.
	int pid = db.backendPid();
	db.exec("BEGIN");
	EXPECT_EQ(db.value(kDecryptOne, {"2"}), Secret(2, 0));
	db.exec("ROLLBACK");
	db.exec("BEGIN");
	EXPECT_EQ(db.value(kDecryptOne, {"3"}), Secret(3, 0));
	EXPECT_TRUE(FailsWith(db, "SELECT 1 / 0", "22012"));
	db.exec("ROLLBACK");

	// A wrong context fails authentication (22000), again in a transaction that rolls back.
	db.exec("BEGIN");
	EXPECT_TRUE(FailsWith(db, "SELECT pgkm_decrypt_text(secret, 'zq-ctx-91') FROM t WHERE id = 4",
						  "22000"));
	db.exec("ROLLBACK");
	Flush(db);

	Result ok = db.exec("SELECT count(*), coalesce(sum(row_count), 0), bool_and(success), "
						"bool_and(backend_pid = $1) FROM pgkm.audit_log WHERE action = 'decrypt' "
						"AND key_name = 'abort_key'",
						{std::to_string(pid)});
	// The two uses may share one record (same statement, before the worker took it).
	EXPECT_GE(std::stoll(ok.get(0, 0)), 1) << "decrypt records of the two rolled-back transactions";
	EXPECT_EQ(ok.get(0, 1), "2") << "uses in the two rolled-back transactions";
	EXPECT_EQ(ok.get(0, 2), "t");
	EXPECT_EQ(ok.get(0, 3), "t");

	Result failed = db.exec("SELECT sqlstate, success, key_name, detail FROM pgkm.audit_log "
							"WHERE action = 'failed'");
	ASSERT_EQ(failed.rows(), 1) << "failed records after the rollback";
	EXPECT_EQ(failed.get(0, 0), "22000");
	EXPECT_EQ(failed.get(0, 1), "f");
	EXPECT_EQ(failed.get(0, 2), "abort_key");
	EXPECT_EQ(failed.get(0, 3).rfind("decrypt: ", 0), 0u) << "detail: " << failed.get(0, 3);
	// Neither the plaintext nor the context reaches the log.
	EXPECT_EQ(db.value("SELECT count(*) FROM pgkm.audit_log WHERE concat_ws(' ', detail, "
					   "row_context, relation, column_name) ~ '(secret-|zq-ctx)'"),
			  "0");
	EXPECT_TRUE(Intact(db));
	EXPECT_TRUE(Gapless(db));
}

// Four clients decrypt 10,000 rows, one statement per row at audit_level row, then 10,000
// rows in statements of 1 to 4 rows at audit_level statement: the log counts every use
// exactly, locates each row-level use by its nonce, and the chain stays gapless and intact.
TEST(AuditConcurrentExact, RowAndStatementCountsAreExact)
{
	constexpr long long kRows = 10000;
	constexpr int kClients = 4;
	Cluster cluster;
	cluster.start();
	Connection db = cluster.connect();
	SetUpExtension(db, "cc_row");
	LoadTable(db, "t", kRows, "cc_row");
	Flush(db);

	// Row level: one record per use, each naming its row by the ciphertext's nonce.
	auto started = Clock::now();
	std::vector<ClientLog> logs = RunClients(cluster, "row", kRows, kClients, 1);
	long long statements = 0;
	for (const auto &log : logs)
		statements += log.statements;
	ASSERT_EQ(statements, kRows);
	Flush(db);
	Note(
		"row level: " + std::to_string(kRows) + " decrypts logged in " +
		std::to_string(
			std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count()) +
		" ms");
	// Every use's row context is listed once, in a record of its own backend; each record's
	// row_count is the number of contexts it lists.
	Result row = db.exec(
		"WITH c AS (SELECT seq, backend_pid, row_count, success, key_version, ctx"
		"  FROM pgkm.audit_log, unnest(string_to_array(row_context, ' ')) AS ctx"
		"  WHERE action = 'decrypt' AND key_name = 'cc_row')"
		" SELECT count(*), (SELECT sum(row_count) FROM pgkm.audit_log WHERE action = 'decrypt'"
		"  AND key_name = 'cc_row'), count(DISTINCT ctx),"
		" count(*) FILTER (WHERE ctx ~ '^nonce:[0-9a-f]{24}$'),"
		" count(*) FILTER (WHERE success AND key_version = 1), count(DISTINCT backend_pid)"
		" FROM c");
	EXPECT_EQ(row.getInt(0, 0), kRows) << "row contexts at audit_level row";
	EXPECT_EQ(row.getInt(0, 1), kRows) << "sum of row_count";
	EXPECT_EQ(row.getInt(0, 2), kRows) << "distinct row contexts";
	EXPECT_EQ(row.getInt(0, 3), kRows) << "row contexts of the form nonce:<24 hex digits>";
	EXPECT_EQ(row.getInt(0, 4), kRows) << "successful uses under version 1";
	EXPECT_EQ(row.getInt(0, 5), kClients) << "distinct backends";
	EXPECT_EQ(db.intValue("SELECT count(*) FROM pgkm.audit_log WHERE action = 'decrypt' AND "
						  "key_name = 'cc_row' AND row_count <> "
						  "cardinality(string_to_array(row_context, ' '))"),
			  0)
		<< "records whose row_count differs from the row contexts they list";
	EXPECT_EQ(db.intValue("SELECT count(*) FROM pgkm.audit_log a JOIN t ON " + kListsRow +
						  " WHERE a.action = 'decrypt' AND a.key_name = 'cc_row'"),
			  kRows)
		<< "row contexts that are the nonce of a row of t";
	for (const auto &log : logs)
		EXPECT_EQ(db.intValue("SELECT coalesce(sum(row_count), 0) FROM pgkm.audit_log WHERE "
							  "action = 'decrypt' AND key_name = 'cc_row' AND backend_pid = $1",
							  {std::to_string(log.pid)}),
				  kRows / kClients)
			<< "uses recorded for client " << log.pid;

	// Statement level, a fresh key: one record per statement, counting its uses.
	db.exec("DROP TABLE t");
	db.exec("SELECT pgkm.create_key('cc_stmt')");
	LoadTable(db, "t", kRows, "cc_stmt");
	Flush(db);
	logs = RunClients(cluster, "statement", kRows, kClients, 4);
	statements = 0;
	long long decrypts = 0;
	for (const auto &log : logs)
	{
		statements += log.statements;
		decrypts += log.decrypts;
	}
	ASSERT_EQ(decrypts, kRows);
	ASSERT_EQ(statements, kRows * 4 / 10); // sizes 1, 2, 3, 4 in turn
	Flush(db);
	Result stmt =
		db.exec("SELECT count(*), coalesce(sum(row_count), 0), count(row_context), "
				"count(*) FILTER (WHERE row_count = 1), count(*) FILTER (WHERE row_count = 4) "
				"FROM pgkm.audit_log WHERE action = 'decrypt' AND key_name = 'cc_stmt'");
	// A session's executions of one statement gather in one record until the worker takes
	// it: at most one record per statement, and the counts add up exactly.
	EXPECT_GE(stmt.getInt(0, 0), 1) << "records at audit_level statement";
	EXPECT_LE(stmt.getInt(0, 0), statements) << "records at audit_level statement";
	EXPECT_EQ(stmt.getInt(0, 1), kRows) << "sum of row_count";
	EXPECT_EQ(stmt.getInt(0, 2), 0) << "row contexts at statement level";
	Note("statement level: " + std::to_string(statements) + " statements, " +
		 std::to_string(stmt.getInt(0, 0)) + " records");

	// Without gathering, exactly one record per use at row level and one per statement at
	// statement level.
	for (const std::string level : {"row", "statement"})
	{
		const std::string key = "cc_exact_" + level;
		db.exec("DROP TABLE t");
		db.exec("SELECT pgkm.create_key($1)", {key});
		LoadTable(db, "t", kRows, key);
		Flush(db);
		int batch = level == "row" ? 1 : 4;
		logs = RunClients(cluster, level, kRows, kClients, batch, false);
		long long executed = 0;
		for (const auto &log : logs)
			executed += log.statements;
		Flush(db);
		Result exact = db.exec(
			"SELECT count(*), coalesce(sum(row_count), 0), count(*) FILTER (WHERE row_context ~ "
			"'^nonce:[0-9a-f]{24}$'), count(DISTINCT row_context) FROM pgkm.audit_log WHERE "
			"action = 'decrypt' AND key_name = $1",
			{key});
		EXPECT_EQ(exact.getInt(0, 0), level == "row" ? kRows : executed)
			<< "records at audit_level " << level << " without gathering";
		EXPECT_EQ(exact.getInt(0, 1), kRows) << "sum of row_count at " << level;
		EXPECT_EQ(exact.getInt(0, 2), level == "row" ? kRows : 0) << "single row contexts";
		EXPECT_EQ(exact.getInt(0, 3), level == "row" ? kRows : 0) << "distinct row contexts";
	}

	EXPECT_TRUE(Gapless(db));
	Verification v = Verify(db);
	EXPECT_TRUE(v.ok) << Describe(v);
	EXPECT_EQ(v.records, db.intValue("SELECT count(*) FROM pgkm.audit_log")) << Describe(v);
}

// With pgkm.audit_durability = sync a decrypt returns only once its record is committed:
// another session sees it at once without audit_flush(), and an immediate shutdown right
// after the last decrypt does not lose it.
TEST(AuditSyncSurvivesImmediateShutdown, RecordCommittedBeforePlaintextReturns)
{
	constexpr int kDecrypts = 20;
	Cluster cluster;
	cluster.start();
	std::optional<Connection> db = cluster.connect();
	SetUpExtension(*db, "sync_key");
	LoadTable(*db, "t", kDecrypts, "sync_key");
	Flush(*db);
	Connection observer = cluster.connect();
	db->exec("SET pgkm.audit_durability = sync");
	db->exec("SET pgkm.audit_level = row");
	const std::string pid = std::to_string(db->backendPid());

	// While another session locks the log, the worker cannot commit: a sync decrypt waits
	// (an async one in another session does not), and returns once the lock is released.
	{
		Connection locker = cluster.connect();
		locker.exec("BEGIN");
		locker.exec("LOCK TABLE pgkm.audit_log IN EXCLUSIVE MODE");
		Connection async = cluster.connect();
		EXPECT_EQ(async.value(kDecryptOne, {"2"}), Secret(2, 0))
			<< "an async decrypt while the log is locked";
		Send(*db, kDecryptOne, {"1"});
		EXPECT_FALSE(WaitUntil([&] { return Arrived(*db); }, 2s))
			<< "a sync decrypt returned while its record could not be committed";
		locker.exec("COMMIT");
		ASSERT_TRUE(WaitUntil([&] { return Arrived(*db); }, 30s))
			<< "the sync decrypt did not return 30 s after the log was unlocked";
		Result r = Collect(*db);
		ASSERT_TRUE(r.ok()) << r.message();
		ASSERT_EQ(r.rows(), 1);
		EXPECT_EQ(r.get(0, 0), Secret(1, 0));
	}

	// Each record is in the table as soon as the plaintext is back (no flush).
	for (int id = 1; id < kDecrypts; ++id)
	{
		if (id > 1) // row 1 was decrypted above
		{
			ASSERT_EQ(db->value(kDecryptOne, {std::to_string(id)}), Secret(id, 0));
		}
		EXPECT_EQ(observer.value("SELECT count(*) FROM pgkm.audit_log a JOIN t ON " + kListsRow +
									 " WHERE t.id = $1::int AND a.action = 'decrypt' "
									 "AND a.backend_pid = $2::int",
								 {std::to_string(id), pid}),
				  "1")
			<< "the record of the sync decrypt of row " << id << " is not committed yet";
	}

	// The last decrypt, then at once an immediate shutdown (no shutdown checkpoint).
	ASSERT_EQ(db->value(kDecryptOne, {std::to_string(kDecrypts)}), Secret(kDecrypts, 0));
	cluster.stopImmediate();
	db.reset();
	cluster.start();
	cluster.waitReady(60s);
	Connection again = cluster.connect();
	Result r = again.exec("SELECT count(*), count(DISTINCT t.id), coalesce(max(t.id), 0) "
						  "FROM pgkm.audit_log a JOIN t ON " +
							  kListsRow +
							  " WHERE a.action = 'decrypt' AND a.key_name = 'sync_key' AND "
							  "a.backend_pid = $1::int",
						  {pid});
	EXPECT_EQ(r.getInt(0, 0), kDecrypts) << "sync decrypt records after an immediate shutdown";
	EXPECT_EQ(r.getInt(0, 1), kDecrypts);
	EXPECT_EQ(r.getInt(0, 2), kDecrypts) << "the last decrypt's record is lost";
	EXPECT_TRUE(Intact(again));
	EXPECT_TRUE(Gapless(again));
}

// With async durability an immediate shutdown right after a burst of decrypts loses at most
// pgkm.audit_ring_size records (the spec's bound: only records still in the shared ring are
// lost), and never one that audit_flush() had confirmed. The ring is set to its minimum (64)
// so that the bound is smaller than the burst. Then the same with a worker that cannot commit
// (the log locked by another session): the burst goes on only while the ring has room, so the
// shutdown loses every record of the decrypts that returned, and those are at most the ring.
TEST(AuditAsyncLossBounded, LossWithinRingSize)
{
	constexpr int kBefore = 50;
	constexpr int kBurst = 200;
	Cluster cluster({"pgkm.audit_ring_size = 64"});
	cluster.start();
	std::optional<Connection> db = cluster.connect();
	SetUpExtension(*db, "async_key");
	LoadTable(*db, "t", kBefore + kBurst, "async_key");
	db->exec("SET pgkm.audit_durability = async");
	db->exec("SET pgkm.audit_level = row");
	const long long ring = db->intValue("SHOW pgkm.audit_ring_size");
	EXPECT_EQ(ring, 64);

	for (int id = 1; id <= kBefore; ++id)
		ASSERT_EQ(db->value(kDecryptOne, {std::to_string(id)}), Secret(id, 0));
	const long long flushed = Flush(*db);
	for (int id = kBefore + 1; id <= kBefore + kBurst; ++id)
		ASSERT_EQ(db->value(kDecryptOne, {std::to_string(id)}), Secret(id, 0));
	cluster.stopImmediate();
	db.reset();
	cluster.start();
	cluster.waitReady(60s);
	Connection again = cluster.connect();

	auto survived = [&](int from, int to)
	{
		return again.intValue("SELECT count(*) FROM pgkm.audit_log a JOIN t ON " + kListsRow +
								  " WHERE a.action = 'decrypt' AND a.key_name = 'async_key' "
								  "AND t.id BETWEEN $1::int AND $2::int",
							  {std::to_string(from), std::to_string(to)});
	};
	EXPECT_EQ(survived(1, kBefore), kBefore) << "records confirmed by audit_flush() were lost";
	EXPECT_EQ(again.intValue("SELECT coalesce(sum(row_count), 0) FROM pgkm.audit_log WHERE "
							 "seq <= $1::bigint AND action = 'decrypt'",
							 {std::to_string(flushed)}),
			  kBefore)
		<< "decrypt records up to the seq audit_flush() returned (" << flushed << ")";
	long long burst = survived(kBefore + 1, kBefore + kBurst);
	long long lost = kBurst - burst;
	Note("async: " + std::to_string(burst) + " of " + std::to_string(kBurst) +
		 " burst uses survived an immediate shutdown; lost " + std::to_string(lost) +
		 " (bound: pgkm.audit_ring_size = " + std::to_string(ring) + " records of at most " +
		 std::to_string(kRowContextsPerRecord) + " row-level uses each)");
	EXPECT_GE(lost, 0);
	EXPECT_LE(lost, ring * kRowContextsPerRecord) << "more uses lost than the ring holds";
	EXPECT_TRUE(Intact(again));
	EXPECT_TRUE(Gapless(again));

	// The log locked: decrypts that returned within 3 s, until one waits for room in the ring.
	const std::string mark = again.value("SELECT max(seq) FROM pgkm.audit_log");
	std::optional<Connection> burster = cluster.connect();
	burster->exec("SET pgkm.audit_level = row");
	Connection locker = cluster.connect();
	locker.exec("BEGIN");
	locker.exec("LOCK TABLE pgkm.audit_log IN EXCLUSIVE MODE");
	long long returned = 0;
	for (int id = 1; id <= kBefore + kBurst; ++id)
	{
		Send(*burster, kDecryptOne, {std::to_string(id)});
		if (!WaitUntil([&] { return Arrived(*burster); }, 3s, 5ms))
			break;
		Result r = Collect(*burster);
		ASSERT_TRUE(r.ok()) << r.message();
		++returned;
	}
	EXPECT_GT(returned, 0) << "async decrypts wait for the worker's commit";
	cluster.stopImmediate();
	burster.reset();
	cluster.start();
	cluster.waitReady(60s);
	Connection third = cluster.connect();
	long long kept = third.intValue(
		"SELECT coalesce(sum(row_count), 0) FROM pgkm.audit_log WHERE action = 'decrypt' AND "
		"seq > $1::bigint",
		{mark});
	Note("async, log locked: " + std::to_string(returned) +
		 " decrypts returned before one waited; " + std::to_string(kept) +
		 " of their records survived an immediate shutdown");
	EXPECT_LE(returned - kept, ring * kRowContextsPerRecord)
		<< "more uses lost than the ring holds";
	EXPECT_TRUE(Intact(third));
	EXPECT_TRUE(Gapless(third));
}

// Tampering with the log (as a superuser bypassing the append-only trigger) is detected at
// the first broken link, and undoing it makes the chain verify again. Without the bypass the
// trigger refuses every change, and an ordinary role cannot read the log at all.
TEST(AuditTamperDetected, AlteredMissingInsertedAndReorderedRecords)
{
	constexpr int kDecrypts = 50;
	Cluster cluster;
	cluster.start();
	Connection db = cluster.connect();
	SetUpExtension(db, "tamper_key");
	LoadTable(db, "t", kDecrypts, "tamper_key");
	// A different application_name each time: one record per decrypt (no gathering).
	for (int id = 1; id <= kDecrypts; ++id)
	{
		db.exec("SET application_name = 'tamper" + std::to_string(id) + "'");
		ASSERT_EQ(db.value(kDecryptOne, {std::to_string(id)}), Secret(id, 0));
	}
	Flush(db, true);
	Result seqs = db.exec("SELECT seq FROM pgkm.audit_log WHERE action = 'decrypt' ORDER BY seq");
	ASSERT_EQ(seqs.rows(), kDecrypts);
	const long long last_decrypt = seqs.getInt(kDecrypts - 1, 0);
	Verification before = Verify(db);
	Note("before tampering: " + Describe(before));
	ASSERT_TRUE(before.ok) << Describe(before);
	EXPECT_GE(before.checkpoints, 1) << "audit_flush(true) wrote no checkpoint";
	EXPECT_GE(before.sealed_through, last_decrypt) << Describe(before);
	EXPECT_EQ(before.records, db.intValue("SELECT count(*) FROM pgkm.audit_log"));

	// The append-only trigger stops the superuser too.
	const long long s = seqs.getInt(kDecrypts / 2, 0);
	const std::string s_text = std::to_string(s);
	EXPECT_TRUE(
		FailsWith(db, "UPDATE pgkm.audit_log SET row_count = 2 WHERE seq = $1", "42501", {s_text}));
	EXPECT_TRUE(FailsWith(db, "DELETE FROM pgkm.audit_log WHERE seq = $1", "42501", {s_text}));
	EXPECT_TRUE(FailsWith(db,
						  "INSERT INTO pgkm.audit_log SELECT * FROM pgkm.audit_log WHERE seq = $1",
						  "42501", {s_text}));
	EXPECT_TRUE(FailsWith(db, "TRUNCATE pgkm.audit_log", "42501"));
	EXPECT_EQ(db.intValue("SELECT count(*) FROM pgkm.audit_log"), before.records);
	EXPECT_TRUE(Intact(db));

	// An ordinary role can neither read the log nor call the audit functions.
	db.exec("CREATE ROLE audit_outsider LOGIN");
	{
		Connection outsider(ConninfoAs(cluster, "audit_outsider"));
		EXPECT_TRUE(FailsWith(outsider, "SELECT count(*) FROM pgkm.audit_log", "42501"));
		EXPECT_TRUE(FailsWith(outsider, "SELECT * FROM pgkm.verify_audit_log()", "42501"));
		EXPECT_TRUE(FailsWith(outsider, "SELECT pgkm.audit_flush()", "42501"));
	}

	db.exec("SET session_replication_role = replica");
	db.exec("CREATE TEMP TABLE saved (LIKE pgkm.audit_log)");

	// (a) A field altered, then restored.
	db.exec("UPDATE pgkm.audit_log SET row_count = row_count + 1 WHERE seq = $1", {s_text});
	EXPECT_TRUE(BrokenAt(db, "row_count altered", {s}));
	db.exec("UPDATE pgkm.audit_log SET row_count = row_count - 1 WHERE seq = $1", {s_text});
	EXPECT_TRUE(Intact(db));
	db.exec("UPDATE pgkm.audit_log SET key_name = 'other_key' WHERE seq = $1", {s_text});
	EXPECT_TRUE(BrokenAt(db, "key_name altered", {s}));
	db.exec("UPDATE pgkm.audit_log SET key_name = 'tamper_key' WHERE seq = $1", {s_text});
	EXPECT_TRUE(Intact(db));

	// (b) A record deleted (the first broken link is the missing seq, or the record whose
	// prev_hash no longer matches), then inserted again.
	db.exec("INSERT INTO saved SELECT * FROM pgkm.audit_log WHERE seq = $1", {s_text});
	ASSERT_EQ(db.value("SELECT count(*) FROM saved"), "1");
	EXPECT_EQ(db.query("DELETE FROM pgkm.audit_log WHERE seq = $1", {s_text}).affected(), 1);
	EXPECT_TRUE(BrokenAt(db, "record deleted", {s, s + 1}));
	db.exec("INSERT INTO pgkm.audit_log SELECT * FROM saved");
	EXPECT_TRUE(Intact(db));

	// (c) A copy of a record inserted (duplicate seq), then removed.
	db.exec("INSERT INTO pgkm.audit_log SELECT * FROM saved");
	EXPECT_TRUE(BrokenAt(db, "duplicate inserted", {s}));
	db.exec("DELETE FROM pgkm.audit_log WHERE seq = $1", {s_text});
	db.exec("INSERT INTO pgkm.audit_log SELECT * FROM saved");
	EXPECT_TRUE(Intact(db));

	// (c') A forged record at the end: right seq and prev_hash, hash not computable in SQL.
	const long long head = db.intValue("SELECT max(seq) FROM pgkm.audit_log");
	db.exec("INSERT INTO pgkm.audit_log SELECT seq + 1, at, written_at, database_name, "
			"session_user_name, current_user_name, application_name, client_addr, backend_pid, "
			"'decrypt', 'tamper_key', 1, relation, column_name, 'SELECT', query_id, NULL, 1, "
			"true, NULL, NULL, NULL, NULL, NULL, hash, sha256(hash) FROM pgkm.audit_log WHERE seq "
			"= $1",
			{std::to_string(head)});
	EXPECT_TRUE(BrokenAt(db, "forged record appended", {head + 1}));
	db.exec("DELETE FROM pgkm.audit_log WHERE seq = $1 AND hash = sha256(prev_hash)",
			{std::to_string(head + 1)});
	EXPECT_TRUE(Intact(db));

	// (d) Two records swapped (their seqs exchanged): broken at the smaller seq.
	const long long s2 = seqs.getInt(kDecrypts / 2 + 5, 0);
	const Params swap = {s_text, std::to_string(s2)};
	const std::string swap_sql = "UPDATE pgkm.audit_log SET seq = CASE seq WHEN $1::bigint THEN "
								 "$2::bigint ELSE $1::bigint END WHERE seq IN ($1::bigint, "
								 "$2::bigint)";
	EXPECT_EQ(db.exec(swap_sql, swap).affected(), 2);
	EXPECT_TRUE(BrokenAt(db, "records reordered", {s}));
	EXPECT_EQ(db.exec(swap_sql, swap).affected(), 2);
	EXPECT_TRUE(Intact(db));

	// (e) The newest checkpoint's MAC altered, then restored.
	const std::string checkpoint =
		db.value("SELECT max(seq) FROM pgkm.audit_log WHERE action = 'checkpoint'");
	const std::string mac =
		db.value("SELECT encode(mac, 'hex') FROM pgkm.audit_log WHERE seq = $1", {checkpoint});
	db.exec("UPDATE pgkm.audit_log SET mac = sha256(mac) WHERE seq = $1", {checkpoint});
	EXPECT_TRUE(BrokenAt(db, "checkpoint MAC altered", {std::stoll(checkpoint)}));
	db.exec("UPDATE pgkm.audit_log SET mac = decode($2, 'hex') WHERE seq = $1", {checkpoint, mac});
	EXPECT_TRUE(Intact(db));

	db.exec("RESET session_replication_role");
	EXPECT_EQ(db.intValue("SELECT count(*) FROM pgkm.audit_log WHERE seq <= $1",
						  {std::to_string(before.last_seq)}),
			  before.records);
	EXPECT_TRUE(Gapless(db));
}

// On a hot standby nothing is written to tables: a decrypt there is logged as a
// `pgkm_audit: {json}` line in the server log and, once pgkm.audit_file is set, also as the
// same JSON object on one line of that file.
TEST(AuditStandbyLogsJson, ServerLogAndAuditFile)
{
	Cluster primary;
	primary.start();
	Connection pdb = primary.connect();
	SetUpExtension(pdb, "sb_audit");
	LoadTable(pdb, "t", 10, "sb_audit");
	Flush(pdb);

	Cluster standby = Cluster::standbyOf(primary);
	standby.start();
	standby.waitReady(60s);
	Connection sdb = standby.connect();
	ASSERT_EQ(sdb.value("SELECT pg_is_in_recovery()"), "t");

	// A one-row decrypt: a pgkm_audit line in the standby's server log.
	ASSERT_EQ(sdb.value(kDecryptOne, {"1"}), Secret(1, 0));
	auto decrypts_in_log = [&](long long row_count)
	{
		std::vector<nlohmann::json> found;
		for (auto &record : AuditLogLines(standby.serverLog()))
			if (IsDecryptOf(record, "sb_audit", row_count))
				found.push_back(record);
		return found;
	};
	EXPECT_TRUE(WaitUntil([&] { return !decrypts_in_log(1).empty(); }, 15s))
		<< "no pgkm_audit line with a decrypt of sb_audit in the standby's server log";

	// With pgkm.audit_file set, a three-row decrypt reaches both the log and the file.
	const std::string file = standby.dir() + "/audit.jsonl";
	standby.appendConf("pgkm.audit_file = '" + file + "'");
	sdb.exec("SELECT pg_reload_conf()");
	ASSERT_TRUE(sdb.waitFor("SELECT current_setting('pgkm.audit_file') = $1", 10s, {file}))
		<< "pgkm.audit_file is not set after the reload";
	Result three = sdb.exec("SELECT pgkm_decrypt_text(secret, id::text) FROM t WHERE id <= 3");
	ASSERT_EQ(three.rows(), 3);
	auto file_lines = [&]
	{
		std::ifstream in(file);
		std::vector<std::string> lines;
		for (std::string line; std::getline(in, line);)
			lines.push_back(line);
		return lines;
	};
	auto file_has_decrypt = [&]
	{
		for (const auto &line : file_lines())
			if (nlohmann::json::accept(line) &&
				IsDecryptOf(nlohmann::json::parse(line), "sb_audit", 3))
				return true;
		return false;
	};
	EXPECT_TRUE(WaitUntil(file_has_decrypt, 15s))
		<< "no decrypt record of sb_audit with row_count 3 in " << file;
	EXPECT_TRUE(WaitUntil([&] { return !decrypts_in_log(3).empty(); }, 15s))
		<< "no pgkm_audit line with the three-row decrypt in the standby's server log";

	// Every line of the file is one JSON object that the server log shows as well.
	std::vector<nlohmann::json> logged = AuditLogLines(standby.serverLog());
	std::vector<std::string> lines = file_lines();
	EXPECT_FALSE(lines.empty());
	for (const auto &line : lines)
	{
		if (!nlohmann::json::accept(line))
		{
			ADD_FAILURE() << file << ": a line is not JSON: " << line;
			continue;
		}
		nlohmann::json record = nlohmann::json::parse(line);
		EXPECT_TRUE(record.is_object()) << line;
		EXPECT_NE(std::find(logged.begin(), logged.end(), record), logged.end())
			<< "a record of " << file << " is not in the server log: " << line;
	}

	// The primary wrote no decrypt record: the standby's records stay on the standby.
	Flush(pdb);
	EXPECT_EQ(pdb.value("SELECT count(*) FROM pgkm.audit_log WHERE action = 'decrypt'"), "0");
}

} // namespace pgkm::it
