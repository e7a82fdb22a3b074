//! One pooled server connection: opening it (startup and authentication as the client's user),
//! and what pgrouter knows about it (parameters, cancel key, statements prepared on it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::stream::Stream;
use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::time::{timeout, Instant};

use super::conn_state::ConnState;
use super::tracked::Tracked;
use crate::auth::md5::{md5_response, md5_secret};
use crate::auth::messages::{password_message, sasl_initial_response, sasl_response, AuthRequest};
use crate::auth::scram::{ClientCredential, ClientExchange};
use crate::auth::secret::ScramKeys;
use crate::protocol::limits::MAX_WHOLE_MESSAGE;
use crate::protocol::reader::{MessageReader, ReadError};
use crate::protocol::startup::CancelKey;
use crate::protocol::wire::{self, Reader};

/// How pgrouter proves itself to PostgreSQL as a user.
#[derive(Clone)]
pub enum Login {
    /// The plain password from the auth file.
    Password(String),
    /// md5(password || user), from an md5 secret.
    Md5([u8; 16]),
    /// SCRAM keys: recovered from a client's proof against a SCRAM secret, or derived once
    /// from a plain password.
    Scram(ScramKeys),
    /// Only what pg_hba `trust` accepts: an md5 secret with a server asking SCRAM, say.
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("login to {addr} timed out")]
    Timeout { addr: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("server refused the login: {code} {message}")]
    Refused { code: String, message: String },
    #[error("cannot authenticate to the server: {0}")]
    Auth(String),
    #[error("server broke the protocol: {0}")]
    Protocol(String),
}

impl From<ReadError> for ServerError {
    fn from(e: ReadError) -> ServerError {
        match e {
            ReadError::BadLength(e) => ServerError::Protocol(e.to_string()),
            ReadError::Eof => ServerError::Io(std::io::ErrorKind::UnexpectedEof.into()),
            ReadError::Io(e) => ServerError::Io(e),
        }
    }
}

impl ServerError {
    /// The server's ErrorResponse, by its SQLSTATE and message.
    fn refused(fields: &[(u8, String)]) -> ServerError {
        let field = |code| wire::field(fields, code).unwrap_or_default().to_owned();
        ServerError::Refused {
            code: field(b'C'),
            message: field(b'M'),
        }
    }
}

pub struct ServerConn {
    pub stream: Stream,
    pub id: u64,
    pub member: String,
    pub addr: Arc<str>,
    pub key: CancelKey,
    /// ParameterStatus values at login: the defaults a client that sets nothing gets.
    pub initial: Arc<HashMap<String, String>>,
    /// What clients' conversations left on it: parameters, statements.
    pub state: ConnState,
    pub created: Instant,
    pub last_used: Instant,
    /// The worker thread whose event loop the socket is registered with (`crate::shards`).
    pub home: usize,
    /// Lent to the client holding the connection.
    pub buffers: Buffers,
    /// Its place in the member's connection budgets (`budget`), given back once it closed.
    pub admission: super::budget::Admission,
}

/// Buffers a server connection lends to the client holding it: they keep their capacity from
/// one transaction to the next, so running one allocates nothing, while an idle client holds
/// only its own small input buffer.
#[derive(Default)]
pub struct Buffers {
    pub from_client: BytesMut,
    pub from_server: BytesMut,
    pub to_server: BytesMut,
    pub to_client: BytesMut,
}

/// What a login produced besides the connection: SCRAM keys worth caching.
pub struct Opened {
    pub conn: ServerConn,
    pub derived: Option<ScramKeys>,
}

/// Where a new server connection goes, and as whom.
pub struct Endpoint<'a> {
    /// The number it will carry in the console and logs.
    pub id: u64,
    pub member: &'a str,
    pub addr: &'a str,
    pub user: &'a str,
    pub database: &'a str,
}

