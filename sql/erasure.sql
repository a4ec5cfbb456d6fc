-- erasure: per-subject keys and crypto-shredding (pgkm.erase_subject), and destroying a
-- retired master key in the token (pgkm.destroy_master_key). No timestamp, oid, key id or
-- master-key label is printed: they depend on the suites before this one.

SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;
\getenv test_dir PGKM_TEST_DIR
SELECT dblink_connect('er', format('host=%s port=%s dbname=%s user=postgres',
	:'test_dir', current_setting('port'), current_database()));

CREATE ROLE regress_er_admin;  -- a key administrator: owns a key and a table
CREATE ROLE regress_er_other;  -- another key administrator
CREATE ROLE regress_er_app;    -- neither: no USAGE on schema pgkm
GRANT USAGE ON SCHEMA pgkm TO regress_er_admin, regress_er_other;
GRANT EXECUTE ON FUNCTION pgkm.create_key(text, regrole, regrole, text, integer), pgkm.erase_subject(text),
	pgkm.protect_column(regclass, name, text, name, name), pgkm.destroy_master_key(text)
	TO regress_er_admin, regress_er_other;
GRANT CREATE ON SCHEMA public TO regress_er_admin;

-- per-subject keys: names may hold a subject's identifier (':' and '/')
SELECT pgkm.create_key(k) > 0 AS created FROM unnest(ARRAY['regress_er:4711', 'regress_er:4712',
	'regress_er:shared', 'regress_er/tenant/42']) AS k;
SELECT pgkm_test_error($$SELECT pgkm.create_key('regress_er:4711 ')$$);
SELECT key_id AS key_4711 FROM pgkm.keys WHERE name = 'regress_er:4711' \gset
SELECT label AS master FROM pgkm.master_keys WHERE state = 'active' \gset

-- one column shared by subjects (registered with another key), one registered with the
-- subject's own key, and a copy outside protected columns
CREATE TABLE er_orders (id integer PRIMARY KEY, customer text, note bytea);
SELECT pgkm.protect_column('er_orders', 'note', 'regress_er:shared', 'id');
INSERT INTO er_orders VALUES
	(1, '4711', pgkm_encrypt('order 1', 'regress_er:4711', '1')),
	(2, '4711', pgkm_encrypt('order 2', 'regress_er:4711', '2')),
	(3, '4711', pgkm_encrypt('order 3', 'regress_er:4711', '3')),
	(4, '4712', pgkm_encrypt('order 4', 'regress_er:4712', '4')),
	(5, '4712', pgkm_encrypt('order 5', 'regress_er:4712', '5')),
	(6, NULL, pgkm_encrypt('order 6', 'regress_er:shared', '6'));
CREATE TABLE er_profiles (id integer PRIMARY KEY, data bytea);
SELECT pgkm.protect_column('er_profiles', 'data', 'regress_er:4711', 'id');
INSERT INTO er_profiles VALUES
	(1, pgkm_encrypt('profile 1', 'regress_er:4711', '1')),
	(2, pgkm_encrypt('profile 2', 'regress_er:4711', '2')),
	(3, pgkm_encrypt('profile 3', 'regress_er:4712', '3'));
CREATE TABLE er_copies AS SELECT id, note FROM er_orders WHERE id = 1;

-- a rotation whose re-encryption job is paused: the erasure cancels it
BEGIN;
SELECT pgkm.rotate_key('regress_er:4711');
SELECT pgkm.pause_job(job_id) FROM pgkm.rotation_jobs
	WHERE key_id = :key_4711 AND state = 'pending';
COMMIT;
INSERT INTO er_orders VALUES (7, '4711', pgkm_encrypt('order 7', 'regress_er:4711', '7'));
INSERT INTO er_profiles VALUES (4, pgkm_encrypt('profile 4', 'regress_er:4711', '4'));

