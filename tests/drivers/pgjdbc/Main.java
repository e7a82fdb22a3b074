/*
 * Main.java - pgjdbc driver checks for pgrouter (the contract is tests/drivers/README.md).
 *
 * Runs the contract's checks with pgjdbc, the JDBC driver Java web applications use (Debian's
 * libpostgresql-jdbc-java 42.5, /usr/share/java/postgresql.jar), through the JDK's single-file
 * source launcher: no build step. Start it through the `run` script next to this file:
 *
 *     tests/drivers/pgjdbc/run --host H --port P --user U --password PW --dbname D \
 *         --clients N [--seconds S] [--timeout T] [--checks NAME,...]
 *
 * Output: one line per check, `ok <check>`, `FAIL <check>: <reason>` or `skip <check>: <reason>`,
 * then `N passed, M failed`; exit code 0 exactly when M is 0. Each check runs on its own thread
 * and is given --timeout seconds (workload: --seconds plus --timeout); a check that takes longer
 * is reported as a hang, its connections are aborted and the program goes on.
 *
 * How pgjdbc talks to the server (what pgrouter has to keep working):
 * - Connections use prepareThreshold=1: pgjdbc parses every statement, PreparedStatement or plain
 *   Statement, as a named server-side statement S_1, S_2, ... (per connection, so every client
 *   uses the same names) on its first execution, and afterwards sends only Bind/Execute for it.
 *   prepareThreshold=0 makes it use the unnamed statement instead (unnamed_prepared).
 * - A small preparedStatementCacheQueries makes pgjdbc evict cached statements and send Close for
 *   them (named_prepared).
 * - "cached plan must not change result type" (0A000) is healed by pgjdbc itself in autocommit
 *   mode: it closes the statement, parses it again under a new name and retries, so the
 *   application sees no error and gets the new column (plan_invalidated).
 * - preferQueryMode=simple sends everything as simple Query messages; extendedForPrepared sends
 *   plain Statements as simple queries and PreparedStatements with the extended protocol.
 *   The deallocate checks do not trust this: they read pgjdbc's own protocol trace
 *   (java.util.logging at FINEST, "FE=> SimpleQuery(...)" / "FE=> Parse(...)",
 *   "<=BE CommandStatus(DEALLOCATE)") and fail if the expected messages are not there.
 *
 * Tables are named pgr_pgjdbc_<pid>_<check> and dropped at the end.
 */

import java.io.StringReader;
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HexFormat;
import java.util.List;
import java.util.Properties;
import java.util.Random;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.FutureTask;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import java.util.logging.SimpleFormatter;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;
import org.postgresql.util.PSQLException;

public class Main {
    static String host, user, password, dbname;
    static int port, clients = -1, seconds = 0;
    static double timeout = 30;

    static final int ITER = 100;    // iterations per client in named_prepared / unnamed_prepared
    static final int TX_ITER = 50;  // transactions per client in `transactions`
    static final String PREFIX = "pgr_pgjdbc_" + ProcessHandle.current().pid();
    static final Set<String> tables = ConcurrentHashMap.newKeySet();
    static int passed, failed;

    /**
     * One check's run: the connections it opened (aborted when it ends, so a hung check's
     * threads fail instead of running on into the next check), its protocol traces (removed
     * when it ends) and what it was doing last.
     * Threads a check starts inherit it.
     */
    static final class Run {
        final List<Connection> conns = new ArrayList<>();
        final List<Trace> traces = Collections.synchronizedList(new ArrayList<>());
        volatile String step = "";
        boolean over;  // guarded by conns

        void end() {
            List<Connection> cs;
            synchronized (conns) {
                over = true;
                cs = new ArrayList<>(conns);
            }
            for (Connection c : cs) abort(c);
            synchronized (traces) {
                for (Trace t : traces) t.close();
            }
        }
    }

    static final InheritableThreadLocal<Run> RUN = new InheritableThreadLocal<>();

    /** --checks: the only checks to run; null runs them all. */
    static java.util.Set<String> only = null;

    public static void main(String[] argv) {
        parseArgs(argv);
        check("named_prepared", timeout, Main::namedPrepared);
        check("unnamed_prepared", timeout, Main::unnamedPrepared);
        check("transactions", timeout, Main::transactions);
        check("plan_invalidated", timeout, Main::planInvalidated);
        check("deallocate_simple", timeout, () -> deallocate(true));
        check("deallocate_extended", timeout, () -> deallocate(false));
        check("pipeline", timeout, Main::pipeline);
        check("copy", timeout, Main::copy);
        check("cancel", timeout, Main::cancel);
        check("listen_notify", timeout, Main::listenNotify);
        check("large_messages", timeout, Main::largeMessages);
        check("errors", timeout, Main::errors);
        check("workload", seconds + timeout, Main::workload);
        cleanup();
        System.out.println(passed + " passed, " + failed + " failed");
        System.out.flush();
        Runtime.getRuntime().halt(failed == 0 ? 0 : 1);  // halt: don't wait for threads of a hung check
    }

