//! What clients cannot do to the gateway: stall it, crash it, or make it answer 500.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Harness, Setup};

#[tokio::test]
async fn a_slow_request_head_is_cut_off() {
    let h = Harness::with(Setup {
        server: "header_read_timeout = \"300ms\"".into(),
        ..Setup::default()
    })
    .await;
    let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
    stream
        .write_all(b"GET /echo/slow HTTP/1.1\r\nHost: gw")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the connection must be closed, not left hanging"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(h.backend.requests(), 0);
}

/// A connection that never sends anything is closed too.
#[tokio::test]
async fn an_idle_connection_without_a_request_is_closed() {
    let h = Harness::with(Setup {
        server: "header_read_timeout = \"300ms\"".into(),
        ..Setup::default()
    })
    .await;
    let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "an idle connection must be closed");
}

/// Garbage, truncated and hostile request heads: never a 5xx, never a crash, and the
/// gateway keeps serving afterwards.
#[tokio::test]
async fn malformed_requests_never_get_a_server_error() {
    let h = Harness::start().await;
    let mut inputs: Vec<Vec<u8>> = vec![
        b"\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\nHost: gw\r\n\r\n".to_vec(),
        b"GET /echo/a HTTP/1.1\r\nHost: gw\r\nContent-Length: -1\r\n\r\n".to_vec(),
        b"GET /echo/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 99999999999999999999999\r\n\r\n"
            .to_vec(),
        b"POST /echo/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"GET /echo/\xff\xfe HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        b"GET /echo/a HTTP/1.1\r\nHost: gw\r\nX-Bad\x01: v\r\n\r\n".to_vec(),
        b"GET /echo/a HTTP/1.1\r\nHost: gw\r\nX: \xc3\x28\r\n\r\n".to_vec(),
        b"GET http://gw:99999/echo HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        b"GET //gw.test/echo HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        b"G\x00T / HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        b"GET /echo/a?\x7f HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        b"GET /%%%% HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        b"GET /echo/a HTTP/1.1\r\nHost: gw\r\nHost:\r\n\r\n".to_vec(),
        b"GET /echo/a HTTP/1.1\r\nHost: \r\n\r\n".to_vec(),
    ];
    // Deterministic pseudo-random heads.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..40 {
        let mut head = b"GET /echo/".to_vec();
        for _ in 0..60 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            head.push((seed % 256) as u8);
        }
        head.extend_from_slice(b" HTTP/1.1\r\nHost: gw\r\n\r\n");
        inputs.push(head);
    }
    for input in &inputs {
        let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
        let _ = stream.write_all(input).await;
        let _ = stream.shutdown().await;
        let mut buf = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "no answer and no close for {:?}",
            String::from_utf8_lossy(input)
        );
        let text = String::from_utf8_lossy(&buf);
        if let Some(status) = text.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()) {
            assert!(
                status < 500,
                "{status} for {:?}:\n{text}",
                String::from_utf8_lossy(input)
            );
        }
    }
    let after = h.get("/echo/still-up", &[]).await;
    assert_eq!(after.status, 200);
    assert!(h
        .metrics()
        .await
        .contains("tollgate_responses_total{class=\"5xx\"} 0"));
}
