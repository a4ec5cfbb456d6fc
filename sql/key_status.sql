-- key_status: keys, versions, states, ages and encryption counts, never key material

SELECT attname FROM pg_attribute WHERE attrelid = 'pgkm.key_status'::regclass AND attnum > 0
	ORDER BY attnum;
SELECT key_name, version, state, algorithm, master_key, wrap_mechanism, age >= '0'::interval AS aged
	FROM pgkm.key_status ORDER BY key_id, version;

-- encryptions are counted per version, without a catalog write per row
SELECT pgkm.create_key('counted_key') > 0 AS created;
SELECT encryptions FROM pgkm.key_status WHERE key_name = 'counted_key';
SELECT count(pgkm_encrypt('v' || i, 'counted_key')) FROM generate_series(1, 1000) i;
SELECT encryptions FROM pgkm.key_status WHERE key_name = 'counted_key';
SELECT encryptions AS in_catalog FROM pgkm.key_versions
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'counted_key');
SELECT pgkm.rotate_key('counted_key');
SELECT count(pgkm_encrypt('v' || i, 'counted_key')) FROM generate_series(1, 10) i;
SELECT version, state, encryptions FROM pgkm.key_status WHERE key_name = 'counted_key'
	ORDER BY version;

-- flushing moves the counts into the catalog; a rolled-back flush moves nothing
BEGIN;
SELECT pgkm.flush_encryption_counts() > 0 AS flushed;
ROLLBACK;
SELECT version, encryptions FROM pgkm.key_status WHERE key_name = 'counted_key' ORDER BY version;
SELECT version, encryptions FROM pgkm.key_versions
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'counted_key') ORDER BY version;
SELECT pgkm.flush_encryption_counts() > 0 AS flushed;
SELECT version, encryptions FROM pgkm.key_versions
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'counted_key') ORDER BY version;
SELECT c.version, c.unflushed FROM pgkm.encryption_counts() c
	JOIN pgkm.keys k USING (key_id) WHERE k.name = 'counted_key' ORDER BY 1;
SELECT version, encryptions FROM pgkm.key_status WHERE key_name = 'counted_key' ORDER BY version;

-- after DROP EXTENSION and CREATE EXTENSION, key ids start again; counts do not carry over
SELECT count(pgkm_encrypt('x'::text, 'customer_pii')) FROM generate_series(1, 5);
SELECT c.key_id, c.version, c.unflushed >= 5 AS unflushed FROM pgkm.encryption_counts() c
	JOIN pgkm.keys k USING (key_id) WHERE k.name = 'customer_pii' AND c.unflushed > 0;
DROP EXTENSION pgkm;
CREATE EXTENSION pgkm;
-- the master key is still in the token: it is adopted, not generated again
SELECT pgkm.create_key('reborn') AS key_id;
SELECT pgkm.rotate_key('reborn');
SELECT pgkm.rotate_key('reborn');
SELECT label, generated FROM pgkm.master_keys;
SELECT key_name, key_id, version, encryptions FROM pgkm.key_status ORDER BY version;
-- this backend's cache followed the new catalog; an old ciphertext of key id 1 version 1
-- does not decrypt under the new key that has the same id
SELECT pgkm_decrypt_text(pgkm_encrypt('fresh'::text, 'reborn'));
SELECT pgkm_decrypt_text(ssn, id::text) FROM patients WHERE id = 7;
