/* pgkm--1.2--1.3.sql: hardening. The views are rebuilt with every operator and function
   schema-qualified: in 1.1, pgkm.rotation_progress bound "/" unqualified, so a role that
   could create objects in the extension's schema (public, on older installations) before
   CREATE EXTENSION or the 1.1 update could have put its own operator into the view, run by
   whoever reads it. Same columns, same privileges. */

\echo Use "ALTER EXTENSION pgkm UPDATE TO '1.3'" to load this file. \quit

CREATE OR REPLACE VIEW pgkm.key_status AS
	SELECT k.name AS key_name,
		k.key_id,
		v.version,
		v.state,
		k.algorithm,
		v.created_at,
		pg_catalog.now() OPERATOR(pg_catalog.-) v.created_at AS age,
		v.state_changed_at,
		v.encryptions OPERATOR(pg_catalog.+) COALESCE(c.unflushed, 0::pg_catalog.int8)
			AS encryptions,
		m.label AS master_key,
		v.wrap_mechanism,
		k.owner,
		k.encrypt_role,
		k.decrypt_role
	FROM pgkm.keys k
	JOIN pgkm.key_versions v ON v.key_id OPERATOR(pg_catalog.=) k.key_id
	LEFT JOIN pgkm.master_keys m ON m.master_key_id OPERATOR(pg_catalog.=) v.master_key_id
	LEFT JOIN pgkm.encryption_counts() c
		ON c.key_id OPERATOR(pg_catalog.=) v.key_id AND c.version OPERATOR(pg_catalog.=) v.version;

CREATE OR REPLACE VIEW pgkm.rotation_progress AS
	SELECT j.job_id,
		j.table_name,
		j.column_name,
		k.name AS key_name,
		j.target_version,
		j.state,
		j.phase,
		j.rows_done,
		j.rows_total,
		CASE WHEN j.started_at IS NOT NULL
				AND COALESCE(j.finished_at, j.updated_at) OPERATOR(pg_catalog.>) j.started_at
			THEN pg_catalog.round((j.rows_done::pg_catalog.numeric OPERATOR(pg_catalog./)
				pg_catalog.extract('epoch'::pg_catalog.text,
					COALESCE(j.finished_at, j.updated_at) OPERATOR(pg_catalog.-) j.started_at)),
				1)
		END AS rows_per_second,
		CASE WHEN j.state OPERATOR(pg_catalog.=) 'running'::pg_catalog.text
				AND j.rows_done OPERATOR(pg_catalog.>) 0::pg_catalog.int8
				AND j.rows_total OPERATOR(pg_catalog.>) j.rows_done
			THEN (COALESCE(j.updated_at, pg_catalog.now()) OPERATOR(pg_catalog.-) j.started_at)
				OPERATOR(pg_catalog.*) ((j.rows_total OPERATOR(pg_catalog.-) j.rows_done)::pg_catalog.float8
					OPERATOR(pg_catalog./) j.rows_done::pg_catalog.float8)
		END AS eta,
		j.sweeps,
		j.error,
		j.created_at,
		j.started_at,
		j.updated_at,
		j.finished_at
	FROM pgkm.rotation_jobs j
	JOIN pgkm.keys k ON k.key_id OPERATOR(pg_catalog.=) j.key_id;
