-- searchable: deterministic encryption (AES-256-SIV), blind indexes, key algorithms, lookups
-- under rotation, privileges and errors of the searchable-encryption surface
SELECT pgkm.create_key('user_email', algorithm => 'aes-256-siv') > 0 AS siv_key,
	pgkm.create_key('ssn_bidx', algorithm => 'blind-index') > 0 AS bidx_key,
	pgkm.create_key('ssn_bidx_short', algorithm => 'blind-index', blind_index_bytes => 2) > 0
		AS short_key,
	pgkm.create_key('customer:4711') > 0 AS per_subject_key;
SELECT key_name, version, state, algorithm FROM pgkm.key_status
	WHERE key_name IN ('user_email', 'ssn_bidx', 'ssn_bidx_short', 'customer:4711')
	ORDER BY key_name;
SELECT name, algorithm, blind_index_bytes FROM pgkm.keys
	WHERE name IN ('user_email', 'ssn_bidx', 'ssn_bidx_short', 'customer:4711') ORDER BY name;

-- deterministic: same plaintext, key version and context give the same bytes; 26 bytes overhead
SELECT pgkm_encrypt_det('alice@example.org', 'user_email')
		= pgkm_encrypt_det('alice@example.org', 'user_email') AS same,
	pgkm_encrypt_det('alice@example.org', 'user_email')
		= pgkm_encrypt_det('alice@example.orG', 'user_email') AS case_differs,
	pgkm_encrypt_det('alice@example.org', 'user_email', 'tenant-1')
		= pgkm_encrypt_det('alice@example.org', 'user_email', 'tenant-2') AS contexts_differ,
	octet_length(pgkm_encrypt_det('alice@example.org', 'user_email'))
		- octet_length('alice@example.org') AS overhead;
-- text, varchar, unknown literals and bytea of the same bytes give the same value: parameter
-- types do not matter; text is not normalised (NFC and NFD forms differ)
SELECT pgkm_encrypt_det('bob@example.org'::text, 'user_email')
		= pgkm_encrypt_det('bob@example.org'::varchar(40), 'user_email') AS varchar_same,
	pgkm_encrypt_det('bob@example.org'::text, 'user_email')
		= pgkm_encrypt_det(convert_to('bob@example.org', 'UTF8'), 'user_email') AS bytea_same,
	pgkm_encrypt_det(normalize(U&'\00E9', NFC), 'user_email')
		= pgkm_encrypt_det(normalize(U&'\00E9', NFD), 'user_email') AS nfc_equals_nfd,
	pgkm_encrypt_det(lower(normalize('ÉVE@example.org', NFC)), 'user_email')
		= pgkm_encrypt_det(lower(normalize('éve@example.org', NFC)), 'user_email')
		AS normalised_by_caller;
-- decrypts through pgkm_decrypt, with the same context; empty values too
SELECT pgkm_decrypt_text(pgkm_encrypt_det('alice@example.org', 'user_email')) AS plain,
	pgkm_decrypt_text(pgkm_encrypt_det('alice', 'user_email', '7'), '7') AS with_context,
	pgkm_decrypt_text(pgkm_encrypt_det('', 'user_email')) = '' AS empty_text,
	octet_length(pgkm_encrypt_det(''::bytea, 'user_email')) AS empty_len,
	(pgkm_ciphertext_info(pgkm_encrypt_det('x', 'user_email'))).algorithm;
SELECT pgkm_test_error($$SELECT pgkm_decrypt_text(pgkm_encrypt_det('alice', 'user_email', '7'), '8')$$);
SELECT pgkm_test_error($$SELECT pgkm_decrypt_text(pgkm_encrypt_det('alice', 'user_email', '7'))$$);
SELECT pgkm_test_error($$SELECT pgkm_decrypt(set_byte(pgkm_encrypt_det('alice', 'user_email'), 20, 0))$$);
-- a deterministic value relabelled as GCM, or a GCM value as SIV: altered, 22000
SELECT pgkm_test_error($$SELECT pgkm_decrypt(set_byte(pgkm_encrypt_det('a value long enough', 'user_email'), 1, 1))$$);

-- blind indexes: header (algorithm 3) and the configured number of HMAC bytes; never decrypted
SELECT octet_length(pgkm_blind_index('123-45-6789', 'ssn_bidx')) AS len,
	octet_length(pgkm_blind_index('123-45-6789', 'ssn_bidx_short')) AS short_len,
	pgkm_blind_index('123-45-6789', 'ssn_bidx') = pgkm_blind_index('123-45-6789', 'ssn_bidx')
		AS same,
	pgkm_blind_index('123-45-6789', 'ssn_bidx') = pgkm_blind_index('123-45-6780', 'ssn_bidx')
		AS neighbours_equal,
	pgkm_blind_index('123-45-6789'::text, 'ssn_bidx')
		= pgkm_blind_index(convert_to('123-45-6789', 'UTF8'), 'ssn_bidx') AS bytea_same,
	(pgkm_ciphertext_info(pgkm_blind_index('x', 'ssn_bidx'))).algorithm,
	substr(pgkm_blind_index('x', 'ssn_bidx'), 1, 2) AS format_and_algorithm;
