# frozen_string_literal: true
#
# checks.rb - the driver checks (tests/drivers/README.md) for ruby-pg 1.4 with ActiveRecord 6.1.
#
# Used the way a Rails application uses them: every check gets its own connection pool
# (an abstract model class with establish_connection(adapter: "postgresql",
# prepared_statements: true, pool: clients + 2)), models on the run's tables, and N threads each
# inside connection_pool.with_connection. With prepared_statements ActiveRecord prepares every
# SELECT that has bind values under a per-connection name a1, a2, ... (Parse with a name, then
# Bind/Execute), runs INSERT/UPDATE, count/exists? and SQL without binds on the unnamed statement
# (PQsendQueryParams), runs BEGIN/COMMIT/DDL as simple queries, and sends "DEALLOCATE aN" as a
# simple query when its statement cache (statement_limit) evicts, when a statement's plan went
# stale (0A000) and when a connection is disconnected. It swallows errors of those DEALLOCATEs,
# so a small spy prepended to PG::Connection records what each one returned (and which names
# were prepared) and the checks look at that record. Raw ruby-pg (conn.raw_connection) is used
# where ActiveRecord has no API: DEALLOCATE on the extended protocol, pipeline mode, COPY,
# cancel, LISTEN/NOTIFY, naming an unknown statement.
#
# Usage: tests/drivers/activerecord/run --host H --port P --user U --password PW --dbname D
#            --clients N [--seconds S] [--timeout T] [--checks name,name...]
# (--checks runs only the named checks; the cluster harness runs `--checks workload` alone.)
# Prints "ok <check>", "FAIL <check>: <reason>" or "skip <check>: <reason>" per check, then
# "N passed, M failed"; exits 0 exactly when M is 0.

require "optparse"
require "securerandom"
require "digest"
require "pg"
require "active_record"
require "active_record/connection_adapters/postgresql_adapter"

OPTS = { seconds: 0, timeout: 30.0 }
OptionParser.new do |o|
  %i[host port user password dbname].each { |k| o.on("--#{k} V", String) { |v| OPTS[k] = v } }
  o.on("--clients N", Integer) { |v| OPTS[:clients] = v }
  o.on("--seconds S", Float) { |v| OPTS[:seconds] = v }
  o.on("--timeout T", Float) { |v| OPTS[:timeout] = v }
  o.on("--checks LIST", String) { |v| OPTS[:checks] = v.split(",").map(&:strip) }
end.parse!
missing = %i[host port user password dbname clients].reject { |k| OPTS[k] }
abort "missing --#{missing.join(', --')}" unless missing.empty?

N = OPTS[:clients]
K = 50 # iterations per client
TIMEOUT = OPTS[:timeout]
PREFIX = "pgr_activerecord_#{Process.pid}"
CONFIG = {
  adapter: "postgresql", host: OPTS[:host], port: OPTS[:port].to_i, username: OPTS[:user],
  password: OPTS[:password], database: OPTS[:dbname], prepared_statements: true,
  pool: N + 2, connect_timeout: 10, checkout_timeout: TIMEOUT
}.freeze
ActiveRecord::Base.logger = nil

# Records, per PG::Connection, the statements ActiveRecord (or a check) prepared, the result of
# every DEALLOCATE and every failed exec_prepared.
module Spy
  def spy
    @spy ||= []
  end

  def spy_of(kind)
    spy.select { |e| e[0] == kind }
  end

  def prepare(name, *rest, &blk)
    res = super
    spy << [:prepare, name]
    res
  end

  def exec_prepared(name, *rest, &blk)
    super
  rescue PG::Error => e
    spy << [:exec_prepared_error, name, sqlstate(e), e.message.lines.first.to_s.strip]
    raise
  end

  %i[query exec async_exec exec_params].each do |m|
    define_method(m) do |sql, *rest, &blk|
      return super(sql, *rest, &blk) unless sql.is_a?(String) && sql =~ /\A\s*DEALLOCATE\b/i &&
                                            !Thread.current[:spy_inside]
      begin
        Thread.current[:spy_inside] = true
        res = super(sql, *rest)
        spy << [:deallocate, sql, res.cmd_status, m]
        blk ? blk.call(res) : res
      rescue PG::Error => e
        spy << [:deallocate, sql, "ERROR #{sqlstate(e)} #{e.message.lines.first.to_s.strip}", m]
        raise
      ensure
        Thread.current[:spy_inside] = false
      end
    end
  end
