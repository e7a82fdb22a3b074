// Command pgx-driver runs pgrouter's driver checks (tests/drivers/README.md) with Go pgx v4.
//
// It uses Debian's pgx 4.15 / pgconn 1.11 the way a Go web application does: pgxpool pools with
// MaxConns = --clients and pgx's default automatic statement cache (every parameterised query is
// prepared once per connection under a name lrupsc_<n>_<m> and then only bound and executed).
// Some checks use other documented knobs: statement_cache_capacity=2 (the LRU evicts and sends
// "deallocate lrupsc_..." as a simple query while running), statement_cache_capacity=0 (Parse of
// the unnamed statement, then Bind in a second round trip) and statement_cache_mode=describe
// (unnamed statement described once, then Parse/Bind/Execute each time). Explicit named
// statements come from Conn.Prepare (also from a pool's AfterConnect hook), lower-level protocol
// forms from the pgconn.PgConn under each pgx.Conn.
//
// Usage (run builds this file offline in GOPATH mode against /usr/share/gocode when needed):
//
//	tests/drivers/pgx/run --host H --port P --user U --password PW --dbname D --clients N [--seconds S] [--timeout T]
//
// Output: one "ok <check>" / "FAIL <check>: <reason>" / "skip <check>: <reason>" line per check,
// then "N passed, M failed"; exit status 0 exactly when M is 0. Tables are named
// pgr_pgx_<pid>_... and dropped at the end.
package main

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgconn"
	"github.com/jackc/pgx/v4"
	"github.com/jackc/pgx/v4/pgxpool"
)

var (
	host     = flag.String("host", "127.0.0.1", "server host")
	port     = flag.Int("port", 5432, "server port")
	user     = flag.String("user", "postgres", "user name")
	password = flag.String("password", "", "password")
	dbname   = flag.String("dbname", "postgres", "database name")
	clients  = flag.Int("clients", 4, "concurrent clients (pool size)")
	seconds  = flag.Int("seconds", 0, "workload duration in seconds (0: skip workload)")
	timeout  = flag.Int("timeout", 30, "seconds each check may take")
	only     = flag.String("checks", "", "comma-separated checks to run (default: all)")

	prefix = fmt.Sprintf("pgr_pgx_%d", os.Getpid())
)

const iterations = 50 // per client in the concurrent checks

type skipError struct{ reason string }

func (s skipError) Error() string { return s.reason }

// dsn is the key=value connection string with extra settings appended.
func dsn(extra string) string {
	q := func(s string) string {
		return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `'`, `\'`) + "'"
	}
	return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s sslmode=disable connect_timeout=10 %s",
		q(*host), *port, q(*user), q(*password), q(*dbname), extra)
}

// newPool opens a pgxpool with MaxConns = --clients (at least 2: cancel and listen_notify hold one
// connection while using another); extra goes into the connection string.
func newPool(ctx context.Context, extra string, afterConnect func(context.Context, *pgx.Conn) error) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn(extra))
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = int32(*clients)
	if cfg.MaxConns < 2 {
		cfg.MaxConns = 2
	}
	cfg.AfterConnect = afterConnect
	return pgxpool.ConnectConfig(ctx, cfg)
}

func table(name string) string { return prefix + "_" + name }

func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// expectState checks that err is a PostgreSQL error with SQLSTATE code whose message starts with msgPrefix.
func expectState(err error, code, msgPrefix, what string) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return fmt.Errorf("%s: want SQLSTATE %s, got %v", what, code, err)
	}
	if pgErr.Code != code {
		return fmt.Errorf("%s: want SQLSTATE %s, got %s", what, code, oneLine(err))
	}
	if !strings.HasPrefix(pgErr.Message, msgPrefix) {
		return fmt.Errorf("%s: message %q does not start with %q", what, pgErr.Message, msgPrefix)
	}
	return nil
}

func expect(got, want interface{}, what string) error {
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Errorf("%s: got %v, want %v", what, got, want)
	}
	return nil
}

// concurrently runs f for clients 0..n-1 and returns the first error (tagged with the client).
func concurrently(n int, f func(c int) error) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for c := 0; c < n; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			defer func() {
				if r := recover(); r != nil {
					errs[c] = fmt.Errorf("panic: %v", r)
				}
			}()
			errs[c] = f(c)
		}(c)
	}
	wg.Wait()
	for c, err := range errs {
		if err != nil {
			return fmt.Errorf("client %d: %w", c, err)
		}
	}
	return nil
}

func createTable(ctx context.Context, p *pgxpool.Pool, name, cols string) error {
	_, err := p.Exec(ctx, fmt.Sprintf("CREATE TABLE %s (%s)", name, cols))
	return err
}

// ---------------------------------------------------------------------------------------------

