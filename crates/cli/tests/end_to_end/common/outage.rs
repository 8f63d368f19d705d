//! An AWS outage the test owns: a TCP proxy in front of LocalStack that the test can take
//! down and bring back, for this test's processes only (the LocalStack process is shared by
//! the suite's parallel tests, and a native LocalStack restarted loses its queues).
//!
//! - [`Mode::Up`]: bytes flow both ways.
//! - [`Mode::Down`]: what a stopped endpoint looks like: every open connection is reset and
//!   every new one is reset as soon as it is accepted.
//! - [`Mode::Hung`]: what a frozen endpoint looks like: connections stay open (new ones are
//!   accepted) but no byte moves either way; they are closed when the mode changes.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Forwards.
    Up,
    /// Resets every connection.
    Down,
    /// Holds every connection without forwarding.
    Hung,
}

/// The proxy; it runs on a thread of its own (so blocking test code cannot stall it) until
/// dropped.
pub(crate) struct OutageProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl OutageProxy {
    /// A proxy on a free local port forwarding to `upstream` (`http://host:port`).
    pub(crate) fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("LocalStack's endpoint is http://ip:port");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Up);
        let mode = Arc::new(mode);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let shared = mode.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    _ = stop_rx => {}
                    _ = accept_loop(listener, upstream, shared) => {}
                }
            });
        });
        OutageProxy {
            addr,
            mode,
            _stop: stop_tx,
        }
    }

    /// The proxy's URL, for `endpoint_url`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes `dir/stepq.toml` for `queue` with every AWS request going through this proxy
    /// (the queue URL names the proxy too, so no request goes around it), at the default SQS
    /// settings and a fresh S3 prefix under `prefix_root/`.
    pub(crate) fn write_config(
        &self,
        dir: &std::path::Path,
        ls: &super::localstack::LocalStack,
        queue: &super::localstack::TestQueue,
        prefix_root: &str,
    ) {
        let upstream = ls
            .endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let queue_url = queue.url.replace(upstream, &self.addr.to_string());
        super::localstack::write_default_config(dir, ls, &queue_url, &self.url(), prefix_root);
    }

    /// Switches the mode (open connections follow at once).
    pub(crate) fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, mode: Arc<watch::Sender<Mode>>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let modes = mode.subscribe();
        tokio::spawn(serve(client, upstream, modes));
    }
}

/// One client connection, for as long as the mode allows.
async fn serve(client: TcpStream, upstream: SocketAddr, mut modes: watch::Receiver<Mode>) {
    let _ = client.set_nodelay(true);
    let first = *modes.borrow_and_update();
    match first {
        Mode::Down => return reset(client),
        Mode::Hung => {
            // Held open and silent until the mode changes, then closed.
            let _ = modes.changed().await;
            return reset(client);
        }
        Mode::Up => {}
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return reset(client);
    };
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let forward = async {
        let up = copy(&mut client_read, &mut server_write);
        let down = copy(&mut server_read, &mut client_write);
        tokio::select! { _ = up => {}, _ = down => {} }
    };
    let mut watcher = modes.clone();
    let interrupted = tokio::select! {
        _ = forward => None,
        changed = watcher.wait_for(|m| *m != Mode::Up) => changed.ok().map(|m| *m),
    };
    if interrupted == Some(Mode::Hung) {
        // Frozen: both sockets kept, nothing moved, until the endpoint comes back.
        let _ = modes.wait_for(|m| *m != Mode::Hung).await;
    }
    if interrupted.is_some() {
        if let Ok(client) = client_read.reunite(client_write) {
            reset(client);
        }
    }
}

async fn copy(from: &mut tokio::net::tcp::OwnedReadHalf, to: &mut tokio::net::tcp::OwnedWriteHalf) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Closes with a reset (linger 0), as a dead endpoint's kernel would answer. (`set_linger` is
/// deprecated because a non-zero linger blocks the thread on drop; zero does not block.)
#[allow(deprecated)]
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}
