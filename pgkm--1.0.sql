/* pgkm--1.0.sql: catalog, data-path functions and administration of pgkm 1.0 */

\echo Use "CREATE EXTENSION pgkm" to load this file. \quit

CREATE SCHEMA pgkm;
COMMENT ON SCHEMA pgkm IS 'pgkm catalog and administration';
REVOKE ALL ON SCHEMA pgkm FROM PUBLIC;

-- References to master keys in the PKCS#11 token. Never key material.
CREATE TABLE pgkm.master_keys (
	master_key_id serial PRIMARY KEY,
	label text NOT NULL UNIQUE,
	provider text NOT NULL DEFAULT 'pkcs11',
	state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'retired')),
	generated boolean NOT NULL,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	created_by name NOT NULL,
	retired_at timestamptz
);
CREATE UNIQUE INDEX master_keys_one_active ON pgkm.master_keys ((true)) WHERE state = 'active';

-- Named keys. Using a key requires membership in its encrypt or decrypt role.
CREATE TABLE pgkm.keys (
	key_id bigserial PRIMARY KEY CHECK (key_id BETWEEN 1 AND 4294967295),
	name text NOT NULL UNIQUE
		CHECK (name OPERATOR(pg_catalog.~) '^[A-Za-z_][A-Za-z0-9_.-]{0,62}$'),
	algorithm text NOT NULL DEFAULT 'aes-256-gcm' CHECK (algorithm IN ('aes-256-gcm')),
	owner regrole NOT NULL,
	encrypt_role regrole NOT NULL,
	decrypt_role regrole NOT NULL,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	created_by name NOT NULL
);

-- Versions of each named key: the DEK, only ever stored wrapped by a master key,
-- with a key check value that binds it to (key_id, version).
CREATE TABLE pgkm.key_versions (
	key_id bigint NOT NULL REFERENCES pgkm.keys,
	version integer NOT NULL CHECK (version >= 1),
	state text NOT NULL
		CHECK (state IN ('active', 'decrypt_only', 'disabled', 'retired', 'destroyed')),
	wrapped_dek bytea,
	key_check bytea,
	master_key_id integer REFERENCES pgkm.master_keys,
	wrap_mechanism text NOT NULL,
	encryptions bigint NOT NULL DEFAULT 0,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	created_by name NOT NULL,
	state_changed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (key_id, version),
	CHECK ((state = 'destroyed') = (wrapped_dek IS NULL)),
	CHECK (wrapped_dek IS NULL OR (key_check IS NOT NULL AND master_key_id IS NOT NULL))
);
CREATE UNIQUE INDEX key_versions_one_active ON pgkm.key_versions (key_id) WHERE state = 'active';

