// Erasure (issue 6): pgkm.erase_subject on per-subject keys, and the backup procedure that
// makes an erased key unreadable in backups taken before the erasure.
//  - CachedSessionsCountsAndAudit: sessions that have the subject's key cached (decrypting and
//    encrypting, the cache TTL a day) fail on their very next statement after the erasure
//    commits, not before; a writer racing with the erasure never stores a value under the key
//    after the commit; the report's counts match what the test inserted into two protected
//    tables, by version; every value under other keys still decrypts; the audit log and
//    pgkm.key_events hold the erasure with who and when, and never key material.
//  - BackupsBeforeTheErasureUntilTheMasterKeyIsDestroyed: a pg_dump taken before the erasure
//    decrypts the erased subject when restored, a dump taken after it does not; after the
//    master key is rotated, retired and destroyed, the pre-erasure dump restores but fails
//    with the master-key-missing error (58000) for every key, never garbage, while the live
//    database and a dump taken after the rotation decrypt every subject that was not erased.
//  - HotStandbyAtTheNextStatement: on a hot standby, where no commit of the primary bumps the
//    cache generation, a session that had the key cached refuses it at its next statement once
//    the standby replayed the erasure (the relcache invalidation in the commit record), with a
//    key cache TTL of a day; a new session likewise.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <fcntl.h>
#include <fstream>
#include <sstream>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace pgkm::it
{

namespace
{

// pg_dump -Fc of a database into file (in the cluster's directory).
void Dump(const Cluster &cluster, const std::string &db, const std::string &file)
{
	std::string out;
	ASSERT_EQ(cluster.runAsServerUser(
				  {Cluster::pgBin("pg_dump"), "-Fc", "-f", file, "-d", cluster.conninfo(db)}, &out),
			  0)
		<< "pg_dump " << db << ": " << out;
}

// Creates a fresh database and restores a dump into it with pg_restore, which must succeed
// without a single error.
void Restore(const Cluster &cluster, Connection &admin, const std::string &file,
			 const std::string &db)
{
	admin.exec("CREATE DATABASE " + db);
	std::string out;
	ASSERT_EQ(cluster.runAsServerUser(
				  {Cluster::pgBin("pg_restore"), "-d", cluster.conninfo(db), file}, &out),
			  0)
		<< "pg_restore into " << db << ": " << out;
}

// The plaintext of row id of the orders table.
std::string OrderNote(long long id)
{
	return "note " + std::to_string(id);
}

// SQL that decrypts one order.
std::string DecryptOrder(long long id)
{
	return "SELECT pgkm_decrypt_text(note, id::text) FROM orders WHERE id = " + std::to_string(id);
}

// Decrypts each listed order in db and counts what happened: the right plaintext, a failure
// with sqlstate (and, if given, a message containing message_part), or anything else.
struct Outcomes
{
	int right = 0;
	int expected_failure = 0;
	std::vector<std::string> other;
};
Outcomes DecryptEach(Connection &db, const std::vector<long long> &ids, const std::string &sqlstate,
					 const std::string &message_part = "")
{
	Outcomes o;
	for (long long id : ids)
	{
		Result r = db.query(DecryptOrder(id));
		if (r.ok() && r.rows() == 1 && r.get(0, 0) == OrderNote(id))
			++o.right;
		else if (!r.ok() && r.sqlstate() == sqlstate &&
				 r.message().find(message_part) != std::string::npos)
			++o.expected_failure;
		else
			o.other.push_back("order " + std::to_string(id) + ": " +
							  (r.ok() ? "returned '" + (r.rows() ? r.get(0, 0) : "") + "'"
									  : r.sqlstate() + " " + r.message()));
	}
	return o;
}

// The ids of the orders of one customer (1-based customers, kOrdersPerCustomer each).
constexpr long long kCustomers = 4;
constexpr long long kOrdersPerCustomer = 6;
std::vector<long long> OrdersOf(long long customer)
{
	std::vector<long long> ids;
	for (long long i = 1; i <= kOrdersPerCustomer; ++i)
		ids.push_back((customer - 1) * kOrdersPerCustomer + i);
	return ids;
}

// Creates per-subject keys customer:1..n and an orders table protected under a shared key,
// each order encrypted under its customer's key with the order id as context.
void LoadOrders(Connection &db)
{
	db.exec("CREATE EXTENSION pgkm");
	db.exec("SELECT pgkm.create_key('orders')");
	db.exec("SELECT pgkm.create_key('customer:' || c) FROM generate_series(1, $1::int) c",
			{std::to_string(kCustomers)});
	db.exec("CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL, note bytea)");
	db.exec("SELECT pgkm.protect_column('orders', 'note', 'orders', 'id')");
	db.exec("INSERT INTO orders SELECT g, (g - 1) / $1::int + 1, pgkm_encrypt('note ' || g,"
			" 'customer:' || ((g - 1) / $1::int + 1), g::text)"
			" FROM generate_series(1, $1::int * $2::int) g",
			{std::to_string(kOrdersPerCustomer), std::to_string(kCustomers)});
}

// How often bytes occur in the file (binary search in a heap file).
int Occurrences(const std::string &path, const std::string &bytes)
{
	std::ifstream in(path, std::ios::binary);
	std::stringstream ss;
	ss << in.rdbuf();
	const std::string data = ss.str();
	int n = 0;
	for (std::size_t pos = data.find(bytes); pos != std::string::npos;
		 pos = data.find(bytes, pos + 1))
		++n;
	return n;
}

// The bytes of a bytea value given in hex output ("\x...").
std::string Unhex(const std::string &hex)
{
	std::string out;
	for (std::size_t i = 2; i + 1 < hex.size(); i += 2)
		out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
	return out;
}

} // namespace

TEST(Erasure, CachedSessionsCountsAndAudit)
{
	// A TTL of a day: only the invalidation at commit can make the erasure visible in time.
	Cluster cluster({"pgkm.key_cache_ttl = '1d'", "pgkm.worker_naptime = 1"});
	cluster.start();
	Connection admin = cluster.connect();
	admin.exec("CREATE EXTENSION pgkm");
	for (const char *key : {"shared", "customer:1", "customer:2", "customer:3"})
		admin.exec("SELECT pgkm.create_key($1)", {key});
	// Two protected tables, both registered with the shared key; each row is encrypted under
	// its customer's key. customer:3 is rotated halfway, so it has values under two versions.
	admin.exec("CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL, note bytea)");
	admin.exec("CREATE TABLE invoices (id int PRIMARY KEY, customer int NOT NULL, body bytea)");
	admin.exec("SELECT pgkm.protect_column('orders', 'note', 'shared', 'id')");
	admin.exec("SELECT pgkm.protect_column('invoices', 'body', 'shared', 'id')");
	const char *insert_orders =
		"INSERT INTO orders SELECT g, g % 3 + 1, pgkm_encrypt('order ' || g,"
		" 'customer:' || (g % 3 + 1), g::text) FROM generate_series($1::int, $2::int) g";
	const char *insert_invoices =
		"INSERT INTO invoices SELECT g, g % 3 + 1, pgkm_encrypt('invoice ' || g,"
		" 'customer:' || (g % 3 + 1), g::text) FROM generate_series($1::int, $2::int) g";
	admin.exec(insert_orders, {"1", "300"});
	admin.exec(insert_invoices, {"1", "90"});
	admin.exec("SELECT pgkm.rotate_key('customer:3')");
	admin.exec(insert_orders, {"301", "450"});
	admin.exec(insert_invoices, {"91", "120"});
	admin.exec("INSERT INTO orders VALUES (100000, 0, pgkm_encrypt('shared', 'shared', '100000'))");
	const std::string wrapped_before =
		admin.value("SELECT string_agg(encode(wrapped_dek, 'hex'), ' ') FROM pgkm.key_versions"
					" WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'customer:3')");
	// Ground truth, from what the test inserted: customer:3 is g % 3 = 2.
	const long long orders_v1 = 100, orders_v2 = 50, invoices_v1 = 30, invoices_v2 = 10;
	ASSERT_EQ(admin.intValue("SELECT count(*) FROM orders WHERE customer = 3"),
			  orders_v1 + orders_v2);

	// B decrypts with the subject's key, C encrypts with it: both have it cached.
	Connection b = cluster.connect();
	Connection c = cluster.connect();
	ASSERT_EQ(b.value("SELECT pgkm_decrypt_text(note, id::text) FROM orders WHERE id = 2"),
			  "order 2");
	ASSERT_EQ(c.intValue("SELECT count(pgkm_encrypt('x'::text, 'customer:3'))"), 1);

	// A writer inserts under the subject's key in a loop, racing with the erasure; it stops
	// at its first failure (its error is read once it has stopped).
	std::atomic<bool> stop{false};
	std::atomic<bool> writer_done{false};
	std::atomic<long long> inserted{0};
	std::string writer_error;
	std::thread writer(
		[&]
		{
			try
			{
				Connection w = cluster.connect();
				for (long long id = 200000; !stop.load(); ++id)
				{
					Result r =
						w.query("INSERT INTO orders VALUES ($1::int, 3,"
								" pgkm_encrypt('late ' || $1::text, 'customer:3', $1::text))",
								{std::to_string(id)});
					if (!r.ok())
					{
						writer_error = r.sqlstate() + " " + r.message();
						break;
					}
					++inserted;
				}
			}
			catch (const std::exception &e)
			{
				writer_error = e.what();
			}
			writer_done = true;
		});
	const bool writer_started = WaitUntil([&] { return inserted.load() >= 20; }, 30s);
	if (!writer_started)
	{
		stop = true;
		writer.join();
		FAIL() << "the writer did not insert 20 rows: " << writer_error;
	}

	const std::string t0 = admin.value("SELECT clock_timestamp()");
	admin.exec("BEGIN");
	const std::string report = admin.value("SELECT pgkm.erase_subject('customer:3')");
	// Not committed: B and C still work with their cached key.
	EXPECT_EQ(b.value("SELECT pgkm_decrypt_text(note, id::text) FROM orders WHERE id = 5"),
			  "order 5");
	EXPECT_EQ(c.intValue("SELECT count(pgkm_encrypt('x'::text, 'customer:3'))"), 1);
	admin.exec("COMMIT");
	const long long committed_inserts = inserted.load();
	const std::string t1 = admin.value("SELECT clock_timestamp()");

	// The very next statement of B and C fails: decrypting with the destroyed-version error,
	// encrypting with the erased-key error. A new session likewise.
	{
		Result r = b.query("SELECT pgkm_decrypt_text(note, id::text) FROM orders WHERE id = 5");
		EXPECT_EQ(r.sqlstate(), "55000") << (r.ok() ? "decrypted: " + r.get(0, 0) : r.message());
		EXPECT_NE(r.message().find("is destroyed and cannot be used to decrypt"), std::string::npos)
			<< r.message();
		Result e = c.query("SELECT pgkm_encrypt('x'::text, 'customer:3')");
		EXPECT_EQ(e.sqlstate(), "55000") << (e.ok() ? "encrypted" : e.message());
		EXPECT_NE(e.message().find("was erased"), std::string::npos) << e.message();
		Connection d = cluster.connect();
		Result n = d.query("SELECT pgkm_decrypt_text(body, id::text) FROM invoices WHERE id = 2");
		EXPECT_EQ(n.sqlstate(), "55000") << (n.ok() ? "decrypted" : n.message());
	}
	// The writer's next insert after the commit failed; at most the one in flight at the
	// commit was stored after it (its value encrypted before the commit).
	const bool writer_failed = WaitUntil([&] { return writer_done.load(); }, 30s);
	stop = true;
	writer.join();
	EXPECT_TRUE(writer_failed) << "the writer kept encrypting under the erased key";
	EXPECT_NE(writer_error.find("55000"), std::string::npos) << writer_error;
	EXPECT_NE(writer_error.find("was erased"), std::string::npos) << writer_error;
	EXPECT_LE(inserted.load(), committed_inserts + 1);

	// Every value under the key, in both tables, fails; nothing under it decrypts.
	const long long late = admin.intValue("SELECT count(*) FROM orders WHERE id >= 200000");
	EXPECT_EQ(late, inserted.load());
	EXPECT_EQ(admin.intValue("SELECT count(*) FROM orders WHERE customer = 3"),
			  orders_v1 + orders_v2 + late);
	admin.exec("CREATE FUNCTION try_decrypt(c bytea, ctx text) RETURNS text LANGUAGE plpgsql AS"
			   " $$BEGIN RETURN pgkm_decrypt_text(c, ctx); EXCEPTION WHEN OTHERS THEN"
			   " RETURN SQLSTATE; END$$");
	EXPECT_EQ(admin.value("SELECT string_agg(DISTINCT try_decrypt(note, id::text), ',')"
						  " FROM orders WHERE customer = 3"),
			  "55000");
	EXPECT_EQ(admin.value("SELECT string_agg(DISTINCT try_decrypt(body, id::text), ',')"
						  " FROM invoices WHERE customer = 3"),
			  "55000");
	// Every value under the other keys is untouched and decrypts to what was inserted.
	EXPECT_EQ(admin.intValue("SELECT count(*) FROM orders WHERE customer <> 3"
							 " AND try_decrypt(note, id::text) = CASE WHEN customer = 0"
							 " THEN 'shared' ELSE 'order ' || id END"),
			  301);
	EXPECT_EQ(admin.intValue("SELECT count(*) FROM invoices WHERE customer <> 3"
							 " AND try_decrypt(body, id::text) = 'invoice ' || id"),
			  80);

	// The report's counts: what was inserted before the erasure, by version. The racing
	// writer's rows count if they committed before the scan: at least the ones committed
	// before the erasure began, at most all of them.
	auto field = [&](const std::string &path) {
		return admin.value("SELECT $1::jsonb #>> $2::text[]", {report, path});
	};
	EXPECT_EQ(field("{key_name}"), "customer:3");
	EXPECT_EQ(field("{versions_destroyed}"), "2");
	EXPECT_EQ(field("{erased_by,session_user}"), "postgres");
	EXPECT_EQ(field("{erased_by,current_user}"), "postgres");
	EXPECT_EQ(admin.value("SELECT ($1::jsonb ->> 'erased_at')::timestamptz BETWEEN $2 AND $3",
						  {report, t0, t1}),
			  "t");
	EXPECT_EQ(field("{columns,0,table}"), "public.invoices");
	EXPECT_EQ(field("{columns,0,rows}"), std::to_string(invoices_v1 + invoices_v2));
	EXPECT_EQ(field("{columns,0,rows_by_version,1}"), std::to_string(invoices_v1));
	EXPECT_EQ(field("{columns,0,rows_by_version,2}"), std::to_string(invoices_v2));
	EXPECT_EQ(field("{columns,1,table}"), "public.orders");
	EXPECT_EQ(field("{columns,1,rows_by_version,1}"), std::to_string(orders_v1));
	const long long orders_v2_found = std::stoll(field("{columns,1,rows_by_version,2}"));
	EXPECT_GE(orders_v2_found, orders_v2 + 20) << "the writer's rows before the erasure began";
	EXPECT_LE(orders_v2_found, orders_v2 + late);
	EXPECT_EQ(std::stoll(field("{columns,1,rows}")), orders_v1 + orders_v2_found);
	EXPECT_EQ(std::stoll(field("{rows_found}")),
			  invoices_v1 + invoices_v2 + orders_v1 + orders_v2_found);
	EXPECT_EQ(admin.value("SELECT jsonb_array_length($1::jsonb -> 'columns')", {report}), "2");
	EXPECT_EQ(admin.value("SELECT jsonb_array_length($1::jsonb -> 'column_errors')", {report}),
			  "0");

	// The audit log and key_events: who and when, linked by the event id.
	ASSERT_GT(admin.intValue("SELECT pgkm.audit_flush()"), 0);
	Result a = admin.exec("SELECT session_user_name, current_user_name, success,"
						  " at BETWEEN $2 AND $3, backend_pid, detail FROM pgkm.audit_log"
						  " WHERE action = 'key_erase' AND key_name = $1",
						  {"customer:3", t0, t1});
	ASSERT_EQ(a.rows(), 1);
	EXPECT_EQ(a.get(0, 0), "postgres");
	EXPECT_EQ(a.get(0, 1), "postgres");
	EXPECT_EQ(a.get(0, 2), "t");
	EXPECT_EQ(a.get(0, 3), "t");
	EXPECT_EQ(a.get(0, 4), field("{audit_record,backend_pid}"));
	EXPECT_EQ(a.get(0, 5).rfind("key_events " + field("{key_event_id}") + ": versions 1", 0), 0u)
		<< a.get(0, 5);
	EXPECT_EQ(admin.value("SELECT actor || ' ' || action FROM pgkm.key_events WHERE event_id = "
						  "($1::jsonb ->> 'key_event_id')::bigint",
						  {report}),
			  "postgres key_erase");
	// No wrapped DEK of the erased key is in the report, key_events or the audit log.
	std::stringstream deks(wrapped_before);
	std::string dek;
	int deks_checked = 0;
	while (deks >> dek)
	{
		++deks_checked;
		EXPECT_EQ(report.find(dek), std::string::npos) << "wrapped DEK in the report";
		EXPECT_EQ(admin.intValue("SELECT count(*) FROM pgkm.audit_log WHERE position($1 IN"
								 " coalesce(detail, '') || coalesce(row_context, '')) > 0",
								 {dek}),
				  0);
		EXPECT_EQ(admin.intValue("SELECT count(*) FROM pgkm.key_events WHERE position($1 IN"
								 " coalesce(detail, '')) > 0",
								 {dek}),
				  0);
	}
	EXPECT_EQ(deks_checked, 2);
}

TEST(Erasure, BackupsBeforeTheErasureUntilTheMasterKeyIsDestroyed)
{
	Cluster cluster({"pgkm.worker_naptime = 1", "max_worker_processes = 16"});
	cluster.start();
	Connection root = cluster.connect();
	root.exec("CREATE DATABASE shop");
	Connection shop = cluster.connect("shop");
	LoadOrders(shop);
	const std::vector<long long> erased = OrdersOf(2);
	std::vector<long long> kept;
	for (long long c = 1; c <= kCustomers; ++c)
		if (c != 2)
			for (long long id : OrdersOf(c))
				kept.push_back(id);
	const std::string master_v1 =
		shop.value("SELECT label FROM pgkm.master_keys WHERE state = 'active'");
	const std::string wrapped_erased =
		shop.value("SELECT string_agg(encode(wrapped_dek, 'hex'), ' ') FROM pgkm.key_versions"
				   " WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'customer:2')");

	// A backup before the erasure; it holds the subject's wrapped DEK.
	const std::string before = cluster.dir() + "/before.dump";
	Dump(cluster, "shop", before);
	auto dump_holds = [&](const std::string &file)
	{
		std::string out;
		EXPECT_EQ(cluster.runAsServerUser({Cluster::pgBin("pg_restore"), "-a", "-n", "pgkm", "-t",
										   "key_versions", "-f", "-", file},
										  &out),
				  0);
		std::stringstream blobs(wrapped_erased);
		std::string blob;
		int found = 0, all = 0;
		while (blobs >> blob)
		{
			++all;
			found += out.find(blob) != std::string::npos;
		}
		return all > 0 && found == all;
	};
	EXPECT_TRUE(dump_holds(before)) << "the pre-erasure dump lacks the wrapped DEK";

	Result report = shop.exec("SELECT pgkm.erase_subject('customer:2')");
	ASSERT_EQ(report.rows(), 1);
	Outcomes live = DecryptEach(shop, erased, "55000", "is destroyed");
	EXPECT_EQ(live.expected_failure, kOrdersPerCustomer) << ::testing::PrintToString(live.other);

	// A backup after the erasure: no wrapped DEK of the subject in it.
	const std::string after = cluster.dir() + "/after.dump";
	Dump(cluster, "shop", after);
	EXPECT_FALSE(dump_holds(after)) << "the post-erasure dump holds the erased wrapped DEK";

	// The pre-erasure backup, restored into a fresh database of the same cluster (same token):
	// the erased subject decrypts from it, as does everyone else.
	Restore(cluster, root, before, "restored_before");
	Connection rb = cluster.connect("restored_before");
	{
		Outcomes o = DecryptEach(rb, erased, "none");
		EXPECT_EQ(o.right, kOrdersPerCustomer) << ::testing::PrintToString(o.other);
		Outcomes k = DecryptEach(rb, kept, "none");
		EXPECT_EQ(k.right, static_cast<int>(kept.size())) << ::testing::PrintToString(k.other);
		EXPECT_EQ(rb.value("SELECT erased_at IS NULL FROM pgkm.keys WHERE name = 'customer:2'"),
				  "t");
	}
	// The restored database is a working pgkm database: its worker writes a new audit chain.
	EXPECT_GT(rb.intValue("SELECT pgkm.audit_flush()"), 0);
	EXPECT_EQ(rb.value("SELECT ok FROM pgkm.verify_audit_log()"), "t");

	// The post-erasure backup: the subject is gone (destroyed versions), the rest decrypts.
	Restore(cluster, root, after, "restored_after");
	{
		Connection ra = cluster.connect("restored_after");
		Outcomes o = DecryptEach(ra, erased, "55000", "is destroyed");
		EXPECT_EQ(o.expected_failure, kOrdersPerCustomer) << ::testing::PrintToString(o.other);
		Outcomes k = DecryptEach(ra, kept, "none");
		EXPECT_EQ(k.right, static_cast<int>(kept.size())) << ::testing::PrintToString(k.other);
		EXPECT_EQ(ra.value("SELECT erased_at IS NOT NULL FROM pgkm.keys WHERE name = 'customer:2'"),
				  "t");
		Result enc = ra.query("SELECT pgkm_encrypt('x'::text, 'customer:2')");
		EXPECT_EQ(enc.sqlstate(), "55000") << (enc.ok() ? "encrypted" : enc.message());
	}
	root.exec("DROP DATABASE restored_after");

	// The residue the master-key procedure closes: the old row versions of pgkm.key_versions
	// with the erased wrapped DEKs, in the live database's files (measured, not asserted: page
	// pruning may overwrite them at any time).
	shop.exec("CHECKPOINT");
	const std::string heap =
		cluster.dataDir() + "/" + shop.value("SELECT pg_relation_filepath('pgkm.key_versions')");
	std::stringstream blobs(wrapped_erased);
	std::string blob;
	int residue = 0;
	while (blobs >> blob)
		residue += Occurrences(heap, Unhex("\\x" + blob));
	Note("erased wrapped DEKs still in pgkm.key_versions' heap file after the erasure: " +
		 std::to_string(residue));

	// A session of the restored pre-erasure database keeps the subject's key cached.
	ASSERT_EQ(rb.value(DecryptOrder(erased.front())), OrderNote(erased.front()));

	// The procedure: rotate the master key, retire the old one, destroy it in the token.
	const std::string master_v2 = shop.value("SELECT pgkm.rotate_master_key()");
	ASSERT_NE(master_v2, master_v1);
	shop.exec("SELECT pgkm.retire_master_key($1)", {master_v1});
	shop.exec("SELECT pgkm.destroy_master_key($1)", {master_v1});
	EXPECT_EQ(shop.value("SELECT state FROM pgkm.master_keys WHERE label = $1", {master_v1}),
			  "destroyed");

	// The live database: every subject that was not erased decrypts, in a new session too.
	{
		Connection fresh = cluster.connect("shop");
		Outcomes k = DecryptEach(fresh, kept, "none");
		EXPECT_EQ(k.right, static_cast<int>(kept.size())) << ::testing::PrintToString(k.other);
		Outcomes o = DecryptEach(fresh, erased, "55000", "is destroyed");
		EXPECT_EQ(o.expected_failure, kOrdersPerCustomer) << ::testing::PrintToString(o.other);
	}
	// A backup after the rotation restores and decrypts every subject that was not erased.
	const std::string rotated = cluster.dir() + "/rotated.dump";
	Dump(cluster, "shop", rotated);
	Restore(cluster, root, rotated, "restored_rotated");
	{
		Connection rr = cluster.connect("restored_rotated");
		Outcomes k = DecryptEach(rr, kept, "none");
		EXPECT_EQ(k.right, static_cast<int>(kept.size())) << ::testing::PrintToString(k.other);
		Outcomes o = DecryptEach(rr, erased, "55000", "is destroyed");
		EXPECT_EQ(o.expected_failure, kOrdersPerCustomer) << ::testing::PrintToString(o.other);
	}
	root.exec("DROP DATABASE restored_rotated");

	// The pre-erasure backup now: restored again, every key fails with the master-key-missing
	// error (58000), the erased subject included; never a plaintext, never another error.
	const std::string missing = "master key \"" + master_v1 + "\" not found in PKCS#11 token";
	Restore(cluster, root, before, "restored_before_again");
	{
		Connection again = cluster.connect("restored_before_again");
		Outcomes o = DecryptEach(again, erased, "58000", missing);
		EXPECT_EQ(o.expected_failure, kOrdersPerCustomer) << ::testing::PrintToString(o.other);
		Outcomes k = DecryptEach(again, kept, "58000", missing);
		EXPECT_EQ(k.expected_failure, static_cast<int>(kept.size()))
			<< ::testing::PrintToString(k.other);
	}
	// The copy restored before the destruction: the session that had the key cached loses it
	// at its next statement (the destruction emptied every cache of the cluster), and so does
	// a new one.
	{
		Outcomes o = DecryptEach(rb, erased, "58000", missing);
		EXPECT_EQ(o.expected_failure, kOrdersPerCustomer) << ::testing::PrintToString(o.other);
		Connection fresh = cluster.connect("restored_before");
		Outcomes k = DecryptEach(fresh, kept, "58000", missing);
		EXPECT_EQ(k.expected_failure, static_cast<int>(kept.size()))
			<< ::testing::PrintToString(k.other);
	}
}

TEST(Erasure, HotStandbyAtTheNextStatement)
{
	// A TTL of a day: only the invalidation replayed from the primary can act in time.
	Cluster primary({"pgkm.worker_naptime = 1", "pgkm.key_cache_ttl = '1d'"});
	primary.start();
	Connection pdb = primary.connect();
	LoadOrders(pdb);
	Cluster standby = Cluster::standbyOf(primary);
	standby.start();
	standby.waitReady(60s);
	Connection poll = standby.connect();
	ASSERT_TRUE(poll.waitFor("SELECT count(*) = 1 FROM pg_stat_wal_receiver WHERE status = "
							 "'streaming'",
							 30s))
		<< "the standby does not stream from the primary";
	const long long order = OrdersOf(2).front();
	const long long other = OrdersOf(1).front();

	// A standby session fills its cache with the subject's key (and another subject's).
	Connection cached = standby.connect();
	ASSERT_EQ(cached.value(DecryptOrder(order)), OrderNote(order));
	ASSERT_EQ(cached.value(DecryptOrder(other)), OrderNote(other));

	pdb.exec("SELECT pgkm.erase_subject('customer:2')");
	ASSERT_TRUE(poll.waitFor("SELECT erased_at IS NOT NULL FROM pgkm.keys"
							 " WHERE name = 'customer:2'",
							 30s))
		<< "the standby did not replay the erasure";
	Result r = cached.query(DecryptOrder(order));
	EXPECT_EQ(r.sqlstate(), "55000") << "the standby session with the key cached, right after "
										"the replay: "
									 << (r.ok() ? "decrypted" : r.message());
	EXPECT_EQ(cached.value(DecryptOrder(other)), OrderNote(other));
	Connection fresh = standby.connect();
	Result f = fresh.query(DecryptOrder(order));
	EXPECT_EQ(f.sqlstate(), "55000") << (f.ok() ? "decrypted" : f.message());
}

} // namespace pgkm::it
