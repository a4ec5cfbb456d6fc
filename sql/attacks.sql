-- attacks: what a non-superuser cannot do to pgkm, and what pgkm never runs on its behalf.
-- Admin functions, catalog tables, pgkm's own objects, other owners' keys, the PIN file,
-- shadowing objects in public and pg_temp (pgkm's SQL must never resolve them, in
-- backends, triggers or the worker), code of a protected table run by the worker, and the
-- revocation of key roles in sessions that used the key a moment before.

SELECT coalesce(max(event_id), 0) AS first_event FROM pgkm.key_events \gset
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;
\getenv test_dir PGKM_TEST_DIR
-- a second session, for changes that other sessions make
SELECT dblink_connect('other', format('host=%s port=%s dbname=%s user=postgres',
	:'test_dir', current_setting('port'), current_database()));

-- Runs a statement; returns 'ok' or its SQLSTATE.
CREATE FUNCTION atk_try(statement text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE statement;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE;
END
$$;
GRANT EXECUTE ON FUNCTION atk_try(text) TO PUBLIC;

CREATE ROLE regress_atk_attacker;
CREATE ROLE regress_atk_victim;
CREATE ROLE regress_atk_reader;
CREATE ROLE regress_atk_writer;
CREATE ROLE regress_atk_app;
CREATE ROLE regress_atk_nobody;
GRANT regress_atk_reader, regress_atk_writer TO regress_atk_app;
GRANT USAGE ON SCHEMA pgkm TO regress_atk_victim;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pgkm TO regress_atk_victim;
CREATE SCHEMA atk_victim AUTHORIZATION regress_atk_victim;
CREATE SCHEMA atk AUTHORIZATION regress_atk_attacker;
GRANT USAGE ON SCHEMA atk_victim TO regress_atk_app, regress_atk_attacker;

-- the victim's key, data and protected column, with a re-encryption job
SET ROLE regress_atk_victim;
SELECT pgkm.create_key('atk_victim_key', 'regress_atk_writer', 'regress_atk_reader') > 0
	AS created;
CREATE TABLE atk_victim.records (id integer PRIMARY KEY, secret bytea);
GRANT SELECT, INSERT, UPDATE ON atk_victim.records TO regress_atk_app, regress_atk_attacker;
RESET ROLE;
INSERT INTO atk_victim.records
	SELECT i, pgkm_encrypt('victim secret ' || i, 'atk_victim_key', i::text)
	FROM generate_series(1, 3) i;
SET ROLE regress_atk_victim;
SELECT pgkm.protect_column('atk_victim.records', 'secret', 'atk_victim_key', 'id');
SELECT pgkm.set_rotation_policy('atk_victim_key', max_age => '1 day');
RESET ROLE;
SELECT pgkm.audit_flush() > 0 AS flushed;

------------------------------------------------------------------------------------------
-- 1. Administration functions: every function of schema pgkm, called by a role without
-- EXECUTE, first without USAGE on the schema, then with it. The list comes from pg_proc,
-- so a new function shows up here (and must be refused) without anyone adding it.
CREATE TABLE atk_calls AS
SELECT p.oid::regprocedure AS function,
	format('SELECT pgkm.%I(%s)', p.proname,
		(SELECT string_agg(CASE format_type(t, NULL)
			WHEN 'text' THEN '''atk_victim_key''' WHEN 'regrole' THEN '''regress_atk_nobody'''
			WHEN 'regclass' THEN '''atk_victim.records''' WHEN 'name' THEN '''secret'''
			WHEN 'bytea' THEN '''\x00''' WHEN 'interval' THEN '''1 day'''
			WHEN 'boolean' THEN 'false' ELSE '1' END || '::' || format_type(t, NULL), ', '
			ORDER BY i)
		 FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, i))) AS call
FROM pg_proc p WHERE p.pronamespace = 'pgkm'::regnamespace;
GRANT SELECT ON atk_calls TO regress_atk_attacker;
SET ROLE regress_atk_attacker;
SELECT function, atk_try(call) AS without_usage FROM atk_calls ORDER BY function::text;
RESET ROLE;
GRANT USAGE ON SCHEMA pgkm TO regress_atk_attacker;
SET ROLE regress_atk_attacker;
SELECT function, atk_try(call) AS without_execute FROM atk_calls ORDER BY function::text;
RESET ROLE;
-- nothing in schema pgkm is executable by PUBLIC, nor by the attacker
SELECT count(*) AS executable_by_attacker FROM pg_proc
	WHERE pronamespace = 'pgkm'::regnamespace
	AND has_function_privilege('regress_atk_attacker', oid, 'EXECUTE');
-- the trigger functions refuse to run outside their triggers, even for a superuser
SELECT atk_try('SELECT pgkm.catalog_changed()') AS catalog_changed,
	atk_try('SELECT pgkm.audit_guard()') AS audit_guard;

------------------------------------------------------------------------------------------
-- 2. The catalog: every relation of schema pgkm (tables, the audit log's partitions,
-- sequences, views), read and written every way, by the attacker (with USAGE on pgkm).
CREATE TABLE atk_rels AS
SELECT c.oid::regclass AS rel, c.relkind,
	regexp_replace(c.relname, '^audit_records_[0-9_]+$', 'audit_records_<partition>') AS shown,
	(SELECT quote_ident(attname) FROM pg_attribute
	 WHERE attrelid = c.oid AND attnum = 1) AS col
FROM pg_class c WHERE c.relnamespace = 'pgkm'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'S');
CREATE TABLE atk_ops AS
SELECT r.shown, o.op,
	CASE WHEN r.relkind = 'S' THEN
		CASE o.op WHEN 'SELECT' THEN format('SELECT * FROM %s', r.rel)
			WHEN 'INSERT' THEN format('SELECT nextval(%L)', r.rel)
			WHEN 'UPDATE' THEN format('SELECT setval(%L, 1)', r.rel)
			WHEN 'DELETE' THEN format('SELECT currval(%L)', r.rel)
			WHEN 'TRUNCATE' THEN format('ALTER SEQUENCE %s RESTART', r.rel) END
	ELSE
		CASE o.op WHEN 'SELECT' THEN format('SELECT * FROM %s', r.rel)
			WHEN 'INSERT' THEN format('INSERT INTO %s DEFAULT VALUES', r.rel)
			WHEN 'UPDATE' THEN format('UPDATE %s SET %s = %s', r.rel, r.col, r.col)
			WHEN 'DELETE' THEN format('DELETE FROM %s', r.rel)
			WHEN 'TRUNCATE' THEN format('TRUNCATE %s', r.rel) END
	END AS statement
