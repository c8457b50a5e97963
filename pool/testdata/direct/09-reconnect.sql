-- \c opens a new session: settings, temporary tables and prepared statements start over
SET application_name = 'before reconnect';
SET search_path = pg_catalog;
CREATE TEMP TABLE diff_reconnect (a int);
PREPARE before_reconnect AS SELECT 1;
\c postgres
SHOW application_name;
SHOW search_path;
SELECT count(*) FROM pg_class WHERE relname = 'diff_reconnect' AND relnamespace = pg_my_temp_schema();
SELECT count(*) FROM pg_prepared_statements;
DROP TABLE IF EXISTS diff_reconnect;
DEALLOCATE ALL;
