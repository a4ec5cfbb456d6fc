/* pgkm--1.4--1.5.sql: operations. Integrity verification (pgkm.verify) usable as a restore
   drill, dump and restore, physical backups, replicas, upgrades and parallel query. */

\echo Use "ALTER EXTENSION pgkm UPDATE TO '1.5'" to load this file. \quit

-- == verify: integrity verification and restore drills ==

-- Tries to decrypt every non-NULL value of the registered protected columns (all, or those of
-- one table) with its context, never returning plaintext; one row per column, key and version
-- with the values that opened (values_ok) and the failures by kind, and the first failing rows
-- (primary key as text, or ctid) as 'kind: key'. Blind-index values are checked by header: a
-- known, usable version of a blind-index key. Scans in batches through a cursor; sleeps to
-- stay under max_rows_per_second (0: no limit). Runs as the caller: SELECT on the tables and
-- the decrypt role of each key are needed (a key the caller may not use counts as denied).
CREATE FUNCTION pgkm.verify(relation regclass DEFAULT NULL,
	max_rows_per_second integer DEFAULT 0,
	OUT table_name regclass, OUT column_name name, OUT key_id bigint, OUT key_name text,
	OUT key_version integer, OUT values_total bigint, OUT values_ok bigint,
	OUT missing_key bigint, OUT destroyed bigint, OUT disabled bigint, OUT denied bigint,
	OUT auth_failed bigint, OUT wrong_master_key bigint, OUT malformed bigint,
	OUT first_failures text[])
	RETURNS SETOF record
	AS 'MODULE_PATHNAME', 'pgkm_verify'
	LANGUAGE C VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION pgkm.verify(regclass, integer) FROM PUBLIC;

CREATE FUNCTION pgkm.verify_progress_slots(OUT pid integer, OUT table_name regclass,
	OUT column_name name, OUT rows_done bigint, OUT rows_total bigint, OUT failures bigint,
	OUT started_at timestamptz)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME', 'pgkm_verify_progress'
	LANGUAGE C VOLATILE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION pgkm.verify_progress_slots() FROM PUBLIC;

-- The verifications running in this database: the column being scanned, its rows done so
-- far against the planner's estimate, and the failures of the whole run so far.
CREATE VIEW pgkm.verify_progress AS
	SELECT s.pid, s.table_name, s.column_name, s.rows_done, s.rows_total, s.failures,
		s.started_at
	FROM pgkm.verify_progress_slots() s;
REVOKE ALL ON pgkm.verify_progress FROM PUBLIC;

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

-- The data path runs in parallel workers (and, under Citus, on the worker nodes): a parallel
-- worker is a separate backend with the leader's user, snapshot and settings. It reads the
-- key catalog with SPI (read only, with the transaction snapshot), unwraps the DEK through
-- its own token session, draws nonces from its own pool (fork-safe) and counts encryptions in
-- shared memory; it writes no catalog row. Its key uses and failures go to the shared audit
-- ring as its own records (flushed at its parallel pre-commit); the leader alone notes the
-- statement. pgkm_rewrap and pgkm_blind_index_rebuild stay PARALLEL RESTRICTED: they serve
-- UPDATEs (rotation, index rebuilds), which PostgreSQL does not run in parallel.
ALTER FUNCTION @extschema@.pgkm_decrypt(bytea, bytea) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_decrypt(bytea, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_decrypt_text(bytea, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt(bytea, text, bytea) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt(bytea, text, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt(text, text, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt_det(bytea, text, bytea) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt_det(bytea, text, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt_det(text, text, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt_det_all(bytea, text, bytea) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt_det_all(bytea, text, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt_det_all(text, text, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_blind_index(bytea, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_blind_index(text, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_blind_index_all(bytea, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_blind_index_all(text, text) PARALLEL SAFE;