    static void parseArgs(String[] a) {
        try {
            for (int i = 0; i < a.length; i += 2) {
                String v = a[i + 1];
                switch (a[i]) {
                    case "--host": host = v; break;
                    case "--port": port = Integer.parseInt(v); break;
                    case "--user": user = v; break;
                    case "--password": password = v; break;
                    case "--dbname": dbname = v; break;
                    case "--clients": clients = Integer.parseInt(v); break;
                    case "--seconds": seconds = Integer.parseInt(v); break;
                    case "--timeout": timeout = Double.parseDouble(v); break;
                    case "--checks": only = new java.util.HashSet<>(java.util.Arrays.asList(v.split(","))); break;
                    default: throw new IllegalArgumentException("unknown argument " + a[i]);
                }
            }
            if (host == null || port == 0 || user == null || password == null || dbname == null || clients < 1)
                throw new IllegalArgumentException("missing argument");
        } catch (RuntimeException e) {
            System.err.println("error: " + e.getMessage() + "\nusage: run --host H --port P --user U --password PW"
                    + " --dbname D --clients N [--seconds S] [--timeout T] [--checks NAME,...]");
            System.exit(2);
        }
    }

    // ---------------------------------------------------------------- plumbing

    interface Body { String run() throws Exception; }
    interface Client { void run(int c) throws Exception; }

    /** A check's verdict when a result is wrong (its message is the whole reason). */
    static final class Fail extends Exception { Fail(String m) { super(m); } }
    static final class Skip extends Exception { Skip(String m) { super(m); } }

    /** Runs body on its own thread for at most `limit` seconds and prints the check's line. */
    static void check(String name, double limit, Body body) {
        if (only != null && !only.contains(name)) return;
        Run run = new Run();
        String line;
        try {
            String extra = bounded(name, limit, run, body);
            line = "ok " + name + (extra == null ? "" : ": " + extra);
            passed++;
        } catch (TimeoutException e) {
            line = "FAIL " + name + ": hang: no result after " + limit + " s" + (run.step.isEmpty() ? "" : " (" + run.step + ")");
            failed++;
        } catch (Skip e) {
            line = "skip " + name + ": " + e.getMessage();
        } catch (Exception e) {
            line = "FAIL " + name + ": " + oneLine(e);
            failed++;
        }
        System.out.println(line);
        System.out.flush();
        run.end();
    }

    static void step(String what) {
        RUN.get().step = what;
    }

    static String bounded(String name, double limit, Run run, Body body) throws Exception {
        FutureTask<String> task = new FutureTask<>(() -> {
            RUN.set(run);
            return body.run();
        });
        Thread t = new Thread(task, name);
        t.setDaemon(true);
        t.start();
        try {
            return task.get((long) (limit * 1000), TimeUnit.MILLISECONDS);
        } catch (ExecutionException e) {
            Throwable c = e.getCause();
            if (c instanceof Exception) throw (Exception) c;
            throw new Exception(c);
        }
    }

    /** Closes a connection's socket without waiting for a thread that may be stuck on it. */
    static void abort(Connection c) {
        try {
            if (!c.isClosed()) c.abort(Runnable::run);
        } catch (Exception ignored) {
        }
    }

    /** Runs n clients on their own threads; fails with the first client's error if any failed. */
    static void parallel(int n, Client body) throws Exception {
        Thread[] ts = new Thread[n];
        String[] errs = new String[n];
        for (int c = 0; c < n; c++) {
            final int cc = c;
            ts[c] = new Thread(() -> {
                try {
                    body.run(cc);
                } catch (Throwable e) {
                    errs[cc] = oneLine(e);
                }
            }, "client-" + c);
            ts[c].setDaemon(true);
            ts[c].start();
        }
        for (Thread t : ts) t.join();
        int bad = 0, first = -1;
        for (int c = 0; c < n; c++) {
            if (errs[c] != null) {
                bad++;
                if (first < 0) first = c;
            }
        }
        if (bad > 0) throw new Fail(bad + " of " + n + " clients failed; client " + first + ": " + errs[first]);
    }

