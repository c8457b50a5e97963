-- COPY in both directions, and a failing COPY
CREATE TEMP TABLE diff_copy (a int, b text);
COPY diff_copy FROM STDIN;
1	one
2	two
3	three
\.
COPY diff_copy TO STDOUT;
COPY (SELECT * FROM diff_copy WHERE a > 1 ORDER BY a) TO STDOUT WITH (FORMAT csv, HEADER);
\copy diff_copy to stdout with csv
COPY diff_copy FROM STDIN;
4	four
not a number	x
\.
SELECT count(*) FROM diff_copy;
BEGIN;
COPY diff_copy FROM STDIN;
5	five
\.
SELECT count(*) FROM diff_copy;
ROLLBACK;
SELECT count(*) FROM diff_copy;
DROP TABLE diff_copy;
