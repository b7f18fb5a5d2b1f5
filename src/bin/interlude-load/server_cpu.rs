//! The server's own CPU time, read from its `/metrics` (`process_cpu_seconds_total`) before and
//! after a phase: the cost per request on the server, whichever side limits the throughput.
//!
//! Throughput alone hides which side is the bottleneck: a load generator that saturates first
//! caps both Decide and Check at its own speed, and their ratio then says more about the client
//! than the server. CPU seconds per request, and how busy the server was, do not.

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Reads one server's CPU seconds from its Prometheus endpoint.
#[derive(Clone, Debug)]
pub(crate) struct ServerCpu {
    uri: hyper::Uri,
}

impl ServerCpu {
    /// `url` is the server's metrics endpoint, e.g. `http://127.0.0.1:9464/metrics`.
    pub(crate) fn new(url: &str) -> anyhow::Result<Self> {
        let uri: hyper::Uri = url.parse()?;
        anyhow::ensure!(uri.scheme_str() == Some("http"), "server metrics must be an http:// URL");
        anyhow::ensure!(uri.host().is_some(), "server metrics URL has no host");
        Ok(Self { uri })
    }

    /// The URL read.
    pub(crate) fn url(&self) -> String {
        self.uri.to_string()
    }

    /// The server's CPU seconds so far, or the reason they could not be read.
    pub(crate) async fn seconds(&self) -> anyhow::Result<f64> {
        let host = self.uri.host().unwrap_or("127.0.0.1");
        let port = self.uri.port_u16().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host, port)).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(connection);
        let path = self.uri.path_and_query().map_or("/metrics", |p| p.as_str());
        let request =
            hyper::Request::get(path).header(hyper::header::HOST, host).body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        anyhow::ensure!(response.status().is_success(), "{} answered {}", self.uri, response.status());
        let body = response.into_body().collect().await?.to_bytes();
        driver.abort();
        cpu_seconds(&String::from_utf8_lossy(&body))
            .ok_or_else(|| anyhow::anyhow!("{} has no process_cpu_seconds_total", self.uri))
    }
}

/// The value of the unlabelled `process_cpu_seconds_total` sample in Prometheus text.
fn cpu_seconds(text: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix("process_cpu_seconds_total "))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cpu_sample_and_nothing_else() {
        let text = "# HELP process_cpu_seconds_total Total user and system CPU time.\n\
                    # TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total_other 9\n\
                    process_cpu_seconds_total 12.34\n\
                    process_resident_memory_bytes 1000\n";
        assert_eq!(cpu_seconds(text), Some(12.34));
        assert_eq!(cpu_seconds("process_resident_memory_bytes 1000\n"), None);
        assert_eq!(cpu_seconds("process_cpu_seconds_total not-a-number\n"), None);
    }

    #[test]
    fn only_http_urls_with_a_host() {
        assert!(ServerCpu::new("http://127.0.0.1:9464/metrics").is_ok());
        assert!(ServerCpu::new("https://127.0.0.1:9464/metrics").is_err());
        assert!(ServerCpu::new("/metrics").is_err());
    }
}