FROM atk_rels r, unnest('{SELECT,INSERT,UPDATE,DELETE,TRUNCATE}'::text[]) AS o(op);
GRANT SELECT ON atk_ops TO regress_atk_attacker;
SET ROLE regress_atk_attacker;
SELECT shown AS relation, op, string_agg(DISTINCT atk_try(statement), ',') AS result
	FROM atk_ops GROUP BY 1, 2 ORDER BY 1, 2;
-- granting oneself what one does not own grants nothing
SELECT atk_try('GRANT ALL ON pgkm.keys, pgkm.key_versions TO regress_atk_attacker') AS self_grant,
	atk_try('SELECT * FROM pgkm.key_versions') AS after_self_grant;
RESET ROLE;
-- the audit log is append-only even for a superuser; only the worker inserts
SELECT count(*) > 0 AS audit_log_has_records FROM pgkm.audit_log;
SELECT op, atk_try(statement) AS result FROM atk_ops
	WHERE shown = 'audit_log' AND op IN ('UPDATE', 'DELETE', 'TRUNCATE') ORDER BY 1;
SELECT atk_try(format('INSERT INTO pgkm.audit_log SELECT * FROM pgkm.audit_log LIMIT 1'))
	AS copy_a_record;

------------------------------------------------------------------------------------------
-- 3. pgkm's objects: altered, replaced, dropped, extended, triggered, by the attacker.
SET ROLE regress_atk_attacker;
SELECT s AS statement, atk_try(s) AS result FROM unnest(ARRAY[
	'ALTER TABLE pgkm.keys ADD COLUMN x int',
	'ALTER TABLE pgkm.keys OWNER TO regress_atk_attacker',
	'ALTER TABLE pgkm.keys DISABLE TRIGGER keys_changed',
	'ALTER TABLE pgkm.audit_log DISABLE TRIGGER audit_log_append_only',
	'ALTER TABLE pgkm.keys ENABLE ROW LEVEL SECURITY',
	'CREATE TRIGGER t AFTER INSERT ON pgkm.keys FOR EACH ROW EXECUTE FUNCTION pgkm.catalog_changed()',
	'CREATE RULE r AS ON INSERT TO pgkm.key_events DO INSTEAD NOTHING',
	'CREATE POLICY p ON pgkm.keys USING (true)',
	'CREATE INDEX ON pgkm.keys (name)',
	'DROP TABLE pgkm.audit_log',
	'DROP VIEW pgkm.key_status',
	'CREATE OR REPLACE VIEW pgkm.key_status AS SELECT 1',
	'DROP TRIGGER keys_changed ON pgkm.keys',
	'ALTER FUNCTION pgkm.create_key(text, regrole, regrole, text, integer) SECURITY DEFINER',
	'ALTER FUNCTION pgkm.create_key(text, regrole, regrole, text, integer) RESET search_path',
	'ALTER FUNCTION pgkm_encrypt(text, text, text) RENAME TO x',
	'DROP FUNCTION pgkm.audit_guard()',
	'CREATE OR REPLACE FUNCTION pgkm.create_key(name text, encrypt_role regrole, decrypt_role regrole) RETURNS bigint LANGUAGE sql AS ''SELECT 1::bigint''',
	'CREATE FUNCTION pgkm.catalog_changed(int) RETURNS int LANGUAGE sql AS ''SELECT 1''',
	'CREATE OR REPLACE FUNCTION pgkm_decrypt_text(ciphertext bytea, context text) RETURNS text LANGUAGE sql AS ''SELECT NULL::text''',
	'CREATE TABLE pgkm.keys_shadow (x int)',
	'ALTER SCHEMA pgkm RENAME TO pgkm_old',
	'ALTER SCHEMA pgkm OWNER TO regress_atk_attacker',
	'DROP SCHEMA pgkm CASCADE',
	'ALTER EXTENSION pgkm UPDATE',
	'ALTER EXTENSION pgkm ADD TABLE atk_calls',
	'DROP EXTENSION pgkm',
	'COMMENT ON TABLE pgkm.keys IS ''x''',
	'ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA pgkm GRANT ALL ON TABLES TO regress_atk_attacker',
	'SET session_replication_role = replica',
	'ALTER ROLE regress_atk_victim SET search_path = public',
	'GRANT regress_atk_reader TO regress_atk_attacker',
	'SET ROLE regress_atk_victim'
]) AS s;
RESET ROLE;

------------------------------------------------------------------------------------------
-- 4. Another owner's key. The attacker is a key administrator (EXECUTE on every function)
-- and owns a key and a table of its own, but not the victim's.
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pgkm TO regress_atk_attacker;
SET ROLE regress_atk_victim;
SELECT pgkm.start_reencryption('atk_victim.records', 'secret') AS victim_job \gset
SET ROLE regress_atk_attacker;
SELECT pgkm.create_key('atk_attacker_key') > 0 AS created;
CREATE TABLE atk.loot (id integer PRIMARY KEY, secret bytea);
SELECT regexp_replace(s, '_job\(\d+\)', '_job(<victim job>)') AS statement, atk_try(s) AS result
FROM unnest(ARRAY[
	'SELECT pgkm.alter_key_roles(''atk_victim_key'', decrypt_role => ''regress_atk_attacker'')',
	'SELECT pgkm.alter_key_roles(''atk_victim_key'', encrypt_role => ''regress_atk_attacker'')',
	'SELECT pgkm.rotate_key(''atk_victim_key'')',
	'SELECT pgkm.disable_key_version(''atk_victim_key'', 1)',
	'SELECT pgkm.enable_key_version(''atk_victim_key'', 1)',
	'SELECT pgkm.destroy_key_version(''atk_victim_key'', 1)',
	'SELECT pgkm.set_rotation_policy(''atk_victim_key'', max_age => ''1 second'')',
	'SELECT pgkm.protect_column(''atk.loot'', ''secret'', ''atk_victim_key'', ''id'')',
	'SELECT pgkm.protect_column(''atk_victim.records'', ''secret'', ''atk_attacker_key'', ''id'')',
	'SELECT pgkm.unprotect_column(''atk_victim.records'', ''secret'')',
	'SELECT pgkm.start_reencryption(''atk_victim.records'', ''secret'')',
	'SELECT pgkm.pause_job(' || :victim_job || ')',
	'SELECT pgkm.resume_job(' || :victim_job || ')',
	'SELECT pgkm.cancel_job(' || :victim_job || ')',
	'SELECT pgkm_decrypt_text(secret, id::text) FROM atk_victim.records',
	'SELECT pgkm_decrypt(secret, id::text) FROM atk_victim.records',
	'SELECT pgkm_rewrap(secret, id::text) FROM atk_victim.records',
	'SELECT pgkm_encrypt(''forged'', ''atk_victim_key'')',
	'UPDATE atk_victim.records SET secret = pgkm_rewrap(secret, id::text)'
]) AS s(s);
RESET ROLE;
-- nothing of the victim's changed
SELECT name, owner, encrypt_role, decrypt_role, rotation_max_age FROM pgkm.keys
	WHERE name = 'atk_victim_key';
