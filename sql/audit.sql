-- audit: what is recorded for encrypt, decrypt, denied and failed calls, statements on
-- protected columns and key administration, at statement and row level; the log is
-- append-only, chained and sealed, and verify_audit_log() finds tampering.
-- pgkm.audit_notice mirrors each record this session makes as a NOTICE (deterministic
-- fields only); the log itself is read after pgkm.audit_flush(), filtered to this backend.
SET pgkm.audit_notice = on;
SELECT pgkm.audit_flush() AS mark \gset

CREATE ROLE regress_audit_app;
CREATE ROLE regress_audit_outsider;
SELECT pgkm.create_key('audit_key', 'regress_audit_app', 'regress_audit_app') > 0 AS created;
CREATE TABLE audited (id integer PRIMARY KEY, card bytea, note text);
GRANT SELECT, INSERT, UPDATE ON audited TO regress_audit_app, regress_audit_outsider;
SELECT pgkm.protect_column('audited', 'card', 'audit_key');

-- statement level (the default): one record per statement, key and version, with a count
SHOW pgkm.audit_level;
SET ROLE regress_audit_app;
INSERT INTO audited SELECT g, pgkm_encrypt('card ' || g, 'audit_key', g::text), 'n' || g
	FROM generate_series(1, 4) g;
SELECT id, pgkm_decrypt_text(card, id::text) FROM audited WHERE id <= 3 ORDER BY id;
-- a statement that touches the protected column without a key: an access record
SELECT count(card) FROM audited;
-- one that does not touch it: nothing
SELECT count(note) FROM audited;
RESET ROLE;

-- row level: every use's row context (the ciphertext's nonce); a session's uses of one
-- statement gather in one record until the worker takes it (at most 48 row contexts)
SET pgkm.audit_level = row;
SET ROLE regress_audit_app;
SELECT id, pgkm_decrypt_text(card, id::text) FROM audited WHERE id <= 2 ORDER BY id;
RESET ROLE;
SET pgkm.audit_level = statement;

-- denied: a role without the key's decrypt role; recorded although the statement fails
SET ROLE regress_audit_outsider;
SELECT pgkm_decrypt_text(card, id::text) FROM audited WHERE id = 1;
RESET ROLE;
-- denied by table privileges, before any row is read
CREATE ROLE regress_audit_stranger;
SET ROLE regress_audit_stranger;
SELECT card FROM audited;
RESET ROLE;

-- failed: wrong context, corrupted, truncated, unknown key, not text; a NULL is no use
SET ROLE regress_audit_app;
SELECT pgkm_decrypt_text(card, 'not the id') FROM audited WHERE id = 1;
SELECT pgkm_decrypt(overlay(card placing '\xff'::bytea from 30 for 1), id::text) FROM audited WHERE id = 1;
SELECT pgkm_decrypt(substr(card, 1, 20)) FROM audited WHERE id = 1;
SELECT pgkm_encrypt('x', 'no_such_key');
SELECT pgkm_encrypt('\xfffe'::bytea, 'audit_key') AS not_text \gset
SELECT pgkm_decrypt_text(:'not_text');
SELECT pgkm_decrypt(NULL);
RESET ROLE;

-- denied and failed attempts inside a transaction that rolls back are still recorded
BEGIN;
SET LOCAL ROLE regress_audit_outsider;
SELECT pgkm_decrypt_text(card, id::text) FROM audited WHERE id = 2;
ROLLBACK;

-- key administration, at every level: committed, and rolled back
SET pgkm.audit_level = none;
SELECT pgkm.rotate_key('audit_key');
BEGIN;
SELECT pgkm.disable_key_version('audit_key', 1);
ROLLBACK;
SELECT pgkm.alter_key_roles('audit_key', NULL, 'regress_audit_app');
-- no access records at level none
SET ROLE regress_audit_app;
SELECT pgkm_decrypt_text(card, id::text) FROM audited WHERE id = 4;
RESET ROLE;
SET pgkm.audit_level = statement;

-- an owner check that fails is a denied administration
GRANT USAGE ON SCHEMA pgkm TO regress_audit_outsider;
GRANT EXECUTE ON FUNCTION pgkm.rotate_key(text) TO regress_audit_outsider;
SET ROLE regress_audit_outsider;
SELECT pgkm.rotate_key('audit_key');
RESET ROLE;

-- the log: written by the worker, in order, with who and what, never a value
SET pgkm.audit_notice = off;
SELECT pgkm.audit_flush(true) > :mark AS flushed;
SELECT action, key_name, key_version, relation, column_name, command, row_count,
	success, sqlstate, session_user_name, current_user_name, detail
	FROM pgkm.audit_log WHERE seq > :mark AND backend_pid = pg_backend_pid()
	AND row_context IS NULL ORDER BY seq;