SELECT pg_catalog.pg_extension_config_dump('pgkm.master_keys', '');
SELECT pg_catalog.pg_extension_config_dump('pgkm.master_keys_master_key_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('pgkm.keys', '');
SELECT pg_catalog.pg_extension_config_dump('pgkm.keys_key_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('pgkm.key_versions', '');

REVOKE ALL ON ALL TABLES IN SCHEMA pgkm FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA pgkm FROM PUBLIC;

-- Any change to the key catalog, by pgkm's functions or by hand, invalidates every
-- backend's key cache when its transaction commits.
CREATE FUNCTION pgkm.catalog_changed() RETURNS trigger
	AS 'MODULE_PATHNAME', 'pgkm_catalog_changed'
	LANGUAGE C SET search_path = pg_catalog, pg_temp;
CREATE TRIGGER master_keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON pgkm.master_keys FOR EACH STATEMENT EXECUTE FUNCTION pgkm.catalog_changed();
CREATE TRIGGER keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON pgkm.keys FOR EACH STATEMENT EXECUTE FUNCTION pgkm.catalog_changed();
CREATE TRIGGER key_versions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON pgkm.key_versions FOR EACH STATEMENT EXECUTE FUNCTION pgkm.catalog_changed();

-- Data path. These C functions deliberately carry no SET clause: it would save and
-- restore a setting on every row. Their catalog lookups run with search_path pinned
-- to pg_catalog, pg_temp and schema-qualified names.

CREATE FUNCTION @extschema@.pgkm_encrypt(data bytea, key_name text, context bytea DEFAULT NULL)
	RETURNS bytea
	AS 'MODULE_PATHNAME', 'pgkm_encrypt'
	LANGUAGE C VOLATILE PARALLEL SAFE;
CREATE FUNCTION @extschema@.pgkm_encrypt(data bytea, key_name text, context text)
	RETURNS bytea
	AS 'MODULE_PATHNAME', 'pgkm_encrypt'
	LANGUAGE C VOLATILE PARALLEL SAFE;
CREATE FUNCTION @extschema@.pgkm_encrypt(data text, key_name text, context text DEFAULT NULL)
	RETURNS bytea
	AS 'MODULE_PATHNAME', 'pgkm_encrypt'
	LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.pgkm_encrypt(bytea, text, bytea) IS
	'AES-256-GCM under the key''s active version; context is bound as additional data';

CREATE FUNCTION @extschema@.pgkm_decrypt(ciphertext bytea, context bytea DEFAULT NULL)
	RETURNS bytea
	AS 'MODULE_PATHNAME', 'pgkm_decrypt'
	LANGUAGE C STABLE PARALLEL SAFE;
CREATE FUNCTION @extschema@.pgkm_decrypt(ciphertext bytea, context text)
	RETURNS bytea
	AS 'MODULE_PATHNAME', 'pgkm_decrypt'
	LANGUAGE C STABLE PARALLEL SAFE;
CREATE FUNCTION @extschema@.pgkm_decrypt_text(ciphertext bytea, context text DEFAULT NULL)
	RETURNS text
	AS 'MODULE_PATHNAME', 'pgkm_decrypt_text'
	LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION @extschema@.pgkm_ciphertext_info(ciphertext bytea,
	OUT format_version integer, OUT algorithm text, OUT key_id bigint, OUT key_name text,
	OUT key_version bigint)
	RETURNS record
	AS 'MODULE_PATHNAME', 'pgkm_ciphertext_info'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.pgkm_ciphertext_info(bytea) IS
	'header fields of a pgkm ciphertext; never decrypts';

-- Administration. Revoked from PUBLIC; a DBA grants EXECUTE to key administrators.
-- Changing an existing key also requires being its owner (or a superuser).

CREATE FUNCTION pgkm.create_key(name text, encrypt_role regrole DEFAULT NULL,
	decrypt_role regrole DEFAULT NULL)
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'pgkm_create_key'
	LANGUAGE C VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION pgkm.create_key(text, regrole, regrole) IS
	'creates a named key with version 1 active; roles default to the caller';

CREATE FUNCTION pgkm.rotate_key(name text)
	RETURNS integer
	AS 'MODULE_PATHNAME', 'pgkm_rotate_key'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION pgkm.rotate_key(text) IS
	'adds a new active version; the previous one becomes decrypt-only';

CREATE FUNCTION pgkm.alter_key_roles(name text, encrypt_role regrole DEFAULT NULL,
	decrypt_role regrole DEFAULT NULL)
	RETURNS void
	AS 'MODULE_PATHNAME', 'pgkm_alter_key_roles'
	LANGUAGE C VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION pgkm.alter_key_roles(text, regrole, regrole) IS
	'changes the roles whose members may encrypt or decrypt with a key (NULL: unchanged)';

CREATE FUNCTION pgkm.encryption_counts(OUT key_id bigint, OUT version integer,
	OUT unflushed bigint)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME', 'pgkm_encryption_counts'
	LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION pgkm.encryption_counts() IS
	'encryptions counted in shared memory and not yet added to pgkm.key_versions';

CREATE FUNCTION pgkm.flush_encryption_counts()
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'pgkm_flush_encryption_counts'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION pgkm.flush_encryption_counts() IS
	'adds the shared-memory encryption counts of this database to pgkm.key_versions';

CREATE VIEW pgkm.key_status AS
	SELECT k.name AS key_name,
		k.key_id,
		v.version,
		v.state,
		k.algorithm,
		v.created_at,
		pg_catalog.now() - v.created_at AS age,
		v.state_changed_at,
		v.encryptions + COALESCE(c.unflushed, 0) AS encryptions,
		m.label AS master_key,
		v.wrap_mechanism,
		k.owner,
		k.encrypt_role,
		k.decrypt_role
	FROM pgkm.keys k
	JOIN pgkm.key_versions v ON v.key_id OPERATOR(pg_catalog.=) k.key_id
	LEFT JOIN pgkm.master_keys m ON m.master_key_id OPERATOR(pg_catalog.=) v.master_key_id
	LEFT JOIN pgkm.encryption_counts() c
		ON c.key_id OPERATOR(pg_catalog.=) v.key_id AND c.version OPERATOR(pg_catalog.=) v.version;
COMMENT ON VIEW pgkm.key_status IS
	'keys, versions, states, ages and encryption counts (never key material)';

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgkm FROM PUBLIC;
REVOKE ALL ON pgkm.key_status FROM PUBLIC;
