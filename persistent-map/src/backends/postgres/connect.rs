//! Connecting: the connection string, one live connection (the task that reads its messages,
//! `LISTEN`, the prepared statements), and the table's setup.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, Client, Config, Connection, Socket, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::link::Link;
use super::log;
use super::notify::Listeners;
use super::tls;
use crate::{PersistentError, Result};

/// What a connection runs over: TLS, or the plain socket when TLS is not used.
type TlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// PostgreSQL truncates longer identifiers, which would make two table names one.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// The first of the crate's three classes of advisory locks unless told otherwise: `"pm"`
/// (0x706d = 28781), then 28782 and 28783.
pub(super) const DEFAULT_LOCK_CLASS: i32 = 0x706d;

/// The classes (the first of the two keys of a two-key advisory lock) of the crate's advisory
/// locks: one taken while a table is created, one per table and one per key while writing.
/// Every instance on a database must use the same, and no other program the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct LockClasses {
    first: i32,
}

impl LockClasses {
    /// The classes `first`, `first + 1` and `first + 2`.
    pub(super) fn starting_at(first: i32) -> Self {
        Self { first }
    }

    pub(super) fn create(self) -> i32 {
        self.first
    }

    pub(super) fn table(self) -> i32 {
        self.first.wrapping_add(1)
    }

    pub(super) fn key(self) -> i32 {
        self.first.wrapping_add(2)
    }
}

/// What every error of a backend names: where it was and which table.
#[derive(Debug)]
pub(super) struct Target {
    /// The server's `host:port` (several, comma-separated, if the URL lists several).
    pub(super) host: String,
    pub(super) table: String,
}

impl Target {
    pub(super) fn postgres_error(&self, source: tokio_postgres::Error) -> PersistentError {
        PersistentError::Postgres {
            host: self.host.clone(),
            table: self.table.clone(),
            source,
        }
    }

    pub(super) fn connect_error(&self, reason: String) -> PersistentError {
        PersistentError::Connect {
            host: self.host.clone(),
            reason,
        }
    }
}

/// The message of a tokio-postgres error with its cause: its own `Display` leaves the cause
/// (PostgreSQL's message, the I/O error) out.
pub(crate) fn describe_error(error: &tokio_postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

/// Checks `table` against the crate's rule and PostgreSQL's identifier length.
pub(super) fn validate_table(table: &str) -> Result<()> {
    crate::validate_table_name(table)?;
    if table.len() > MAX_IDENTIFIER_BYTES {
        return Err(PersistentError::InvalidTableName {
            name: table.to_owned(),
            reason: "PostgreSQL names are at most 63 bytes long",
        });
    }
    Ok(())
}

/// A connection attempt's time limit when neither the builder nor the URL sets one.
pub(super) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to connect: everything about a connection but the table.
pub(super) struct Endpoint {
    pub(super) config: Config,
    pub(super) tls: MakeRustlsConnect,
    /// The server's `host:port` (several, comma-separated, if the URL lists several).
    pub(super) host: String,
    pub(super) connect_timeout: Duration,
    /// `SET`s run on every new connection: the server-side limits.
    session_settings: String,
    /// The classes of the crate's advisory locks.
    pub(super) lock_classes: LockClasses,
}

impl std::fmt::Debug for Endpoint {
    /// Leaves the config out: it holds the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("connect_timeout", &self.connect_timeout)
            .field("session_settings", &self.session_settings)
            .field("lock_classes", &self.lock_classes)
            .finish_non_exhaustive()
    }
}

/// Parses `url` (a `postgres://` URL or `key=value` pairs, as libpq takes), its TLS settings
/// included, and applies the timeouts: `connect_timeout` if given, else the URL's, else
/// [`DEFAULT_CONNECT_TIMEOUT`]; the server-side and TCP limits from `operation_timeout` (see
/// [`server_limits`]) unless the URL sets them.
pub(super) fn parse_config(
    url: &str,
    connect_timeout: Option<Duration>,
    operation_timeout: Duration,
) -> Result<Endpoint> {
    let unparsable =
        |reason: String| tls::config_error(format!("{reason} (host {})", hosts_in_unparsed(url)));
    let (rest, tls_options) = tls::split_tls_options(url).map_err(|error| match error {
        PersistentError::Config { reason } => unparsable(reason),
        other => other,
    })?;
    let mut config: Config = rest
        .parse()
        .map_err(|error| unparsable(describe_error(&error)))?;
    config.ssl_mode(tls_options.mode.for_tokio_postgres());
    let connect_timeout = connect_timeout
        .or_else(|| config.get_connect_timeout().copied())
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    config.connect_timeout(connect_timeout);
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        // libpq's default of two hours would leave an instance deaf to a dead server (and so to
        // the other instances) for that long; these find out within about twice the operation
        // timeout.
        let keepalives = Keepalives::for_operation_timeout(operation_timeout);
        config
            .keepalives_idle(keepalives.idle)
            .keepalives_interval(keepalives.interval)
            .keepalives_retries(keepalives.count);
    }
    if config.get_tcp_user_timeout().is_none() {
        // Data the server does not acknowledge for this long breaks the connection in the
        // kernel, so a dead server is noticed even between operations.
        config.tcp_user_timeout(operation_timeout);
    }
    let session_settings =
        server_limits(config.get_options().unwrap_or_default(), operation_timeout);
    let host = describe_hosts(&config);
    let tls = tls::connector(&tls_options).map_err(|error| match error {
        PersistentError::Config { reason } => tls::config_error(format!("{reason} (host {host})")),
        other => other,
    })?;
    Ok(Endpoint {
        config,
        tls,
        host,
        connect_timeout,
        session_settings,
        lock_classes: LockClasses::starting_at(DEFAULT_LOCK_CLASS),
    })
}