/// pgrouter's side of the authentication exchange of a login.
struct Authentication<'a> {
    login: &'a Login,
    user: &'a str,
    /// The SCRAM exchange under way.
    scram: Option<ClientExchange>,
    /// The SCRAM keys the exchange used, once the server proved it holds them: worth caching.
    derived: Option<ScramKeys>,
}

impl Authentication<'_> {
    /// The answer to the server's Authentication* request (`body`), if it wants one.
    async fn reply(&mut self, body: &[u8]) -> Result<Option<BytesMut>, ServerError> {
        let (login, user) = (self.login, self.user);
        let request =
            AuthRequest::decode(body).map_err(|e| ServerError::Protocol(e.to_string()))?;
        let reply = match request {
            AuthRequest::Ok => return Ok(None),
            AuthRequest::Cleartext => match login {
                Login::Password(p) => password_message(p),
                _ => return Err(no_secret(user, "a cleartext password")),
            },
            AuthRequest::Md5(salt) => {
                let secret = match login {
                    Login::Password(p) => md5_secret(user, p),
                    Login::Md5(s) => *s,
                    _ => return Err(no_secret(user, "an md5 password")),
                };
                password_message(&md5_response(&secret, salt))
            }
            AuthRequest::Sasl(mechanisms) => {
                if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                    return Err(ServerError::Auth(format!(
                        "server offers SASL {mechanisms:?}, pgrouter speaks SCRAM-SHA-256"
                    )));
                }
                let credential = match login {
                    Login::Password(p) => ClientCredential::Password(p.clone()),
                    Login::Scram(k) => ClientCredential::Keys(k.clone()),
                    _ => return Err(no_secret(user, "SCRAM-SHA-256")),
                };
                let (exchange, first) = ClientExchange::start(credential);
                self.scram = Some(exchange);
                sasl_initial_response("SCRAM-SHA-256", &first)
            }
            AuthRequest::SaslContinue(data) => {
                let mut exchange = self
                    .scram
                    .take()
                    .ok_or_else(|| ServerError::Protocol("unexpected SASL".into()))?;
                let data = data.to_vec();
                // PBKDF2 for a plain password is milliseconds of CPU: off the I/O threads.
                let (exchange, reply) = tokio::task::spawn_blocking(move || {
                    let reply = exchange.respond(&data);
                    (exchange, reply)
                })
                .await
                .map_err(|e| ServerError::Auth(e.to_string()))?;
                let reply = reply.map_err(|e| ServerError::Auth(e.to_string()))?;
                self.scram = Some(exchange);
                sasl_response(&reply)
            }
            AuthRequest::SaslFinal(data) => {
                let exchange = self
                    .scram
                    .as_ref()
                    .ok_or_else(|| ServerError::Protocol("unexpected SASL".into()))?;
                exchange
                    .verify(data)
                    .map_err(|e| ServerError::Auth(e.to_string()))?;
                self.derived = exchange.derived_keys();
                return Ok(None);
            }
            AuthRequest::Other(code) => {
                return Err(ServerError::Auth(format!(
                    "server asks for authentication method {code}, which pgrouter does not speak"
                )))
            }
        };
        Ok(Some(reply))
    }
}

impl ServerConn {
    /// Records a ParameterStatus the server sent.
    pub fn note_param(&mut self, name: &str, value: &str) {
        self.state.note_param(name, value)
    }

    /// Connects (with TLS as `tls` says) and logs in, all within `limit`.
    pub async fn open(
        to: &Endpoint<'_>,
        login: &Login,
        limit: Duration,
        tls: &crate::tls::Transport,
    ) -> Result<Opened, ServerError> {
        match timeout(limit, Self::login(to, login, tls)).await {
            Ok(r) => r,
            Err(_) => Err(ServerError::Timeout {
                addr: to.addr.to_owned(),
            }),
        }
    }

