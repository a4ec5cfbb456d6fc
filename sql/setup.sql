-- setup: install pgkm, create the first key (which creates the master key in the token)
-- 1.0 first, then the upgrade script, as an installed 1.0 would be upgraded
CREATE EXTENSION pgkm VERSION '1.0';
SELECT extversion FROM pg_extension WHERE extname = 'pgkm';
-- A grant on an administration function survives the update (1.4 replaces create_key).
CREATE ROLE regress_pgkm_upgrade_admin;
GRANT EXECUTE ON FUNCTION pgkm.create_key(text, regrole, regrole) TO regress_pgkm_upgrade_admin;
ALTER EXTENSION pgkm UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'pgkm';
SELECT has_function_privilege('regress_pgkm_upgrade_admin',
	'pgkm.create_key(text, regrole, regrole, text, integer)', 'EXECUTE') AS kept;
REVOKE EXECUTE ON FUNCTION pgkm.create_key(text, regrole, regrole, text, integer)
	FROM regress_pgkm_upgrade_admin;
DROP ROLE regress_pgkm_upgrade_admin;

-- Helper for the error tests: runs a statement and shows SQLSTATE and message.
CREATE FUNCTION pgkm_test_error(statement text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE statement;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
GRANT EXECUTE ON FUNCTION pgkm_test_error(text) TO PUBLIC;

-- No master key yet: the first key makes pgkm generate pgkm-master.v1 in the token.
SELECT count(*) FROM pgkm.master_keys;
SELECT pgkm.create_key('customer_pii') AS key_id;
SELECT label, provider, state, generated, created_by FROM pgkm.master_keys;
SELECT key_id, name, algorithm, owner, encrypt_role, decrypt_role FROM pgkm.keys;
SELECT key_id, version, state, length(wrapped_dek) AS wrapped_len, length(key_check) AS check_len,
	wrap_mechanism FROM pgkm.key_versions;

-- The catalog is dumped by pg_dump.
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS t(oid)
	JOIN pg_class c ON c.oid = t.oid WHERE e.extname = 'pgkm' ORDER BY 1;

CREATE TABLE patients (id integer PRIMARY KEY, ssn bytea);
INSERT INTO patients(id, ssn) VALUES (7, pgkm_encrypt('123-45-6789', 'customer_pii', '7'));
SELECT pgkm_decrypt_text(ssn, id::text) FROM patients;