/// TCP keepalives, set alike on both ends of a connection: the client notices a dead server,
/// and the server a dead client, within `idle + interval * count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Keepalives {
    idle: Duration,
    interval: Duration,
    count: u32,
}

impl Keepalives {
    /// After the operation timeout of silence (at least a second), a probe every quarter of it
    /// (at least a second), three unanswered probes: about twice the operation timeout.
    fn for_operation_timeout(operation_timeout: Duration) -> Self {
        let second = Duration::from_secs(1);
        Self {
            idle: operation_timeout.max(second),
            interval: (operation_timeout / 4).max(second),
            count: 3,
        }
    }
}

/// The `SET`s run on every new connection, so that no server session holds a lock long past the
/// work it did, even when this instance froze or its network went dead (a setting that the
/// connection string's `options` already give is left alone):
///
/// - `lock_timeout`, a quarter of `operation_timeout`: a statement that waits that long for a
///   lock fails, in time to be retried apart from the writes of other keys;
/// - `statement_timeout`, 90% of it: a statement running that long fails;
/// - `idle_in_transaction_session_timeout`, half of it: the server ends a session that stopped
///   talking in the middle of a transaction (this instance froze, or the path to it), which
///   rolls the transaction back and frees its locks. The crate's transactions never idle: the
///   only pause is the instant between their two round trips;
/// - `tcp_keepalives_idle`, `tcp_keepalives_interval`, `tcp_keepalives_count`: the server's
///   keepalives, as the client's (see [`Keepalives`]), so that the server notices a client
///   host that went away.
fn server_limits(options: &str, operation_timeout: Duration) -> String {
    let millis = |limit: Duration| limit.as_millis().max(1);
    let keepalives = Keepalives::for_operation_timeout(operation_timeout);
    let limits = [
        ("lock_timeout", millis(operation_timeout / 4)),
        ("statement_timeout", millis(operation_timeout * 9 / 10)),
        (
            "idle_in_transaction_session_timeout",
            millis(operation_timeout / 2),
        ),
        ("tcp_keepalives_idle", u128::from(keepalives.idle.as_secs())),
        (
            "tcp_keepalives_interval",
            u128::from(keepalives.interval.as_secs()),
        ),
        ("tcp_keepalives_count", u128::from(keepalives.count)),
    ];
    limits
        .iter()
        .filter(|(name, _)| !options.contains(name))
        .map(|(name, limit)| format!("SET {name} = {limit}; "))
        .collect()
}

fn describe_hosts(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let port = match ports {
                [] => 5432,
                [port] => *port,
                ports => ports.get(index).copied().unwrap_or(5432),
            };
            match host {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}/.s.PGSQL.{port}", path.display()),
            }
        })
        .collect();
    if hosts.is_empty() {
        "(no host given)".to_owned()
    } else {
        hosts.join(",")
    }
}

