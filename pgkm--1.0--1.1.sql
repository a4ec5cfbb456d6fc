/* pgkm--1.0--1.1.sql: online rotation: protected columns, re-encryption jobs run by
   background workers, master-key rotation, enforced key lifecycle, rotation policies */

\echo Use "ALTER EXTENSION pgkm UPDATE TO '1.1'" to load this file. \quit

-- Rotation policy of each key: rotate when the active version is older than max_age, or
-- when it has encrypted max_encryptions values. Random-nonce GCM must stay well below 2^32
-- encryptions per version: the default rotates at one billion without any configuration.
ALTER TABLE pgkm.keys
	ADD COLUMN rotation_max_age interval CHECK (rotation_max_age > '0'::interval),
	ADD COLUMN rotation_max_encryptions bigint NOT NULL DEFAULT 1000000000
		CHECK (rotation_max_encryptions BETWEEN 1 AND 2147483648);

-- A disabled version remembers the state it is re-enabled to.
ALTER TABLE pgkm.key_versions
	ADD COLUMN disabled_from text CHECK (disabled_from IN ('active', 'decrypt_only')),
	ADD CHECK ((state = 'disabled') = (disabled_from IS NOT NULL));

-- Master keys: 'active' wraps new DEKs; 'previous' may still wrap some until re-wrapped;
-- 'retired' wraps none (pgkm.retire_master_key checks), so it may leave the token.
ALTER TABLE pgkm.master_keys DROP CONSTRAINT master_keys_state_check;
ALTER TABLE pgkm.master_keys ADD CONSTRAINT master_keys_state_check
	CHECK (state IN ('active', 'previous', 'retired'));

-- Columns whose values pgkm re-encrypts, verifies and audits. The table needs a
-- single-column primary key: re-encryption walks it in order.
CREATE TABLE pgkm.protected_columns (
	table_name regclass NOT NULL,
	column_name name NOT NULL,
	key_id bigint NOT NULL REFERENCES pgkm.keys,
	context_column name,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	created_by name NOT NULL,
	PRIMARY KEY (table_name, column_name)
);

-- Resumable re-encryption of one protected column to one target version. The worker
-- checkpoints last_key (the primary key value, as text) in each batch's own transaction.
CREATE TABLE pgkm.rotation_jobs (
	job_id bigserial PRIMARY KEY,
	table_name regclass NOT NULL,
	column_name name NOT NULL,
	key_id bigint NOT NULL REFERENCES pgkm.keys,
	target_version integer NOT NULL,
	state text NOT NULL DEFAULT 'pending'
		CHECK (state IN ('pending', 'running', 'paused', 'done', 'cancelled', 'failed')),
	phase text NOT NULL DEFAULT 'scan' CHECK (phase IN ('scan', 'sweep', 'finished')),
	last_key text,
	rows_done bigint NOT NULL DEFAULT 0,
	rows_total bigint,
	sweeps integer NOT NULL DEFAULT 0,
	batches bigint NOT NULL DEFAULT 0,
	error text,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	created_by name NOT NULL,
	started_at timestamptz,
	updated_at timestamptz,
	finished_at timestamptz
);
CREATE INDEX rotation_jobs_open ON pgkm.rotation_jobs (job_id)
	WHERE state IN ('pending', 'running');

-- Who did what to which key, and when: rotations, jobs, lifecycle and master-key changes.
-- (The audit issue routes these to the audit log as well.)
CREATE TABLE pgkm.key_events (
	event_id bigserial PRIMARY KEY,
	at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	actor name NOT NULL,
	action text NOT NULL,
	key_id bigint,
	version integer,
	detail text
);

