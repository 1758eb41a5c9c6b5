//! An in-process fake Kubernetes API server (tests only): the real list and watch protocol
//! over plain HTTP on loopback for Pods, Namespaces and NetworkPolicies, so that the kube
//! source is tested through kube-rs itself.
//!
//! - `GET <collection>` returns a `*List` with `metadata.resourceVersion` (the whole
//!   collection in one page; `limit` is ignored, which the protocol allows).
//! - `GET <collection>?watch=true&resourceVersion=N` streams newline-delimited watch events
//!   (chunked): first the events after N from the history, then live events. With
//!   `resourceVersion` absent or `0` it starts with an `ADDED` for every object. A
//!   `resourceVersion` older than the history kept ([`FakeApiServer::expire_before`]) gets
//!   an `ERROR` event with a `410 Expired` Status (HTTP 200), as a real API server answers
//!   "too old resource version". `allowWatchBookmarks=true` enables `BOOKMARK` events
//!   ([`FakeApiServer::send_bookmarks`]); `timeoutSeconds` ends the stream cleanly.
//! - Test control: add/modify/delete objects (any JSON, including malformed objects), end or
//!   abruptly drop open watches, expire resource versions, stop and restart the server on
//!   the same port (state is kept), count requests.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc as fmpsc;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// The kinds served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FakeKind {
    Namespace,
    Pod,
    NetworkPolicy,
}

impl FakeKind {
    pub const ALL: [FakeKind; 3] = [FakeKind::Namespace, FakeKind::Pod, FakeKind::NetworkPolicy];

    pub fn path(self) -> &'static str {
        match self {
            FakeKind::Namespace => "/api/v1/namespaces",
            FakeKind::Pod => "/api/v1/pods",
            FakeKind::NetworkPolicy => "/apis/networking.k8s.io/v1/networkpolicies",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            FakeKind::Namespace => "Namespace",
            FakeKind::Pod => "Pod",
            FakeKind::NetworkPolicy => "NetworkPolicy",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            FakeKind::Namespace | FakeKind::Pod => "v1",
            FakeKind::NetworkPolicy => "networking.k8s.io/v1",
        }
    }

    fn from_kind(kind: &str) -> Option<FakeKind> {
        FakeKind::ALL.into_iter().find(|k| k.kind() == kind)
    }
}

/// A chunk of a watch response, or an abrupt end of the connection.
type Chunk = Result<Frame<Bytes>, std::io::Error>;

struct Watch {
    kind: FakeKind,
    bookmarks: bool,
    tx: fmpsc::UnboundedSender<Chunk>,
}

#[derive(Default)]
struct State {
    resource_version: u64,
    /// (kind, namespace, name) -> object.
    objects: BTreeMap<(FakeKind, String, String), Value>,
    /// Every event: (resource version, kind, type, object).
    history: Vec<(u64, FakeKind, &'static str, Value)>,
    /// Watches from a resource version below this get `410 Gone`.
    oldest_valid: u64,
    /// Answer a too old resource version with HTTP 410 instead of an `ERROR` event.
    gone_as_http_status: bool,
    watches: Vec<Watch>,
    /// `list <kind>` and `watch <kind>` per request.
    requests: Vec<String>,
    /// Kinds whose lists are answered `500 Internal Server Error`.
    failing_lists: Vec<FakeKind>,
}

impl State {
    fn broadcast(&mut self, kind: FakeKind, event: &Value) {
        let line = Bytes::from(format!("{event}\n"));
        self.watches.retain(|w| {
            w.kind != kind || w.tx.unbounded_send(Ok(Frame::data(line.clone()))).is_ok()
        });
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The fake server. Dropping it stops it.
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    running: Option<Running>,
}

impl FakeApiServer {
    /// Starts on a free loopback port.
    pub async fn start() -> FakeApiServer {
        let listener = listen("127.0.0.1:0".parse().expect("address")).await;
        let addr = listener.local_addr().expect("local address");
        let mut s = FakeApiServer {
            state: Arc::new(Mutex::new(State {
                resource_version: 1,
                ..State::default()
            })),
            addr,
            running: None,
        };
        s.serve(listener);
        s
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, self.state.clone(), stopped));
        self.running = Some(Running { stop, task });
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server (plain HTTP, no auth).
    pub fn client(&self) -> kube::Client {
        let uri = self.url().parse().expect("server URL");
        let mut config = kube::Config::new(uri);
        config.connect_timeout = Some(Duration::from_millis(500));
        kube::Client::try_from(config).expect("kube client")
    }