/// The host part of a connection string that did not parse, without the password.
fn hosts_in_unparsed(url: &str) -> String {
    let Some((_, rest)) = url.split_once("://") else {
        return "not given as a URL".to_owned();
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    host.to_owned()
}

/// The SQL of one table, written once per backend.
///
/// The statements of a table come in two sets: for a table without the column `expires_at`
/// (one that never saw a time to live, as every table starts) and for one with it (see
/// `expiry.rs`). Both take the same parameters, so callers need not know which is prepared.
#[derive(Debug)]
pub(super) struct TableSql {
    pub(super) name: String,
    /// The key layout of the backend's key type, recorded and checked on open (empty: none).
    pub(super) layout: &'static str,
    /// Whether the table had the column `expires_at` when last seen: a reconnection prepares
    /// its statements for that layout while it checks it.
    expiring_seen: AtomicBool,
    create: String,
    listen: String,
    delete: String,
    delete_all: String,
    /// Locks the table against a schema change (an `expires_at` being added) until the
    /// transaction ends; reads nothing.
    lock_shared: String,
    /// `$1` keys: those whose row another transaction holds locked, locking the others' rows
    /// for this transaction.
    locked_elsewhere: String,
    plain: LayoutSql,
    expiring: LayoutSql,
    /// `$1` now, `$2` the most rows: the keys of expired rows, oldest deadline first.
    sweep_candidates: String,
}

/// The statements of a table that depend on whether it has the column `expires_at`.
#[derive(Debug)]
struct LayoutSql {
    /// `$1` keys, `$2` JSON values, `$3` deadlines (Unix ms, `NULL`: never).
    upsert: String,
    /// `$1` now (Unix ms): the live rows, as key, value text, deadline.
    select_all: String,
    /// `$1` keys, `$2` now: their rows, as key, value text, deadline, and whether the row has
    /// expired (returned so that a sweep can tell an expired row from a missing one).
    select_keys: String,
    /// The change log since a revision with the live rows of the keys it names, as key,
    /// value text, deadline (see `log::since`).
    read_log: String,
}

impl TableSql {
    /// `name` must have passed [`validate_table`]; it is quoted anyway.
    pub(super) fn new(name: &str, layout: &'static str) -> Self {
        let quoted = format!("\"{name}\"");
        Self {
            name: name.to_owned(),
            layout,
            expiring_seen: AtomicBool::new(false),
            create: format!(
                "CREATE TABLE IF NOT EXISTS {quoted} (key TEXT PRIMARY KEY, value JSONB NOT NULL)"
            ),
            listen: format!("LISTEN {quoted}"),
            delete: format!("DELETE FROM {quoted} WHERE key = ANY($1::text[])"),
            delete_all: format!("DELETE FROM {quoted}"),
            lock_shared: format!("LOCK TABLE {quoted} IN ACCESS SHARE MODE"),
            // What the upsert and the delete will lock (`FOR UPDATE`), taken now without
            // waiting: a row that another session holds is skipped, so it is reported.
            locked_elsewhere: format!(
                "WITH lockable AS (SELECT key FROM {quoted} WHERE key = ANY($1::text[]) \
                 FOR UPDATE SKIP LOCKED) \
                 SELECT key FROM {quoted} WHERE key = ANY($1::text[]) \
                 AND key NOT IN (SELECT key FROM lockable)"
            ),
            // The parameters a table without deadlines has no use for are still mentioned, so
            // that both sets take the same ones.
            plain: LayoutSql {
                upsert: format!(
                    "INSERT INTO {quoted} (key, value) \
                     SELECT k, v::jsonb FROM unnest($1::text[], $2::text[], $3::int8[]) AS u(k, v, e) \
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
                ),
                select_all: format!(
                    "SELECT key, value::text, NULL::int8 FROM {quoted} WHERE $1::int8 IS NOT NULL"
                ),
                select_keys: format!(
                    "SELECT key, value::text, NULL::int8, $2::int8 IS NULL \
                     FROM {quoted} WHERE key = ANY($1::text[])"
                ),
                read_log: log::since(&quoted, false),
            },
            expiring: LayoutSql {
                upsert: format!(
                    "INSERT INTO {quoted} (key, value, expires_at) \
                     SELECT k, v::jsonb, e FROM unnest($1::text[], $2::text[], $3::int8[]) AS u(k, v, e) \
                     ON CONFLICT (key) DO UPDATE \
                     SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at"
                ),
                select_all: format!(
                    "SELECT key, value::text, expires_at FROM {quoted} \
                     WHERE expires_at IS NULL OR expires_at > $1::int8"
                ),
                select_keys: format!(
                    "SELECT key, value::text, expires_at, coalesce(expires_at <= $2::int8, false) \
                     FROM {quoted} WHERE key = ANY($1::text[])"
                ),
                read_log: log::since(&quoted, true),
            },
            sweep_candidates: format!(
                "SELECT key FROM {quoted} WHERE expires_at <= $1::int8 \
                 ORDER BY expires_at LIMIT $2::int8"
            ),
        }
    }

    fn layout_sql(&self, expiring: bool) -> &LayoutSql {
        if expiring {
            &self.expiring
        } else {
            &self.plain
        }
    }
}

/// The statements of one connection that serve every table, prepared once.
#[derive(Debug)]
pub(super) struct Statements {
    /// `$1` the table's lock id: exclusive and shared.
    pub(super) lock_table: Statement,
    pub(super) lock_table_shared: Statement,
    /// `$1` the keys' lock ids, taken in the order given.
    pub(super) lock_keys: Statement,
    /// A transaction's bounds, prepared so that they can be pipelined with its statements.
    pub(super) begin: Statement,
    pub(super) commit: Statement,
    pub(super) rollback: Statement,
    /// The transaction's id, and (`$1`) the status of a transaction by id.
    pub(super) transaction_id: Statement,
    pub(super) transaction_status: Statement,
    /// `$1` table names: those of them that have the column `expires_at`.
    pub(super) expiry_columns: Statement,
    /// The change log's statements (see `log.rs`).
    pub(super) log: Statement,
    pub(super) prune_log: Statement,
    pub(super) revision: Statement,
}

/// The statements of one table on one connection, prepared when the table is attached, for the
/// table's layout then (`expiring`: it has the column `expires_at`), and again when the layout
/// is found to have changed.
#[derive(Debug)]
pub(super) struct TableStatements {
    pub(super) sql: Arc<TableSql>,
    /// Whether these statements are those of a table with the column `expires_at`.
    pub(super) expiring: bool,
    pub(super) upsert: Statement,
    pub(super) delete: Statement,
    pub(super) delete_all: Statement,
    pub(super) select_all: Statement,
    pub(super) select_keys: Statement,
    /// The change log since a revision, with the rows of the keys it names (see `log.rs`).
    pub(super) read_log: Statement,
    pub(super) lock_shared: Statement,
    /// Which of some keys' rows another session holds locked (see [`TableSql`]).
    pub(super) locked_elsewhere: Statement,
    /// Only for a table with the column.
    pub(super) sweep_candidates: Option<Statement>,
}

/// An open connection: the client, its statements, and word of its end.
#[derive(Debug)]
pub(super) struct Live {
    pub(super) client: Client,
    /// The server session behind the client, to end it from another connection.
    pub(super) server_session: ServerSession,
    /// The classes of the crate's advisory locks, as the statements take them.
    pub(super) lock_classes: LockClasses,
    pub(super) statements: Statements,
    /// By table name: the tables this connection listens on and has statements for.
    pub(super) tables: HashMap<String, TableStatements>,
    closed: oneshot::Receiver<()>,
}

impl Live {
    /// Resolves when the connection has ended.
    pub(super) async fn closed(&mut self) {
        let _ = (&mut self.closed).await;
    }

    /// Whether `table`'s statements are prepared for the layout it has, given `with_column`,
    /// the tables found to have the column `expires_at`.
    pub(super) fn layout_matches(&self, table: &str, with_column: &[String]) -> bool {
        self.table(table).expiring == with_column.iter().any(|name| name == table)
    }

    /// The statements of `table`, which is attached.
    pub(super) fn table(&self, table: &str) -> &TableStatements {
        self.tables
            .get(table)
            .expect("work reaches the session only for tables attached to its connection")
    }
}

/// A server session (a backend process), told apart from a later one that reuses its process
/// id by its start time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ServerSession {
    pub(super) pid: i32,
    /// `backend_start`, as text.
    pub(super) started: String,
}

