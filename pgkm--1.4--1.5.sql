/* pgkm--1.4--1.5.sql: operations. Integrity verification (pgkm.verify) usable as a restore
   drill, dump and restore, physical backups, replicas, upgrades and parallel query. */

\echo Use "ALTER EXTENSION pgkm UPDATE TO '1.5'" to load this file. \quit

-- == verify: integrity verification and restore drills ==

-- == dump and restore ==

-- == replication ==

-- == parallel query ==