SELECT version, state FROM pgkm.key_versions v JOIN pgkm.keys k USING (key_id)
	WHERE k.name = 'atk_victim_key' ORDER BY version;
SELECT table_name, column_name FROM pgkm.protected_columns p JOIN pgkm.keys k USING (key_id)
	WHERE k.name IN ('atk_victim_key', 'atk_attacker_key') ORDER BY 1;
SELECT count(*) AS victim_values_readable FROM atk_victim.records
	WHERE pgkm_decrypt_text(secret, id::text) LIKE 'victim secret %';
-- the refusals of key administration are in the audit log, with the attacker's name
SELECT pgkm.audit_flush() > 0 AS flushed;
SELECT action, key_name, current_user_name, success, sqlstate, count(*)
	FROM pgkm.audit_log WHERE current_user_name = 'regress_atk_attacker'
	AND key_name = 'atk_victim_key' GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 5;

------------------------------------------------------------------------------------------
-- 5. The PIN file. Token settings cannot be set, shown or listed by a non-superuser, in
-- any way; none is settable per session even by a superuser.
SET ROLE regress_atk_attacker;
SELECT s AS statement, atk_try(s) AS result FROM unnest(ARRAY[
	'SET pgkm.pkcs11_pin_file = ''/etc/passwd''',
	'SET pgkm.pkcs11_module = ''/tmp/evil.so''',
	'SET pgkm.pkcs11_token_label = ''other''',
	'SET pgkm.master_key_label = ''other''',
	'SET pgkm.audit_key_label = ''other''',
	'SET pgkm.audit_file = ''/tmp/audit.json''',
	'SET pgkm.audit_level = none',
	'SET pgkm.audit_overflow = drop',
	'SET pgkm.audit_gather = off',
	'SET pgkm.no_such_setting = 1',
	'SELECT set_config(''pgkm.pkcs11_pin_file'', ''/etc/passwd'', false)',
	'SHOW pgkm.pkcs11_pin_file',
	'SHOW pgkm.pkcs11_module',
	'SHOW pgkm.pkcs11_token_label',
	'SELECT current_setting(''pgkm.pkcs11_pin_file'')',
	'ALTER ROLE regress_atk_attacker SET pgkm.pkcs11_pin_file = ''/etc/passwd''',
	format('ALTER DATABASE %I SET pgkm.pkcs11_pin_file = ''/etc/passwd''', current_database()),
	'CREATE FUNCTION atk.pin() RETURNS int LANGUAGE sql SET pgkm.pkcs11_pin_file = ''/etc/passwd'' AS ''SELECT 1''',
	'SELECT pg_read_file(current_setting(''data_directory'') || ''/../pin'')'
]) AS s;
SELECT has_parameter_privilege('pgkm.pkcs11_pin_file', 'ALTER SYSTEM') AS may_alter_system,
	has_parameter_privilege('pgkm.pkcs11_pin_file', 'SET') AS may_set;
SELECT count(*) AS token_settings_listed FROM pg_settings
	WHERE name IN ('pgkm.pkcs11_pin_file', 'pgkm.pkcs11_module', 'pgkm.pkcs11_token_label');
RESET ROLE;
SELECT atk_try('SET pgkm.pkcs11_pin_file = ''/etc/passwd''') AS superuser_session_set;

-- A superuser points the PIN file at files whose content is a random marker: pin.marker
-- (made by test/regress.sh, mode 0600: the token refuses it as a wrong PIN) and a copy that
-- others can read (refused before it is read). Every pgkm path that logs in fails, and the
-- marker appears in no error, NOTICE, log line or audit record.
\set marker_file :test_dir '/pin.marker'
\set open_marker_file :test_dir '/pin.marker-open'
COPY (SELECT trim(E'\n' FROM pg_read_file(:'marker_file'))) TO :'open_marker_file';
SELECT length(pg_read_file(:'marker_file')) > 20 AS marker_present;
CREATE TABLE atk_pin_errors (file text, error text);
ALTER SYSTEM SET pgkm.pkcs11_pin_file = :'marker_file';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
\c
SET log_min_messages = debug1;
INSERT INTO atk_pin_errors SELECT 'pin.marker', pgkm_test_error(s) FROM unnest(ARRAY[
	$$SELECT pgkm.create_key('atk_never')$$,
	$$SELECT pgkm_decrypt_text(secret, id::text) FROM atk_victim.records$$,
	$$SELECT pgkm.rotate_master_key()$$,
	$$SELECT * FROM pgkm.verify_audit_log()$$]) AS s;
RESET log_min_messages;
ALTER SYSTEM SET pgkm.pkcs11_pin_file = :'open_marker_file';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
\c
INSERT INTO atk_pin_errors SELECT 'pin.marker-open', pgkm_test_error(s) FROM unnest(ARRAY[
	$$SELECT pgkm.create_key('atk_never')$$,
	$$SELECT pgkm_decrypt_text(secret, id::text) FROM atk_victim.records$$]) AS s;
ALTER SYSTEM RESET pgkm.pkcs11_pin_file;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
\c
SELECT file, replace(error, :'test_dir', '<test_dir>') AS error FROM atk_pin_errors;
-- the marker is in its file, and nowhere else
SELECT trim(E'\n' FROM pg_read_file(:'marker_file')) AS marker \gset
SELECT strpos(pg_read_file(:'open_marker_file'), :'marker') > 0 AS probe_finds_marker,
	(SELECT count(*) FROM atk_pin_errors WHERE strpos(error, :'marker') > 0) AS in_errors,
	strpos(pg_read_file(:'test_dir' || '/server.log'), :'marker') AS in_server_log,
	(SELECT count(*) FROM pgkm.audit_log
	 WHERE strpos(concat_ws(' ', detail, command, row_context), :'marker') > 0) AS in_audit_log;
SELECT pgkm_decrypt_text(secret, id::text) FROM atk_victim.records WHERE id = 1;

