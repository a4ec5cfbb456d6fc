/* pgkm--1.5--1.6.sql: the audit log travels in pg_dump. Its partitions are ordinary tables
   again (not extension members), each with its own indexes; the partition registry is dumped
   as configuration; a restore may load records into a database whose audit log is still
   empty, and the worker continues the restored chain. */

\echo Use "ALTER EXTENSION pgkm UPDATE TO '1.6'" to load this file. \quit

-- How the pieces fit a dump (pg_dump, pg_restore, psql):
--  * A full dump creates each partition (CREATE TABLE, ALTER TABLE pgkm.audit_log ATTACH
--    PARTITION: the append-only row trigger is cloned onto it), loads its records, then
--    creates its indexes and its TRUNCATE guard.
--  * A data-only dump carries pgkm.audit_partitions (configuration) and the partitions'
--    records, not the partitions. Inserting a registry row creates the partition it names if
--    it does not exist (the trigger below). pg_dump writes table data in name order within a
--    schema, so the registry, audit_partitions, comes before its partitions, audit_records_*:
--    this is why the partitions are renamed from audit_log_* (which sorts first).
--  * pgkm.audit_state is not dumped: the restored database's worker finds records in an audit
--    log whose state says it has none, continues the chain from the newest one and records
--    that it did (action 'restored').
--  * Records are accepted from a session other than the worker only while the audit_state
--    says the log is empty (and the session holds that row until it commits, so the worker
--    waits): records cannot be slipped into a running chain, nor two chains merged.
--  * The parent's indexes go: ATTACH PARTITION would create a partition's copy of them before
--    the dump's own CREATE INDEX for that partition, which then fails. Each partition gets
--    its own (seq) and (key_name, seq) indexes, which the planner uses the same way.

-- Creates the partition a new registry row names, unless it exists (a full restore made it,
-- or the worker did). From a session other than the worker, only into an empty audit log.
CREATE FUNCTION pgkm.audit_partition_added() RETURNS trigger
	AS 'MODULE_PATHNAME', 'pgkm_audit_partition_added'
	LANGUAGE C SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION pgkm.audit_partition_added() FROM PUBLIC;
CREATE TRIGGER audit_partitions_create BEFORE INSERT ON pgkm.audit_partitions
	FOR EACH ROW EXECUTE FUNCTION pgkm.audit_partition_added();

SELECT pg_catalog.pg_extension_config_dump('pgkm.audit_partitions', '');

DROP INDEX pgkm.audit_log_seq;
DROP INDEX pgkm.audit_log_key;

-- Existing partitions: out of the extension, renamed to audit_records_*, indexed.
DO $$
DECLARE
	part pg_catalog.text;
	renamed pg_catalog.text;
BEGIN
	FOR part IN
		SELECT c.relname::pg_catalog.text FROM pg_catalog.pg_inherits i
		JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.inhrelid
		WHERE i.inhparent OPERATOR(pg_catalog.=) 'pgkm.audit_log'::pg_catalog.regclass
		ORDER BY 1
	LOOP
		IF EXISTS (SELECT FROM pg_catalog.pg_depend d
				WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
				AND d.objid OPERATOR(pg_catalog.=) pg_catalog.format('pgkm.%I', part)::pg_catalog.regclass
				AND d.deptype OPERATOR(pg_catalog.=) 'e') THEN
			EXECUTE pg_catalog.format('ALTER EXTENSION pgkm DROP TABLE pgkm.%I', part);
		END IF;
		renamed := part;
		IF part OPERATOR(pg_catalog.~) '^audit_log_[0-9]' THEN
			renamed := 'audit_records_' OPERATOR(pg_catalog.||) pg_catalog.substr(part, 11);
			EXECUTE pg_catalog.format('ALTER TABLE pgkm.%I RENAME TO %I', part, renamed);
			UPDATE pgkm.audit_partitions SET name = renamed
				WHERE name OPERATOR(pg_catalog.=) part;
		END IF;
		EXECUTE pg_catalog.format('CREATE INDEX %I ON pgkm.%I (seq)',
			renamed OPERATOR(pg_catalog.||) '_seq', renamed);
		EXECUTE pg_catalog.format('CREATE INDEX %I ON pgkm.%I (key_name, seq)',
			renamed OPERATOR(pg_catalog.||) '_key', renamed);
	END LOOP;
END
$$;
