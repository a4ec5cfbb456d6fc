/* pgkm--1.4--1.5.sql: operations. Integrity verification (pgkm.verify) usable as a restore
   drill, dump and restore, physical backups, replicas, upgrades and parallel query. */

\echo Use "ALTER EXTENSION pgkm UPDATE TO '1.5'" to load this file. \quit

-- == verify: integrity verification and restore drills ==

-- == dump and restore ==

-- == replication ==

-- == parallel query ==

-- The data path runs in parallel workers (and, under Citus, on the worker nodes): a parallel
-- worker is a separate backend with the leader's user, snapshot and settings. It reads the
-- key catalog with SPI (read only, with the transaction snapshot), unwraps the DEK through
-- its own token session, draws nonces from its own pool (fork-safe) and counts encryptions in
-- shared memory; it writes no catalog row. Its key uses and failures go to the shared audit
-- ring as its own records (flushed at its parallel pre-commit); the leader alone notes the
-- statement. pgkm_rewrap and pgkm_blind_index_rebuild stay PARALLEL RESTRICTED: they serve
-- UPDATEs (rotation, index rebuilds), which PostgreSQL does not run in parallel.
ALTER FUNCTION @extschema@.pgkm_decrypt(bytea, bytea) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_decrypt(bytea, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_decrypt_text(bytea, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt(bytea, text, bytea) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt(bytea, text, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt(text, text, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt_det(bytea, text, bytea) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt_det(bytea, text, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt_det(text, text, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt_det_all(bytea, text, bytea) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt_det_all(bytea, text, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_encrypt_det_all(text, text, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_blind_index(bytea, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_blind_index(text, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_blind_index_all(bytea, text) PARALLEL SAFE;
ALTER FUNCTION @extschema@.pgkm_blind_index_all(text, text) PARALLEL SAFE;
