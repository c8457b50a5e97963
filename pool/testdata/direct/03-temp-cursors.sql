-- temporary tables and cursors
CREATE TEMP TABLE diff_tmp (a int, b text);
INSERT INTO diff_tmp SELECT g, 'row ' || g FROM generate_series(1, 5) g;
SELECT * FROM diff_tmp ORDER BY a;
BEGIN;
DECLARE c CURSOR FOR SELECT a FROM diff_tmp ORDER BY a;
FETCH 2 FROM c;
FETCH ALL FROM c;
CLOSE c;
COMMIT;
DECLARE h CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 3) g;
FETCH ALL FROM h;
CLOSE h;
DROP TABLE diff_tmp;