impl ServerSession {
    /// `$1` the pid, `$2` the start time: ends that session if it still runs (a row `true`),
    /// rolling back its transaction and freeing its locks.
    pub(super) const TERMINATE: &'static str =
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE pid = $1 AND backend_start::text = $2";

    /// Ends this session through `client` (another session): whether it was still running.
    pub(super) async fn terminate_through(
        &self,
        client: &Client,
    ) -> std::result::Result<bool, tokio_postgres::Error> {
        let rows = client
            .query(Self::TERMINATE, &[&self.pid, &self.started])
            .await?;
        Ok(rows
            .first()
            .map(|row| row.try_get(0))
            .transpose()?
            .unwrap_or(false))
    }
}

/// Ends `stuck`, a session of a connection that stopped answering, from a new connection to
/// `endpoint`, so that its transaction's locks are freed now rather than when the server times
/// it out (`idle_in_transaction_session_timeout`). Logs what came of it; on a path that is dead
/// both ways the new connection fails too, and the server's timeout does it.
pub(super) async fn end_stuck_session(
    config: Config,
    tls: MakeRustlsConnect,
    timeout: Duration,
    host: String,
    stuck: ServerSession,
) {
    let ended = tokio::time::timeout(timeout, async {
        let (client, connection) = config.connect(tls).await?;
        let reader = tokio::spawn(connection);
        let ended = stuck.terminate_through(&client).await;
        drop(client);
        let _ = reader.await;
        ended
    })
    .await;
    let pid = stuck.pid;
    match ended {
        Ok(Ok(true)) => {
            tracing::info!(host = %host, pid, "ended the server session of the connection that stopped answering; its locks are free")
        }
        Ok(Ok(false)) => {
            tracing::info!(host = %host, pid, "the server session of the connection that stopped answering had already ended")
        }
        Ok(Err(error)) => {
            tracing::warn!(host = %host, pid, error = %describe_error(&error), "could not end the server session of the connection that stopped answering; the server ends it after idle_in_transaction_session_timeout")
        }
        Err(_) => {
            tracing::warn!(host = %host, pid, timeout = ?timeout, "could not reach the server to end the session of the connection that stopped answering; the server ends it after idle_in_transaction_session_timeout")
        }
    }
}