------------------------------------------------------------------------------------------
-- 6. Shadowing. With CREATE on public (as on installations older than PostgreSQL 15), the
-- attacker creates functions, aggregates, operators and a type in public, and views and
-- types in pg_temp, under the names pgkm's SQL uses. Each shadow records that it ran.
-- Then the attacker and a superuser, both with public ahead of pg_catalog in search_path,
-- use every pgkm path: none of the shadows runs, and pgkm behaves as usual.
GRANT CREATE ON SCHEMA public TO regress_atk_attacker;
GRANT SELECT ON pgkm.key_status, pgkm.rotation_progress TO regress_atk_attacker;
SET ROLE regress_atk_attacker;
CREATE TABLE atk.fired (shadow text, by_user text);
GRANT INSERT ON atk.fired TO PUBLIC;
CREATE FUNCTION atk.fire(what text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO atk.fired VALUES (what, current_user);
	RAISE NOTICE 'shadow % ran as %', what, current_user;
	RETURN true;
END
$$;
GRANT EXECUTE ON FUNCTION atk.fire(text) TO PUBLIC;
-- functions pgkm's SQL calls (schema-qualified there) and that an unpinned query would find
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('now()'); RETURN pg_catalog.now(); END$$;
CREATE FUNCTION public.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('clock_timestamp()'); RETURN pg_catalog.clock_timestamp(); END$$;
CREATE FUNCTION public.nextval(regclass) RETURNS bigint LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('nextval()'); RETURN pg_catalog.nextval($1); END$$;
CREATE FUNCTION public.format(text, text, timestamptz, timestamptz) RETURNS text
	LANGUAGE plpgsql AS $$BEGIN PERFORM atk.fire('format()'); RETURN $1; END$$;
CREATE FUNCTION public.to_char(timestamp, text) RETURNS text LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('to_char()'); RETURN pg_catalog.to_char($1, $2); END$$;
CREATE FUNCTION public.substr(bytea, integer, integer) RETURNS bytea LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('substr()'); RETURN pg_catalog.substr($1, $2, $3); END$$;
CREATE FUNCTION public.octet_length(bytea) RETURNS integer LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('octet_length()'); RETURN pg_catalog.octet_length($1); END$$;
CREATE FUNCTION public.unnest(anyarray) RETURNS SETOF anyelement LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('unnest()'); RETURN QUERY SELECT pg_catalog.unnest($1); END$$;
CREATE FUNCTION public.count_step(bigint) RETURNS bigint LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('count(*)'); RETURN $1 OPERATOR(pg_catalog.+) 1; END$$;
CREATE AGGREGATE public.count(*) (SFUNC = public.count_step, STYPE = bigint, INITCOND = '0');
CREATE FUNCTION public.max_step(integer, integer) RETURNS integer LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('max()'); RETURN greatest($1, $2); END$$;
CREATE AGGREGATE public.max(integer) (SFUNC = public.max_step, STYPE = integer);
-- operators on the types pgkm compares: exact matches for every pair it uses
CREATE FUNCTION public.op_text_eq(text, text) RETURNS boolean LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('text = text'); RETURN pg_catalog.texteq($1, $2); END$$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.op_text_eq);
CREATE FUNCTION public.op_name_eq(name, name) RETURNS boolean LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('name = name'); RETURN pg_catalog.nameeq($1, $2); END$$;
CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = name, FUNCTION = public.op_name_eq);
CREATE FUNCTION public.op_int8_eq(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('bigint = bigint'); RETURN pg_catalog.int8eq($1, $2); END$$;
CREATE OPERATOR public.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.op_int8_eq);
CREATE FUNCTION public.op_int4_eq(integer, integer) RETURNS boolean LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('integer = integer'); RETURN pg_catalog.int4eq($1, $2); END$$;
CREATE OPERATOR public.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = public.op_int4_eq);
CREATE FUNCTION public.op_oid_eq(oid, oid) RETURNS boolean LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('oid = oid'); RETURN pg_catalog.oideq($1, $2); END$$;
CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = public.op_oid_eq);
CREATE FUNCTION public.op_bytea_eq(bytea, bytea) RETURNS boolean LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('bytea = bytea'); RETURN pg_catalog.byteaeq($1, $2); END$$;
CREATE OPERATOR public.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = public.op_bytea_eq);
CREATE FUNCTION public.op_bytea_lt(bytea, bytea) RETURNS boolean LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('bytea < bytea'); RETURN pg_catalog.bytealt($1, $2); END$$;
CREATE OPERATOR public.< (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = public.op_bytea_lt);
CREATE FUNCTION public.op_int4_ge(integer, integer) RETURNS boolean LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('integer >= integer'); RETURN pg_catalog.int4ge($1, $2); END$$;
CREATE OPERATOR public.>= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = public.op_int4_ge);
CREATE FUNCTION public.op_int8_plus(bigint, bigint) RETURNS bigint LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('bigint + bigint'); RETURN pg_catalog.int8pl($1, $2); END$$;
CREATE OPERATOR public.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.op_int8_plus);
CREATE FUNCTION public.op_text_cat(text, text) RETURNS text LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('text || text'); RETURN pg_catalog.textcat($1, $2); END$$;
CREATE OPERATOR public.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = public.op_text_cat);
CREATE FUNCTION public.op_ts_minus(timestamptz, timestamptz) RETURNS interval LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('timestamptz - timestamptz');
	RETURN pg_catalog.timestamptz_mi($1, $2); END$$;
CREATE OPERATOR public.- (LEFTARG = timestamptz, RIGHTARG = timestamptz,
	FUNCTION = public.op_ts_minus);
CREATE FUNCTION public.op_int8_num_div(bigint, numeric) RETURNS numeric LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('bigint / numeric');
	RETURN pg_catalog.numeric_div($1::numeric, $2); END$$;
CREATE OPERATOR public./ (LEFTARG = bigint, RIGHTARG = numeric, FUNCTION = public.op_int8_num_div);
CREATE FUNCTION public.op_f8_int8_div(float8, bigint) RETURNS float8 LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.fire('float8 / bigint'); RETURN pg_catalog.float8div($1, $2::float8); END$$;
CREATE OPERATOR public./ (LEFTARG = float8, RIGHTARG = bigint, FUNCTION = public.op_f8_int8_div);
-- a type named like one pgkm casts to
CREATE TYPE public.regrole AS (shadow integer);
-- an overload of a data-path function in its own schema, which the worker calls
CREATE FUNCTION public.pgkm_rewrap(ciphertext bytea, context varchar) RETURNS bytea
	LANGUAGE plpgsql AS $$BEGIN PERFORM atk.fire('pgkm_rewrap(bytea, varchar)'); RETURN $1; END$$;
