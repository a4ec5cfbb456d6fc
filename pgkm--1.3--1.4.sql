/* pgkm--1.3--1.4.sql: searchable encryption and per-subject erasure. Deterministic
   encryption (AES-256-SIV), rotatable blind indexes (truncated HMAC-SHA-256), a bounded key
   cache for thousands of per-subject keys, and crypto-shredding with pgkm.erase_subject. */

\echo Use "ALTER EXTENSION pgkm UPDATE TO '1.4'" to load this file. \quit

-- == searchable encryption: key algorithms, deterministic values, blind indexes ==

-- Key names may hold a subject's identifier: customer:4711, tenant/42 (per-subject keys).
ALTER TABLE pgkm.keys DROP CONSTRAINT keys_name_check;
ALTER TABLE pgkm.keys ADD CONSTRAINT keys_name_check
	CHECK (name OPERATOR(pg_catalog.~) '^[A-Za-z_][A-Za-z0-9_.:/-]{0,62}$');

-- A key serves one algorithm: aes-256-gcm (randomized, pgkm_encrypt), aes-256-siv
-- (deterministic, pgkm_encrypt_det) or blind-index (truncated HMAC-SHA-256, pgkm_blind_index,
-- keeping blind_index_bytes bytes of it). Each working key is derived from the version's DEK
-- with its own HKDF label, and a key of one algorithm is refused by the others' functions.
ALTER TABLE pgkm.keys DROP CONSTRAINT keys_algorithm_check;
ALTER TABLE pgkm.keys ADD CONSTRAINT keys_algorithm_check
	CHECK (algorithm IN ('aes-256-gcm', 'aes-256-siv', 'blind-index'));
ALTER TABLE pgkm.keys ADD COLUMN blind_index_bytes integer
	CHECK (blind_index_bytes BETWEEN 1 AND 32);
ALTER TABLE pgkm.keys ADD CONSTRAINT keys_blind_index_only_check
	CHECK ((algorithm OPERATOR(pg_catalog.=) 'blind-index') = (blind_index_bytes IS NOT NULL));

CREATE FUNCTION pgkm.create_key(name text, encrypt_role regrole DEFAULT NULL,
	decrypt_role regrole DEFAULT NULL, algorithm text DEFAULT 'aes-256-gcm',
	blind_index_bytes integer DEFAULT NULL)
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'pgkm_create_key'
	LANGUAGE C VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION pgkm.create_key(text, regrole, regrole, text, integer) IS
	'creates a named key with version 1 active; roles default to the caller; algorithm '
	'aes-256-gcm (default), aes-256-siv or blind-index (blind_index_bytes: 1 to 32, default 8)';
-- The new signature replaces the old one; roles that could run the old one keep that right.
DO $$
DECLARE
	g record;
BEGIN
	FOR g IN SELECT a.grantee::pg_catalog.regrole::pg_catalog.text AS grantee, a.is_grantable
		FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
		WHERE p.oid OPERATOR(pg_catalog.=)
				'pgkm.create_key(text, regrole, regrole)'::pg_catalog.regprocedure
			AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
			AND a.grantee OPERATOR(pg_catalog.<>) 0
			AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
	LOOP
		EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION'
			' pgkm.create_key(text, regrole, regrole, text, integer) TO %s%s', g.grantee,
			CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
	END LOOP;
END
$$;
DROP FUNCTION pgkm.create_key(text, regrole, regrole);

-- Deterministic encryption and blind indexes. STABLE, not IMMUTABLE: the value depends on the
-- key's active version, which rotation changes; an IMMUTABLE function could be kept in an
-- index expression or a generated column that the rotation worker cannot rewrite, and
-- lookups would silently miss rows. Store the values in columns registered with
-- pgkm.protect_column instead. Either key role may compute them (a writer stores them, a
-- reader searches with them). PARALLEL RESTRICTED like the other data-path functions since
-- 1.2: their uses are audited by the leader, which knows the statement. Text is encrypted as its bytes, unnormalised: text and bytea
-- of the same bytes give the same value.
CREATE FUNCTION @extschema@.pgkm_encrypt_det(data bytea, key_name text, context bytea DEFAULT NULL)
	RETURNS bytea
	AS 'MODULE_PATHNAME', 'pgkm_encrypt_det'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
CREATE FUNCTION @extschema@.pgkm_encrypt_det(data bytea, key_name text, context text)
	RETURNS bytea
	AS 'MODULE_PATHNAME', 'pgkm_encrypt_det'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