-- a table owned by the administrator that its owner cannot scan (a forced policy with
-- row_security off fails): the erasure reports it and goes on
SET ROLE regress_er_admin;
SELECT pgkm.create_key('regress_er:admin') > 0 AS created;
CREATE TABLE er_forced (id integer PRIMARY KEY, v bytea);
SELECT pgkm.protect_column('er_forced', 'v', 'regress_er:admin', 'id');
ALTER TABLE er_forced ENABLE ROW LEVEL SECURITY;
ALTER TABLE er_forced FORCE ROW LEVEL SECURITY;
CREATE POLICY er_all ON er_forced USING (true);
RESET ROLE;
INSERT INTO er_forced SELECT 1, note FROM er_orders WHERE id = 1;

-- another session uses the subject's key: it is cached there
SELECT * FROM dblink('er', $$SELECT string_agg(pgkm_decrypt_text(note, id::text), ', ' ORDER BY id)
	FROM er_orders WHERE customer = '4711'$$) AS t(v text);

-- who may erase: the key's owner or a superuser; denials are audited; PUBLIC may not at all
SET ROLE regress_er_other;
SELECT pgkm_test_error($$SELECT pgkm.erase_subject('regress_er:4711')$$);
SELECT pgkm_test_error($$SELECT pgkm.erase_subject('regress_er:admin')$$);
SET ROLE regress_er_app;
SELECT pgkm_test_error($$SELECT pgkm.erase_subject('regress_er:4711')$$);
RESET ROLE;
SELECT pgkm_test_error($$SELECT pgkm.erase_subject('regress_er:nobody')$$);
SELECT pgkm_test_error($$SELECT pgkm.erase_subject(NULL)$$);
SELECT p.proname, p.provolatile, p.proisstrict, p.proparallel, p.prorettype::regtype,
	p.proconfig, has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute
	FROM pg_proc p WHERE p.oid IN ('pgkm.erase_subject'::regproc,
		'pgkm.destroy_master_key'::regproc) ORDER BY 1;

-- a rolled-back erasure changes nothing (and is audited as rolled back)
BEGIN;
SELECT pgkm.erase_subject('regress_er:4712') ->> 'versions_destroyed' AS destroyed;
ROLLBACK;
SELECT string_agg(pgkm_decrypt_text(note, id::text), ', ' ORDER BY id) FROM er_orders
	WHERE customer = '4712';
SELECT erased_at IS NULL AS not_erased FROM pgkm.keys WHERE name = 'regress_er:4712';

-- the erasure: every version destroyed in one transaction, the active one included; other
-- sessions lose the key at commit, not before
SELECT string_agg(encode(wrapped_dek, 'hex'), ' ') AS deks_4711 FROM pgkm.key_versions
	WHERE key_id = :key_4711 \gset
BEGIN;
SELECT pgkm.erase_subject('regress_er:4711') AS report \gset
SELECT * FROM dblink('er', $$SELECT pgkm_decrypt_text(note, id::text) FROM er_orders WHERE id = 1$$)
	AS t(v text);
COMMIT;
SELECT pgkm_test_error($$SELECT * FROM dblink('er', 'SELECT pgkm_decrypt_text(note, id::text) FROM er_orders WHERE id = 1') AS t(v text)$$);
SELECT pgkm_test_error($$SELECT * FROM dblink('er', 'SELECT pgkm_encrypt(''x''::text, ''regress_er:4711'')') AS t(v bytea)$$);

-- the report: the evidence
SELECT array(SELECT jsonb_object_keys(:'report'::jsonb) ORDER BY 1) AS report_fields;
SELECT r ->> 'key_name' AS key_name, (r ->> 'key_id')::bigint = :key_4711 AS key_id_ok,
	(r ->> 'erased_at')::timestamptz = k.erased_at AS erased_at_ok, r -> 'erased_by' AS erased_by,
	r -> 'versions_destroyed' AS destroyed, r -> 'rows_found' AS rows_found,
	jsonb_array_length(r -> 'jobs_cancelled') AS jobs_cancelled,
	(r ->> 'key_event_id')::bigint = e.event_id AS event_ok,
	r -> 'audit_record' ->> 'action' AS audit_action,
	r -> 'audit_record' ->> 'key_name' AS audit_key,
	(r -> 'audit_record' ->> 'backend_pid')::int = pg_backend_pid() AS audit_pid_ok
	FROM (SELECT :'report'::jsonb AS r) s, pgkm.keys k, pgkm.key_events e
	WHERE k.name = 'regress_er:4711' AND e.key_id = k.key_id AND e.action = 'key_erase';
