//! Early answers to requests whose body was not read to its end.
//!
//! A handler may answer before it has read the whole request body — 413 for a body over the
//! limit, 401 for a vehicle route without a certificate, 429. Over HTTP/1 the connection is
//! then closed after the answer. Over HTTP/2, dropping the unread body makes the server reset
//! the stream (RST_STREAM) right after the answer while the client is still uploading, and
//! many clients (curl 7.88: exit 92, "Stream error in the HTTP/2 framing layer") report the
//! reset instead of the answer: the vehicle never learns the rule it broke.
//!
//! So every request body is held until the response has been sent, then whatever the client
//! still sends is read and thrown away — at most [`LINGER_MAX_BYTES`] for at most
//! [`LINGER_TIMEOUT`] (the way web servers "linger" on close) — and only then dropped. An
//! endless body still ends in a reset, just not before the answer has had its chance. Bodies
//! the handler read to their end (nearly every request) skip all of this.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use axum::BoxError;
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};

/// Most bytes of an unread request body read (and discarded) after the answer.
pub(crate) const LINGER_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// Longest the rest of an unread request body is read after the answer.
pub(crate) const LINGER_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection's request body, shared by the handler (which reads it) and the response
/// (which keeps it until it has been sent).
type Shared = Arc<Mutex<Incoming>>;

/// Keeps a request's body after the handler is done with it; see [`answer`].
pub(crate) struct Held(Shared);

/// Called for every frame of a request body received (the connection layer watches for
/// clients that stop sending).
pub(crate) type OnFrame = Arc<dyn Fn() + Send + Sync>;

/// Splits `request`: the returned request reads the connection's body as usual (calling
/// `on_frame` for each frame), while [`Held`] keeps that body alive whatever the handler does
/// with its copy.
pub(crate) fn hold(request: Request<Incoming>, on_frame: OnFrame) -> (Request<Body>, Held) {
    let (parts, body) = request.into_parts();
    let shared = Arc::new(Mutex::new(body));
    let reader = Reader {
        body: shared.clone(),
        on_frame: Some(on_frame),
    };
    (Request::from_parts(parts, Body::new(reader)), Held(shared))
}

/// The response to send for a request split by [`hold`]. Its body keeps `guard` until it
/// has been sent (or abandoned) — the connection layer counts requests in flight that way —
/// and, if the request body was not read to its end, drains the rest of it in the background
/// within the bounds above.
pub(crate) fn answer<G: ResponseWatch>(
    response: Response<Body>,
    held: Held,
    mut guard: G,
) -> Response<Body> {
    guard.started();
    let held = (!at_end(&held.0)).then_some(held.0);
    response.map(|inner| Body::new(Lingering { inner, held, guard }))
}

fn at_end(shared: &Shared) -> bool {
    // A poisoned lock means a reader panicked: nothing worth draining.
    shared.lock().map_or(true, |body| body.is_end_stream())
}

/// Told about a response as it is sent (the connection layer watches for clients that stop
/// reading).
pub(crate) trait ResponseWatch: Send + Unpin + 'static {
    /// The response is about to be sent.
    fn started(&mut self);
    /// The connection asked for more of the response body: the client is reading.
    fn progressed(&self);
}

/// Reads the shared request body.
struct Reader {
    body: Shared,
    on_frame: Option<OnFrame>,
}

impl HttpBody for Reader {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = {
            let Ok(mut body) = self.body.lock() else {
                return Poll::Ready(Some(Err("request body lock poisoned".into())));
            };
            Pin::new(&mut *body).poll_frame(cx)
        };
        if let (Poll::Ready(Some(Ok(_))), Some(on_frame)) = (&polled, &self.on_frame) {
            on_frame();
        }
        polled.map(|frame| frame.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        at_end(&self.body)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .lock()
            .map_or_else(|_| SizeHint::default(), |body| body.size_hint())
    }
}

/// A response body that keeps the request body (and a guard) until it is dropped, after it
/// was sent.
struct Lingering<G> {
    inner: Body,
    held: Option<Shared>,
    guard: G,
}

impl<G: ResponseWatch> HttpBody for Lingering<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        this.guard.progressed();
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<G> Drop for Lingering<G> {
    fn drop(&mut self) {
        let Some(shared) = self.held.take() else {
            return;
        };
        if at_end(&shared) {
            return;
        }
        // Dropped outside a runtime (never in the server): the body is simply dropped.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(drain(Reader {
            body: shared,
            on_frame: None,
        }));
    }
}

/// Reads and discards what is left of a request body, within the bounds.
async fn drain(mut reader: Reader) {
    let mut read: u64 = 0;
    let finished = tokio::time::timeout(LINGER_TIMEOUT, async {
        while read <= LINGER_MAX_BYTES {
            match std::future::poll_fn(|cx| Pin::new(&mut reader).poll_frame(cx)).await {
                Some(Ok(frame)) => {
                    let len = frame.data_ref().map_or(0, Bytes::len);
                    read = read.saturating_add(u64::try_from(len).unwrap_or(u64::MAX));
                }
                Some(Err(_)) | None => return true,
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    tracing::debug!(
        read,
        finished,
        "read the rest of a request body answered early"
    );
}
