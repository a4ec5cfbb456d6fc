// IntegrationCatalogNames: every name value pgkm stores in its catalog holds the name and
// zeros, nothing else. A name is NAMEDATALEN bytes on disk; passing a C string where a name
// Datum belongs made PostgreSQL copy NAMEDATALEN bytes from it, so the bytes after each
// name's NUL were whatever followed the string in backend memory (pointers, paths, search
// paths: seen before the fix), written to the tables, the WAL and every backup.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include <map>

namespace pgkm::it
{

namespace
{

// Decodes PostgreSQL's hex bytea output ("\x0a1b...").
std::string FromHex(const std::string &hex)
{
	std::string out;
	for (size_t i = 2; i + 1 < hex.size(); i += 2)
		out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
	return out;
}

} // namespace

TEST(IntegrationCatalogNames, NameValuesAreZeroPadded)
{
	Cluster cluster({"pgkm.worker_naptime = 1"});
	cluster.start();
	Connection db = cluster.connect();
	SetUpExtension(db, "names_key"); // keys, key_versions, master_keys, key_events (created_by)
	db.exec("CREATE EXTENSION pageinspect");
	LoadTable(db, "t", 50, "names_key");
	db.exec("SELECT pgkm.protect_column('t', 'secret', 'names_key', 'id')");
	ASSERT_EQ(db.value("SELECT pgkm.rotate_key('names_key')"), "2"); // queues a job for t.secret
	long long job = LatestJob(db, "t");
	ASSERT_GT(job, 0) << "rotate_key queued no job for t.secret";
	JobSnapshot done = WaitJobFinished(db, job, 120s);
	ASSERT_EQ(done.state, "done") << Describe(done);
	// The worker records its events under its own name ("pgkm worker").
	ASSERT_GT(std::stoll(db.value("SELECT count(*) FROM pgkm.key_events WHERE actor <> "
								  "current_user")),
			  0);

	// Every stored value of every name column of pgkm's tables, from the raw pages.
	Result r = db.exec(
		"SELECT c.relname::text, a.attname::text, h.t_attrs[a.attnum] FROM pg_class c"
		" JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'pgkm'"
		" JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
		"  AND a.atttypid = 'pg_catalog.name'::regtype"
		" CROSS JOIN LATERAL generate_series(0, (pg_relation_size(c.oid) / 8192)::int - 1) blk"
		" CROSS JOIN LATERAL heap_page_item_attrs(get_raw_page(c.oid::regclass::text, blk), c.oid)"
		"  h WHERE c.relkind = 'r' AND h.t_attrs IS NOT NULL AND h.t_attrs[a.attnum] IS NOT NULL");
	std::map<std::string, int> checked;
	int dirty = 0;
	for (int i = 0; i < r.rows(); ++i)
	{
		std::string column = r.get(i, 0) + "." + r.get(i, 1);
		std::string bytes = FromHex(r.get(i, 2));
		ASSERT_EQ(bytes.size(), 64u) << column;
		size_t end = bytes.find('\0');
		ASSERT_NE(end, std::string::npos) << column << " has no terminating NUL";
		if (bytes.find_first_not_of('\0', end) != std::string::npos)
		{
			++dirty;
			ADD_FAILURE() << column << " '" << bytes.substr(0, end)
						  << "' carries bytes after its NUL: " << r.get(i, 2);
		}
		checked[column]++;
	}
	EXPECT_EQ(dirty, 0);
	// The check saw the name columns pgkm writes from C strings.
	for (const char *column :
		 {"keys.created_by", "key_versions.created_by", "master_keys.created_by",
		  "key_events.actor", "rotation_jobs.column_name", "rotation_jobs.created_by",
		  "protected_columns.column_name", "protected_columns.created_by"})
		EXPECT_GT(checked[column], 0) << "no value of " << column << " was checked";
}

} // namespace pgkm::it
