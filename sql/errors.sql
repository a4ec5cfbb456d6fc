-- errors: every failure has its own SQLSTATE and a message that names no secret

CREATE TEMP TABLE ct AS SELECT pgkm_encrypt('secret value', 'customer_pii', 'row-1') AS c;

-- malformed or truncated ciphertexts: invalid_binary_representation (22P03)
SELECT pgkm_test_error($$SELECT pgkm_decrypt(''::bytea)$$);
SELECT pgkm_test_error($$SELECT pgkm_decrypt('\x0101'::bytea)$$);
SELECT pgkm_test_error($$SELECT pgkm_decrypt(substr(c, 1, 10)) FROM ct$$);
SELECT pgkm_test_error($$SELECT pgkm_decrypt(substr(c, 1, 37)) FROM ct$$);
SELECT pgkm_test_error($$SELECT pgkm_decrypt(set_byte(c, 0, 7)) FROM ct$$);
SELECT pgkm_test_error($$SELECT pgkm_decrypt(set_byte(c, 1, 9)) FROM ct$$);
SELECT pgkm_test_error($$SELECT pgkm_ciphertext_info('\x01'::bytea)$$);
-- a truncated tag (one byte short) still fails authentication, never returns data
SELECT pgkm_test_error($$SELECT pgkm_decrypt(substr(c, 1, length(c) - 1), 'row-1') FROM ct$$);

-- flipped bits in nonce, body or tag, or the wrong context: data_exception (22000)
SELECT pgkm_test_error($$SELECT pgkm_decrypt(set_bit(c, 8 * 12, 1 - get_bit(c, 8 * 12)), 'row-1') FROM ct$$);
SELECT pgkm_test_error($$SELECT pgkm_decrypt(set_bit(c, 8 * 25, 1 - get_bit(c, 8 * 25)), 'row-1') FROM ct$$);
SELECT pgkm_test_error($$SELECT pgkm_decrypt(set_bit(c, 8 * length(c) - 1, 1 - get_bit(c, 8 * length(c) - 1)), 'row-1') FROM ct$$);
SELECT pgkm_test_error($$SELECT pgkm_decrypt(c, 'row-2') FROM ct$$);
SELECT pgkm_test_error($$SELECT pgkm_decrypt(c) FROM ct$$);
-- every single-bit flip anywhere fails, with one of the documented SQLSTATEs
SELECT substr(pgkm_test_error(format('SELECT pgkm_decrypt(%L::bytea, %L)',
		set_bit(c, b, 1 - get_bit(c, b)), 'row-1')), 1, 5) AS sqlstate, count(*)
	FROM ct, generate_series(0, 8 * length(c) - 1) b GROUP BY 1 ORDER BY 1;

-- unknown key, key id or version: undefined_object (42704)
SELECT pgkm_test_error($$SELECT pgkm_encrypt('x'::text, 'no_such_key')$$);
SELECT pgkm_test_error($$SELECT pgkm_encrypt('x'::text, '')$$);
SELECT pgkm_test_error($$SELECT pgkm_encrypt('x'::text, repeat('k', 100))$$);
-- arguments swapped: the value passed as a key name is never repeated, in any field
SELECT pgkm_encrypt('customer_pii', 'SSN 123-45-6789');
SELECT pgkm.audit_flush() > 0 AS flushed;
SELECT count(*) FILTER (WHERE key_name IS NULL AND detail = 'encrypt: key does not exist') > 0
		AS recorded_without_name,
	count(*) FILTER (WHERE key_name LIKE '%SSN%' OR detail LIKE '%SSN%') AS records_naming_it
	FROM pgkm.audit_log WHERE action = 'failed' AND backend_pid = pg_backend_pid();
SELECT pgkm_test_error($$SELECT pgkm_decrypt(overlay(c placing '\x000003e7'::bytea from 3 for 4)) FROM ct$$);
SELECT pgkm_test_error($$SELECT pgkm_decrypt(overlay(c placing '\x00000063'::bytea from 7 for 4)) FROM ct$$);
SELECT pgkm_test_error($$SELECT pgkm_decrypt(overlay(c placing '\xffffffff'::bytea from 7 for 4)) FROM ct$$);
SELECT (pgkm_ciphertext_info(overlay(c placing '\x000003e7'::bytea from 3 for 4))).* FROM ct;

-- a GCM value relabelled as AES-256-SIV: its key is a GCM key, so it fails as altered (22000)
SELECT pgkm_test_error($$SELECT pgkm_decrypt(set_byte(c, 1, 2), 'row-1') FROM ct$$);
SELECT (pgkm_ciphertext_info(set_byte(c, 1, 2))).algorithm FROM ct;

-- NULL key name: null_value_not_allowed (22004); bad and duplicate names at creation
SELECT pgkm_test_error($$SELECT pgkm_encrypt('x'::text, NULL)$$);
SELECT pgkm_test_error($$SELECT pgkm.create_key(NULL)$$);
SELECT pgkm_test_error($$SELECT pgkm.create_key('bad name')$$);
SELECT pgkm_test_error($$SELECT pgkm.create_key('9lives')$$);
SELECT pgkm_test_error($$SELECT pgkm.create_key('customer_pii')$$);
SELECT pgkm_test_error($$SELECT pgkm.rotate_key('no_such_key')$$);

-- decrypted bytes that are not valid text: the error shows none of them
SELECT pgkm_test_error($$SELECT pgkm_decrypt_text(pgkm_encrypt('\xfffe41'::bytea, 'customer_pii'))$$);
SELECT pgkm_test_error($$SELECT pgkm_decrypt_text(pgkm_encrypt('\x410042'::bytea, 'customer_pii'))$$);

