use std::net::SocketAddr;

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;

const IDLE: Duration = Duration::from_secs(20);

/// TLS configs for loopback: a self-signed server certificate for
/// 127.0.0.1, trusted by the client; both offer only `h2`.
fn configs() -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let der: CertificateDer<'static> = cert.der().clone();
    let provider = crate::tls::provider();
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    (Arc::new(client), Arc::new(server))
}

/// Two connected loopback sockets.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (a.unwrap(), b.unwrap().0)
}

/// A TLS connection over loopback, handshake done on both ends.
async fn tls_pair() -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    tokio_rustls::server::TlsStream<TcpStream>,
) {
    let (client_cfg, server_cfg) = configs();
    let (a, b) = pair().await;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let (c, s) = tokio::join!(
        tokio_rustls::TlsConnector::from(client_cfg).connect(name, a),
        tokio_rustls::TlsAcceptor::from(server_cfg).accept(b)
    );
    (c.unwrap(), s.unwrap())
}

fn ours_client(tls: tokio_rustls::client::TlsStream<TcpStream>) -> Connection {
    let (tcp, session) = tls.into_inner();
    let conn = Connection::new(Role::Client, tcp, rustls::Connection::Client(session)).unwrap();
    let reader = conn.clone();
    tokio::spawn(async move { reader.run(drop).await });
    conn
}

/// Serves on `tls`; every stream opened arrives on the channel. The task
/// ends with the connection's result.
fn ours_server(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
) -> (
    Connection,
    mpsc::UnboundedReceiver<Incoming>,
    tokio::task::JoinHandle<io::Result<()>>,
) {
    let (tcp, session) = tls.into_inner();
    let conn = Connection::new(Role::Server, tcp, rustls::Connection::Server(session)).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let server = conn.clone();
    let task = tokio::spawn(async move {
        server
            .run(move |i| {
                let _ = tx.send(i);
            })
            .await
    });
    (conn, rx, task)
}

/// A TCP server that echoes each connection, then half-closes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// Accepts every stream and relays it to `target`.
fn relay_all_to(mut incoming: mpsc::UnboundedReceiver<Incoming>, target: SocketAddr) {
    tokio::spawn(async move {
        while let Some(i) = incoming.recv().await {
            tokio::spawn(async move {
                let tcp = TcpStream::connect(target).await.unwrap();
                let stream = i.accept().await.unwrap();
                let counters = Arc::new(ConnCounters::default());
                let _ = stream.relay(tcp, TcpSide::Server, IDLE, &counters).await;
            });
        }
    });
}