SELECT v ->> 'version' AS version, v ->> 'state_before' AS state_before,
	v ->> 'master_key' = :'master' AS under_active_master
	FROM jsonb_array_elements(:'report'::jsonb -> 'versions') v;
SELECT c ->> 'table' AS "table", c ->> 'column' AS "column", c ->> 'registered_key' AS registered,
	c -> 'rows' AS rows, c -> 'rows_by_version' AS by_version
	FROM jsonb_array_elements(:'report'::jsonb -> 'columns') c;
SELECT c ->> 'table' AS "table", c ->> 'column' AS "column", c ->> 'sqlstate' AS sqlstate,
	c ->> 'message' AS message
	FROM jsonb_array_elements(:'report'::jsonb -> 'column_errors') c
	WHERE c ->> 'table' LIKE '%er\_%';
-- every protected column of an existing table was scanned, or is listed with its error
SELECT (r ->> 'columns_scanned')::int + jsonb_array_length(r -> 'column_errors')
	= (SELECT count(*) FROM pgkm.protected_columns p JOIN pg_class c ON c.oid = p.table_name)
	AS all_columns FROM (SELECT :'report'::jsonb AS r) s;
-- what remains: the master key the backups need, and the rows left undecryptable
SELECT position(format('versions 1, 2 under master key "%s"', :'master') IN x) > 0
	AS names_master, regexp_replace(replace(x, :'master', '<master>'),
		'^[0-9]+ protected columns? could not', '<n> protected column(s) could not') AS item
	FROM jsonb_array_elements_text(:'report'::jsonb -> 'remains') WITH ORDINALITY AS t(x, n)
	ORDER BY n;
-- no key material in the report, key_events or the audit log (checked below)
SELECT count(*) AS wrapped_deks, count(*) FILTER (WHERE position(d IN :'report') > 0) AS in_report,
	count(*) FILTER (WHERE EXISTS (SELECT FROM pgkm.key_events e
		WHERE position(d IN coalesce(e.detail, '')) > 0)) AS in_key_events
	FROM unnest(string_to_array(:'deks_4711', ' ')) AS d;

-- the catalog: the key stays, marked erased; every version destroyed, no key material
SELECT name, erased_at IS NOT NULL AS erased, erased_by, erased_session_user FROM pgkm.keys
	WHERE name LIKE 'regress\_er%' ORDER BY name;
SELECT version, state, wrapped_dek IS NULL AS no_dek, key_check IS NULL AS no_check,
	master_key_id IS NULL AS no_master FROM pgkm.key_versions WHERE key_id = :key_4711
	ORDER BY version;
SELECT key_name, version, state, master_key FROM pgkm.key_status
	WHERE key_name = 'regress_er:4711' ORDER BY version;
SELECT table_name, state, error FROM pgkm.rotation_jobs WHERE key_id = :key_4711;
SELECT actor, action, version,
	regexp_replace(detail, ' of [0-9]+ protected columns \([0-9]+ not', ' of <n> protected columns (<n> not')
	AS detail FROM pgkm.key_events WHERE key_id = :key_4711 AND action = 'key_erase';

-- after the erasure: decrypting gives the destroyed-version error, in every column and copy;
-- encrypting, rewrapping, rotating, protecting and erasing again are refused; the name is
-- not reused; other subjects' values are untouched
SELECT pgkm_test_error(format('SELECT pgkm_decrypt_text(note, id::text) FROM er_orders WHERE id = %s', i))
	FROM unnest(ARRAY[1, 7]) AS i;
