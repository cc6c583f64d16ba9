//! What many, slow and excess clients get: header, write and idle time
//! limits, keep-alive under 500 concurrent connections, the connection
//! limit's quick 503, and the JSON bodies of the answers hyper writes itself.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

const GET_API: &[u8] = b"GET /api HTTP/1.1\r\nhost: x\r\n\r\n";

#[tokio::test]
async fn a_client_dribbling_its_headers_is_cut_off_while_others_are_served() {
    let server = TestServer::start_with(|s| s.server.header_timeout_secs = 1).await;
    let stream = TcpStream::connect(server.address()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // One byte every 200 ms: 40 bytes would take 8 s, far past the 1 s limit.
    let partial_head = b"GET /api HTTP/1.1\r\nhost: x\r\nx-slow: abcdefghij";
    let dribbler = tokio::spawn(async move {
        for byte in partial_head {
            if writer.write_all(&[*byte]).await.is_err() {
                return true; // The server hung up on us.
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    });
    server
        .get("/api")
        .header("connection", "close")
        .send()
        .await
        .assert_ok(200);

    // The server closes the connection while the client is still dribbling.
    let mut buffer = [0u8; 256];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(20), reader.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => continue, // A 408 or similar before closing is fine.
            Err(_) => break false,
        }
    };
    assert!(closed, "the slow client was never cut off");
    assert!(
        !dribbler.is_finished() || dribbler.await.unwrap(),
        "cut off only after sending it all"
    );
    server
        .get("/api")
        .header("connection", "close")
        .send()
        .await
        .assert_ok(200);
}

#[tokio::test]
async fn five_hundred_concurrent_keep_alive_connections_all_get_answers() {
    let server = TestServer::start().await;
    let address = server.address();
    let clients: Vec<_> = (0..500)
        .map(|_| {
            let address = address.clone();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(&address).await.expect("connect");
                let mut answers = Vec::new();
                // Two requests on the same connection: keep-alive holds.
                for _ in 0..2 {
                    stream.write_all(GET_API).await.expect("request sent");
                    answers.push(read_response(&mut stream).await);
                }
                answers
            })
        })
        .collect();
    let mut answered = 0;
    for client in clients {
        for answer in client.await.unwrap() {
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(answer.ends_with("API works."), "{answer}");
            answered += 1;
        }
    }
    assert_eq!(answered, 1000);
}