end
PG::Connection.prepend(Spy)

class Skip < StandardError; end
class Failure < StandardError; end

def pg_error(e)
  while e
    return e if e.is_a?(PG::Error)
    e = e.cause
  end
  nil
end

def sqlstate(e)
  pg_error(e)&.result&.error_field(PG::PG_DIAG_SQLSTATE)
rescue StandardError
  nil
end

def one_line(e)
  state = sqlstate(e)
  "#{e.class}: #{e.message}".split.join(" ") + (state ? " [SQLSTATE #{state}]" : "")
end

def expect(got, want, what)
  raise Failure, "#{what}: got #{got.inspect[0, 200]}, want #{want.inspect[0, 200]}" unless got == want
end

# Runs the block, which must raise; returns the exception.
def expect_raise(what)
  yield
rescue StandardError => e
  e
else
  raise Failure, "#{what}: no error raised"
end

def expect_state(e, state, what, message: nil)
  got = sqlstate(e)
  raise Failure, "#{what}: got #{one_line(e)}, want SQLSTATE #{state}" unless got == state
  return unless message

  primary = pg_error(e).result.error_field(PG::PG_DIAG_MESSAGE_PRIMARY).to_s
  raise Failure, "#{what}: message #{primary.inspect} does not start with #{message.inspect}" unless primary.start_with?(message)
end

# Where the current check is, for the "hang" message.
def step(s)
  Thread.current[:check_state][:step] = s if Thread.current[:check_state]
end

def int(v) = ActiveRecord::Relation::QueryAttribute.new("n", v, ActiveRecord::Type::Integer.new)
def text(v) = ActiveRecord::Relation::QueryAttribute.new("t", v, ActiveRecord::Type::String.new)
def float(v) = ActiveRecord::Relation::QueryAttribute.new("f", v, ActiveRecord::Type::Float.new)

# A named prepared statement (ActiveRecord's select_prepared), rows as arrays.
def prepared_rows(conn, sql, *binds)
  conn.select_all(sql, "SQL", binds, preparable: true).rows
end

# The unnamed statement: select_all with SQL text and binds is not preparable.
def unnamed_rows(conn, sql, *binds)
  conn.select_all(sql, "SQL", binds).rows
end

$pools = 0
$tables = []
$models = 0

# A connection pool of its own (a Rails "database"), as an abstract model class.
def database(**extra)
  $pools += 1
  klass = Class.new(ActiveRecord::Base) { self.abstract_class = true }
  Object.const_set("Db#{$pools}", klass)
  klass.establish_connection(CONFIG.merge(extra))
  klass
end

def model(db, table)
  $models += 1
  m = Class.new(db) { self.table_name = table }
  Object.const_set("Model#{$models}", m)
  m.column_names # load the schema before threads use the model
  m
end

# Migration-style create_table; the table is dropped at the end of the run.
def create_table(db, suffix, &blk)
  name = "#{PREFIX}_#{suffix}"
  $tables << name
  db.connection_pool.with_connection { |c| c.create_table(name, &blk) }
  name
end

# Runs the block for clients 0...n at once, one thread each; raises with the first failure.
def clients(n, &blk)
  errs = Queue.new
  n.times.map do |c|
    Thread.new do
      Thread.current.report_on_exception = false
      blk.call(c)
    rescue Exception => e # rubocop:disable Lint/RescueException
      errs << [c, e]
    end
  end.each(&:join)
  return if errs.empty?

  list = []
  list << errs.pop until errs.empty?
  c, e = list.min_by(&:first)
  raise Failure, "#{list.size}/#{n} clients failed, client #{c}: #{e.is_a?(Failure) ? e.message : one_line(e)}"
end

# Checks that every DEALLOCATE the spy saw on these connections got CommandComplete DEALLOCATE.
def expect_deallocates_ok(raws, what)
  raws.each do |raw|
    raw.spy_of(:deallocate).each do |_, sql, status, _|
      raise Failure, "#{what}: #{sql.inspect} answered #{status.inspect}, want DEALLOCATE" unless status == "DEALLOCATE"
    end
  end