-- 2-byte indexes collide by design: 3,000 values fall into at most 65,536 buckets
SELECT count(DISTINCT pgkm_blind_index(i::text, 'ssn_bidx_short')) < 3000 AS short_collides,
	count(DISTINCT pgkm_blind_index(i::text, 'ssn_bidx')) = 3000 AS long_distinct
	FROM generate_series(1, 3000) i;
SELECT pgkm_test_error($$SELECT pgkm_decrypt(pgkm_blind_index('123-45-6789', 'ssn_bidx'))$$);
SELECT pgkm_test_error($$SELECT pgkm_decrypt_text(pgkm_blind_index('123-45-6789', 'ssn_bidx'))$$);
SELECT pgkm_test_error($$SELECT pgkm_rewrap(pgkm_blind_index('123-45-6789', 'ssn_bidx'))$$);
SELECT (pgkm_ciphertext_info(pgkm_blind_index('x', 'ssn_bidx_short') || decode(repeat('00', 30), 'hex'))).algorithm AS longest;
SELECT pgkm_test_error($$SELECT pgkm_ciphertext_info(pgkm_blind_index('x', 'ssn_bidx_short') || decode(repeat('00', 31), 'hex'))$$);

-- a key serves one algorithm: wrong_object_type (42809)
SELECT pgkm_test_error($$SELECT pgkm_encrypt('x', 'user_email')$$);
SELECT pgkm_test_error($$SELECT pgkm_encrypt('x', 'ssn_bidx')$$);
SELECT pgkm_test_error($$SELECT pgkm_encrypt_det('x', 'customer:4711')$$);
SELECT pgkm_test_error($$SELECT pgkm_encrypt_det('x', 'ssn_bidx')$$);
SELECT pgkm_test_error($$SELECT pgkm_blind_index('x', 'user_email')$$);
SELECT pgkm_test_error($$SELECT pgkm_blind_index_all('x', 'customer:4711')$$);
-- creation errors: invalid_parameter_value (22023)
SELECT pgkm_test_error($$SELECT pgkm.create_key('k1', algorithm => 'aes-128-ecb')$$);
SELECT pgkm_test_error($$SELECT pgkm.create_key('k1', algorithm => 'aes-256-siv', blind_index_bytes => 8)$$);
SELECT pgkm_test_error($$SELECT pgkm.create_key('k1', algorithm => 'blind-index', blind_index_bytes => 0)$$);
SELECT pgkm_test_error($$SELECT pgkm.create_key('k1', algorithm => 'blind-index', blind_index_bytes => 33)$$);
SELECT pgkm_test_error($$SELECT pgkm.create_key('customer:4711')$$);
SELECT pgkm_test_error($$SELECT pgkm.create_key('customer 4711')$$);
-- NULLs: a NULL value gives NULL; a NULL key name is an error; unknown keys are not echoed
SELECT pgkm_encrypt_det(NULL::text, 'user_email') IS NULL AS det_null,
	pgkm_encrypt_det_all(NULL::text, 'user_email') IS NULL AS det_all_null,
	pgkm_blind_index(NULL::text, 'ssn_bidx') IS NULL AS bidx_null,
	pgkm_blind_index_all(NULL::bytea, 'ssn_bidx') IS NULL AS bidx_all_null;
SELECT pgkm_test_error($$SELECT pgkm_encrypt_det('x', NULL)$$);
SELECT pgkm_test_error($$SELECT pgkm_blind_index_all('x', NULL)$$);
SELECT pgkm_test_error($$SELECT pgkm_encrypt_det('user_email', 'alice@example.org')$$);

-- STABLE, not IMMUTABLE: rotation changes the values, so PostgreSQL must not keep them in an
-- index expression or a generated column that the worker cannot rewrite
CREATE TABLE users (id integer PRIMARY KEY, email_enc bytea, email_det bytea UNIQUE,
	ssn_bidx bytea);
