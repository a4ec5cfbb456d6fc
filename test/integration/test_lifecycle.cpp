// IntegrationLifecycle: key version states are enforced in every backend at once, including
// backends that have the DEK cached: disable / enable, destroy refused while a protected
// column references the version, allowed after re-encryption, and then final everywhere.
#include "helpers.hpp"

#include <gtest/gtest.h>

namespace pgkm::it
{

namespace
{

constexpr long long kRows = 2000;

std::string DecryptRow(long long id)
{
	return "SELECT pgkm_decrypt_text(secret, id::text) FROM t WHERE id = " + std::to_string(id);
}

} // namespace

TEST(IntegrationLifecycle, DisableEnableDestroyInEveryBackend)
{
	Cluster cluster({"pgkm.worker_naptime = 1", "pgkm.rotation_batch_size = 500"});
	cluster.start();
	Connection admin = cluster.connect();
	SetUpExtension(admin, "lc");
	LoadTable(admin, "t", kRows, "lc");
	admin.exec("SELECT pgkm.protect_column('t', 'secret', 'lc', 'id')");
	ASSERT_NE(WaitForWorker(admin, 15s), 0) << "no pgkm worker after CREATE EXTENSION";
	const std::string saved = admin.value("SELECT secret FROM t WHERE id = 7"); // version 1
	const std::string decrypt_saved = "SELECT pgkm_decrypt_text($1::bytea, '7')";

	// Backend A has version 1 cached (it decrypted with it).
	Connection a = cluster.connect();
	ASSERT_EQ(a.value(DecryptRow(1)), Secret(1, 0));

	// Disabled: refused in A (cached) and in a new backend; encrypting under it too.
	admin.exec("SELECT pgkm.disable_key_version('lc', 1)");
	EXPECT_EQ(VersionState(admin, "lc", 1), "disabled");
	{
		Result r = a.query(DecryptRow(2));
		EXPECT_EQ(r.sqlstate(), "55000") << "decrypt with a disabled version in a backend that "
											"had it cached: "
										 << (r.ok() ? "succeeded" : r.message());
		Connection b = cluster.connect();
		Result rb = b.query(DecryptRow(3));
		EXPECT_EQ(rb.sqlstate(), "55000") << (rb.ok() ? "succeeded" : rb.message());
		Result enc = b.query("SELECT pgkm_encrypt('x'::text, 'lc', '1')");
		EXPECT_EQ(enc.sqlstate(), "55000") << (enc.ok() ? "succeeded" : enc.message());
	}

	// Enabled again: works in A, back to its former state.
	admin.exec("SELECT pgkm.enable_key_version('lc', 1)");
	EXPECT_EQ(VersionState(admin, "lc", 1), "active");
	{
		Result r = a.query(DecryptRow(2));
		ASSERT_TRUE(r.ok()) << r.message();
		EXPECT_EQ(r.get(0, 0), Secret(2, 0));
	}

	// Rotate, holding the job paused so that t.secret still references version 1.
	admin.exec("BEGIN");
	ASSERT_EQ(admin.value("SELECT pgkm.rotate_key('lc')"), "2");
	long long job = LatestJob(admin, "t");
	ASSERT_GT(job, 0) << "rotate_key queued no job";
	admin.exec("SELECT pgkm.pause_job($1)", {std::to_string(job)});
	admin.exec("COMMIT");
	EXPECT_EQ(VersionState(admin, "lc", 1), "decrypt_only");
	EXPECT_EQ(ReadJob(admin, job).state, "paused");

	// Destroy is refused while the protected column references version 1, and says where.
	{
		Result r = admin.query("SELECT pgkm.destroy_key_version('lc', 1)");
		EXPECT_EQ(r.sqlstate(), "55000") << (r.ok() ? "destroy succeeded" : r.message());
		std::string full = r.message(); // with DETAIL and HINT
		EXPECT_NE(full.find("secret"), std::string::npos)
			<< "the refusal does not name the column: " << full;
		EXPECT_EQ(VersionState(admin, "lc", 1), "decrypt_only");
	}

	// A decrypts the saved version-1 ciphertext now (decrypt-only: allowed) and keeps it
	// cached; it stays connected, idle, until after the destruction.
	{
		Result r = a.query(decrypt_saved, {saved});
		ASSERT_TRUE(r.ok()) << r.message();
		EXPECT_EQ(r.get(0, 0), Secret(7, 0));
	}
	Connection c = cluster.connect(); // C has it cached too, and is used after retirement
	ASSERT_EQ(c.value(decrypt_saved, {saved}), Secret(7, 0));

	// Re-encryption finishes; version 1 is retired, then destroyable.
	admin.exec("SELECT pgkm.resume_job($1)", {std::to_string(job)});
	JobSnapshot done = WaitJobFinished(admin, job, 30s);
	ASSERT_EQ(done.state, "done") << Describe(done);
	EXPECT_TRUE(admin.waitFor("SELECT state = 'retired' FROM pgkm.key_status WHERE key_name = 'lc' "
							  "AND version = 1",
							  10s))
		<< "version 1 is " << VersionState(admin, "lc", 1);
	EXPECT_EQ(admin.value("SELECT count(*) FROM t WHERE pgkm.ciphertext_version(secret) = 2"),
			  std::to_string(kRows));
	{
		// A retired version decrypts nothing (README: 55000), in a backend that had it cached.
		Result r = c.query(decrypt_saved, {saved});
		EXPECT_EQ(r.sqlstate(), "55000") << (r.ok() ? "succeeded" : r.message());
	}
	{
		Result r = admin.query("SELECT pgkm.destroy_key_version('lc', 1)");
		ASSERT_TRUE(r.ok()) << r.sqlstate() << " " << r.message();
	}
	EXPECT_EQ(VersionState(admin, "lc", 1), "destroyed");
	EXPECT_EQ(admin.value("SELECT wrapped_dek IS NULL FROM pgkm.key_versions v JOIN pgkm.keys k "
						  "USING (key_id) WHERE k.name = 'lc' AND v.version = 1"),
			  "t")
		<< "the wrapped DEK was not erased";

	// Destroyed: the saved ciphertext fails with 55000 in A (cached before), C and a new
	// backend; the re-encrypted rows still decrypt everywhere.
	for (auto *conn : {&a, &c})
	{
		Result r = conn->query(decrypt_saved, {saved});
		EXPECT_EQ(r.sqlstate(), "55000")
			<< "backend " << conn->backendPid() << ": "
			<< (r.ok() ? "decrypted a destroyed version" : r.message());
		Result row = conn->query(DecryptRow(7));
		ASSERT_TRUE(row.ok()) << row.message();
		EXPECT_EQ(row.get(0, 0), Secret(7, 0));
	}
	Connection fresh = cluster.connect();
	Result r = fresh.query(decrypt_saved, {saved});
	EXPECT_EQ(r.sqlstate(), "55000") << (r.ok() ? "decrypted a destroyed version" : r.message());
	EXPECT_EQ(fresh.value("SELECT count(*) FILTER (WHERE pgkm_decrypt_text(secret, id::text) = " +
						  SecretSql("id", "0") + ") FROM t"),
			  std::to_string(kRows));
	// Destroying is final: it cannot be enabled again.
	Result enable = fresh.query("SELECT pgkm.enable_key_version('lc', 1)");
	EXPECT_FALSE(enable.ok()) << "a destroyed version was enabled again";
	EXPECT_EQ(VersionState(fresh, "lc", 1), "destroyed");
}

} // namespace pgkm::it
