-- SQL-level prepared statements
PREPARE add_one(int) AS SELECT $1 + 1;
EXECUTE add_one(41);
SELECT name, statement FROM pg_prepared_statements ORDER BY name;
DEALLOCATE add_one;
EXECUTE add_one(1);
PREPARE two AS SELECT 2;
PREPARE three AS SELECT 3;
DEALLOCATE PREPARE two;
EXECUTE three;
DEALLOCATE ALL;
EXECUTE three;
SELECT count(*) FROM pg_prepared_statements;
BEGIN;
PREPARE in_tx AS SELECT 'in a transaction';
EXECUTE in_tx;
COMMIT;
EXECUTE in_tx;
DEALLOCATE in_tx;
-- the extended protocol: \gdesc prepares the unnamed statement and describes it (psql 15
-- sends no named protocol-level statements; pgx, JDBC and pgbench -M prepared cover those)
SELECT 1 AS one, 'x'::text AS letter \gdesc
SELECT $$a dollar-quoted; string$$ AS s \gdesc