/// Opens a stream on `conn` and relays it to a fresh local socket: the
/// application's end is returned, with the relay's task.
async fn open_app(conn: &Connection) -> (TcpStream, tokio::task::JoinHandle<io::Result<Moved>>) {
    let (status, stream) = conn
        .connect("10.0.0.1:80", &[("forwarded", "for=10.0.0.2")])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (app, proxy_side) = pair().await;
    let relay = tokio::spawn(async move {
        let counters = Arc::new(ConnCounters::default());
        stream
            .relay(proxy_side, TcpSide::Client, IDLE, &counters)
            .await
    });
    (app, relay)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes `data`, half-closes, and reads everything back.
async fn round_trip(mut app: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = app.split();
    let write = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let read = r.read_to_end(&mut back);
    let ((), got) = tokio::join!(write, read);
    got.unwrap();
    back
}

#[tokio::test]
async fn forty_megabytes_cross_both_flow_control_windows_both_ways_and_the_half_close_passes() {
    let echo = echo_server().await;
    let (c, s) = tls_pair().await;
    let client = ours_client(c);
    let (_server, incoming, _task) = ours_server(s);
    relay_all_to(incoming, echo);
    let (app, relay) = open_app(&client).await;
    // 40 MiB is over twice the connection window and ten stream windows:
    // only WINDOW_UPDATEs let it through.
    let data = pattern(40 << 20, 7);
    let back = round_trip(app, data.clone()).await;
    assert!(back == data, "the echo differs ({} bytes back)", back.len());
    let moved = relay.await.unwrap().unwrap();
    assert_eq!(
        moved,
        Moved {
            sent: 40 << 20,
            received: 40 << 20
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_streams_share_one_connection_and_each_gets_its_own_bytes() {
    let echo = echo_server().await;
    let (c, s) = tls_pair().await;
    let client = ours_client(c);
    let (_server, incoming, _task) = ours_server(s);
    relay_all_to(incoming, echo);
    let mut tasks = Vec::new();
    for i in 0..MAX_STREAMS {
        let (app, _relay) = open_app(&client).await;
        tasks.push(tokio::spawn(async move {
            let data = pattern(100_000 + i * 1000, i as u8);
            let back = round_trip(app, data.clone()).await;
            back == data
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert!(
            t.await.unwrap(),
            "stream {i} got bytes that are not its own"
        );
    }
}

#[tokio::test]
async fn a_reset_at_the_server_reaches_the_client_application_as_a_reset() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let (c, s) = tls_pair().await;
    let client = ours_client(c);
    let (_server, incoming, _task) = ours_server(s);
    relay_all_to(incoming, target);
    let (mut app, relay) = open_app(&client).await;
    app.write_all(b"hello").await.unwrap();
    let (mut backend, _) = listener.accept().await.unwrap();
    let mut got = [0u8; 5];
    backend.read_exact(&mut got).await.unwrap();
    backend.write_all(b"partial").await.unwrap();
    crate::transport::reset(backend);
    let mut back = Vec::new();
    let end = app.read_to_end(&mut back).await;
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset),
        "after {back:?}"
    );
    assert!(relay.await.unwrap().is_err());
    // The connection itself carries on.
    assert!(client.can_open());
}

#[tokio::test]
async fn a_refused_stream_surfaces_its_status_and_the_connection_stays_usable() {
    let echo = echo_server().await;
    let (c, s) = tls_pair().await;
    let client = ours_client(c);
    let (_server, mut incoming, _task) = ours_server(s);
    let refuser = tokio::spawn(async move {
        let first = incoming.recv().await.unwrap();
        assert_eq!(first.method, "CONNECT");
        assert_eq!(first.authority, "10.9.9.9:443");
        assert_eq!(first.header("Forwarded"), Some("for=10.0.0.2"));
        first.refuse(403).await;
        incoming
    });
    let (status, _stream) = client
        .connect("10.9.9.9:443", &[("forwarded", "for=10.0.0.2")])
        .await
        .unwrap();
    assert_eq!(status, 403);
    relay_all_to(refuser.await.unwrap(), echo);
    let (app, _relay) = open_app(&client).await;
    assert_eq!(round_trip(app, b"still here".to_vec()).await, b"still here");
}

#[tokio::test]
async fn a_client_that_does_not_send_the_preface_ends_with_a_protocol_error() {
    let (mut c, s) = tls_pair().await;
    let (_server, _incoming, task) = ours_server(s);
    c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    c.flush().await.unwrap();
    let err = task.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("PROTOCOL_ERROR"), "{err}");
    // The server said GOAWAY before it closed.
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest).await;
    let goaway = rest
        .windows(frame::HEAD)
        .any(|w| w[3] == kind::GOAWAY && w[0..3] == [0, 0, 8]);
    assert!(goaway, "no GOAWAY in {rest:?}");
}

#[tokio::test]
async fn when_the_connection_shuts_down_its_streams_fail_and_it_takes_no_new_ones() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let (c, s) = tls_pair().await;
    let client = ours_client(c);
    let (server, incoming, task) = ours_server(s);
    relay_all_to(incoming, target);
    let (mut app, relay) = open_app(&client).await;
    app.write_all(b"x").await.unwrap();
    let (_backend, _) = listener.accept().await.unwrap();
    server.shut_down().await;
    assert!(relay.await.unwrap().is_err(), "the open stream fails");
    let mut back = Vec::new();
    assert!(app.read_to_end(&mut back).await.is_err(), "as a reset");
    client.closed().await;
    assert!(!client.can_open());
    let err = client.connect("10.0.0.1:80", &[]).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotConnected);
    task.await.unwrap().unwrap();
}

// ------------------------------------------------ against hyper's HTTP/2

#[tokio::test]
async fn hypers_http2_client_opens_a_connect_stream_to_this_server() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let echo = echo_server().await;
    let (c, s) = tls_pair().await;
    let (_server, incoming, _task) = ours_server(s);
    relay_all_to(incoming, echo);
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(c))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("10.0.0.1:80")
        .header("forwarded", "for=10.0.0.2")
        .body(Empty::new())
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut io = TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    let data = pattern(3 << 20, 3);
    io.write_all(&data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    io.read_exact(&mut back).await.unwrap();
    assert!(back == data, "the echo through hyper differs");
}

#[tokio::test]
async fn this_client_opens_a_connect_stream_on_hypers_http2_server() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let (c, s) = tls_pair().await;
    let client = ours_client(c);
    tokio::spawn(async move {
        let service = hyper::service::service_fn(
            |mut req: http::Request<hyper::body::Incoming>| async move {
                assert_eq!(req.method(), http::Method::CONNECT);
                let forwarded = req.headers().get("forwarded").cloned();
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let mut io = TokioIo::new(upgrade.await.unwrap());
                    let mut buf = Vec::new();
                    io.read_to_end(&mut buf).await.unwrap();
                    io.write_all(&buf).await.unwrap();
                    io.shutdown().await.unwrap();
                });
                let mut r = http::Response::new(Empty::<Bytes>::new());
                if forwarded.is_none() {
                    *r.status_mut() = http::StatusCode::BAD_REQUEST;
                }
                Ok::<_, std::convert::Infallible>(r)
            },
        );
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(s), service)
            .await
    });
    let (app, relay) = open_app(&client).await;
    let data = pattern(5 << 20, 9);
    let back = round_trip(app, data.clone()).await;
    assert!(back == data, "the echo through hyper differs");
    let moved = relay.await.unwrap().unwrap();
    assert_eq!(moved.sent, 5 << 20);
    assert_eq!(moved.received, 5 << 20);
}

