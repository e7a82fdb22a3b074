//! The pooled session's protocol core, with no I/O: what a client's messages become on the
//! server connection lent to it, and what the server's answers become for the client.
//!
//! Every message sent to the server that expects an answer leaves an entry in a ledger, so
//! answers can be matched to requests, swallowed (answers to messages pgrouter added) or made
//! up (for messages it did not need to send). Messages it must look into (statements,
//! ReadyForQuery, ParameterStatus, errors) are taken whole; the rest stream through.
//!
//! The driver (`super`) owns the sockets and the buffers: it appends what it reads to the
//! input buffers, calls [`Conversation::from_client`] and [`Conversation::from_server`], and
//! writes what they appended to the output buffers. What changes on the server connection
//! (statements prepared, parameters reported) is written to its [`ConnState`].
//!
//! Here: the ledger, framing and flow of the client's side. `rewrite`: statement messages
//! under pooled names. `answers`: the server's side. `tests`, `parity_tests`: message
//! sequences in, bytes out.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use crate::config::PoolMode;
use crate::pool::statements::ClientStatements;
use crate::protocol::frame;
use crate::protocol::frame::BadLength;
use crate::protocol::limits::MAX_CLIENT_MESSAGE;
use crate::protocol::wire;
use crate::servers::conn_state::ConnState;
use crate::servers::tracked::{Tracked, Vars, TRACKED};
use settings::{Injected, Touched};
use sql_prepared::SqlPrepared;

use super::startup_params::StartupSettings;

/// The statement an extended-protocol DEALLOCATE of a client's statement drops instead (the
/// server knows the client's statements by pooled names, or not at all): an empty query,
/// prepared by pgrouter before each run of the DEALLOCATE, which prepares even in a failed
/// transaction.
pub const STAND_IN: &str = "pgrouter_deallocate_stand_in";

/// The longest unnamed Parse a client's unnamed statement is kept for, to be prepared again
/// on the server connection of a later transaction.
const UNNAMED_KEPT: usize = 64 * 1024;

/// Past this much unsent data towards the server, client messages wait in their buffer.
pub const BUFFER_LIMIT: usize = 256 * 1024;

/// What an answer from the server settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A client's Parse; `Some(id)` when pgrouter prepared it under its pooled name.
    Parse(Option<u64>),
    /// A Parse pgrouter added (of a pooled statement `Some(id)`, of [`STAND_IN`], of the
    /// client's unnamed statement again): its ParseComplete is not the client's.
    InjectedParse(Option<u64>),
    /// A Close pgrouter added (of a pooled name before preparing it afresh, of [`STAND_IN`]):
    /// not the client's.
    InjectedClose,
    /// A client's Bind or Describe; `Some(id)` of a pooled statement.
    Bind(Option<u64>),
    Describe(Option<u64>),
    Close,
    Execute,
    /// The client's Sync: settled by ReadyForQuery; it ends the skip after an error.
    Sync,
    /// A simple Query or FunctionCall: settled by ReadyForQuery, ignored by the server while
    /// it skips to Sync after an error in an extended batch.
    Ready,
    /// A query pgrouter added (SET of the client's parameters): every answer is swallowed.
    InjectedQuery,
    /// Answers pgrouter gives itself once everything before them is answered.
    MadeUpCloseComplete,
    /// An error pgrouter answers for a client's message as PostgreSQL would (its bytes are
    /// queued in `made_up_errors`); the client's messages up to its Sync are then dropped.
    MadeUpError,
    /// The client's CopyDone or CopyFail: nothing answers it; it marks where the Syncs the
    /// server ignores while it takes COPY data end.
    CopyEnd,
    /// A simple-query DEALLOCATE of a statement the connection does not have: answered as
    /// PostgreSQL answers the client's own (CommandComplete, or 25P02 in a failed
    /// transaction), then ReadyForQuery.
    MadeUpDeallocate,
}

/// Why the conversation cannot take the client's messages any further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEnd {
    /// Terminate.
    Terminate,
    /// Bytes that cannot frame a message, or a message pgrouter cannot read.
    Protocol(String),
}