end

PASSED = []
FAILED = []

def check(name, timeout: TIMEOUT)
  return if OPTS[:checks] && !OPTS[:checks].include?(name)

  state = { step: "start" }
  group = ThreadGroup.new
  t = Thread.new do
    Thread.current.report_on_exception = false
    Thread.current[:check_state] = state
    r = yield
    [:ok, r]
  rescue Skip => e
    [:skip, e.message]
  rescue Failure => e
    [:fail, e.message]
  rescue Exception => e # rubocop:disable Lint/RescueException
    [:fail, one_line(e)]
  end
  group.add(t)
  if t.join(timeout)
    status, msg = t.value
  else
    status, msg = :fail, "hang: no result within #{format("%g", timeout)}s (at: #{state[:step]})"
    group.list.each(&:kill)
  end
  case status
  when :ok
    PASSED << name
    puts(msg ? "ok #{name}: #{msg}" : "ok #{name}")
  when :skip then puts "skip #{name}: #{msg}"
  else
    FAILED << name
    puts "FAIL #{name}: #{msg}"
  end
  $stdout.flush
end

# ---------------------------------------------------------------------------------------------

check("named_prepared") do
  db = database
  t = create_table(db, "named") do |tb|
    tb.integer :client, null: false
    tb.integer :i, null: false
    tb.text :v, null: false
  end
  m = model(db, t)
  clients(N) do |c|
    db.connection_pool.with_connection do |conn|
      raw = conn.raw_connection
      before = raw.spy_of(:prepare).size
      K.times do |i|
        rec = m.create!(client: c, i: i, v: "v#{c}-#{i}")
        expect(m.find(rec.id).v, "v#{c}-#{i}", "find")
        expect(m.where(client: c, i: i).pick(:v), "v#{c}-#{i}", "where.pick")
        expect(m.where(client: c).count, i + 1, "count")
        expect(prepared_rows(conn, "SELECT $1::int + $2::int + #{c} AS s", int(i), int(1000)), [[i + 1000 + c]], "select")
      end
      names = raw.spy_of(:prepare).drop(before).map(&:last)
      # find, where.pick and the select: each prepared once under aN, executed K times (6.1 runs
      # count and create! on the unnamed statement)
      expect(names.size, 3, "statements prepared (#{names.join(' ')})")
      raise Failure, "statement names #{names.inspect} are not ActiveRecord's aN" unless names.all?(/\Aa\d+\z/)
    end
  end
  db.connection_pool.disconnect!
  nil
end

check("unnamed_prepared") do
  db = database
  t = create_table(db, "unnamed") do |tb|
    tb.integer :client, null: false
    tb.integer :i, null: false
    tb.text :v, null: false
  end
  m = model(db, t)
  clients(N) do |c|
    db.connection_pool.with_connection do |conn|
      raw = conn.raw_connection
      before = raw.spy_of(:prepare).size
      K.times do |i|
        expect(unnamed_rows(conn, "SELECT $1::int * $2::int AS p, $3::text AS t", int(i), int(c + 1), text("x#{i}")),
               [[i * (c + 1), "x#{i}"]], "select")
        m.create!(client: c, i: i, v: "new") # INSERT ... RETURNING "id", unnamed
        expect(m.where(client: c, i: i).update_all(v: "u#{i}"), 1, "update_all rows")
      end
      expect(unnamed_rows(conn, "SELECT count(*) FROM #{t} WHERE client = $1 AND v LIKE 'u%'", int(c)), [[K]], "rows updated")
      expect(raw.spy_of(:prepare).size - before, 0, "named statements prepared")
    end
  end
  db.connection_pool.disconnect!
  nil
end

