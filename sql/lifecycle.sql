-- lifecycle: header fields, rewrap, disabling, enabling and destroying key versions,
-- rotation policies, and rotating and retiring the master key

SELECT coalesce(max(event_id), 0) AS first_event FROM pgkm.key_events \gset
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;
\getenv test_dir PGKM_TEST_DIR
SELECT dblink_connect('lc', format('host=%s port=%s dbname=%s user=postgres',
	:'test_dir', current_setting('port'), current_database()));

CREATE ROLE regress_lc_writer;
CREATE ROLE regress_lc_reader;
CREATE ROLE regress_lc_app;
CREATE ROLE regress_lc_admin;
GRANT USAGE ON SCHEMA pgkm TO regress_lc_admin;
GRANT EXECUTE ON FUNCTION pgkm.disable_key_version(text, integer),
	pgkm.enable_key_version(text, integer), pgkm.destroy_key_version(text, integer),
	pgkm.set_rotation_policy(text, interval, bigint) TO regress_lc_admin;

SELECT pgkm.create_key('lc_key') > 0 AS created;
CREATE TABLE lc_data (id integer PRIMARY KEY, secret bytea);
INSERT INTO lc_data SELECT i, pgkm_encrypt('secret ' || i, 'lc_key', i::text)
	FROM generate_series(1, 5) i;
CREATE TABLE lc_saved AS SELECT id, secret FROM lc_data;

-- header fields, read without the catalog; key ids and versions are unsigned 32-bit
SELECT pgkm.ciphertext_key_id(secret) = (SELECT key_id FROM pgkm.keys WHERE name = 'lc_key')
	AS same_key, pgkm.ciphertext_version(secret) AS version, count(*)
	FROM lc_data GROUP BY 1, 2;
SELECT pgkm.ciphertext_key_id(c), pgkm.ciphertext_version(c)
	FROM (VALUES ('\x0101ffffffff0000002a'::bytea || decode(repeat('00', 28), 'hex')),
		('\x010200000007fffffffe'::bytea || decode(repeat('00', 16), 'hex'))) AS t(c);
SELECT pgkm.ciphertext_key_id(NULL), pgkm.ciphertext_version(NULL);
SELECT pgkm_test_error($$SELECT pgkm.ciphertext_key_id(''::bytea)$$);
SELECT pgkm_test_error($$SELECT pgkm.ciphertext_version('\x0101000000070000002a'::bytea)$$);
SELECT pgkm_test_error($$SELECT pgkm.ciphertext_version('\x0901000000070000002a'::bytea
	|| decode(repeat('00', 28), 'hex'))$$);
SELECT p.proname, p.provolatile, p.proisstrict, p.proparallel
	FROM pg_proc p WHERE p.oid IN ('pgkm.ciphertext_key_id'::regproc,
		'pgkm.ciphertext_version'::regproc) ORDER BY 1;
-- compressed and out-of-line values: only the first bytes are read
CREATE TABLE lc_big (id integer, c bytea);
INSERT INTO lc_big VALUES (1, pgkm_encrypt(repeat('x', 100000), 'lc_key'));
INSERT INTO lc_big VALUES (2, '\x0101000000070000002a'::bytea || decode(repeat('00', 100000), 'hex'));
INSERT INTO lc_big VALUES (3, '\x0101000000070000002a'::bytea || decode(repeat('00', 20), 'hex'));
SELECT id, length(c), pg_column_compression(c), pgkm.ciphertext_key_id(c) = 7 AS id_7,
	pgkm.ciphertext_version(c) FROM lc_big WHERE id <= 2 ORDER BY id;
SELECT pgkm_test_error($$SELECT pgkm.ciphertext_version(c) FROM lc_big WHERE id = 3$$);

-- rewrap: a value under the active version comes back unchanged, byte for byte
SELECT bool_and(pgkm_rewrap(secret, id::text) = secret) AS unchanged, count(*) FROM lc_data;
SELECT pgkm_rewrap(NULL::bytea) IS NULL AS null_bytea, pgkm_rewrap(NULL, 'x'::text) IS NULL AS null_text;
SELECT p.oid::regprocedure, p.provolatile, p.proparallel FROM pg_proc p
	WHERE p.proname = 'pgkm_rewrap' ORDER BY 1::text;

