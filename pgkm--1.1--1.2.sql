-- pgkm 1.2: the access audit. Every use of a key (encrypt, decrypt, rewrap), every denied or
-- failed attempt, every statement that reads or writes a protected column and every key
-- administration goes through a shared-memory ring to the database's worker, which appends
-- it to pgkm.audit_log in its own transactions, hash-chained and sealed by an HMAC key held
-- in the PKCS#11 token.
\echo Use "ALTER EXTENSION pgkm UPDATE TO '1.2'" to load this file. \quit

-- The log. One writer (the worker) assigns seq, prev_hash and hash:
--   hash = SHA-256(prev_hash || canonical encoding of every other column, in table order)
-- Partitioned by the time the worker wrote the record (written_at, never decreasing along
-- seq), so each partition holds a contiguous run of the chain and retention drops whole
-- partitions. Checkpoint records carry mac = HMAC-SHA-256 computed inside the token over
-- (ref_seq, ref_hash): the newest record they seal. Anchor records, written before a
-- retention drop, seal the first kept record's seq and prev_hash the same way.
CREATE TABLE pgkm.audit_log (
	seq bigint NOT NULL,
	at timestamptz NOT NULL,
	written_at timestamptz NOT NULL,
	database_name text NOT NULL,
	session_user_name text,
	current_user_name text,
	application_name text,
	client_addr text,
	backend_pid integer,
	action text NOT NULL,
	key_name text,
	key_version integer,
	relation text,
	column_name text,
	command text,
	query_id bigint,
	row_context text,
	row_count bigint,
	success boolean NOT NULL,
	sqlstate text,
	detail text,
	ref_seq bigint,
	ref_hash bytea,
	mac bytea,
	prev_hash bytea NOT NULL,
	hash bytea NOT NULL
) PARTITION BY RANGE (written_at);
CREATE INDEX audit_log_seq ON pgkm.audit_log (seq);
CREATE INDEX audit_log_key ON pgkm.audit_log (key_name, seq);
COMMENT ON TABLE pgkm.audit_log IS
	'pgkm access audit: append-only, hash-chained, sealed by a token-held HMAC key; check with pgkm.verify_audit_log()';

-- The writer's position: the chain head and the newest partition's upper bound. One row.
CREATE TABLE pgkm.audit_state (
	id integer PRIMARY KEY CHECK (id = 1),
	last_seq bigint NOT NULL DEFAULT 0,
	last_hash bytea NOT NULL DEFAULT '\x0000000000000000000000000000000000000000000000000000000000000000',
	last_checkpoint_seq bigint NOT NULL DEFAULT 0,
	last_checkpoint_at timestamptz,
	last_written_at timestamptz
);
INSERT INTO pgkm.audit_state (id) VALUES (1);

-- The partitions the worker made, with their bounds, for retention.
CREATE TABLE pgkm.audit_partitions (
	name name PRIMARY KEY,
	lower_bound timestamptz NOT NULL,
	upper_bound timestamptz NOT NULL
);

REVOKE ALL ON pgkm.audit_log, pgkm.audit_state, pgkm.audit_partitions FROM PUBLIC;

-- Append-only: rows are never updated or deleted, tables never truncated. Inserts come from
-- the worker alone (the guard knows its process). Retention drops whole partitions.
CREATE FUNCTION pgkm.audit_guard() RETURNS trigger
	AS 'MODULE_PATHNAME', 'pgkm_audit_guard'
	LANGUAGE C;
CREATE TRIGGER audit_log_append_only BEFORE INSERT OR UPDATE OR DELETE
	ON pgkm.audit_log FOR EACH ROW EXECUTE FUNCTION pgkm.audit_guard();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE
	ON pgkm.audit_log FOR EACH STATEMENT EXECUTE FUNCTION pgkm.audit_guard();

-- Recomputes the chain and checks every checkpoint and anchor through the token.
CREATE FUNCTION pgkm.verify_audit_log(OUT ok boolean, OUT records bigint,
		OUT checkpoints bigint, OUT first_seq bigint, OUT last_seq bigint,
		OUT sealed_through bigint, OUT broken_seq bigint, OUT problem text)
	AS 'MODULE_PATHNAME', 'pgkm_verify_audit_log'
	LANGUAGE C VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION pgkm.verify_audit_log() IS
	'checks the audit chain and its token-sealed checkpoints; names the first broken link';

-- Waits until every record this database queued before the call is in pgkm.audit_log;
-- with seal, also until a checkpoint seals them. Returns the chain head's seq.
CREATE FUNCTION pgkm.audit_flush(seal boolean DEFAULT false) RETURNS bigint
	AS 'MODULE_PATHNAME', 'pgkm_audit_flush'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;

-- Asks the worker to apply pgkm.audit_retention now (it also does every naptime) and waits.
-- Returns the number of partitions dropped.
CREATE FUNCTION pgkm.apply_audit_retention() RETURNS bigint
	AS 'MODULE_PATHNAME', 'pgkm_apply_audit_retention'
	LANGUAGE C VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;

-- Records that cannot be attributed to a parallel worker's leader would be incomplete:
-- the data path runs in the leader.
ALTER FUNCTION @extschema@.pgkm_decrypt(bytea, bytea) PARALLEL RESTRICTED;
ALTER FUNCTION @extschema@.pgkm_decrypt(bytea, text) PARALLEL RESTRICTED;
ALTER FUNCTION @extschema@.pgkm_decrypt_text(bytea, text) PARALLEL RESTRICTED;
ALTER FUNCTION @extschema@.pgkm_encrypt(bytea, text, bytea) PARALLEL RESTRICTED;
ALTER FUNCTION @extschema@.pgkm_encrypt(bytea, text, text) PARALLEL RESTRICTED;
ALTER FUNCTION @extschema@.pgkm_encrypt(text, text, text) PARALLEL RESTRICTED;

ALTER FUNCTION @extschema@.pgkm_rewrap(bytea, bytea) PARALLEL RESTRICTED;
ALTER FUNCTION @extschema@.pgkm_rewrap(bytea, text) PARALLEL RESTRICTED;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgkm FROM PUBLIC;