-- relations and types in pg_temp named like pgkm's and the system's catalogs
CREATE TEMP VIEW keys AS SELECT 1 AS key_id, atk.fire('pg_temp.keys') AS name;
CREATE TEMP VIEW key_versions AS SELECT atk.fire('pg_temp.key_versions') AS state;
CREATE TEMP VIEW master_keys AS SELECT atk.fire('pg_temp.master_keys') AS label;
CREATE TEMP VIEW protected_columns AS SELECT atk.fire('pg_temp.protected_columns') AS x;
CREATE TEMP VIEW rotation_jobs AS SELECT atk.fire('pg_temp.rotation_jobs') AS x;
CREATE TEMP VIEW audit_state AS SELECT atk.fire('pg_temp.audit_state') AS x;
CREATE TEMP VIEW pg_extension AS SELECT atk.fire('pg_temp.pg_extension') AS extname;
CREATE TEMP VIEW pg_index AS SELECT atk.fire('pg_temp.pg_index') AS x;
CREATE TEMP VIEW pg_attribute AS SELECT atk.fire('pg_temp.pg_attribute') AS x;
CREATE TEMP TABLE key_events (x int);
CREATE TYPE pg_temp.bytea AS (shadow integer);
CREATE TYPE pg_temp.text AS (shadow integer);

-- Runs a statement with public ahead of pg_catalog; returns 'ok' or SQLSTATE: message.
CREATE FUNCTION atk.poisoned(statement pg_catalog.text) RETURNS pg_catalog.text
LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
BEGIN
	EXECUTE statement;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN pg_catalog.concat(SQLSTATE, ': ', SQLERRM);
END
$$;
GRANT EXECUTE ON FUNCTION atk.poisoned(pg_catalog.text) TO PUBLIC;
-- the probe works: an unpinned query with this search_path runs the shadows
SELECT atk.poisoned($$SELECT now(), 'a'::pg_catalog.text = 'b', count(*) FROM keys$$) AS probe,
	atk.poisoned($$SELECT 'x'::text$$) AS probe_type;
SELECT shadow, count(*) FROM atk.fired GROUP BY 1 ORDER BY 1;
DELETE FROM atk.fired;

-- the attacker uses every pgkm path on its own key and table, with the shadows in place
CREATE TABLE atk.vault (id integer PRIMARY KEY, secret pg_catalog.bytea, ctx pg_catalog.text);
SELECT s AS statement, atk.poisoned(s) AS result FROM pg_catalog.unnest(ARRAY[
	$$SELECT pgkm.create_key('atk_shadow_key')$$,
	$$INSERT INTO atk.vault SELECT i, pgkm_encrypt('vault ' OPERATOR(pg_catalog.||) i,
		'atk_shadow_key', i::pg_catalog.text), i::pg_catalog.text
		FROM pg_catalog.generate_series(1, 50) i$$,
	$$SELECT pgkm_decrypt_text(secret, ctx), pgkm_decrypt(secret, ctx),
		pgkm_ciphertext_info(secret), pgkm.ciphertext_key_id(secret),
		pgkm.ciphertext_version(secret) FROM atk.vault$$,
	$$SELECT pgkm.protect_column('atk.vault', 'secret', 'atk_shadow_key', 'ctx')$$,
	$$SELECT pgkm.set_rotation_policy('atk_shadow_key', max_age => '30 days')$$,
	$$SELECT pgkm.rotate_key('atk_shadow_key')$$,
	$$SELECT pgkm_rewrap(secret, ctx) FROM atk.vault$$,
	$$SELECT pgkm.create_key('atk_shadow_det', algorithm => 'aes-256-siv')$$,
	$$SELECT pgkm.create_key('atk_shadow_bidx', algorithm => 'blind-index',
		blind_index_bytes => 16)$$,
	$$SELECT pgkm_decrypt_text(pgkm_encrypt_det('d'::pg_catalog.text, 'atk_shadow_det',
		'c'::pg_catalog.text), 'c'::pg_catalog.text),
		pgkm_encrypt_det_all('d'::pg_catalog.bytea, 'atk_shadow_det'),
		pgkm_blind_index('d'::pg_catalog.text, 'atk_shadow_bidx'),
		pgkm_blind_index_all('d'::pg_catalog.bytea, 'atk_shadow_bidx')$$,
	$$SELECT pgkm.rotate_key('atk_shadow_det')$$,
	$$SELECT pgkm_rewrap((pgkm_encrypt_det_all('d'::pg_catalog.text, 'atk_shadow_det'))[2])$$,
	$$SELECT pgkm.alter_key_roles('atk_shadow_key', decrypt_role => 'regress_atk_attacker')$$,
	$$SELECT pgkm.encryption_counts()$$,
	$$SELECT pgkm.flush_encryption_counts()$$,
	$$SELECT * FROM pgkm.key_status$$,
	$$SELECT * FROM pgkm.rotation_progress$$,
	$$SELECT pgkm.start_reencryption('atk.vault', 'secret')$$,
	$$SELECT pgkm.pause_job(j.job_id) FROM pgkm.rotation_progress j
		WHERE j.key_name OPERATOR(pg_catalog.=) 'atk_shadow_key'
		AND j.state OPERATOR(pg_catalog.=) 'pending'$$,
	$$SELECT pgkm.resume_job(j.job_id) FROM pgkm.rotation_progress j
		WHERE j.key_name OPERATOR(pg_catalog.=) 'atk_shadow_key'
		AND j.state OPERATOR(pg_catalog.=) 'paused'$$,
	$$SELECT pgkm.create_key('atk_shadow_key2')$$,
	$$SELECT pgkm.rotate_key('atk_shadow_key2')$$,
	$$SELECT pgkm.disable_key_version('atk_shadow_key2', 1)$$,
	$$SELECT pgkm.enable_key_version('atk_shadow_key2', 1)$$,
	$$SELECT pgkm.destroy_key_version('atk_shadow_key2', 1)$$,
	$$SELECT pgkm.audit_flush(seal => true)$$,
	$$SELECT * FROM pgkm.verify_audit_log()$$,
	$$SELECT pgkm.apply_audit_retention()$$,
	$$SELECT pgkm.start_worker()$$
]) AS s;
-- the worker re-encrypts the attacker's table (job queued by the rotation)
CREATE FUNCTION atk.wait_jobs(key pg_catalog.text) RETURNS pg_catalog.text
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
	FOR i IN 1..600 LOOP
		IF NOT EXISTS (SELECT FROM pgkm.rotation_progress WHERE key_name = key
				AND state IN ('pending', 'running', 'paused')) THEN
			RETURN 'finished';
		END IF;
		PERFORM pg_sleep(0.1);
	END LOOP;
	RETURN 'timeout';
