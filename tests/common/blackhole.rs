//! A TCP proxy in the test process, on `127.0.0.1:0`, in front of a real server, that can turn
//! the connections it holds into a black hole: on [`Blackhole::swallow`] every connection open
//! at that moment stops carrying bytes in both directions, yet stays open (no FIN, no RST, and
//! the kernel still acknowledges what is sent), which is what a client sees of a half-open
//! connection, a peer gone behind the same Service IP or a firewall that drops packets.
//! Connections accepted afterwards are forwarded as before: the server behind the address is
//! reachable, only the old connections are dead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A running proxy; it and every connection it holds close when dropped.
pub struct Blackhole {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Bumped by `swallow`; a connection accepted under an older value stops forwarding.
    epoch: watch::Sender<u64>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Blackhole {
    /// Forwards `127.0.0.1:<port>` of the upstream.
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (epoch, watching) = watch::channel(0u64);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            // Owned here, so aborting this task drops (closes) every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let mut swallowed = watching.clone();
                let born = *swallowed.borrow_and_update();
                connections.spawn(async move {
                    let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)).await else { return };
                    let (mut client, mut upstream) = (client, upstream);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => return,
                        _ = swallowed.wait_for(|epoch| *epoch > born) => {}
                    }
                    // Swallowed: hold both ends open and never read or write again.
                    std::future::pending::<()>().await;
                    drop((client, upstream));
                });
                // Forget the connections that ended by themselves.
                while connections.try_join_next().is_some() {}
            }
        });
        Self { addr, epoch, accepted, task }
    }

    /// `redis://<addr>/`.
    pub fn redis_url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Every connection open now goes silent; later ones are forwarded.
    pub fn swallow(&self) {
        self.epoch.send_modify(|epoch| *epoch += 1);
    }

    /// How many connections it accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}