SELECT pgkm_test_error($$SELECT pgkm_decrypt_text(data, id::text) FROM er_profiles WHERE id = 4$$);
SELECT pgkm_test_error($$SELECT pgkm_decrypt_text(note, id::text) FROM er_copies$$);
SELECT pgkm_test_error($$SELECT pgkm_rewrap(note, id::text) FROM er_copies$$);
SELECT pgkm_test_error($$SELECT pgkm_encrypt('x'::text, 'regress_er:4711')$$);
SELECT pgkm_test_error($$SELECT pgkm.rotate_key('regress_er:4711')$$);
SELECT pgkm_test_error($$SELECT pgkm.protect_column('er_copies', 'note', 'regress_er:4711')$$);
SELECT pgkm_test_error($$SELECT pgkm.erase_subject('regress_er:4711')$$);
SELECT pgkm_test_error($$SELECT pgkm.create_key('regress_er:4711')$$);
SELECT pgkm_test_error($$SELECT pgkm.enable_key_version('regress_er:4711', 2)$$);
SELECT (pgkm_ciphertext_info(note)).key_name, (pgkm_ciphertext_info(note)).key_version
	FROM er_copies;
SELECT id, pgkm_decrypt_text(note, id::text) FROM er_orders WHERE customer IS DISTINCT FROM '4711'
	ORDER BY id;
SELECT id, pgkm_decrypt_text(data, id::text) FROM er_profiles WHERE id = 3;
SELECT * FROM dblink('er', $$SELECT string_agg(pgkm_decrypt_text(note, id::text), ', ' ORDER BY id)
	FROM er_orders WHERE customer = '4712'$$) AS t(v text);
-- the worker's jobs for the erased key stay cancelled; its policy never rotates it
SELECT regexp_replace(pgkm_test_error($$SELECT pgkm.resume_job(job_id) FROM pgkm.rotation_jobs
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'regress_er:4711')$$),
	'job [0-9]+', 'job <id>') AS resume;

-- an erasure by the key's owner who is not a superuser (as that role, under SET ROLE)
SET ROLE regress_er_admin;
SELECT r -> 'erased_by' AS erased_by, r -> 'versions' -> 0 ->> 'state_before' AS state_before,
	r -> 'rows_found' AS rows_found
	FROM (SELECT pgkm.erase_subject('regress_er:admin') AS r) s;
RESET ROLE;

-- with triggers off (session_replication_role = replica), every cache is emptied at commit all
-- the same
SELECT pgkm_encrypt('tenant 42', 'regress_er/tenant/42') AS t42 \gset
SELECT * FROM dblink('er', format('SELECT pgkm_decrypt_text(%L::bytea)', :'t42')) AS t(v text);
SET session_replication_role = replica;
SELECT pgkm.erase_subject('regress_er/tenant/42') ->> 'versions_destroyed' AS destroyed;
RESET session_replication_role;
SELECT pgkm_test_error(format('SELECT * FROM dblink(%L, %L) AS t(v text)', 'er',
	format('SELECT pgkm_decrypt_text(%L::bytea)', :'t42')));

-- the audit log: the erasures, the rolled-back one, the denials (who, when), no key material
SELECT pgkm.audit_flush() > 0 AS flushed;
SELECT action, key_name, session_user_name, current_user_name, success, sqlstate,
	regexp_replace(regexp_replace(detail, 'key_events [0-9]+', 'key_events <id>'),
		' of [0-9]+ protected columns \([0-9]+ not', ' of <n> protected columns (<n> not') AS detail,
	at BETWEEN now() - interval '1 hour' AND clock_timestamp() AS at_ok
	FROM pgkm.audit_log
	WHERE (key_name LIKE 'regress\_er%' AND action IN ('key_erase', 'denied'))
	ORDER BY seq;
SELECT count(*) FILTER (WHERE EXISTS (SELECT FROM pgkm.audit_log a
		WHERE position(d IN coalesce(a.detail, '') || coalesce(a.row_context, '')) > 0))
	AS in_audit_log
	FROM unnest(string_to_array(:'deks_4711', ' ')) AS d;

