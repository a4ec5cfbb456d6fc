// Backups (issue 7): logical dumps and physical base backups of a database using pgkm.
//  - DumpRestoresIntoAFreshClusterWithTheSameToken: pg_dump -Fc of a database with keys of
//    each algorithm, a key rotated with values under two versions, columns registered with
//    protect_column, a finished and a paused re-encryption job and audit records, restored
//    with pg_restore in the README's parallel steps (pre-data; pgkm's data; the rest of the
//    data with -j 2; post-data with -j 2) into a fresh cluster whose token is a copy of the
//    first one's: every value decrypts; keys, versions, key events, the registry and the jobs are
//    identical; every ciphertext is byte-identical (nothing re-encrypted or double-encrypted by a
//    trigger); the restored worker leaves the paused job alone until it is resumed, then finishes
//    it. The audit log travels: every record and the partition registry are identical; the restored
//    worker continues the chain (a 'restored' record sealing the source's head), and the
//    whole chain, source's records and new ones, verifies.
//  - DumpIntoAClusterWithAnotherTokenOrNone: the same dump into a cluster with another token
//    (one that holds a master key of the same label, generated there) and into one with no
//    token configured: pg_restore exits 0, every decryption fails with an error, never a value;
//    the audit log's records arrive, and its checkpoints do not verify without the token.
//  - DataOnlyDumpIntoAnExistingPgkmDatabase: pg_dump --data-only restored into a database
//    where a DBA ran CREATE EXTENSION pgkm and created the tables: exit 0, values decrypt,
//    the audit log arrives (the registry's trigger makes its partitions) and verifies; the full
//    dump into a database where only CREATE EXTENSION pgkm was run, likewise. Into a database
//    whose audit log has records of its own, the data-only restore fails with 55000 and a hint
//    (two chains cannot be merged), leaving it unchanged; a dump without the audit log
//    (--exclude-table-data='pgkm.audit_*') restores there, and that database's chain verifies.
//  - AuditLogOfManyPartitionsRestoredWhileTheWorkerRuns: an audit log of several partitions
//    restored by pg_restore's own SQL, paused between partitions while the worker runs: the
//    worker continues the chain only once the restoring session has ended, so every record
//    arrives and the chain verifies.
//  - BaseBackupRestoredToANewDataDirectory: pg_basebackup of a running cluster, started as an
//    independent server (no standby.signal) after the original is stopped, decrypts everything.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <set>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace pgkm::it
{

namespace
{

constexpr long long kRows = 200;     // customers
constexpr long long kNotes = 40;     // notes: 1..20 under version 1, 21..40 under version 2
constexpr long long kBigRows = 3000; // big: the paused job's table

// Runs a shell command as root (copying token files); throws unless it exits 0.
void Shell(const std::string &command)
{
	if (std::system(command.c_str()) != 0)
		throw std::runtime_error("command failed: " + command);
}

// Makes target's SoftHSM2 token a copy of source's (same objects, same PIN): "the same token"
// for a cluster restored on another machine.
void CopyToken(const Cluster &source, const Cluster &target)
{
	const std::string from = std::filesystem::path(source.softhsmConf()).parent_path() / "tokens";
	const std::string to = std::filesystem::path(target.softhsmConf()).parent_path() / "tokens";
	Shell("rm -rf '" + to + "' && cp -a '" + from + "' '" + to + "' && cp -a '" + source.pinFile() +
		  "' '" + target.pinFile() + "'");
}

// Builds the source database: keys of each algorithm, a rotated key with values under two
// versions, protected columns, a finished and a paused job, audit records.
void BuildSource(Connection &db)
{
	db.exec("CREATE EXTENSION pgkm");
	db.exec("SELECT pgkm.create_key('c_enc')");
	db.exec("SELECT pgkm.create_key('c_det', algorithm => 'aes-256-siv')");
	db.exec("SELECT pgkm.create_key('c_bidx', algorithm => 'blind-index')");
	db.exec("SELECT pgkm.create_key('notes')");
	db.exec("SELECT pgkm.create_key('big')");
	db.exec("CREATE TABLE customers (id bigint PRIMARY KEY, email_enc bytea, email_det bytea,"
			" email_bidx bytea)");
	db.exec("INSERT INTO customers SELECT g, pgkm_encrypt(e, 'c_enc', g::text),"
			" pgkm_encrypt_det(e, 'c_det'), pgkm_blind_index(e, 'c_bidx')"
			" FROM generate_series(1, $1::bigint) g, LATERAL (SELECT 'user' || g || '@example.com'"
			" AS e) x",
			{std::to_string(kRows)});
	db.exec("CREATE INDEX ON customers (email_det)");
	db.exec("CREATE INDEX ON customers (email_bidx)");
	db.exec("SELECT pgkm.protect_column('customers', 'email_enc', 'c_enc', 'id')");
	db.exec("SELECT pgkm.protect_column('customers', 'email_det', 'c_det')");
	db.exec("SELECT pgkm.protect_column('customers', 'email_bidx', 'c_bidx',"
			" source_column => 'email_enc')");
	// notes: not registered, so rotating its key leaves the old values under version 1.
	db.exec("CREATE TABLE notes (id bigint PRIMARY KEY, body bytea)");
	db.exec("INSERT INTO notes SELECT g, pgkm_encrypt('note ' || g, 'notes', g::text)"
			" FROM generate_series(1, $1::bigint / 2) g",
			{std::to_string(kNotes)});
	db.exec("SELECT pgkm.rotate_key('notes')");
	db.exec("INSERT INTO notes SELECT g, pgkm_encrypt('note ' || g, 'notes', g::text)"
			" FROM generate_series($1::bigint / 2 + 1, $1::bigint) g",
			{std::to_string(kNotes)});
	// big: its job is paused in the rotation's own transaction, before the worker sees it.
	db.exec("CREATE TABLE big (id bigint PRIMARY KEY, secret bytea)");
	db.exec("INSERT INTO big SELECT g, pgkm_encrypt('big ' || g, 'big', g::text)"
			" FROM generate_series(1, $1::bigint) g",
			{std::to_string(kBigRows)});
	db.exec("SELECT pgkm.protect_column('big', 'secret', 'big', 'id')");
	db.exec("BEGIN");
	db.exec("SELECT pgkm.rotate_key('big')");
	const long long paused = LatestJob(db, "big");
	db.exec("SELECT pgkm.pause_job($1)", {std::to_string(paused)});
	db.exec("COMMIT");
	// A finished job: the deterministic key rotated, its column re-encrypted.
	db.exec("SELECT pgkm.rotate_key('c_det')");
	const long long finished = db.intValue("SELECT max(job_id) FROM pgkm.rotation_jobs WHERE"
										   " column_name = 'email_det'");
	JobSnapshot s = WaitJobFinished(db, finished, 120s);
	ASSERT_EQ(s.state, "done") << Describe(s);
	ASSERT_EQ(ReadJob(db, paused).state, "paused");
	// The worker retires the rotated-away version once its job is done; wait for that, and
	// flush the encryption counters, so the catalog is quiet when the digest is taken.
	ASSERT_TRUE(db.waitFor("SELECT state = 'retired' FROM pgkm.key_status WHERE key_name ="
						   " 'c_det' AND version = 1",
						   60s));
	db.exec("SELECT pgkm.flush_encryption_counts()");
	// Audit records, sealed.
	db.exec("SELECT pgkm.audit_flush(true)");
	ASSERT_GT(db.intValue("SELECT count(*) FROM pgkm.audit_log"), 0);
}

// A digest of everything that must travel: the catalog (keys, versions with their wrapped
// DEKs, master keys, registry, jobs, key events) and every ciphertext. Digests only: the
// wrapped DEKs must not appear in the test output.
struct Digest
{
	std::string keys, versions, master_keys, registry, jobs, events, customers, notes, big;
};

// Reads the digest of a database.
Digest ReadDigest(Connection &db)
{
	auto md5 = [&](const std::string &select, const std::string &order)
	{
		return db.value("SELECT coalesce(md5(string_agg(row_to_json(t)::text, '|' ORDER BY " +
						order + ")), 'empty') FROM (" + select + ") t");
	};
	Digest d;
	d.keys = md5("SELECT * FROM pgkm.keys", "key_id");
	d.versions = md5("SELECT * FROM pgkm.key_versions", "key_id, version");
	d.master_keys = md5("SELECT * FROM pgkm.master_keys", "master_key_id");
	d.registry = md5("SELECT * FROM pgkm.protected_columns", "table_name::text, column_name");
	d.jobs = md5("SELECT * FROM pgkm.rotation_jobs", "job_id");
	d.events = md5("SELECT * FROM pgkm.key_events", "event_id");
	d.customers = md5("SELECT * FROM customers", "id");
	d.notes = md5("SELECT * FROM notes", "id");
	d.big = md5("SELECT * FROM big", "id");
	return d;
}

// Compares two digests field by field.
void ExpectSameDigest(const Digest &a, const Digest &b, const std::string &what)
{
	EXPECT_EQ(a.keys, b.keys) << what << ": pgkm.keys";
	EXPECT_EQ(a.versions, b.versions) << what << ": pgkm.key_versions";
	EXPECT_EQ(a.master_keys, b.master_keys) << what << ": pgkm.master_keys";
	EXPECT_EQ(a.registry, b.registry) << what << ": pgkm.protected_columns";
	EXPECT_EQ(a.jobs, b.jobs) << what << ": pgkm.rotation_jobs";
	EXPECT_EQ(a.events, b.events) << what << ": pgkm.key_events";
	EXPECT_EQ(a.customers, b.customers) << what << ": customers' ciphertexts";
	EXPECT_EQ(a.notes, b.notes) << what << ": notes' ciphertexts";
	EXPECT_EQ(a.big, b.big) << what << ": big's ciphertexts";
}

// Counts of values that do not decrypt to their plaintext, per column (0 everywhere: all good).
void ExpectAllDecrypt(Connection &db, const std::string &what)
{
	EXPECT_EQ(db.intValue("SELECT count(*) FROM customers WHERE pgkm_decrypt_text(email_enc,"
						  " id::text) IS DISTINCT FROM 'user' || id || '@example.com'"),
			  0)
		<< what << ": customers.email_enc";
	EXPECT_EQ(db.intValue("SELECT count(*) FROM customers WHERE pgkm_decrypt_text(email_det)"
						  " IS DISTINCT FROM 'user' || id || '@example.com'"),
			  0)
		<< what << ": customers.email_det";
	// Blind indexes: every row is found by its address.
	EXPECT_EQ(db.intValue("SELECT count(*) FROM customers WHERE email_bidx IS DISTINCT FROM"
						  " pgkm_blind_index('user' || id || '@example.com', 'c_bidx')"),
			  0)
		<< what << ": customers.email_bidx";
	EXPECT_EQ(db.intValue("SELECT count(*) FROM customers WHERE email_det ="
						  " ANY(pgkm_encrypt_det_all('user7@example.com', 'c_det'))"),
			  1)
		<< what << ": lookup by the deterministic column";
	EXPECT_EQ(db.intValue("SELECT count(*) FROM notes WHERE pgkm_decrypt_text(body, id::text)"
						  " IS DISTINCT FROM 'note ' || id"),
			  0)
		<< what << ": notes";
	EXPECT_EQ(db.intValue("SELECT count(*) FROM big WHERE pgkm_decrypt_text(secret, id::text)"
						  " IS DISTINCT FROM 'big ' || id"),
			  0)
		<< what << ": big";
}

// Creates the user tables of the source (schema only), as a DBA recreates them.
void CreateUserTables(Connection &db)
{
	db.exec("CREATE TABLE customers (id bigint PRIMARY KEY, email_enc bytea, email_det bytea,"
			" email_bidx bytea)");
	db.exec("CREATE TABLE notes (id bigint PRIMARY KEY, body bytea)");
	db.exec("CREATE TABLE big (id bigint PRIMARY KEY, secret bytea)");
}

// The dump of a freshly built source database, in dir/file; the source's digest in *digest.
struct Source
{
	Cluster cluster{{"pgkm.worker_naptime = 1", "pgkm.rotation_batch_delay = 0"}};
	Digest digest;
	std::string dump;
	std::string data_only;
	long long audit_last_seq = 0; // the audit log's head before the dump
	std::string audit_digest;     // of its records up to audit_last_seq
	std::string audit_partitions; // digest of the partition registry
};

// A digest of the audit log's records up to seq upto, and one of its partition registry.
std::string AuditDigest(Connection &db, long long upto)
{
	return db.value("SELECT md5(string_agg(row_to_json(a)::text, '|' ORDER BY seq))"
					" FROM pgkm.audit_log a WHERE seq <= $1::bigint",
					{std::to_string(upto)});
}
std::string RegistryDigest(Connection &db)
{
	return db.value("SELECT coalesce(md5(string_agg(row_to_json(p)::text, '|' ORDER BY name)),"
					" 'empty') FROM pgkm.audit_partitions p");
}

// The restored audit log holds the source's records and registry, and once its worker has
// continued the chain, everything verifies: the source's checkpoints under the same token,
// the 'restored' record and the new ones.
void ExpectAuditLogRestored(Connection &db, const Source &src, const std::string &what)
{
	EXPECT_EQ(AuditDigest(db, src.audit_last_seq), src.audit_digest) << what << ": audit records";
	EXPECT_EQ(RegistryDigest(db), src.audit_partitions) << what << ": audit_partitions";
	db.exec("SELECT pgkm.audit_flush(true)");
	// The worker's 'restored' record seals the restored head: ref_seq is the record before it.
	Result r = db.exec("SELECT seq, ref_seq, detail FROM pgkm.audit_log WHERE action ="
					   " 'restored' ORDER BY seq");
	ASSERT_EQ(r.rows(), 1) << what;
	EXPECT_EQ(r.getInt(0, 1), r.getInt(0, 0) - 1) << what;
	EXPECT_GE(r.getInt(0, 1), src.audit_last_seq) << what;
	EXPECT_NE(r.get(0, 2).find("continues a restored audit log"), std::string::npos) << what;
	Result v = db.exec("SELECT ok, records, checkpoints, first_seq, sealed_through,"
					   " coalesce(problem, '') FROM pgkm.verify_audit_log()");
	EXPECT_EQ(v.get(0, 0), "t") << what << ": " << v.get(0, 5);
	EXPECT_EQ(v.getInt(0, 3), 1) << what << ": the chain starts at the source's first record";
	EXPECT_GT(v.getInt(0, 4), r.getInt(0, 0)) << what << ": sealed past the restored record";
	// A session cannot add records any more: the chain is running.
	Result forged = db.query("INSERT INTO pgkm.audit_log SELECT * FROM pgkm.audit_log"
							 " ORDER BY seq DESC LIMIT 1");
	EXPECT_EQ(forged.sqlstate(), "42501") << what << ": " << forged.message();
}

// Builds the source cluster and database "app", dumps it (custom format and data-only).
void MakeSource(Source &src)
{
	src.cluster.start();
	src.cluster.connect().exec("CREATE DATABASE app");
	Connection db = src.cluster.connect("app");
	ASSERT_NO_FATAL_FAILURE(BuildSource(db));
	src.digest = ReadDigest(db);
	// The audit log travels in the dump. Records keep arriving (this session's own reads are
	// audited): the dump holds at least those up to the head read now.
	ASSERT_EQ(db.value("SELECT ok FROM pgkm.verify_audit_log()"), "t");
	src.audit_last_seq = db.intValue("SELECT max(seq) FROM pgkm.audit_log");
	src.audit_digest = AuditDigest(db, src.audit_last_seq);
	src.audit_partitions = RegistryDigest(db);
	ASSERT_GT(db.intValue("SELECT count(*) FROM pgkm.audit_partitions"), 0);
	src.dump = src.cluster.dir() + "/app.dump";
	src.data_only = src.cluster.dir() + "/app-data.dump";
	std::string out;
	ASSERT_EQ(src.cluster.runAsServerUser({Cluster::pgBin("pg_dump"), "-Fc", "-f", src.dump, "-d",
										   src.cluster.conninfo("app")},
										  &out),
			  0)
		<< "pg_dump: " << out;
	ASSERT_EQ(src.cluster.runAsServerUser({Cluster::pgBin("pg_dump"), "-Fc", "--data-only", "-f",
										   src.data_only, "-d", src.cluster.conninfo("app")},
										  &out),
			  0)
		<< "pg_dump --data-only: " << out;
	// The dumps hold the ciphertexts and the wrapped DEKs, nothing decrypted: no plaintext.
	std::string bytes;
	{
		std::ifstream in(src.dump, std::ios::binary);
		bytes.assign(std::istreambuf_iterator<char>(in), {});
	}
	ASSERT_GT(bytes.size(), 0u);
	EXPECT_EQ(bytes.find("user7@example.com"), std::string::npos);
	// The audit log is in both: its registry (configuration), its partitions' records, and in
	// the full dump the partitions themselves. Not its state: the restored worker rebuilds it.
	for (const std::string &file : {src.dump, src.data_only})
	{
		std::string toc;
		ASSERT_EQ(src.cluster.runAsServerUser({Cluster::pgBin("pg_restore"), "-l", file}, &toc), 0)
			<< toc;
		EXPECT_NE(toc.find("TABLE DATA pgkm key_versions"), std::string::npos) << toc;
		EXPECT_NE(toc.find("TABLE DATA pgkm rotation_jobs"), std::string::npos) << toc;
		EXPECT_NE(toc.find("TABLE DATA pgkm audit_partitions"), std::string::npos) << toc;
		EXPECT_NE(toc.find("TABLE DATA pgkm audit_records_"), std::string::npos) << toc;
		EXPECT_EQ(toc.find("audit_state"), std::string::npos) << toc;
		EXPECT_EQ(toc.find("TABLE pgkm audit_records_") != std::string::npos, file == src.dump)
			<< toc;
		// The registry's data comes before its partitions' (a data-only restore relies on it).
		EXPECT_LT(toc.find("TABLE DATA pgkm audit_partitions"),
				  toc.find("TABLE DATA pgkm audit_records_"))
			<< toc;
	}
}

// Runs pg_restore with options into database db of a cluster; returns its exit status.
int PgRestore(const Cluster &cluster, const std::string &db, const std::string &file,
			  const std::vector<std::string> &options, std::string *out)
{
	std::vector<std::string> argv = {Cluster::pgBin("pg_restore"), "-d", cluster.conninfo(db)};
	argv.insert(argv.end(), options.begin(), options.end());
	argv.push_back(file);
	return cluster.runAsServerUser(argv, out);
}

// Restores a dump into a new database of a cluster; returns pg_restore's exit status.
int RestoreInto(const Cluster &cluster, const std::string &file, const std::string &db,
				std::string *out, const std::vector<std::string> &options = {})
{
	cluster.connect().exec("CREATE DATABASE " + db);
	return PgRestore(cluster, db, file, options, out);
}

// Every decryption (and encryption) in a database without the source's master key fails
// with sqlstate and a message containing fragment, never returns a value; returns the
// distinct "SQLSTATE: message" of the failures.
std::set<std::string> ExpectNoDecryption(Connection &db, const std::string &sqlstate,
										 const std::string &fragment)
{
	std::set<std::string> errors;
	const std::vector<std::string> probes = {
		"SELECT pgkm_decrypt_text(email_enc, id::text) FROM customers WHERE id = 1",
		"SELECT pgkm_decrypt_text(email_det) FROM customers WHERE id = 1",
		"SELECT pgkm_decrypt_text(body, id::text) FROM notes WHERE id = 1",
		"SELECT pgkm_decrypt_text(body, id::text) FROM notes WHERE id = 40",
		"SELECT pgkm_decrypt_text(secret, id::text) FROM big WHERE id = 1",
		"SELECT pgkm_blind_index('user1@example.com', 'c_bidx')",
		"SELECT pgkm_encrypt('x', 'c_enc')",
	};
	for (const auto &q : probes)
	{
		Result r = db.query(q);
		EXPECT_FALSE(r.ok()) << q << " returned a value";
		EXPECT_EQ(r.sqlstate(), sqlstate) << q << ": " << r.message();
		EXPECT_NE(r.message().find(fragment), std::string::npos) << q << ": " << r.message();
		if (!r.ok())
			errors.insert(r.sqlstate() + ": " + r.message().substr(0, r.message().find('\n')));
	}
	return errors;
}

// Under another token (or none) the audit records arrive, but the source's checkpoints cannot
// be verified: verify_audit_log says so, or fails; it never reports the chain sound.
void ExpectAuditNotVerified(Connection &db, const Source &src, const std::string &what)
{
	EXPECT_EQ(AuditDigest(db, src.audit_last_seq), src.audit_digest) << what << ": audit records";
	Result v = db.query("SELECT ok, coalesce(problem, '') FROM pgkm.verify_audit_log()");
	if (v.ok())
	{
		EXPECT_EQ(v.get(0, 0), "f") << what;
		Note(what + ": verify_audit_log: " + v.get(0, 1));
	}
	else
		Note(what + ": verify_audit_log: " + v.sqlstate() + ": " + v.message());
}

// Restores the source's dump into database "app" of a cluster without the source's master
// key: pg_restore exits 0, the catalog and every ciphertext arrive intact, every probe fails
// with sqlstate (a message containing fragment), and the audit log does not verify.
void ExpectRestoredUnreadable(const Cluster &cluster, const Source &src,
							  const std::string &sqlstate, const std::string &fragment,
							  const std::string &what)
{
	std::string out;
	ASSERT_EQ(RestoreInto(cluster, src.dump, "app", &out), 0) << what << ": pg_restore: " << out;
	Connection db = cluster.connect("app");
	ExpectSameDigest(src.digest, ReadDigest(db), what);
	for (const auto &e : ExpectNoDecryption(db, sqlstate, fragment))
		Note(what + ": " + e);
	ExpectAuditNotVerified(db, src, what);
}

} // namespace

TEST(IntegrationRestore, DumpRestoresIntoAFreshClusterWithTheSameToken)
{
	Source src;
	ASSERT_NO_FATAL_FAILURE(MakeSource(src));

	Cluster target({"pgkm.worker_naptime = 1", "pgkm.rotation_batch_delay = 0"});
	CopyToken(src.cluster, target);
	target.start();
	std::string out;
	// The README's parallel restore: pgkm's data in one job (its catalog tables reference each
	// other, so a plain pg_restore -j fails with a foreign key violation), the rest in two.
	ASSERT_EQ(RestoreInto(target, src.dump, "app", &out, {"--section=pre-data"}), 0)
		<< "pg_restore --section=pre-data: " << out;
	const std::vector<std::vector<std::string>> steps = {
		{"--section=data", "-n", "pgkm"},
		{"--section=data", "-N", "pgkm", "-j", "2"},
		{"--section=post-data", "-j", "2"}};
	for (const auto &step : steps)
		ASSERT_EQ(PgRestore(target, "app", src.dump, step, &out), 0)
			<< "pg_restore " << step[0] << ": " << out;
	Connection db = target.connect("app");

	// Identical catalog and ciphertexts: no trigger re-encrypted, rewrapped or rewrote anything.
	ExpectSameDigest(src.digest, ReadDigest(db), "restored");
	ExpectAllDecrypt(db, "restored");
	EXPECT_EQ(db.value("SELECT string_agg(pgkm.ciphertext_version(body)::text, ',' ORDER BY id)"
					   " FROM notes WHERE id IN (1, 40)"),
			  "1,2");
	const long long paused = LatestJob(db, "big");
	ASSERT_NE(paused, 0);

	// The restored worker runs, and leaves the paused job alone for several naptimes.
	ASSERT_NE(WaitForWorker(db, 30s), 0) << "no pgkm worker in the restored database";
	db.exec("SELECT pg_sleep(4)");
	EXPECT_EQ(ReadJob(db, paused).state, "paused");
	EXPECT_EQ(db.intValue("SELECT count(*) FROM big WHERE pgkm.ciphertext_version(secret) <> 1"),
			  0);
	ExpectSameDigest(src.digest, ReadDigest(db), "restored, worker running");

	// Resumed, it finishes: every row under version 2, still decrypting.
	db.exec("SELECT pgkm.resume_job($1)", {std::to_string(paused)});
	JobSnapshot s = WaitJobFinished(db, paused, 120s);
	EXPECT_EQ(s.state, "done") << Describe(s);
	EXPECT_EQ(db.intValue("SELECT count(*) FROM big WHERE pgkm.ciphertext_version(secret) <> 2"),
			  0);
	ExpectAllDecrypt(db, "restored, job finished");

	// The audit log travelled, and the restored worker continues its chain.
	ExpectAuditLogRestored(db, src, "restored");
	target.quietOnFailure();
}

TEST(IntegrationRestore, DumpIntoAClusterWithAnotherTokenOrNone)
{
	Source src;
	ASSERT_NO_FATAL_FAILURE(MakeSource(src));

	// Another token. First it holds no master key at all: the recorded one is not found.
	// Then another database of that cluster generates a master key of the same label:
	// unwrapping under it must fail, not yield a wrong DEK.
	{
		Cluster other({"pgkm.worker_naptime = 1"});
		other.start();
		ASSERT_NO_FATAL_FAILURE(ExpectRestoredUnreadable(other, src, "58000", "not found",
														 "another token, no master key"));
		{
			Connection pg = other.connect();
			pg.exec("CREATE EXTENSION pgkm");
			pg.exec("SELECT pgkm.create_key('unrelated')");
			ASSERT_EQ(pg.value("SELECT label FROM pgkm.master_keys"),
					  src.cluster.connect("app").value("SELECT label FROM pgkm.master_keys"));
		}
		Connection db = other.connect("app");
		for (const auto &e : ExpectNoDecryption(db, "XX001", "does not unwrap under master key"))
			Note("another token, same label: " + e);
		ExpectSameDigest(src.digest, ReadDigest(db), "another token, after the probes");
		other.quietOnFailure();
	}

	// No token configured at all.
	{
		Cluster none({"pgkm.worker_naptime = 1", "pgkm.pkcs11_module = ''"});
		none.start();
		ASSERT_NO_FATAL_FAILURE(ExpectRestoredUnreadable(
			none, src, "F0000", "pgkm.pkcs11_module is not set", "no token"));
		none.quietOnFailure();
	}
}

TEST(IntegrationRestore, DataOnlyDumpIntoAnExistingPgkmDatabase)
{
	Source src;
	ASSERT_NO_FATAL_FAILURE(MakeSource(src));

	// A database of the same cluster (same token) where a DBA installed pgkm and created the
	// tables first.
	Connection admin = src.cluster.connect();
	admin.exec("CREATE DATABASE app_copy");
	{
		Connection db = src.cluster.connect("app_copy");
		db.exec("CREATE EXTENSION pgkm");
		CreateUserTables(db);
	}
	std::string out;
	int rc = PgRestore(src.cluster, "app_copy", src.data_only,
					   {"--data-only", "--single-transaction"}, &out);
	ASSERT_EQ(rc, 0) << "pg_restore --data-only: " << out;
	Connection db = src.cluster.connect("app_copy");
	ExpectSameDigest(src.digest, ReadDigest(db), "data-only restore");
	ExpectAllDecrypt(db, "data-only restore");
	// The sequences travelled: a new key gets the next id, not a duplicate.
	EXPECT_GT(db.intValue("SELECT pgkm.create_key('after_restore')"),
			  db.intValue("SELECT max(key_id) FROM pgkm.keys WHERE name <> 'after_restore'"));
	EXPECT_EQ(db.value("SELECT pgkm_decrypt_text(pgkm_encrypt('fresh', 'after_restore'))"),
			  "fresh");
	ExpectAuditLogRestored(db, src, "data-only restore");

	// The full dump into a database where only CREATE EXTENSION pgkm was run: the dump's
	// CREATE EXTENSION IF NOT EXISTS is a no-op, the rest restores.
	admin.exec("CREATE DATABASE app_full");
	src.cluster.connect("app_full").exec("CREATE EXTENSION pgkm");
	rc = PgRestore(src.cluster, "app_full", src.dump, {"--single-transaction"}, &out);
	ASSERT_EQ(rc, 0) << "pg_restore into a database with pgkm: " << out;
	Connection full = src.cluster.connect("app_full");
	ExpectSameDigest(src.digest, ReadDigest(full), "full restore over CREATE EXTENSION");
	ExpectAllDecrypt(full, "full restore over CREATE EXTENSION");
	ExpectAuditLogRestored(full, src, "full restore over CREATE EXTENSION");

	// A database whose audit log has records of its own: the data-only restore stops at the
	// registry, before any record is loaded, and changes nothing.
	admin.exec("CREATE DATABASE app_busy");
	Connection busy = src.cluster.connect("app_busy");
	busy.exec("CREATE EXTENSION pgkm");
	CreateUserTables(busy);
	// Its own records: a failed decryption (audited), sealed. No key, so the keys can restore.
	busy.exec("DO $$ BEGIN PERFORM pgkm_decrypt('\\x0101'::bytea); EXCEPTION WHEN OTHERS THEN"
			  " NULL; END $$");
	busy.exec("SELECT pgkm.audit_flush(true)");
	ASSERT_GT(busy.intValue("SELECT count(*) FROM pgkm.audit_log"), 0);
	const long long own_head = busy.intValue("SELECT max(seq) FROM pgkm.audit_log");
	const std::string own_digest = AuditDigest(busy, own_head);
	rc = PgRestore(src.cluster, "app_busy", src.data_only, {"--data-only", "--single-transaction"},
				   &out);
	EXPECT_NE(rc, 0) << out;
	EXPECT_NE(out.find("already has records"), std::string::npos) << out;
	EXPECT_NE(out.find("--exclude-table-data='pgkm.audit_*'"), std::string::npos) << out;
	EXPECT_EQ(busy.intValue("SELECT count(*) FROM pgkm.keys"), 0);
	EXPECT_EQ(AuditDigest(busy, own_head), own_digest);
	// The hint's dump: everything but the audit log.
	const std::string no_audit = src.cluster.dir() + "/app-no-audit.dump";
	ASSERT_EQ(src.cluster.runAsServerUser({Cluster::pgBin("pg_dump"), "-Fc", "--data-only",
										   "--exclude-table-data=pgkm.audit_*", "-f", no_audit,
										   "-d", src.cluster.conninfo("app")},
										  &out),
			  0)
		<< out;
	rc =
		PgRestore(src.cluster, "app_busy", no_audit, {"--data-only", "--single-transaction"}, &out);
	ASSERT_EQ(rc, 0) << "pg_restore of the dump without the audit log: " << out;
	ExpectSameDigest(src.digest, ReadDigest(busy), "data-only restore without the audit log");
	ExpectAllDecrypt(busy, "data-only restore without the audit log");
	busy.exec("SELECT pgkm.audit_flush(true)");
	EXPECT_EQ(busy.intValue("SELECT count(*) FROM pgkm.audit_log WHERE action = 'restored'"), 0);
	EXPECT_EQ(AuditDigest(busy, own_head), own_digest);
	Result v = busy.exec("SELECT ok, coalesce(problem, '') FROM pgkm.verify_audit_log()");
	EXPECT_EQ(v.get(0, 0), "t") << v.get(0, 1);
	src.cluster.quietOnFailure();
}

TEST(IntegrationRestore, AuditLogOfManyPartitionsRestoredWhileTheWorkerRuns)
{
	// pg_restore loads each partition's records in a transaction of its own. The worker of the
	// restored database, looking at its log every second, must not continue the chain between
	// two of them (the records still to come would then be refused, 42501): it waits until the
	// restoring session has ended. Partitions of one second give the source several.
	Cluster cluster({"pgkm.worker_naptime = 1", "pgkm.audit_partition_interval = 1"});
	cluster.start();
	Connection admin = cluster.connect();
	admin.exec("CREATE DATABASE src");
	Connection src = cluster.connect("src");
	SetUpExtension(src, "k");
	for (int i = 0; src.intValue("SELECT count(*) FROM pgkm.audit_partitions") < 3; i++)
	{
		ASSERT_LT(i, 30) << "the audit log stays in fewer than three partitions";
		src.exec("SELECT pgkm_decrypt(pgkm_encrypt('x', 'k'))");
		src.exec("SELECT pgkm.audit_flush()");
		std::this_thread::sleep_for(700ms);
	}
	src.exec("SELECT pgkm.audit_flush(true)");
	const long long head = src.intValue("SELECT max(seq) FROM pgkm.audit_log");
	const std::string digest = AuditDigest(src, head);
	const std::string dump = cluster.dir() + "/src.dump";
	const std::string script = cluster.dir() + "/src.sql";
	std::string out;
	ASSERT_EQ(
		cluster.runAsServerUser(
			{Cluster::pgBin("pg_dump"), "-Fc", "-f", dump, "-d", cluster.conninfo("src")}, &out),
		0)
		<< out;
	ASSERT_EQ(cluster.runAsServerUser({Cluster::pgBin("pg_restore"), "-f", script, dump}, &out), 0)
		<< out;

	// The restore as pg_restore runs it (one session, a transaction per statement), with a
	// pause before each partition's records after the first, in which the worker runs and
	// the restoring session makes an audited call (a failed decryption) that must wait for
	// the chain; and once, pgkm.audit_flush(), which this session may not wait for.
	std::string sql;
	{
		std::ifstream in(script);
		sql.assign(std::istreambuf_iterator<char>(in), {});
	}
	const std::string copy = "COPY pgkm.audit_records_";
	const std::string pause = "SELECT pg_catalog.pg_sleep(2.5);\n"
							  "DO $$ BEGIN PERFORM public.pgkm_decrypt('\\x0101'::bytea);"
							  " EXCEPTION WHEN OTHERS THEN NULL; END $$;\n";
	int partitions = 0;
	for (std::size_t at = sql.find(copy); at != std::string::npos; at = sql.find(copy, at))
	{
		if (partitions++ > 0)
		{
			sql.insert(at, pause);
			at += pause.size();
		}
		at += copy.size();
	}
	ASSERT_GE(partitions, 3) << "one COPY per partition";
	const int paused = partitions - 1;
	sql += "DO $$ BEGIN PERFORM pgkm.audit_flush(); EXCEPTION WHEN OTHERS THEN"
		   " RAISE WARNING 'audit_flush: %: %', SQLSTATE, SQLERRM; END $$;\n"
		   "SET pgkm.audit_durability = sync;\n"
		   "DO $$ BEGIN PERFORM public.pgkm_decrypt(public.pgkm_encrypt('x', 'k')); EXCEPTION"
		   " WHEN OTHERS THEN RAISE WARNING 'sync: %: %', SQLSTATE, SQLERRM; END $$;\n";
	{
		std::ofstream outf(script, std::ios::trunc);
		outf << sql;
	}
	admin.exec("CREATE DATABASE dst");
	ASSERT_EQ(cluster.runAsServerUser({Cluster::pgBin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
									   "-d", cluster.conninfo("dst"), "-f", script},
									  &out),
			  0)
		<< "the restore script: " << out;
	// The restoring session may not wait for the worker, which waits for it to end.
	EXPECT_NE(out.find("audit_flush: 55000: this session loaded restored audit records"),
			  std::string::npos)
		<< out;
	EXPECT_NE(out.find("sync: 55000: this session loaded restored audit records"),
			  std::string::npos)
		<< out;

	// Every record arrived; once the session ended, the worker continued the chain, then
	// appended the session's held records after its 'restored' record.
	Connection dst = cluster.connect("dst");
	EXPECT_EQ(AuditDigest(dst, head), digest);
	dst.exec("SELECT pgkm.audit_flush(true)");
	Result r = dst.exec("SELECT seq, ref_seq FROM pgkm.audit_log WHERE action = 'restored'");
	ASSERT_EQ(r.rows(), 1);
	EXPECT_GE(r.getInt(0, 1), head);
	EXPECT_EQ(dst.intValue("SELECT count(*) FROM pgkm.audit_log WHERE action = 'failed'"
						   " AND database_name = 'dst' AND seq > $1::bigint"
						   " AND sqlstate IS DISTINCT FROM '55000'",
						   {r.get(0, 0)}),
			  paused)
		<< "the failed decryptions of the pauses";
	Result v = dst.exec("SELECT ok, first_seq, coalesce(problem, '') FROM pgkm.verify_audit_log()");
	EXPECT_EQ(v.get(0, 0), "t") << v.get(0, 2);
	EXPECT_EQ(v.getInt(0, 1), 1);
	// While the session was connected, the worker said why the records waited.
	EXPECT_NE(cluster.serverLog().find("the audit log of database \"dst\" is being restored"),
			  std::string::npos);
	Note("restored " + std::to_string(partitions) + " partitions, records 1 to " +
		 std::to_string(head) + ", with " + std::to_string(paused) + " pauses of 2.5 s");
	cluster.quietOnFailure();
}

TEST(IntegrationRestore, BaseBackupRestoredToANewDataDirectory)
{
	Cluster primary({"pgkm.worker_naptime = 1", "pgkm.rotation_batch_delay = 0",
					 "wal_level = replica", "max_wal_senders = 4"});
	primary.start();
	Digest digest;
	{
		Connection db = primary.connect();
		ASSERT_NO_FATAL_FAILURE(BuildSource(db));
		digest = ReadDigest(db);
	}
	// A base backup of the running server, made a standalone server: no standby.signal.
	Cluster copy = Cluster::standbyOf(primary);
	std::filesystem::remove(copy.dataDir() + "/standby.signal");
	primary.stop();
	copy.start();
	Connection db = copy.connect();
	EXPECT_EQ(db.value("SELECT pg_is_in_recovery()"), "f");
	ExpectSameDigest(digest, ReadDigest(db), "base backup");
	ExpectAllDecrypt(db, "base backup");
	// The copy is a working pgkm server: its worker resumes the paused job when asked.
	const long long paused = LatestJob(db, "big");
	ASSERT_NE(WaitForWorker(db, 30s), 0);
	EXPECT_EQ(ReadJob(db, paused).state, "paused");
	db.exec("SELECT pgkm.resume_job($1)", {std::to_string(paused)});
	JobSnapshot s = WaitJobFinished(db, paused, 120s);
	EXPECT_EQ(s.state, "done") << Describe(s);
	ExpectAllDecrypt(db, "base backup, job finished");
	Result v = db.exec("SELECT ok, coalesce(problem, '') FROM pgkm.verify_audit_log()");
	EXPECT_EQ(v.get(0, 0), "t") << v.get(0, 1);
	copy.quietOnFailure();
	primary.quietOnFailure();
}

} // namespace pgkm::it