-- after a rotation, rewrap moves version 1 values to version 2: same plaintext, same context
SELECT pgkm.rotate_key('lc_key');
SELECT encryptions AS before FROM pgkm.key_status WHERE key_name = 'lc_key' AND version = 2 \gset
SELECT id, pgkm.ciphertext_version(r) AS version, pgkm_decrypt_text(r, id::text) AS plaintext,
	length(r) = length(secret) AS same_length, r <> secret AS new_bytes
	FROM (SELECT id, secret, pgkm_rewrap(secret, id::text) AS r FROM lc_data) s ORDER BY id;
-- each rewrap that re-encrypts counts one encryption
SELECT encryptions - :before AS counted FROM pgkm.key_status
	WHERE key_name = 'lc_key' AND version = 2;
-- a rewrapped value rewraps to itself; bytea and text contexts are the same bytes
SELECT pgkm_rewrap(r, '1'::text) = r AS idempotent, pgkm_decrypt_text(r, '1') AS plaintext
	FROM (SELECT pgkm_rewrap(secret, '\x31'::bytea) AS r FROM lc_data WHERE id = 1) s;
-- the wrong context, or none, fails authentication; a malformed value is refused
SELECT pgkm_test_error($$SELECT pgkm_rewrap(secret, 'wrong') FROM lc_data WHERE id = 1$$);
SELECT pgkm_test_error($$SELECT pgkm_rewrap(secret) FROM lc_data WHERE id = 1$$);
SELECT pgkm_test_error($$SELECT pgkm_rewrap('\x01'::bytea)$$);
SELECT pgkm_test_error($$SELECT pgkm_rewrap('\x0101000000070000002a'::bytea
	|| decode(repeat('00', 28), 'hex'))$$);
-- what the worker runs: an UPDATE that rewraps in place
UPDATE lc_data SET secret = pgkm_rewrap(secret, id::text);
SELECT pgkm.ciphertext_version(secret) AS version, count(*) FROM lc_data GROUP BY 1;
SELECT id, pgkm_decrypt_text(secret, id::text) FROM lc_data ORDER BY id;

-- rewrap needs both roles: decrypt for the old version, encrypt for the active one
SELECT pgkm.create_key('lc_split', 'regress_lc_writer', 'regress_lc_reader') > 0 AS created;
CREATE TABLE lc_split_data AS SELECT 1 AS id, pgkm_encrypt('split'::text, 'lc_split', '1') AS c;
GRANT SELECT ON lc_split_data TO regress_lc_app;
SELECT pgkm.rotate_key('lc_split');
GRANT regress_lc_writer TO regress_lc_app;
SET ROLE regress_lc_app;
SELECT pgkm_test_error($$SELECT pgkm_rewrap(c, id::text) FROM lc_split_data$$);
RESET ROLE;
REVOKE regress_lc_writer FROM regress_lc_app;
GRANT regress_lc_reader TO regress_lc_app;
SET ROLE regress_lc_app;
SELECT pgkm_test_error($$SELECT pgkm_rewrap(c, id::text) FROM lc_split_data$$);
RESET ROLE;
GRANT regress_lc_writer TO regress_lc_app;
SET ROLE regress_lc_app;
SELECT (pgkm_ciphertext_info(r)).key_version, pgkm_decrypt_text(r, '1')
	FROM (SELECT pgkm_rewrap(c, id::text) AS r FROM lc_split_data) s;
RESET ROLE;
UPDATE lc_split_data SET c = pgkm_rewrap(c, id::text);

-- disabling a decrypt-only version refuses every use of it, in every session, until enabled
-- (at commit, even with triggers off: session_replication_role = replica)
SELECT * FROM dblink('lc', $$SELECT pgkm_decrypt_text(secret, id::text) FROM lc_saved WHERE id = 1$$)
	AS t(v text);
