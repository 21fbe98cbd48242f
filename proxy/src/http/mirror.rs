//! Request mirrors (Gateway API `RequestMirror`): a copy of a request goes
//! to another backend, fire and forget. The copy never slows the primary:
//! the request body is teed frame by frame into a small queue per copy,
//! and a copy whose queue is full (its backend reads slower than the
//! primary's) is abandoned, its request failed rather than sent short.
//! The copy's answer is read and dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::mpsc;

use super::answer::{Body, BoxError};

/// Frames a copy may lag behind the primary before it is abandoned.
const LAG: usize = 64;

/// The primary body, copying every frame to each mirror's queue.
#[derive(Debug)]
pub struct Tee {
    inner: Body,
    copies: Vec<Copier>,
}

#[derive(Debug)]
struct Copier {
    tx: Option<mpsc::Sender<Frame<Bytes>>>,
    abandoned: Arc<AtomicBool>,
}

/// A mirror's copy of the body: the frames the primary read, in order; an
/// error when the copy fell too far behind or the primary's body failed.
#[derive(Debug)]
pub struct Copied {
    rx: mpsc::Receiver<Frame<Bytes>>,
    abandoned: Arc<AtomicBool>,
    hint: SizeHint,
}

/// Tees `body` into `n` copies.
pub fn tee(body: Body, n: usize) -> (Body, Vec<Body>) {
    let hint = body.size_hint();
    let mut copies = Vec::with_capacity(n);
    let mut copied = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = mpsc::channel(LAG);
        let abandoned = Arc::new(AtomicBool::new(false));
        copies.push(Copier {
            tx: Some(tx),
            abandoned: abandoned.clone(),
        });
        copied.push(
            Copied {
                rx,
                abandoned,
                hint,
            }
            .boxed(),
        );
    }
    (
        Tee {
            inner: body,
            copies,
        }
        .boxed(),
        copied,
    )
}

impl Copier {
    fn abandon(&mut self) {
        self.abandoned.store(true, Ordering::Release);
        self.tx = None;
    }
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                for c in &mut this.copies {
                    let Some(tx) = &c.tx else { continue };
                    let copy = if let Some(data) = frame.data_ref() {
                        Frame::data(data.clone())
                    } else if let Some(trailers) = frame.trailers_ref() {
                        Frame::trailers(trailers.clone())
                    } else {
                        continue;
                    };
                    if tx.try_send(copy).is_err() {
                        c.abandon();
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => this.copies.iter_mut().for_each(Copier::abandon),
            // The end: each copy's queue closes and its body ends whole.
            Poll::Ready(None) => this.copies.iter_mut().for_each(|c| c.tx = None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // Dropped before its end (the primary failed or was cancelled):
        // a copy must not look whole.
        if !self.inner.is_end_stream() {
            for c in self.copies.iter_mut().filter(|c| c.tx.is_some()) {
                c.abandon();
            }
        }
    }
}

impl HttpBody for Copied {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(frame)) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) if self.abandoned.load(Ordering::Acquire) => Poll::Ready(Some(Err(
                "the mirror fell behind the request it copies and was abandoned".into(),
            ))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{Full, StreamBody};

    use super::*;

    fn chunks(n: usize) -> Body {
        let frames = (0..n).map(|i| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![i as u8; 10]))));
        StreamBody::new(tokio_stream::iter(frames)).boxed()
    }

    #[tokio::test]
    async fn every_copy_gets_the_whole_body_in_order() {
        let (primary, copies) = tee(chunks(20), 2);
        let want: Vec<u8> = (0..20u8).flat_map(|i| [i; 10]).collect();
        let got = primary.collect().await.unwrap().to_bytes();
        assert_eq!(got, want);
        for c in copies {
            assert_eq!(c.collect().await.unwrap().to_bytes(), want);
        }
    }

    #[tokio::test]
    async fn a_copy_that_falls_behind_is_abandoned_and_fails_while_the_primary_finishes() {
        let (primary, mut copies) = tee(chunks(LAG + 10), 1);
        // Nobody reads the copy: the primary still reads to its end.
        let got = primary.collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), (LAG + 10) * 10);
        let copy = copies.pop().unwrap();
        assert!(
            copy.collect().await.is_err(),
            "a short copy must not look whole"
        );
    }

    #[tokio::test]
    async fn a_primary_dropped_before_its_end_fails_its_copies() {
        let (primary, mut copies) = tee(chunks(5), 1);
        drop(primary);
        assert!(copies.pop().unwrap().collect().await.is_err());
        let (primary, mut copies) = tee(
            Full::new(Bytes::from_static(b"x"))
                .map_err(Into::into)
                .boxed(),
            1,
        );
        primary.collect().await.unwrap();
        assert_eq!(
            copies.pop().unwrap().collect().await.unwrap().to_bytes(),
            "x"
        );
    }
}
