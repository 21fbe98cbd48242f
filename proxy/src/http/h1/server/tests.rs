use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, StreamBody};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// Serves `server` with a handler that answers with the request's method,
/// target and body, `x-seen: n` (the request's number on the connection),
/// and trailers when the request asked for a streamed answer.
async fn run(server: TcpStream) -> std::io::Result<Served<TcpStream>> {
    let seen = Arc::new(AtomicUsize::new(0));
    serve(server, 1024, move |req: Request<Full<Bytes>>| {
        let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
        async move {
            let streamed = req.headers().contains_key("x-stream");
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let text = format!(
                "{} {} {}",
                parts.method,
                parts.uri,
                String::from_utf8_lossy(&body)
            );
            let body: Body = if streamed {
                let mut trailers = HeaderMap::new();
                trailers.insert("x-trailer", HeaderValue::from_static("yes"));
                let frames: Vec<Result<Frame<Bytes>, crate::http::answer::BoxError>> = vec![
                    Ok(Frame::data(Bytes::from(text))),
                    Ok(Frame::data(Bytes::from_static(b"!"))),
                    Ok(Frame::trailers(trailers)),
                ];
                StreamBody::new(tokio_stream::iter(frames)).boxed()
            } else {
                Full::new(Bytes::from(text)).map_err(Into::into).boxed()
            };
            let mut res = Response::new(body);
            res.headers_mut()
                .insert("x-seen", HeaderValue::from(n as u64));
            res
        }
    })
    .await
}

/// A connected pair: the client socket, and the server side's outcome.
async fn pair() -> (
    TcpStream,
    tokio::task::JoinHandle<std::io::Result<Served<TcpStream>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), tokio::spawn(run(server.unwrap().0)))
}

/// Reads from `client` until `text` has come; everything read.
async fn read_until(client: &mut TcpStream, text: &str) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(text) {
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk))
            .await
            .expect("the answer came in time")
            .unwrap();
        assert_ne!(
            n,
            0,
            "closed before {text:?}; got {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(got).unwrap()
}

#[tokio::test]
async fn keep_alive_requests_are_answered_in_turn_with_their_bodies_and_lengths() {
    let (mut client, server) = pair().await;
    client
        .write_all(b"GET /a?x=1 HTTP/1.1\r\nhost: h\r\n\r\nPOST /b HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let got = read_until(&mut client, "POST /b hello").await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(
        got.contains("x-seen: 1\r\ncontent-length: 11\r\n\r\nGET /a?x=1 "),
        "{got}"
    );
    assert!(
        got.contains("x-seen: 2\r\ncontent-length: 13\r\n\r\nPOST /b hello"),
        "{got}"
    );
    drop(client);
    assert!(matches!(server.await.unwrap().unwrap(), Served::Closed));
}

#[tokio::test]
async fn a_body_of_unknown_length_is_chunked_with_its_trailers() {
    let (mut client, _server) = pair().await;
    client
        .write_all(b"GET /s HTTP/1.1\r\nx-stream: 1\r\n\r\n")
        .await
        .unwrap();
    let got = read_until(&mut client, "\r\n0\r\nx-trailer: yes\r\n\r\n").await;
    assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
    assert!(
        got.contains("\r\n\r\n7\r\nGET /s \r\n1\r\n!\r\n0\r\n"),
        "{got}"
    );
}

#[tokio::test]
async fn a_head_request_gets_no_body_and_the_connection_serves_the_next() {
    let (mut client, _server) = pair().await;
    client
        .write_all(b"HEAD /h HTTP/1.1\r\n\r\nGET /g HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let got = read_until(&mut client, "GET /g ").await;
    assert!(
        !got.contains("HEAD /h"),
        "a HEAD answer carried a body: {got}"
    );
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 2, "{got}");
}

#[tokio::test]
async fn connection_close_is_answered_and_then_closed() {
    let (mut client, server) = pair().await;
    client
        .write_all(b"GET /c HTTP/1.1\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = read_until(&mut client, "GET /c ").await;
    assert!(got.contains("connection: close\r\n"), "{got}");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert!(matches!(server.await.unwrap().unwrap(), Served::Closed));
}

#[tokio::test]
async fn requests_it_does_not_serve_hand_off_with_every_byte_read() {
    for (what, request) in [
        (
            "chunked",
            "POST /u HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "upgrade",
            "GET /ws HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        ),
        ("connect", "CONNECT h:443 HTTP/1.1\r\nhost: h:443\r\n\r\n"),
        ("http/1.0", "GET /old HTTP/1.0\r\n\r\n"),
        (
            "expect",
            "PUT /e HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
        ),
        (
            "longer than the limit",
            "POST /big HTTP/1.1\r\ncontent-length: 2000\r\n\r\n",
        ),
    ] {
        let (mut client, server) = pair().await;
        // A plain request first: the hand-off comes after its answer.
        client
            .write_all(format!("GET /first HTTP/1.1\r\n\r\n{request}").as_bytes())
            .await
            .unwrap();
        read_until(&mut client, "GET /first ").await;
        let Served::Handoff(mut io) = server.await.unwrap().unwrap() else {
            panic!("{what}: not handed off");
        };
        let mut replay = vec![0u8; request.len()];
        io.read_exact(&mut replay).await.unwrap();
        assert_eq!(String::from_utf8(replay).unwrap(), request, "{what}");
        // Past the replayed bytes, the connection itself.
        client.write_all(b"more").await.unwrap();
        let mut more = [0u8; 4];
        io.read_exact(&mut more).await.unwrap();
        assert_eq!(&more, b"more", "{what}");
    }
}

#[tokio::test]
async fn malformed_requests_get_400_and_a_close() {
    for bad in [
        "GET /x HTTP/1.1\r\nbad header\r\n\r\n",
        "POST /x HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        "POST /x HTTP/1.1\r\ncontent-length: ten\r\n\r\n",
    ] {
        let (mut client, server) = pair().await;
        client.write_all(bad.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let got = String::from_utf8(got).unwrap();
        assert!(
            got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{bad:?}: {got}"
        );
        assert!(matches!(server.await.unwrap().unwrap(), Served::Closed));
    }
}

#[tokio::test]
async fn a_head_beyond_the_limit_gets_431() {
    let (mut client, server) = pair().await;
    let mut req = b"GET /x HTTP/1.1\r\nx-pad: ".to_vec();
    req.resize(MAX_HEAD + 1024, b'a');
    // The server stops reading once it refuses: the write may fail.
    let _ = client.write_all(&req).await;
    let got = read_until(&mut client, "\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
    assert!(matches!(server.await.unwrap().unwrap(), Served::Closed));
}
