//! What many, slow and excess clients get: header time limits, keep-alive
//! under 500 concurrent connections, and the connection limit's quick 503.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