#[tokio::test]
async fn clients_over_the_connection_limit_get_a_quick_503() {
    let server = TestServer::start_with(|s| s.server.max_connections = 4).await;
    let address = server.address();
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        stream.write_all(GET_API).await.unwrap();
        assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
        held.push(stream);
    }

    let mut excess = TcpStream::connect(&address).await.unwrap();
    excess.write_all(GET_API).await.unwrap();
    let answer = read_response(&mut excess).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"error\":\"server_busy\""), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    // Like every answer but the static documents (API.md, Conventions).
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("cache-control: no-store"),
        "{answer}"
    );
    assert!(closed_within(&mut excess, Duration::from_secs(10)).await);

    // The held connections are still served.
    for stream in &mut held {
        stream.write_all(GET_API).await.unwrap();
        assert!(read_response(stream).await.starts_with("HTTP/1.1 200"));
    }

    // Once one closes, a new client gets in (poll: the server notices the
    // close asynchronously).
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        stream.write_all(GET_API).await.unwrap();
        let answer = read_response(&mut stream).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            Instant::now() < deadline,
            "no slot freed after a client left"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn clients_that_never_read_cannot_hold_the_connection_slots() {
    // The red team's reproduction: four clients with a tiny receive buffer
    // pipeline requests for a ~40 KB document and never read a byte.
    let server = TestServer::start_with(|s| {
        s.server.max_connections = 4;
        s.server.write_timeout_secs = 1;
    })
    .await;
    let address: std::net::SocketAddr = server.address().parse().unwrap();
    let requests = b"GET /api/openapi.json HTTP/1.1\r\nhost: x\r\n\r\n".repeat(300);
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(1024).unwrap();
        let mut stream = socket.connect(address).await.unwrap();
        // 13 KB of requests: the socket buffers take them all even though the
        // server stops reading once its answers back up.
        stream.write_all(&requests).await.unwrap();
        stalled.push(stream);
    }

    // Within a few write timeouts, a new client is served normally.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(8);
    loop {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(GET_API).await.unwrap();
        let answer = read_response(&mut stream).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            Instant::now() < deadline,
            "the stalled readers still hold every slot after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The stalled connections were closed, not merely outnumbered.
    for stream in &mut stalled {
        assert!(closed_within(stream, Duration::from_secs(10)).await);
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // The header timeout (10 s) is far longer: the idle timeout must act alone.
    let server = TestServer::start_with(|s| s.server.idle_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(server.address()).await.unwrap();
    stream.write_all(GET_API).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    let idle_since = Instant::now();
    assert!(closed_within(&mut stream, Duration::from_secs(5)).await);
    let idle = idle_since.elapsed();
    assert!(idle >= Duration::from_millis(900), "closed after {idle:?}");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let server = TestServer::start_with(|s| {
        s.server.header_timeout_secs = 1;
        s.server.idle_timeout_secs = 60;
    })
    .await;
    let mut silent = TcpStream::connect(server.address()).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_client_pausing_between_requests_keeps_its_connection() {
    // Pauses longer than the header timeout but shorter than the idle timeout:
    // waiting for the next request is idleness, not a slow head.
    let server = TestServer::start_with(|s| {
        s.server.header_timeout_secs = 1;
        s.server.idle_timeout_secs = 3;
    })
    .await;
    let mut stream = TcpStream::connect(server.address()).await.unwrap();
    for round in 0..4 {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        stream.write_all(GET_API).await.unwrap();
        let answer = read_response(&mut stream).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "round {round}: {answer}"
        );
    }
}

#[tokio::test]
async fn a_request_waiting_for_its_body_is_not_cut_by_the_idle_timer() {
    let server = TestServer::start_with(|s| {
        s.server.idle_timeout_secs = 1;
        s.server.header_timeout_secs = 10;
    })
    .await;
    let body = br#"{"name":"Slow","email":"slow@example.com","password":"correct horse"}"#;
    let head = register_head(body.len());
    let mut stream = TcpStream::connect(server.address()).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // Twice the idle timeout, well within the body's time limit.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stream.write_all(body).await.unwrap();
    let answer = read_response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_request_waiting_for_its_hash_is_not_cut_by_the_idle_timer() {
    // bcrypt cost 15 takes about two seconds here, twice the idle timeout.
    let server = TestServer::start_with(|s| {
        s.server.idle_timeout_secs = 1;
        s.auth.bcrypt_cost = 15;
    })
    .await;
    let body = r#"{"name":"Hashed","email":"hashed@example.com","password":"correct horse"}"#;
    let request = format!("{}{body}", register_head(body.len()));
    let mut stream = TcpStream::connect(server.address()).await.unwrap();
    let started = Instant::now();
    stream.write_all(request.as_bytes()).await.unwrap();
    // A generous deadline: on a loaded machine the nice-10 hashing threads
    // get a tenth of a core, and a cut connection ends the read at once
    // anyway, so only a passing run can take long.
    let answer = String::from_utf8_lossy(
        &read_until_closed(&mut stream, Duration::from_secs(300), true).await,
    )
    .into_owned();
    let took = started.elapsed();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "after {took:?}: {answer}"
    );
    assert!(took > Duration::from_secs(1), "the hash took only {took:?}");
}

#[tokio::test]
async fn hypers_own_error_answers_carry_the_contracts_json_body() {
    let server = TestServer::start().await;
    let check = |raw: &[u8], status: &str| {
        let (head, body) = split_response(raw);
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("content-type: application/json"), "{head}");
        let length = header_value(&lower, "content-length").expect("content-length");
        assert_eq!(length, body.len().to_string(), "{head}");
        let body: Value = serde_json::from_slice(&body).expect("a JSON body");
        assert_eq!(body["error"], "invalid_input", "{body}");
        assert!(!body["message"].as_str().unwrap_or_default().is_empty());
    };

    // A malformed request line.
    let mut stream = TcpStream::connect(server.address()).await.unwrap();
    stream
        .write_all(b"GET\x01/api HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    check(
        &read_until_closed(&mut stream, Duration::from_secs(10), false).await,
        "400",
    );

    // A 20 KB header.
    let mut stream = TcpStream::connect(server.address()).await.unwrap();
    let big = format!(
        "GET /api HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    stream.write_all(big.as_bytes()).await.unwrap();
    check(
        &read_until_closed(&mut stream, Duration::from_secs(10), false).await,
        "431",
    );

    // After answers of our own on the same connection (a HEAD's has a length
    // but no body), in one packet: those pass unchanged, then the JSON 400.
    let mut stream = TcpStream::connect(server.address()).await.unwrap();
    stream
        .write_all(b"HEAD /api HTTP/1.1\r\nhost: x\r\n\r\nGET /api HTTP/1.1\r\nhost: x\r\n\r\nBAD REQUEST\r\n\r\n")
        .await
        .unwrap();
    let raw = read_until_closed(&mut stream, Duration::from_secs(10), false).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head_answer, rest) = text.split_once("\r\n\r\n").expect("the HEAD answer");
    assert!(head_answer.starts_with("HTTP/1.1 200"), "{text}");
    let (get_answer, rest) = rest.split_once("API works.").expect("the GET answer");
    assert!(get_answer.starts_with("HTTP/1.1 200"), "{text}");
    check(rest.as_bytes(), "400");
}

/// Everything the server sends until it closes the connection (or, with
/// `one`, until one whole response with a content-length has arrived).
/// The head of a JSON registration whose body is `length` bytes.
fn register_head(length: usize) -> String {
    format!(
        "POST /api/auth/register HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\n\r\n"
    )
}

async fn read_until_closed(stream: &mut TcpStream, within: Duration, one: bool) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buffer[..n]),
            _ => break,
        }
        if one {
            let (head, body) = split_response(&received);
            let length = header_value(&head.to_ascii_lowercase(), "content-length")
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    received
}

/// A response's head (as text) and body.
fn split_response(raw: &[u8]) -> (String, Vec<u8>) {
    match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => (
            String::from_utf8_lossy(&raw[..end]).into_owned(),
            raw[end + 4..].to_vec(),
        ),
        None => (String::from_utf8_lossy(raw).into_owned(), Vec::new()),
    }
}

/// The value of header `name` (lower case) in a lower-cased head.
fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_string())
    })
}
