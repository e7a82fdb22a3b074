//! Errors a client can cause at the protocol level, side by side (issue 24): the same message
//! sequences sent directly to the leader and through pgrouter's pooled port in transaction mode
//! (statements renamed, connections shared) must get the same answers: message types,
//! SQLSTATEs and texts, and as many ReadyForQuery.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::{BufMut, BytesMut};
use pgrouter::testing::auth::messages::{sasl_initial_response, sasl_response, AuthRequest};
use pgrouter::testing::auth::scram::{ClientCredential, ClientExchange};
use pgrouter::testing::wire;
use pgrouter_lab::Lab;

/// One step: the messages sent, answered up to as many ReadyForQuery as they hold Syncs and
/// Queries.
type Step = Vec<u8>;

fn query(sql: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    wire::query(&mut out, sql);
    out.to_vec()
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut rest = sql.as_bytes().to_vec();
    rest.extend_from_slice(&[0, 0, 0]);
    let mut out = BytesMut::new();
    wire::parse(&mut out, name, &rest);
    out.to_vec()
}

/// Bind of `statement` to `portal` with text parameters.
fn bind(portal: &str, statement: &str, params: &[&str]) -> Vec<u8> {
    let mut rest = BytesMut::new();
    rest.put_i16(0);
    rest.put_i16(params.len() as i16);
    for p in params {
        rest.put_i32(p.len() as i32);
        rest.put_slice(p.as_bytes());
    }
    rest.put_i16(0);
    let mut out = BytesMut::new();
    wire::bind(&mut out, portal.as_bytes(), statement, &rest);
    out.to_vec()
}

fn execute(portal: &str, rows: i32) -> Vec<u8> {
    let mut out = BytesMut::new();
    wire::message(&mut out, b'E', |b| {
        wire::put_cstr(b, portal.as_bytes());
        b.put_i32(rows);
    });
    out.to_vec()
}

fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    wire::describe_or_close(&mut out, b'D', kind, name.as_bytes());
    out.to_vec()
}

fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    wire::describe_or_close(&mut out, b'C', kind, name.as_bytes());
    out.to_vec()
}

fn sync() -> Vec<u8> {
    vec![b'S', 0, 0, 0, 4]
}

fn steps(parts: &[&[Vec<u8>]]) -> Vec<Step> {
    parts.iter().map(|p| p.concat()).collect()
}

