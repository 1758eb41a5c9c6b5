//! The agent's HTTP endpoints: `/healthz`, `/readyz`, `/metrics` and `/status`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::AgentHandle;

/// Serves the endpoints on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, handle: AgentHandle, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(err) => {
                        tracing::warn!(error = %err, "accepting an HTTP connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let handle = handle.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let handle = handle.clone();
                        async move { Ok::<_, Infallible>(route(&handle, &req)) }
                    });
                    if let Err(err) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(%peer, error = %err, "HTTP connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// Binds `addr` (fails early, before anything else starts, when the port is taken).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn route(handle: &AgentHandle, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_string());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".to_string()),
        "/readyz" => {
            if handle.is_ready() {
                text(StatusCode::OK, "ready\n".to_string())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the initial state is not applied yet\n".to_string(),
                )
            }
        }
        "/metrics" => {
            let mut r = text(StatusCode::OK, handle.metrics_text());
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/status" => match serde_json::to_string_pretty(&handle.status()) {
            Ok(mut body) => {
                body.push('\n');
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz, /metrics or /status\n".to_string(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
