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
use tokio::sync::OwnedSemaphorePermit;

use super::READ_SIZE;
use crate::idle::{IdlePool, UpstreamLimit};

/// A connection to an instance with what has been read from it but not yet used.
pub(super) struct UpConn {
    pub(super) stream: TcpStream,
    pub(super) buf: BytesMut,
    /// Its place under the limit on connections to instances, given back when it closes.
    _permit: OwnedSemaphorePermit,
}

/// Why no new connection to an instance was opened.
pub(super) enum ConnectError {
    /// At the limit on connections to instances, and none came free in time.
    Limit,
    /// Refused, unreachable or timed out.
    Io(io::Error),
}

/// Idle keep-alive connections to instances. An idle connection the instance closed is
/// readable (EOF), one with unexpected bytes too: either is dropped instead of used.
pub(crate) struct Pool {
    idle: IdlePool<UpConn>,
    limit: UpstreamLimit,
}

impl Pool {
    pub(crate) fn new(
        idle_timeout: Duration,
        max_idle_per_addr: usize,
        limit: UpstreamLimit,
    ) -> Self {
        Pool {
            idle: IdlePool::new(idle_timeout, max_idle_per_addr),
            limit,
        }
    }

    pub(super) fn take(&self, addr: SocketAddr) -> Option<UpConn> {
        self.idle.take(addr, |conn| {
            let mut probe = [0u8; 1];
            matches!(conn.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        })
    }

    pub(super) fn put(&self, addr: SocketAddr, conn: UpConn) {
        self.idle.put(addr, conn)
    }

    /// A new connection to `addr`, within the limit on connections to instances.
    pub(super) async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<UpConn, ConnectError> {
        let permit = self
            .limit
            .acquire(|| self.idle.drop_oldest())
            .await
            .ok_or(ConnectError::Limit)?;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(r) => r.map_err(ConnectError::Io)?,
            Err(_) => {
                return Err(ConnectError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                )))
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(UpConn {
            stream,
            buf: BytesMut::with_capacity(READ_SIZE),
            _permit: permit,
        })
    }
}