END
$$;
SELECT atk.wait_jobs('atk_shadow_key');
SELECT state FROM pgkm.rotation_progress
	WHERE key_name OPERATOR(pg_catalog.=) 'atk_shadow_key' ORDER BY job_id DESC LIMIT 1;
RESET ROLE;
-- a superuser with the same search_path: master keys, the victim's key and its worker job
SELECT s AS statement, atk.poisoned(s) AS result FROM pg_catalog.unnest(ARRAY[
	$$SELECT pgkm.rotate_master_key()$$,
	$$SELECT pgkm.retire_master_key(m.label) FROM pgkm.master_keys m
		WHERE m.state OPERATOR(pg_catalog.=) 'previous'$$,
	$$SELECT pgkm.rotate_key('atk_victim_key')$$,
	$$SELECT * FROM pgkm.key_status$$,
	$$SELECT * FROM pgkm.rotation_progress$$,
	$$SELECT pgkm_decrypt_text(secret, id::pg_catalog.text) FROM atk_victim.records$$,
	$$SELECT pgkm_decrypt_text(secret, ctx) FROM atk.vault$$,
	$$SELECT * FROM pgkm.verify_audit_log()$$
]) AS s;
SELECT atk.wait_jobs('atk_victim_key');
DROP TYPE pg_temp.bytea, pg_temp.text;
-- no shadow ran, anywhere; pgkm's results are right
SELECT shadow, by_user, count(*) FROM atk.fired GROUP BY 1, 2 ORDER BY 1, 2;
SELECT count(*) AS vault_rows, count(*) FILTER (WHERE pgkm_decrypt_text(secret, ctx) = 'vault ' || id)
	AS vault_readable, array_agg(DISTINCT pgkm.ciphertext_version(secret)) AS versions
	FROM atk.vault;
SELECT array_agg(DISTINCT pgkm.ciphertext_version(secret)) AS victim_versions,
	bool_and(pgkm_decrypt_text(secret, id::text) LIKE 'victim secret %') AS victim_readable
	FROM atk_victim.records;
SELECT ok, problem FROM pgkm.verify_audit_log();