SELECT pg_catalog.pg_extension_config_dump('pgkm.protected_columns', '');
SELECT pg_catalog.pg_extension_config_dump('pgkm.rotation_jobs', '');
SELECT pg_catalog.pg_extension_config_dump('pgkm.rotation_jobs_job_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('pgkm.key_events', '');
SELECT pg_catalog.pg_extension_config_dump('pgkm.key_events_event_id_seq', '');
REVOKE ALL ON pgkm.protected_columns, pgkm.rotation_jobs, pgkm.key_events FROM PUBLIC;
REVOKE ALL ON SEQUENCE pgkm.rotation_jobs_job_id_seq, pgkm.key_events_event_id_seq FROM PUBLIC;

CREATE TRIGGER protected_columns_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON pgkm.protected_columns FOR EACH STATEMENT EXECUTE FUNCTION pgkm.catalog_changed();

-- Data path: re-encrypts one value under its key's active version, never returning the
-- plaintext to SQL; a value already under the active version is returned unchanged.
CREATE FUNCTION @extschema@.pgkm_rewrap(ciphertext bytea, context bytea DEFAULT NULL)
	RETURNS bytea
	AS 'MODULE_PATHNAME', 'pgkm_rewrap'
	LANGUAGE C VOLATILE PARALLEL SAFE;
CREATE FUNCTION @extschema@.pgkm_rewrap(ciphertext bytea, context text)
	RETURNS bytea
	AS 'MODULE_PATHNAME', 'pgkm_rewrap'
	LANGUAGE C VOLATILE PARALLEL SAFE;

-- Header fields without a catalog lookup, for the worker's predicates.
CREATE FUNCTION pgkm.ciphertext_key_id(ciphertext bytea) RETURNS bigint
	AS 'MODULE_PATHNAME', 'pgkm_ciphertext_key_id'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION pgkm.ciphertext_version(ciphertext bytea) RETURNS bigint
	AS 'MODULE_PATHNAME', 'pgkm_ciphertext_version'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- Protected columns.
CREATE FUNCTION pgkm.protect_column(table_name regclass, column_name name, key_name text,
	context_column name DEFAULT NULL)
	RETURNS void
	AS 'MODULE_PATHNAME', 'pgkm_protect_column'
	LANGUAGE C VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION pgkm.unprotect_column(table_name regclass, column_name name)
	RETURNS void
	AS 'MODULE_PATHNAME', 'pgkm_unprotect_column'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;

-- Re-encryption jobs.
CREATE FUNCTION pgkm.start_reencryption(table_name regclass, column_name name)
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'pgkm_start_reencryption'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION pgkm.pause_job(job_id bigint) RETURNS void
	AS 'MODULE_PATHNAME', 'pgkm_pause_job'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION pgkm.resume_job(job_id bigint) RETURNS void
	AS 'MODULE_PATHNAME', 'pgkm_resume_job'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION pgkm.cancel_job(job_id bigint) RETURNS void
	AS 'MODULE_PATHNAME', 'pgkm_cancel_job'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;

-- Key lifecycle.
CREATE FUNCTION pgkm.disable_key_version(key_name text, version integer) RETURNS void
	AS 'MODULE_PATHNAME', 'pgkm_disable_key_version'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION pgkm.enable_key_version(key_name text, version integer) RETURNS void
	AS 'MODULE_PATHNAME', 'pgkm_enable_key_version'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION pgkm.destroy_key_version(key_name text, version integer) RETURNS void
	AS 'MODULE_PATHNAME', 'pgkm_destroy_key_version'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION pgkm.set_rotation_policy(key_name text, max_age interval DEFAULT NULL,
	max_encryptions bigint DEFAULT NULL)
	RETURNS void
	AS 'MODULE_PATHNAME', 'pgkm_set_rotation_policy'
	LANGUAGE C VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;

-- Master keys.
CREATE FUNCTION pgkm.rotate_master_key() RETURNS text
	AS 'MODULE_PATHNAME', 'pgkm_rotate_master_key'
	LANGUAGE C VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION pgkm.retire_master_key(label text) RETURNS void
	AS 'MODULE_PATHNAME', 'pgkm_retire_master_key'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;

-- Starts this database's background worker (CREATE EXTENSION does; the launcher does at
-- server start). Returns false if one already runs.
CREATE FUNCTION pgkm.start_worker() RETURNS boolean
	AS 'MODULE_PATHNAME', 'pgkm_start_worker'
	LANGUAGE C VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;

CREATE VIEW pgkm.rotation_progress AS
	SELECT j.job_id,
		j.table_name,
		j.column_name,
		k.name AS key_name,
		j.target_version,
		j.state,
		j.phase,
		j.rows_done,
		j.rows_total,
		CASE WHEN j.started_at IS NOT NULL AND COALESCE(j.finished_at, j.updated_at) > j.started_at
			THEN round((j.rows_done / extract(epoch FROM
				COALESCE(j.finished_at, j.updated_at) - j.started_at))::numeric, 1)
		END AS rows_per_second,
		CASE WHEN j.state = 'running' AND j.rows_done > 0 AND j.rows_total > j.rows_done
			THEN (COALESCE(j.updated_at, pg_catalog.now()) - j.started_at)
				* ((j.rows_total - j.rows_done)::float8 / j.rows_done)
		END AS eta,
		j.sweeps,
		j.error,
		j.created_at,
		j.started_at,
		j.updated_at,
		j.finished_at
	FROM pgkm.rotation_jobs j
	JOIN pgkm.keys k ON k.key_id OPERATOR(pg_catalog.=) j.key_id;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgkm FROM PUBLIC;
REVOKE ALL ON pgkm.rotation_progress FROM PUBLIC;

-- Starts the worker for this database now.
SELECT pgkm.start_worker();
