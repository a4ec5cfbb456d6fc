// Parallel*: the data path under parallel query (pgkm 1.5: PARALLEL SAFE), the part of Citus
// support that runs without Citus. Decrypts and encrypts run in parallel workers below a
// Gather; every value decrypts; the audit counts the workers' uses; a role without the key
// is denied inside a worker (and audited there); failures keep their SQLSTATE.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <string>

namespace pgkm::it
{

namespace
{

constexpr long long kRows = 4000;

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

// Makes every scan of this session parallel, with the leader not running the plan itself,
// so that whatever is below the Gather runs in the workers. force_parallel_mode became
// debug_parallel_query in PostgreSQL 16.
void ForceParallel(Connection &db)
{
	bool sixteen = db.intValue("SELECT current_setting('server_version_num')::int") >= 160000;
	db.exec(sixteen ? "SET debug_parallel_query = on" : "SET force_parallel_mode = on");
	for (const char *setting :
		 {"SET parallel_setup_cost = 0", "SET parallel_tuple_cost = 0",
		  "SET min_parallel_table_scan_size = 0", "SET max_parallel_workers_per_gather = 2",
		  "SET parallel_leader_participation = off"})
		db.exec(setting);
}

// The whole EXPLAIN output as one string.
std::string Explain(Connection &db, const std::string &options, const std::string &sql)
{
	Result r = db.exec("EXPLAIN (" + options + ") " + sql);
	std::string out;
	for (int i = 0; i < r.rows(); i++)
		out += r.get(i, 0) + "\n";
	return out;
}

// The newest audit record's seq after a flush.
long long AuditHead(Connection &db)
{
	db.exec("SELECT pgkm.audit_flush()");
	return db.intValue("SELECT coalesce(max(seq), 0) FROM pgkm.audit_log");
}

const std::string kCountGood = "SELECT count(*) FROM t WHERE pgkm_decrypt_text(secret, id::text) "
							   "= " +
							   SecretSql("id", "0");

} // namespace

TEST(Parallel, DataPathRunsInParallelWorkers)
{
	Cluster cluster({"max_worker_processes = 16", "max_parallel_workers = 8"});
	cluster.start();
	Connection db = cluster.connect();
	SetUpExtension(db, "par");
	LoadTable(db, "t", kRows, "par");
	db.exec("SELECT pgkm.protect_column('t', 'secret', 'par')");

	// The data-path functions are parallel safe; the rewriting ones stay restricted.
	EXPECT_EQ(db.value("SELECT string_agg(DISTINCT proparallel::text, ',') FROM pg_proc WHERE "
					   "proname IN ('pgkm_decrypt', 'pgkm_decrypt_text', 'pgkm_encrypt', "
					   "'pgkm_encrypt_det', 'pgkm_encrypt_det_all', 'pgkm_blind_index', "
					   "'pgkm_blind_index_all')"),
			  "s");
	EXPECT_EQ(db.value("SELECT string_agg(DISTINCT proparallel::text, ',') FROM pg_proc WHERE "
					   "proname IN ('pgkm_rewrap', 'pgkm_blind_index_rebuild')"),
			  "r");

	ForceParallel(db);
	std::string plan = Explain(db, "VERBOSE, COSTS OFF", kCountGood);
	auto gather = plan.find("Gather");
	auto filter = plan.find("pgkm_decrypt_text(");
	ASSERT_NE(gather, std::string::npos) << plan;
	ASSERT_NE(filter, std::string::npos) << plan;
	EXPECT_LT(gather, filter) << "the decrypt runs below the Gather:\n" << plan;
	EXPECT_NE(plan.find("Parallel Seq Scan"), std::string::npos) << plan;

	// Every value decrypts in the workers, and the workers' uses are all audited.
	long long before = AuditHead(db);
	std::string analyzed = Explain(db, "ANALYZE, COSTS OFF, TIMING OFF", kCountGood);
	EXPECT_EQ(analyzed.find("Workers Launched: 0"), std::string::npos) << analyzed;
	EXPECT_NE(analyzed.find("Workers Launched:"), std::string::npos) << analyzed;
	EXPECT_EQ(db.intValue(kCountGood), kRows);
	long long after = AuditHead(db);
	Result uses =
		db.exec("SELECT coalesce(sum(row_count), 0), count(DISTINCT backend_pid), "
				"bool_and(backend_pid <> $3), bool_and(detail = 'in a parallel worker'),"
				" bool_and(session_user_name = 'postgres'), bool_and(query_id IS NOT NULL) FROM "
				"pgkm.audit_log WHERE "
				"action = 'decrypt' AND key_name = 'par' AND seq > $1 AND seq <= $2",
				{std::to_string(before), std::to_string(after), std::to_string(db.backendPid())});
	// Two statements (EXPLAIN ANALYZE and the count), each decrypting every row.
	EXPECT_EQ(uses.getInt(0, 0), 2 * kRows) << "decrypts audited by the workers";
	EXPECT_GE(uses.getInt(0, 1), 1);
	EXPECT_EQ(uses.get(0, 2), "t") << "the uses happened in the workers, not the leader";
	EXPECT_EQ(uses.get(0, 3), "t");
	EXPECT_EQ(uses.get(0, 4), "t");
	EXPECT_EQ(uses.get(0, 5), "t") << "a worker's records carry the statement's query id";
	// The leader saw no use of the protected column: its 'access' records say why.
	Result access =
		db.exec("SELECT count(*), count(*) FILTER (WHERE detail LIKE 'parallel "
				"plan:%' AND backend_pid = $3) FROM pgkm.audit_log WHERE action = "
				"'access' AND seq > $1 AND seq <= $2",
				{std::to_string(before), std::to_string(after), std::to_string(db.backendPid())});
	EXPECT_GE(access.getInt(0, 0), 1);
	EXPECT_EQ(access.getInt(0, 1), access.getInt(0, 0));

	// Row level and sync durability in the workers: every use counted, one row context each
	// (the ciphertext's nonce), and a sync worker waits for the audit writer, then returns.
	db.exec("SET statement_timeout = '120s'");
	db.exec("SET pgkm.audit_level = row");
	db.exec("SET pgkm.audit_durability = sync");
	before = AuditHead(db);
	EXPECT_EQ(db.intValue(kCountGood + " AND id <= 300"), 300);
	after = AuditHead(db);
	const std::string window = " FROM pgkm.audit_log WHERE action = 'decrypt' AND key_name = "
							   "'par' AND seq > $1 AND seq <= $2";
	Params range = {std::to_string(before), std::to_string(after)};
	EXPECT_EQ(db.intValue("SELECT coalesce(sum(row_count), 0)" + window, range), 300);
	EXPECT_EQ(db.intValue("SELECT count(DISTINCT ctx) FROM (SELECT unnest(string_to_array("
						  "row_context, ' ')) AS ctx" +
							  window + ") s",
						  range),
			  300)
		<< "one row context per decrypted row";
	EXPECT_EQ(
		db.value("SELECT bool_and(backend_pid <> " + std::to_string(db.backendPid()) + ")" + window,
				 range),
		"t");
	db.exec("RESET pgkm.audit_durability");
	db.exec("RESET pgkm.audit_level");

	// Encryption in the workers: fresh nonces across workers, and the values decrypt.
	std::string enc = "SELECT count(DISTINCT c), count(*) FILTER (WHERE "
					  "pgkm_decrypt_text(c, id::text) = id::text) FROM (SELECT id, "
					  "pgkm_encrypt(id::text, 'par', id::text) AS c FROM t) s";
	Result encrypted = db.exec(enc);
	EXPECT_EQ(encrypted.getInt(0, 0), kRows);
	EXPECT_EQ(encrypted.getInt(0, 1), kRows);

	// Deterministic encryption and blind indexes in the workers agree with the leader.
	db.exec("SELECT pgkm.create_key('par_siv', algorithm => 'aes-256-siv')");
	db.exec("SELECT pgkm.create_key('par_bi', algorithm => 'blind-index')");
	db.exec("RESET parallel_leader_participation");
	std::string det_leader = db.value("SELECT encode(pgkm_encrypt_det('42'::text, 'par_siv', "
									  "'c'), 'hex') || encode(pgkm_blind_index('42'::text, "
									  "'par_bi'), 'hex')");
	db.exec("SET parallel_leader_participation = off");
	EXPECT_EQ(db.intValue("SELECT count(*) FROM t WHERE encode(pgkm_encrypt_det(id::text, "
						  "'par_siv', 'c'), 'hex') || encode(pgkm_blind_index(id::text, "
						  "'par_bi'), 'hex') = $1",
						  {det_leader}),
			  1);

	// A wrong context fails authentication in a worker with the same SQLSTATE.
	Result wrong = db.query("SELECT count(*) FROM t WHERE pgkm_decrypt_text(secret, 'x') = ''");
	EXPECT_EQ(wrong.sqlstate(), "22000") << wrong.message();
	Result unknown =
		db.query("SELECT count(*) FROM t WHERE pgkm_encrypt(id::text, 'no_such_key') IS NULL");
	EXPECT_EQ(unknown.sqlstate(), "42704") << unknown.message();

	// A role that may read the table but not use the key is denied inside the worker, and
	// the worker's denial is audited.
	db.exec("CREATE ROLE par_outsider LOGIN");
	db.exec("GRANT SELECT ON t TO par_outsider");
	Connection outsider(ConninfoAs(cluster, "par_outsider"));
	ForceParallel(outsider);
	before = AuditHead(db);
	Result denied = outsider.query(kCountGood);
	EXPECT_EQ(denied.sqlstate(), "42501") << denied.message();
	after = AuditHead(db);
	Result records = db.exec(
		"SELECT count(*), bool_and(backend_pid <> $3), "
		"bool_and(session_user_name = 'par_outsider') FROM pgkm.audit_log "
		"WHERE action = 'denied' AND key_name = 'par' AND seq > $1 AND "
		"seq <= $2",
		{std::to_string(before), std::to_string(after), std::to_string(outsider.backendPid())});
	EXPECT_GE(records.getInt(0, 0), 1) << "the worker's denial is audited";
	EXPECT_EQ(records.get(0, 1), "t") << "denied in a worker, not in the leader";
	EXPECT_EQ(records.get(0, 2), "t");
	EXPECT_EQ(db.value("SELECT ok FROM pgkm.verify_audit_log()"), "t");
}

} // namespace pgkm::it
