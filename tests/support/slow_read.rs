//! A minimal upstream for one phone number ([`TWILIO_ID`]) whose GET reads the stored name at once
//! and answers only after a delay (a slow response in transit), while PATCH applies at once: the
//! ordering a real upstream can show when a lookup and a write overlap. Tests of the rule that a
//! fetch which began before a write never stores or serves its older answer use it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::Value;

use super::mock_vapi::TWILIO_ID;

/// The running upstream; stops when dropped.
pub struct SlowRead {
    /// Where it listens.
    pub addr: SocketAddr,
    /// GET requests received.
    pub gets: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowRead {
    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// GET requests received so far.
    pub fn get_count(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
}

impl Drop for SlowRead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the upstream on 127.0.0.1 with the name "Old name"; GETs answer after `delay`.
pub async fn start(delay: Duration) -> SlowRead {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let name = Arc::new(Mutex::new(String::from("Old name")));
    let gets = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&gets);
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let name = Arc::clone(&name);
            let gets = Arc::clone(&counter);
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let name = Arc::clone(&name);
                    let gets = Arc::clone(&gets);
                    async move {
                        let method = req.method().clone();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let object = |name: &str| {
                            serde_json::json!({"id": TWILIO_ID, "provider": "twilio", "name": name})
                        };
                        let answer = if method == Method::PATCH {
                            let patch: Value =
                                serde_json::from_slice(&body).expect("PATCH body is JSON");
                            let new = patch["name"].as_str().expect("a name").to_owned();
                            *name.lock().unwrap_or_else(PoisonError::into_inner) = new.clone();
                            object(&new)
                        } else {
                            gets.fetch_add(1, Ordering::SeqCst);
                            let seen = name.lock().unwrap_or_else(PoisonError::into_inner).clone();
                            tokio::time::sleep(delay).await;
                            object(&seen)
                        };
                        let mut resp =
                            http::Response::new(Full::new(Bytes::from(answer.to_string())));
                        resp.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    SlowRead { addr, gets, task }
}
