// Upgrade*: the upgrade path of the extension. Data written with pgkm 1.0's SQL decrypts
// with the current library before ALTER EXTENSION UPDATE, after each single step to 1.6 and
// after one jump; new features work on old keys; and an updated extension has exactly the
// objects and definitions of a fresh CREATE EXTENSION.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace pgkm::it
{

namespace
{

constexpr long long kRows = 300;

// Every released version after 1.0, in update order.
const std::vector<std::string> kSteps = {"1.1", "1.2", "1.3", "1.4", "1.5", "1.6"};

// One line per property of the extension's objects, sorted: members, function signatures
// and attributes, table columns, constraints, indexes, triggers, views, privileges, comments
// and the dump configuration. Names only, never OIDs, so two databases compare; audit_log
// partitions (created by date at run time) are left out.
const char *kDescribeExtension = R"SQL(
WITH ext AS (SELECT oid, extconfig FROM pg_extension WHERE extname = 'pgkm'),
members AS (
	SELECT d.classid, d.objid, d.objsubid FROM pg_depend d, ext
	WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'),
rels AS (
	SELECT c.oid, c.relname FROM pg_class c JOIN members m
		ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
	WHERE NOT c.relispartition),
lines AS (
	SELECT 'member ' || pg_describe_object(m.classid, m.objid, m.objsubid) AS line
	FROM members m
	WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE m.classid = 'pg_class'::regclass
		AND c.oid = m.objid AND (c.relispartition OR c.relname ~ '^audit_log_\d'))
	UNION ALL
	SELECT format('function %s returns %s args(%s) vol=%s par=%s strict=%s secdef=%s '
			'leakproof=%s cost=%s rows=%s config=%s src=%s bin=%s lang=%s kind=%s acl=%s '
			'comment=%s',
		p.oid::regprocedure, pg_get_function_result(p.oid),
		pg_get_function_arguments(p.oid), p.provolatile, p.proparallel, p.proisstrict,
		p.prosecdef, p.proleakproof, p.procost, p.prorows, p.proconfig,
		md5(p.prosrc), p.probin, l.lanname, p.prokind, p.proacl,
		obj_description(p.oid, 'pg_proc'))
	FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
	JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
	UNION ALL
	SELECT format('relation %s kind=%s persistence=%s options=%s acl=%s comment=%s '
			'rls=%s/%s', c.oid::regclass, c.relkind, c.relpersistence, c.reloptions, c.relacl,
		obj_description(c.oid, 'pg_class'), c.relrowsecurity, c.relforcerowsecurity)
	FROM pg_class c JOIN rels r ON r.oid = c.oid
	UNION ALL
	SELECT format('column %s.%s #%s %s notnull=%s default=%s identity=%s generated=%s '
			'collation=%s acl=%s', r.oid::regclass, a.attname,
		-- attnum differs after DROP/ADD COLUMN in an upgrade; the order of live columns does not
		row_number() OVER (PARTITION BY r.oid ORDER BY a.attnum),
		format_type(a.atttypid, a.atttypmod), a.attnotnull,
		pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated, a.attcollation,
		a.attacl)
	FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0
		AND NOT a.attisdropped
	LEFT JOIN pg_attrdef ad ON ad.adrelid = r.oid AND ad.adnum = a.attnum
	UNION ALL
	SELECT format('constraint %s %s %s', r.oid::regclass, co.conname,
		pg_get_constraintdef(co.oid))
	FROM rels r JOIN pg_constraint co ON co.conrelid = r.oid
	UNION ALL
	SELECT 'index ' || pg_get_indexdef(i.indexrelid)
	FROM rels r JOIN pg_index i ON i.indrelid = r.oid
	UNION ALL
	SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text
	FROM rels r JOIN pg_trigger t ON t.tgrelid = r.oid AND NOT t.tgisinternal
	UNION ALL
	SELECT format('view %s %s', r.oid::regclass, md5(pg_get_viewdef(r.oid)))
	FROM rels r JOIN pg_class c ON c.oid = r.oid AND c.relkind IN ('v', 'm')
	UNION ALL
	SELECT format('policy %s %s %s %s %s', r.oid::regclass, po.polname, po.polcmd,
		pg_get_expr(po.polqual, po.polrelid), pg_get_expr(po.polwithcheck, po.polrelid))
	FROM rels r JOIN pg_policy po ON po.polrelid = r.oid
	UNION ALL
	SELECT format('event trigger %s %s %s %s', e.evtname, e.evtevent, e.evtfoid::regproc,
		e.evttags)
	FROM pg_event_trigger e JOIN members m
		ON m.classid = 'pg_event_trigger'::regclass AND m.objid = e.oid
	UNION ALL
	SELECT 'schema acl ' || coalesce(n.nspacl::text, '') FROM pg_namespace n
	WHERE n.nspname = 'pgkm'
	UNION ALL
	SELECT 'config ' || c::regclass::text FROM ext, unnest(ext.extconfig) c
)
SELECT coalesce(string_agg(line, E'\n' ORDER BY line), '') FROM lines
)SQL";

// The lines of a that are not in b (both sorted, newline-separated).
std::string Missing(const std::string &a, const std::string &b)
{
	auto split = [](const std::string &s)
	{
		std::vector<std::string> out;
		std::size_t start = 0;
		while (start <= s.size())
		{
			std::size_t end = s.find('\n', start);
			if (end == std::string::npos)
				end = s.size();
			if (end > start)
				out.push_back(s.substr(start, end - start));
			start = end + 1;
		}
		return out;
	};
	std::vector<std::string> in_b = split(b);
	std::string out;
	for (const std::string &line : split(a))
		if (std::find(in_b.begin(), in_b.end(), line) == in_b.end())
			out += "  " + line + "\n";
	return out;
}

// A database "donor" with the current pgkm and keys k_a and k_b. The current library's key
// administration needs the current SQL (pgkm.create_key writes pgkm.key_events, new in 1.1),
// so a 1.0 keyring is made here and copied into 1.0 catalogs by ImportKeys: the same rows
// pgkm 1.0 wrote, wrapped under the same token's master key.
Connection MakeDonor(Cluster &cluster)
{
	Connection admin = cluster.connect();
	admin.exec("CREATE DATABASE donor");
	Connection donor = cluster.connect("donor");
	donor.exec("CREATE EXTENSION pgkm");
	donor.exec("SELECT pgkm.create_key('k_a')");
	donor.exec("SELECT pgkm.create_key('k_b')");
	return donor;
}

// Copies the donor's master keys, keys and versions into db's pgkm 1.0 catalog (the columns
// 1.0 has; json_populate_recordset ignores the others) and moves the sequences past them.
void ImportKeys(Connection &donor, Connection &db)
{
	for (const char *table : {"master_keys", "keys", "key_versions"})
	{
		std::string rows = donor.value(std::string("SELECT json_agg(t) FROM pgkm.") + table + " t");
		db.exec(std::string("INSERT INTO pgkm.") + table +
					" SELECT * FROM json_populate_recordset(NULL::pgkm." + table + ", $1::json)",
				{rows});
	}
	db.exec("SELECT setval('pgkm.keys_key_id_seq', (SELECT max(key_id) FROM pgkm.keys)), "
			"setval('pgkm.master_keys_master_key_id_seq', "
			"(SELECT max(master_key_id) FROM pgkm.master_keys))");
}

// Writes 1.0 data: keys k_a (contexts) and k_b (no context) from the donor, a table of both,
// using only the functions pgkm 1.0 has.
void LoadOldData(Connection &donor, Connection &db)
{
	ImportKeys(donor, db);
	db.exec("CREATE TABLE t (id int PRIMARY KEY, secret bytea, note bytea, other int NOT NULL)");
	db.exec("INSERT INTO t SELECT g, pgkm_encrypt(" + SecretSql("g", "0") +
				", 'k_a', g::text), pgkm_encrypt(('note-' || g)::bytea, 'k_b'), 0 "
				"FROM generate_series(1, $1::int) g",
			{std::to_string(kRows)});
}

// Every value of t decrypts to what was written (counts the rows that do).
void ExpectOldDataDecrypts(Connection &db, const std::string &when)
{
	EXPECT_EQ(db.intValue("SELECT count(*) FROM t WHERE pgkm_decrypt_text(secret, id::text) = " +
						  SecretSql("id", "0") +
						  " AND convert_from(pgkm_decrypt(note), 'UTF8') = 'note-' || id"),
			  kRows)
		<< when;
	Result wrong = db.query("SELECT pgkm_decrypt_text(secret, 'other') FROM t WHERE id = 1");
	EXPECT_EQ(wrong.sqlstate(), "22000") << when << ": " << wrong.message();
	EXPECT_EQ(db.value("SELECT string_agg(k.name || ':' || v.version || ':' || v.state, ',' "
					   "ORDER BY k.name, v.version) FROM pgkm.keys k JOIN pgkm.key_versions v "
					   "USING (key_id)"),
			  "k_a:1:active,k_b:1:active")
		<< when;
}

} // namespace