    static Connection connect(String... props) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        p.setProperty("prepareThreshold", "1");  // named server-side statements from the first execution
        p.setProperty("connectTimeout", "10");
        for (int i = 0; i + 1 < props.length; i += 2) p.setProperty(props[i], props[i + 1]);
        Run run = RUN.get();
        synchronized (run.conns) {
            if (run.over) throw new SQLException("check already ended");
        }
        Connection c = DriverManager.getConnection("jdbc:postgresql://" + host + ":" + port + "/" + dbname, p);
        synchronized (run.conns) {
            if (!run.over) {
                run.conns.add(c);
                return c;
            }
        }
        abort(c);
        throw new SQLException("check already ended");
    }

    /** Setup, verification and cleanup: the unnamed statement only, so they work through any pooler. */
    static Connection admin() throws SQLException {
        return connect("prepareThreshold", "0");
    }

    static String table(String suffix) {
        String t = PREFIX + "_" + suffix;
        tables.add(t);
        return t;
    }

    static void exec(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement()) {
            s.execute(sql);
        }
    }

    static void createTable(String name, String columns) throws SQLException {
        try (Connection c = admin()) {
            exec(c, "CREATE TABLE " + name + " (" + columns + ")");
        }
    }

    static long queryLong(Connection c, String sql) throws Exception {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) {
            if (!rs.next()) throw new Fail(sql + ": no row");
            return rs.getLong(1);
        }
    }

    static ResultSet row(PreparedStatement ps) throws Exception {
        ResultSet rs = ps.executeQuery();
        if (!rs.next()) throw new Fail("no row from " + ps);
        return rs;
    }

    static void expect(Object got, Object want, String what) throws Fail {
        if (!String.valueOf(got).equals(String.valueOf(want)))
            throw new Fail(what + ": got " + abbrev(String.valueOf(got)) + ", want " + abbrev(String.valueOf(want)));
    }

    static String abbrev(String s) {
        return s.length() <= 120 ? s : s.substring(0, 60) + "...(" + s.length() + " chars)..." + s.substring(s.length() - 20);
    }

    static void expectServerPrepared(PreparedStatement ps, boolean want, String what) throws Exception {
        expect(ps.unwrap(PGStatement.class).isUseServerPrepare(), want, what + ": isUseServerPrepare");
    }

    static String oneLine(Throwable e) {
        String s;
        if (e instanceof Fail) {
            s = e.getMessage();
        } else if (e instanceof SQLException) {
            SQLException q = (SQLException) e;
            s = "SQLSTATE " + q.getSQLState() + ": " + q.getMessage();
        } else {
            s = e.getClass().getSimpleName() + ": " + e.getMessage();
        }
        return s.replaceAll("\\s+", " ").trim();
    }

    /** The server's own message text (PostgreSQL's wording, without pgjdbc's "ERROR: " prefix). */
    static String serverMessage(SQLException e) {
        if (e instanceof PSQLException && ((PSQLException) e).getServerErrorMessage() != null)
            return ((PSQLException) e).getServerErrorMessage().getMessage();
        return e.getMessage();
    }

    interface Sql { void run() throws Exception; }

    /** Runs sql, which must fail with SQLSTATE `state` and a server message starting with `prefix`. */
    static void expectError(String what, String state, String prefix, Sql sql) throws Exception {
        try {
            sql.run();
        } catch (SQLException e) {
            if (!state.equals(e.getSQLState()))
                throw new Fail(what + ": want SQLSTATE " + state + ", got " + oneLine(e));
            if (prefix != null && !serverMessage(e).startsWith(prefix))
                throw new Fail(what + ": want message starting with '" + prefix + "', got '" + serverMessage(e) + "'");
            return;
        }
        throw new Fail(what + ": want SQLSTATE " + state + ", got no error");
    }

    /** Labels the failures of one part of a check. */
    static void part(String label, Sql body) throws Exception {
        try {
            body.run();
        } catch (Fail e) {
            throw new Fail(label + ": " + e.getMessage());
        } catch (SQLException e) {
            throw new Fail(label + ": " + oneLine(e));
        }
    }

    /**
     * pgjdbc's protocol trace for the current thread: java.util.logging at FINEST on
     * "org.postgresql" makes pgjdbc log every message it sends ("FE=> ...") and receives
     * ("<=BE ..."). Only the creating thread's records are kept.
     */
    static final Logger PGLOG = Logger.getLogger("org.postgresql");  // strong reference keeps the level

    static final class Trace extends Handler implements AutoCloseable {
        final long thread = Thread.currentThread().getId();
        final List<String> lines = Collections.synchronizedList(new ArrayList<>());
        final SimpleFormatter fmt = new SimpleFormatter();

        Trace() {
            setLevel(Level.ALL);
            PGLOG.addHandler(this);
            PGLOG.setLevel(Level.FINEST);
            RUN.get().traces.add(this);
        }

        @Override public void publish(LogRecord r) {
            if (r.getLongThreadID() == thread) lines.add(fmt.formatMessage(r).trim());
        }
        @Override public void flush() {}
        @Override public void close() {
            PGLOG.removeHandler(this);
            PGLOG.setLevel(null);
        }

        int mark() { return lines.size(); }

        List<String> since(int mark) {
            synchronized (lines) {
                return new ArrayList<>(lines.subList(mark, lines.size()));
            }
        }

        /** Protocol messages since mark, compacted for a failure message. */
        String summary(int mark) {
            StringBuilder b = new StringBuilder();
            for (String l : since(mark)) {
                if (l.startsWith("FE=>") || l.startsWith("<=BE")) b.append(l.split("\n")[0]).append("; ");
            }
            String s = b.toString();
            return s.length() <= 2000 ? s : s.substring(0, 1000) + " ... " + s.substring(s.length() - 900);
        }

        /** The first line since mark matching the regex; fails with the trace if there is none. */
        Matcher find(int mark, String regex, String what) throws Fail {
            Pattern p = Pattern.compile(regex, Pattern.DOTALL);
            for (String l : since(mark)) {
                Matcher m = p.matcher(l);
                if (m.find()) return m;
            }
            throw new Fail(what + ": not in pgjdbc's trace: " + summary(mark));
        }

        long count(int mark, String prefix) {
            return since(mark).stream().filter(l -> l.startsWith(prefix)).count();
        }
    }

    // ---------------------------------------------------------------- checks

    /** N clients, named server-side statements executed with parameters; a small statement cache makes pgjdbc close and re-prepare too. */
    static String namedPrepared() throws Exception {
        parallel(clients, c -> {
            try (Connection conn = connect("preparedStatementCacheQueries", "8");
                 PreparedStatement add = conn.prepareStatement("SELECT ?::int + ?::int + " + c + " AS sum_c" + c);
                 PreparedStatement cat = conn.prepareStatement("SELECT ?::text || ?::text || '/c" + c + "'");
                 PreparedStatement gen = conn.prepareStatement("SELECT g, g * ?::bigint FROM generate_series(1, ?::int) g -- c" + c)) {
                for (int i = 0; i < ITER; i++) {
                    add.setInt(1, i);
                    add.setInt(2, 1000);
                    try (ResultSet rs = row(add)) { expect(rs.getInt(1), i + 1000 + c, "add"); }
                    cat.setString(1, "a" + i);
                    cat.setString(2, "b");
                    try (ResultSet rs = row(cat)) { expect(rs.getString(1), "a" + i + "b/c" + c, "concat"); }
                    gen.setLong(1, c + 1);
                    gen.setInt(2, i % 7 + 1);
                    try (ResultSet rs = gen.executeQuery()) {
                        int n = 0;
                        while (rs.next()) {
                            n++;
                            expect(rs.getInt(1), n, "generate_series row");
                            expect(rs.getLong(2), (long) n * (c + 1), "generate_series product");
                        }
                        expect(n, i % 7 + 1, "generate_series rows");
                    }
                    if (i == 0) {
                        expectServerPrepared(add, true, "add");
                        expectServerPrepared(cat, true, "concat");
                        expectServerPrepared(gen, true, "generate_series");
                    }
                    // 12 texts cycling through an 8-entry statement cache: pgjdbc evicts (Close)
                    // and parses again under a new name all the time.
                    int m = i % 12 + 2;
                    try (PreparedStatement churn = conn.prepareStatement("SELECT ?::int * " + m + " -- c" + c)) {
                        churn.setInt(1, i);
                        try (ResultSet rs = row(churn)) { expect(rs.getInt(1), i * m, "churn"); }
                        expectServerPrepared(churn, true, "churn");
                    }
                }
            }
        });
        return null;
    }

    /** N clients, parameterised queries on the unnamed statement (prepareThreshold=0). */
    static String unnamedPrepared() throws Exception {
        parallel(clients, c -> {
            try (Connection conn = connect("prepareThreshold", "0");
                 PreparedStatement ps = conn.prepareStatement("SELECT ?::int + ?::int, ?::text || '/c" + c + "'");
                 PreparedStatement gen = conn.prepareStatement("SELECT g FROM generate_series(?::int, ?::int) g")) {
                for (int i = 0; i < ITER; i++) {
                    ps.setInt(1, i);
                    ps.setInt(2, c);
                    ps.setString(3, "x" + i);
                    try (ResultSet rs = row(ps)) {
                        expect(rs.getInt(1), i + c, "sum");
                        expect(rs.getString(2), "x" + i + "/c" + c, "text");
                    }
                    gen.setInt(1, c);
                    gen.setInt(2, c + i % 5);
                    try (ResultSet rs = gen.executeQuery()) {
                        int n = 0;
                        while (rs.next()) expect(rs.getInt(1), c + n++, "generate_series");
                        expect(n, i % 5 + 1, "generate_series rows");
                    }
                    expectServerPrepared(ps, false, "unnamed");
                }
            }
        });
        return null;
    }

    /** N clients, transactions (pgjdbc's BEGIN with autocommit off), two INSERTs and a count in each, COMMIT or ROLLBACK. */
    static String transactions() throws Exception {
        String t = table("tx");
        createTable(t, "client int NOT NULL, i int NOT NULL, v text NOT NULL");
        long[] want = new long[clients];
        parallel(clients, c -> {
            try (Connection conn = connect();
                 PreparedStatement ins = conn.prepareStatement("INSERT INTO " + t + " (client, i, v) VALUES (?, ?, ?)");
                 PreparedStatement cnt = conn.prepareStatement("SELECT count(*) FROM " + t + " WHERE client = ?")) {
                conn.setAutoCommit(false);
                long committed = 0;
                cnt.setInt(1, c);
                for (int i = 0; i < TX_ITER; i++) {
                    for (String v : new String[] {"v" + i, "w" + i}) {
                        ins.setInt(1, c);
                        ins.setInt(2, i);
                        ins.setString(3, v);
                        expect(ins.executeUpdate(), 1, "insert count");
                    }
                    try (ResultSet rs = row(cnt)) { expect(rs.getLong(1), committed + 2, "count inside transaction " + i); }
                    if (i % 4 == 3) {
                        conn.rollback();
                        try (ResultSet rs = row(cnt)) { expect(rs.getLong(1), committed, "count after rollback " + i); }
                    } else {
                        conn.commit();
                        committed += 2;
                    }
                }
                conn.commit();
                want[c] = committed;
            }
        });
        try (Connection conn = admin()) {
            for (int c = 0; c < clients; c++)
                expect(queryLong(conn, "SELECT count(*) FROM " + t + " WHERE client = " + c), want[c], "rows of client " + c + " after all transactions");
        }
        return null;
    }

    /** A named SELECT * whose table gains a column: pgjdbc heals the 0A000 itself, the app sees the new column. */
    static String planInvalidated() throws Exception {
        String t = table("plan");
        createTable(t, "a int NOT NULL");
        try (Connection conn = connect(); Connection ddl = admin(); Trace tr = new Trace()) {
            exec(ddl, "INSERT INTO " + t + " VALUES (1)");
            int mark = tr.mark();
            try (PreparedStatement ps = conn.prepareStatement("SELECT * FROM " + t + " WHERE a = ?")) {
                ps.setInt(1, 1);
                for (int i = 0; i < 2; i++) {
                    step("SELECT * before ALTER TABLE");
                    try (ResultSet rs = row(ps)) {
                        expect(rs.getMetaData().getColumnCount(), 1, "columns before ALTER TABLE");
                        expect(rs.getInt(1), 1, "a");
                    }
                }
                expectServerPrepared(ps, true, "SELECT *");
                step("ALTER TABLE");
                exec(ddl, "ALTER TABLE " + t + " ADD COLUMN b text NOT NULL DEFAULT 'new'");
                for (int i = 0; i < 3; i++) {
                    step("SELECT * after ALTER TABLE, execution " + (i + 1));
                    try (ResultSet rs = row(ps)) {
                        expect(rs.getMetaData().getColumnCount(), 2, "columns after ALTER TABLE");
                        expect(rs.getMetaData().getColumnName(2), "b", "new column name");
                        expect(rs.getInt(1) + "," + rs.getString(2), "1,new", "row after ALTER TABLE");
                    } catch (SQLException e) {
                        throw new Fail("execution " + (i + 1) + " after ALTER TABLE: " + oneLine(e) + " [protocol: " + tr.summary(mark) + "]");
                    }
                }
            }
        }
        return null;
    }

    /**
     * DEALLOCATE as a simple query (simple=true) or with the extended protocol, three ways:
     * (a) a statement made by SQL PREPARE, (b) the same after its table was dropped,
     * (c) a statement pgjdbc itself prepared at the protocol level (its S_n name, read from the
     * trace), after its table was dropped - what ActiveRecord's disconnect does.
     * Each DEALLOCATE must be answered by CommandComplete DEALLOCATE and the connection must stay usable.
     * (a) and (b) run inside one transaction: SQL-level PREPARE is session state that no
     * transaction pooler keeps across transactions (pgrouter's README says so); (c) is pgjdbc's
     * protocol-level statement, which pgrouter does keep, and runs in autocommit.
     *
     * How the protocol is made sure of: simple uses preferQueryMode=simple ((a), (b)) and
     * extendedForPrepared ((c): PreparedStatements extended, plain Statements simple); extended
     * runs DEALLOCATE as a PreparedStatement with prepareThreshold=1. Either way the trace must
     * show the DEALLOCATE sent as "FE=> SimpleQuery" resp. "FE=> Parse(stmt=S_n".
     */
    static String deallocate(boolean simple) throws Exception {
        String tag = simple ? "ds" : "de";
        String stmt = PREFIX + "_" + tag;
        String stmtDropped = PREFIX + "_" + tag + "_dropped";
        String tDropped = table(tag + "_t");
        String tDriver = table(tag + "_d");

        try (Connection conn = simple ? connect("preferQueryMode", "simple") : connect(); Trace tr = new Trace()) {
            part("(a) DEALLOCATE of a SQL PREPARE'd statement", () -> {
                step("(a) PREPARE");
                conn.setAutoCommit(false);
                exec(conn, "PREPARE " + stmt + "(int) AS SELECT $1::int * 2");
                expect(queryLong(conn, "EXECUTE " + stmt + "(21)"), 42, "EXECUTE");
                step("(a) DEALLOCATE");
                deallocateAndCheck(conn, tr, simple, stmt);
                conn.commit();
                conn.setAutoCommit(true);
                expectError("EXECUTE after DEALLOCATE", "26000", "prepared statement \"" + stmt + "\" does not exist",
                        () -> queryLong(conn, "EXECUTE " + stmt + "(1)"));
                expect(queryLong(conn, "SELECT 7"), 7, "SELECT after DEALLOCATE");
            });
            part("(b) DEALLOCATE after the statement's table was dropped", () -> {
                step("(b) PREPARE");
                conn.setAutoCommit(false);
                exec(conn, "CREATE TABLE " + tDropped + " (a int)");
                exec(conn, "PREPARE " + stmtDropped + " AS SELECT count(*) FROM " + tDropped);
                expect(queryLong(conn, "EXECUTE " + stmtDropped), 0, "EXECUTE");
                exec(conn, "DROP TABLE " + tDropped);
                step("(b) DEALLOCATE");
                deallocateAndCheck(conn, tr, simple, stmtDropped);
                conn.commit();
                conn.setAutoCommit(true);
                expect(queryLong(conn, "SELECT 8"), 8, "SELECT after DEALLOCATE");
            });
        }

        String mode = simple ? "extendedForPrepared" : "extended";
        try (Connection conn = connect("preferQueryMode", mode); Trace tr = new Trace()) {
            part("(c) DEALLOCATE of pgjdbc's own named statement after its table was dropped", () -> {
                step("(c) prepare");
                exec(conn, "CREATE TABLE " + tDriver + " (a int)");
                int mark = tr.mark();
                String name;
                try (PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM " + tDriver + " WHERE a = ?")) {
                    ps.setInt(1, 1);
                    try (ResultSet rs = row(ps)) { expect(rs.getLong(1), 0, "count"); }
                    name = tr.find(mark, "^FE=> Parse\\(stmt=(S_\\d+),query=\"SELECT count", "pgjdbc's Parse of the named statement").group(1);
                }
                exec(conn, "DROP TABLE " + tDriver);
                step("(c) DEALLOCATE \"" + name + "\"");
                deallocateAndCheck(conn, tr, simple, "\"" + name + "\"");
                expect(queryLong(conn, "SELECT 9"), 9, "SELECT after DEALLOCATE");
                try (PreparedStatement ps = conn.prepareStatement("SELECT ?::int + 1")) {
                    ps.setInt(1, 9);
                    try (ResultSet rs = row(ps)) { expect(rs.getInt(1), 10, "new named statement after DEALLOCATE"); }
                }
            });
        }
        return null;
    }

    static void deallocateAndCheck(Connection conn, Trace tr, boolean simple, String name) throws Exception {
        String sql = "DEALLOCATE " + name;
        int mark = tr.mark();
        try {
            if (simple) {
                try (Statement s = conn.createStatement()) {
                    expect(s.execute(sql), false, sql + " returned a result set");
                }
            } else {
                try (PreparedStatement ps = conn.prepareStatement(sql)) {
                    expect(ps.execute(), false, sql + " returned a result set");
                }
            }
        } catch (SQLException e) {
            throw new Fail(sql + ": " + oneLine(e) + " [protocol: " + tr.summary(mark) + "]");
        }
        String q = Pattern.quote("query=\"" + sql + "\"");
        if (simple) tr.find(mark, "^FE=> SimpleQuery\\(" + q, sql + " sent as a simple query");
        else tr.find(mark, "^FE=> Parse\\(stmt=S_\\d+," + q, sql + " sent with the extended protocol");
        tr.find(mark, "^<=BE CommandStatus\\(DEALLOCATE\\)", sql + ": CommandComplete DEALLOCATE");
    }

    /** executeBatch: many Bind/Execute before one Sync, and a failing entry (23505) rolling the batch back. */
    static String pipeline() throws Exception {
        String t = table("batch");
        createTable(t, "id int PRIMARY KEY, v text NOT NULL");
        try (Connection conn = connect(); Trace tr = new Trace();
             PreparedStatement ins = conn.prepareStatement("INSERT INTO " + t + " (id, v) VALUES (?, ?)")) {
            step("batch of 20 INSERTs");
            for (int id = 1; id <= 20; id++) {
                ins.setInt(1, id);
                ins.setString(2, "v" + id);
                ins.addBatch();
            }
            int mark = tr.mark();
            expect(Arrays.toString(ins.executeBatch()), Arrays.toString(filled(20, 1)), "update counts");
            // pgjdbc may first describe the statement (Parse/Describe/Sync); the 20 Bind/Execute then share one Sync.
            List<String> sent = tr.since(mark);
            int firstBind = 0;
            while (firstBind < sent.size() && !sent.get(firstBind).startsWith("FE=> Bind")) firstBind++;
            long syncs = sent.subList(firstBind, sent.size()).stream().filter(l -> l.startsWith("FE=> Sync")).count();
            expect(syncs, 1, "Syncs after the batch's first Bind (one round trip)");
            expect(queryLong(conn, "SELECT count(*) FROM " + t), 20, "rows after batch");

            step("statement batch");
            try (Statement s = conn.createStatement()) {
                s.addBatch("UPDATE " + t + " SET v = 'u' WHERE id <= 5");
                s.addBatch("DELETE FROM " + t + " WHERE id > 18");
                s.addBatch("INSERT INTO " + t + " (id, v) VALUES (21, 'x')");
                expect(Arrays.toString(s.executeBatch()), "[5, 2, 1]", "statement batch update counts");
            }
            expect(queryLong(conn, "SELECT count(*) FROM " + t), 19, "rows after statement batch");
            expect(queryLong(conn, "SELECT count(*) FROM " + t + " WHERE v = 'u'"), 5, "updated rows");

            step("failing batch");
            for (int id : new int[] {30, 31, 1, 32}) {  // id 1 exists: the third entry fails
                ins.setInt(1, id);
                ins.setString(2, "f" + id);
                ins.addBatch();
            }
            try {
                ins.executeBatch();
                throw new Fail("batch with a duplicate key: no error");
            } catch (BatchUpdateException e) {
                expect(e.getSQLState(), "23505", "failing batch SQLSTATE (" + oneLine(e) + ")");
                // autocommit: the batch runs as one implicit transaction, so every entry is rolled back
                expect(Arrays.toString(e.getUpdateCounts()), Arrays.toString(filled(4, Statement.EXECUTE_FAILED)), "failing batch update counts");
            }
            expect(queryLong(conn, "SELECT count(*) FROM " + t + " WHERE id >= 30"), 0, "rows of the failed batch");

            step("batch in a transaction");
            conn.setAutoCommit(false);
            for (int id = 40; id < 45; id++) {
                ins.setInt(1, id);
                ins.setString(2, "t" + id);
                ins.addBatch();
            }
            expect(Arrays.toString(ins.executeBatch()), Arrays.toString(filled(5, 1)), "update counts in a transaction");
            conn.commit();
            conn.setAutoCommit(true);
            expect(queryLong(conn, "SELECT count(*) FROM " + t), 24, "rows at the end");
        }
        return null;
    }

    static int[] filled(int n, int v) {
        int[] a = new int[n];
        Arrays.fill(a, v);
        return a;
    }

    /** CopyManager: COPY FROM STDIN of 20000 rows, COPY TO STDOUT of them back, compared byte for byte. */
    static String copy() throws Exception {
        String t = table("copy");
        createTable(t, "id int NOT NULL, v text NOT NULL");
        StringBuilder b = new StringBuilder();
        for (int i = 0; i < 20000; i++) b.append(i).append('\t').append("row ").append(i).append(" \u00e9\u20ac ").append(i * 7919 % 1000).append('\n');
        String data = b.toString();
        try (Connection conn = connect()) {
            CopyManager cm = conn.unwrap(PGConnection.class).getCopyAPI();
            step("COPY FROM STDIN");
            expect(cm.copyIn("COPY " + t + " (id, v) FROM STDIN", new StringReader(data)), 20000, "rows copied in");
            expect(queryLong(conn, "SELECT count(*) FROM " + t), 20000, "rows in table");
            step("COPY TO STDOUT");
            StringWriter w = new StringWriter();
            expect(cm.copyOut("COPY (SELECT id, v FROM " + t + " ORDER BY id) TO STDOUT", w), 20000, "rows copied out");
            if (!w.toString().equals(data)) throw new Fail("COPY TO STDOUT data differs from what was copied in (" + w.toString().length() + " vs " + data.length() + " chars)");
            expect(queryLong(conn, "SELECT sum(id) FROM " + t), 19999L * 20000 / 2, "sum after COPY");
        }
        return null;
    }

    /** Statement.cancel() from another thread during pg_sleep(20): 57014 in time, connection usable after. */
    static String cancel() throws Exception {
        try (Connection conn = connect(); Statement s = conn.createStatement()) {
            AtomicReference<String> cancelError = new AtomicReference<>();
            Thread canceller = new Thread(() -> {
                try {
                    Thread.sleep(500);
                    s.cancel();
                } catch (Exception e) {
                    cancelError.set(oneLine(e));
                }
            });
            canceller.setDaemon(true);
            long t0 = System.nanoTime();
            canceller.start();
            step("pg_sleep(20) waiting for the cancel");
            try {
                s.execute("select pg_sleep(20)");
                throw new Fail("pg_sleep(20) finished without being cancelled" + (cancelError.get() == null ? "" : " (cancel: " + cancelError.get() + ")"));
            } catch (SQLException e) {
                double took = (System.nanoTime() - t0) / 1e9;
                if (!"57014".equals(e.getSQLState())) throw new Fail("want SQLSTATE 57014, got " + oneLine(e));
                if (took > 10) throw new Fail(String.format("cancelled only after %.1f s", took));
            }
            canceller.join();
            if (cancelError.get() != null) throw new Fail("Statement.cancel(): " + cancelError.get());
            step("query after the cancel");
            expect(queryLong(conn, "SELECT 57014"), 57014, "query after cancel");
        }
        return null;
    }

    /** LISTEN on one connection, NOTIFY with a payload from another, received via getNotifications(timeout). */
    static String listenNotify() throws Exception {
        String channel = PREFIX + "_chan";
        String payload = "payload " + System.nanoTime();
        try (Connection listener = connect(); Connection notifier = connect()) {
            exec(listener, "LISTEN " + channel);
            exec(notifier, "NOTIFY " + channel + ", '" + payload + "'");
            step("waiting for the notification");
            PGConnection pg = listener.unwrap(PGConnection.class);
            List<String> got = new ArrayList<>();
            long deadline = System.nanoTime() + 10_000_000_000L;
            while (System.nanoTime() < deadline) {
                PGNotification[] ns = pg.getNotifications(1000);
                for (PGNotification n : ns == null ? new PGNotification[0] : ns) {
                    if (n.getName().equals(channel) && n.getParameter().equals(payload)) {
                        exec(listener, "UNLISTEN " + channel);
                        return null;
                    }
                    got.add(n.getName() + ":" + n.getParameter());
                }
            }
            throw new Fail("no notification on " + channel + " within 10 s" + (got.isEmpty() ? "" : " (got " + got + ")"));
        }
    }

    /** A 16 MiB text parameter echoed back (16 MiB result), checked, and a 16 MiB result the server builds. */
    static String largeMessages() throws Exception {
        int size = 16 << 20;
        Random rnd = new Random(42);
        char[] cs = new char[size];
        for (int i = 0; i < size; i++) cs[i] = (char) ('a' + rnd.nextInt(26));
        String big = new String(cs);
        String md5 = HexFormat.of().formatHex(MessageDigest.getInstance("MD5").digest(big.getBytes(StandardCharsets.UTF_8)));
        try (Connection conn = connect();
             PreparedStatement echo = conn.prepareStatement("SELECT t, length(t), md5(t) FROM (SELECT ?::text AS t) s");
             PreparedStatement rep = conn.prepareStatement("SELECT repeat(?::text, ?::int)")) {
            step("16 MiB parameter");
            echo.setString(1, big);
            try (ResultSet rs = row(echo)) {
                expect(rs.getLong(2), size, "length on the server");
                expect(rs.getString(3), md5, "md5 on the server");
                String back = rs.getString(1);
                if (!big.equals(back)) throw new Fail("16 MiB value came back different (" + (back == null ? "null" : back.length() + " chars") + ")");
            }
            step("16 MiB result");
            rep.setString(1, "0123456789abcdef");
            rep.setInt(2, size / 16);
            try (ResultSet rs = row(rep)) {
                expect(rs.getString(1), "0123456789abcdef".repeat(size / 16), "repeat result");
            }
            expect(queryLong(conn, "SELECT 16"), 16, "query after large messages");
        }
        return null;
    }

    /** SQLSTATEs and messages as PostgreSQL gives them, through pgjdbc's SQLException. */
    static String errors() throws Exception {
        String t = table("err");
        String missing = PREFIX + "_missing";
        String nosuch = PREFIX + "_nosuch";
        createTable(t, "id int PRIMARY KEY");
        try (Connection conn = connect()) {
            expectError("syntax error", "42601", "syntax error at or near \"SELEC\"", () -> {
                try (PreparedStatement ps = conn.prepareStatement("SELEC ?::int")) { ps.setInt(1, 1); ps.executeQuery(); }
            });
            expectError("missing table", "42P01", "relation \"" + missing + "\" does not exist", () -> {
                try (PreparedStatement ps = conn.prepareStatement("SELECT * FROM " + missing + " WHERE a = ?")) { ps.setInt(1, 1); ps.executeQuery(); }
            });
            try (PreparedStatement div = conn.prepareStatement("SELECT 1 / ?::int")) {
                div.setInt(1, 0);
                expectError("division", "22012", "division by zero", div::executeQuery);
                try (PreparedStatement ins = conn.prepareStatement("INSERT INTO " + t + " (id) VALUES (?)")) {
                    ins.setInt(1, 1);
                    expect(ins.executeUpdate(), 1, "first insert");
                    expectError("duplicate key", "23505", "duplicate key value violates unique constraint", ins::executeUpdate);
                }
                conn.setAutoCommit(false);
                expectError("division in a transaction", "22012", "division by zero", div::executeQuery);
                expectError("statement in a failed transaction", "25P02", "current transaction is aborted", () -> queryLong(conn, "SELECT 1"));
                conn.rollback();
                conn.setAutoCommit(true);
            }
            expectError("unknown prepared statement", "26000", "prepared statement \"" + nosuch + "\" does not exist",
                    () -> queryLong(conn, "EXECUTE " + nosuch));
            expect(queryLong(conn, "SELECT 42"), 42, "query after the errors");
        }
        return null;
    }

    /** N clients running short INSERT transactions for --seconds; any failed transaction fails the check. */
    static String workload() throws Exception {
        if (seconds <= 0) throw new Skip("no --seconds given");
        String t = table("work");
        createTable(t, "client int NOT NULL, n int NOT NULL");
        AtomicLong committed = new AtomicLong(), failures = new AtomicLong();
        AtomicReference<String> firstError = new AtomicReference<>();
        long deadline = System.nanoTime() + seconds * 1_000_000_000L;
        parallel(clients, c -> {
            Connection conn = null;
            PreparedStatement ins = null;
            int n = 0;
            while (System.nanoTime() < deadline) {
                try {
                    if (conn == null) {
                        conn = connect();
                        conn.setAutoCommit(false);
                        ins = conn.prepareStatement("INSERT INTO " + t + " (client, n) VALUES (?, ?)");
                    }
                    ins.setInt(1, c);
                    ins.setInt(2, n++);
                    if (ins.executeUpdate() != 1) throw new SQLException("INSERT did not insert one row");
                    conn.commit();
                    committed.incrementAndGet();
                } catch (SQLException e) {
                    failures.incrementAndGet();
                    firstError.compareAndSet(null, "client " + c + ": " + oneLine(e));
                    if (conn != null) {
                        boolean broken;
                        try {
                            conn.rollback();
                            broken = conn.isClosed() || !conn.isValid(5);
                        } catch (SQLException e2) {
                            broken = true;
                        }
                        if (broken) {  // reconnect on the next round
                            try { conn.close(); } catch (SQLException ignored) { }
                            conn = null;
                        }
                    }
                    Thread.sleep(100);  // no retry of this transaction; don't spin on a broken target
                }
            }
            if (conn != null) conn.close();
        });
        if (failures.get() > 0)
            throw new Fail(failures.get() + " of " + (failures.get() + committed.get()) + " transactions failed; first: " + firstError.get());
        try (Connection conn = admin()) {
            expect(queryLong(conn, "SELECT count(*) FROM " + t), committed.get(), "rows after the workload");
        }
        return committed.get() + " transactions";
    }

    /** Drops the run's tables (lock_timeout so a stuck session of a hung check cannot block it for long). */
    static void cleanup() {
        if (tables.isEmpty()) return;
        Run run = new Run();
        try {
            bounded("cleanup", Math.max(timeout, 15), run, () -> {
                try (Connection conn = admin()) {
                    conn.setAutoCommit(false);
                    exec(conn, "SET LOCAL lock_timeout = '5s'");
                    exec(conn, "DROP TABLE IF EXISTS " + String.join(", ", tables));
                    conn.commit();
                }
                return null;
            });
        } catch (Exception e) {
            System.err.println("cleanup: could not drop " + tables + ": " + (e instanceof TimeoutException ? "hang" : oneLine(e)));
        }
        run.end();
    }
}