    async fn login(
        to: &Endpoint<'_>,
        login: &Login,
        tls: &crate::tls::Transport,
    ) -> Result<Opened, ServerError> {
        let Endpoint {
            addr,
            user,
            database,
            ..
        } = *to;
        let mut stream = tls
            .dial(addr)
            .await
            .map_err(|source| ServerError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        stream
            .send(&wire::startup(&[("user", user), ("database", database)]))
            .await?;
        let mut reader = MessageReader::with_capacity(1024, MAX_WHOLE_MESSAGE);
        let mut auth = Authentication {
            login,
            user,
            scram: None,
            derived: None,
        };
        let mut params = HashMap::new();
        let mut key = None;
        loop {
            let msg = reader.read(&mut stream).await?;
            let body = &msg[5..];
            match msg[0] {
                b'R' => {
                    if let Some(reply) = auth.reply(body).await? {
                        stream.send(&reply).await?;
                    }
                }
                b'S' => {
                    let mut r = Reader::new(body);
                    if let (Some(k), Some(v)) = (r.cstr(), r.cstr()) {
                        params.insert(
                            String::from_utf8_lossy(k).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        );
                    }
                }
                b'K' => {
                    let mut r = Reader::new(body);
                    let pid = r.i32().unwrap_or(0);
                    key = Some(CancelKey {
                        pid,
                        secret: bytes::Bytes::copy_from_slice(r.rest()),
                    });
                }
                b'E' => {
                    return Err(ServerError::refused(&wire::error_fields(body)));
                }
                b'Z' => break,
                _ => {} // NoticeResponse, NegotiateProtocolVersion
            }
        }
        Ok(Opened {
            conn: ServerConn::logged_in(stream, to, params, key),
            derived: auth.derived,
        })
    }

    /// A connection whose login just ended, with the parameters and cancel key the server
    /// reported.
    fn logged_in(
        stream: Stream,
        to: &Endpoint<'_>,
        params: HashMap<String, String>,
        key: Option<CancelKey>,
    ) -> ServerConn {
        let now = Instant::now();
        ServerConn {
            stream,
            id: to.id,
            member: to.member.to_owned(),
            addr: to.addr.into(),
            initial: std::sync::Arc::new(params.clone()),
            key: key.unwrap_or(CancelKey {
                pid: 0,
                secret: bytes::Bytes::new(),
            }),
            state: ConnState::new(Tracked::from_params(&params)),
            created: now,
            last_used: now,
            home: crate::shards::MAIN,
            buffers: Buffers::default(),
            admission: Default::default(),
        }
    }

    /// Sends a query and reads until ReadyForQuery 'I'; Err if it failed or left a transaction.
    pub async fn run(&mut self, sql: &str) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        wire::query(&mut out, sql);
        self.stream.send(&out).await?;
        let mut reader = MessageReader::new(MAX_WHOLE_MESSAGE);
        let mut failed = None;
        loop {
            let msg = reader.read(&mut self.stream).await?;
            match msg[0] {
                b'E' => failed = Some(wire::error_fields(&msg[5..])),
                b'S' => {
                    let mut r = Reader::new(&msg[5..]);
                    if let (Some(k), Some(v)) = (r.cstr(), r.cstr()) {
                        self.note_param(&String::from_utf8_lossy(k), &String::from_utf8_lossy(v));
                    }
                }
                b'Z' if failed.is_none() && msg[5] == b'I' && reader.buffered().is_empty() => {
                    return Ok(())
                }
                b'Z' => {
                    let message = failed
                        .as_deref()
                        .and_then(|f| wire::field(f, b'M'))
                        .unwrap_or("left a transaction open")
                        .to_owned();
                    return Err(ServerError::Refused {
                        code: String::new(),
                        message,
                    });
                }
                _ => {}
            }
        }
    }