    /// Adds or replaces a typed object (a k8s-openapi value); returns its resource version.
    pub fn apply<K: serde::Serialize + kube::Resource<DynamicType = ()>>(&self, obj: &K) -> u64 {
        let mut v = serde_json::to_value(obj).expect("serializable object");
        v["kind"] = json!(K::kind(&()));
        v["apiVersion"] = json!(K::api_version(&()));
        self.apply_raw(v)
    }

    /// Adds or replaces an object given as JSON (which need not match its schema); `kind`
    /// and `metadata.name` must be set.
    pub fn apply_raw(&self, mut obj: Value) -> u64 {
        let kind = obj["kind"]
            .as_str()
            .and_then(FakeKind::from_kind)
            .expect("a served kind");
        obj["apiVersion"] = json!(kind.api_version());
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        let namespace = match kind {
            FakeKind::Namespace => String::new(),
            _ => obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string(),
        };
        if kind != FakeKind::Namespace {
            obj["metadata"]["namespace"] = json!(namespace);
        }
        let mut s = self.lock();
        s.resource_version += 1;
        let rv = s.resource_version;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (kind, namespace, name);
        let ty = if s.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.objects.insert(key, obj.clone());
        s.history.push((rv, kind, ty, obj.clone()));
        s.broadcast(kind, &json!({"type": ty, "object": obj}));
        rv
    }

    /// Deletes an object (`namespace` is ignored for namespaces); returns whether it existed.
    pub fn delete(&self, kind: FakeKind, namespace: &str, name: &str) -> bool {
        let ns = if kind == FakeKind::Namespace {
            String::new()
        } else {
            namespace.to_string()
        };
        let mut s = self.lock();
        let Some(mut obj) = s.objects.remove(&(kind, ns, name.to_string())) else {
            return false;
        };
        s.resource_version += 1;
        let rv = s.resource_version;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.history.push((rv, kind, "DELETED", obj.clone()));
        s.broadcast(kind, &json!({"type": "DELETED", "object": obj}));
        true
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.lock().resource_version
    }

    /// Watches from a resource version below `rv` are "too old" from now on (`410 Gone`).
    pub fn expire_before(&self, rv: u64) {
        self.lock().oldest_valid = rv;
    }

    /// Whether a watch from a too old resource version is answered with HTTP 410 (`true`)
    /// or, as API servers do, with HTTP 200 and an `ERROR` event (`false`, the default).
    pub fn gone_as_http_status(&self, yes: bool) {
        self.lock().gone_as_http_status = yes;
    }

    /// Lists of `kind` fail with `500 Internal Server Error` (`true`) or work again.
    pub fn fail_lists(&self, kind: FakeKind, yes: bool) {
        let mut s = self.lock();
        s.failing_lists.retain(|k| *k != kind);
        if yes {
            s.failing_lists.push(kind);
        }
    }

    /// Every resource version handed out so far is too old: every watch must relist.
    pub fn expire_all(&self) {
        let mut s = self.lock();
        s.oldest_valid = s.resource_version + 1;
    }

    /// Sends a `BOOKMARK` with the current resource version on every open watch that
    /// asked for bookmarks.
    pub fn send_bookmarks(&self) {
        let mut s = self.lock();
        let rv = s.resource_version.to_string();
        for kind in FakeKind::ALL {
            let event = json!({"type": "BOOKMARK", "object": {
                "kind": kind.kind(), "apiVersion": kind.api_version(),
                "metadata": {"resourceVersion": rv}}});
            let line = Bytes::from(format!("{event}\n"));
            s.watches.retain(|w| {
                w.kind != kind
                    || !w.bookmarks
                    || w.tx.unbounded_send(Ok(Frame::data(line.clone()))).is_ok()
            });
        }
    }