check("transactions") do
  db = database
  t = create_table(db, "tx") do |tb|
    tb.integer :client, null: false
    tb.integer :i, null: false
  end
  m = model(db, t)
  clients(N) do |c|
    db.connection_pool.with_connection do |conn|
      committed = 0
      K.times do |i|
        rollback = i % 3 == 2
        db.transaction do
          m.create!(client: c, i: i)
          expect(m.where(client: c).count, committed + 1, "count inside transaction #{i}")
          if i % 5 == 0
            # a nested transaction rolled back: SAVEPOINT / ROLLBACK TO SAVEPOINT
            db.transaction(requires_new: true) do
              m.create!(client: c, i: -i)
              expect(m.where(client: c).count, committed + 2, "count inside savepoint")
              raise ActiveRecord::Rollback
            end
            expect(m.where(client: c).count, committed + 1, "count after rollback to savepoint")
          end
          raise ActiveRecord::Rollback if rollback
        end
        committed += 1 unless rollback
        expect(conn.raw_connection.transaction_status, PG::PQTRANS_IDLE, "transaction status after #{i}")
        expect(m.where(client: c).count, committed, "count after #{rollback ? 'ROLLBACK' : 'COMMIT'} #{i}")
      end
      expect(m.where(client: c).pluck(:i).sort, (0...K).reject { |i| i % 3 == 2 }, "rows committed")
    end
  end
  db.connection_pool.disconnect!
  nil
end

# ActiveRecord 6.1 (postgresql_adapter.rb exec_cache): 0A000 from RevalidateCachedQuery ("cached
# plan must not change result type") outside a transaction: DEALLOCATE the statement, prepare it
# again and retry, invisible to the application. Inside a transaction: raise
# ActiveRecord::PreparedStatementCacheExpired; the transaction is rolled back and then
# (transaction.rb after_failure_actions) clear_cache! DEALLOCATEs every cached statement, so the
# application's retry of the transaction works.
check("plan_invalidated") do
  db = database
  migration = database # the ALTER TABLE comes from elsewhere (a deploy's migration)
  t = create_table(db, "plan") { |tb| tb.integer :a, null: false }
  m = model(db, t)
  notes = []
  db.connection_pool.with_connection do |conn|
    raw = conn.raw_connection
    m.create!([{ a: 1 }, { a: 2 }, { a: 3 }])
    step "outside a transaction"
    expect(m.where(a: 1).map(&:attributes), [{ "id" => 1, "a" => 1 }], "before ALTER")
    name = raw.spy_of(:prepare).last[1]
    migration.connection_pool.with_connection { |c| c.add_column(t, :b, :integer, default: 7) }
    errs = raw.spy_of(:exec_prepared_error).size
    deallocs = raw.spy_of(:deallocate).size
    rows = m.where(a: 1).map(&:attributes) # 0A000 -> DEALLOCATE, prepare again, retry
    expect(rows, [{ "id" => 1, "a" => 1, "b" => 7 }], "after ALTER, outside a transaction")
    seen = raw.spy_of(:exec_prepared_error).drop(errs)
    if seen.empty?
      notes << "outside: no 0A000"
    else
      expect(seen.map { |e| e[2] }, ["0A000"], "errors of the prepared statement")
      expect(raw.spy_of(:deallocate).drop(deallocs).map { |e| e[1] }, ["DEALLOCATE #{name}"], "DEALLOCATEs sent on 0A000")
      notes << "outside: 0A000, re-prepared"
    end

    step "inside a transaction"
    migration.connection_pool.with_connection { |c| c.add_column(t, :c, :integer, default: 8) }
    run = -> { db.transaction { m.where(a: 2).map(&:attributes) } }
    begin
      got = run.call
      notes << "inside: no 0A000"
    rescue ActiveRecord::PreparedStatementCacheExpired => e
      expect_state(e, "0A000", "inside a transaction", message: "cached plan must not change result type")
      expect(raw.transaction_status, PG::PQTRANS_IDLE, "transaction status after PreparedStatementCacheExpired")
      expect(conn.instance_variable_get(:@statements).length, 0, "statement cache after PreparedStatementCacheExpired")
      got = run.call # the application's retry
      notes << "inside: PreparedStatementCacheExpired, retried"
    end
    expect(got, [{ "id" => 2, "a" => 2, "b" => 7, "c" => 8 }], "after ALTER, inside a transaction")
    expect_deallocates_ok([raw], "plan_invalidated")
  end
  migration.connection_pool.disconnect!
  db.connection_pool.disconnect!
  notes.join(", ")
