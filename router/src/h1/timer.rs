//! Reads bounded by deadlines, on one lazily re-armed timer.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant as Deadline;

use super::READ_SIZE;

/// One timer per connection (and one more for a request body forwarded while the response
/// streams), re-armed lazily: waiting with a later deadline than the armed one touches nothing,
/// and when the timer fires early it is moved to the deadline that applies then. A timer per read
/// would cost a timer-wheel insert and removal each time, and often a wake-up of the runtime's
/// driver (an eventfd write) when the new deadline is the earliest.
pub(super) struct Timer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    at: Deadline,
}

impl Timer {
    pub(super) fn new(at: Deadline) -> Self {
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            at,
        }
    }

    /// `fut`'s output, or `None` once `deadline` has passed.
    pub(super) async fn within<F: std::future::Future>(
        &mut self,
        deadline: Deadline,
        fut: F,
    ) -> Option<F::Output> {
        if deadline < self.at {
            self.sleep.as_mut().reset(deadline);
            self.at = deadline;
        }
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return Some(out),
                _ = self.sleep.as_mut() => {
                    if Deadline::now() >= deadline {
                        return None;
                    }
                    self.sleep.as_mut().reset(deadline);
                    self.at = deadline;
                }
            }
        }
    }
}

/// Reads more into `buf`; `Ok(0)` is end of stream. Past `deadline`: `TimedOut`.
pub(super) async fn read_more<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    deadline: Deadline,
    timer: &mut Timer,
) -> io::Result<usize> {
    buf.reserve(READ_SIZE);
    match timer.within(deadline, io.read_buf(buf)).await {
        Some(r) => r,
        None => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
    }
}