// ------------------------------------------------ a misbehaving peer

/// The client's preface and SETTINGS, then `frames`, written raw.
async fn raw(c: &mut tokio_rustls::client::TlsStream<TcpStream>, frames: &[u8]) {
    let mut f = frame::PREFACE.to_vec();
    frame::put_settings(&mut f, &[]);
    f.extend_from_slice(frames);
    c.write_all(&f).await.unwrap();
    c.flush().await.unwrap();
}

#[tokio::test]
async fn reset_streams_count_against_the_limit_until_their_handlers_let_go() {
    let (mut c, s) = tls_pair().await;
    let (_server, mut incoming, _task) = ours_server(s);
    // A client opens the most streams it may and resets each at once.
    let mut f = Vec::new();
    for i in 0..MAX_STREAMS as u32 {
        let id = 2 * i + 1;
        frame::put_headers(
            &mut f,
            id,
            false,
            &[(":method", "CONNECT"), (":authority", "10.0.0.1:80")],
        );
        frame::put_rst(&mut f, id, code::CANCEL);
    }
    // One more, while the handlers still hold the reset ones.
    let extra = 2 * MAX_STREAMS as u32 + 1;
    frame::put_headers(
        &mut f,
        extra,
        false,
        &[(":method", "CONNECT"), (":authority", "10.0.0.1:80")],
    );
    raw(&mut c, &f).await;
    let mut held = Vec::new();
    for _ in 0..MAX_STREAMS {
        held.push(incoming.recv().await.unwrap());
    }
    let wait = |held: &[Incoming]| held.iter().all(Incoming::is_reset);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wait(&held) {
        assert!(Instant::now() < deadline, "the resets were not seen");
        tokio::task::yield_now().await;
    }
    let refused = tokio::time::timeout(Duration::from_millis(300), incoming.recv()).await;
    assert!(refused.is_err(), "stream {extra} was taken over the limit");
    // Answering a reset stream fails instead of sending a 200.
    let first = held.remove(0);
    assert_eq!(
        first.accept().await.unwrap_err().kind(),
        io::ErrorKind::ConnectionReset
    );
}

#[tokio::test]
async fn a_header_list_over_the_limit_ends_the_connection_with_a_protocol_error() {
    let (mut c, s) = tls_pair().await;
    let (_server, _incoming, task) = ours_server(s);
    let huge = "v".repeat(MAX_HEADER_LIST + 1);
    let mut f = Vec::new();
    frame::put_headers(
        &mut f,
        1,
        false,
        &[(":method", "CONNECT"), ("x-big", huge.as_str())],
    );
    raw(&mut c, &f).await;
    let err = task.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("header list"), "{err}");
}

#[tokio::test]
async fn bytes_after_the_peers_close_notify_are_dropped_and_the_connection_ends() {
    let (c, s) = tls_pair().await;
    let (_server, _incoming, task) = ours_server(s);
    let (mut tcp, mut session) = c.into_inner();
    let mut wire = Vec::new();
    session.writer().write_all(frame::PREFACE).unwrap();
    session.send_close_notify();
    while session.wants_write() {
        session.write_tls(&mut wire).unwrap();
    }
    // Garbage after the close, in the same segment as it.
    wire.extend(std::iter::repeat_n(0x17u8, 8192));
    tcp.write_all(&wire).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), task).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the server did not end cleanly: {ended:?}"
    );
}

/// A client and a server stream of one CONNECT, both used as byte streams.
async fn stream_pair() -> (Stream, Stream) {
    let (c, s) = tls_pair().await;
    let (_server, mut incoming, _task) = ours_server(s);
    let client = ours_client(c);
    let accepted = tokio::spawn(async move { incoming.recv().await.unwrap().accept().await });
    let (status, client_stream) = client.connect("10.0.0.1:80", &[]).await.unwrap();
    assert_eq!(status, 200);
    (client_stream, accepted.await.unwrap().unwrap())
}

#[tokio::test]
async fn forty_megabytes_echo_through_streams_read_and_written_as_byte_streams_with_the_half_close()
{
    let (client, server) = stream_pair().await;
    tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(server);
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let data = pattern(40 << 20, 3);
    let (mut r, mut w) = tokio::io::split(client);
    let sent = data.clone();
    let write = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
        w
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    write.await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the bytes came back in order");
}

#[tokio::test]
async fn hyper_speaks_http1_over_an_hbone_stream_both_ways_with_keep_alive() {
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let (client, server) = stream_pair().await;
    tokio::spawn(async move {
        let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
            let path = req.uri().path().to_owned();
            let body = req.into_body().collect().await?.to_bytes();
            let answer = format!("{path} {}", body.len());
            Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from(answer))))
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server), svc)
            .await
            .unwrap();
    });
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .unwrap();
    tokio::spawn(connection);
    for (path, size) in [("/first", 3 << 20), ("/second", 10)] {
        let req = http::Request::post(path)
            .header("host", "echo")
            .body(Full::new(Bytes::from(pattern(size, 1))))
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("{path} {size}").as_bytes());
    }
}