end

check("deallocate_simple") do
  # (1) statement_limit 5: ActiveRecord evicts and sends DEALLOCATE aN while running.
  step "statement_limit evictions"
  db = database(statement_limit: 5)
  texts = 20
  clients(N) do |c|
    db.connection_pool.with_connection do |conn|
      raw = conn.raw_connection
      p0 = raw.spy_of(:prepare).size
      d0 = raw.spy_of(:deallocate).size
      2.times do |pass|
        texts.times do |k|
          expect(prepared_rows(conn, "SELECT $1::int + #{k} AS s /* client #{c} */", int(pass)), [[pass + k]], "select #{k}")
        end
      end
      # a cache of 5 in insertion order: 40 prepares, 35 evictions
      expect(raw.spy_of(:prepare).size - p0, 2 * texts, "statements prepared")
      deallocs = raw.spy_of(:deallocate).drop(d0)
      expect(deallocs.size, 2 * texts - 5, "DEALLOCATEs sent")
      expect_deallocates_ok([raw], "eviction")
      gone = deallocs.last[1].split.last
      e = expect_raise("EXECUTE of deallocated #{gone}") { raw.exec_prepared(gone, [1]) }
      expect_state(e, "26000", "EXECUTE of deallocated #{gone}")
      expect(prepared_rows(conn, "SELECT $1::int * 3 AS s", int(14)), [[42]], "select after evictions")
    end
  end
  db.connection_pool.disconnect!

  # (2) statements on a table, the table dropped (a migration), then the pool disconnected:
  # every connection DEALLOCATEs its statements, those on the dropped table too.
  step "prepare on the table"
  db = database
  t = create_table(db, "dropped") do |tb|
    tb.integer :x, null: false
    tb.text :v
  end
  m = model(db, t)
  raws = Queue.new
  clients(N) do |c|
    db.connection_pool.with_connection do |conn|
      raws << conn.raw_connection
      rec = m.create!(x: c, v: "c#{c}")
      expect(m.where(x: c).pluck(:v), ["c#{c}"], "where")
      expect(m.find(rec.id).x, c, "find")
      expect(prepared_rows(conn, "SELECT count(*) FROM #{t} WHERE x = $1", int(c)), [[1]], "count")
    end
  end
  raws = Array.new(raws.size) { raws.pop }
  step "drop_table"
  db.connection_pool.with_connection { |conn| conn.drop_table(t) }
  step "connection_pool.disconnect! (DEALLOCATE of statements on the dropped table)"
  db.connection_pool.disconnect!
  dropped = raws.sum { |r| r.spy_of(:deallocate).size }
  raise Failure, "disconnect sent no DEALLOCATE" if dropped < 3 * N
  expect_deallocates_ok(raws, "disconnect after drop_table")
  step "reconnect after disconnect"
  db.connection_pool.with_connection do |conn|
    raise Failure, "the pool gave back a closed connection" if raws.include?(conn.raw_connection)
    expect(prepared_rows(conn, "SELECT $1::int + 1 AS s", int(41)), [[42]], "select after reconnect")
    expect(conn.table_exists?(t), false, "table exists after drop_table")
  end
  db.connection_pool.disconnect!
  nil
end