/// What is left in the client's input after [`Conversation::from_client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Nothing whole: at most a header, or room towards the server ran out.
    All,
    /// Part of a message of this many bytes, to be read whole (the driver counts a large one
    /// against `pool.message_memory`).
    Partial(usize),
}

/// The server said FATAL or sent bytes that cannot frame a message: the connection is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken(pub String);

/// What the server's messages taken by one [`Conversation::from_server`] call settled.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Heard {
    /// ReadyForQuery messages forwarded to the client.
    pub ready: u32,
    /// Of those, the ones saying idle: transactions ended.
    pub idle: u32,
    /// The server refused a query pgrouter sent for the client's settings: its SQLSTATE and
    /// message.
    pub set_failed: Option<(String, String)>,
}

pub struct Conversation {
    mode: PoolMode,
    statements: ClientStatements,
    /// Tracked parameters the client set itself (at startup or with SET), as the server
    /// reported them; the others are the `defaults` of its database and user.
    pub vars: Vars,
    pub defaults: Option<Arc<Tracked>>,
    /// Settings the server does not report that the client carries (from its startup, and
    /// SETs of `track`), as last known: set on every connection it uses (`settings`).
    pub extra: Vec<(String, String)>,
    /// The client's startup values: what RESET goes back to.
    startup: StartupSettings,
    /// Settings whose SETs are carried to the client's next connections (lower case).
    track: Vec<String>,
    /// Settings the transaction under way SET or RESET, settled once it is over.
    touched: Touched,
    expect: VecDeque<Expect>,
    /// Extended-protocol messages sent since the last Sync: the batch is open.
    unsynced: bool,
    /// The transaction status of the last ReadyForQuery.
    status: u8,
    /// LISTEN: the client keeps its server connection until UNLISTEN *.
    pinned: bool,
    /// Cursors declared WITH HOLD and not closed: they live on the server connection, so the
    /// client keeps it (as for LISTEN) until it closes them.
    held_cursors: Vec<String>,
    /// Bytes of the current client message still to forward unread (streamed CopyData).
    client_stream_left: usize,
    /// Bytes of the current server message still to forward (or drop) unread.
    server_stream_left: usize,
    server_stream_drop: bool,
    /// The client's unnamed statement, as its Parse was last sent (when at most
    /// `UNNAMED_KEPT`): PostgreSQL keeps it until the next unnamed Parse or simple Query, so a
    /// Bind in a later transaction (pgx, without its statement cache) finds it prepared again
    /// on that transaction's server connection, never another client's.
    unnamed: BytesMut,
    unnamed_state: Unnamed,
    /// The last statement forgotten when its Parse failed, with the client's name for it: an
    /// error about it from a message already sent speaks of it by that name.
    forgotten: Option<(u64, Bytes)>,
    /// The transaction left SQL-level state on its server connection (PREPARE, a WITH HOLD
    /// cursor): the connection is closed, not shared, when given back, so the state can never
    /// answer another client; the client's later use of it gets PostgreSQL's 26000 or 34000.
    session_state: bool,
    /// The client's SQL-level prepared statements, carried between transactions.
    sql: SqlPrepared,
    /// What each `InjectedQuery` entry in the ledger is, in order.
    injected: VecDeque<Injected>,
    /// The ErrorResponses of the `MadeUpError` entries, in order.
    made_up_errors: VecDeque<Bytes>,
    /// After an error in an extended batch whose Sync has not come (the server's, or one
    /// pgrouter answered itself): the client's messages up to its Sync are dropped, as
    /// PostgreSQL ignores them.
    client_skipping: bool,
    /// The server is in COPY FROM STDIN (CopyInResponse or CopyBothResponse): it waits for the
    /// client's data, CopyDone or CopyFail.
    copy_in: bool,
}

/// Where the client's unnamed statement stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unnamed {
    /// It has none (directly, a Bind of "" gets 26000).
    None,
    /// Prepared on the server connection it holds now.
    Here,
    /// Prepared on an earlier connection; `unnamed` prepares it again here.
    Elsewhere,
    /// Prepared on an earlier connection, too long to have been kept.
    Lost,
}

