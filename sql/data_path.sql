-- data_path: round trips, sizes, context binding, NULLs, header fields, parallel workers

-- bytea: empty, one byte, binary with zero bytes; overhead is 38 bytes
SELECT length(pgkm_encrypt(''::bytea, 'customer_pii')) AS empty_len,
	pgkm_decrypt(pgkm_encrypt(''::bytea, 'customer_pii')) = ''::bytea AS empty_ok,
	length(pgkm_encrypt('\x00'::bytea, 'customer_pii')) AS one_len,
	pgkm_decrypt(pgkm_encrypt('\x00'::bytea, 'customer_pii')) AS one,
	pgkm_decrypt(pgkm_encrypt('\x00ff00ff'::bytea, 'customer_pii')) AS binary;

-- 1 MB of varied bytes
CREATE TEMP TABLE big AS
	SELECT string_agg(sha256(int4send(i)), ''::bytea) AS p FROM generate_series(1, 32768) i;
SELECT length(p) AS plain_len, length(pgkm_encrypt(p, 'customer_pii')) - length(p) AS overhead,
	pgkm_decrypt(pgkm_encrypt(p, 'customer_pii')) = p AS round_trip FROM big;

-- text, including multibyte characters and the empty string
SELECT pgkm_decrypt_text(pgkm_encrypt('Grüße, 日本語, 🙂'::text, 'customer_pii')) AS multibyte,
	pgkm_decrypt_text(pgkm_encrypt(''::text, 'customer_pii')) = '' AS empty_text,
	octet_length(pgkm_encrypt('é'::text, 'customer_pii')) AS two_byte_char_len;

-- random nonces: the same plaintext encrypts differently every time
SELECT count(DISTINCT pgkm_encrypt('same'::text, 'customer_pii')) AS distinct_ciphertexts
	FROM generate_series(1, 100);

-- context binding: the row's key decrypts; another row's key, or none, does not
INSERT INTO patients VALUES (8, pgkm_encrypt('987-65-4321', 'customer_pii', '8'));
SELECT id, pgkm_decrypt_text(ssn, id::text) FROM patients ORDER BY id;
SELECT pgkm_decrypt_text(ssn, '8') FROM patients WHERE id = 7;
SELECT pgkm_decrypt_text(ssn) FROM patients WHERE id = 7;
SELECT pgkm_decrypt(ssn, '\x37'::bytea) = convert_to('123-45-6789', 'UTF8') AS bytea_context
	FROM patients WHERE id = 7;
-- a ciphertext copied into another row does not decrypt there
UPDATE patients SET ssn = (SELECT ssn FROM patients WHERE id = 7) WHERE id = 8;
SELECT pgkm_decrypt_text(ssn, id::text) FROM patients WHERE id = 8;
UPDATE patients SET ssn = pgkm_encrypt('987-65-4321', 'customer_pii', '8') WHERE id = 8;

-- an absent context and an empty one are the same
SELECT pgkm_decrypt_text(pgkm_encrypt('a'::text, 'customer_pii', ''), NULL) AS empty_then_null,
	pgkm_decrypt_text(pgkm_encrypt('b'::text, 'customer_pii'), '') AS null_then_empty,
	pgkm_decrypt(pgkm_encrypt('\x01'::bytea, 'customer_pii', '\x'::bytea)) AS bytea_empty;

-- NULL in, NULL out
SELECT pgkm_encrypt(NULL::bytea, 'customer_pii') IS NULL AS enc_bytea,
	pgkm_encrypt(NULL::text, 'customer_pii') IS NULL AS enc_text,
	pgkm_encrypt(NULL::text, 'customer_pii', '7') IS NULL AS enc_ctx,
	pgkm_decrypt(NULL) IS NULL AS dec,
	pgkm_decrypt(NULL, '7'::text) IS NULL AS dec_ctx,
	pgkm_decrypt_text(NULL) IS NULL AS dec_text,
	pgkm_ciphertext_info(NULL) IS NULL AS info;

-- header fields, read without decrypting
SELECT (pgkm_ciphertext_info(ssn)).* FROM patients WHERE id = 7;
SELECT encode(substr(ssn, 1, 10), 'hex') AS header, length(ssn) AS len FROM patients WHERE id = 7;

-- volatility, strictness and parallel safety of the data path
SELECT p.oid::regprocedure AS function, p.provolatile, p.proparallel, p.proisstrict
	FROM pg_proc p WHERE p.proname LIKE 'pgkm\_%' AND p.pronamespace = 'public'::regnamespace
	ORDER BY p.oid::regprocedure::text;

-- since 1.5 the data path is PARALLEL SAFE: it runs in parallel workers, which audit their
-- own uses (test/integration/test_parallel.cpp checks the counts, denials and SQLSTATEs)
CREATE TABLE many AS
	SELECT i AS id, pgkm_encrypt('value ' || i, 'customer_pii', i::text) AS v
	FROM generate_series(1, 20000) i;
ANALYZE many;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
EXPLAIN (COSTS OFF) SELECT count(*) FROM many WHERE pgkm_decrypt_text(v, id::text) = 'value ' || id;
SELECT count(*) FROM many WHERE pgkm_decrypt_text(v, id::text) = 'value ' || id;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;
RESET max_parallel_workers_per_gather;
DROP TABLE many;