------------------------------------------------------------------------------------------
-- destroying a master key: superuser only, only a retired one, recorded, gone from the token
SET ROLE regress_er_admin;
SELECT pgkm_test_error(format('SELECT pgkm.destroy_master_key(%L)', :'master'));
SET ROLE regress_er_app;
SELECT pgkm_test_error(format('SELECT pgkm.destroy_master_key(%L)', :'master'));
RESET ROLE;
SELECT pgkm_test_error($$SELECT pgkm.destroy_master_key(NULL)$$);
SELECT pgkm_test_error($$SELECT pgkm.destroy_master_key('no-such-master')$$);
SELECT regexp_replace(pgkm_test_error(format('SELECT pgkm.destroy_master_key(%L)', :'master')),
	'"[^"]*"', '"<active>"') AS active_refused;
SELECT pgkm.rotate_master_key() AS new_master \gset
SELECT regexp_replace(pgkm_test_error(format('SELECT pgkm.destroy_master_key(%L)', :'master')),
	'"[^"]*"', '"<previous>"') AS previous_refused;
SELECT pgkm.retire_master_key(:'master');
-- a hand edit that wraps a version under it again is refused
BEGIN;
UPDATE pgkm.key_versions SET master_key_id =
	(SELECT master_key_id FROM pgkm.master_keys WHERE label = :'master')
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'regress_er:4712');
SELECT regexp_replace(pgkm_test_error(format('SELECT pgkm.destroy_master_key(%L)', :'master')),
	'"[^"]*"', '"<retired>"') AS still_wraps;
ROLLBACK;
SELECT pgkm.destroy_master_key(:'master');
SELECT label = :'master' AS destroyed_one, state, destroyed_at >= retired_at AS after_retiring,
	destroyed_by FROM pgkm.master_keys WHERE state = 'destroyed' AND label = :'master';
SELECT regexp_replace(pgkm_test_error(format('SELECT pgkm.destroy_master_key(%L)', :'master')),
	'"[^"]*"', '"<destroyed>"') AS again;
-- nothing this database keeps needed it: a new backend decrypts every subject left
SELECT * FROM dblink('er', $$SELECT string_agg(pgkm_decrypt_text(note, id::text), ', ' ORDER BY id)
	FROM er_orders WHERE customer IS DISTINCT FROM '4711'$$) AS t(v text);
-- a retired master key that the token no longer holds (deleted with pkcs11-tool, say) is
-- recorded as destroyed, with a NOTICE
INSERT INTO pgkm.master_keys (label, state, generated, created_by, retired_at)
	VALUES ('regress-er-gone.v1', 'retired', false, 'postgres', now());
SELECT pgkm.destroy_master_key('regress-er-gone.v1');
SELECT state, destroyed_by FROM pgkm.master_keys WHERE label = 'regress-er-gone.v1';
SELECT actor, action, regexp_replace(detail, '^pgkm-master\.v[0-9]+$', '<master>') AS detail
	FROM pgkm.key_events WHERE action = 'master_destroy' ORDER BY event_id;
SELECT pgkm.audit_flush() > 0 AS flushed;
SELECT action, session_user_name, success, sqlstate,
	regexp_replace(detail, 'pgkm-master\.v[0-9]+', '<master>') AS detail
	FROM pgkm.audit_log WHERE action IN ('master_destroy')
	OR (action = 'denied' AND detail LIKE 'master key destruction%') ORDER BY seq;

------------------------------------------------------------------------------------------
-- the audit log's partitions are ordinary tables, not extension members, so that pg_dump
-- carries them and their records (1.6); each has its own indexes, the parent none
SELECT count(*) > 0 AS partitions,
	bool_and(NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
		AND d.objid = i.inhrelid AND d.deptype = 'e')) AS none_members,
	bool_and(c.relname ~ '^audit_records_[0-9]{8}_[0-9]{6}_[0-9]{6}$') AS named,
	bool_and((SELECT count(*) FROM pg_index x WHERE x.indrelid = i.inhrelid) = 2) AS indexed,
	bool_and(EXISTS (SELECT FROM pgkm.audit_partitions p WHERE p.name = c.relname)) AS registered
	FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
	WHERE i.inhparent = 'pgkm.audit_log'::regclass;
