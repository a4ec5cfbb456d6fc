-- verify: pgkm.verify() tries to decrypt every protected value and counts the outcomes by
-- column, key version and kind, with the first failing primary keys; no plaintext returned.
-- No key id, oid or timestamp is printed: they depend on the suites before this one.

CREATE ROLE regress_vf_reader;   -- may decrypt with vf_key
CREATE ROLE regress_vf_auditor;  -- may run verify and read the table, but not decrypt
GRANT USAGE ON SCHEMA pgkm TO regress_vf_auditor;
GRANT EXECUTE ON FUNCTION pgkm.verify(regclass, integer) TO regress_vf_auditor;
SELECT pgkm.create_key('vf_key', 'regress_vf_reader', 'regress_vf_reader') > 0 AS created;
SELECT pgkm.create_key('vf_gone') > 0 AS created;

CREATE TABLE vf_t (id integer PRIMARY KEY, ctx text, v bytea);
SELECT pgkm.protect_column('vf_t', 'v', 'vf_key', 'ctx');
INSERT INTO vf_t SELECT i, 'row ' || i, pgkm_encrypt('secret ' || i, 'vf_key', 'row ' || i)
	FROM generate_series(1, 8) AS i;
INSERT INTO vf_t VALUES (9, 'row 9', NULL);
-- a text context is used as its bytes, backslashes included (not parsed as a bytea literal)
INSERT INTO vf_t VALUES (10, 'C:\x41\', pgkm_encrypt('secret 10', 'vf_key', 'C:\x41\'));
CREATE TABLE vf_other (id text PRIMARY KEY, v bytea);
SELECT pgkm.protect_column('vf_other', 'v', 'vf_key', 'id');
INSERT INTO vf_other VALUES ('a', pgkm_encrypt('x', 'vf_key', 'a')),
	('b', pgkm_encrypt('y', 'vf_key', 'b'));
-- a blind-index column is checked by header: a usable version of a blind-index key
SELECT pgkm.create_key('vf_bi', algorithm => 'blind-index', blind_index_bytes => 32) > 0 AS created;
ALTER TABLE vf_other ADD COLUMN bi bytea;
UPDATE vf_other SET bi = pgkm_blind_index(id, 'vf_bi');
SELECT pgkm.protect_column('vf_other', 'bi', 'vf_bi', NULL, 'v');

-- all ok: every value opens; the NULL of row 9 is skipped, not counted
SELECT column_name, key_name, key_version, values_total, values_ok, first_failures
	FROM pgkm.verify('vf_t');

-- a value under a version that is destroyed since: made while the column did not hold it
CREATE TABLE vf_hold (v bytea);
INSERT INTO vf_hold VALUES (pgkm_encrypt('old', 'vf_gone', 'row 5'));
SELECT pgkm.rotate_key('vf_gone') AS new_version;
SELECT pgkm.destroy_key_version('vf_gone', 1);
UPDATE vf_t SET v = (SELECT v FROM vf_hold) WHERE id = 5;

-- a flipped byte in the body (row 2), a wrong context (row 3), a truncated value (row 4),
-- a header naming a key id that does not exist (row 6)
UPDATE vf_t SET v = set_byte(v, 25, get_byte(v, 25) # 1) WHERE id = 2;
UPDATE vf_t SET ctx = 'moved' WHERE id = 3;
UPDATE vf_t SET v = substring(v FROM 1 FOR 20) WHERE id = 4;
UPDATE vf_t SET v = set_byte(v, 2, 127) WHERE id = 6;

SELECT column_name, key_name, key_version, values_total, values_ok, missing_key, destroyed,
	disabled, denied, auth_failed, wrong_master_key, malformed, first_failures
	FROM pgkm.verify('vf_t') ORDER BY key_name NULLS LAST, key_version;

-- the context is the row's own key here: a value copied to another row fails
UPDATE vf_other SET v = (SELECT v FROM vf_other WHERE id = 'a') WHERE id = 'b';
-- and a blind index whose header claims another algorithm than its key's
UPDATE vf_other SET bi = set_byte(bi, 1, 1) WHERE id = 'a';
SELECT column_name, key_name, values_total, values_ok, auth_failed, first_failures
	FROM pgkm.verify('vf_other') ORDER BY column_name;

-- one table or all: verify() covers both tables (and those of earlier suites)
SELECT table_name, sum(values_total) AS total, sum(values_total - values_ok) AS failed
	FROM pgkm.verify() WHERE table_name::text LIKE 'vf\_%' GROUP BY table_name ORDER BY 1;

-- a caller who may not decrypt with the key gets counts of denied, not an error
GRANT SELECT ON vf_t TO regress_vf_auditor;
SET ROLE regress_vf_auditor;
SELECT key_name, key_version, values_total, values_ok, denied
	FROM pgkm.verify('vf_t') WHERE key_name = 'vf_key';
-- without SELECT on a table, the scan fails like any SELECT
SELECT pgkm_test_error($$SELECT * FROM pgkm.verify('vf_other')$$);
RESET ROLE;
-- without EXECUTE: verify is revoked from PUBLIC
SET ROLE regress_vf_reader;
SELECT pgkm_test_error($$SELECT * FROM pgkm.verify('vf_t')$$);
RESET ROLE;

-- a disabled version: its values count as disabled (enable it and they read again). The
-- column is registered after the rotation, so no re-encryption job rewrites them meanwhile.
SELECT pgkm.create_key('vf_off') > 0 AS created;
CREATE TABLE vf_off_t (id integer PRIMARY KEY, v bytea);
INSERT INTO vf_off_t SELECT i, pgkm_encrypt('off ' || i, 'vf_off', i::text)
	FROM generate_series(1, 3) AS i;
SELECT pgkm.rotate_key('vf_off') AS new_version;
SELECT pgkm.disable_key_version('vf_off', 1);
SELECT pgkm.protect_column('vf_off_t', 'v', 'vf_off', 'id');
SELECT key_version, values_total, values_ok, disabled, first_failures
	FROM pgkm.verify('vf_off_t');
SELECT pgkm.enable_key_version('vf_off', 1);
-- (summed over versions: the worker may re-encrypt them to version 2 from now on)
SELECT sum(values_total) AS total, sum(values_ok) AS ok, sum(disabled) AS disabled
	FROM pgkm.verify('vf_off_t');

-- throttle: a negative rate is refused; a rate still verifies everything
SELECT pgkm_test_error($$SELECT * FROM pgkm.verify('vf_t', -1)$$);
SELECT sum(values_total) AS total FROM pgkm.verify('vf_t', 1000);

-- the run is one admin record in the audit log, not one per value
SELECT pgkm.audit_flush() IS NOT NULL AS flushed;
SELECT action, detail FROM pgkm.audit_log WHERE action = 'verify' AND detail LIKE 'vf\_t:%'
	ORDER BY seq;
-- (vf_key was never used to decrypt outside verify: a record per value would show here)
SELECT count(*) AS decrypt_records FROM pgkm.audit_log
	WHERE action = 'decrypt' AND key_name = 'vf_key';

-- nothing runs now: the progress view is empty
SELECT count(*) FROM pgkm.verify_progress;

DROP TABLE vf_t, vf_other, vf_hold, vf_off_t;
DROP OWNED BY regress_vf_auditor;
DROP ROLE regress_vf_auditor;
