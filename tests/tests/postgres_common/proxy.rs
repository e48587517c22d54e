//! A TCP proxy to the test server that can freeze, as a server that stopped answering (or a
//! network path that went dead without closing) would look to the instance behind it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Whether traffic passes, shared by every connection's pumps.
#[derive(Debug, Clone, Default)]
struct Gate {
    frozen: bool,
    /// Freeze as soon as the client sends a chunk holding these bytes (the chunk is held).
    armed: Option<&'static [u8]>,
    /// Whether connections made once frozen pass anyway.
    spare_new: bool,
    /// The number of the first connection made once frozen.
    first_spared: u64,
}

impl Gate {
    fn holds(&self, connection: u64) -> bool {
        self.frozen && !(self.spare_new && connection >= self.first_spared)
    }
}

/// The proxy: while frozen it keeps every connection open (and accepts new ones) but passes
/// nothing on, holding what it read.
pub(crate) struct FreezingProxy {
    pub(crate) address: SocketAddr,
    gate: Arc<watch::Sender<Gate>>,
    connections: Arc<AtomicU64>,
}

impl FreezingProxy {
    pub(crate) async fn start(server: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let gate = Arc::new(watch::channel(Gate::default()).0);
        let connections = Arc::new(AtomicU64::new(0));
        let (accepting_gate, counter) = (Arc::clone(&gate), Arc::clone(&connections));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(server).await else {
                    return;
                };
                let id = counter.fetch_add(1, Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let gate = Arc::clone(&accepting_gate);
                let made = Some(Arc::clone(&counter));
                tokio::spawn(pump(client_read, server_write, Arc::clone(&gate), id, made));
                tokio::spawn(pump(server_read, client_write, gate, id, None));
            }
        });
        Self {
            address,
            gate,
            connections,
        }
    }

    /// Freezes every connection, and those made later.
    pub(crate) fn freeze(&self) {
        self.gate.send_modify(|gate| gate.frozen = true);
    }

    /// Freezes every connection as soon as the client sends bytes holding `marker`, holding
    /// that chunk; connections made after that pass if `spare_new`.
    pub(crate) fn freeze_when_sent(&self, marker: &'static [u8], spare_new: bool) {
        self.gate.send_modify(|gate| {
            gate.armed = Some(marker);
            gate.spare_new = spare_new;
        });
    }

    pub(crate) fn is_frozen(&self) -> bool {
        self.gate.borrow().frozen
    }

    /// Lets everything through again, what was held first.
    pub(crate) fn thaw(&self) {
        self.gate.send_replace(Gate::default());
    }

    /// The test server's user and database through this proxy, with `parameters`.
    pub(crate) fn url(&self, parameters: &[(&str, &str)]) -> String {
        super::url_at_host(
            &self.address.ip().to_string(),
            Some(self.address.port()),
            parameters,
        )
    }

    /// Connections made so far.
    pub(crate) fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to` for connection `id`, holding each chunk while the gate holds the
/// connection. On the client's side (given the count of connections `made`), a chunk that holds
/// the armed marker freezes the gate first.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    gate: Arc<watch::Sender<Gate>>,
    id: u64,
    made: Option<Arc<AtomicU64>>,
) {
    let mut watching = gate.subscribe();
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let chunk = &buffer[..read];
        if let Some(made) = &made {
            gate.send_if_modified(|gate| match gate.armed {
                Some(marker) if chunk.windows(marker.len()).any(|bytes| bytes == marker) => {
                    gate.armed = None;
                    gate.frozen = true;
                    gate.first_spared = made.load(Ordering::SeqCst);
                    true
                }
                _ => false,
            });
        }
        if watching.wait_for(|gate| !gate.holds(id)).await.is_err()
            || to.write_all(chunk).await.is_err()
        {
            return;
        }
    }
}
