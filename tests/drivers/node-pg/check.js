'use strict'
/*
 * check.js - the driver checks of ../README.md with node-postgres (the `pg` package, version 8)
 * and pg-copy-streams, one pg.Client per simulated application client.
 *
 * How node-pg uses the protocol, which is what the checks exercise:
 * - a query config with a `name` ({name, text, values}) is a named server-side statement: Parse
 *   once per connection (node-pg remembers the names it parsed), then Bind/Describe/Execute/Sync;
 * - a query with values is Parse/Bind/Describe/Execute/Sync on the unnamed statement; without
 *   values it is a simple Query, unless `queryMode: 'extended'` (recent pg 8 releases) forces
 *   the extended protocol;
 * - `new pg.Client({pipeline: true})` (recent pg 8 releases, e.g. the pinned 8.23.1) writes
 *   queries without waiting for the previous ReadyForQuery, each with its own Sync; without it
 *   node-pg sends the next query only after ReadyForQuery, and this program falls back to a
 *   multi-statement simple Query (one implicit transaction);
 * - cancel: `new pg.Client(config).cancel(client, query)` opens a connection and sends
 *   CancelRequest with the BackendKeyData of `client`;
 * - COPY through pg-copy-streams' `from` / `to` streams.
 *
 * Usage: tests/drivers/node-pg/run --host H --port P --user U --password PW --dbname D
 *            --clients N [--seconds S] [--timeout T] [--checks name,name...]
 * (--checks runs only the named checks; the cluster harness runs `--checks workload` alone.)
 * Output: one line per check, `ok <check>`, `FAIL <check>: <reason>` or `skip <check>: <reason>`,
 * then `N passed, M failed`; exit status 0 exactly when M is 0. Tables are named
 * pgr_node_pg_<pid>_... and dropped at the end.
 */
const crypto = require('crypto')
const { Readable } = require('stream')
const { pipeline } = require('stream/promises')
const pg = require('pg')
const { from: copyFrom, to: copyTo } = require('pg-copy-streams')

// ---- arguments -------------------------------------------------------------------------------
function parseArgs(argv) {
  const a = { seconds: '0', timeout: '30' }
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z]+)(?:=(.*))?$/.exec(argv[i])
    if (!m) usage(`unexpected argument ${argv[i]}`)
    a[m[1]] = m[2] !== undefined ? m[2] : argv[++i]
    if (a[m[1]] === undefined) usage(`--${m[1]} needs a value`)
  }
  for (const k of ['host', 'port', 'user', 'password', 'dbname', 'clients']) {
    if (a[k] === undefined) usage(`--${k} is required`)
  }
  return a
}
function usage(msg) {
  console.error(`${msg}\nusage: run --host H --port P --user U --password PW --dbname D --clients N [--seconds S] [--timeout T] [--checks c1,c2]`)
  process.exit(2)
}
const args = parseArgs(process.argv.slice(2))
const N = parseInt(args.clients, 10)
const SECONDS = parseFloat(args.seconds)
const TIMEOUT = parseFloat(args.timeout)
// --checks a,b: run only those checks (the cluster harness runs `--checks workload` alone)
const ONLY = args.checks ? new Set(args.checks.split(',').map((c) => c.trim())) : null
const P = `pgr_node_pg_${process.pid}`
const CONFIG = {
  host: args.host,
  port: parseInt(args.port, 10),
  user: args.user,
  password: args.password,
  database: args.dbname,
  application_name: 'pgr_node_pg',
  connectionTimeoutMillis: 10000,
}

// ---- helpers ---------------------------------------------------------------------------------
const range = (n) => Array.from({ length: n }, (_, i) => i)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const oneLine = (e) => `${e && e.code ? e.code + ' ' : ''}${e && e.message !== undefined ? e.message : e}`.replace(/\s+/g, ' ')