SELECT count(*) AS parent_indexes FROM pg_index WHERE indrelid = 'pgkm.audit_log'::regclass;
-- the 1.6 update does this to the partitions of an older installation: members since 1.4,
-- named audit_log_*, indexed through the parent's indexes
CREATE DATABASE er_upgrade;
SELECT dblink_connect('up', format('host=%s port=%s dbname=er_upgrade user=postgres',
	:'test_dir', current_setting('port')));
SELECT dblink_exec('up', $$CREATE EXTENSION pgkm VERSION '1.3'$$);
-- an audit record under 1.3 (a failed decrypt; key administration waits for the update)
SELECT dblink_exec('up', $$DO $do$ BEGIN PERFORM pgkm_decrypt('\x0101'::bytea);
	EXCEPTION WHEN OTHERS THEN NULL; END $do$ $$);
SELECT * FROM dblink('up', $$SELECT pgkm.audit_flush() > 0$$) AS t(flushed boolean);
SELECT dblink_exec('up', $$ALTER EXTENSION pgkm UPDATE TO '1.5'$$);
-- the partition as pgkm 1.5's worker named it
SELECT * FROM dblink('up', $$SELECT c.relname::text FROM pg_inherits i JOIN pg_class c
	ON c.oid = i.inhrelid WHERE i.inhparent = 'pgkm.audit_log'::regclass$$) AS t(part text) \gset
SELECT dblink_exec('up', format('ALTER TABLE pgkm.%I RENAME TO %I', :'part',
	replace(:'part', 'audit_records_', 'audit_log_')));
SELECT dblink_exec('up', format($$UPDATE pgkm.audit_partitions SET name = %L$$,
	replace(:'part', 'audit_records_', 'audit_log_')));
SELECT * FROM dblink('up', $$SELECT count(*) FILTER (WHERE EXISTS (SELECT FROM pg_depend d
		WHERE d.classid = 'pg_class'::regclass AND d.objid = i.inhrelid AND d.deptype = 'e')),
	count(*) FILTER (WHERE c.relname ~ '^audit_log_'),
	(SELECT count(*) FROM pg_index WHERE indrelid = 'pgkm.audit_log'::regclass)
	FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
	WHERE i.inhparent = 'pgkm.audit_log'::regclass$$)
	AS t(members bigint, named_audit_log bigint, parent_indexes bigint);
SELECT dblink_exec('up', 'ALTER EXTENSION pgkm UPDATE');
SELECT * FROM dblink('up', $$SELECT extversion FROM pg_extension WHERE extname = 'pgkm'$$)
	AS t(extversion text);
SELECT * FROM dblink('up', $$SELECT count(*) FILTER (WHERE EXISTS (SELECT FROM pg_depend d
		WHERE d.classid = 'pg_class'::regclass AND d.objid = i.inhrelid AND d.deptype = 'e')),
	count(*) FILTER (WHERE c.relname ~ '^audit_records_'
		AND EXISTS (SELECT FROM pgkm.audit_partitions p WHERE p.name = c.relname)),
	count(*) FILTER (WHERE (SELECT count(*) FROM pg_index x WHERE x.indrelid = i.inhrelid) = 2),
	(SELECT count(*) FROM pg_index WHERE indrelid = 'pgkm.audit_log'::regclass)
	FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
	WHERE i.inhparent = 'pgkm.audit_log'::regclass$$)
	AS t(members bigint, renamed_registered bigint, indexed bigint, parent_indexes bigint);
-- the worker keeps writing into it, and the chain verifies
SELECT * FROM dblink('up', $$SELECT pgkm.audit_flush(true) > 1$$) AS t(flushed boolean);
SELECT * FROM dblink('up', $$SELECT ok, records > 1 FROM pgkm.verify_audit_log()$$)
	AS t(ok boolean, records boolean);
-- its audit log has records: a restore's registry rows and records are refused
SELECT dblink_exec('up', $$INSERT INTO pgkm.audit_partitions VALUES
	('audit_records_20990101_000000_000000', '2099-01-01 UTC', '2099-01-02 UTC')$$, false);
SELECT dblink_exec('up', $$INSERT INTO pgkm.audit_log
	SELECT * FROM pgkm.audit_log ORDER BY seq DESC LIMIT 1$$, false);
