//! Connections to instances, and the idle ones kept between requests.
//!
//! A pooled connection is only ever used for the address it was opened to (so a request never
//! reaches a container that took over an address: `docs/router.md`, R5), and one that became
//! readable while idle (closed by the instance, or with stray bytes) is dropped, not used.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::READ_SIZE;
use crate::idle::IdlePool;

/// A connection to an instance with what has been read from it but not yet used.
pub(super) struct UpConn {
    pub(super) stream: TcpStream,
    pub(super) buf: BytesMut,
}

/// Idle keep-alive connections to instances. An idle connection the instance closed is
/// readable (EOF), one with unexpected bytes too: either is dropped instead of used.
pub(crate) struct Pool(IdlePool<UpConn>);

impl Pool {
    pub(crate) fn new(idle_timeout: Duration, max_idle_per_addr: usize) -> Self {
        Pool(IdlePool::new(idle_timeout, max_idle_per_addr))
    }

    pub(super) fn take(&self, addr: SocketAddr) -> Option<UpConn> {
        self.0.take(addr, |conn| {
            let mut probe = [0u8; 1];
            matches!(conn.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        })
    }

    pub(super) fn put(&self, addr: SocketAddr, conn: UpConn) {
        self.0.put(addr, conn)
    }
}

pub(super) async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<UpConn> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ))
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(UpConn {
        stream,
        buf: BytesMut::with_capacity(READ_SIZE),
    })
}
