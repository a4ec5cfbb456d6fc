-- jobs: protected columns and online re-encryption by the background worker

-- Waits (up to 60 s) until a job reaches one of the given states; returns the state.
CREATE FUNCTION wait_for_job(id bigint, states text[] DEFAULT '{done,failed,cancelled}')
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	s text;
BEGIN
	FOR i IN 1..600 LOOP
		SELECT state INTO s FROM pgkm.rotation_jobs WHERE job_id = id;
		IF s = ANY (states) THEN
			RETURN s;
		END IF;
		PERFORM pg_sleep(0.1);
	END LOOP;
	RETURN 'timeout: ' || s;
END
$$;

-- the worker of this database runs (after the lifecycle test's DROP EXTENSION it may come
-- back only after its restart interval: wait up to 60 s)
CREATE FUNCTION wait_for_worker() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	n bigint;
BEGIN
	FOR i IN 1..600 LOOP
		PERFORM pg_stat_clear_snapshot();
		SELECT count(*) INTO n FROM pg_stat_activity
		 WHERE backend_type = 'pgkm worker' AND datname = current_database();
		IF n > 0 THEN
			RETURN n;
		END IF;
		PERFORM pg_sleep(0.1);
	END LOOP;
	RETURN n;
END
$$;
SELECT wait_for_worker();
SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgkm launcher';

SELECT pgkm.create_key('jobs_key') > 0 AS created;
CREATE TABLE accounts (id bigint PRIMARY KEY, iban bytea, note text);
INSERT INTO accounts
	SELECT i, pgkm_encrypt('DE' || lpad(i::text, 20, '0'), 'jobs_key', i::text), 'n' || i
	FROM generate_series(1, 5000) i;
INSERT INTO accounts VALUES (5001, NULL, 'no iban');

-- protecting needs a bytea column, an existing context column and a primary key
SELECT pgkm_test_error($$SELECT pgkm.protect_column('accounts', 'note', 'jobs_key')$$);
SELECT pgkm_test_error($$SELECT pgkm.protect_column('accounts', 'iban', 'jobs_key', 'nope')$$);
SELECT pgkm_test_error($$SELECT pgkm.protect_column('accounts', 'nope', 'jobs_key')$$);
SELECT pgkm_test_error($$SELECT pgkm.protect_column('accounts', 'iban', 'no_such_key')$$);
CREATE TABLE no_pk (iban bytea);
SELECT pgkm_test_error($$SELECT pgkm.protect_column('no_pk', 'iban', 'jobs_key')$$);
SELECT pgkm.protect_column('accounts', 'iban', 'jobs_key', context_column => 'id');
SELECT table_name, column_name, context_column FROM pgkm.protected_columns;

-- a user trigger on the table does not fire for the worker's rewrites
CREATE TABLE trigger_log (id bigint);
CREATE FUNCTION log_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO trigger_log VALUES (NEW.id);
	RETURN NEW;
END
$$;
CREATE TRIGGER accounts_log AFTER UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION log_update();

-- rotating queues a job; the worker re-encrypts every row in the background
SELECT pgkm.rotate_key('jobs_key');
SELECT job_id AS job FROM pgkm.rotation_jobs WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'jobs_key') \gset
SELECT wait_for_job(:job);
SELECT table_name, column_name, key_name, target_version, state, phase, rows_done, rows_total,
	error FROM pgkm.rotation_progress WHERE job_id = :job;
SELECT pgkm.ciphertext_version(iban) AS version, count(*) FROM accounts GROUP BY 1 ORDER BY 1;
SELECT count(*) FILTER (WHERE pgkm_decrypt_text(iban, id::text) = 'DE' || lpad(id::text, 20, '0'))
	AS decrypted FROM accounts;
SELECT count(*) AS trigger_fired FROM trigger_log;
-- version 1 is referenced by nothing now: the worker retired it
SELECT version, state FROM pgkm.key_status WHERE key_name = 'jobs_key' ORDER BY version;
SELECT actor, action, version FROM pgkm.key_events
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'jobs_key') ORDER BY event_id;

-- pause, resume, cancel; states that do not allow it are refused
SELECT pgkm.set_rotation_policy('jobs_key', max_encryptions => 2147483648);
ALTER SYSTEM SET pgkm.rotation_batch_size = 100;
ALTER SYSTEM SET pgkm.rotation_max_rows_per_second = 2000;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT pgkm.rotate_key('jobs_key');
SELECT max(job_id) AS job FROM pgkm.rotation_jobs \gset
SELECT pgkm.pause_job(:job);
SELECT pgkm_test_error(format('SELECT pgkm.pause_job(%s)', :job));
SELECT state FROM pgkm.rotation_jobs WHERE job_id = :job;
SELECT pgkm.resume_job(:job);
SELECT wait_for_job(:job, '{running,done}') IN ('running', 'done') AS resumed;
SELECT pgkm.cancel_job(:job);
SELECT state, error FROM pgkm.rotation_jobs WHERE job_id = :job;
SELECT pgkm_test_error(format('SELECT pgkm.resume_job(%s)', :job));
SELECT pgkm_test_error('SELECT pgkm.cancel_job(999999)');
-- a cancelled job leaves rows partly re-encrypted; all of them still decrypt
SELECT count(*) FILTER (WHERE pgkm_decrypt_text(iban, id::text) = 'DE' || lpad(id::text, 20, '0'))
	AS decrypted FROM accounts;