    /// Ends every open watch cleanly (as the server does at `timeoutSeconds`).
    pub fn end_watches(&self) {
        self.lock().watches.clear();
    }

    /// Breaks every open watch connection mid-stream (no final chunk), as a network failure
    /// or a crashing API server does.
    pub fn drop_watches(&self) {
        let watches = std::mem::take(&mut self.lock().watches);
        for w in watches {
            let _ =
                w.tx.unbounded_send(Err(std::io::Error::other("connection dropped by the test")));
        }
    }

    /// Number of open watches.
    pub fn open_watches(&self) -> usize {
        let mut s = self.lock();
        s.watches.retain(|w| !w.tx.is_closed());
        s.watches.len()
    }

    /// Number of list (`watch == false`) or watch requests for a kind so far.
    pub fn requests(&self, kind: FakeKind, watch: bool) -> usize {
        let tag = format!("{} {}", if watch { "watch" } else { "list" }, kind.kind());
        self.lock().requests.iter().filter(|r| **r == tag).count()
    }

    /// Stops serving: closes the listener and every connection. State is kept.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.send(());
            let _ = r.task.await;
        }
        self.lock().watches.clear();
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = listen(self.addr).await;
        self.serve(listener);
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.task.abort();
        }
    }
}

async fn listen(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("bind loopback");
    socket.listen(64).expect("listen")
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<Mutex<State>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, &req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Every connection, watches included, goes with the server.
    connections.shutdown().await;
}

type Body = BoxBody<Bytes, std::io::Error>;

fn handle(state: &Mutex<State>, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let Some(kind) = FakeKind::ALL.into_iter().find(|k| k.path() == path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no route {path}"),
        );
    };
    if req.method() != hyper::Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "read only",
        );
    }
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect();
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    s.requests.push(format!(
        "{} {}",
        if watch { "watch" } else { "list" },
        kind.kind()
    ));
    if !watch && s.failing_lists.contains(&kind) {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "lists of this kind fail (test)",
        );
    }
    if !watch {
        let items: Vec<Value> = s
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|(_, v)| v.clone())
            .collect();
        let list = json!({
            "kind": format!("{}List", kind.kind()),
            "apiVersion": kind.api_version(),
            "metadata": {"resourceVersion": s.resource_version.to_string()},
            "items": items,
        });
        return json_response(StatusCode::OK, &list);
    }

    let (tx, rx) = fmpsc::unbounded::<Chunk>();
    let send = |v: Value| {
        let _ = tx.unbounded_send(Ok(Frame::data(Bytes::from(format!("{v}\n")))));
    };
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if from == 0 {
        for ((k, _, _), obj) in &s.objects {
            if *k == kind {
                send(json!({"type": "ADDED", "object": obj}));
            }
        }
    } else if from < s.oldest_valid && s.gone_as_http_status {
        let message = format!("too old resource version: {from} ({})", s.oldest_valid);
        return status(StatusCode::GONE, "Expired", &message);
    } else if from < s.oldest_valid {
        // What a real API server sends for a too old resource version: HTTP 200 and an
        // ERROR event carrying a 410 Status, then the end of the stream.
        send(json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure",
            "message": format!("too old resource version: {from} ({})", s.oldest_valid),
            "reason": "Expired", "code": 410}}));
        drop(tx);
        return stream_response(rx, None);
    } else {
        for (rv, k, ty, obj) in &s.history {
            if *k == kind && *rv > from {
                send(json!({"type": ty, "object": obj}));
            }
        }
    }
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    s.watches.push(Watch {
        kind,
        bookmarks,
        tx,
    });
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    stream_response(rx, timeout)
}

fn stream_response(
    rx: fmpsc::UnboundedReceiver<Chunk>,
    timeout: Option<Duration>,
) -> Response<Body> {
    let body = match timeout {
        Some(t) => BodyExt::boxed(StreamBody::new(rx.take_until(tokio::time::sleep(t)))),
        None => BodyExt::boxed(StreamBody::new(rx)),
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(v.to_string()))
        .map_err(|never| match never {})
        .boxed();
    let mut r = Response::new(body);
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}