SET session_replication_role = replica;
SELECT pgkm.disable_key_version('lc_key', 1);
RESET session_replication_role;
SELECT version, state, disabled_from FROM pgkm.key_versions
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'lc_key') ORDER BY version;
SELECT pgkm_test_error($$SELECT pgkm_decrypt_text(secret, id::text) FROM lc_saved WHERE id = 1$$);
SELECT pgkm_test_error($$SELECT pgkm_rewrap(secret, id::text) FROM lc_saved WHERE id = 1$$);
SELECT pgkm_test_error($$SELECT * FROM dblink('lc', 'SELECT pgkm_decrypt_text(secret, id::text) FROM lc_saved WHERE id = 1') AS t(v text)$$);
SELECT pgkm_test_error($$SELECT pgkm.disable_key_version('lc_key', 1)$$);
SELECT pgkm.enable_key_version('lc_key', 1);
SELECT version, state, disabled_from FROM pgkm.key_versions
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'lc_key') ORDER BY version;
SELECT pgkm_decrypt_text(secret, id::text) FROM lc_saved WHERE id = 1;
SELECT * FROM dblink('lc', $$SELECT pgkm_decrypt_text(secret, id::text) FROM lc_saved WHERE id = 1$$)
	AS t(v text);
SELECT pgkm_test_error($$SELECT pgkm.enable_key_version('lc_key', 1)$$);
SELECT pgkm_test_error($$SELECT pgkm.enable_key_version('lc_key', 9)$$);
SELECT pgkm_test_error($$SELECT pgkm.disable_key_version('no_such_key', 1)$$);
SELECT pgkm.disable_key_version(NULL, 1) IS NULL AS strict;

-- disabling the active version stops encryption (55000) until it is enabled again
SELECT pgkm.disable_key_version('lc_key', 2);
SELECT pgkm_test_error($$SELECT pgkm_encrypt('x'::text, 'lc_key')$$);
SELECT pgkm_test_error($$SELECT pgkm_rewrap(secret, id::text) FROM lc_saved WHERE id = 1$$);
SELECT pgkm_test_error($$SELECT pgkm_decrypt_text(secret, id::text) FROM lc_data WHERE id = 1$$);
SELECT pgkm.enable_key_version('lc_key', 2);
SELECT pgkm.ciphertext_version(pgkm_encrypt('x'::text, 'lc_key'));
-- a formerly active version re-enabled after a rotation becomes decrypt-only
SELECT pgkm.disable_key_version('lc_key', 2);
SELECT pgkm.rotate_key('lc_key');
SELECT pgkm.enable_key_version('lc_key', 2);
SELECT version, state, disabled_from FROM pgkm.key_versions
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'lc_key') ORDER BY version;

-- destroying: never the active version, never one a protected column still holds values under
SELECT pgkm.protect_column('lc_data', 'secret', 'lc_key', 'id');
UPDATE lc_data d SET secret = s.secret FROM lc_saved s WHERE d.id = s.id AND d.id <= 2;
SELECT pgkm.ciphertext_version(secret) AS version, count(*) FROM lc_data GROUP BY 1 ORDER BY 1;
SELECT pgkm_test_error($$SELECT pgkm.destroy_key_version('lc_key', 3)$$);
SELECT pgkm.destroy_key_version('lc_key', 1);
SELECT pgkm_test_error($$SELECT pgkm.destroy_key_version('lc_key', 7)$$);
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT pgkm_test_error($$SELECT pgkm.destroy_key_version('lc_key', 1)$$);
ROLLBACK;
-- once the rows are rewrapped, the scan proves version 1 unused and it is destroyed
UPDATE lc_data SET secret = pgkm_rewrap(secret, id::text)
	WHERE pgkm.ciphertext_version(secret) < 3;
-- another session has the version-1 DEK cached
SELECT * FROM dblink('lc', $$SELECT pgkm_decrypt_text(secret, id::text) FROM lc_saved WHERE id = 1$$)
	AS t(v text);
