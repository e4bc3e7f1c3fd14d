//! Set-up errors against servers that are not Redis (an HTTP server, garbage, a peer that hangs
//! up): each is one line, and the cause is reachable through `source()`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::error::Error as _;
use std::time::Duration;

use tier_redis::{RedisConnection, RedisConnectionBuilder, SetupError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a fake server answers to whatever it is sent.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Http,
    Garbage,
    HangUp,
}

impl Answer {
    fn bytes(self) -> &'static [u8] {
        match self {
            Answer::Http => {
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n\
                  <html>\r\n<head><title>400 Bad Request</title></head>\r\n\
                  <body>\r\n<center><h1>400 Bad Request</h1></center>\r\n</body>\r\n</html>\r\n"
            }
            Answer::Garbage => b"\x00\xff\n\n*3\r\n$-7\r\n\x1b[31m\r\nnot redis\n\t\r\n",
            Answer::HangUp => b"",
        }
    }
}

/// A loopback listener answering every connection with `answer`, then closing it. Runs until
/// the test's runtime ends.
async fn fake_server(answer: Answer) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                if !matches!(answer, Answer::HangUp) {
                    let mut buf = [0u8; 1024];
                    let _ = sock.read(&mut buf).await;
                    let _ = sock.write_all(answer.bytes()).await;
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("redis://{addr}/")
}

/// The error, its `Display` on one line, and at least one cause behind it, every one of them on
/// one line too.
fn assert_one_line(what: &str, err: &SetupError) {
    let text = err.to_string();
    assert!(!text.contains(['\n', '\r']), "{what}: not one line: {text:?}");
    let mut causes = 0;
    let mut source = err.source();
    while let Some(s) = source {
        causes += 1;
        let t = s.to_string();
        assert!(!t.contains(['\n', '\r']), "{what}: cause {causes} not one line: {t:?}");
        source = s.source();
    }
    assert!(causes > 0, "{what}: the cause must be reachable through source(): {text}");
}

async fn connect(builder: RedisConnectionBuilder) -> SetupError {
    builder
        // Fail instead of connecting in the background (the default for a server that cannot
        // be reached): the errors' texts are what is checked.
        .lazy(false)
        .connect_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(300))
        .connect()
        .await
        .expect_err("not a Redis server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_redis_gives_a_one_line_error() {
    for answer in [Answer::Http, Answer::Garbage, Answer::HangUp] {
        let url = fake_server(answer).await;
        let err = connect(RedisConnection::standalone(url.clone())).await;
        assert_one_line(&format!("standalone, {answer:?}"), &err);
        assert!(err.to_string().contains("cannot connect"), "{err}");
        let err = connect(RedisConnection::cluster([url.clone()])).await;
        assert_one_line(&format!("cluster, {answer:?}"), &err);
    }
}

#[tokio::test]
async fn every_setup_error_is_one_line() {
    let bad_url = RedisConnection::standalone("redis://127.0.0.1:notaport/")
        .connect()
        .await
        .expect_err("bad URL");
    assert_one_line("bad URL", &bad_url);
    let refused = connect(RedisConnection::standalone("redis://127.0.0.1:1/")).await;
    assert_one_line("refused", &refused);
}

/// By default a server that cannot be reached (refused, hung up) is connected to in the
/// background, and `connect` returns; a server that answers something that is not Redis still
/// fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_only_an_unreachable_server_is_connected_to_in_the_background() {
    let quick = |b: RedisConnectionBuilder| {
        b.connect_timeout(Duration::from_millis(300)).response_timeout(Duration::from_millis(300))
    };
    let refused = quick(RedisConnection::standalone("redis://127.0.0.1:1/")).connect().await;
    let refused = refused.expect("refused: connecting in the background");
    assert!(!refused.is_connected());
    let hung_up = fake_server(Answer::HangUp).await;
    quick(RedisConnection::standalone(hung_up))
        .connect()
        .await
        .expect("hung up: in the background");
    let http = fake_server(Answer::Http).await;
    let err = quick(RedisConnection::standalone(http)).connect().await.expect_err("not Redis");
    assert_one_line("http", &err);
}