SELECT pgkm_test_error($$CREATE INDEX ON users (pgkm_encrypt_det(pgkm_decrypt_text(email_enc, id::text), 'user_email'))$$);
SELECT pgkm_test_error($$ALTER TABLE users ADD COLUMN g bytea GENERATED ALWAYS AS (pgkm_blind_index(id::text, 'ssn_bidx')) STORED$$);
CREATE INDEX ON users (ssn_bidx);
-- the documented pattern: the application writes the ciphertext and the lookup values together
INSERT INTO users
	SELECT i, pgkm_encrypt('user' || i || '@example.org', 'customer:4711', i::text),
		pgkm_encrypt_det('user' || i || '@example.org', 'user_email'),
		pgkm_blind_index(lpad(i::text, 9, '0'), 'ssn_bidx')
	FROM generate_series(1, 2000) i;
ANALYZE users;
PREPARE by_email(text) AS
	SELECT id FROM users WHERE email_det = ANY (pgkm_encrypt_det_all($1, 'user_email'));
PREPARE by_ssn(text) AS
	SELECT id FROM users WHERE ssn_bidx = ANY (pgkm_blind_index_all($1, 'ssn_bidx'));
EXECUTE by_email('user42@example.org');
EXECUTE by_ssn('000001234');
EXECUTE by_email('nobody@example.org');
SET enable_seqscan = off;
SET enable_bitmapscan = off;
EXPLAIN (COSTS OFF) EXECUTE by_email('user42@example.org');
EXPLAIN (COSTS OFF) EXECUTE by_ssn('000001234');
RESET enable_seqscan;
RESET enable_bitmapscan;
-- uniqueness: the same e-mail cannot be stored twice under one version
SELECT pgkm_test_error($$INSERT INTO users VALUES (9999, NULL, pgkm_encrypt_det('user42@example.org', 'user_email'))$$);

-- rotation: lookups try every usable version (active first) while the worker rewrites
SELECT pgkm.rotate_key('user_email') AS det_version, pgkm.rotate_key('ssn_bidx') AS bidx_version;
SELECT cardinality(pgkm_encrypt_det_all('x', 'user_email')) AS det_values,
	(pgkm_ciphertext_info((pgkm_encrypt_det_all('x', 'user_email'))[1])).key_version AS first,
	(pgkm_ciphertext_info((pgkm_encrypt_det_all('x', 'user_email'))[2])).key_version AS second,
	cardinality(pgkm_blind_index_all('x', 'ssn_bidx')) AS bidx_values,
	(pgkm_ciphertext_info(pgkm_encrypt_det('x', 'user_email'))).key_version AS det_active;
-- rows still under version 1 are found by the _all pattern, not by the active version alone
EXECUTE by_email('user42@example.org');
EXECUTE by_ssn('000001234');
SELECT count(*) AS found_by_active_only FROM users
	WHERE email_det = pgkm_encrypt_det('user42@example.org', 'user_email');
-- re-encryption of a deterministic value is deterministic and keeps it decryptable
SELECT pgkm_rewrap(email_det) = pgkm_encrypt_det('user42@example.org', 'user_email') AS rewrapped,
	pgkm_decrypt_text(pgkm_rewrap(email_det)) AS plain
	FROM users WHERE id = 42;
UPDATE users SET email_det = pgkm_rewrap(email_det);
SELECT (pgkm_ciphertext_info(email_det)).key_version, count(*) FROM users GROUP BY 1;
EXECUTE by_email('user42@example.org');
SELECT count(*) AS found_by_active_only FROM users
	WHERE email_det = pgkm_encrypt_det('user42@example.org', 'user_email');
-- a disabled version is not tried; a retired or destroyed one neither
SELECT pgkm.disable_key_version('ssn_bidx', 1);
SELECT cardinality(pgkm_blind_index_all('x', 'ssn_bidx')) AS bidx_values_without_disabled;
SELECT pgkm.enable_key_version('ssn_bidx', 1);

-- privileges: the encrypt role or the decrypt role may compute lookup values; others may not
CREATE ROLE regress_search_writer;
CREATE ROLE regress_search_reader;
CREATE ROLE regress_search_outsider;
SELECT pgkm.create_key('role_det', 'regress_search_writer', 'regress_search_reader',
	algorithm => 'aes-256-siv') > 0 AS created;
SET ROLE regress_search_writer;
SELECT pgkm_encrypt_det('w', 'role_det') IS NOT NULL AS writer_computes;
SET ROLE regress_search_reader;
SELECT pgkm_decrypt_text(pgkm_encrypt_det('r', 'role_det')) AS reader_computes_and_decrypts;
SET ROLE regress_search_outsider;
SELECT pgkm_test_error($$SELECT pgkm_encrypt_det('o', 'role_det')$$);
SELECT pgkm_test_error($$SELECT pgkm_encrypt_det_all('o', 'role_det')$$);
RESET ROLE;
DROP TABLE users;
SELECT pgkm.alter_key_roles('role_det', 'postgres', 'postgres');
DROP ROLE regress_search_writer, regress_search_reader, regress_search_outsider;