------------------------------------------------------------------------------------------
-- 7. The worker runs a protected table's own code as the table's owner, restricted, never
-- with its own superuser rights: a trigger enabled ALWAYS, a CHECK constraint, a domain
-- and a cast of the context column, all the attacker's. The attacker holds neither of the
-- key's roles: the worker's rewrap needs none, and lends none to that code.
\c
SET ROLE regress_atk_attacker;
CREATE TABLE atk.seen (what pg_catalog.text, by_user pg_catalog.text, superuser boolean);
CREATE FUNCTION atk.probe(what text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO atk.seen SELECT what, current_user, rolsuper FROM pg_roles
		WHERE rolname = current_user;
	RETURN true;
END
$$;
CREATE FUNCTION atk.on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM atk.probe('trigger');
	-- what the table's code might try with the worker's session
	PERFORM atk.probe('decrypt: ' || public.atk_try(format('SELECT public.pgkm_decrypt(%L::bytea, %L)',
		NEW.secret::bytea, (NEW.ctx).v)));
	PERFORM atk.probe('set role: ' || public.atk_try('SET ROLE postgres'));
	PERFORM atk.probe('alter role: ' || public.atk_try('ALTER ROLE regress_atk_attacker SUPERUSER'));
	RETURN NEW;
END
$$;
CREATE TYPE atk.ctx AS (v text);
CREATE FUNCTION atk.ctx_text(atk.ctx) RETURNS text LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.probe('context cast'); RETURN $1.v; END$$;
CREATE CAST (atk.ctx AS text) WITH FUNCTION atk.ctx_text(atk.ctx);
CREATE DOMAIN atk.sealed AS bytea CHECK (atk.probe('domain'));
CREATE TABLE atk.target (id integer PRIMARY KEY, secret bytea CHECK (atk.probe('check')),
	ctx atk.ctx);
CREATE TRIGGER target_update BEFORE UPDATE ON atk.target
	FOR EACH ROW EXECUTE FUNCTION atk.on_update();
ALTER TABLE atk.target ENABLE ALWAYS TRIGGER target_update;
SELECT pgkm.create_key('atk_worker_key', 'regress_atk_writer', 'regress_atk_reader') > 0
	AS created;
RESET ROLE;
INSERT INTO atk.target SELECT i, pgkm_encrypt('target ' || i, 'atk_worker_key', 'c' || i),
	('(c' || i || ')')::atk.ctx FROM generate_series(1, 20) i;
SET ROLE regress_atk_attacker;
SELECT pgkm.protect_column('atk.target', 'secret', 'atk_worker_key', 'ctx');
ALTER TABLE atk.target ALTER COLUMN secret TYPE atk.sealed;
DELETE FROM atk.seen;
SELECT pgkm.rotate_key('atk_worker_key');
SELECT atk.wait_jobs('atk_worker_key');
SELECT state, rows_done, error FROM pgkm.rotation_progress WHERE key_name = 'atk_worker_key';
RESET ROLE;
-- every piece of the table's code ran, as the attacker; nothing it tried succeeded
SELECT what, by_user, superuser, count(*) FROM atk.seen GROUP BY 1, 2, 3 ORDER BY 1;
SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_atk_attacker';
SELECT pgkm.ciphertext_version(secret) AS version, count(*),
	bool_and(pgkm_decrypt_text(secret, (ctx).v) = 'target ' || id) AS readable
	FROM atk.target GROUP BY 1;

-- A forced row-level security policy that hides rows fails the job and the proof that a
-- version is unused, instead of leaving values behind under a retired or destroyed version.
SET ROLE regress_atk_attacker;
CREATE TABLE atk.hidden (id integer PRIMARY KEY, secret bytea);
CREATE POLICY only_some ON atk.hidden USING (id > 2);
ALTER TABLE atk.hidden ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
SELECT pgkm.create_key('atk_hidden_key') > 0 AS created;
INSERT INTO atk.hidden SELECT i, pgkm_encrypt('hidden ' || i, 'atk_hidden_key', i::text)
	FROM generate_series(3, 5) i;
ALTER TABLE atk.hidden NO FORCE ROW LEVEL SECURITY;
INSERT INTO atk.hidden SELECT i, pgkm_encrypt('hidden ' || i, 'atk_hidden_key', i::text)
	FROM generate_series(1, 2) i;
ALTER TABLE atk.hidden FORCE ROW LEVEL SECURITY;
SELECT pgkm.protect_column('atk.hidden', 'secret', 'atk_hidden_key', 'id');
SELECT pgkm.rotate_key('atk_hidden_key');
SELECT atk.wait_jobs('atk_hidden_key');
SELECT state, rows_done, error FROM pgkm.rotation_progress WHERE key_name = 'atk_hidden_key';
SELECT pgkm_test_error($$SELECT pgkm.destroy_key_version('atk_hidden_key', 1)$$);
RESET ROLE;
SELECT version, state FROM pgkm.key_versions v JOIN pgkm.keys k USING (key_id)
	WHERE k.name = 'atk_hidden_key' ORDER BY version;

-- A protected column changed to a type with an implicit cast to bytea of the owner's: the
-- worker and the version scan refuse it, and never call the cast.
SET ROLE regress_atk_attacker;
CREATE TYPE atk.blob AS (b bytea);
CREATE FUNCTION atk.blob_bytes(atk.blob) RETURNS bytea LANGUAGE plpgsql AS
	$$BEGIN PERFORM atk.probe('cast to bytea'); RETURN $1.b; END$$;
CREATE CAST (atk.blob AS bytea) WITH FUNCTION atk.blob_bytes(atk.blob) AS IMPLICIT;
ALTER TABLE atk.target DISABLE TRIGGER target_update;
ALTER TABLE atk.target DROP CONSTRAINT target_check,
	ALTER COLUMN secret TYPE atk.blob USING ROW(secret::bytea)::atk.blob;
DELETE FROM atk.seen;
SELECT pgkm.rotate_key('atk_worker_key');
SELECT atk.wait_jobs('atk_worker_key');
SELECT state, error FROM pgkm.rotation_progress WHERE key_name = 'atk_worker_key'
	ORDER BY job_id DESC LIMIT 1;
SELECT pgkm_test_error($$SELECT pgkm.destroy_key_version('atk_worker_key', 1)$$);
SELECT count(*) AS casts_called FROM atk.seen;
RESET ROLE;

------------------------------------------------------------------------------------------
-- 8. Revocation takes effect at once, in a session that used the key a moment before: the
-- other session revokes the role or changes the key's role; the next call is refused,
-- with no TTL to wait for; granted again, it works again.
SELECT dblink_connect('other', format('host=%s port=%s dbname=%s user=postgres',
	:'test_dir', current_setting('port'), current_database()));
SET ROLE regress_atk_victim;
SELECT pgkm.create_key('atk_rev_key', 'regress_atk_writer', 'regress_atk_reader') > 0 AS created;
RESET ROLE;
CREATE TABLE atk_rev AS SELECT pgkm_encrypt('rev secret'::text, 'atk_rev_key', 'r') AS c;
GRANT SELECT ON atk_rev TO regress_atk_app;
-- Runs a statement as the victim (the key's owner) in the other session.
CREATE FUNCTION atk_other(statement text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	result text;
BEGIN
	PERFORM dblink_exec('other', 'SET ROLE regress_atk_victim');
	SELECT x INTO result FROM dblink('other', statement) AS t(x text);
	PERFORM dblink_exec('other', 'RESET ROLE');
	RETURN result;
END
$$;
SET ROLE regress_atk_app;
SELECT pgkm_decrypt_text(c, 'r') AS decrypted, length(pgkm_encrypt('e'::text, 'atk_rev_key')) AS encrypted
	FROM atk_rev;
SELECT dblink_exec('other', 'REVOKE regress_atk_reader FROM regress_atk_app');
SELECT atk_try($$SELECT pgkm_decrypt_text(c, 'r') FROM atk_rev$$) AS after_revoke_reader,
	atk_try($$SELECT pgkm_encrypt('e'::text, 'atk_rev_key')$$) AS encrypt_still;
SELECT dblink_exec('other', 'REVOKE regress_atk_writer FROM regress_atk_app');
SELECT atk_try($$SELECT pgkm_encrypt('e'::text, 'atk_rev_key')$$) AS after_revoke_writer;
SELECT dblink_exec('other', 'GRANT regress_atk_reader, regress_atk_writer TO regress_atk_app');
SELECT atk_try($$SELECT pgkm_decrypt_text(c, 'r') FROM atk_rev$$) AS regranted_decrypt,
	atk_try($$SELECT pgkm_encrypt('e'::text, 'atk_rev_key')$$) AS regranted_encrypt;
-- the key's roles changed by its owner in the other session
SELECT atk_other($$SELECT pgkm.alter_key_roles('atk_rev_key', decrypt_role => 'regress_atk_nobody')::text$$);
SELECT atk_try($$SELECT pgkm_decrypt_text(c, 'r') FROM atk_rev$$) AS after_alter_decrypt;
SELECT atk_other($$SELECT pgkm.alter_key_roles('atk_rev_key', encrypt_role => 'regress_atk_nobody')::text$$);
SELECT atk_try($$SELECT pgkm_encrypt('e'::text, 'atk_rev_key')$$) AS after_alter_encrypt;
SELECT atk_other($$SELECT pgkm.alter_key_roles('atk_rev_key', 'regress_atk_writer', 'regress_atk_reader')::text$$);
SELECT atk_try($$SELECT pgkm_decrypt_text(c, 'r') FROM atk_rev$$) AS restored_decrypt,
	atk_try($$SELECT pgkm_encrypt('e'::text, 'atk_rev_key')$$) AS restored_encrypt;
-- inside an open transaction: read committed, then repeatable read
BEGIN;
SELECT pgkm_decrypt_text(c, 'r') FROM atk_rev;
SELECT dblink_exec('other', 'REVOKE regress_atk_reader FROM regress_atk_app');
SELECT atk_try($$SELECT pgkm_decrypt_text(c, 'r') FROM atk_rev$$) AS in_transaction_revoke;
SELECT dblink_exec('other', 'GRANT regress_atk_reader TO regress_atk_app');
SELECT atk_try($$SELECT pgkm_decrypt_text(c, 'r') FROM atk_rev$$) AS in_transaction_regrant;
COMMIT;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT pgkm_decrypt_text(c, 'r') FROM atk_rev;
SELECT atk_other($$SELECT pgkm.alter_key_roles('atk_rev_key', decrypt_role => 'regress_atk_nobody')::text$$);
SELECT atk_try($$SELECT pgkm_decrypt_text(c, 'r') FROM atk_rev$$) AS repeatable_read_alter;
COMMIT;
-- and the cache kept nothing of the old snapshot
SELECT atk_try($$SELECT pgkm_decrypt_text(c, 'r') FROM atk_rev$$) AS after_commit;
SELECT atk_other($$SELECT pgkm.alter_key_roles('atk_rev_key', decrypt_role => 'regress_atk_reader')::text$$);
SELECT pgkm_decrypt_text(c, 'r') FROM atk_rev;
RESET ROLE;
SELECT dblink_disconnect('other');

------------------------------------------------------------------------------------------
-- 9. Everything pgkm's scripts created (views, constraints, defaults, indexes, triggers)
-- uses only pg_catalog's functions, operators and types, or pgkm's own: nothing that
-- another role could have placed in the extension's schema.
CREATE FUNCTION atk_deps() RETURNS TABLE (object text, uses text)
LANGUAGE sql SET search_path = pg_catalog AS $$
WITH RECURSIVE members AS (
	SELECT classid, objid FROM pg_depend
	WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
	AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pgkm')
), parts AS (
	SELECT classid, objid FROM members
	UNION
	SELECT d.classid, d.objid FROM pg_depend d JOIN parts p
		ON d.refclassid = p.classid AND d.refobjid = p.objid
	WHERE d.deptype IN ('a', 'i')
)
SELECT DISTINCT pg_describe_object(d.classid, d.objid, 0),
	pg_describe_object(d.refclassid, d.refobjid, 0)
FROM pg_depend d JOIN parts p ON d.classid = p.classid AND d.objid = p.objid
WHERE d.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass, 'pg_type'::regclass)
	AND NOT EXISTS (SELECT FROM members m WHERE m.classid = d.refclassid AND m.objid = d.refobjid)
	AND COALESCE(
		(SELECT pronamespace FROM pg_proc WHERE oid = d.refobjid AND d.refclassid = 'pg_proc'::regclass),
		(SELECT oprnamespace FROM pg_operator
		 WHERE oid = d.refobjid AND d.refclassid = 'pg_operator'::regclass),
		(SELECT typnamespace FROM pg_type WHERE oid = d.refobjid AND d.refclassid = 'pg_type'::regclass))
		NOT IN ('pg_catalog'::regnamespace, 'pgkm'::regnamespace)
ORDER BY 1, 2
$$;
SELECT * FROM atk_deps();
-- every function of schema pgkm pins search_path, but those that run no SQL
SELECT p.oid::regprocedure AS unpinned FROM pg_proc p
	WHERE p.pronamespace = 'pgkm'::regnamespace
	AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)
	ORDER BY 1::text;

SELECT action, count(*) FROM pgkm.key_events WHERE event_id > :first_event
	AND action IN ('key_roles', 'key_rotate') GROUP BY 1 ORDER BY 1;

------------------------------------------------------------------------------------------
-- 10. The upgrade path. In a database where the attacker could create in public before
-- pgkm 1.2 was installed, the 1.1 view captured its operator (the check above finds it);
-- ALTER EXTENSION UPDATE to 1.3 removes it, and leaves the same objects as here.
-- A digest of pgkm's objects: functions, views, columns, constraints, triggers, indexes.
CREATE FUNCTION atk_shape() RETURNS text LANGUAGE sql SET search_path = pg_catalog AS $$
SELECT md5(string_agg(d, E'\n' ORDER BY d)) FROM (
	SELECT format('%s %s %s %s %s %s %s %s', p.oid::regprocedure, p.prosrc, p.probin,
		p.provolatile, p.proparallel, p.proisstrict, p.prosecdef, p.proconfig) AS d
	FROM pg_proc p JOIN pg_depend e ON e.classid = 'pg_proc'::regclass AND e.objid = p.oid
		AND e.deptype = 'e' AND e.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pgkm')
	UNION ALL SELECT format('view %s %s', viewname, definition) FROM pg_views
	WHERE schemaname = 'pgkm'
	UNION ALL SELECT format('column %s.%s %s %s %s', c.relname, a.attname,
		format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid))
	FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
	LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
	WHERE c.relnamespace = 'pgkm'::regnamespace AND c.relkind IN ('r', 'p', 'v')
		AND c.relname !~ '^audit_records_[0-9]'
	UNION ALL SELECT format('constraint %s %s %s', conrelid::regclass, conname,
		pg_get_constraintdef(oid))
	FROM pg_constraint WHERE connamespace = 'pgkm'::regnamespace
		AND conrelid::regclass::text !~ '^pgkm.audit_records_[0-9]'
	UNION ALL SELECT format('trigger %s', pg_get_triggerdef(t.oid)) FROM pg_trigger t
	JOIN pg_class c ON c.oid = t.tgrelid
	WHERE c.relnamespace = 'pgkm'::regnamespace AND NOT t.tgisinternal
		AND c.relname !~ '^audit_records_[0-9]'
	UNION ALL SELECT format('index %s', pg_get_indexdef(i.indexrelid)) FROM pg_index i
	JOIN pg_class c ON c.oid = i.indrelid
	WHERE c.relnamespace = 'pgkm'::regnamespace AND c.relname !~ '^audit_records_[0-9]'
) s
$$;
CREATE DATABASE atk_upgrade;
SELECT dblink_connect('up', format('host=%s port=%s dbname=atk_upgrade user=postgres',
	:'test_dir', current_setting('port')));
