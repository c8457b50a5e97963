-- notices, warnings, LISTEN/NOTIFY
DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$;
DO $$ BEGIN RAISE WARNING 'careful'; END $$;
SET client_min_messages = warning;
DO $$ BEGIN RAISE NOTICE 'not shown'; END $$;
RESET client_min_messages;
LISTEN diff_channel;
NOTIFY diff_channel, 'first';
BEGIN;
NOTIFY diff_channel, 'at commit';
SELECT 'before commit';
COMMIT;
SELECT pg_notify('diff_channel', 'by function');
UNLISTEN diff_channel;
NOTIFY diff_channel, 'nobody listens';
SELECT 1;
