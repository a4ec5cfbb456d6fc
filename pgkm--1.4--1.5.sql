/* pgkm--1.4--1.5.sql: operations. Integrity verification (pgkm.verify) usable as a restore
   drill, dump and restore, physical backups, replicas, upgrades and parallel query. */

\echo Use "ALTER EXTENSION pgkm UPDATE TO '1.5'" to load this file. \quit

-- == verify: integrity verification and restore drills ==

-- == dump and restore ==

-- == replication ==

-- A logical-replication subscriber receives key catalog changes through its apply worker,
-- which runs with session_replication_role = replica and fires only row-level triggers
-- enabled REPLICA or ALWAYS (and statement-level ones for TRUNCATE). Without these, a
-- subscriber session with a warm key cache would go on using a version the publisher
-- disabled or destroyed until pgkm.key_cache_ttl. The row-level triggers fire only in replica
-- mode (the statement-level ones cover ordinary sessions); the encryption counts the
-- publisher's worker flushes do not empty the subscriber's caches.
ALTER TABLE pgkm.master_keys ENABLE ALWAYS TRIGGER master_keys_changed;
ALTER TABLE pgkm.keys ENABLE ALWAYS TRIGGER keys_changed;
ALTER TABLE pgkm.key_versions ENABLE ALWAYS TRIGGER key_versions_changed;
ALTER TABLE pgkm.protected_columns ENABLE ALWAYS TRIGGER protected_columns_changed;
CREATE TRIGGER master_keys_replicated AFTER INSERT OR UPDATE OR DELETE
	ON pgkm.master_keys FOR EACH ROW EXECUTE FUNCTION pgkm.catalog_changed();
CREATE TRIGGER keys_replicated AFTER INSERT OR UPDATE OR DELETE
	ON pgkm.keys FOR EACH ROW EXECUTE FUNCTION pgkm.catalog_changed();
CREATE TRIGGER key_versions_replicated AFTER INSERT OR DELETE
	ON pgkm.key_versions FOR EACH ROW EXECUTE FUNCTION pgkm.catalog_changed();
CREATE TRIGGER key_versions_replicated_update AFTER UPDATE
	ON pgkm.key_versions FOR EACH ROW
	WHEN (OLD.encryptions IS NOT DISTINCT FROM NEW.encryptions
		OR OLD.state IS DISTINCT FROM NEW.state
		OR OLD.wrapped_dek IS DISTINCT FROM NEW.wrapped_dek
		OR OLD.master_key_id IS DISTINCT FROM NEW.master_key_id)
	EXECUTE FUNCTION pgkm.catalog_changed();
CREATE TRIGGER protected_columns_replicated AFTER INSERT OR UPDATE OR DELETE
	ON pgkm.protected_columns FOR EACH ROW EXECUTE FUNCTION pgkm.catalog_changed();
ALTER TABLE pgkm.master_keys ENABLE REPLICA TRIGGER master_keys_replicated;
ALTER TABLE pgkm.keys ENABLE REPLICA TRIGGER keys_replicated;
ALTER TABLE pgkm.key_versions ENABLE REPLICA TRIGGER key_versions_replicated;
ALTER TABLE pgkm.key_versions ENABLE REPLICA TRIGGER key_versions_replicated_update;
ALTER TABLE pgkm.protected_columns ENABLE REPLICA TRIGGER protected_columns_replicated;

-- == parallel query ==