check("deallocate_extended") do
  # exec_params with an array (even empty) is PQsendQueryParams: Parse/Bind/Describe/Execute/Sync
  # on the unnamed statement; only a nil params argument falls back to the simple protocol.
  db = database
  t = create_table(db, "dealloc_ext") { |tb| tb.text :v }
  db.connection_pool.with_connection do |conn|
    raw = conn.raw_connection
    e = expect_raise("two statements through exec_params") { raw.exec_params("SELECT 1; SELECT 2", []) }
    expect_state(e, "42601", "two statements through exec_params (extended protocol)",
                 message: "cannot insert multiple commands into a prepared statement")
    raw.prepare("pgr_dx", "SELECT $1::int * 2")
    expect(raw.exec_prepared("pgr_dx", [21]).values, [[42]], "pgr_dx") # ActiveRecord's type map decodes int4
    expect(raw.exec_params("DEALLOCATE pgr_dx", []).cmd_status, "DEALLOCATE", "DEALLOCATE pgr_dx")
    e = expect_raise("EXECUTE after DEALLOCATE") { raw.exec_prepared("pgr_dx", [1]) }
    expect_state(e, "26000", "EXECUTE after DEALLOCATE")

    step "table dropped"
    conn.execute("INSERT INTO #{t} (v) VALUES ('row')")
    raw.prepare("pgr_dy", "SELECT v FROM #{t} WHERE id = $1")
    expect(raw.exec_prepared("pgr_dy", [1]).values, [["row"]], "pgr_dy")
    conn.drop_table(t)
    expect(raw.exec_params("DEALLOCATE pgr_dy", []).cmd_status, "DEALLOCATE", "DEALLOCATE pgr_dy after DROP TABLE")
    expect(raw.exec_params("SELECT $1::int + 1", [41]).values, [[42]], "select after")
    expect(prepared_rows(conn, "SELECT $1::text AS s", text("still usable")), [["still usable"]], "ActiveRecord after")
  end
  db.connection_pool.disconnect!
  nil
end

check("pipeline") do
  raise Skip, "libpq #{PG.library_version} has no pipeline mode" unless PG.library_version >= 140000

  db = database
  t = create_table(db, "pipeline") { |tb| tb.text :v }
  db.connection_pool.with_connection do |conn|
    raw = conn.raw_connection
    take = lambda do |what, status, value = :none|
      res = raw.get_result
      raise Failure, "#{what}: no result" unless res
      got = res.result_status
      if got != status
        msg = res.error_message.to_s.strip
        raise Failure, "#{what}: got #{res.res_status(got)} #{msg}, want #{res.res_status(status)}"
      end
      expect(res.getvalue(0, 0), value, what) unless value == :none
      unless status == PG::PGRES_PIPELINE_SYNC
        expect(raw.get_result, nil, "end of #{what}")
      end
      res
    end
    raw.enter_pipeline_mode
    raw.send_prepare("pgr_pipe", "SELECT $1::int * 10")
    3.times { |i| raw.send_query_prepared("pgr_pipe", [i + 1]) }
    raw.send_query_params("INSERT INTO #{t} (v) VALUES ($1)", ["in the failed pipeline"])
    raw.send_query_params("SELECT 1 / $1::int", [0])
    raw.send_query_params("SELECT $1::text", ["after the error"])
    raw.pipeline_sync
    step "pipeline results"
    take.call("prepare", PG::PGRES_COMMAND_OK)
    3.times { |i| take.call("execute #{i + 1}", PG::PGRES_TUPLES_OK, (i + 1) * 10) }
    take.call("insert", PG::PGRES_COMMAND_OK)
    err = take.call("1/0", PG::PGRES_FATAL_ERROR)
    expect(err.error_field(PG::PG_DIAG_SQLSTATE), "22012", "1/0 SQLSTATE")
    take.call("statement after the error", PG::PGRES_PIPELINE_ABORTED)
    take.call("sync", PG::PGRES_PIPELINE_SYNC)
    # a second batch: the named statement outlives the failed implicit transaction
    raw.send_query_prepared("pgr_pipe", [4])
    raw.send_query_params("SELECT count(*) FROM #{t}", [])
    raw.pipeline_sync
    take.call("execute 4", PG::PGRES_TUPLES_OK, 40)
    take.call("count (the insert was rolled back with the failed pipeline)", PG::PGRES_TUPLES_OK, 0)
    take.call("sync", PG::PGRES_PIPELINE_SYNC)
    raw.exit_pipeline_mode
    expect(raw.exec("DEALLOCATE pgr_pipe").cmd_status, "DEALLOCATE", "DEALLOCATE pgr_pipe")
    expect(prepared_rows(conn, "SELECT $1::int + 1 AS s", int(41)), [[42]], "ActiveRecord after")
  end
  db.connection_pool.disconnect!
  nil
end