    /// Runs `sql` with one text parameter and returns the first row's text columns.
    pub async fn query_row(
        &mut self,
        sql: &str,
        param: &str,
    ) -> Result<Option<Vec<Option<String>>>, ServerError> {
        use bytes::BufMut;
        let mut out = BytesMut::new();
        wire::message(&mut out, b'P', |b| {
            b.put_u8(0);
            b.put_slice(sql.as_bytes());
            b.put_u8(0);
            b.put_i16(0);
        });
        wire::message(&mut out, b'B', |b| {
            b.put_slice(&[0, 0]); // unnamed portal and statement
            b.put_i16(0);
            b.put_i16(1);
            b.put_i32(param.len() as i32);
            b.put_slice(param.as_bytes());
            b.put_i16(0);
        });
        wire::message(&mut out, b'E', |b| {
            b.put_u8(0);
            b.put_i32(1);
        });
        wire::message(&mut out, b'S', |_| {});
        self.stream.send(&out).await?;
        let mut reader = MessageReader::new(MAX_WHOLE_MESSAGE);
        let mut row = None;
        let mut failed = None;
        loop {
            let msg = reader.read(&mut self.stream).await?;
            match msg[0] {
                b'D' if row.is_none() => row = Some(data_row(&msg[5..])),
                b'E' => failed = Some(wire::error_fields(&msg[5..])),
                b'Z' => break,
                _ => {}
            }
        }
        match failed {
            None => Ok(row),
            Some(fields) => Err(ServerError::refused(&fields)),
        }
    }

    /// True if an idle connection has said nothing since it was last used: a server that
    /// ended the backend (FATAL, EOF) while it idled is caught here without a round trip.
    pub fn quiet(&self) -> bool {
        self.stream.quiet()
    }

    /// Moves a plain connection's socket to the calling worker thread's event loop, `home`,
    /// so its readiness wakes the session there without passing through another thread. A
    /// TLS connection stays where it is (it still works, its readiness relayed by its home).
    /// On an error the connection is unusable.
    pub fn move_home(&mut self, home: usize) -> std::io::Result<()> {
        match std::mem::replace(&mut self.stream, Stream::Closed) {
            Stream::Plain(tcp) => {
                let tcp = tokio::net::TcpStream::from_std(tcp.into_std()?)?;
                self.stream = Stream::Plain(tcp);
                self.home = home;
            }
            other => self.stream = other,
        }
        Ok(())
    }

    /// True if the connection answers an empty query at once (after idling).
    pub async fn healthy(&mut self, limit: Duration) -> bool {
        matches!(timeout(limit, self.run("")).await, Ok(Ok(())))
    }

    /// Says goodbye so the server does not log an unexpected EOF, and waits (up to a second)
    /// for it to close its end: its backend has left pg_stat_activity by then, so the
    /// connection's place in the member's budgets is given back only once the member no longer
    /// counts it.
    pub async fn close(mut self) {
        let mut out = BytesMut::new();
        wire::terminate(&mut out);
        let _ = timeout(Duration::from_secs(1), async {
            self.stream.send(&out).await?;
            let mut rest = [0u8; 4096];
            while self.stream.read(&mut rest).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    }
}

fn no_secret(user: &str, what: &str) -> ServerError {
    ServerError::Auth(format!(
        "the server asks for {what} for user \"{user}\", and the secret pgrouter holds cannot give it \
         (a SCRAM secret needs the client to log in with SCRAM first; an md5 secret cannot answer SCRAM)"
    ))
}

fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let r = Reader::new(body);
    let n = {
        let b = r.rest();
        if b.len() < 2 {
            return Vec::new();
        }
        i16::from_be_bytes([b[0], b[1]]) as usize
    };
    let mut rest = &body[2..];
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        if rest.len() < 4 {
            break;
        }
        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        rest = &rest[4..];
        if len < 0 {
            cols.push(None);
        } else {
            let len = (len as usize).min(rest.len());
            cols.push(Some(String::from_utf8_lossy(&rest[..len]).into_owned()));
            rest = &rest[len..];
        }
    }
    cols
}