SELECT pgkm.destroy_key_version('lc_key', 1);
SELECT version, state, wrapped_dek IS NULL AS dek_erased, key_check IS NULL AS check_erased,
	master_key_id IS NULL AS no_master, disabled_from
	FROM pgkm.key_versions
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'lc_key') ORDER BY version;
-- saved version-1 ciphertexts are gone for good, here and in the other session
SELECT pgkm_test_error($$SELECT pgkm_decrypt_text(secret, id::text) FROM lc_saved WHERE id = 1$$);
SELECT pgkm_test_error($$SELECT * FROM dblink('lc', 'SELECT pgkm_decrypt_text(secret, id::text) FROM lc_saved WHERE id = 1') AS t(v text)$$);
SELECT pgkm_test_error($$SELECT pgkm_rewrap(secret, id::text) FROM lc_saved WHERE id = 1$$);
SELECT id, pgkm_decrypt_text(secret, id::text) FROM lc_data ORDER BY id;
-- and the state is final
SELECT pgkm_test_error($$SELECT pgkm.destroy_key_version('lc_key', 1)$$);
SELECT pgkm_test_error($$SELECT pgkm.enable_key_version('lc_key', 1)$$);
SELECT pgkm_test_error($$SELECT pgkm.disable_key_version('lc_key', 1)$$);
-- a disabled version may be destroyed; a disabled active one may not
SELECT pgkm.disable_key_version('lc_split', 1);
SELECT pgkm.destroy_key_version('lc_split', 1);
SELECT pgkm.disable_key_version('lc_split', 2);
SELECT pgkm_test_error($$SELECT pgkm.destroy_key_version('lc_split', 2)$$);
SELECT pgkm.enable_key_version('lc_split', 2);

-- rotation policies: NULL leaves a field unchanged, a zero max_age clears it
SELECT rotation_max_age, rotation_max_encryptions FROM pgkm.keys WHERE name = 'lc_key';
SELECT pgkm.set_rotation_policy('lc_key', '30 days');
SELECT pgkm.set_rotation_policy('lc_key', max_encryptions => 1000000);
SELECT rotation_max_age, rotation_max_encryptions FROM pgkm.keys WHERE name = 'lc_key';
SELECT pgkm.set_rotation_policy('lc_key', '0', 2147483648);
SELECT rotation_max_age, rotation_max_encryptions FROM pgkm.keys WHERE name = 'lc_key';
-- (in a transaction that rolls back: the worker would rotate a key due at once)
BEGIN;
SELECT pgkm.set_rotation_policy('lc_key', '90 days', 1);
SELECT rotation_max_age, rotation_max_encryptions FROM pgkm.keys WHERE name = 'lc_key';
ROLLBACK;
SELECT pgkm.set_rotation_policy('lc_key', '90 days', 500000000);
SELECT rotation_max_age, rotation_max_encryptions FROM pgkm.keys WHERE name = 'lc_key';
SELECT pgkm_test_error($$SELECT pgkm.set_rotation_policy('lc_key', '-1 day')$$);
SELECT pgkm_test_error($$SELECT pgkm.set_rotation_policy('lc_key', max_encryptions => 0)$$);
SELECT pgkm_test_error($$SELECT pgkm.set_rotation_policy('lc_key', max_encryptions => 2147483649)$$);
SELECT pgkm_test_error($$SELECT pgkm.set_rotation_policy(NULL, '1 day')$$);
SELECT pgkm_test_error($$SELECT pgkm.set_rotation_policy('no_such_key', '1 day')$$);
SELECT rotation_max_age, rotation_max_encryptions FROM pgkm.keys WHERE name = 'lc_key';

-- only the key's owner (or a superuser) manages its lifecycle
SET ROLE regress_lc_admin;
SELECT pgkm_test_error($$SELECT pgkm.disable_key_version('lc_key', 2)$$);
SELECT pgkm_test_error($$SELECT pgkm.enable_key_version('lc_key', 2)$$);
SELECT pgkm_test_error($$SELECT pgkm.destroy_key_version('lc_key', 2)$$);
SELECT pgkm_test_error($$SELECT pgkm.set_rotation_policy('lc_key', '1 day')$$);
SELECT pgkm_test_error($$SELECT pgkm.rotate_master_key()$$);
SELECT pgkm_test_error($$SELECT pgkm.retire_master_key('pgkm-master.v1')$$);
RESET ROLE;
SELECT p.oid::regprocedure AS function, has_function_privilege('regress_lc_app', p.oid, 'EXECUTE')
	FROM pg_proc p WHERE p.proname IN ('disable_key_version', 'enable_key_version',
		'destroy_key_version', 'set_rotation_policy', 'rotate_master_key', 'retire_master_key',
		'ciphertext_key_id', 'ciphertext_version')
	AND p.pronamespace = 'pgkm'::regnamespace ORDER BY 1::text;