SELECT dblink_disconnect('up');
DROP DATABASE er_upgrade;

-- a restore into an empty audit log, by hand: a registry row makes its partition (not over a
-- table of that name that is not one), records are accepted, the worker continues the chain
-- with a 'restored' record, and verify_audit_log names a record whose hash is wrong
CREATE DATABASE er_restore;
SELECT dblink_connect('rs', format('host=%s port=%s dbname=er_restore user=postgres',
	:'test_dir', current_setting('port')));
SELECT dblink_exec('rs', 'CREATE EXTENSION pgkm');
SELECT dblink_exec('rs', 'CREATE TABLE pgkm.audit_records_20990101_000000_000000 (x int)');
SELECT dblink_exec('rs', $$INSERT INTO pgkm.audit_partitions VALUES
	('audit_records_20990101_000000_000000', '2099-01-01 UTC', '2099-01-02 UTC')$$, false);
SELECT dblink_exec('rs', 'DROP TABLE pgkm.audit_records_20990101_000000_000000');
SELECT dblink_exec('rs', $$INSERT INTO pgkm.audit_partitions VALUES
	('audit_records_20990101_000000_000000', '2099-01-01 UTC', '2099-01-02 UTC')$$);
SELECT * FROM dblink('rs', $$SELECT pg_get_expr(c.relpartbound, c.oid) ~ '2099-01-01',
	(SELECT count(*) FROM pg_index WHERE indrelid = c.oid),
	(SELECT count(*) FROM pg_trigger WHERE tgrelid = c.oid AND NOT tgisinternal),
	NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
		AND d.objid = c.oid AND d.deptype = 'e')
	FROM pg_class c WHERE c.oid = 'pgkm.audit_records_20990101_000000_000000'::regclass$$)
	AS t(bounds boolean, indexes bigint, triggers bigint, not_member boolean);
SELECT dblink_exec('rs', $$INSERT INTO pgkm.audit_log (seq, at, written_at, database_name,
	action, success, prev_hash, hash) VALUES (1, '2099-01-01 11:00 UTC', '2099-01-01 12:00 UTC',
	'er_restore', 'decrypt', true, decode(repeat('00', 32), 'hex'),
	decode(repeat('11', 32), 'hex'))$$);
-- the loading session holds the restore lock until it ends: the worker leaves the log alone
-- until then (a later transaction of the restore may bring more records), and this session
-- may not wait for it
SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock'
	AND objid = 1 AND objsubid = 28786 AND granted;
SELECT dblink_exec('rs', 'SELECT pgkm.audit_flush()', false);
SELECT dblink_disconnect('rs');
SELECT dblink_connect('rs', format('host=%s port=%s dbname=er_restore user=postgres',
	:'test_dir', current_setting('port')));
-- (the worker may also have sealed the chain on its own schedule before the flush's seal: a
-- fourth record, a checkpoint, is then there too)
SELECT * FROM dblink('rs', $$SELECT pgkm.audit_flush(true) >= 3$$) AS t(flushed boolean);
SELECT * FROM dblink('rs', $$SELECT seq, action, ref_seq, detail FROM pgkm.audit_log
	WHERE seq <= 3 ORDER BY seq$$) AS t(seq bigint, action text, ref_seq bigint, detail text);
SELECT * FROM dblink('rs', $$SELECT count(*) FILTER (WHERE action <> 'checkpoint')
	FROM pgkm.audit_log WHERE seq > 3$$) AS t(other_records bigint);
SELECT * FROM dblink('rs', $$SELECT ok, records >= 3, broken_seq, problem
	FROM pgkm.verify_audit_log()$$)
	AS t(ok boolean, records boolean, broken_seq bigint, problem text);
SELECT dblink_exec('rs', $$INSERT INTO pgkm.audit_log
	SELECT * FROM pgkm.audit_log ORDER BY seq DESC LIMIT 1$$, false);
SELECT dblink_disconnect('rs');
DROP DATABASE er_restore;

SELECT dblink_disconnect('er');
REVOKE CREATE ON SCHEMA public FROM regress_er_admin;