CREATE FUNCTION @extschema@.pgkm_encrypt_det(data text, key_name text, context text DEFAULT NULL)
	RETURNS bytea
	AS 'MODULE_PATHNAME', 'pgkm_encrypt_det'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.pgkm_encrypt_det(bytea, text, bytea) IS
	'AES-256-SIV under the key''s active version: equal values give equal ciphertexts';

CREATE FUNCTION @extschema@.pgkm_encrypt_det_all(data bytea, key_name text,
	context bytea DEFAULT NULL)
	RETURNS bytea[]
	AS 'MODULE_PATHNAME', 'pgkm_encrypt_det_all'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
CREATE FUNCTION @extschema@.pgkm_encrypt_det_all(data bytea, key_name text, context text)
	RETURNS bytea[]
	AS 'MODULE_PATHNAME', 'pgkm_encrypt_det_all'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
CREATE FUNCTION @extschema@.pgkm_encrypt_det_all(data text, key_name text,
	context text DEFAULT NULL)
	RETURNS bytea[]
	AS 'MODULE_PATHNAME', 'pgkm_encrypt_det_all'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.pgkm_encrypt_det_all(bytea, text, bytea) IS
	'pgkm_encrypt_det under every version a lookup must try during a rotation (active first)';

CREATE FUNCTION @extschema@.pgkm_blind_index(data bytea, key_name text)
	RETURNS bytea
	AS 'MODULE_PATHNAME', 'pgkm_blind_index'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
CREATE FUNCTION @extschema@.pgkm_blind_index(data text, key_name text)
	RETURNS bytea
	AS 'MODULE_PATHNAME', 'pgkm_blind_index'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.pgkm_blind_index(bytea, text) IS
	'header and truncated HMAC-SHA-256 under the blind-index key''s active version';

CREATE FUNCTION @extschema@.pgkm_blind_index_all(data bytea, key_name text)
	RETURNS bytea[]
	AS 'MODULE_PATHNAME', 'pgkm_blind_index_all'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
CREATE FUNCTION @extschema@.pgkm_blind_index_all(data text, key_name text)
	RETURNS bytea[]
	AS 'MODULE_PATHNAME', 'pgkm_blind_index_all'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.pgkm_blind_index_all(bytea, text) IS
	'pgkm_blind_index under every version a lookup must try during a rotation (active first)';

-- == rotation of deterministic and blind-index columns ==

-- A blind-index column is rebuilt from another protected column of its table (its source),
-- which holds the same value encrypted (aes-256-gcm or aes-256-siv) under its own key and
-- context column: the rotation worker cannot recompute a keyed hash from the hash itself.
ALTER TABLE pgkm.protected_columns ADD COLUMN source_column name;

CREATE FUNCTION pgkm.protect_column(table_name regclass, column_name name, key_name text,
	context_column name DEFAULT NULL, source_column name DEFAULT NULL)
	RETURNS void
	AS 'MODULE_PATHNAME', 'pgkm_protect_column'
	LANGUAGE C VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION pgkm.protect_column(regclass, name, text, name, name) IS
	'registers a bytea column encrypted under a key (deterministic and randomized keys take an '
	'optional context column; blind-index keys need source_column, the protected column '
	'holding the value''s ciphertext), so the worker re-encrypts or rebuilds it after rotations';
-- The new signature replaces the old one; roles that could run the old one keep that right.
DO $$
DECLARE
	g record;
BEGIN
	FOR g IN SELECT a.grantee::pg_catalog.regrole::pg_catalog.text AS grantee, a.is_grantable
		FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
		WHERE p.oid OPERATOR(pg_catalog.=)
				'pgkm.protect_column(regclass, name, text, name)'::pg_catalog.regprocedure
			AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
			AND a.grantee OPERATOR(pg_catalog.<>) 0
			AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
	LOOP
		EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION'
			' pgkm.protect_column(regclass, name, text, name, name) TO %s%s', g.grantee,
			CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
	END LOOP;
END
$$;
DROP FUNCTION pgkm.protect_column(regclass, name, text, name);
REVOKE ALL ON FUNCTION pgkm.protect_column(regclass, name, text, name, name) FROM PUBLIC;

-- Data path of the worker for blind-index columns: the blind index of the value a source
-- ciphertext encrypts, under the blind-index key's active version, never returning the
-- plaintext. Needs the source key's decrypt role and a role of the blind-index key.
-- PARALLEL RESTRICTED like pgkm_rewrap: it runs in the leader, which audits every use.
CREATE FUNCTION @extschema@.pgkm_blind_index_rebuild(source bytea, source_context bytea,
	blind_key_id bigint)
	RETURNS bytea
	AS 'MODULE_PATHNAME', 'pgkm_blind_index_rebuild'
	LANGUAGE C VOLATILE PARALLEL RESTRICTED;
