#!/usr/bin/python3
"""Client compatibility script: psycopg2 (libpq) through the pgharbor pool.

Usage: /usr/bin/python3 psycopg2_client.py HOST PORT DBNAME USER PASSWORD

Prints "OK <step>" per step; on the first failure prints "FAIL <step>: <error>" and exits 1.
Works in session and transaction pooling modes: it keeps no session state (no temp tables,
no session SET, SQL PREPARE only inside one transaction) across transactions.
"""
import io
import os
import sys
import threading
import time
import traceback

import psycopg2
import psycopg2.errors
import psycopg2.extensions


def main():
    if len(sys.argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    host, port, db, user, password = sys.argv[1:6]
    table = "compat_psycopg2_%d_%d" % (os.getpid(), int(time.time() * 1000) % 1000000)
    step = "connect"
    try:
        conn = psycopg2.connect(host=host, port=int(port), dbname=db, user=user,
                                password=password, connect_timeout=10,
                                application_name="compat-psycopg2")
        ok(step)

        step = "simple query"
        with conn.cursor() as cur:
            cur.execute("SELECT 1, 'two'::text, NULL::int")
            expect(cur.fetchone() == (1, "two", None), "row %r" % (cur.fetchone(),))
            cur.execute("SELECT current_setting('server_version_num')::int")
            expect(cur.fetchone()[0] >= 90000, "server_version_num")
        conn.commit()
        ok(step)

        step = "create table"
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE %s (id int PRIMARY KEY, name text)" % table)
        conn.commit()
        ok(step)

        step = "transaction commit"
        with conn.cursor() as cur:
            cur.execute("INSERT INTO %s VALUES (%%s, %%s)" % table, (1, "one"))
            cur.execute("INSERT INTO %s VALUES (%%s, %%s)" % table, (2, "it's two"))
        conn.commit()
        expect(count(conn, table) == 2, "count after commit")
        ok(step)

        step = "transaction rollback"
        with conn.cursor() as cur:
            cur.execute("INSERT INTO %s VALUES (3, 'three')" % table)
        conn.rollback()
        expect(count(conn, table) == 2, "rolled-back row visible")
        ok(step)

        step = "parameters and executemany"
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO %s VALUES (%%s, %%s)" % table,
                            [(i, "n%d" % i) for i in range(10, 20)])
            cur.execute("SELECT name FROM %s WHERE id = %%(id)s" % table, {"id": 15})
            expect(cur.fetchone()[0] == "n15", "lookup by parameter")
        conn.commit()
        ok(step)

        step = "prepared statement"
        # SQL-level PREPARE lives in one transaction, so it is valid in transaction pooling.
        with conn.cursor() as cur:
            cur.execute("PREPARE compat_get (int) AS SELECT name FROM %s WHERE id = $1" % table)
            for i in (10, 11, 12):
                cur.execute("EXECUTE compat_get (%s)", (i,))
                expect(cur.fetchone()[0] == "n%d" % i, "EXECUTE %d" % i)
            cur.execute("DEALLOCATE compat_get")
        conn.commit()
        ok(step)

        step = "server-side cursor"
        with conn.cursor(name="compat_cursor") as cur:
            cur.itersize = 3
            cur.execute("SELECT g FROM generate_series(1, 10) g")
            expect([r[0] for r in cur] == list(range(1, 11)), "cursor rows")
        conn.commit()
        ok(step)

        step = "copy in"
        data = "".join("%d,copy %d\n" % (i, i) for i in range(100, 200))
        with conn.cursor() as cur:
            cur.copy_expert("COPY %s (id, name) FROM STDIN WITH (FORMAT csv)" % table, io.StringIO(data))
        conn.commit()
        expect(count(conn, table) == 2 + 10 + 100, "count after copy in")
        ok(step)

        step = "copy out"
        buf = io.StringIO()
        with conn.cursor() as cur:
            cur.copy_expert("COPY (SELECT id, name FROM %s WHERE id >= 100 ORDER BY id) TO STDOUT WITH (FORMAT csv)" % table, buf)
        conn.commit()
        expect(buf.getvalue() == data, "copied-out data differs")
        ok(step)

        step = "error mid-transaction"
        with conn.cursor() as cur:
            cur.execute("INSERT INTO %s VALUES (4, 'four')" % table)
            try:
                cur.execute("SELECT 1/0")
                raise AssertionError("division by zero did not fail")
            except psycopg2.errors.DivisionByZero:
                pass
            try:
                cur.execute("SELECT 1")
                raise AssertionError("statement in an aborted transaction did not fail")
            except psycopg2.errors.InFailedSqlTransaction:
                pass
        conn.rollback()
        expect(count(conn, table) == 112, "row from aborted transaction visible")
        with conn.cursor() as cur:
            cur.execute("SELECT 42")
            expect(cur.fetchone()[0] == 42, "query after rollback")
        conn.commit()
        ok(step)

        step = "cancel"
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        start = time.monotonic()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_sleep(10)")
            raise AssertionError("pg_sleep(10) was not cancelled")
        except psycopg2.errors.QueryCanceled:
            pass
        finally:
            timer.cancel()
        elapsed = time.monotonic() - start
        expect(elapsed < 5, "cancel took %.1fs" % elapsed)
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT 'after cancel'")
            expect(cur.fetchone()[0] == "after cancel", "query after cancel")
        conn.commit()
        ok(step + " (%.2fs)" % elapsed)

        step = "drop table"
        with conn.cursor() as cur:
            cur.execute("DROP TABLE %s" % table)
        conn.commit()
        conn.close()
        ok(step)
    except Exception as e:  # report any failure as the step's
        print("FAIL %s: %s: %s" % (step, type(e).__name__, e))
        traceback.print_exc()
        sys.stdout.flush()
        return 1
    print("OK all")
    return 0


def ok(step):
    print("OK " + step)
    sys.stdout.flush()


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def count(conn, table):
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM %s" % table)
        n = cur.fetchone()[0]
    conn.commit()
    return n


if __name__ == "__main__":
    sys.exit(main())