/// The cases: name and steps.
fn cases() -> Vec<(&'static str, Vec<Step>)> {
    vec![
        (
            "bind of an unknown statement",
            steps(&[&[bind("", "nope", &[]), execute("", 0), sync()]]),
        ),
        (
            "describe of an unknown statement",
            steps(&[&[describe(b'S', "nope"), sync()]]),
        ),
        (
            "execute of an unknown portal",
            steps(&[&[execute("nope", 0), sync()]]),
        ),
        (
            "a statement defined twice",
            steps(&[
                &[parse("s1", "select 1"), sync()],
                &[parse("s1", "select 2"), sync()],
                &[bind("", "s1", &[]), execute("", 0), sync()],
            ]),
        ),
        (
            "a statement whose Parse failed",
            steps(&[
                &[parse("s2", "selec 1"), sync()],
                &[bind("", "s2", &[]), execute("", 0), sync()],
            ]),
        ),
        (
            "too few parameters for a named statement",
            steps(&[
                &[parse("s3", "select $1::int"), sync()],
                &[bind("", "s3", &[]), execute("", 0), sync()],
                &[bind("", "s3", &["7"]), execute("", 0), sync()],
            ]),
        ),
        (
            "a named statement run and described",
            steps(&[
                &[parse("s4", "select $1::int + 1 as n"), sync()],
                &[
                    describe(b'S', "s4"),
                    bind("p", "s4", &["41"]),
                    describe(b'P', "p"),
                    execute("p", 0),
                    sync(),
                ],
            ]),
        ),
        (
            "a failed transaction",
            steps(&[
                &[query("begin")],
                &[query("select nope")],
                &[
                    parse("", "select 1"),
                    bind("", "", &[]),
                    execute("", 0),
                    sync(),
                ],
                &[parse("s5", "select 1"), sync()],
                &[query("deallocate s5")],
                &[query("rollback")],
                &[bind("", "s5", &[]), execute("", 0), sync()],
            ]),
        ),
        (
            "deallocate, simple and extended",
            steps(&[
                &[query("deallocate nope")],
                &[parse("s6", "select 1"), sync()],
                &[query("deallocate s6")],
                &[query("deallocate s6")],
                &[parse("s7", "select 1"), sync()],
                &[
                    parse("", "deallocate s7"),
                    bind("", "", &[]),
                    execute("", 0),
                    sync(),
                ],
                &[bind("", "s7", &[]), execute("", 0), sync()],
            ]),
        ),
        (
            "close, then the name again",
            steps(&[
                &[parse("s8", "select 8"), sync()],
                &[close(b'S', "s8"), sync()],
                &[bind("", "s8", &[]), execute("", 0), sync()],
                &[close(b'S', "s8"), close(b'P', "nope"), sync()],
                &[
                    parse("s8", "select 88"),
                    bind("", "s8", &[]),
                    execute("", 0),
                    sync(),
                ],
            ]),
        ),
        (
            "an error inside a batch skips to its Sync",
            steps(&[&[
                parse("", "select 1/0"),
                bind("", "", &[]),
                execute("", 0),
                parse("s9", "select 9"),
                sync(),
                parse("", "select 2"),
                bind("", "", &[]),
                execute("", 0),
                sync(),
                bind("", "s9", &[]),
                execute("", 0),
                sync(),
            ]]),
        ),
        (
            "a portal run in parts, then gone after its Sync",
            steps(&[
                &[
                    parse("s10", "select generate_series(1, 3)"),
                    bind("c", "s10", &[]),
                    execute("c", 2),
                    execute("c", 0),
                    sync(),
                ],
                &[execute("c", 0), sync()],
            ]),
        ),
        (
            "the unnamed statement in later transactions",
            steps(&[
                &[parse("", "select $1::int * 2"), describe(b'S', ""), sync()],
                &[bind("", "", &["21"]), execute("", 0), sync()],
                &[query("select 1")],
                &[bind("", "", &["21"]), execute("", 0), sync()],
            ]),
        ),
        (
            "a named DEALLOCATE of a named statement",
            steps(&[
                &[parse("S_2", "select 2"), sync()],
                &[
                    parse("S_4", "deallocate \"S_2\""),
                    bind("", "S_4", &[]),
                    execute("", 0),
                    sync(),
                ],
                &[bind("", "S_2", &[]), execute("", 0), sync()],
            ]),
        ),
        (
            "SQL PREPARE and EXECUTE across transactions",
            steps(&[
                &[query("prepare sp(int) as select $1 * 3")],
                &[query("execute sp(5)")],
                &[query("execute sp(7)")],
                &[query("prepare sp as select 0")],
                &[query("begin")],
                &[query("execute sp(2)")],
                &[query("commit")],
                &[query("deallocate sp")],
                &[query("execute sp(1)")],
            ]),
        ),
        (
            "SQL PREPARE over a table dropped since, deallocated both ways",
            steps(&[
                &[query("create table parity_dropped (id int); prepare pd1 as select id from parity_dropped; prepare pd2 as select id from parity_dropped")],
                &[query("execute pd1")],
                &[query("drop table parity_dropped")],
                &[query("deallocate pd1")],
                &[parse("", "deallocate pd2"), bind("", "", &[]), execute("", 0), sync()],
                &[query("execute pd2")],
            ]),
        ),
        (
            "an empty query and a simple-query error",
            steps(&[&[query("")], &[query("select 1; select nope; select 3")]]),
        ),
    ]
}