/// Why a connection could not be opened, or a table attached.
#[derive(Debug)]
pub(super) enum OpenFailure {
    /// No connection: the server did not answer in time, refused, or rejected the login.
    Unreachable(String),
    /// Connected, but setting the connection or the table up failed.
    Statement(tokio_postgres::Error),
    /// The table exists but is not one of ours, or was written with another key layout.
    Rejected(PersistentError),
}

impl From<tokio_postgres::Error> for OpenFailure {
    fn from(error: tokio_postgres::Error) -> Self {
        OpenFailure::Statement(error)
    }
}

impl OpenFailure {
    pub(super) fn into_error(self, target: &Target) -> PersistentError {
        match self {
            OpenFailure::Unreachable(reason) => target.connect_error(reason),
            OpenFailure::Statement(source) => target.postgres_error(source),
            OpenFailure::Rejected(error) => error,
        }
    }
}

impl std::fmt::Display for OpenFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenFailure::Unreachable(reason) => f.write_str(reason),
            OpenFailure::Statement(error) => f.write_str(&describe_error(error)),
            OpenFailure::Rejected(error) => write!(f, "{error}"),
        }
    }
}

/// Opens connection number `generation`: connects within `timeout`, applies the session
/// settings and prepares the statements that serve every table; then attaches `tables` (a
/// reconnection's), within the same `timeout`. Notifications from other sessions go to
/// `listeners`; the connection's end is reported there too.
pub(super) async fn open(
    endpoint: &Endpoint,
    tables: &[Arc<TableSql>],
    listeners: &Arc<Listeners>,
    link: &Arc<Link>,
    generation: u64,
    timeout: Duration,
) -> std::result::Result<Live, OpenFailure> {
    let connecting = endpoint.config.connect(endpoint.tls.clone());
    let (client, connection) = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(error)) => return Err(OpenFailure::Unreachable(describe_error(&error))),
        Err(_elapsed) => {
            return Err(OpenFailure::Unreachable(format!(
                "no answer within {timeout:?}"
            )))
        }
    };
    let own_pid = Arc::new(AtomicI32::new(0));
    let closed = spawn_reader(
        connection,
        Arc::clone(listeners),
        Arc::clone(link),
        generation,
        Arc::clone(&own_pid),
    );
    let mut client = client;
    let set_up = async {
        let row = client
            .query_one(
                "SELECT pg_backend_pid(), (SELECT backend_start::text FROM pg_stat_activity \
                 WHERE pid = pg_backend_pid())",
                &[],
            )
            .await?;
        let server_session = ServerSession {
            pid: row.try_get(0)?,
            started: row.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
        };
        own_pid.store(server_session.pid, Ordering::SeqCst);
        if !endpoint.session_settings.is_empty() {
            client.batch_execute(&endpoint.session_settings).await?;
        }
        let classes = endpoint.lock_classes;
        let statements = match prepare(&client, classes).await {
            // The statements of the change log name its tables: on a database that has never
            // seen this crate (or whose tables were dropped), they must be made first.
            Err(error) if error.code() == Some(&SqlState::UNDEFINED_TABLE) => {
                create_own_tables(&mut client, classes).await?;
                prepare(&client, classes).await?
            }
            prepared => prepared?,
        };
        let mut live = Live {
            client,
            server_session,
            lock_classes: classes,
            statements,
            tables: HashMap::new(),
            closed,
        };
        for table in tables {
            attach(&mut live, table, false).await?;
        }
        Ok(live)
    };
    match tokio::time::timeout(timeout, set_up).await {
        Ok(result) => result,
        Err(_elapsed) => Err(OpenFailure::Unreachable(format!(
            "connected, but the server did not finish setting up the connection within {timeout:?}"
        ))),
    }
}

/// Makes `live` serve `table`: sets the table up if `set_up_table` (see [`set_up_table`]),
/// listens on its channel and prepares its statements. A table already attached is only set
/// up.
pub(super) async fn attach(
    live: &mut Live,
    table: &Arc<TableSql>,
    set_up_table: bool,
) -> std::result::Result<(), OpenFailure> {
    if set_up_table {
        self::set_up_table(&mut live.client, table, live.lock_classes).await?;
    }
    if live.tables.contains_key(&table.name) {
        return Ok(());
    }
    // In the round trip that reads the table's columns, its statements are prepared for the
    // columns it had when last seen (they rarely change), and again only if they did.
    let assumed = table.expiring_seen.load(Ordering::Relaxed);
    let (listened, expiring, prepared) = tokio::join!(
        live.client.batch_execute(&table.listen),
        has_expiry_column(live, &table.name),
        prepare_table(&live.client, table, assumed),
    );
    listened?;
    let expiring = expiring?;
    let statements = match prepared {
        Ok(statements) if expiring == assumed => statements,
        _ => prepare_table(&live.client, table, expiring).await?,
    };
    live.tables.insert(table.name.clone(), statements);
    Ok(())
}

