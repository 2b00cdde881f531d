//! A minimal HTTP/1.1 client on hyper, for `molar healthcheck` in images without curl.

use std::time::Duration;

use anyhow::{bail, Context};
use axum::body::Body;
use hyper_util::rt::TokioIo;

/// The status code of a plain-HTTP GET, within `timeout`.
pub async fn get_status(url: &str, timeout: Duration) -> anyhow::Result<u16> {
    let uri: axum::http::Uri = url.parse().context("invalid URL")?;
    if uri.scheme_str() != Some("http") {
        bail!("only http:// URLs are supported");
    }
    let host = uri.host().context("the URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let fut = async move {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("cannot connect to {host}:{port}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake failed")?;
        tokio::spawn(conn);
        let req = axum::http::Request::get(uri.path())
            .header("host", format!("{host}:{port}"))
            .body(Body::empty())
            .context("cannot build the request")?;
        let res = sender.send_request(req).await.context("request failed")?;
        anyhow::Ok(res.status().as_u16())
    };
    tokio::time::timeout(timeout, fut)
        .await
        .context("timed out")?
}