impl Conversation {
    pub fn new(mode: PoolMode, vars: Vars) -> Conversation {
        let startup = StartupSettings {
            vars,
            extra: Vec::new(),
        };
        Conversation::with_settings(mode, startup, vec!["search_path".to_owned()])
    }

    /// A conversation for a client whose startup asked for `startup`, carrying SETs of the
    /// settings named in `track` (`pool.track_extra_parameters`).
    pub fn with_settings(
        mode: PoolMode,
        startup: StartupSettings,
        track: Vec<String>,
    ) -> Conversation {
        Conversation {
            mode,
            statements: ClientStatements::default(),
            vars: startup.vars.clone(),
            defaults: None,
            extra: startup.extra.clone(),
            startup,
            track,
            touched: Touched::default(),
            expect: VecDeque::new(),
            unsynced: false,
            status: b'I',
            pinned: false,
            held_cursors: Vec::new(),
            client_stream_left: 0,
            server_stream_left: 0,
            server_stream_drop: false,
            unnamed: BytesMut::new(),
            unnamed_state: Unnamed::None,
            forgotten: None,
            session_state: false,
            sql: SqlPrepared::default(),
            injected: VecDeque::new(),
            made_up_errors: VecDeque::new(),
            client_skipping: false,
            copy_in: false,
        }
    }

    pub fn mode(&self) -> PoolMode {
        self.mode
    }

    /// Transaction mode: statements are renamed, the connection goes back between
    /// transactions.
    fn rewrite(&self) -> bool {
        self.mode == PoolMode::Transaction
    }

    /// Everything sent is answered, no batch or transaction is open, nothing is half-way:
    /// a transaction-mode client can give its connection back.
    pub fn releasable(&self) -> bool {
        self.rewrite() && self.at_rest() && !self.pinned() && !self.settings_due()
    }

    /// Whether the server connection is in a known, idle state another client could use.
    pub fn at_rest(&self) -> bool {
        self.expect.is_empty()
            && !self.unsynced
            && self.status == b'I'
            && self.client_stream_left == 0
            && self.server_stream_left == 0
    }

    /// The client keeps its server connection: LISTEN, or a cursor WITH HOLD open.
    pub fn pinned(&self) -> bool {
        self.pinned || !self.held_cursors.is_empty()
    }

    /// The queries that give the connection back without the client's SQL-level prepared
    /// statements.
    pub fn take_sql_cleanup(&mut self) -> Vec<String> {
        self.sql.take_cleanup()
    }

    /// The server connection holds SQL-level state of this client's (see `session_state`).
    pub fn left_session_state(&self) -> bool {
        self.session_state
    }

    /// Inside a transaction with nothing owed either way: the client is idle in it.
    pub fn idle_in_transaction(&self) -> bool {
        self.expect.is_empty()
            && !self.unsynced
            && self.status != b'I'
            && self.client_stream_left == 0
            && self.server_stream_left == 0
    }

    /// Messages sent to the server still owe answers.
    pub fn owes_answers(&self) -> bool {
        !self.expect.is_empty()
    }

    /// The SETs pgrouter sent for the client's parameters are not all answered yet.
    pub fn setting_params(&self) -> bool {
        self.expect.contains(&Expect::InjectedQuery)
    }

    /// Inside a server message whose start the client was already sent.
    pub fn mid_server_message(&self) -> bool {
        self.server_stream_left > 0 && !self.server_stream_drop
    }

    /// Inside a client message being streamed to the server.
    pub fn mid_client_message(&self) -> bool {
        self.client_stream_left > 0
    }

    /// The server owes a ReadyForQuery for what it was sent and is owed nothing: no client
    /// message half sent, no COPY waiting for the client's data. A server that then waits to
    /// read from its client is stuck (the driver checks, `pool.stuck_check`).
    pub fn awaits_server(&self) -> bool {
        self.client_stream_left == 0
            && !self.copy_in
            && self
                .expect
                .iter()
                .any(|e| matches!(e, Expect::Sync | Expect::Ready | Expect::InjectedQuery))
    }