/// Whether `table` has the column `expires_at` now.
pub(super) async fn has_expiry_column(
    live: &Live,
    table: &str,
) -> std::result::Result<bool, tokio_postgres::Error> {
    let rows = live
        .client
        .query(&live.statements.expiry_columns, &[&[table].as_slice()])
        .await?;
    Ok(!rows.is_empty())
}

/// Prepares `table`'s statements again, for the layout it has now (`expiring`).
pub(super) async fn reprepare_table(
    live: &mut Live,
    table: &str,
    expiring: bool,
) -> std::result::Result<(), tokio_postgres::Error> {
    let sql = Arc::clone(&live.table(table).sql);
    let statements = prepare_table(&live.client, &sql, expiring).await?;
    live.tables.insert(sql.name.clone(), statements);
    Ok(())
}

/// Reads the connection's messages until it ends: notifications from other sessions go to
/// `listeners`, notices are dropped. The returned receiver resolves when the connection is
/// gone.
fn spawn_reader(
    mut connection: Connection<Socket, TlsStream>,
    listeners: Arc<Listeners>,
    link: Arc<Link>,
    generation: u64,
    own_pid: Arc<AtomicI32>,
) -> oneshot::Receiver<()> {
    let (closing, closed) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let reason = loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(notification))) => {
                    // Our own commits are already in our maps (the session wakes the others).
                    if notification.process_id() != own_pid.load(Ordering::SeqCst) {
                        listeners.heard(notification.channel(), notification.payload());
                    }
                }
                Some(Ok(_notice)) => {}
                Some(Err(error)) => break describe_error(&error),
                None => break "the connection was closed".to_owned(),
            }
        };
        link.lost(generation, &reason, false);
        listeners.connection_changed();
        drop(closing);
    });
    closed
}

async fn prepare(
    client: &Client,
    classes: LockClasses,
) -> std::result::Result<Statements, tokio_postgres::Error> {
    let (table, key) = (classes.table(), classes.key());
    let lock_table = format!("SELECT pg_advisory_xact_lock({table}, $1)");
    let lock_table_shared = format!("SELECT pg_advisory_xact_lock_shared({table}, $1)");
    let lock_keys =
        format!("SELECT pg_advisory_xact_lock({key}, id) FROM unnest($1::int4[]) AS id");
    // Sent together: one round trip.
    let (lock_table, lock_table_shared, lock_keys, begin, commit, rollback) = tokio::try_join!(
        client.prepare(&lock_table),
        client.prepare(&lock_table_shared),
        client.prepare(&lock_keys),
        client.prepare("BEGIN"),
        client.prepare("COMMIT"),
        client.prepare("ROLLBACK"),
    )?;
    let (transaction_id, transaction_status, expiry_columns, log, prune_log, revision) = tokio::try_join!(
        client.prepare("SELECT txid_current()"),
        client.prepare("SELECT txid_status($1)"),
        client.prepare(super::expiry::COLUMNS),
        client.prepare(log::LOG),
        client.prepare(log::PRUNE),
        client.prepare(log::REVISION),
    )?;
    Ok(Statements {
        lock_table,
        lock_table_shared,
        lock_keys,
        begin,
        commit,
        rollback,
        transaction_id,
        transaction_status,
        expiry_columns,
        log,
        prune_log,
        revision,
    })
}

async fn prepare_table(
    client: &Client,
    sql: &Arc<TableSql>,
    expiring: bool,
) -> std::result::Result<TableStatements, tokio_postgres::Error> {
    let layout = sql.layout_sql(expiring);
    let sweep_candidates = async {
        match expiring {
            true => client.prepare(&sql.sweep_candidates).await.map(Some),
            false => Ok(None),
        }
    };
    let (
        upsert,
        delete,
        delete_all,
        select_all,
        select_keys,
        read_log,
        lock_shared,
        locked_elsewhere,
        sweep_candidates,
    ) = tokio::try_join!(
        client.prepare(&layout.upsert),
        client.prepare(&sql.delete),
        client.prepare(&sql.delete_all),
        client.prepare(&layout.select_all),
        client.prepare(&layout.select_keys),
        client.prepare(&layout.read_log),
        client.prepare(&sql.lock_shared),
        client.prepare(&sql.locked_elsewhere),
        sweep_candidates,
    )?;
    sql.expiring_seen.store(expiring, Ordering::Relaxed);
    Ok(TableStatements {
        sql: Arc::clone(sql),
        expiring,
        upsert,
        delete,
        delete_all,
        select_all,
        select_keys,
        read_log,
        lock_shared,
        locked_elsewhere,
        sweep_candidates,
    })
}

