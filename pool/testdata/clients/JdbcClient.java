// Client compatibility program: pgJDBC through the pgharbor pool.
//
// Usage: java -cp /usr/share/java/postgresql.jar JdbcClient.java HOST PORT DBNAME USER PASSWORD
//
// Prints "OK <step>" per step; on the first failure prints "FAIL <step>: <error>" and exits 1.
// prepareThreshold=1 makes the driver use server-side named prepared statements from the
// first execution, which is what a transaction-mode pool must track and re-prepare.
// Keeps no session state across transactions, so it runs in session and transaction modes.

import java.io.StringReader;
import java.io.StringWriter;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;

public class JdbcClient {
    private static String step = "args";

    public static void main(String[] args) {
        if (args.length != 5) {
            System.err.println("usage: java -cp postgresql.jar JdbcClient.java HOST PORT DBNAME USER PASSWORD");
            System.exit(2);
        }
        try {
            run(args[0], Integer.parseInt(args[1]), args[2], args[3], args[4]);
        } catch (Throwable e) {
            String state = e instanceof SQLException ? " [SQLSTATE " + ((SQLException) e).getSQLState() + "]" : "";
            System.out.println("FAIL " + step + ": " + e + state);
            e.printStackTrace(System.out);
            System.out.flush();
            System.exit(1);
        }
        System.out.println("OK all");
        System.exit(0);
    }

    static void ok(String s) {
        System.out.println("OK " + s);
        System.out.flush();
    }

    static void expect(boolean cond, String msg) {
        if (!cond) throw new AssertionError(msg);
    }

    static long count(Connection c, String table) throws SQLException {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SELECT count(*) FROM " + table)) {
            rs.next();
            return rs.getLong(1);
        }
    }

    static void expectState(SQLException e, String want) throws SQLException {
        if (!want.equals(e.getSQLState())) throw e;
    }

    static void run(String host, int port, String db, String user, String password) throws Exception {
        String table = "compat_jdbc_" + ProcessHandle.current().pid() + "_" + (System.currentTimeMillis() % 1000000);
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        p.setProperty("prepareThreshold", "1");
        p.setProperty("connectTimeout", "10");
        p.setProperty("socketTimeout", "60");
        p.setProperty("ApplicationName", "compat-jdbc");
        String url = "jdbc:postgresql://" + host + ":" + port + "/" + db;

        step = "connect";
        try (Connection c = DriverManager.getConnection(url, p)) {
            ok(step);

            step = "simple query";
            try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SELECT 1, 'two'::text, NULL::int")) {
                expect(rs.next() && rs.getInt(1) == 1 && "two".equals(rs.getString(2)) && rs.getObject(3) == null, "row");
            }
            ok(step);

            step = "create table";
            try (Statement st = c.createStatement()) {
                st.execute("CREATE TABLE " + table + " (id int PRIMARY KEY, name text)");
            }
            ok(step);

            step = "transaction commit";
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + table + " VALUES (?, ?)")) {
                ps.setInt(1, 1);
                ps.setString(2, "one");
                ps.executeUpdate();
                ps.setInt(1, 2);
                ps.setString(2, "it's two");
                ps.executeUpdate();
            }
            c.commit();
            expect(count(c, table) == 2, "count after commit");
            c.commit();
            ok(step);

            step = "transaction rollback";
            try (Statement st = c.createStatement()) {
                st.executeUpdate("INSERT INTO " + table + " VALUES (3, 'three')");
            }
            c.rollback();
            expect(count(c, table) == 2, "rolled-back row visible");
            c.commit();
            c.setAutoCommit(true);
            ok(step);

            step = "prepared statements (server-side, autocommit)";
            // Each execution is its own transaction: in transaction pooling they may land on
            // different server connections, so the pool must re-prepare the named statement.
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO " + table + " VALUES (?, ?)");
                 PreparedStatement get = c.prepareStatement("SELECT name FROM " + table + " WHERE id = ?")) {
                for (int i = 10; i < 20; i++) {
                    ins.setInt(1, i);
                    ins.setString(2, "n" + i);
                    expect(ins.executeUpdate() == 1, "insert " + i);
                }
                for (int round = 0; round < 3; round++) {
                    for (int i = 10; i < 20; i++) {
                        get.setInt(1, i);
                        try (ResultSet rs = get.executeQuery()) {
                            expect(rs.next() && ("n" + i).equals(rs.getString(1)), "get " + i);
                        }
                    }
                }
                expect(get.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare(), "driver did not use a server-side statement");
            }
            ok(step);

            step = "batch";
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + table + " VALUES (?, ?)")) {
                for (int i = 20; i < 30; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "b" + i);
                    ps.addBatch();
                }
                int[] n = ps.executeBatch();
                expect(n.length == 10, "batch size");
            }
            expect(count(c, table) == 22, "count after batch");
            ok(step);

            step = "copy in";
            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            StringBuilder data = new StringBuilder();
            for (int i = 100; i < 200; i++) data.append(i).append(",copy ").append(i).append('\n');
            long copied = cm.copyIn("COPY " + table + " (id, name) FROM STDIN WITH (FORMAT csv)", new StringReader(data.toString()));
            expect(copied == 100, "copied " + copied);
            expect(count(c, table) == 122, "count after copy in");
            ok(step);

            step = "copy out";
            StringWriter out = new StringWriter();
            cm.copyOut("COPY (SELECT id, name FROM " + table + " WHERE id >= 100 ORDER BY id) TO STDOUT WITH (FORMAT csv)", out);
            expect(out.toString().equals(data.toString()), "copied-out data differs");
            ok(step);

            step = "error mid-transaction";
            c.setAutoCommit(false);
            try (Statement st = c.createStatement()) {
                st.executeUpdate("INSERT INTO " + table + " VALUES (4, 'four')");
                try {
                    st.executeQuery("SELECT 1/0");
                    throw new AssertionError("division by zero did not fail");
                } catch (SQLException e) {
                    expectState(e, "22012");
                }
                try {
                    st.executeQuery("SELECT 1");
                    throw new AssertionError("statement in an aborted transaction did not fail");
                } catch (SQLException e) {
                    expectState(e, "25P02");
                }
            }
            c.rollback();
            c.setAutoCommit(true);
            expect(count(c, table) == 122, "row from aborted transaction visible");
            try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + 1")) {
                ps.setInt(1, 41);
                try (ResultSet rs = ps.executeQuery()) {
                    expect(rs.next() && rs.getInt(1) == 42, "query after rollback");
                }
            }
            ok(step);

            step = "cancel";
            ScheduledExecutorService ex = Executors.newSingleThreadScheduledExecutor();
            long start = System.nanoTime();
            try (Statement st = c.createStatement()) {
                ex.schedule(() -> { try { st.cancel(); } catch (SQLException e) { e.printStackTrace(); } }, 500, TimeUnit.MILLISECONDS);
                try {
                    st.executeQuery("SELECT pg_sleep(10)");
                    throw new AssertionError("pg_sleep(10) was not cancelled");
                } catch (SQLException e) {
                    expectState(e, "57014");
                }
            } finally {
                ex.shutdownNow();
            }
            double elapsed = (System.nanoTime() - start) / 1e9;
            expect(elapsed < 5, String.format("cancel took %.1fs", elapsed));
            try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SELECT 'after cancel'")) {
                expect(rs.next() && "after cancel".equals(rs.getString(1)), "query after cancel");
            }
            ok(String.format("%s (%.2fs)", step, elapsed));

            step = "drop table";
            try (Statement st = c.createStatement()) {
                st.execute("DROP TABLE " + table);
            }
            ok(step);
        }
    }
}