// 1.0 SQL with the current library; then each update step alone, decrypting after each.
TEST(Upgrade, StepByStepFromOnePointZero)
{
	Cluster cluster;
	cluster.start();
	Connection donor = MakeDonor(cluster);
	Connection db = cluster.connect();
	db.exec("CREATE EXTENSION pgkm VERSION '1.0'");
	ASSERT_EQ(db.value("SELECT extversion FROM pg_extension WHERE extname = 'pgkm'"), "1.0");
	LoadOldData(donor, db);
	// Between the package upgrade and ALTER EXTENSION UPDATE: the new library, the old SQL.
	ExpectOldDataDecrypts(db, "1.0 SQL, current library");
	db.exec("INSERT INTO t VALUES (0, pgkm_encrypt('zero'::text, 'k_a', '0'), NULL, 0)");
	EXPECT_EQ(db.value("SELECT pgkm_decrypt_text(secret, '0') FROM t WHERE id = 0"), "zero");
	db.exec("DELETE FROM t WHERE id = 0");
	// Key administration waits for the update, with an error that says so.
	Result refused = db.query("SELECT pgkm.rotate_key('k_a')");
	EXPECT_EQ(refused.sqlstate(), "55000") << refused.message();
	EXPECT_NE(refused.message().find("version 1.0"), std::string::npos) << refused.message();

	for (const std::string &version : kSteps)
	{
		db.exec("ALTER EXTENSION pgkm UPDATE TO '" + version + "'");
		ASSERT_EQ(db.value("SELECT extversion FROM pg_extension WHERE extname = 'pgkm'"), version);
		// A new session too: its key cache starts empty and unwraps through the token.
		Connection fresh = cluster.connect();
		ExpectOldDataDecrypts(fresh, "after the update to " + version);
	}

	// New features on old keys: rotation (old version decrypt-only), audit, SIV keys.
	EXPECT_EQ(db.intValue("SELECT pgkm.rotate_key('k_a')"), 2);
	db.exec("INSERT INTO t VALUES (0, pgkm_encrypt('zero'::text, 'k_a', '0'), NULL, 0)");
	EXPECT_EQ(db.value("SELECT pgkm.ciphertext_version(secret) FROM t WHERE id = 0"), "2");
	EXPECT_EQ(db.value("SELECT pgkm_decrypt_text(secret, '0') FROM t WHERE id = 0"), "zero");
	EXPECT_EQ(db.intValue("SELECT count(*) FROM t WHERE id > 0 AND "
						  "pgkm_decrypt_text(secret, id::text) = " +
						  SecretSql("id", "0")),
			  kRows);
	db.exec("SELECT pgkm.create_key('k_siv', algorithm => 'aes-256-siv')");
	EXPECT_EQ(db.value("SELECT pgkm_encrypt_det('x'::text, 'k_siv', 'c') = "
					   "pgkm_encrypt_det('x'::text, 'k_siv', 'c')"),
			  "t");
	EXPECT_EQ(db.value("SELECT pgkm_decrypt_text(pgkm_encrypt_det('x'::text, 'k_siv', 'c'), 'c')"),
			  "x");
	db.exec("SELECT pgkm.audit_flush()");
	EXPECT_GE(db.intValue("SELECT coalesce(sum(row_count), 0) FROM pgkm.audit_log "
						  "WHERE action = 'decrypt' AND key_name = 'k_a'"),
			  kRows)
		<< "the audit records decrypts of 1.0 data";
	EXPECT_EQ(db.value("SELECT ok FROM pgkm.verify_audit_log()"), "t");
	EXPECT_EQ(db.value("SELECT string_agg(state, ',' ORDER BY version) FROM pgkm.key_versions "
					   "JOIN pgkm.keys USING (key_id) WHERE name = 'k_a'"),
			  "decrypt_only,active");
}