function expect(got, want, what) {
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    throw new Error(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`)
  }
}

// Awaits a query expected to fail: checks the SQLSTATE and, if given, the start of the message.
async function expectError(promise, code, what, messageStart) {
  let res
  try {
    res = await promise
  } catch (e) {
    if (e.code !== code) throw new Error(`${what}: got ${oneLine(e)}, want SQLSTATE ${code}`)
    if (messageStart && !String(e.message).startsWith(messageStart)) {
      throw new Error(`${what}: message ${JSON.stringify(e.message)} does not start with ${JSON.stringify(messageStart)}`)
    }
    return e
  }
  const rows = res && res.rows ? ' ' + JSON.stringify(res.rows).slice(0, 200) : ''
  throw new Error(`${what}: succeeded (${res && res.command}${rows}), want SQLSTATE ${code}`)
}

// Opens a client belonging to `scope` (so a timed-out check can close its connections).
async function connect(scope, extra) {
  const client = new pg.Client({ ...CONFIG, ...extra })
  client.on('error', (e) => {
    client.brokenBy = e // a dead socket; queries in flight get the error too
  })
  scope.clients.push(client)
  await client.connect()
  return client
}

async function withAdmin(fn) {
  const scope = { clients: [] }
  try {
    const c = await connect(scope)
    return await fn(c)
  } finally {
    closeAll(scope)
  }
}

function closeAll(scope) {
  for (const c of scope.clients) {
    c.end().catch(() => {})
    setTimeout(() => c.connection.stream.destroy(), 2000).unref()
  }
}

const results = { passed: 0, failed: 0 }

async function runCheck(name, fn, limitSeconds = TIMEOUT) {
  if (ONLY && !ONLY.has(name)) return
  const scope = { clients: [] }
  let timer
  const hang = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`hang: no result after ${limitSeconds}s`)), limitSeconds * 1000)
  })
  try {
    const out = await Promise.race([fn(scope), hang])
    if (out && out.skip) {
      console.log(`skip ${name}: ${out.skip}`)
    } else {
      results.passed++
      console.log(`ok ${name}${out && out.detail ? ': ' + out.detail : ''}`)
    }
  } catch (e) {
    results.failed++
    console.log(`FAIL ${name}: ${oneLine(e)}`)
  } finally {
    clearTimeout(timer)
    closeAll(scope)
  }
}

// ---- checks ----------------------------------------------------------------------------------

// N clients, each with three named statements (the same names on every connection, per-client
// texts), executed K times with parameters.
async function namedPrepared(scope) {
  const K = 60
  await Promise.all(range(N).map(async (c) => {
    const db = await connect(scope)
    for (let i = 0; i < K; i++) {
      let r = await db.query({ name: 'add', text: `SELECT $1::int + $2::int + ${c} AS v`, values: [i, 1000] })
      expect(r.rows, [{ v: i + 1000 + c }], `client ${c} add`)
      r = await db.query({ name: 'concat', text: `SELECT $1::text || $2::text || '/c${c}' AS v`, values: [`a${i}`, 'b'] })
      expect(r.rows, [{ v: `a${i}b/c${c}` }], `client ${c} concat`)
      const n = (i % 4) + 1
      r = await db.query({ name: 'series', text: `SELECT g, g * $1::int AS m FROM generate_series(1, $2::int) g -- ${c}`, values: [c, n] })
      expect(r.rows, range(n).map((g) => ({ g: g + 1, m: (g + 1) * c })), `client ${c} series`)
    }
    expect(Object.keys(db.connection.parsedStatements).sort(), ['add', 'concat', 'series'], `client ${c} statements node-pg parsed`)
  }))
}

// N clients, parameterised queries on the unnamed statement.
async function unnamedPrepared(scope) {
  const K = 80
  await Promise.all(range(N).map(async (c) => {
    const db = await connect(scope)
    for (let i = 0; i < K; i++) {
      const r = await db.query(
        `SELECT $1::int * 2 AS a, $2::text || '/${c}' AS b, $3::bool AS t, $4::text IS NULL AS isnull, $5::numeric + 0.5 AS n`,
        [i, `s${i}`, i % 2 === 0, null, String(c)]
      )
      expect(r.rows, [{ a: i * 2, b: `s${i}/${c}`, t: i % 2 === 0, isnull: true, n: `${c}.5` }], `client ${c} iteration ${i}`)
    }
  }))
}

// N clients: BEGIN; INSERT; SELECT count; COMMIT (or ROLLBACK every third time), named statements.
async function transactions(scope) {
  const K = 30
  const table = `${P}_tx`
  await withAdmin((db) => db.query(`CREATE TABLE ${table} (client int NOT NULL, i int NOT NULL, v text NOT NULL)`))
  let want = 0
  await Promise.all(range(N).map(async (c) => {
    const db = await connect(scope)
    let committed = 0
    for (let i = 0; i < K; i++) {
      await db.query('BEGIN')
      const ins = await db.query({ name: 'tx_ins', text: `INSERT INTO ${table} (client, i, v) VALUES ($1, $2, $3)`, values: [c, i, `v${i}`] })
      expect(ins.rowCount, 1, `client ${c} insert rowCount`)
      const r = await db.query({ name: 'tx_count', text: `SELECT count(*)::int AS n FROM ${table} WHERE client = $1`, values: [c] })
      expect(r.rows[0].n, committed + 1, `client ${c} count inside transaction ${i}`)
      const rollback = i % 3 === 2
      const end = await db.query(rollback ? 'ROLLBACK' : 'COMMIT')
      expect(end.command, rollback ? 'ROLLBACK' : 'COMMIT', `client ${c} end of transaction ${i}`)
      if (!rollback) committed++
      const after = await db.query({ name: 'tx_count', text: `SELECT count(*)::int AS n FROM ${table} WHERE client = $1`, values: [c] })
      expect(after.rows[0].n, committed, `client ${c} count after transaction ${i}`)
    }
    want += committed
  }))
  const r = await withAdmin((db) => db.query(`SELECT count(*)::int AS n, count(DISTINCT client)::int AS c FROM ${table}`))
  expect(r.rows[0], { n: want, c: N }, 'final count')
}

// A named SELECT * whose table gains a column (a migration while the application runs).
// node-pg does not re-prepare: a statement prepared before the ALTER gets 0A000 "cached plan must
// not change result type" (PostgreSQL's RevalidateCachedQuery) on every later execution; the
// application recovers by preparing the text under a new name (or on a new connection), which
// sees the new column at once. N clients prepared the statement before the ALTER; then N new
// connections prepare the same name and text, then the old ones run theirs again and recover.
async function planInvalidated(scope) {
  const table = `${P}_plan`
  const text = `SELECT * FROM ${table} WHERE id = $1`
  const row = (c, b) => (c % 2 === 0 ? { id: 1, a: 'x', ...b } : { id: 2, a: 'y', ...b })
  await withAdmin(async (db) => {
    await db.query(`CREATE TABLE ${table} (id int PRIMARY KEY, a text NOT NULL)`)
    await db.query(`INSERT INTO ${table} VALUES (1, 'x'), (2, 'y')`)
  })
  const old = await Promise.all(range(N).map(async (c) => {
    const db = await connect(scope)
    for (let i = 0; i < 2; i++) {
      const r = await db.query({ name: 'plan_sel', text, values: [1 + (c % 2)] })
      expect(r.rows, [row(c)], `client ${c} before the ALTER`)
    }
    return db
  }))
  await withAdmin((db) => db.query(`ALTER TABLE ${table} ADD COLUMN b int NOT NULL DEFAULT 7`))
  const problems = []
  const tally = async (what, fn) => {
    const s = await Promise.allSettled(range(N).map(fn))
    const bad = s.filter((x) => x.status === 'rejected')
    if (bad.length) problems.push(`${what}: ${bad.length} of ${N} clients, first: ${oneLine(bad[0].reason)}`)
  }
  await tally('statement prepared on a new connection after the ALTER', async (c) => {
    const db = await connect(scope)
    const r = await db.query({ name: 'plan_sel', text, values: [1 + (c % 2)] })
    expect(r.rows, [row(c, { b: 7 })], 'rows')
  })
  // Directly 0A000. A pooler may run it on a server copy prepared since the ALTER (pgrouter's
  // copies are shared between clients with the same text): then it succeeds with the new
  // column, which is no error the database would not give; wrong rows or another error fail.
  await tally('statement prepared before the ALTER', async (c) => {
    try {
      const r = await old[c].query({ name: 'plan_sel', text, values: [1 + (c % 2)] })
      expect(r.rows, [row(c, { b: 7 })], 'rows, when run on a plan made since the ALTER')
    } catch (e) {
      if (!e || e.code !== '0A000') throw e
      expect(e.message, 'cached plan must not change result type', 'execution')
    }
    const r = await old[c].query('SELECT 1 AS one')
    expect(r.rows, [{ one: 1 }], 'connection after the error')
  })
  await tally('recovery (same text under a new name)', async (c) => {
    for (let i = 0; i < 2; i++) {
      const r = await old[c].query({ name: 'plan_sel_2', text, values: [1 + (c % 2)] })
      expect(r.rows, [row(c, { b: 7 })], 'rows')
    }
  })
  if (problems.length) throw new Error(problems.join('; '))
}

// Sends `DEALLOCATE name` either as a simple Query or with the extended protocol (Parse/Bind/
// Describe/Execute/Sync on the unnamed statement: queryMode 'extended').
function deallocate(db, name, extended) {
  const text = `DEALLOCATE ${name}`
  if (!extended) return db.query(text)
  return db.query({ text, queryMode: 'extended' })
}
const HAS_QUERY_MODE = new pg.Query({ text: 'SELECT 1', queryMode: 'extended' }).requiresPreparation()

async function deallocateCheck(scope, extended) {
  if (extended && !HAS_QUERY_MODE) {
    return { skip: 'this pg has no queryMode: a statement without values always goes as a simple Query' }
  }
  const kind = extended ? 'ext' : 'simple'
  const table = `${P}_dealloc_${kind}`
  const db = await connect(scope)
  // 1. a live statement: DEALLOCATE answers DEALLOCATE; node-pg still believes the name is
  //    parsed, so its next use sends only Bind and must get 26000 (the statement is gone).
  const name = `dealloc_${kind}`
  const text = 'SELECT $1::int + 1 AS v'
  let r = await db.query({ name, text, values: [41] })
  expect(r.rows, [{ v: 42 }], 'named statement')
  r = await deallocate(db, name, extended)
  expect(r.command, 'DEALLOCATE', `DEALLOCATE ${name}`)
  await expectError(db.query({ name, text, values: [1] }), '26000', 'Bind of the deallocated statement',
    `prepared statement "${name}" does not exist`)
  r = await db.query({ name: `${name}_b`, text, values: [1] })
  expect(r.rows, [{ v: 2 }], 'a new statement after the DEALLOCATE')
  // 2. ActiveRecord's disconnect: the statement's table was dropped, then DEALLOCATE.
  await db.query(`CREATE TABLE ${table} (id int NOT NULL, v text NOT NULL)`)
  await db.query(`INSERT INTO ${table} VALUES (1, 'one')`)
  const dropped = `dealloc_${kind}_dropped`
  r = await db.query({ name: dropped, text: `SELECT * FROM ${table} WHERE id = $1`, values: [1] })
  expect(r.rows, [{ id: 1, v: 'one' }], 'statement on the table')
  await db.query(`DROP TABLE ${table}`)
  r = await deallocate(db, dropped, extended)
  expect(r.command, 'DEALLOCATE', `DEALLOCATE ${dropped} after DROP TABLE`)
  r = await db.query('SELECT $1::int AS v', [5])
  expect(r.rows, [{ v: 5 }], 'connection after the DEALLOCATE')
  r = await db.query({ name: `${name}_b`, text, values: [9] })
  expect(r.rows, [{ v: 10 }], 'the other named statement after the DEALLOCATE')
  // 3. DEALLOCATE of a name never prepared: 26000 naming it, connection usable.
  await expectError(deallocate(db, `${name}_never`, extended), '26000', 'DEALLOCATE of an unknown name',
    `prepared statement "${name}_never" does not exist`)
  r = await db.query('SELECT 1 AS one')
  expect(r.rows, [{ one: 1 }], 'connection after the 26000')
}

const HAS_PIPELINE = (() => {
  const c = new pg.Client({ pipeline: true })
  return c.pipeline === true && Array.isArray(c._sentQueryQueue)
})()

// node-pg's pipeline mode: all queries written at once, each with its own Sync, so one failing
// query fails alone outside a transaction, and aborts the rest of an explicit transaction.
async function pipelineCheck(scope) {
  const table = `${P}_pipe`
  await withAdmin((db) => db.query(`CREATE TABLE ${table} (k int PRIMARY KEY)`))
  if (!HAS_PIPELINE) {
    // This pg sends the next query only after ReadyForQuery: a multi-statement simple Query is
    // its only way to send several statements in one round trip (one implicit transaction).
    const db = await connect(scope)
    const ok = await db.query(`INSERT INTO ${table} VALUES (1); SELECT 2 AS v; INSERT INTO ${table} VALUES (3)`)
    expect(ok.map((x) => x.command), ['INSERT', 'SELECT', 'INSERT'], 'multi-statement commands')
    await expectError(db.query(`INSERT INTO ${table} VALUES (4); SELECT 1/0; INSERT INTO ${table} VALUES (5)`), '22012', 'failing multi-statement')
    const r = await db.query(`SELECT array_agg(k ORDER BY k) AS ks FROM ${table}`)
    expect(r.rows[0].ks, [1, 3], 'rows after the multi-statement queries')
    return { detail: 'no pipeline mode in this pg: multi-statement simple Query' }
  }
  const db = await connect(scope, { pipeline: true })
  const ins = { name: 'pipe_ins', text: `INSERT INTO ${table} (k) VALUES ($1) RETURNING k` }
  // autocommit: five queries on the wire before any answer; the third fails alone
  const a = [
    db.query({ ...ins, values: [1] }),
    db.query({ ...ins, values: [2] }), // same name: Bind only, before the ParseComplete came back
    db.query('SELECT 1 / $1::int AS v', [0]),
    db.query('SELECT $1::int AS v', [4]),
    db.query({ ...ins, values: [3] }),
  ]
  expect(db._queryQueue.length, 0, 'queries node-pg held back instead of writing')
  let s = await Promise.allSettled(a)
  const val = (x, what) => {
    if (x.status !== 'fulfilled') throw new Error(`${what}: ${oneLine(x.reason)}`)
    return x.value.rows
  }
  expect(val(s[0], 'insert 1'), [{ k: 1 }], 'insert 1')
  expect(val(s[1], 'insert 2'), [{ k: 2 }], 'insert 2')
  if (s[2].status !== 'rejected' || s[2].reason.code !== '22012') {
    throw new Error(`division by zero: got ${s[2].status === 'rejected' ? oneLine(s[2].reason) : 'success'}, want 22012`)
  }
  expect(val(s[3], 'select 4'), [{ v: 4 }], 'select after the error')
  expect(val(s[4], 'insert 3'), [{ k: 3 }], 'insert after the error')
  // explicit transaction: a duplicate key aborts it, the next insert gets 25P02, COMMIT rolls back
  const b = [
    db.query('BEGIN'),
    db.query({ ...ins, values: [10] }),
    db.query({ ...ins, values: [10] }),
    db.query({ ...ins, values: [11] }),
    db.query('COMMIT'),
    db.query(`SELECT array_agg(k ORDER BY k) AS ks FROM ${table}`),
  ]
  s = await Promise.allSettled(b)
  expect(val(s[0], 'BEGIN') && s[0].value.command, 'BEGIN', 'BEGIN')
  expect(val(s[1], 'insert 10'), [{ k: 10 }], 'insert 10')
  const codes = [s[2], s[3]].map((x) => (x.status === 'rejected' ? x.reason.code : 'success'))
  expect(codes, ['23505', '25P02'], 'duplicate insert, then insert in the failed transaction')
  expect(val(s[4], 'COMMIT') && s[4].value.command, 'ROLLBACK', 'COMMIT of the failed transaction')
  expect(val(s[5], 'final select'), [{ ks: [1, 2, 3] }], 'rows after both pipelines')
}

// COPY FROM STDIN of ROWS rows, then COPY TO STDOUT of them.
async function copyCheck(scope) {
  const ROWS = 20000
  const table = `${P}_copy`
  const db = await connect(scope)
  await db.query(`CREATE TABLE ${table} (id int NOT NULL, t text NOT NULL)`)
  const lines = range(ROWS).map((i) => `${i}\trow ${i} \\t tab é ✓ ${'z'.repeat(i % 50)}\n`)
  const chunks = []
  for (let i = 0; i < ROWS; i += 500) chunks.push(lines.slice(i, i + 500).join(''))
  const input = chunks.join('')
  const into = db.query(copyFrom(`COPY ${table} (id, t) FROM STDIN`))
  await pipeline(Readable.from(chunks), into)
  expect(into.rowCount, ROWS, 'COPY FROM rowCount')
  const r = await db.query(`SELECT count(*)::int AS n, sum(id)::int AS s, min(t) AS t0 FROM ${table}`)
  expect(r.rows, [{ n: ROWS, s: (ROWS * (ROWS - 1)) / 2, t0: 'row 0 \t tab é ✓ ' }], 'table after COPY FROM')
  const out = db.query(copyTo(`COPY (SELECT id, t FROM ${table} ORDER BY id) TO STDOUT`))
  const got = []
  for await (const chunk of out) got.push(chunk)
  const text = Buffer.concat(got).toString('utf8')
  expect(out.rowCount, ROWS, 'COPY TO rowCount')
  if (text !== input) throw new Error(`COPY TO output (${text.length} chars) differs from the input (${input.length} chars)`)
  const after = await db.query('SELECT $1::int AS v', [3])
  expect(after.rows, [{ v: 3 }], 'query after COPY')
  await db.query(`DROP TABLE ${table}`)
}

// pg_sleep(20) cancelled from another client after 0.5 s.
async function cancelCheck(scope) {
  const db = await connect(scope)
  const query = new pg.Query('SELECT pg_sleep(20)')
  const done = new Promise((resolve) => db.query(query, (err, res) => resolve({ err, res })))
  await sleep(500)
  const canceller = new pg.Client(CONFIG)
  canceller.connection.on('error', () => {}) // the server closes the cancel connection
  const t0 = Date.now()
  canceller.cancel(db, query)
  const out = await Promise.race([done, sleep(10000).then(() => null)])
  if (out === null) throw new Error('no answer within 10 s of the cancel request')
  if (!out.err) throw new Error('pg_sleep(20) was not cancelled: it succeeded')
  if (out.err.code !== '57014') throw new Error(`got ${oneLine(out.err)}, want SQLSTATE 57014`)
  const elapsed = Date.now() - t0
  const r = await db.query('SELECT $1::int AS v', [7])
  expect(r.rows, [{ v: 7 }], 'query after the cancel')
  const r2 = await db.query('SELECT 1 AS one')
  expect(r2.rows, [{ one: 1 }], 'simple query after the cancel')
  if (elapsed > 10000) throw new Error(`cancel took ${elapsed} ms`)
}

async function listenNotify(scope) {
  const channel = `${P}_ch`
  const listener = await connect(scope)
  const notifier = await connect(scope)
  const got = []
  let wake
  listener.on('notification', (msg) => {
    got.push({ channel: msg.channel, payload: msg.payload })
    if (wake) wake()
  })
  const r = await listener.query(`LISTEN ${channel}`)
  expect(r.command, 'LISTEN', 'LISTEN')
  await notifier.query(`NOTIFY ${channel}, 'hello from NOTIFY'`)
  await notifier.query('SELECT pg_notify($1, $2)', [channel, 'hello from pg_notify'])
  await notifier.query('BEGIN')
  await notifier.query(`NOTIFY ${channel}, 'after commit'`)
  await notifier.query('COMMIT')
  const deadline = Date.now() + 10000
  while (got.length < 3 && Date.now() < deadline) {
    await Promise.race([new Promise((r2) => (wake = r2)), sleep(200)])
  }
  expect(got, [
    { channel, payload: 'hello from NOTIFY' },
    { channel, payload: 'hello from pg_notify' },
    { channel, payload: 'after commit' },
  ], 'notifications received within 10 s')
  await listener.query('UNLISTEN *')
  const after = await listener.query('SELECT 1 AS one')
  expect(after.rows, [{ one: 1 }], 'listener after UNLISTEN')
}

// A 16 MiB text parameter, a 16 MiB result, and both at once.
async function largeMessages(scope) {
  const SIZE = 16 * 1024 * 1024
  const big = crypto.randomBytes((SIZE / 4) * 3).toString('base64')
  expect(big.length, SIZE, 'local string length')
  const md5 = crypto.createHash('md5').update(big).digest('hex')
  const db = await connect(scope)
  let r = await db.query('SELECT length($1::text) AS n, md5($1::text) AS h', [big])
  expect(r.rows, [{ n: SIZE, h: md5 }], '16 MiB parameter')
  r = await db.query(`SELECT repeat('ab', ${SIZE / 2}) AS v`)
  const v = r.rows[0].v
  if (v.length !== SIZE || v !== 'ab'.repeat(SIZE / 2)) throw new Error(`16 MiB result: got ${v.length} chars, not the repeat`)
  r = await db.query({ name: 'large_echo', text: 'SELECT $1::text AS v, length($1::text) AS n', values: [big] })
  if (r.rows[0].n !== SIZE || r.rows[0].v !== big) throw new Error(`16 MiB echo: got ${r.rows[0].v.length} chars, different from what was sent`)
  r = await db.query('SELECT 1 AS one')
  expect(r.rows, [{ one: 1 }], 'query after the large messages')
}

async function errorsCheck(scope) {
  const table = `${P}_err`
  const db = await connect(scope)
  await db.query(`CREATE TABLE ${table} (id int PRIMARY KEY)`)
  await expectError(db.query('SELEC 1'), '42601', 'syntax error (simple)', 'syntax error at or near "SELEC"')
  await expectError(db.query('SELEC $1::int', [1]), '42601', 'syntax error (extended)', 'syntax error at or near "SELEC"')
  await expectError(db.query(`SELECT * FROM ${P}_nosuch`), '42P01', 'missing table (simple)', `relation "${P}_nosuch" does not exist`)
  await expectError(db.query({ name: 'err_missing', text: `SELECT * FROM ${P}_nosuch WHERE 1 = $1`, values: [1] }), '42P01',
    'missing table (named)', `relation "${P}_nosuch" does not exist`)
  await expectError(db.query('SELECT 1/0'), '22012', 'division by zero (simple)', 'division by zero')
  await expectError(db.query('SELECT 1/$1::int', [0]), '22012', 'division by zero (extended)', 'division by zero')
  const ins = { name: 'err_ins', text: `INSERT INTO ${table} (id) VALUES ($1)` }
  await db.query({ ...ins, values: [1] })
  await expectError(db.query({ ...ins, values: [1] }), '23505', 'duplicate key', 'duplicate key value violates unique constraint')
  await db.query('BEGIN')
  await db.query({ ...ins, values: [2] })
  await expectError(db.query('SELECT 1/$1::int', [0]), '22012', 'error inside the transaction')
  await expectError(db.query('SELECT 1 AS one'), '25P02', 'simple query in a failed transaction',
    'current transaction is aborted, commands ignored until end of transaction block')
  await expectError(db.query({ ...ins, values: [3] }), '25P02', 'named statement in a failed transaction')
  let r = await db.query('COMMIT')
  expect(r.command, 'ROLLBACK', 'COMMIT of the failed transaction')
  r = await db.query(`SELECT array_agg(id) AS ids FROM ${table}`)
  expect(r.rows, [{ ids: [1] }], 'rows after the rolled back transaction')
  // 26000: a statement node-pg believes it has (it prepared it under that name), deallocated
  // behind its back: node-pg sends only Bind for it.
  r = await db.query({ name: 'err_gone', text: 'SELECT $1::int AS v', values: [1] })
  expect(r.rows, [{ v: 1 }], 'named statement')
  await db.query('DEALLOCATE err_gone')
  await expectError(db.query({ name: 'err_gone', text: 'SELECT $1::int AS v', values: [2] }), '26000',
    'unknown statement', 'prepared statement "err_gone" does not exist')
  r = await db.query('SELECT $1::int AS v', [3])
  expect(r.rows, [{ v: 3 }], 'query after the errors')
  await db.query(`DROP TABLE ${table}`)
}

// N clients, BEGIN; INSERT (named); COMMIT in a loop for SECONDS; nothing retried, a broken
// connection is replaced.
async function workload(scope) {
  if (!(SECONDS > 0)) return { skip: 'no --seconds' }
  const table = `${P}_work`
  await withAdmin((db) => db.query(`CREATE TABLE ${table} (client int NOT NULL, i int NOT NULL, at timestamptz NOT NULL DEFAULT now())`))
  const end = Date.now() + SECONDS * 1000
  let committed = 0
  let failed = 0
  let firstError = null
  const fail = (c, e) => {
    failed++
    if (!firstError) firstError = `client ${c}: ${oneLine(e)}`
  }
  await Promise.all(range(N).map(async (c) => {
    let db = null
    for (let i = 0; Date.now() < end; i++) {
      if (!db || db.brokenBy || db._ended) {
        if (db) db.connection.stream.destroy()
        try {
          db = await connect(scope)
        } catch (e) {
          db = null
          fail(c, e)
          await sleep(200)
          continue
        }
      }
      try {
        await db.query('BEGIN')
        await db.query({ name: 'work_ins', text: `INSERT INTO ${table} (client, i) VALUES ($1, $2)`, values: [c, i] })
        const r = await db.query('COMMIT')
        if (r.command !== 'COMMIT') throw new Error(`COMMIT answered ${r.command}`)
        committed++
      } catch (e) {
        fail(c, e)
        if (!db.brokenBy && db.getTransactionStatus() !== 'I') await db.query('ROLLBACK').catch(() => {})
      }
    }
    if (db) await db.end().catch(() => {})
  }))
  if (failed > 0) throw new Error(`${failed} transactions failed (${committed} committed), first: ${firstError}`)
  const r = await withAdmin((db) => db.query(`SELECT count(*)::int AS n FROM ${table}`))
  expect(r.rows[0].n, committed, 'rows in the table vs transactions committed')
  return { detail: `${committed} transactions` }
}

// ---- main ------------------------------------------------------------------------------------
async function main() {
  await runCheck('named_prepared', namedPrepared)
  await runCheck('unnamed_prepared', unnamedPrepared)
  await runCheck('transactions', transactions)
  await runCheck('plan_invalidated', planInvalidated)
  await runCheck('deallocate_simple', (s) => deallocateCheck(s, false))
  await runCheck('deallocate_extended', (s) => deallocateCheck(s, true))
  await runCheck('pipeline', pipelineCheck)
  await runCheck('copy', copyCheck)
  await runCheck('cancel', cancelCheck)
  await runCheck('listen_notify', listenNotify)
  await runCheck('large_messages', largeMessages)
  await runCheck('errors', errorsCheck)
  await runCheck('workload', workload, SECONDS + TIMEOUT)
  try {
    const tables = ['tx', 'plan', 'dealloc_simple', 'dealloc_ext', 'pipe', 'copy', 'err', 'work'].map((t) => `${P}_${t}`)
    const drop = withAdmin((db) => db.query(`DROP TABLE IF EXISTS ${tables.join(', ')}`))
    await Promise.race([drop, sleep(TIMEOUT * 1000).then(() => Promise.reject(new Error('hang')))])
  } catch (e) {
    console.error(`cleanup: ${oneLine(e)}`)
  }
  console.log(`${results.passed} passed, ${results.failed} failed`)
  process.exit(results.failed === 0 ? 0 : 1)
}

process.on('unhandledRejection', (e) => console.error(`unhandled: ${oneLine(e)}`))
main().catch((e) => {
  console.log(`FAIL main: ${oneLine(e)}`)
  console.log(`${results.passed} passed, ${results.failed + 1} failed`)
  process.exit(1)
})
