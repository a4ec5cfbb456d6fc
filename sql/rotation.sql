-- rotation: a new version encrypts, old versions still decrypt, caches follow at once

CREATE EXTENSION dblink;
\getenv test_dir PGKM_TEST_DIR
SELECT dblink_connect('other', format('host=%s port=%s dbname=%s user=postgres',
	:'test_dir', current_setting('port'), current_database()));
-- another backend warms its cache with version 1
SELECT * FROM dblink('other', $$SELECT (pgkm_ciphertext_info(pgkm_encrypt('x'::text, 'customer_pii'))).key_version$$) AS t(v bigint);

SELECT pgkm.rotate_key('customer_pii') AS new_version;
SELECT version, state FROM pgkm.key_versions
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'customer_pii') ORDER BY version;
-- this backend and the other one both encrypt under version 2 now
SELECT (pgkm_ciphertext_info(pgkm_encrypt('x'::text, 'customer_pii'))).key_version;
SELECT * FROM dblink('other', $$SELECT (pgkm_ciphertext_info(pgkm_encrypt('x'::text, 'customer_pii'))).key_version$$) AS t(v bigint);

-- data under version 1 still decrypts; new rows use version 2
INSERT INTO patients VALUES (9, pgkm_encrypt('111-22-3333', 'customer_pii', '9'));
SELECT id, pgkm_decrypt_text(ssn, id::text), (pgkm_ciphertext_info(ssn)).key_version
	FROM patients ORDER BY id;

-- a rotation that rolls back leaves no trace, in this backend's cache either
BEGIN;
SELECT pgkm.rotate_key('customer_pii') AS new_version;
SELECT (pgkm_ciphertext_info(pgkm_encrypt('x'::text, 'customer_pii'))).key_version;
ROLLBACK;
SELECT (pgkm_ciphertext_info(pgkm_encrypt('x'::text, 'customer_pii'))).key_version;

-- likewise for a savepoint
BEGIN;
SAVEPOINT s;
SELECT pgkm.rotate_key('customer_pii') AS new_version;
SELECT (pgkm_ciphertext_info(pgkm_encrypt('x'::text, 'customer_pii'))).key_version;
ROLLBACK TO SAVEPOINT s;
SELECT (pgkm_ciphertext_info(pgkm_encrypt('x'::text, 'customer_pii'))).key_version;
COMMIT;

-- a rotation inside a transaction is seen by others only after commit
BEGIN;
SELECT pgkm.rotate_key('customer_pii') AS new_version;
SELECT * FROM dblink('other', $$SELECT (pgkm_ciphertext_info(pgkm_encrypt('x'::text, 'customer_pii'))).key_version$$) AS t(v bigint);
COMMIT;
SELECT * FROM dblink('other', $$SELECT (pgkm_ciphertext_info(pgkm_encrypt('x'::text, 'customer_pii'))).key_version$$) AS t(v bigint);
-- and the other backend decrypts every version
SELECT * FROM dblink('other', $$SELECT string_agg(pgkm_decrypt_text(ssn, id::text), ', ' ORDER BY id) FROM patients$$) AS t(v text);
SELECT dblink_disconnect('other');

-- one master key wraps every version; rotation does not touch the token's master keys
SELECT count(*) AS master_keys FROM pgkm.master_keys;

-- changes that bypass the catalog triggers (disabled by hand; since 1.5 they also fire in
-- replica mode, as a restore or a logical-replication subscriber runs) are picked up when
-- pgkm.key_cache_ttl runs out
ALTER SYSTEM SET pgkm.key_cache_ttl = 1;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
CREATE TABLE ttl AS SELECT pgkm_encrypt('z'::text, 'other_key') AS c;
SELECT pgkm_decrypt_text(c) FROM ttl;
ALTER TABLE pgkm.key_versions DISABLE TRIGGER key_versions_changed;
UPDATE pgkm.key_versions SET state = 'disabled', disabled_from = 'active'
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'other_key');
ALTER TABLE pgkm.key_versions ENABLE ALWAYS TRIGGER key_versions_changed;
-- still cached: no trigger told the cache
SELECT pgkm_decrypt_text(c) FROM ttl;
SELECT pg_sleep(1.2);
SELECT pgkm_decrypt_text(c) FROM ttl;
UPDATE pgkm.key_versions SET state = 'active', disabled_from = NULL
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'other_key');
SELECT pgkm_decrypt_text(c) FROM ttl;
DROP TABLE ttl;
ALTER SYSTEM RESET pgkm.key_cache_ttl;
SELECT pg_reload_conf();