-- a version in a state that forbids use: object_not_in_prerequisite_state (55000)
SELECT pgkm.create_key('lifecycle_key');
CREATE TABLE lc AS SELECT pgkm_encrypt('x'::text, 'lifecycle_key') AS c;
SELECT pgkm.disable_key_version('lifecycle_key', 1);
SELECT pgkm_test_error($$SELECT pgkm_decrypt(c) FROM lc$$);
SELECT pgkm_test_error($$SELECT pgkm_encrypt('x'::text, 'lifecycle_key')$$);
UPDATE pgkm.key_versions SET state = 'retired', disabled_from = NULL
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'lifecycle_key');
SELECT pgkm_test_error($$SELECT pgkm_decrypt(c) FROM lc$$);
UPDATE pgkm.key_versions SET state = 'active'
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'lifecycle_key');
SELECT pgkm_decrypt_text(c) FROM lc;

-- a wrapped key moved to another key version: data_corrupted (XX001), via the key check
SELECT pgkm.create_key('other_key');
CREATE TEMP TABLE saved AS SELECT * FROM pgkm.key_versions
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'lifecycle_key');
UPDATE pgkm.key_versions v SET wrapped_dek = o.wrapped_dek, key_check = o.key_check
	FROM pgkm.key_versions o
	WHERE v.key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'lifecycle_key')
	AND o.key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'other_key');
SELECT pgkm_test_error($$SELECT pgkm_decrypt(c) FROM lc$$);
-- ... and with its own key check value too: it still belongs to another identity
UPDATE pgkm.key_versions v SET wrapped_dek = o.wrapped_dek
	FROM pgkm.key_versions o
	WHERE v.key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'lifecycle_key')
	AND o.key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'customer_pii') AND o.version = 1;
SELECT pgkm_test_error($$SELECT pgkm_decrypt(c) FROM lc$$);

-- a master key in the token that did not wrap this DEK: data_corrupted (XX001)
UPDATE pgkm.key_versions v SET wrapped_dek = s.wrapped_dek, key_check = s.key_check
	FROM saved s WHERE v.key_id = s.key_id AND v.version = s.version;
SELECT pgkm_decrypt_text(c) FROM lc;
INSERT INTO pgkm.master_keys (label, state, generated, created_by)
	VALUES ('pgkm-foreign', 'retired', false, 'regress');
UPDATE pgkm.key_versions SET master_key_id =
	(SELECT master_key_id FROM pgkm.master_keys WHERE label = 'pgkm-foreign')
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'lifecycle_key');
SELECT pgkm_test_error($$SELECT pgkm_decrypt(c) FROM lc$$);
-- a master key label the token does not have: a fault of the token, system_error (58000)
UPDATE pgkm.master_keys SET label = 'pgkm-missing' WHERE label = 'pgkm-foreign';
SELECT pgkm_test_error($$SELECT pgkm_decrypt(c) FROM lc$$);
UPDATE pgkm.key_versions v SET master_key_id = s.master_key_id
	FROM saved s WHERE v.key_id = s.key_id AND v.version = s.version;
DELETE FROM pgkm.master_keys WHERE label = 'pgkm-missing';
SELECT pgkm_decrypt_text(c) FROM lc;

-- token problems: system_error (58000); a PIN file others can read: config_file_error (F0000)
\getenv test_dir PGKM_TEST_DIR
\set wrong_pin :test_dir '/pin.wrong'
\set open_pin :test_dir '/pin.open'
CREATE TABLE other AS SELECT pgkm_encrypt('y'::text, 'other_key') AS c;
\c
-- a fresh backend: customer_pii gets unwrapped (cached), other_key not
SELECT pgkm_decrypt_text(ssn, id::text) FROM patients WHERE id = 7;
\set VERBOSITY sqlstate
ALTER SYSTEM SET pgkm.pkcs11_pin_file = :'wrong_pin';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT pgkm.create_key('not_created_1');
\set VERBOSITY default
-- keys this backend already unwrapped keep working while the token is unusable
SELECT pgkm_decrypt_text(ssn, id::text) FROM patients WHERE id = 7;
\set VERBOSITY sqlstate
SELECT pgkm_decrypt_text(c) FROM lc;
ALTER SYSTEM SET pgkm.pkcs11_pin_file = :'open_pin';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT pgkm.create_key('not_created_2');
ALTER SYSTEM RESET pgkm.pkcs11_pin_file;
ALTER SYSTEM SET pgkm.pkcs11_token_label = 'no-such-token';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT pgkm.create_key('not_created_3');
ALTER SYSTEM RESET pgkm.pkcs11_token_label;
ALTER SYSTEM SET pgkm.pkcs11_module = '/nonexistent/libpkcs11.so';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT pgkm.create_key('not_created_4');
ALTER SYSTEM SET pgkm.pkcs11_module = '';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT pgkm.create_key('not_created_5');
ALTER SYSTEM RESET pgkm.pkcs11_module;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
\set VERBOSITY default
SELECT count(*) FROM pgkm.keys WHERE name LIKE 'not_created%';
-- the messages name the token and the PKCS#11 return code, never the PIN or a path's content
\set VERBOSITY terse
ALTER SYSTEM SET pgkm.pkcs11_pin_file = :'wrong_pin';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT pgkm_decrypt_text(c) FROM other;
ALTER SYSTEM SET pgkm.pkcs11_token_label = 'no-such-token';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT pgkm_decrypt_text(c) FROM other;
ALTER SYSTEM RESET pgkm.pkcs11_pin_file;
ALTER SYSTEM RESET pgkm.pkcs11_token_label;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
\set VERBOSITY default
-- after the fix, all is well
SELECT pgkm_decrypt_text(c) FROM other;
SELECT pgkm.create_key('created_after_fix') > 0 AS created;
DROP TABLE lc, other;
