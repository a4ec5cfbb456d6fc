// IntegrationRevocation: taking a key role away acts at once in another session that used
// the key a moment before (its key cache warm, the key cache TTL a day): REVOKE of the
// role membership, and alter_key_roles by the key's owner, for decrypt and for encrypt;
// also inside an open transaction, read committed and repeatable read. Granted again, the
// role works again at once.
#include "helpers.hpp"

#include <gtest/gtest.h>

namespace pgkm::it
{

namespace
{

const std::string kDecrypt = "SELECT pgkm_decrypt_text(c, 'ctx') FROM rv";
const std::string kEncrypt = "SELECT pgkm_encrypt('x'::text, 'rv_key', 'ctx')";

// Runs sql in db and returns its SQLSTATE, or "ok" when it succeeds.
std::string Outcome(Connection &db, const std::string &sql)
{
	Result r = db.query(sql);
	return r.ok() ? "ok" : r.sqlstate();
}

} // namespace

TEST(IntegrationRevocation, RefusedOnTheVeryNextCall)
{
	// A TTL of a day: only the invalidation at commit can make the change visible in time.
	Cluster cluster({"pgkm.key_cache_ttl = '1d'"});
	cluster.start();
	Connection admin = cluster.connect();
	admin.exec("CREATE EXTENSION pgkm");
	admin.exec("CREATE ROLE rv_reader");
	admin.exec("CREATE ROLE rv_writer");
	admin.exec("CREATE ROLE rv_nobody");
	admin.exec("CREATE ROLE rv_app LOGIN IN ROLE rv_reader, rv_writer");
	admin.exec("SELECT pgkm.create_key('rv_key', 'rv_writer', 'rv_reader')");
	admin.exec("CREATE TABLE rv AS SELECT pgkm_encrypt('secret'::text, 'rv_key', 'ctx') AS c");
	admin.exec("GRANT SELECT ON rv TO rv_app");

	Connection a(cluster.conninfo() + " user=rv_app");
	ASSERT_EQ(a.value(kDecrypt), "secret");
	ASSERT_EQ(Outcome(a, kEncrypt), "ok");

	// REVOKE of the decrypt role: refused at once; encrypting is untouched.
	admin.exec("REVOKE rv_reader FROM rv_app");
	EXPECT_EQ(Outcome(a, kDecrypt), "42501") << "decrypt right after REVOKE";
	EXPECT_EQ(Outcome(a, kEncrypt), "ok");
	admin.exec("GRANT rv_reader TO rv_app");
	EXPECT_EQ(Outcome(a, kDecrypt), "ok") << "decrypt right after GRANT";

	// REVOKE of the encrypt role.
	admin.exec("REVOKE rv_writer FROM rv_app");
	EXPECT_EQ(Outcome(a, kEncrypt), "42501") << "encrypt right after REVOKE";
	EXPECT_EQ(Outcome(a, kDecrypt), "ok");
	admin.exec("GRANT rv_writer TO rv_app");
	EXPECT_EQ(Outcome(a, kEncrypt), "ok") << "encrypt right after GRANT";

	// The owner changes the key's roles.
	admin.exec("SELECT pgkm.alter_key_roles('rv_key', decrypt_role => 'rv_nobody')");
	EXPECT_EQ(Outcome(a, kDecrypt), "42501") << "decrypt right after alter_key_roles";
	admin.exec("SELECT pgkm.alter_key_roles('rv_key', encrypt_role => 'rv_nobody')");
	EXPECT_EQ(Outcome(a, kEncrypt), "42501") << "encrypt right after alter_key_roles";
	admin.exec("SELECT pgkm.alter_key_roles('rv_key', 'rv_writer', 'rv_reader')");
	EXPECT_EQ(Outcome(a, kDecrypt), "ok");
	EXPECT_EQ(Outcome(a, kEncrypt), "ok");

	// Inside an open read-committed transaction of A.
	a.exec("BEGIN");
	ASSERT_EQ(a.value(kDecrypt), "secret");
	admin.exec("REVOKE rv_reader FROM rv_app");
	a.exec("SAVEPOINT s");
	EXPECT_EQ(Outcome(a, kDecrypt), "42501") << "decrypt in an open transaction after REVOKE";
	a.exec("ROLLBACK TO SAVEPOINT s");
	admin.exec("GRANT rv_reader TO rv_app");
	EXPECT_EQ(Outcome(a, kDecrypt), "ok");
	admin.exec("SELECT pgkm.alter_key_roles('rv_key', decrypt_role => 'rv_nobody')");
	EXPECT_EQ(Outcome(a, kDecrypt), "42501")
		<< "decrypt in an open transaction after alter_key_roles";
	a.exec("ROLLBACK");
	admin.exec("SELECT pgkm.alter_key_roles('rv_key', decrypt_role => 'rv_reader')");

	// Inside an open repeatable-read transaction, whose snapshot still shows the old role;
	// and after it ends, nothing of that snapshot stays in A's cache.
	a.exec("BEGIN ISOLATION LEVEL REPEATABLE READ");
	ASSERT_EQ(a.value(kDecrypt), "secret");
	admin.exec("SELECT pgkm.alter_key_roles('rv_key', decrypt_role => 'rv_nobody')");
	EXPECT_EQ(Outcome(a, kDecrypt), "42501")
		<< "decrypt in a repeatable-read transaction after alter_key_roles";
	a.exec("ROLLBACK");
	EXPECT_EQ(Outcome(a, kDecrypt), "42501") << "decrypt after that transaction ended";
	admin.exec("SELECT pgkm.alter_key_roles('rv_key', decrypt_role => 'rv_reader')");
	EXPECT_EQ(Outcome(a, kDecrypt), "ok");
}

} // namespace pgkm::it
