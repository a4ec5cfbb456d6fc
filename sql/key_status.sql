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
