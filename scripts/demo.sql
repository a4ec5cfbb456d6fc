-- The pgkm walkthrough of `make demo`: a key, a table, encrypt, decrypt, rotate online,
-- re-encrypt in the background, search by an encrypted e-mail, rotate the master key, status
-- and the record of events.
\pset footer off
CREATE EXTENSION pgkm;

-- A key: pgkm creates the master key in the token on first use, then a wrapped DEK.
SELECT pgkm.create_key('customer_pii') AS key_id;
SELECT label, state, generated FROM pgkm.master_keys;

-- An application encrypts with the row's id as context, and decrypts.
CREATE TABLE patients (id integer PRIMARY KEY, name text, ssn bytea);
INSERT INTO patients VALUES
	(7, 'Ada', pgkm_encrypt('123-45-6789', 'customer_pii', '7')),
	(8, 'Grace', pgkm_encrypt('987-65-4321', 'customer_pii', '8'));
SELECT id, name, encode(substr(ssn, 1, 16), 'hex') || '...' AS stored FROM patients ORDER BY id;
SELECT id, name, pgkm_decrypt_text(ssn, id::text) AS ssn FROM patients ORDER BY id;

-- A ciphertext moved to another row does not decrypt there.
\set ON_ERROR_STOP 0
SELECT pgkm_decrypt_text(ssn, '8') FROM patients WHERE id = 7;
\set ON_ERROR_STOP 1

-- Protect the column: after a rotation the background worker re-encrypts it, online.
SELECT pgkm.protect_column('patients', 'ssn', 'customer_pii', context_column => 'id');

-- Rotation: version 2 encrypts from now on; the worker moves the old rows to it.
SELECT pgkm.rotate_key('customer_pii') AS new_version;
INSERT INTO patients VALUES (9, 'Edsger', pgkm_encrypt('555-12-3456', 'customer_pii', '9'));
DO $$
BEGIN
	FOR i IN 1..100 LOOP
		EXIT WHEN (SELECT bool_and(state = 'done') FROM pgkm.rotation_jobs);
		PERFORM pg_sleep(0.1);
	END LOOP;
END
$$;
SELECT job_id, table_name, column_name, key_name, target_version, state, rows_done, rows_total
	FROM pgkm.rotation_progress;
SELECT id, (pgkm_ciphertext_info(ssn)).*, pgkm_decrypt_text(ssn, id::text) AS ssn
	FROM patients ORDER BY id;

-- Status of every key version (version 1 is retired: no row uses it), with counts.
SELECT key_name, version, state, master_key, wrap_mechanism, encryptions FROM pgkm.key_status;

-- Searchable encryption: a deterministic key finds a row by e-mail through an index, without
-- decrypting every row; equal e-mails give equal values, which is what this mode reveals.
SELECT pgkm.create_key('user_email', algorithm => 'aes-256-siv') > 0 AS created;
CREATE TABLE users (id bigint PRIMARY KEY, email_det bytea UNIQUE);
INSERT INTO users SELECT i, pgkm_encrypt_det('user' || i || '@example.org', 'user_email')
	FROM generate_series(1, 1000) i;
SELECT id, pgkm_decrypt_text(email_det) AS email FROM users
	WHERE email_det = ANY (pgkm_encrypt_det_all('user42@example.org', 'user_email'));

-- A new master key in the token re-wraps every DEK; the data is untouched.
SELECT pgkm.rotate_master_key() AS new_master_key;
SELECT pgkm.retire_master_key('pgkm-master.v1');
SELECT label, state FROM pgkm.master_keys ORDER BY master_key_id;
SELECT pgkm_decrypt_text(ssn, id::text) AS ssn FROM patients WHERE id = 9;

-- Who did what, and when.
SELECT actor, action, version, detail FROM pgkm.key_events ORDER BY event_id;

-- A role without the key's decrypt role is refused.
CREATE ROLE demo_clerk;
GRANT SELECT ON patients TO demo_clerk;
SET ROLE demo_clerk;
\set ON_ERROR_STOP 0
SELECT pgkm_decrypt_text(ssn, id::text) FROM patients WHERE id = 7;
\set ON_ERROR_STOP 1
RESET ROLE;

-- The audit: every use of a key, every refusal (the one above too, although its statement
-- failed), every administration, appended by the worker, hash-chained and sealed by an HMAC
-- key inside the token.
SET pgkm.audit_level = row;
SELECT id, pgkm_decrypt_text(ssn, id::text) AS ssn FROM patients WHERE id <= 8 ORDER BY id;
RESET pgkm.audit_level;
SELECT pgkm.audit_flush(seal => true) AS newest_seq;
SELECT seq, action, key_name AS key, key_version AS v, relation, column_name AS col, command,
	row_count AS n, row_context, success AS ok, sqlstate, current_user_name AS "user"
	FROM pgkm.audit_log WHERE action NOT IN ('checkpoint') ORDER BY seq DESC LIMIT 12;
SELECT * FROM pgkm.verify_audit_log();

-- Tampering, even by a superuser who bypasses the append-only trigger, is found and located.
SET session_replication_role = replica;
UPDATE pgkm.audit_log SET current_user_name = 'someone_else' WHERE action = 'denied';
RESET session_replication_role;
SELECT ok, broken_seq, problem FROM pgkm.verify_audit_log();