-- row level: two uses, two row contexts (in one record or two, as the worker took them)
SELECT sum(row_count) AS uses, sum(cardinality(string_to_array(row_context, ' '))) AS contexts,
	bool_and(row_context ~ '^nonce:[0-9a-f]{24}( nonce:[0-9a-f]{24})*$') AS well_formed,
	min(key_name) AS key, min(relation) AS relation, min(column_name) AS col
	FROM pgkm.audit_log WHERE seq > :mark AND backend_pid = pg_backend_pid()
	AND row_context IS NOT NULL;
-- the row context locates the row: it is the ciphertext's nonce
SELECT a.id FROM pgkm.audit_log l JOIN audited a
	ON 'nonce:' || encode(substr(a.card, 11, 12), 'hex') = ANY (string_to_array(l.row_context, ' '))
	WHERE l.seq > :mark AND l.backend_pid = pg_backend_pid() ORDER BY a.id;
-- seq has no gap, the chain links, and no plaintext or context reached the log
SELECT max(seq) - min(seq) + 1 = count(*) AS gapless FROM pgkm.audit_log;
SELECT count(*) AS leaked FROM pgkm.audit_log
	WHERE detail ~ 'card [0-9]' OR row_context ~ 'card' OR detail ~ 'not the id';
SELECT ok, broken_seq, problem, checkpoints > 0 AS sealed, sealed_through <= last_seq AS bounded
	FROM pgkm.verify_audit_log();

-- append-only, for superusers too; ordinary roles cannot read it
UPDATE pgkm.audit_log SET row_count = 0 WHERE seq = :mark + 1;
DELETE FROM pgkm.audit_log WHERE seq = :mark + 1;
TRUNCATE pgkm.audit_log;
INSERT INTO pgkm.audit_log SELECT * FROM pgkm.audit_log WHERE seq = :mark + 1;
SET ROLE regress_audit_app;
SELECT count(*) FROM pgkm.audit_log;
SELECT * FROM pgkm.verify_audit_log();
RESET ROLE;

-- tampering as a superuser that bypasses the trigger is found and located: an altered, a
-- deleted, an inserted (duplicate) record, two records swapped
SET session_replication_role = replica;
CREATE TEMP TABLE saved AS SELECT * FROM pgkm.audit_log WHERE seq IN (:mark + 3, :mark + 4);
UPDATE pgkm.audit_log SET action = 'forged' WHERE seq = :mark + 3;
SELECT ok, broken_seq - :mark AS broken_at, regexp_replace(problem, '[0-9]+', 'N', 'g') AS problem
	FROM pgkm.verify_audit_log();
DELETE FROM pgkm.audit_log WHERE seq = :mark + 3;
INSERT INTO pgkm.audit_log SELECT * FROM saved WHERE seq = :mark + 3;
SELECT ok FROM pgkm.verify_audit_log();
DELETE FROM pgkm.audit_log WHERE seq = :mark + 4;
SELECT ok, broken_seq - :mark AS broken_at, regexp_replace(problem, '[0-9]+', 'N', 'g') AS problem
	FROM pgkm.verify_audit_log();
INSERT INTO pgkm.audit_log SELECT * FROM saved WHERE seq = :mark + 4;
INSERT INTO pgkm.audit_log SELECT * FROM saved WHERE seq = :mark + 4;
SELECT ok, broken_seq - :mark AS broken_at, regexp_replace(problem, '[0-9]+', 'N', 'g') AS problem
	FROM pgkm.verify_audit_log();
DELETE FROM pgkm.audit_log WHERE seq = :mark + 4;
INSERT INTO pgkm.audit_log SELECT * FROM saved WHERE seq = :mark + 4;
SELECT ok FROM pgkm.verify_audit_log();
UPDATE pgkm.audit_log SET seq = CASE seq WHEN :mark + 3 THEN :mark + 4 ELSE :mark + 3 END
	WHERE seq IN (:mark + 3, :mark + 4);
SELECT ok, broken_seq - :mark AS broken_at, regexp_replace(problem, '[0-9]+', 'N', 'g') AS problem
	FROM pgkm.verify_audit_log();
UPDATE pgkm.audit_log SET seq = CASE seq WHEN :mark + 3 THEN :mark + 4 ELSE :mark + 3 END
	WHERE seq IN (:mark + 3, :mark + 4);
SELECT ok FROM pgkm.verify_audit_log();
RESET session_replication_role;

-- the settings
SET pgkm.audit_level = 'everything';
SET pgkm.audit_overflow = error;
SET pgkm.audit_durability = sync;
SET ROLE regress_audit_app;
SET pgkm.audit_level = none;
RESET ROLE;
RESET pgkm.audit_overflow;
RESET pgkm.audit_durability;