-- master key rotation: the next label, every stored DEK re-wrapped under it in one transaction,
-- while another session keeps decrypting with its cached keys
SELECT label, state FROM pgkm.master_keys ORDER BY master_key_id;
SELECT * FROM dblink('lc', $$SELECT string_agg(pgkm_decrypt_text(secret, id::text), ', ' ORDER BY id) FROM lc_data$$)
	AS t(v text);
BEGIN;
SELECT pgkm.rotate_master_key();
SELECT * FROM dblink('lc', $$SELECT string_agg(pgkm_decrypt_text(secret, id::text), ', ' ORDER BY id) FROM lc_data$$)
	AS t(v text);
COMMIT;
SELECT * FROM dblink('lc', $$SELECT string_agg(pgkm_decrypt_text(secret, id::text), ', ' ORDER BY id) FROM lc_data$$)
	AS t(v text);
SELECT label, state, generated, created_by, retired_at IS NULL AS not_retired
	FROM pgkm.master_keys ORDER BY master_key_id;
SELECT m.label, v.wrap_mechanism, count(*) FROM pgkm.key_versions v
	LEFT JOIN pgkm.master_keys m USING (master_key_id) GROUP BY 1, 2 ORDER BY 1;
-- the key check values did not change: they bind a DEK to its identity, not to a master key
SELECT bool_and(length(key_check) = 32) AS checks FROM pgkm.key_versions WHERE key_check IS NOT NULL;
-- a fresh backend unwraps under the new master key
\c
SELECT id, pgkm_decrypt_text(secret, id::text) FROM lc_data ORDER BY id;
SELECT pgkm_decrypt_text(c, id::text) FROM lc_split_data;
SELECT pgkm_decrypt_text(pgkm_encrypt('after'::text, 'lc_key'));

-- a rotation that rolls back leaves its new master key in the token; the next one adopts it
BEGIN;
SELECT pgkm.rotate_master_key();
ROLLBACK;
SELECT pgkm.rotate_master_key();
SELECT label, state, generated FROM pgkm.master_keys ORDER BY master_key_id;
SELECT pgkm_decrypt_text(secret, id::text) FROM lc_data WHERE id = 3;

-- retiring: never the active master key, never one that still wraps a DEK
SELECT pgkm_test_error($$SELECT pgkm.retire_master_key('pgkm-master.v3')$$);
BEGIN;
UPDATE pgkm.key_versions SET master_key_id =
	(SELECT master_key_id FROM pgkm.master_keys WHERE label = 'pgkm-master.v1')
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'lc_key') AND version >= 2;
SELECT pgkm_test_error($$SELECT pgkm.retire_master_key('pgkm-master.v1')$$);
ROLLBACK;
SELECT pgkm.retire_master_key('pgkm-master.v1');
SELECT pgkm.retire_master_key('pgkm-master.v2');
SELECT pgkm_test_error($$SELECT pgkm.retire_master_key('pgkm-master.v1')$$);
SELECT pgkm_test_error($$SELECT pgkm.retire_master_key('no-such-master')$$);
SELECT label, state, retired_at IS NOT NULL AS retired FROM pgkm.master_keys ORDER BY master_key_id;
SELECT count(*) AS wrapped_by_retired FROM pgkm.key_versions v
	JOIN pgkm.master_keys m USING (master_key_id) WHERE m.state = 'retired';
SELECT pgkm_decrypt_text(secret, id::text) FROM lc_data WHERE id = 4;

-- the record of it all (no timestamps)
SELECT e.actor, e.action, k.name AS key_name, e.version,
	regexp_replace(e.detail, '\(([a-z ]+); \d+ key versions', '(\1; N key versions') AS detail
	FROM pgkm.key_events e LEFT JOIN pgkm.keys k USING (key_id)
	WHERE e.event_id > :first_event ORDER BY e.event_id;

-- leave no protected column behind for the suites that follow
SELECT pgkm.unprotect_column('lc_data', 'secret');
DROP TABLE lc_data, lc_saved, lc_big, lc_split_data;
