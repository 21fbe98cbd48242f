use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

type List = IdleList<u8, TcpStream>;

static NONE: Bytes = Bytes::new();

/// A connected pair: the client side as a `Conn`, the server's socket.
async fn pair() -> (Conn<TcpStream>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (Conn::new(client.unwrap()), server.unwrap().0)
}

/// Reads one request head (and `body` more bytes) from the server side.
async fn request(server: &mut TcpStream, body: usize) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(
            server.read(&mut byte).await.unwrap(),
            1,
            "request cut short"
        );
        got.push(byte[0]);
    }
    let mut rest = vec![0u8; body];
    server.read_exact(&mut rest).await.unwrap();
    got.extend(rest);
    String::from_utf8(got).unwrap()
}

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn home(list: &Arc<List>) -> Home<u8, TcpStream> {
    Home {
        list: list.clone(),
        key: 1,
    }
}

async fn collect(body: Body<u8, TcpStream>) -> (Bytes, Option<HeaderMap>) {
    let c = body.collect().await.unwrap();
    let trailers = c.trailers().cloned();
    (c.to_bytes(), trailers)
}

#[tokio::test]
async fn a_request_is_written_once_with_its_length_and_the_connection_is_reused_after_the_body() {
    let list = Arc::new(List::new(4));
    let (conn, mut server) = pair().await;
    let req = parts(
        "POST",
        "/a?b=c",
        &[
            ("host", "svc.mesh:8080"),
            ("x-one", "1"),
            ("x-one", "2"),
            ("content-length", "999"),
        ],
    );
    let body = Bytes::from_static(b"hello");
    let (res, seen) = tokio::join!(send(conn, &req, &body, home(&list)), async {
        let seen = request(&mut server, 5).await;
        server
            .write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-Up: yes\r\n\r\nabc")
            .await
            .unwrap();
        seen
    });
    assert_eq!(
        seen,
        "POST /a?b=c HTTP/1.1\r\nhost: svc.mesh:8080\r\nx-one: 1\r\nx-one: 2\r\n\
         content-length: 5\r\n\r\nhello"
    );
    let res = res.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["x-up"], "yes");
    assert_eq!(res.headers()["content-length"], "3");
    assert_eq!(res.body().size_hint().exact(), Some(3));
    let (data, trailers) = collect(res.into_body()).await;
    assert_eq!(&data[..], b"abc");
    assert!(trailers.is_none());
    // The same socket (the server reads the next request from it) takes
    // the next request.
    let conn = list.take(&1).expect("the connection went back to its list");
    let req = parts("GET", "/next", &[("host", "svc")]);
    let (res, seen) = tokio::join!(send(conn, &req, &NONE, home(&list)), async {
        let seen = request(&mut server, 0).await;
        server
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        seen
    });
    assert_eq!(seen, "GET /next HTTP/1.1\r\nhost: svc\r\n\r\n");
    assert_eq!(res.unwrap().status(), StatusCode::NO_CONTENT);
    assert!(list.take(&1).is_some(), "a 204 has no body: home at once");
}

#[tokio::test]
async fn a_chunked_response_streams_its_data_and_trailers_and_interim_answers_are_skipped() {
    let list = Arc::new(List::new(4));
    let (conn, mut server) = pair().await;
    let req = parts("GET", "/", &[("host", "h")]);
    let (res, ()) = tokio::join!(send(conn, &req, &NONE, home(&list)), async {
        request(&mut server, 0).await;
        server
            .write_all(
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                  HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5;ext=1\r\nhello\r\n",
            )
            .await
            .unwrap();
        // The rest in pieces of their own.
        server.write_all(b"6\r\n world\r\n0\r\n").await.unwrap();
        server.write_all(b"grpc-status: 0\r\n\r\n").await.unwrap();
    });
    let res = res.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("link").is_none(), "the 103's fields");
    let (data, trailers) = collect(res.into_body()).await;
    assert_eq!(&data[..], b"hello world");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    assert!(list.take(&1).is_some(), "read to its end: reusable");
}

type Answered = (Result<Response<Body<u8, TcpStream>>, Error>, TcpStream);

/// Sends a bodiless `method /` on a new connection whose server reads it
/// and answers `answer`, then ends its side if `end`.
async fn answered(list: &Arc<List>, method: &str, answer: &[u8], end: bool) -> Answered {
    let (conn, mut server) = pair().await;
    let req = parts(method, "/", &[("host", "h")]);
    let (res, ()) = tokio::join!(send(conn, &req, &NONE, home(list)), async {
        request(&mut server, 0).await;
        // The client may stop reading once it has seen enough.
        let _ = server.write_all(answer).await;
        if end {
            server.shutdown().await.unwrap();
        }
    });
    (res, server)
}

#[tokio::test]
async fn a_head_answer_has_no_body_whatever_its_length_says() {
    let list = Arc::new(List::new(4));
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    let res = answered(&list, "HEAD", answer, false).await.0.unwrap();
    assert_eq!(res.headers()["content-length"], "1000");
    assert!(res.body().is_end_stream());
    assert!(list.take(&1).is_some());
}