CREATE FUNCTION @extschema@.pgkm_blind_index_rebuild(source bytea, source_context text,
	blind_key_id bigint)
	RETURNS bytea
	AS 'MODULE_PATHNAME', 'pgkm_blind_index_rebuild'
	LANGUAGE C VOLATILE PARALLEL RESTRICTED;

-- == key cache ==

-- This backend's key cache, bounded by pgkm.key_cache_size (LRU): for sizing the setting and
-- for the tests. Per backend, so PARALLEL RESTRICTED; revoked from PUBLIC below.
CREATE FUNCTION pgkm.key_cache_stats(OUT capacity integer, OUT cached_versions integer,
	OUT cached_keys integer, OUT hits bigint, OUT misses bigint, OUT unwraps bigint,
	OUT unwrap_ms double precision, OUT evictions bigint, OUT resets bigint,
	OUT locked_bytes bigint, OUT arena_pages integer)
	RETURNS record
	AS 'MODULE_PATHNAME', 'pgkm_key_cache_stats'
	LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION pgkm.key_cache_stats() IS
	'this backend''s key cache: capacity, cached versions and keys, hits, misses, token unwraps '
	'and their time, LRU evictions, resets, locked bytes and arena pages';

-- == erasure and master-key destruction ==

-- An erased key stays in pgkm.keys, so that its name is never silently reused and encrypting
-- under it gives a clear error: when, by whom (the current user, whose authority was used, and
-- the session user who logged in). Every version of it is 'destroyed'.
ALTER TABLE pgkm.keys
	ADD COLUMN erased_at timestamptz,
	ADD COLUMN erased_by name,
	ADD COLUMN erased_session_user name,
	ADD CONSTRAINT keys_erased_check CHECK ((erased_at IS NULL) = (erased_by IS NULL)
		AND (erased_at IS NULL) = (erased_session_user IS NULL));

-- Master keys: 'destroyed' means deleted from the token by pgkm.destroy_master_key (only a
-- retired one, which wraps no key version): what it wrapped in old backups is unreadable.
ALTER TABLE pgkm.master_keys DROP CONSTRAINT master_keys_state_check;
ALTER TABLE pgkm.master_keys ADD CONSTRAINT master_keys_state_check
	CHECK (state IN ('active', 'previous', 'retired', 'destroyed'));
ALTER TABLE pgkm.master_keys
	ADD COLUMN destroyed_at timestamptz,
	ADD COLUMN destroyed_by name,
	ADD CONSTRAINT master_keys_destroyed_check
		CHECK ((state OPERATOR(pg_catalog.=) 'destroyed') = (destroyed_at IS NOT NULL)
			AND (destroyed_at IS NULL) = (destroyed_by IS NULL));

-- Crypto-shredding of one subject's key; returns the report (evidence). Key owner or superuser.
CREATE FUNCTION pgkm.erase_subject(key_name text) RETURNS jsonb
	AS 'MODULE_PATHNAME', 'pgkm_erase_subject'
	LANGUAGE C VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION pgkm.erase_subject(text) IS
	'destroys every version of a key for good, marks it erased and returns a jsonb report';

-- Deletes a retired master key from the token (superuser only). The token is shared by every
-- database that uses it: retire the key in each of them first.
CREATE FUNCTION pgkm.destroy_master_key(label text) RETURNS void
	AS 'MODULE_PATHNAME', 'pgkm_destroy_master_key'
	LANGUAGE C VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION pgkm.destroy_master_key(text) IS
	'deletes a retired master key from the PKCS#11 token for good (superuser only)';

-- The audit log's partitions become members of the extension, as the worker now makes each new
-- one. Before, pg_dump dumped them as ordinary tables, and restoring such a dump failed: the
-- append-only guard refused the records, the partitions' indexes were created twice, and the
-- restored database's worker could not create its partition (its name was taken) and so never
-- wrote an audit record. The audit log and its state are not in pg_dump's output now: a
-- restored database starts a new chain (the audit log in backups is issue 7's).
DO $$
DECLARE
	part pg_catalog.text;
BEGIN
	FOR part IN
		SELECT c.relname::pg_catalog.text FROM pg_catalog.pg_inherits i
		JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.inhrelid
		WHERE i.inhparent OPERATOR(pg_catalog.=) 'pgkm.audit_log'::pg_catalog.regclass
		AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
			WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
			AND d.objid OPERATOR(pg_catalog.=) c.oid
			AND d.deptype OPERATOR(pg_catalog.=) 'e')
	LOOP
		EXECUTE pg_catalog.format('ALTER EXTENSION pgkm ADD TABLE pgkm.%I', part);
	END LOOP;
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgkm FROM PUBLIC;