check("copy") do
  db = database
  t = create_table(db, "copy") do |tb|
    tb.integer :i, null: false
    tb.text :v, null: false
  end
  m = model(db, t)
  rows = 20_000
  lines = Array.new(rows) { |i| "#{i}\tline #{i} \\\\ tab\\there\n" }
  db.connection_pool.with_connection do |conn|
    raw = conn.raw_connection
    res = raw.copy_data("COPY #{t} (i, v) FROM STDIN") { lines.each { |l| raw.put_copy_data(l) } }
    expect(res.cmd_tuples, rows, "COPY FROM STDIN rows")
    expect(m.count, rows, "count")
    expect(m.where(i: 7).pick(:v), "line 7 \\ tab\there", "row 7")
    out = []
    raw.copy_data("COPY (SELECT i, v FROM #{t} ORDER BY i) TO STDOUT") do
      while (line = raw.get_copy_data)
        out << line
      end
    end
    expect(out.size, rows, "COPY TO STDOUT rows")
    expect(out == lines, true, "COPY TO STDOUT equals what was copied in")
    expect(prepared_rows(conn, "SELECT count(*) FROM #{t} WHERE i >= $1", int(rows - 10)), [[10]], "ActiveRecord after")
  end
  db.connection_pool.disconnect!
  nil
end

check("cancel") do
  db = database
  db.connection_pool.with_connection do |conn|
    raw = conn.raw_connection
    canceller = Thread.new do
      sleep 0.5
      raw.cancel # nil on success, else the error text
    end
    step "pg_sleep(20), cancelled after 0.5s"
    t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    e = expect_raise("pg_sleep(20)") { prepared_rows(conn, "SELECT pg_sleep($1::float8) AS s", float(20)) }
    took = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
    cancel_error = canceller.value
    raise Failure, "cancel request failed: #{cancel_error}" if cancel_error
    raise Failure, "got #{one_line(e)}, want ActiveRecord::QueryCanceled" unless e.is_a?(ActiveRecord::QueryCanceled)
    expect_state(e, "57014", "pg_sleep(20)")
    raise Failure, "cancelled after #{took.round(1)}s, want < 10s" unless took < 10
    expect(prepared_rows(conn, "SELECT $1::int + 1 AS s", int(41)), [[42]], "same connection after cancel")
  end
  db.connection_pool.disconnect!
  nil
end

check("listen_notify") do
  db = database
  channel = "#{PREFIX}_chan"
  pool = db.connection_pool
  listener = pool.checkout
  begin
    listener.execute("LISTEN #{channel}")
    db.connection_pool.with_connection do |conn|
      prepared_rows(conn, "SELECT 1 AS sent FROM pg_notify($1, $2)", text(channel), text("payload one"))
      conn.execute("NOTIFY #{channel}, 'payload two'")
    end
    raw = listener.raw_connection
    got = []
    2.times do
      step "wait_for_notify"
      ch = raw.wait_for_notify(10) { |c, _pid, payload| got << [c, payload] }
      raise Failure, "no notification within 10s (got #{got.inspect})" unless ch
    end
    expect(got, [[channel, "payload one"], [channel, "payload two"]], "notifications")
    listener.execute("UNLISTEN *")
  ensure
    pool.checkin(listener)
  end
  pool.disconnect!
  nil
end

check("large_messages") do
  db = database
  block = SecureRandom.hex(512) # 1 KiB
  big = block * (16 * 1024)     # 16 MiB
  big[12_345, 5] = "HELLO"
  db.connection_pool.with_connection do |conn|
    rows = prepared_rows(conn, "SELECT $1::text AS echo, md5($1::text) AS m, length($1::text) AS n", text(big))
    expect(rows[0][2], big.bytesize, "length of the 16 MiB parameter")
    expect(rows[0][1], Digest::MD5.hexdigest(big), "md5 of the 16 MiB parameter")
    expect(rows[0][0] == big, true, "16 MiB echoed back")
    rows = prepared_rows(conn, "SELECT repeat($1::text, $2::int) AS r", text(block), int(16 * 1024))
    expect(rows[0][0].bytesize, 16 * 1024 * 1024, "16 MiB result size")
    expect(rows[0][0] == block * (16 * 1024), true, "16 MiB result content")
  end
  db.connection_pool.disconnect!
  nil
end