// checkNamedPrepared: statements prepared by name in AfterConnect and per client, the automatic
// statement cache (lrupsc_ names), and a cache of 2 that evicts (simple "deallocate lrupsc_...")
// on almost every query.
func checkNamedPrepared(ctx context.Context) (string, error) {
	p, err := newPool(ctx, "", func(ctx context.Context, conn *pgx.Conn) error {
		if _, err := conn.Prepare(ctx, "pgx_add", "SELECT $1::int + $2::int"); err != nil {
			return err
		}
		_, err := conn.Prepare(ctx, "pgx_concat", "SELECT $1::text || $2::text")
		return err
	})
	if err != nil {
		return "", err
	}
	defer p.Close()
	tiny, err := newPool(ctx, "statement_cache_capacity=2", nil)
	if err != nil {
		return "", err
	}
	defer tiny.Close()
	var n int64
	err = concurrently(*clients, func(c int) error {
		for i := 0; i < iterations; i++ {
			var r int
			var s string
			if err := p.QueryRow(ctx, "pgx_add", i, 1000+c).Scan(&r); err != nil {
				return fmt.Errorf("pgx_add: %w", err)
			}
			if err := expect(r, i+1000+c, "pgx_add"); err != nil {
				return err
			}
			if err := p.QueryRow(ctx, "pgx_concat", fmt.Sprint("a", i), fmt.Sprintf("/c%d", c)).Scan(&s); err != nil {
				return fmt.Errorf("pgx_concat: %w", err)
			}
			if err := expect(s, fmt.Sprintf("a%d/c%d", i, c), "pgx_concat"); err != nil {
				return err
			}
			// automatic cache: prepared as lrupsc_<n>_<m> on each connection that runs it
			if err := p.QueryRow(ctx, fmt.Sprintf("SELECT $1::int * %d", c+2), i).Scan(&r); err != nil {
				return fmt.Errorf("cached: %w", err)
			}
			if err := expect(r, i*(c+2), "cached"); err != nil {
				return err
			}
			// a per-client name prepared explicitly on whichever pool connection it gets
			conn, err := p.Acquire(ctx)
			if err != nil {
				return err
			}
			name := fmt.Sprintf("pgx_client_%d", c)
			_, err = conn.Conn().Prepare(ctx, name, fmt.Sprintf("SELECT $1::int - $2::int - %d", c))
			if err == nil {
				err = conn.QueryRow(ctx, name, i, 7).Scan(&r)
			}
			conn.Release()
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if err := expect(r, i-7-c, name); err != nil {
				return err
			}
			// tiny cache: three texts cycling through a capacity of 2, so each one is evicted
			// (DEALLOCATE lrupsc_..., simple protocol) and prepared again
			k := i % 3
			if err := tiny.QueryRow(ctx, fmt.Sprintf("SELECT $1::int + %d -- tiny %d", k, c), i).Scan(&r); err != nil {
				return fmt.Errorf("tiny cache: %w", err)
			}
			if err := expect(r, i+k, "tiny cache"); err != nil {
				return err
			}
			atomic.AddInt64(&n, 5)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if n != int64(*clients*iterations*5) {
		return "", fmt.Errorf("%d statements run, want %d", n, *clients*iterations*5)
	}
	return "", nil
}

// checkUnnamedPrepared: statement cache disabled (Parse "" + Describe, Sync; then Bind ""/Execute,
// Sync) and statement_cache_mode=describe (Parse/Bind/Execute of the unnamed statement).
func checkUnnamedPrepared(ctx context.Context) (string, error) {
	nocache, err := newPool(ctx, "statement_cache_capacity=0", nil)
	if err != nil {
		return "", err
	}
	defer nocache.Close()
	describe, err := newPool(ctx, "statement_cache_mode=describe", nil)
	if err != nil {
		return "", err
	}
	defer describe.Close()
	return "", concurrently(*clients, func(c int) error {
		for i := 0; i < iterations; i++ {
			var r int
			var s string
			if err := nocache.QueryRow(ctx, fmt.Sprintf("SELECT $1::int + $2::int + %d", c), i, 1000).Scan(&r); err != nil {
				return fmt.Errorf("no cache: %w", err)
			}
			if err := expect(r, i+1000+c, "no cache"); err != nil {
				return err
			}
			tag, err := nocache.Exec(ctx, "SELECT generate_series(1, $1::int)", i%5+1)
			if err != nil {
				return fmt.Errorf("no cache exec: %w", err)
			}
			if err := expect(tag.String(), fmt.Sprintf("SELECT %d", i%5+1), "no cache exec"); err != nil {
				return err
			}
			if err := describe.QueryRow(ctx, fmt.Sprintf("SELECT $1::text || $2::text || '/c%d'", c), fmt.Sprint("a", i), "b").Scan(&s); err != nil {
				return fmt.Errorf("describe: %w", err)
			}
			if err := expect(s, fmt.Sprintf("a%db/c%d", i, c), "describe"); err != nil {
				return err
			}
		}
		return nil
	})
}

// checkTransactions: explicit transactions with a statement prepared by name inside them and
// cached statements; every third one rolled back; counts checked inside and afterwards.
func checkTransactions(ctx context.Context) (string, error) {
	p, err := newPool(ctx, "", nil)
	if err != nil {
		return "", err
	}
	defer p.Close()
	t := table("tx")
	if err := createTable(ctx, p, t, "client int NOT NULL, i int NOT NULL, v text NOT NULL"); err != nil {
		return "", err
	}
	const k = 30
	committed := make([]int, *clients)
	err = concurrently(*clients, func(c int) error {
		for i := 0; i < k; i++ {
			tx, err := p.Begin(ctx)
			if err != nil {
				return fmt.Errorf("begin: %w", err)
			}
			err = func() error {
				if _, err := tx.Prepare(ctx, "pgx_tx_insert", fmt.Sprintf("INSERT INTO %s (client, i, v) VALUES ($1, $2, $3)", t)); err != nil {
					return fmt.Errorf("prepare: %w", err)
				}
				tag, err := tx.Exec(ctx, "pgx_tx_insert", c, i, fmt.Sprint("v", i))
				if err != nil {
					return fmt.Errorf("insert: %w", err)
				}
				if err := expect(tag.String(), "INSERT 0 1", "insert tag"); err != nil {
					return err
				}
				var n int
				if err := tx.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE client = $1", t), c).Scan(&n); err != nil {
					return fmt.Errorf("count: %w", err)
				}
				return expect(n, committed[c]+1, "count inside transaction")
			}()
			if err != nil {
				tx.Rollback(ctx)
				return err
			}
			if i%3 == 2 {
				err = tx.Rollback(ctx)
			} else {
				err = tx.Commit(ctx)
				committed[c]++
			}
			if err != nil {
				return fmt.Errorf("end transaction: %w", err)
			}
		}
		var n int
		if err := p.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE client = $1", t), c).Scan(&n); err != nil {
			return err
		}
		return expect(n, committed[c], "count after commit/rollback")
	})
	if err != nil {
		return "", err
	}
	var total int
	if err := p.QueryRow(ctx, "SELECT count(*) FROM "+t).Scan(&total); err != nil {
		return "", err
	}
	return "", expect(total, *clients*(k-k/3), "total rows")
}

// checkPlanInvalidated: pgx v4 gets 0A000 "cached plan must not change result type" once; its
// statement cache marks the statement, deallocates it before the next query and prepares it again
// under a new name, and that query sees the new column.
func checkPlanInvalidated(ctx context.Context) (string, error) {
	p, err := newPool(ctx, "", nil)
	if err != nil {
		return "", err
	}
	defer p.Close()
	t := table("plan")
	if err := createTable(ctx, p, t, "a int, b text"); err != nil {
		return "", err
	}
	if _, err := p.Exec(ctx, fmt.Sprintf("INSERT INTO %s VALUES (1, 'one')", t)); err != nil {
		return "", err
	}
	conn, err := p.Acquire(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Release()
	sql := fmt.Sprintf("SELECT * FROM %s WHERE a = $1", t)
	query := func() ([]interface{}, error) {
		rows, err := conn.Query(ctx, sql, 1)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		var vals []interface{}
		for rows.Next() {
			if vals, err = rows.Values(); err != nil {
				return nil, err
			}
		}
		return vals, rows.Err()
	}
	stmtName := func() (string, error) {
		sd, err := conn.Conn().StatementCache().Get(ctx, sql)
		if err != nil {
			return "", err
		}
		return sd.Name, nil
	}
	vals, err := query()
	if err != nil {
		return "", fmt.Errorf("first query: %w", err)
	}
	if err := expect(vals, []interface{}{int32(1), "one"}, "first query"); err != nil {
		return "", err
	}
	name1, err := stmtName()
	if err != nil {
		return "", err
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s ADD COLUMN c int DEFAULT 7", t)); err != nil {
		return "", err
	}
	_, err = query()
	if err := expectState(err, "0A000", "cached plan must not change result type", "query after ALTER TABLE"); err != nil {
		return "", err
	}
	vals, err = query()
	if err != nil {
		return "", fmt.Errorf("query after the 0A000: %w", err)
	}
	if err := expect(vals, []interface{}{int32(1), "one", int32(7)}, "query after the 0A000"); err != nil {
		return "", err
	}
	name2, err := stmtName()
	if err != nil {
		return "", err
	}
	if name1 == name2 {
		return "", fmt.Errorf("statement cache kept %s after the 0A000", name1)
	}
	return "", nil
}

// deallocateChecks runs the three DEALLOCATE cases with the given sender of "DEALLOCATE name".
func deallocateChecks(ctx context.Context, tag string, dealloc func(*pgconn.PgConn, string) (string, error)) (string, error) {
	p, err := newPool(ctx, "", nil)
	if err != nil {
		return "", err
	}
	defer p.Close()
	conn, err := p.Acquire(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Release()
	c := conn.Conn()
	var r int
	// 1. prepare, execute, DEALLOCATE; the name is then unknown (26000) and can be prepared again
	name := "pgx_dealloc_" + tag
	if _, err := c.Prepare(ctx, name, "SELECT $1::int + 1"); err != nil {
		return "", err
	}
	if err := c.QueryRow(ctx, name, 41).Scan(&r); err != nil {
		return "", err
	}
	if err := expect(r, 42, name); err != nil {
		return "", err
	}
	cmd, err := dealloc(c.PgConn(), name)
	if err != nil {
		return "", fmt.Errorf("DEALLOCATE %s: %w", name, err)
	}
	if err := expect(cmd, "DEALLOCATE", "command tag"); err != nil {
		return "", err
	}
	res := c.PgConn().ExecPrepared(ctx, name, [][]byte{[]byte("1")}, nil, nil).Read()
	if err := expectState(res.Err, "26000", fmt.Sprintf("prepared statement \"%s\" does not exist", name), "execute after DEALLOCATE"); err != nil {
		return "", err
	}
	if _, err := c.Prepare(ctx, name, "SELECT $1::int + 2"); err != nil { // pgx re-prepares: the SQL differs
		return "", fmt.Errorf("prepare again after DEALLOCATE: %w", err)
	}
	if err := c.QueryRow(ctx, name, 41).Scan(&r); err != nil {
		return "", err
	}
	if err := expect(r, 43, "re-prepared "+name); err != nil {
		return "", err
	}
	// 2. pgx's own Conn.Deallocate (always simple protocol, quoted name) of that statement
	if err := c.Deallocate(ctx, name); err != nil {
		return "", fmt.Errorf("Conn.Deallocate: %w", err)
	}
	res = c.PgConn().ExecPrepared(ctx, name, [][]byte{[]byte("1")}, nil, nil).Read()
	if err := expectState(res.Err, "26000", "prepared statement", "execute after Conn.Deallocate"); err != nil {
		return "", err
	}
	// 3. a statement reading a table; DROP TABLE; DEALLOCATE (ActiveRecord's disconnect)
	t := table("dealloc_" + tag)
	if _, err := c.Exec(ctx, fmt.Sprintf("CREATE TABLE %s (a int)", t)); err != nil {
		return "", err
	}
	dropped := name + "_dropped"
	if _, err := c.Prepare(ctx, dropped, fmt.Sprintf("SELECT * FROM %s WHERE a = $1", t)); err != nil {
		return "", err
	}
	rows, _ := c.Query(ctx, dropped, 1)
	rows.Close()
	if rows.Err() != nil {
		return "", fmt.Errorf("%s: %w", dropped, rows.Err())
	}
	if _, err := c.Exec(ctx, "DROP TABLE "+t); err != nil {
		return "", err
	}
	cmd, err = dealloc(c.PgConn(), dropped)
	if err != nil {
		return "", fmt.Errorf("DEALLOCATE after DROP TABLE: %w", err)
	}
	if err := expect(cmd, "DEALLOCATE", "command tag after DROP TABLE"); err != nil {
		return "", err
	}
	if err := c.QueryRow(ctx, "SELECT $1::int * 2", 21).Scan(&r); err != nil {
		return "", fmt.Errorf("query after DEALLOCATE: %w", err)
	}
	return "", expect(r, 42, "query after DEALLOCATE")
}

func checkDeallocateSimple(ctx context.Context) (string, error) {
	return deallocateChecks(ctx, "s", func(pc *pgconn.PgConn, name string) (string, error) {
		results, err := pc.Exec(ctx, "DEALLOCATE "+name).ReadAll()
		if err != nil {
			return "", err
		}
		if len(results) != 1 {
			return "", fmt.Errorf("%d results", len(results))
		}
		return results[0].CommandTag.String(), results[0].Err
	})
}

func checkDeallocateExtended(ctx context.Context) (string, error) {
	// pgconn.ExecParams: Parse (unnamed) / Bind / Describe portal / Execute / Sync
	return deallocateChecks(ctx, "e", func(pc *pgconn.PgConn, name string) (string, error) {
		res := pc.ExecParams(ctx, "DEALLOCATE "+name, nil, nil, nil, nil).Read()
		return res.CommandTag.String(), res.Err
	})
}

// checkPipeline: pgx.Batch (statements prepared first, then all Bind/Execute in one round trip
// with one Sync); a failing statement makes the rest fail and rolls back the implicit transaction.
func checkPipeline(ctx context.Context) (string, error) {
	p, err := newPool(ctx, "", func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Prepare(ctx, "pgx_batch_named", "SELECT $1::int * 10")
		return err
	})
	if err != nil {
		return "", err
	}
	defer p.Close()
	t := table("batch")
	if err := createTable(ctx, p, t, "n int NOT NULL"); err != nil {
		return "", err
	}
	ins := fmt.Sprintf("INSERT INTO %s (n) VALUES ($1)", t)
	var b pgx.Batch
	b.Queue(ins, 1)
	b.Queue(ins, 2)
	b.Queue("SELECT count(*) FROM " + t)
	b.Queue("SELECT $1::text || 'x'", "a")
	b.Queue("pgx_batch_named", 4)
	br := p.SendBatch(ctx, &b)
	for i := 0; i < 2; i++ {
		tag, err := br.Exec()
		if err != nil {
			br.Close()
			return "", fmt.Errorf("batch 1 insert %d: %w", i+1, err)
		}
		if err := expect(tag.String(), "INSERT 0 1", "batch 1 insert tag"); err != nil {
			br.Close()
			return "", err
		}
	}
	var n int
	var s string
	var m int
	if err := br.QueryRow().Scan(&n); err != nil {
		br.Close()
		return "", fmt.Errorf("batch 1 count: %w", err)
	}
	if err := br.QueryRow().Scan(&s); err != nil {
		br.Close()
		return "", fmt.Errorf("batch 1 concat: %w", err)
	}
	if err := br.QueryRow().Scan(&m); err != nil {
		br.Close()
		return "", fmt.Errorf("batch 1 named: %w", err)
	}
	if err := br.Close(); err != nil {
		return "", fmt.Errorf("batch 1 close: %w", err)
	}
	if err := expect([]interface{}{n, s, m}, []interface{}{2, "ax", 40}, "batch 1 results"); err != nil {
		return "", err
	}

	b = pgx.Batch{}
	b.Queue(ins, 3)
	b.Queue("SELECT 1 / $1::int", 0)
	b.Queue("SELECT $1::int", 5)
	br = p.SendBatch(ctx, &b)
	if _, err := br.Exec(); err != nil {
		br.Close()
		return "", fmt.Errorf("batch 2 insert: %w", err)
	}
	err = br.QueryRow().Scan(&n)
	if err := expectState(err, "22012", "division by zero", "batch 2 second statement"); err != nil {
		br.Close()
		return "", err
	}
	err = br.QueryRow().Scan(&n)
	if err == nil {
		br.Close()
		return "", fmt.Errorf("batch 2 third statement returned %d after the failed one", n)
	}
	if err := expectState(err, "22012", "division by zero", "batch 2 third statement"); err != nil {
		br.Close()
		return "", err
	}
	if err := br.Close(); err != nil {
		if err := expectState(err, "22012", "division by zero", "batch 2 close"); err != nil {
			return "", err
		}
	}
	if err := p.QueryRow(ctx, "SELECT count(*) FROM "+t).Scan(&n); err != nil {
		return "", fmt.Errorf("after batch 2: %w", err)
	}
	return "", expect(n, 2, "rows after the failed batch (its insert rolled back)")
}

// checkCopy: CopyFrom (binary COPY FROM STDIN), pgconn.CopyFrom (text) and pgconn.CopyTo.
func checkCopy(ctx context.Context) (string, error) {
	p, err := newPool(ctx, "", nil)
	if err != nil {
		return "", err
	}
	defer p.Close()
	t := table("copy")
	if err := createTable(ctx, p, t, "id int PRIMARY KEY, t text NOT NULL"); err != nil {
		return "", err
	}
	const n1, n2 = 20000, 5000
	rows := make([][]interface{}, n1)
	var want bytes.Buffer
	val := func(i int) string { return fmt.Sprintf("row %d\tß\\", i) }
	for i := 0; i < n1; i++ {
		rows[i] = []interface{}{i, val(i)}
	}
	got, err := p.CopyFrom(ctx, pgx.Identifier{t}, []string{"id", "t"}, pgx.CopyFromRows(rows))
	if err != nil {
		return "", fmt.Errorf("CopyFrom: %w", err)
	}
	if err := expect(got, n1, "CopyFrom rows"); err != nil {
		return "", err
	}
	var text bytes.Buffer
	for i := n1; i < n1+n2; i++ {
		fmt.Fprintf(&text, "%d\trow %d\\tß\\\\\n", i, i)
	}
	for i := 0; i < n1+n2; i++ {
		fmt.Fprintf(&want, "%d\t%s\n", i, strings.ReplaceAll(strings.ReplaceAll(val(i), `\`, `\\`), "\t", `\t`))
	}
	conn, err := p.Acquire(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Release()
	pc := conn.Conn().PgConn()
	tag, err := pc.CopyFrom(ctx, &text, fmt.Sprintf("COPY %s (id, t) FROM STDIN", t))
	if err != nil {
		return "", fmt.Errorf("pgconn.CopyFrom: %w", err)
	}
	if err := expect(tag.String(), fmt.Sprintf("COPY %d", n2), "COPY FROM tag"); err != nil {
		return "", err
	}
	var out bytes.Buffer
	tag, err = pc.CopyTo(ctx, &out, fmt.Sprintf("COPY (SELECT id, t FROM %s ORDER BY id) TO STDOUT", t))
	if err != nil {
		return "", fmt.Errorf("pgconn.CopyTo: %w", err)
	}
	if err := expect(tag.String(), fmt.Sprintf("COPY %d", n1+n2), "COPY TO tag"); err != nil {
		return "", err
	}
	if !bytes.Equal(out.Bytes(), want.Bytes()) {
		return "", fmt.Errorf("COPY TO output differs: %d bytes, want %d", out.Len(), want.Len())
	}
	var r int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+t+" WHERE id >= $1", 0).Scan(&r); err != nil {
		return "", fmt.Errorf("query after COPY: %w", err)
	}
	return "", expect(r, n1+n2, "rows after COPY")
}

// checkCancel: PgConn.CancelRequest from another goroutine gives 57014 and the connection goes on;
// cancelling the context of a query makes pgconn (1.11) send a CancelRequest and close the
// connection, and the query stops on the server.
func checkCancel(ctx context.Context) (string, error) {
	p, err := newPool(ctx, "", nil)
	if err != nil {
		return "", err
	}
	defer p.Close()
	conn, err := p.Acquire(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Release()
	pc := conn.Conn().PgConn()
	for _, form := range []string{"simple", "extended"} {
		go func() {
			time.Sleep(500 * time.Millisecond)
			pc.CancelRequest(ctx)
		}()
		start := time.Now()
		if form == "simple" {
			_, err = conn.Exec(ctx, "select pg_sleep(20)")
		} else {
			_, err = conn.Exec(ctx, "select pg_sleep($1)", 20)
		}
		if err := expectState(err, "57014", "canceling statement due to user request", "CancelRequest, "+form+" query"); err != nil {
			return "", err
		}
		if d := time.Since(start); d > 10*time.Second {
			return "", fmt.Errorf("%s query cancelled after %v", form, d)
		}
		var r int
		if err := conn.QueryRow(ctx, "SELECT $1::int + 1", 41).Scan(&r); err != nil {
			return "", fmt.Errorf("same connection after the cancel: %w", err)
		}
		if err := expect(r, 42, "same connection after the cancel"); err != nil {
			return "", err
		}
	}

	// context cancellation
	conn2, err := p.Acquire(ctx)
	if err != nil {
		return "", err
	}
	marker := prefix + "_ctx_cancel"
	qctx, cancel := context.WithCancel(ctx)
	go func() {
		time.Sleep(500 * time.Millisecond)
		cancel()
	}()
	start := time.Now()
	_, err = conn2.Exec(qctx, fmt.Sprintf("select pg_sleep(20) /* %s */", marker))
	cancel()
	closed, pc2 := conn2.Conn().IsClosed(), conn2.Conn().PgConn()
	conn2.Release()
	if !errors.Is(err, context.Canceled) || !pgconn.Timeout(err) {
		return "", fmt.Errorf("context cancel: want a timeout error wrapping context.Canceled, got %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		return "", fmt.Errorf("context cancel returned after %v", d)
	}
	if !closed {
		return "", fmt.Errorf("context cancel: pgx kept the connection open")
	}
	select {
	case <-pc2.CleanupDone():
	case <-time.After(10 * time.Second):
		return "", fmt.Errorf("context cancel: connection cleanup (CancelRequest, Terminate) took over 10s")
	}
	var active int
	for i := 0; i < 50; i++ {
		err := p.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND strpos(query, $1) > 0", marker).Scan(&active)
		if err != nil {
			return "", fmt.Errorf("after context cancel: %w", err)
		}
		if active == 0 {
			return "", nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "", fmt.Errorf("context cancel: the pg_sleep(20) still runs on the server 5s later")
}

// checkListenNotify: LISTEN on a held connection, pg_notify from another, WaitForNotification.
func checkListenNotify(ctx context.Context) (string, error) {
	p, err := newPool(ctx, "", nil)
	if err != nil {
		return "", err
	}
	defer p.Close()
	listener, err := p.Acquire(ctx)
	if err != nil {
		return "", err
	}
	defer listener.Release()
	channel := prefix + "_chan"
	if _, err := listener.Exec(ctx, "LISTEN "+channel); err != nil {
		return "", err
	}
	for i := 0; i < 3; i++ {
		payload := fmt.Sprintf("hello %d from pgx", i)
		if _, err := p.Exec(ctx, "SELECT pg_notify($1, $2)", channel, payload); err != nil {
			return "", fmt.Errorf("notify: %w", err)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		n, err := listener.Conn().WaitForNotification(wctx)
		cancel()
		if err != nil {
			return "", fmt.Errorf("notification %d not received: %w", i, err)
		}
		if err := expect(n.Channel+"|"+n.Payload, channel+"|"+payload, "notification"); err != nil {
			return "", err
		}
	}
	if _, err := listener.Exec(ctx, "UNLISTEN "+channel); err != nil {
		return "", err
	}
	return "", nil
}

// checkLargeMessages: a 16 MiB text parameter echoed back, and its md5 computed by the server.
func checkLargeMessages(ctx context.Context) (string, error) {
	p, err := newPool(ctx, "", nil)
	if err != nil {
		return "", err
	}
	defer p.Close()
	const size = 16 << 20
	var sb strings.Builder
	for sb.Len() < size {
		fmt.Fprintf(&sb, "%08d:pgx-large-message;", sb.Len())
	}
	s := sb.String()[:size]
	var got string
	if err := p.QueryRow(ctx, "SELECT $1::text", s).Scan(&got); err != nil {
		return "", err
	}
	if got != s {
		return "", fmt.Errorf("echo: got %d bytes back, want the %d sent", len(got), len(s))
	}
	var n int
	var sum string
	if err := p.QueryRow(ctx, "SELECT length($1::text), md5($1::text)", s).Scan(&n, &sum); err != nil {
		return "", err
	}
	h := md5.Sum([]byte(s))
	return "", expect(fmt.Sprint(n, " ", sum), fmt.Sprint(size, " ", hex.EncodeToString(h[:])), "length and md5")
}

// checkErrors: SQLSTATEs and messages as PostgreSQL sends them.
func checkErrors(ctx context.Context) (string, error) {
	p, err := newPool(ctx, "", nil)
	if err != nil {
		return "", err
	}
	defer p.Close()
	_, err = p.Exec(ctx, "SELEC 1")
	if err := expectState(err, "42601", `syntax error at or near "SELEC"`, "syntax error"); err != nil {
		return "", err
	}
	missing := table("missing")
	_, err = p.Exec(ctx, fmt.Sprintf("SELECT * FROM %s WHERE 1 = $1", missing), 1)
	if err := expectState(err, "42P01", fmt.Sprintf(`relation "%s" does not exist`, missing), "missing table"); err != nil {
		return "", err
	}
	var n int
	err = p.QueryRow(ctx, "SELECT 1 / $1::int", 0).Scan(&n)
	if err := expectState(err, "22012", "division by zero", "division by zero"); err != nil {
		return "", err
	}
	t := table("unique")
	if err := createTable(ctx, p, t, "id int PRIMARY KEY"); err != nil {
		return "", err
	}
	ins := fmt.Sprintf("INSERT INTO %s VALUES ($1)", t)
	if _, err := p.Exec(ctx, ins, 1); err != nil {
		return "", err
	}
	_, err = p.Exec(ctx, ins, 1)
	if err := expectState(err, "23505", "duplicate key value violates unique constraint", "duplicate key"); err != nil {
		return "", err
	}
	tx, err := p.Begin(ctx)
	if err != nil {
		return "", err
	}
	defer tx.Rollback(ctx)
	_, err = tx.Exec(ctx, ins, 1)
	if err := expectState(err, "23505", "duplicate key value", "duplicate key in transaction"); err != nil {
		return "", err
	}
	_, err = tx.Exec(ctx, "SELECT 1")
	if err := expectState(err, "25P02", "current transaction is aborted", "failed transaction, simple query"); err != nil {
		return "", err
	}
	err = tx.QueryRow(ctx, "SELECT $1::int", 1).Scan(&n)
	if err := expectState(err, "25P02", "current transaction is aborted", "failed transaction, cached statement"); err != nil {
		return "", err
	}
	if err := tx.Rollback(ctx); err != nil {
		return "", err
	}
	conn, err := p.Acquire(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Release()
	res := conn.Conn().PgConn().ExecPrepared(ctx, "pgx_no_such_statement", nil, nil, nil).Read()
	if err := expectState(res.Err, "26000", `prepared statement "pgx_no_such_statement" does not exist`, "unknown statement"); err != nil {
		return "", err
	}
	if err := conn.QueryRow(ctx, "SELECT $1::int", 5).Scan(&n); err != nil {
		return "", fmt.Errorf("after the errors: %w", err)
	}
	return "", expect(n, 5, "after the errors")
}

// checkWorkload: N clients, short INSERT transactions for --seconds, no retries.
func checkWorkload(ctx context.Context) (string, error) {
	if *seconds <= 0 {
		return "", skipError{"no --seconds"}
	}
	p, err := newPool(ctx, "", nil)
	if err != nil {
		return "", err
	}
	defer p.Close()
	t := table("workload")
	if err := createTable(ctx, p, t, "client int NOT NULL, i int NOT NULL"); err != nil {
		return "", err
	}
	ins := fmt.Sprintf("INSERT INTO %s (client, i) VALUES ($1, $2)", t)
	var committed, failed int64
	var firstErr atomic.Value
	end := time.Now().Add(time.Duration(*seconds) * time.Second)
	concurrently(*clients, func(c int) error {
		for i := 0; time.Now().Before(end) && ctx.Err() == nil; i++ {
			tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := p.BeginFunc(tctx, func(tx pgx.Tx) error {
				_, err := tx.Exec(tctx, ins, c, i)
				return err
			})
			cancel()
			if err != nil {
				if atomic.AddInt64(&failed, 1) == 1 {
					firstErr.Store(oneLine(err))
				}
				time.Sleep(50 * time.Millisecond)
			} else {
				atomic.AddInt64(&committed, 1)
			}
		}
		return nil
	})
	if failed > 0 {
		return "", fmt.Errorf("%d of %d transactions failed, first: %v", failed, failed+committed, firstErr.Load())
	}
	var n int64
	if err := p.QueryRow(ctx, "SELECT count(*) FROM "+t).Scan(&n); err != nil {
		return "", fmt.Errorf("count: %w", err)
	}
	if n != committed {
		return "", fmt.Errorf("%d rows for %d committed transactions", n, committed)
	}
	return fmt.Sprintf("%d transactions", committed), nil
}

// ---------------------------------------------------------------------------------------------

func cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn(""))
	if err != nil {
		fmt.Fprintln(os.Stderr, "cleanup:", oneLine(err))
		return
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT tablename FROM pg_tables WHERE starts_with(tablename, $1)", prefix+"_")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cleanup:", oneLine(err))
		return
	}
	var tables []string
	for rows.Next() {
		var t string
		if rows.Scan(&t) == nil {
			tables = append(tables, t)
		}
	}
	rows.Close()
	for _, t := range tables {
		if _, err := conn.Exec(ctx, "DROP TABLE IF EXISTS "+t); err != nil {
			fmt.Fprintln(os.Stderr, "cleanup:", oneLine(err))
		}
	}
}

func main() {
	flag.Parse()
	checks := []struct {
		name string
		fn   func(context.Context) (string, error)
	}{
		{"named_prepared", checkNamedPrepared},
		{"unnamed_prepared", checkUnnamedPrepared},
		{"transactions", checkTransactions},
		{"plan_invalidated", checkPlanInvalidated},
		{"deallocate_simple", checkDeallocateSimple},
		{"deallocate_extended", checkDeallocateExtended},
		{"pipeline", checkPipeline},
		{"copy", checkCopy},
		{"cancel", checkCancel},
		{"listen_notify", checkListenNotify},
		{"large_messages", checkLargeMessages},
		{"errors", checkErrors},
		{"workload", checkWorkload},
	}
	passed, failed := 0, 0
	selected := map[string]bool{}
	for _, name := range strings.Split(*only, ",") {
		if name != "" {
			selected[name] = true
		}
	}
	for _, ch := range checks {
		if len(selected) > 0 && !selected[ch.name] {
			continue
		}
		limit := time.Duration(*timeout) * time.Second
		if ch.name == "workload" {
			limit += time.Duration(*seconds) * time.Second
		}
		ctx, cancel := context.WithTimeout(context.Background(), limit)
		type result struct {
			note string
			err  error
		}
		done := make(chan result, 1)
		go func() {
			defer func() {
				if r := recover(); r != nil {
					done <- result{"", fmt.Errorf("panic: %v", r)}
				}
			}()
			note, err := ch.fn(ctx)
			done <- result{note, err}
		}()
		var r result
		select {
		case r = <-done:
			if r.err != nil && ctx.Err() != nil {
				r.err = fmt.Errorf("hang: not done within %v: %w", limit, r.err)
			}
		case <-time.After(limit + 5*time.Second):
			r.err = fmt.Errorf("hang: not done within %v", limit)
		}
		cancel()
		var skip skipError
		switch {
		case errors.As(r.err, &skip):
			fmt.Printf("skip %s: %s\n", ch.name, skip.reason)
		case r.err != nil:
			failed++
			fmt.Printf("FAIL %s: %s\n", ch.name, oneLine(r.err))
		case r.note != "":
			passed++
			fmt.Printf("ok %s: %s\n", ch.name, r.note)
		default:
			passed++
			fmt.Printf("ok %s\n", ch.name)
		}
	}
	cleanup()
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
