-- privileges: key roles are checked on every call; administration is not for PUBLIC

CREATE ROLE regress_pgkm_writer;
CREATE ROLE regress_pgkm_reader;
CREATE ROLE regress_pgkm_app;
CREATE ROLE regress_pgkm_clerk;
CREATE ROLE regress_pgkm_keyadmin;
GRANT USAGE ON SCHEMA pgkm TO regress_pgkm_keyadmin;
GRANT EXECUTE ON FUNCTION pgkm.create_key(text, regrole, regrole, text, integer),
	pgkm.rotate_key(text), pgkm.alter_key_roles(text, regrole, regrole) TO regress_pgkm_keyadmin;

SELECT pgkm.create_key('hr_key', 'regress_pgkm_writer', 'regress_pgkm_reader') > 0 AS created;
SELECT name, owner, encrypt_role, decrypt_role FROM pgkm.keys WHERE name = 'hr_key';
GRANT regress_pgkm_writer TO regress_pgkm_app;

-- the application may encrypt but not decrypt
SET ROLE regress_pgkm_app;
CREATE TEMP TABLE salaries AS SELECT 1 AS id, pgkm_encrypt('90000'::text, 'hr_key', '1') AS pay;
GRANT SELECT ON salaries TO PUBLIC;
SELECT pgkm_decrypt_text(pay, id::text) FROM salaries;
RESET ROLE;

-- granted the decrypt role, it may; revoked again, it may not, in the same session
GRANT regress_pgkm_reader TO regress_pgkm_app;
SET ROLE regress_pgkm_app;
SELECT pgkm_decrypt_text(pay, id::text) FROM salaries;
RESET ROLE;
REVOKE regress_pgkm_reader FROM regress_pgkm_app;
SET ROLE regress_pgkm_app;
SELECT pgkm_decrypt_text(pay, id::text) FROM salaries;
RESET ROLE;

-- a role with neither may do nothing with the key, nor see the catalog
SET ROLE regress_pgkm_clerk;
SELECT pgkm_encrypt('x'::text, 'hr_key');
SELECT pgkm_decrypt_text(pay, id::text) FROM salaries;
SELECT * FROM pgkm.key_versions;
SELECT * FROM pgkm.key_status;
SELECT pgkm.create_key('clerk_key');
SELECT pgkm.rotate_key('hr_key');
-- ciphertext info never decrypts and needs no key role
SELECT key_name, key_version FROM pgkm_ciphertext_info((SELECT pay FROM salaries));
RESET ROLE;

-- a key administrator owns the keys it creates, and only those
SET ROLE regress_pgkm_keyadmin;
SELECT pgkm.create_key('admin_key', 'regress_pgkm_writer', 'regress_pgkm_reader') > 0 AS created;
SELECT pgkm.rotate_key('admin_key');
SELECT pgkm.rotate_key('hr_key');
SELECT pgkm.alter_key_roles('hr_key', decrypt_role => 'regress_pgkm_app');
RESET ROLE;
SELECT name, owner FROM pgkm.keys WHERE name IN ('hr_key', 'admin_key') ORDER BY name;

-- the owner changes a key's decrypt role; it takes effect at once
SELECT pgkm.alter_key_roles('hr_key', decrypt_role => 'regress_pgkm_app');
SELECT name, encrypt_role, decrypt_role FROM pgkm.keys WHERE name = 'hr_key';
SET ROLE regress_pgkm_app;
SELECT pgkm_decrypt_text(pay, id::text) FROM salaries;
RESET ROLE;

-- a superuser may use any key
SELECT pgkm_decrypt_text(pay, id::text) FROM salaries;

-- administration functions are revoked from PUBLIC
SELECT p.oid::regprocedure AS function, has_function_privilege('regress_pgkm_clerk', p.oid, 'EXECUTE')
	FROM pg_proc p WHERE p.pronamespace = 'pgkm'::regnamespace ORDER BY p.oid::regprocedure::text;