    /// The server connection is gone: what the client is still owed, as it stands.
    pub fn lose_server(&mut self) -> Loss {
        let owes_ready =
            |e: &&Expect| matches!(e, Expect::Sync | Expect::Ready | Expect::MadeUpDeallocate);
        let loss = Loss {
            unanswered: self.expect.iter().filter(owes_ready).count(),
            unsynced: self.unsynced,
            in_transaction: self.status != b'I',
        };
        self.forget_server();
        self.pinned = false;
        self.held_cursors.clear();
        self.client_stream_left = 0;
        loss
    }

    /// Forgets everything owed by or to a server connection: the next one starts afresh.
    pub fn forget_server(&mut self) {
        self.expect.clear();
        self.unsynced = false;
        self.status = b'I';
        self.server_stream_left = 0;
        self.server_stream_drop = false;
        self.made_up_errors.clear();
        self.client_skipping = false;
        self.copy_in = false;
        self.session_state = false;
        self.sql.forget_connection();
        self.injected.clear();
        self.touched = Touched::default();
        self.unnamed_state = match self.unnamed_state {
            Unnamed::Here if self.unnamed.is_empty() => Unnamed::Lost,
            Unnamed::Here => Unnamed::Elsewhere,
            other => other,
        };
    }

    /// Settles the first entry of the ledger, and the markers that follow it.
    fn settle_front(&mut self) -> Option<Expect> {
        let settled = self.expect.pop_front();
        while self.expect.front() == Some(&Expect::CopyEnd) {
            self.expect.pop_front();
        }
        settled
    }

    /// The server began taking COPY data for the first entry of the ledger: the Syncs the
    /// client sent after it, up to its CopyDone or CopyFail, are ignored by PostgreSQL and
    /// get no ReadyForQuery (tokio-postgres sends Bind, Execute, Sync before the COPY data).
    fn copy_began(&mut self) {
        self.copy_in = true;
        let end = (1..self.expect.len())
            .find(|i| self.expect[*i] == Expect::CopyEnd)
            .unwrap_or(self.expect.len());
        let mut i = 1;
        let mut end = end;
        while i < end {
            if self.expect[i] == Expect::Sync {
                self.expect.remove(i);
                end -= 1;
            } else {
                i += 1;
            }
        }
    }

    /// No batch that could still fail is unanswered: the transaction status is known.
    fn settled(&self) -> bool {
        !self
            .expect
            .iter()
            .any(|e| matches!(e, Expect::Sync | Expect::Ready | Expect::MadeUpDeallocate))
    }

    /// The last ReadyForQuery said the transaction failed, and nothing since can change it.
    fn aborted(&self) -> bool {
        self.status == b'E' && self.settled()
    }

    /// Queues a SET for each setting where the client and the server connection differ:
    /// tracked parameters as the server reported them, carried ones as pgrouter set them.
    pub fn sync_vars(&mut self, conn: &mut ConnState, to_server: &mut BytesMut) {
        let mut sets = Vec::new();
        let in_step = match (&self.defaults, &conn.in_step) {
            (Some(defaults), Some((d, vars))) => Arc::ptr_eq(defaults, d) && *vars == self.vars,
            _ => false,
        };
        if !in_step {
            for (i, k) in TRACKED.iter().enumerate() {
                let wanted = match self.vars.iter().find(|(name, _)| name == k) {
                    Some((_, v)) => Some(v.as_str()),
                    None => self.defaults.as_ref().and_then(|d| d.get(i)),
                };
                if let Some(wanted) = wanted.filter(|w| conn.tracked.get(i) != Some(*w)) {
                    sets.push(format!("SET {k} = '{}'", wanted.replace('\'', "''")));
                }
            }
            if sets.is_empty() {
                conn.in_step = self.defaults.clone().map(|d| (d, self.vars.clone()));
            }
        }
        if conn.extra != self.extra {
            self.sync_extra(conn, &mut sets);
        }
        if sets.is_empty() {
            return;
        }
        wire::query(to_server, &sets.join("; "));
        self.expect.push_back(Expect::InjectedQuery);
        self.injected.push_back(Injected::Settings);
    }

