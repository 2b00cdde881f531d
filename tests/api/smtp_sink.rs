//! A local SMTP server for the tests: it speaks enough of RFC 5321 for a real client
//! (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT), keeps every message it receives, and can be
//! told to refuse messages for a while (a mail server that is down, then recovers).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent (headers and body, dot-unstuffed).
    pub data: String,
}

#[derive(Clone)]
pub struct SmtpSink {
    pub port: u16,
    messages: Arc<Mutex<Vec<Received>>>,
    refusing: Arc<AtomicBool>,
    /// Keeps only messages with this subject (others are accepted and dropped).
    subject: Option<Arc<str>>,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        SmtpSink::listen(None).await
    }

    /// A sink that keeps only the messages with `subject` (a test about password resets
    /// does not count the verification messages its new accounts are sent).
    pub async fn keeping(subject: &str) -> SmtpSink {
        SmtpSink::listen(Some(subject.into())).await
    }

    async fn listen(subject: Option<Arc<str>>) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the SMTP sink");
        let port = listener.local_addr().expect("addr").port();
        let sink = SmtpSink {
            port,
            messages: Arc::default(),
            refusing: Arc::default(),
            subject,
        };
        let shared = sink.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let s = shared.clone();
                tokio::spawn(async move {
                    let _ = s.session(socket).await;
                });
            }
        });
        sink
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// While set, every message is refused with a temporary failure (451).
    pub fn refuse(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::SeqCst);
    }

    pub fn messages(&self) -> Vec<Received> {
        self.messages.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Waits (at most `limit`) until `n` messages have arrived.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} message(s) within {limit:?}, got {}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn session(&self, socket: tokio::net::TcpStream) -> std::io::Result<()> {
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read).lines();
        write.write_all(b"220 sink.test ESMTP\r\n").await?;
        let (mut from, mut to) = (String::new(), Vec::new());
        while let Some(line) = lines.next_line().await? {
            let upper = line.to_ascii_uppercase();
            let reply: &[u8] = if upper.starts_with("EHLO") {
                b"250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
            } else if upper.starts_with("HELO") {
                b"250 sink.test\r\n"
            } else if upper.starts_with("MAIL FROM:") {
                from = line[10..].trim().to_owned();
                to.clear();
                b"250 OK\r\n"
            } else if upper.starts_with("RCPT TO:") {
                to.push(line[8..].trim().to_owned());
                b"250 OK\r\n"
            } else if upper == "DATA" {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut data = String::new();
                while let Some(l) = lines.next_line().await? {
                    if l == "." {
                        break;
                    }
                    data.push_str(l.strip_prefix('.').unwrap_or(&l));
                    data.push('\n');
                }
                if self.refusing.load(Ordering::SeqCst) {
                    b"451 4.3.0 try again later\r\n"
                } else {
                    let kept = self
                        .subject
                        .as_deref()
                        .is_none_or(|s| data.contains(&format!("Subject: {s}\n")));
                    if let (true, Ok(mut m)) = (kept, self.messages.lock()) {
                        m.push(Received {
                            from: from.clone(),
                            to: to.clone(),
                            data,
                        });
                    }
                    b"250 OK queued\r\n"
                }
            } else if upper == "QUIT" {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
                b"250 OK\r\n"
            } else {
                b"502 command not implemented\r\n"
            };
            write.write_all(reply).await?;
        }
        Ok(())
    }
}

/// The body part of a message as text: quoted-printable soft breaks and `=3D` undone,
/// which is enough to find a link in it.
pub fn decoded(data: &str) -> String {
    data.replace("=\n", "").replace("=3D", "=")
}