#[tokio::test]
async fn connection_close_or_a_body_until_close_keeps_the_connection_out_of_the_list() {
    let list = Arc::new(List::new(4));
    for answer in [
        &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"[..],
        &b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
        &b"HTTP/1.1 200 OK\r\n\r\nok"[..],
    ] {
        let what = String::from_utf8_lossy(answer);
        let res = answered(&list, "GET", answer, true).await.0.unwrap();
        let (data, _) = collect(res.into_body()).await;
        assert_eq!(&data[..], b"ok", "{what}");
        assert!(list.take(&1).is_none(), "{what}");
    }
}

#[tokio::test]
async fn an_idle_connection_the_server_closed_is_not_taken() {
    let list = Arc::new(List::new(4));
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let (res, server) = answered(&list, "GET", answer, false).await;
    res.unwrap();
    drop(server);
    // The reactor learns of the close on its next turn.
    let gone = async {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        loop {
            tick.tick().await;
            let Some(conn) = list.take(&1) else { return };
            list.put(1, conn);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), gone)
        .await
        .expect("the closed connection is still handed out");
}

#[tokio::test]
async fn a_close_before_any_answer_is_told_apart_from_one_within_it() {
    let list = Arc::new(List::new(4));
    let e = answered(&list, "GET", b"", true).await.0.unwrap_err();
    assert!(matches!(e, Error::ClosedEarly) && e.nothing_came(), "{e}");
    let e = answered(&list, "GET", b"HTTP/1.1 200 OK\r\n", true)
        .await
        .0
        .unwrap_err();
    assert!(matches!(e, Error::ClosedWithin) && !e.nothing_came(), "{e}");
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort";
    let res = answered(&list, "GET", answer, true).await.0.unwrap();
    let e = res.into_body().collect().await.unwrap_err();
    assert!(e.to_string().contains("closed within"), "{e}");
    assert!(list.take(&1).is_none());
}

#[tokio::test]
async fn malformed_or_oversized_heads_are_errors_that_say_what() {
    let long = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n",
        "a".repeat(MAX_HEAD + 1)
    );
    for (answer, says) in [
        ("HTTP/1.1 2xx OK\r\n\r\n".to_owned(), "head"),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_owned(),
            "content-length values differ",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n".to_owned(),
            "content-length",
        ),
        (long, "head longer than"),
    ] {
        let list = Arc::new(List::new(4));
        let res = answered(&list, "GET", answer.as_bytes(), false).await.0;
        let e = res.unwrap_err().to_string();
        assert!(e.contains(says), "{e} (wanted {says})");
    }
}

/// A chunked body (with extensions and trailers) fed to the decoder cut
/// at every byte gives the same data and trailers.
#[test]
fn chunked_decoding_gives_the_same_body_however_the_bytes_are_cut() {
    let wire =
        b"3\r\nabc\r\nA ; name=value\r\n0123456789\r\n1\r\nz\r\n0\r\nx-t: 1\r\nx-u: 2\r\n\r\n";
    for cut in 0..=wire.len() {
        let mut framing = Framing::Chunked(Chunk::Size);
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut trailers = None;
        for piece in [&wire[..cut], &wire[cut..]] {
            buf.extend_from_slice(piece);
            loop {
                match decode(&mut framing, &mut buf).unwrap() {
                    Decoded::Data(d) => data.extend_from_slice(&d),
                    Decoded::Trailers(t) => trailers = Some(t),
                    Decoded::More | Decoded::End => break,
                }
            }
        }
        assert_eq!(data, b"abc0123456789z", "cut at {cut}");
        let t = trailers.unwrap_or_else(|| panic!("no trailers, cut at {cut}"));
        assert_eq!(
            (t["x-t"].as_bytes(), t["x-u"].as_bytes()),
            (&b"1"[..], &b"2"[..])
        );
        assert_eq!(framing, Framing::Done);
        assert!(buf.is_empty());
    }
}

#[test]
fn malformed_chunked_bodies_are_refused() {
    for (wire, says) in [
        (&b"zz\r\nabc\r\n"[..], "chunk-size line"),
        (&b"\r\n"[..], "chunk-size line"),
        (&b"3 x\r\nabc\r\n"[..], "chunk-size line"),
        (&b"11111111111111111\r\n"[..], "chunk-size line"),
        (&b"3\r\nabcXY"[..], "not followed by CRLF"),
    ] {
        let mut framing = Framing::Chunked(Chunk::Size);
        let mut buf = BytesMut::from(wire);
        let e = loop {
            match decode(&mut framing, &mut buf) {
                Ok(Decoded::Data(_)) => {}
                Ok(other) => panic!("{other:?} for {wire:?}"),
                Err(e) => break e.to_string(),
            }
        };
        assert!(e.contains(says), "{e} for {wire:?}");
    }
    let mut framing = Framing::Chunked(Chunk::Size);
    let mut buf = BytesMut::from(&vec![b'1'; MAX_CHUNK_LINE + 1][..]);
    assert!(matches!(
        decode(&mut framing, &mut buf),
        Err(Error::TooLong(..))
    ));
}