/// A column of an existing table: name, type, and whether it alone is the primary key.
type Column = (String, String, bool);

/// Checks the table, creating it first if it is missing, so that a foreign table is refused
/// before anything is written; makes the crate's own tables (the change log, the key layouts)
/// if they are missing; and records or checks the key layout. Instances starting together take
/// an advisory lock around the creation: `CREATE TABLE IF NOT EXISTS` can fail against a
/// concurrent one. Existing tables are only read, so a role without the right to create tables
/// can use ones made for it.
async fn set_up_table(
    client: &mut Client,
    sql: &TableSql,
    classes: LockClasses,
) -> std::result::Result<(), OpenFailure> {
    create_own_tables(client, classes).await?;
    let mut found = columns(client, &sql.name).await?;
    if found.is_empty() {
        let transaction = client.transaction().await?;
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&classes.create(), &sql.name],
            )
            .await?;
        transaction.batch_execute(&sql.create).await?;
        // What is recorded for a table of this name that was since dropped is not this one's:
        // its layout goes, and so does its log, marked pruned so that a map still following the
        // old table reloads.
        for forget in [
            "DELETE FROM persistent_map_tables WHERE table_name = $1",
            "DELETE FROM persistent_map_log WHERE table_name = $1",
            "UPDATE persistent_map_revisions SET pruned = rev WHERE table_name = $1",
        ] {
            transaction.execute(forget, &[&sql.name]).await?;
        }
        transaction.commit().await?;
        found = columns(client, &sql.name).await?;
    }
    check_columns(&sql.name, &found).map_err(OpenFailure::Rejected)?;
    client.execute(log::ADD_TABLE, &[&sql.name]).await?;
    check_or_record_layout(client, sql).await
}

/// Makes the crate's own tables (the change log, the key layouts) if any is missing, under the
/// setup lock: concurrent `CREATE ... IF NOT EXISTS` can fail.
async fn create_own_tables(
    client: &mut Client,
    classes: LockClasses,
) -> std::result::Result<(), tokio_postgres::Error> {
    let missing: bool = client.query_one(log::MISSING, &[]).await?.try_get(0)?;
    if missing {
        let transaction = client.transaction().await?;
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock($1, hashtext('persistent_map_log'))",
                &[&classes.create()],
            )
            .await?;
        transaction.batch_execute(log::CREATE).await?;
        transaction.commit().await?;
    }
    Ok(())
}

/// Records the key layout of `sql` for its table if none is recorded, else checks that it is
/// the one recorded, so that keys are never parsed by a key type laid out differently from the
/// one that wrote them. An empty layout (a key type without one) is neither recorded nor
/// checked.
async fn check_or_record_layout(
    client: &Client,
    sql: &TableSql,
) -> std::result::Result<(), OpenFailure> {
    if sql.layout.is_empty() {
        return Ok(());
    }
    client
        .execute(
            "INSERT INTO persistent_map_tables (table_name, key_layout) VALUES ($1, $2) \
             ON CONFLICT (table_name) DO NOTHING",
            &[&sql.name, &sql.layout],
        )
        .await?;
    let stored: String = client
        .query_one(
            "SELECT key_layout FROM persistent_map_tables WHERE table_name = $1",
            &[&sql.name],
        )
        .await?
        .try_get(0)?;
    if stored == sql.layout {
        return Ok(());
    }
    Err(OpenFailure::Rejected(
        PersistentError::IncompatibleKeyLayout {
            table: sql.name.clone(),
            stored,
            expected: sql.layout.to_owned(),
        },
    ))
}

/// The columns of `table`, to check before using it.
async fn columns(
    client: &Client,
    table: &str,
) -> std::result::Result<Vec<Column>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    coalesce(i.indnkeyatts = 1 AND i.indkey[0] = a.attnum, false) \
             FROM pg_attribute a \
             LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
             WHERE a.attrelid = to_regclass($1::text) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&format!("\"{table}\"")],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect()
}