// 1.0 updated in one step equals 1.0 updated step by step equals a fresh 1.6, object by
// object; and the comparison itself sees a difference.
TEST(Upgrade, UpdatedEqualsFreshInstall)
{
	Cluster cluster;
	cluster.start();
	Connection donor = MakeDonor(cluster);
	Connection admin = cluster.connect();
	for (const char *name : {"fresh", "jump", "steps"})
		admin.exec(std::string("CREATE DATABASE ") + name);

	Connection fresh = cluster.connect("fresh");
	fresh.exec("CREATE EXTENSION pgkm");
	ASSERT_EQ(fresh.value("SELECT extversion FROM pg_extension WHERE extname = 'pgkm'"), "1.6");

	Connection jump = cluster.connect("jump");
	jump.exec("CREATE EXTENSION pgkm VERSION '1.0'");
	LoadOldData(donor, jump);
	jump.exec("ALTER EXTENSION pgkm UPDATE");
	ASSERT_EQ(jump.value("SELECT extversion FROM pg_extension WHERE extname = 'pgkm'"), "1.6");
	ExpectOldDataDecrypts(jump, "after 1.0 -> 1.6 in one ALTER EXTENSION");

	Connection steps = cluster.connect("steps");
	steps.exec("CREATE EXTENSION pgkm VERSION '1.0'");
	LoadOldData(donor, steps);
	for (const std::string &version : kSteps)
		steps.exec("ALTER EXTENSION pgkm UPDATE TO '" + version + "'");

	std::string want = fresh.value(kDescribeExtension);
	ASSERT_GT(want.size(), 1000u) << "the description finds the extension's objects";
	EXPECT_NE(want.find("function pgkm_decrypt(bytea,bytea)"), std::string::npos) << want;
	EXPECT_NE(want.find("column pgkm.keys.blind_index_bytes"), std::string::npos) << want;
	for (Connection *db : {&jump, &steps})
	{
		std::string got = db->value(kDescribeExtension);
		EXPECT_EQ(Missing(want, got), "") << "in a fresh 1.6, not in the updated one";
		EXPECT_EQ(Missing(got, want), "") << "in the updated one, not in a fresh 1.6";
	}

	// The comparison sees a drift: a changed attribute of one function.
	jump.exec("ALTER FUNCTION pgkm_decrypt(bytea, bytea) COST 7");
	std::string drifted = jump.value(kDescribeExtension);
	EXPECT_NE(Missing(drifted, want), "");
}

} // namespace pgkm::it