    /// Takes the client's whole messages (and streams CopyData) from `input` into
    /// `to_server`, while `to_server` has room.
    pub fn from_client(
        &mut self,
        input: &mut BytesMut,
        to_server: &mut BytesMut,
        conn: &mut ConnState,
    ) -> Result<Taken, ClientEnd> {
        loop {
            if self.client_stream_left > 0 {
                let n = self.client_stream_left.min(input.len());
                if n == 0 {
                    return Ok(Taken::All);
                }
                to_server.extend_from_slice(&input[..n]);
                input.advance(n);
                self.client_stream_left -= n;
                continue;
            }
            if to_server.len() >= BUFFER_LIMIT {
                return Ok(Taken::All);
            }
            let (tag, len) = match frame::header(input) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(Taken::All),
                Err(e) => return Err(ClientEnd::Protocol(e.to_string())),
            };
            if tag == b'd' && input.len() < len {
                // Streamed, so checked here: PostgreSQL would drop the connection silently.
                if len - 1 > MAX_CLIENT_MESSAGE as usize {
                    let bad = BadLength {
                        tag,
                        len: (len - 1) as u32,
                    };
                    return Err(ClientEnd::Protocol(bad.to_string()));
                }
                // CopyData: stream it, there is nothing to look at.
                self.client_stream_left = len;
                continue;
            }
            match wire::take_message(input) {
                Ok(Some(msg)) => self.client_message(msg, to_server, conn)?,
                Ok(None) => return Ok(Taken::Partial(len)),
                Err(e) => return Err(ClientEnd::Protocol(e.to_string())),
            }
        }
    }

    /// One whole client message: forwarded, rewritten, or answered by pgrouter itself.
    pub fn client_message(
        &mut self,
        msg: Bytes,
        out: &mut BytesMut,
        conn: &mut ConnState,
    ) -> Result<(), ClientEnd> {
        if self.client_skipping {
            match msg[0] {
                b'S' => self.client_skipping = false,
                b'X' => return Err(ClientEnd::Terminate),
                _ => return Ok(()),
            }
        }
        let body = msg.slice(5..);
        let (expect, unsynced) = match msg[0] {
            b'X' => return Err(ClientEnd::Terminate),
            b'Q' => {
                // A simple Query drops the unnamed statement.
                self.unnamed_state = Unnamed::None;
                let sql = wire::Reader::new(&body).cstr().unwrap_or_default();
                if self.query(sql, out, conn) {
                    return Ok(());
                }
                (Some(Expect::Ready), None)
            }
            b'F' => (Some(Expect::Ready), None),
            b'S' => (Some(Expect::Sync), Some(false)),
            b'H' => (None, None),
            b'c' | b'f' => {
                self.copy_in = false;
                let marks = !self.expect.is_empty();
                (marks.then_some(Expect::CopyEnd), None)
            }
            b'E' => (Some(Expect::Execute), Some(true)),
            b'P' => {
                if !self.unsynced {
                    self.sql_statements_for(&msg, out);
                }
                self.unsynced = true;
                return self.parse(&msg, &body, out, conn);
            }
            b'B' => {
                if !self.unsynced {
                    self.sql_statements_for(&msg, out);
                }
                self.unsynced = true;
                return self.bind(&msg, &body, out, conn);
            }
            b'D' | b'C' => {
                self.unsynced = true;
                return self.describe_or_close(&msg, &body, out, conn);
            }
            _ => (None, None),
        };
        out.extend_from_slice(&msg);
        if let Some(e) = expect {
            self.expect.push_back(e);
        }
        if let Some(u) = unsynced {
            self.unsynced = u;
        }
        Ok(())
    }
}

/// What a client was still owed when its server connection was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loss {
    /// Queries and Syncs not answered with ReadyForQuery.
    pub unanswered: usize,
    /// An extended batch was open: the client goes on up to its Sync.
    pub unsynced: bool,
    /// The last ReadyForQuery said the client was inside a transaction.
    pub in_transaction: bool,
}

mod answers;
#[cfg(test)]
mod parity_tests;
mod rewrite;
mod settings;
#[cfg(test)]
mod settings_tests;
mod sql_prepared;
#[cfg(test)]
mod tests;