/// Refuses a table that does not have `key text` as its whole primary key and `value jsonb`.
fn check_columns(table: &str, columns: &[Column]) -> Result<()> {
    let incompatible = |reason: String| PersistentError::IncompatibleTable {
        table: table.to_owned(),
        reason,
    };
    let column = |wanted: &str| columns.iter().find(|(name, _, _)| name == wanted);
    let listed = || {
        columns
            .iter()
            .map(|(name, kind, _)| format!("{name} {kind}"))
            .collect::<Vec<_>>()
    };
    match column("key") {
        Some((_, kind, true)) if kind == "text" => {}
        _ => {
            return Err(incompatible(format!(
                "it needs a column `key` of type text that is its whole primary key; its columns are {:?}",
                listed()
            )))
        }
    }
    match column("value") {
        Some((_, kind, _)) if kind == "jsonb" => Ok(()),
        Some((_, kind, _)) => Err(incompatible(format!(
            "its column `value` is of type {kind}, not jsonb"
        ))),
        None => Err(incompatible(format!(
            "it has no column `value`; its columns are {:?}",
            listed()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, kind: &str, primary_key: bool) -> Column {
        (name.to_owned(), kind.to_owned(), primary_key)
    }

    #[test]
    fn only_key_text_primary_key_and_value_jsonb_are_accepted() {
        let good = [column("key", "text", true), column("value", "jsonb", false)];
        assert!(check_columns("t", &good).is_ok());
        for bad in [
            vec![
                column("key", "text", false),
                column("value", "jsonb", false),
            ],
            vec![
                column("key", "integer", true),
                column("value", "jsonb", false),
            ],
            vec![
                column("id", "integer", true),
                column("value", "jsonb", false),
            ],
            vec![column("key", "text", true), column("value", "text", false)],
            vec![column("key", "text", true), column("data", "jsonb", false)],
        ] {
            let err = check_columns("t", &bad).unwrap_err();
            assert!(
                matches!(err, PersistentError::IncompatibleTable { .. }),
                "{err}"
            );
            assert!(err.to_string().contains("\"t\""), "{err}");
        }
    }

    #[test]
    fn table_names_longer_than_postgres_allows_are_refused() {
        assert!(validate_table(&"t".repeat(63)).is_ok());
        let err = validate_table(&"t".repeat(64)).unwrap_err();
        assert!(err.to_string().contains("63 bytes"), "{err}");
        assert!(validate_table("bad name").is_err());
    }

    const OPERATION: Duration = Duration::from_secs(8);

    #[test]
    fn server_limits_follow_the_operation_timeout_unless_the_url_sets_them() {
        let keepalives = "SET tcp_keepalives_idle = 8; SET tcp_keepalives_interval = 2; \
                          SET tcp_keepalives_count = 3; ";
        assert_eq!(
            server_limits("", OPERATION),
            format!(
                "SET lock_timeout = 2000; SET statement_timeout = 7200; \
                 SET idle_in_transaction_session_timeout = 4000; {keepalives}"
            )
        );
        assert_eq!(
            server_limits(
                "-c lock_timeout=5s -c idle_in_transaction_session_timeout=0",
                OPERATION
            ),
            format!("SET statement_timeout = 7200; {keepalives}")
        );
        let endpoint = parse_config("postgres://u@h/db", None, OPERATION).unwrap();
        assert_eq!(endpoint.config.get_tcp_user_timeout(), Some(&OPERATION));
        assert_eq!(endpoint.config.get_keepalives_idle(), OPERATION);
        assert_eq!(
            endpoint.config.get_keepalives_interval(),
            Some(Duration::from_secs(2))
        );
        let endpoint =
            parse_config("postgres://u@h/db?keepalives_idle=60", None, OPERATION).unwrap();
        assert_eq!(
            endpoint.config.get_keepalives_idle(),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn the_connect_timeout_comes_from_the_builder_else_the_url_else_the_default() {
        let timeout =
            |url: &str, given| parse_config(url, given, OPERATION).unwrap().connect_timeout;
        let url = "postgres://u@h/db";
        assert_eq!(timeout(url, None), DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(
            timeout("postgres://u@h/db?connect_timeout=2", None),
            Duration::from_secs(2)
        );
        let given = Some(Duration::from_millis(300));
        assert_eq!(
            timeout("postgres://u@h/db?connect_timeout=2", given),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn hosts_are_named_with_their_ports_and_without_passwords() {
        let host_of = |url: &str| parse_config(url, None, OPERATION).unwrap().host;
        assert_eq!(
            host_of("postgres://u:secret@db.example:6543/app"),
            "db.example:6543"
        );
        assert_eq!(host_of("postgres://u@10.0.0.1/app"), "10.0.0.1:5432");
        assert_eq!(host_of("host=a,b port=1,2 user=u"), "a:1,b:2");
        let err = parse_config(
            "postgres://u:secret@db.example:notaport/app",
            None,
            OPERATION,
        )
        .unwrap_err();
        assert!(matches!(err, PersistentError::Config { .. }), "{err}");
        assert!(err.to_string().contains("db.example"), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
