// IntegrationSmoke: the fixture itself: a cluster with a token starts, pgkm loads, a key
// round trip works through libpq, SQLSTATEs arrive, and a restart keeps the data.
#include "helpers.hpp"

#include <gtest/gtest.h>

namespace pgkm::it
{

TEST(IntegrationSmoke, RoundTripThroughLibpq)
{
	Cluster cluster;
	cluster.start();
	Connection db = cluster.connect();
	SetUpExtension(db, "smoke");
	LoadTable(db, "t", 100, "smoke");
	auto c = CheckRows(db, "t", BaseExpectation(100), 0);
	EXPECT_EQ(c.rows, 100);
	EXPECT_EQ(c.wrong_secret + c.missing + c.unexpected, 0);
	EXPECT_EQ(
		db.value("SELECT count(*) FROM t WHERE (pgkm_ciphertext_info(secret)).key_version = 1"),
		"100");

	// The row check itself sees a wrong value, a wrong plaintext and a missing row.
	db.exec("UPDATE t SET other = 5 WHERE id = 3");
	db.exec("UPDATE t SET secret = pgkm_encrypt('other'::text, 'smoke', '4') WHERE id = 4");
	db.exec("DELETE FROM t WHERE id = 5");
	RowCheck bad = CheckRows(db, "t", BaseExpectation(100), 0, /*max_report=*/0);
	EXPECT_EQ(bad.wrong_other, 1);
	EXPECT_EQ(bad.wrong_secret, 1);
	EXPECT_EQ(bad.missing, 1);

	// A wrong context fails authentication with 22000; an unknown key with 42704.
	Result wrong = db.query("SELECT pgkm_decrypt_text(secret, 'nope') FROM t WHERE id = 1");
	EXPECT_FALSE(wrong.ok());
	EXPECT_EQ(wrong.sqlstate(), "22000") << wrong.message();
	Result unknown = db.query("SELECT pgkm_encrypt('x'::text, 'no_such_key')");
	EXPECT_EQ(unknown.sqlstate(), "42704") << unknown.message();

	// The data survives a restart; a new backend unwraps the DEK again through the token.
	cluster.restart();
	Connection again = cluster.connect();
	EXPECT_EQ(again.value("SELECT pgkm_decrypt_text(secret, id::text) FROM t WHERE id = 42"),
			  Secret(42, 0));
	EXPECT_EQ(again.value("SELECT current_setting('shared_preload_libraries')"), "pgkm");
}

} // namespace pgkm::it