ALTER SYSTEM RESET pgkm.rotation_batch_size;
ALTER SYSTEM RESET pgkm.rotation_max_rows_per_second;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);

-- start_reencryption finishes what the cancelled job left
SELECT pgkm.start_reencryption('accounts', 'iban') AS job \gset
SELECT wait_for_job(:job);
SELECT pgkm.ciphertext_version(iban) AS version, count(*) FROM accounts GROUP BY 1 ORDER BY 1;
SELECT version, state FROM pgkm.key_status WHERE key_name = 'jobs_key' ORDER BY version;

-- a row that does not authenticate fails the job with its error; fixed, a new job finishes
SELECT pgkm.rotate_key('jobs_key');
UPDATE accounts SET iban = (SELECT iban FROM accounts WHERE id = 2) WHERE id = 1;
SELECT max(job_id) AS job FROM pgkm.rotation_jobs \gset
SELECT wait_for_job(:job);
SELECT state, error FROM pgkm.rotation_jobs WHERE job_id = :job;
UPDATE accounts SET iban = pgkm_encrypt('DE' || lpad('1', 20, '0'), 'jobs_key', '1') WHERE id = 1;
SELECT pgkm.start_reencryption('accounts', 'iban') AS job \gset
SELECT wait_for_job(:job);
SELECT count(*) FILTER (WHERE pgkm_decrypt_text(iban, id::text) = 'DE' || lpad(id::text, 20, '0'))
	AS decrypted FROM accounts;

-- unprotecting cancels open jobs and forgets the column
SELECT pgkm.unprotect_column('accounts', 'iban');
SELECT count(*) FROM pgkm.protected_columns;
SELECT pgkm_test_error($$SELECT pgkm.unprotect_column('accounts', 'iban')$$);
SELECT pgkm_test_error($$SELECT pgkm.start_reencryption('accounts', 'iban')$$);

-- only the table's owner may protect it
CREATE ROLE regress_pgkm_jobs_owner;
GRANT USAGE ON SCHEMA pgkm TO regress_pgkm_jobs_owner;
GRANT EXECUTE ON FUNCTION pgkm.protect_column(regclass, name, text, name, name) TO regress_pgkm_jobs_owner;
SET ROLE regress_pgkm_jobs_owner;
SELECT pgkm_test_error($$SELECT pgkm.protect_column('accounts', 'iban', 'jobs_key')$$);
RESET ROLE;
DROP TABLE accounts, no_pk, trigger_log;
DROP FUNCTION log_update();

-- rotation policies: the worker rotates a key by encryption count and by age by itself
ALTER SYSTEM SET pgkm.worker_naptime = 1;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT pgkm.create_key('policy_count') > 0 AS created;
SELECT pgkm.set_rotation_policy('policy_count', max_encryptions => 10);
SELECT count(pgkm_encrypt('v' || i, 'policy_count')) FROM generate_series(1, 25) i;
-- Waits (up to 30 s) until the key has an active version other than 1.
CREATE FUNCTION wait_for_rotation(key text) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
	v integer;
BEGIN
	FOR i IN 1..300 LOOP
		SELECT version INTO v FROM pgkm.key_status WHERE key_name = key AND state = 'active';
		IF v > 1 THEN
			RETURN v;
		END IF;
		PERFORM pg_sleep(0.1);
	END LOOP;
	RETURN v;
END
$$;
SELECT wait_for_rotation('policy_count');
SELECT actor, action, version, detail LIKE 'automatic: % encryptions' AS by_count
	FROM pgkm.key_events
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'policy_count') AND action = 'key_rotate';
SELECT pgkm.create_key('policy_age') > 0 AS created;
SELECT pgkm.set_rotation_policy('policy_age', max_age => '1 second');
SELECT wait_for_rotation('policy_age') >= 2 AS rotated_by_age;
SELECT actor, action, detail FROM pgkm.key_events
	WHERE key_id = (SELECT key_id FROM pgkm.keys WHERE name = 'policy_age') AND action = 'key_rotate'
	ORDER BY event_id LIMIT 1;
-- stop rotating it every second
SELECT pgkm.set_rotation_policy('policy_age', max_age => '0');
ALTER SYSTEM RESET pgkm.worker_naptime;
SELECT pg_reload_conf();
