//! Starts the real server in-process on an ephemeral loopback port.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use resnet::serve::{ServeConfig, Server};
use resnet::weights::{bundled, Weights};
use resnet::{Classifier, ModelName};

pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<resnet::Result<()>>>,
}

impl Running {
    pub fn start(name: &str, classifiers: Vec<Classifier>, mut cfg: ServeConfig) -> Running {
        cfg.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = Server::bind(name, classifiers, &cfg).expect("binding the server");
        let addr = server.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            server.run(async {
                let _ = rx.await;
            })
        });
        Running {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// The built-in Fashion-MNIST model: small and real, so fast to serve.
    pub fn fashion(cfg: ServeConfig) -> Running {
        Running::start("fashion-mnist-resnet20", vec![fashion_classifier()], cfg)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Asks for a graceful shutdown and waits for it.
    pub fn stop(mut self) -> resnet::Result<()> {
        self.stop.take().map(|tx| tx.send(()));
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("the server thread panicked")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn fashion_classifier() -> Classifier {
    let b = bundled("fashion-mnist-resnet20").expect("the built-in model");
    Classifier::new(b.arch, Weights::Bundled(b)).expect("loading the built-in model")
}

/// resnet50 with random weights at 224²: slow enough (tens of ms an image) to hold a queue.
pub fn slow_classifier() -> Classifier {
    Classifier::new(ModelName::Resnet50, Weights::Random).expect("building resnet50")
}

/// An HTTP client that returns 4xx/5xx answers instead of failing on them.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// A multipart/form-data body with the given `(field, file name, bytes)` parts.
pub fn multipart(parts: &[(&str, &str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "resnet-test-boundary-7d41";
    let mut body = Vec::new();
    for (field, file, bytes) in parts {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
        body.extend(*bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