pub async fn errors_side_by_side(lab: &Lab) -> Result<()> {
    let router = crate::restarts::pooled_router(lab, 17592, "pool_size = 2\n")?;
    let leader = lab.pg_port(&lab.leader()?);
    let mut differ = Vec::new();
    let mut messages = 0;
    for (name, steps) in cases() {
        let direct = run_case(leader, &steps).with_context(|| format!("{name}, directly"))?;
        let routed = run_case(router.primary, &steps)
            .with_context(|| format!("{name}, through pgrouter"))?;
        messages += direct.len();
        if direct != routed {
            differ.push(format!(
                "{name}:\n  directly:        {}\n  through pgrouter: {}",
                direct.join(" | "),
                routed.join(" | ")
            ));
        }
    }
    ensure!(differ.is_empty(), "answers differ:\n{}", differ.join("\n"));
    println!(
        "  {} cases, {messages} answers, the same directly and through pgrouter's transaction pooling",
        cases().len()
    );
    Ok(())
}

/// The answers to `steps` on a new connection to `port`, one line per message: its type, and
/// for errors the severity, SQLSTATE and text, for CommandComplete its tag.
fn run_case(port: u16, steps: &[Step]) -> Result<Vec<String>> {
    let mut conn = Raw::connect(port)?;
    let mut answers = Vec::new();
    for step in steps {
        let owed = count_ready(step);
        conn.stream.write_all(step)?;
        let mut ready = 0;
        while ready < owed {
            let (tag, body) = conn.read()?;
            match tag {
                b'Z' => {
                    ready += 1;
                    answers.push(format!("Z{}", char::from(body[0])));
                }
                b'E' => {
                    let fields = wire::error_fields(&body);
                    let f = |c| wire::field(&fields, c).unwrap_or_default().to_owned();
                    answers.push(format!("E {} {} {}", f(b'V'), f(b'C'), f(b'M')));
                }
                b'C' => answers.push(format!(
                    "C {}",
                    String::from_utf8_lossy(&body[..body.len() - 1])
                )),
                b'D' => answers.push(format!("D {}", String::from_utf8_lossy(&body[6..]))),
                b'S' | b'N' => {}
                t => answers.push(char::from(t).to_string()),
            }
        }
    }
    Ok(answers)
}

/// Syncs and Queries in `step`: the ReadyForQuery messages it is owed.
fn count_ready(step: &[u8]) -> usize {
    let mut rest = step;
    let mut n = 0;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        n += usize::from(matches!(rest[0], b'S' | b'Q'));
        rest = &rest[1 + len..];
    }
    n
}

/// A plain protocol connection logged in as postgres with SCRAM.
struct Raw {
    stream: TcpStream,
}

impl Raw {
    fn connect(port: u16) -> Result<Raw> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut conn = Raw { stream };
        let startup = wire::startup(&[("user", "postgres"), ("database", "postgres")]);
        conn.stream.write_all(&startup)?;
        let mut scram = None;
        loop {
            let (tag, body) = conn.read()?;
            match tag {
                b'R' => match AuthRequest::decode(&body).map_err(|e| anyhow::anyhow!("{e:?}"))? {
                    AuthRequest::Ok => {}
                    AuthRequest::Sasl(_) => {
                        let credential = ClientCredential::Password("postgres".into());
                        let (exchange, first) = ClientExchange::start(credential);
                        conn.stream
                            .write_all(&sasl_initial_response("SCRAM-SHA-256", &first))?;
                        scram = Some(exchange);
                    }
                    AuthRequest::SaslContinue(data) => {
                        let exchange = scram.as_mut().context("SASL out of order")?;
                        let reply = exchange
                            .respond(data)
                            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                        conn.stream.write_all(&sasl_response(&reply))?;
                    }
                    AuthRequest::SaslFinal(_) => {}
                    other => bail!("unexpected authentication request {other:?}"),
                },
                b'E' => bail!("login refused: {:?}", wire::error_fields(&body)),
                b'Z' => return Ok(conn),
                _ => {}
            }
        }
    }

    /// The next message: its type and body; an error after 20 s of silence (a hang).
    fn read(&mut self) -> Result<(u8, Vec<u8>)> {
        let mut header = [0u8; 5];
        self.stream
            .read_exact(&mut header)
            .context("no answer within 20s, or the connection closed")?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        self.stream.read_exact(&mut body)?;
        Ok((header[0], body))
    }
}