SELECT dblink_exec('up', 'GRANT CREATE ON SCHEMA public TO regress_atk_attacker');
SELECT dblink_exec('up', 'SET ROLE regress_atk_attacker');
SELECT dblink_exec('up', $$CREATE FUNCTION public.div(bigint, numeric) RETURNS numeric
	LANGUAGE sql AS 'SELECT pg_catalog.numeric_div($1::numeric, $2)'$$);
SELECT dblink_exec('up', $$CREATE OPERATOR public./ (LEFTARG = bigint, RIGHTARG = numeric,
	FUNCTION = public.div)$$);
SELECT dblink_exec('up', 'RESET ROLE');
SELECT dblink_exec('up', $$CREATE EXTENSION pgkm VERSION '1.2'$$);
SELECT dblink_exec('up', pg_get_functiondef('atk_deps'::regproc));
SELECT dblink_exec('up', pg_get_functiondef('atk_shape'::regproc));
SELECT * FROM dblink('up', 'SELECT * FROM atk_deps()') AS t(object text, uses text);
SELECT dblink_exec('up', 'ALTER EXTENSION pgkm UPDATE');
SELECT * FROM dblink('up', $$SELECT extversion FROM pg_extension WHERE extname = 'pgkm'$$)
	AS t(extversion text);
SELECT * FROM dblink('up', 'SELECT * FROM atk_deps()') AS t(object text, uses text);
SELECT u.shape = atk_shape() AS same_as_here
	FROM dblink('up', 'SELECT atk_shape()') AS u(shape text);
SELECT dblink_disconnect('up');
DROP DATABASE atk_upgrade;