check("errors") do
  db = database
  t = create_table(db, "errors") { |tb| tb.integer :k, null: false, index: { unique: true } }
  m = model(db, t)
  missing = "#{PREFIX}_missing"
  db.connection_pool.with_connection do |conn|
    e = expect_raise("42601") { conn.execute("SELEC 1") }
    expect_state(e, "42601", "syntax error", message: 'syntax error at or near "SELEC"')
    e = expect_raise("42P01") { prepared_rows(conn, "SELECT * FROM #{missing} WHERE id = $1", int(1)) }
    expect_state(e, "42P01", "missing table", message: "relation \"#{missing}\" does not exist")
    e = expect_raise("22012") { prepared_rows(conn, "SELECT 1 / $1::int AS q", int(0)) }
    expect_state(e, "22012", "division by zero", message: "division by zero")
    m.create!(k: 1)
    e = expect_raise("23505") { m.create!(k: 1) }
    raise Failure, "duplicate key: got #{one_line(e)}, want ActiveRecord::RecordNotUnique" unless e.is_a?(ActiveRecord::RecordNotUnique)
    expect_state(e, "23505", "duplicate key", message: "duplicate key value violates unique constraint")
    e = expect_raise("25P02") do
      db.transaction do
        begin
          prepared_rows(conn, "SELECT 1 / $1::int AS q", int(0))
        rescue ActiveRecord::StatementInvalid
          nil # the application carries on in the failed transaction
        end
        prepared_rows(conn, "SELECT $1::int AS one", int(1))
      end
    end
    expect_state(e, "25P02", "statement in a failed transaction", message: "current transaction is aborted")
    expect(conn.raw_connection.transaction_status, PG::PQTRANS_IDLE, "transaction status after rollback")
    # ActiveRecord names its statements itself; ruby-pg lets an application name one.
    e = expect_raise("26000") { conn.raw_connection.exec_prepared("pgr_no_such_statement", []) }
    expect_state(e, "26000", "unknown statement", message: 'prepared statement "pgr_no_such_statement" does not exist')
    expect(prepared_rows(conn, "SELECT count(*) FROM #{t} WHERE k = $1", int(1)), [[1]], "connection usable after the errors")
  end
  db.connection_pool.disconnect!
  nil
end

check("workload", timeout: OPTS[:seconds] + TIMEOUT) do
  raise Skip, "no --seconds" unless OPTS[:seconds] > 0

  db = database
  t = create_table(db, "workload") do |tb|
    tb.integer :client, null: false
    tb.integer :n, null: false
  end
  m = model(db, t)
  deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + OPTS[:seconds]
  lock = Mutex.new
  done = failed = 0
  first = nil
  clients(N) do |c|
    k = 0
    while Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
      k += 1
      begin
        # one "request": check out a connection (ActiveRecord 6.1 verifies it, reconnecting a
        # broken one), one transaction with an INSERT and a prepared SELECT
        db.connection_pool.with_connection do
          db.transaction do
            m.create!(client: c, n: k)
            expect(m.where(client: c, n: k).pick(:n), k, "own row in its transaction") # named prepared
          end
        end
        lock.synchronize { done += 1 }
      rescue StandardError => e
        lock.synchronize do
          failed += 1
          first ||= "client #{c}: #{e.is_a?(Failure) ? e.message : one_line(e)}"
        end
        sleep 0.05
      end
    end
  end
  raise Failure, "#{failed} of #{done + failed} transactions failed, first: #{first}" if failed > 0

  rows = db.connection_pool.with_connection { m.count }
  expect(rows, done, "rows committed")
  db.connection_pool.disconnect!
  "#{done} transactions"
end

# Drop the run's tables with a pool of its own (not a check: problems go to stderr).
cleanup = Thread.new do
  Thread.current.report_on_exception = false
  db = database
  db.connection_pool.with_connection { |c| $tables.each { |t| c.drop_table(t, if_exists: true) } }
  nil
rescue StandardError => e
  one_line(e)
end
if !cleanup.join(TIMEOUT)
  warn "cleanup: dropping the tables did not finish within #{format('%g', TIMEOUT)}s"
elsif cleanup.value
  warn "cleanup: #{cleanup.value}"
end

puts "#{PASSED.size} passed, #{FAILED.size} failed"
$stdout.flush
exit!(FAILED.empty? ? 0 : 1)
