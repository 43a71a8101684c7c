//! The bodies of the HTTP/2 path: the response body the client reads (counted, finishing the
//! request's log, cut at the deadline, releasing the instance connection when it ends), and the
//! request body handed to whichever attempt polls it first.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::upstream::Lease;
use crate::proxy::{BoxError, ProxyBody, RequestLog};

pin_project_lite::pin_project! {
    /// Counts response bytes, finishing the log when dropped, and ends the response with an
    /// error (the client sees the connection cut) once the request's deadline has passed.
    pub(super) struct LoggedBody {
        #[pin]
        inner: ProxyBody,
        log: Option<RequestLog>,
        deadline: Option<tokio::time::Instant>,
        // Armed only when the body first has to wait, so a response that is already complete
        // (the common small one) never touches the timer wheel.
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        // The instance connection this body comes from, released to the pool when it ends;
        // dropped (closing the connection) if the body is abandoned or fails.
        lease: Option<Lease>,
    }
}

impl LoggedBody {
    /// `deadline`: when the request's maximum time runs out (none for the router's own
    /// responses, which are complete at once).
    pub(super) fn new(
        inner: ProxyBody,
        log: RequestLog,
        deadline: Option<tokio::time::Instant>,
        lease: Option<Lease>,
    ) -> Self {
        LoggedBody {
            inner,
            log: Some(log),
            deadline,
            timer: None,
            lease,
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(timer) = this.timer.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(request_timed_out(this.log))));
            }
        }
        let res = this.inner.as_mut().poll_frame(cx);
        if res.is_pending() && this.timer.is_none() {
            if let Some(deadline) = *this.deadline {
                let mut timer = Box::pin(tokio::time::sleep_until(deadline));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(request_timed_out(this.log))));
                }
                *this.timer = Some(timer);
            }
        }
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(log)) = (frame.data_ref(), this.log.as_mut()) {
                    log.bytes_sent += data.len() as u64;
                }
                if this.lease.is_some() && this.inner.is_end_stream() {
                    if let Some(l) = this.lease.take() {
                        l.release();
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(l) = this.lease.take() {
                    l.release();
                }
            }
            Poll::Ready(Some(Err(_))) => *this.lease = None,
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn request_timed_out(log: &mut Option<RequestLog>) -> BoxError {
    if let Some(log) = log {
        log.timed_out();
    }
    "the request took longer than the router's maximum request time".into()
}

/// The client's request body, waiting for whichever attempt first polls it.
pub(super) struct BodySlot {
    slot: Arc<Mutex<Option<Incoming>>>,
    /// Request body bytes read from the client, for the access log.
    pub(super) received: Arc<AtomicU64>,
    /// Longest the body may go without a frame.
    idle: Duration,
    /// Set when the body stalled past `idle` (the exchange is then aborted).
    timed_out: Arc<AtomicBool>,
}

impl BodySlot {
    pub(super) fn new(body: Incoming, idle: Duration) -> Self {
        BodySlot {
            slot: Arc::new(Mutex::new(Some(body))),
            received: Arc::new(AtomicU64::new(0)),
            idle,
            timed_out: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A body for one attempt; only the first attempt that polls gets the client's bytes.
    pub(super) fn body(&self) -> SlotBody {
        SlotBody {
            state: SlotState::Waiting(Arc::clone(&self.slot)),
            received: Arc::clone(&self.received),
            idle: self.idle,
            timer: None,
            moved: false,
            timed_out: Arc::clone(&self.timed_out),
        }
    }

    /// Whether the client stopped sending the body for longer than the body read timeout.
    pub(super) fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// Whether an attempt has started reading the body (so bytes may have reached an instance).
    pub(super) fn started(&self) -> bool {
        self.slot.lock().map(|s| s.is_none()).unwrap_or(true)
    }
}

enum SlotState {
    Waiting(Arc<Mutex<Option<Incoming>>>),
    Taken(Incoming),
    Gone,
}

/// The upstream request body: the client's [`Incoming`], taken from the slot on first poll.
/// It fails once the client has sent nothing for `idle` (hyper then aborts the request).
pub(crate) struct SlotBody {
    state: SlotState,
    received: Arc<AtomicU64>,
    idle: Duration,
    // Armed when the body first has to wait; moved on only when it waits again after a frame
    // (`moved`), so a body that streams steadily resets it once per wait, not per frame.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    moved: bool,
    timed_out: Arc<AtomicBool>,
}

impl SlotBody {
    fn with_inner<T>(&self, f: impl FnOnce(&Incoming) -> T, default: T) -> T {
        match &self.state {
            SlotState::Taken(b) => f(b),
            SlotState::Waiting(slot) => match slot.lock() {
                Ok(g) => g.as_ref().map(f).unwrap_or(default),
                Err(_) => default,
            },
            SlotState::Gone => default,
        }
    }
}

impl Body for SlotBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let SlotState::Waiting(slot) = &self.state {
            let taken = slot.lock().ok().and_then(|mut g| g.take());
            self.state = match taken {
                Some(b) => SlotState::Taken(b),
                None => SlotState::Gone,
            };
        }
        let this = &mut *self;
        match &mut this.state {
            SlotState::Taken(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        this.received.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                    this.moved = true;
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => {
                    let at = tokio::time::Instant::now() + this.idle;
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    if std::mem::take(&mut this.moved) {
                        timer.as_mut().reset(at);
                    }
                    if timer.as_mut().poll(cx).is_ready() {
                        this.timed_out.store(true, Ordering::Relaxed);
                        this.state = SlotState::Gone;
                        return Poll::Ready(Some(Err(
                            "the client stopped sending the request body".into(),
                        )));
                    }
                    Poll::Pending
                }
            },
            _ => Poll::Ready(Some(Err(
                "request body was already sent to another instance".into(),
            ))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.with_inner(Body::is_end_stream, false)
    }

    fn size_hint(&self) -> SizeHint {
        self.with_inner(Body::size_hint, SizeHint::default())
    }
}
