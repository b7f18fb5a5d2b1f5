//! Configuration: defaults, then a TOML file, then `INTERLUDE_*` environment variables, then
//! command-line flags; validated whole before any port is bound.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::decision::Policy;
use crate::store::delivery::SuppressionPolicy;

/// gRPC address served by default: loopback, so a fresh `cargo run` exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Prometheus `/metrics` address served by default.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// VAST (HTTP) address served by default: loopback, like the gRPC port.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
/// Currency of prices and budgets (ISO 4217), as VAST's `Pricing` states it.
pub const DEFAULT_CURRENCY: &str = "USD";
/// Default relevance floor: an untargeted campaign (relevance 0.27) stays under it.
pub const DEFAULT_RELEVANCE_FLOOR: f64 = 0.35;
/// Default weight of relevance against the bid in the rank key: the engine's own default.
pub const DEFAULT_RELEVANCE_EXPONENT: u32 = crate::decision::DEFAULT_RELEVANCE_EXPONENT as u32;
/// Default ad load: ads per listener per rolling hour.
pub const DEFAULT_MAX_ADS_PER_HOUR: u32 = 8;
/// Default category separation across breaks.
pub const DEFAULT_CATEGORY_SEPARATION_SECS: u64 = 600;
/// Default "not for me" suppression of the advertiser.
pub const DEFAULT_NOT_FOR_ME_ADVERTISER_DAYS: u32 = 30;
/// Default "not for me" suppression of the ad's categories (0 = off).
pub const DEFAULT_NOT_FOR_ME_CATEGORY_DAYS: u32 = 0;
/// Default half-life of genre affinity.
pub const DEFAULT_TASTE_HALF_LIFE_DAYS: f64 = 30.0;
/// Default impression-token lifetime (events later than this are refused).
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 24 * 3600;
/// Default grace period for in-flight RPCs on shutdown.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// Default worker threads; 0 = a current-thread runtime (see docs/PERFORMANCE.md).
pub const DEFAULT_WORKER_THREADS: usize = 0;
/// Default largest request or response message.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Default concurrent HTTP/2 streams a client may open on one connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Default in-flight RPCs per connection; more are shed with RESOURCE_EXHAUSTED, never queued.
pub const DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION: usize = 256;
/// Default decision calls (Decide, RecordEvents) running at once across all connections; more
/// are shed with RESOURCE_EXHAUSTED (admission.rs). At ~25 µs a call, the queue it allows is
/// ~13 ms deep on one runtime thread.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;
/// Default longest wait for a stream's next message.
pub const DEFAULT_STREAM_IDLE_TIMEOUT_SECS: u64 = 60;
/// Default longest an RPC may run (a shorter grpc-timeout from the client wins).
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
/// Default HTTP/2 keepalive ping interval.
pub const DEFAULT_KEEPALIVE_SECS: u64 = 30;
/// Default largest request header list.
pub const DEFAULT_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Default most connections the gRPC listener holds; more are closed when accepted.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default time a new connection has to send its first request.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
/// Default time a connection may stay open with no RPC in flight.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 300;
/// Default streams a client may have the server reset for its errors (hyper's own default,
/// set explicitly: tonic otherwise passes none, turning the protection off — "MadeYouReset",
/// CVE-2025-8671); past it the connection gets GOAWAY.
pub const DEFAULT_MAX_ERROR_RESET_STREAMS: usize = 1024;
/// Default streams reset by the client before the server accepted them, pending at once (h2's
/// own default, set explicitly; the rapid-reset guard, CVE-2023-44487).
pub const DEFAULT_MAX_PENDING_RESET_STREAMS: usize = 20;
/// Default data directory of the embedded store, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "interlude-data";
/// Default memory budget of the listener profile cache (with a data directory), MiB.
pub const DEFAULT_PROFILE_CACHE_MIB: u64 = 256;
/// Default memory budget of the delivery-history cache over the store, MiB.
pub const DEFAULT_HISTORY_CACHE_MIB: u64 = 256;
/// Default longest Redis call in cluster mode, milliseconds.
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 250;
/// Default log filter (tracing-subscriber `EnvFilter` syntax).
pub const DEFAULT_LOG: &str = "info";
/// Environment variables with this prefix override the file: `INTERLUDE_RELEVANCE_FLOOR=0.4`.
pub const ENV_PREFIX: &str = "INTERLUDE_";

/// The validated configuration the server runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    /// None = no metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// The VAST edge (HTTP); None = off.
    pub http_listen: Option<SocketAddr>,
    /// Where players reach the VAST edge, e.g. "https://ads.example.com" (no trailing slash):
    /// the base of every tracking URL. None = the scheme and `Host` of each request.
    pub public_url: Option<String>,
    /// ISO 4217 code of the account currency (prices, budgets).
    pub currency: String,
    /// Load the built-in demo catalog at start.
    pub demo: bool,
    pub policy: Policy,
    pub suppression: SuppressionPolicy,
    pub taste_half_life: Duration,
    /// HMAC key for impression tokens; None = a random key per process.
    pub token_key: Option<Vec<u8>>,
    pub token_ttl: Duration,
    pub shutdown_grace: Duration,
    pub worker_threads: usize,
    pub log: String,
    pub limits: Limits,
    /// Where the embedded store lives; None = memory only (nothing survives a restart).
    pub data_dir: Option<PathBuf>,
    /// Memory budget of the listener profile cache over the store, bytes (without a store,
    /// every profile is resident).
    pub profile_cache_bytes: u64,
    /// Memory budget of the delivery-history cache over the store (with a data dir).
    pub history_cache_bytes: u64,
    /// Bearer token of the admin RPCs; None = one is generated at start (loopback only).
    pub admin_token: Option<Secret>,
    /// Bearer token of the decision RPCs; None = they are open (loopback only, or to clients
    /// with a certificate when `tls` requires one).
    pub decision_token: Option<Secret>,
    /// TLS (and mTLS) for the gRPC port; None = plaintext.
    pub tls: Option<Tls>,
    /// Cluster mode (shared state on Redis Cluster); None = single-node mode.
    pub redis: Option<RedisSettings>,
}

/// Where the shared state of cluster mode lives, and how long a call to it may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// Seed nodes, "host:port" each; the client learns the rest of the cluster from them.
    pub nodes: Vec<String>,
    pub timeout: Duration,
    /// Replicas that must hold an acknowledged write (0 or 1).
    pub wait_replicas: u8,
}

/// The server's certificate and key, and the CA its clients' certificates must chain to (mTLS),
/// read (and checked) before anything binds.
#[derive(Clone, PartialEq, Eq)]
pub struct Tls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Some = every client must present a certificate signed by this CA.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("mtls", &self.client_ca_pem.is_some()).finish_non_exhaustive()
    }
}

impl Tls {
    /// The server-side rustls configuration.
    pub fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let config = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

/// A credential: compared, never printed (`Debug` shows only that it is set).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Shortest bearer token accepted in the configuration.
pub const MIN_TOKEN_CHARS: usize = 20;

/// Transport limits: what protects the server from oversized, slow or excessive requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_concurrent_streams: u32,
    pub max_in_flight_per_connection: usize,
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    /// Longest a streaming RPC (RecordPlays) may wait for its next message.
    pub stream_idle_timeout: Duration,
    pub keepalive_interval: Duration,
    pub max_header_list_bytes: u32,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_error_reset_streams: usize,
    pub max_pending_reset_streams: usize,
}

impl Limits {
    /// The limits the connection layer applies (net.rs).
    pub fn edge(&self) -> crate::net::EdgeLimits {
        crate::net::EdgeLimits {
            max_connections: self.max_connections,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
        }
    }
}

/// Why the configuration is unusable. Printed to stderr; the process exits with 64 (EX_USAGE).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid environment variable {name}: {source}")]
    Env { name: String, source: Box<toml::de::Error> },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Where configuration strings come from; a trait so tests can pass a map instead of the
/// process environment.
pub trait Strings {
    /// Every `(name, value)` pair whose name starts with `prefix`.
    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Strings for ProcessEnv {
    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        std::env::vars().filter(|(k, _)| k.starts_with(prefix)).collect()
    }
}

impl Strings for BTreeMap<String, String> {
    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Command-line flags. Every setting can also come from the file or the environment.
#[derive(Clone, Debug, Default, clap::Parser)]
#[command(name = "interlude", version, about = "Interlude ad decision server")]
pub struct Cli {
    /// TOML config file.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

macro_rules! settings {
    ($($(#[$doc:meta])* $field:ident: $ty:ty,)*) => {
        /// Settings as read from one source; unset = defer to the source below.
        #[derive(Clone, Debug, Default, PartialEq, Deserialize, clap::Args)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $($(#[$doc])* #[arg(long)] pub $field: Option<$ty>,)*
        }

        impl Settings {
            /// `self`, with unset fields taken from `lower`.
            fn or(self, lower: Settings) -> Settings {
                Settings { $($field: self.$field.or(lower.$field),)* }
            }
        }
    };
}

settings! {
    /// gRPC listen address [default: 127.0.0.1:50051].
    listen: SocketAddr,
    /// Prometheus /metrics listen address, or "off" [default: 127.0.0.1:9464].
    metrics_listen: String,
    /// VAST 4.2 over HTTP listen address, or "off" [default: 127.0.0.1:8080].
    http_listen: String,
    /// Base URL of the VAST edge as players reach it, for tracking URLs, e.g.
    /// "https://ads.example.com" [default: the scheme and Host of each request].
    public_url: String,
    /// ISO 4217 code of the account currency [default: USD].
    currency: String,
    /// Load the built-in demo catalog [default: true].
    demo: bool,
    /// Default relevance floor in [0, 1] [default: 0.35].
    relevance_floor: f64,
    /// Paid ads rank by bid × relevance^this, 1..=4: higher favours relevance over money [default: 2].
    relevance_exponent: u32,
    /// Away from a declared home city, the request location's geo fit counts this much, in
    /// (0, 1]: a home match outranks an equal match on the trip's city [default: 0.8].
    away_geo_weight: f64,
    /// Ads per listener per rolling hour [default: 8].
    max_ads_per_hour: u32,
    /// Category separation across breaks, seconds [default: 600].
    category_separation_secs: u64,
    /// "Not for me" suppresses the advertiser this many days [default: 30].
    not_for_me_advertiser_days: u32,
    /// "Not for me" suppresses the ad's categories this many days; 0 = off [default: 0].
    not_for_me_category_days: u32,
    /// Half-life of genre affinity, days [default: 30].
    taste_half_life_days: f64,
    /// Impression-token HMAC key, hex, at least 32 bytes [default: random per process].
    token_key: String,
    /// Impression-token lifetime, seconds [default: 86400].
    token_ttl_secs: u64,
    /// Grace period for in-flight RPCs on shutdown, seconds [default: 10].
    shutdown_grace_secs: u64,
    /// Tokio worker threads; 0 = current-thread runtime [default: 0].
    worker_threads: usize,
    /// Log filter [default: info].
    log: String,
    /// Largest request or response message, bytes [default: 1048576].
    max_message_bytes: usize,
    /// Concurrent HTTP/2 streams per connection [default: 256].
    max_concurrent_streams: u32,
    /// In-flight RPCs per connection before shedding with RESOURCE_EXHAUSTED [default: 256].
    max_in_flight_per_connection: usize,
    /// Decision calls running at once across all connections before shedding with
    /// RESOURCE_EXHAUSTED [default: 512].
    max_in_flight: usize,
    /// Longest an RPC may run, seconds; a shorter grpc-timeout wins [default: 30].
    request_timeout_secs: u64,
    /// Longest a RecordPlays stream may go without a message, seconds; streams are not bound by
    /// request_timeout_secs [default: 60].
    stream_idle_timeout_secs: u64,
    /// HTTP/2 keepalive ping interval, seconds [default: 30].
    keepalive_secs: u64,
    /// Largest request header list, bytes [default: 16384].
    max_header_list_bytes: u32,
    /// Most connections held open; more are closed as soon as accepted [default: 10000].
    max_connections: usize,
    /// Seconds a new connection has to send its first request [default: 10].
    handshake_timeout_secs: u64,
    /// Seconds a connection may stay open with no RPC in flight [default: 300].
    idle_timeout_secs: u64,
    /// Streams a client may make the server reset for its errors before GOAWAY [default: 1024].
    max_error_reset_streams: usize,
    /// Client-reset streams pending at once before GOAWAY (rapid reset) [default: 20].
    max_pending_reset_streams: usize,
    /// Data directory of the embedded store, or "off" for memory only [default: interlude-data].
    data_dir: String,
    /// Memory budget of the listener profile cache over the store, MiB; the rest of the profiles
    /// stay on disk [default: 256].
    profile_cache_mib: u64,
    /// Memory budget of the delivery-history cache over the store, MiB; the histories of
    /// listeners not heard from lately stay on disk [default: 256].
    history_cache_mib: u64,
    /// Bearer token of the admin RPCs, at least 20 characters [default: random per process, logged
    /// once; required off loopback].
    admin_token: String,
    /// Bearer token of Decide, RecordEvents and RecordPlays, at least 20 characters [default:
    /// none: open on loopback only].
    decision_token: String,
    /// PEM certificate (chain) of the gRPC port: serve TLS [default: plaintext].
    tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    tls_key: PathBuf,
    /// PEM CA certificate that clients' certificates must chain to (mTLS) [default: none].
    tls_client_ca: PathBuf,
    /// Cluster mode: seed nodes of the Redis Cluster that holds the shared state, as
    /// "host:port,host:port" [default: none: single-node mode on data_dir].
    redis_nodes: String,
    /// Longest any one Redis call may take, milliseconds [default: 250].
    redis_timeout_ms: u64,
    /// Replicas of its master that must hold a write before it is acknowledged (WAIT): 1 keeps
    /// what was acknowledged through the loss of a master; 0 trades that for speed [default: 1].
    redis_wait_replicas: u8,
}

impl Config {
    /// Reads and validates the configuration from the command line, the file it names and `env`.
    pub fn load(cli: Cli, env: &impl Strings) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str(&text)
                    .map_err(|source| ConfigError::Parse { path: path.clone(), source: Box::new(source) })?
            }
            None => Settings::default(),
        };
        let env = settings_from_env(env)?;
        cli.settings.or(env).or(file).validate()
    }
}

fn settings_from_env(env: &impl Strings) -> Result<Settings, ConfigError> {
    use serde::Deserialize as _;
    let mut settings = Settings::default();
    for (name, value) in env.with_prefix(ENV_PREFIX) {
        let key = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        // Each variable is one typed value of one key, never TOML text: a value holding a
        // newline and "admin_token = ..." is one (bad) value, not a second setting. A value
        // that is not a TOML literal (an address, a hex key) is taken as a string.
        let one_setting = |value: toml::Value| {
            let mut table = toml::Table::new();
            table.insert(key.clone(), value);
            Settings::deserialize(table)
        };
        let literal = toml::de::ValueDeserializer::parse(&value).and_then(toml::Value::deserialize);
        let one = match literal.map(&one_setting) {
            Ok(Ok(one)) => one,
            _ => one_setting(toml::Value::String(value.clone()))
                .map_err(|source| ConfigError::Env { name: name.clone(), source: Box::new(source) })?,
        };
        settings = one.or(settings);
    }
    Ok(settings)
}

impl Settings {
    fn validate(self) -> Result<Config, ConfigError> {
        let invalid =
            |field: &'static str, reason: &str| ConfigError::Invalid { field, reason: reason.to_owned() };
        let listen = match self.listen {
            Some(addr) => addr,
            None => DEFAULT_LISTEN.parse().map_err(|_| invalid("listen", "bad default"))?,
        };
        let metrics_listen = match self.metrics_listen.as_deref().unwrap_or(DEFAULT_METRICS_LISTEN) {
            "off" => None,
            addr => {
                Some(addr.parse().map_err(|_| invalid("metrics_listen", "expected host:port or \"off\""))?)
            }
        };
        let http_listen = match self.http_listen.as_deref().unwrap_or(DEFAULT_HTTP_LISTEN) {
            "off" => None,
            addr => Some(addr.parse().map_err(|_| invalid("http_listen", "expected host:port or \"off\""))?),
        };
        let public_url = match self.public_url {
            Some(url) => Some(public_url(url).map_err(|reason| invalid("public_url", reason))?),
            None => None,
        };
        let currency = self.currency.unwrap_or_else(|| DEFAULT_CURRENCY.to_owned());
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid("currency", "must be an ISO 4217 code such as \"USD\""));
        }
        let relevance_floor = self.relevance_floor.unwrap_or(DEFAULT_RELEVANCE_FLOOR);
        if !(0.0..=1.0).contains(&relevance_floor) {
            return Err(invalid("relevance_floor", "must be within [0, 1]"));
        }
        let relevance_exponent = self.relevance_exponent.unwrap_or(DEFAULT_RELEVANCE_EXPONENT);
        if !(1..=4).contains(&relevance_exponent) {
            return Err(invalid("relevance_exponent", "must be 1..=4"));
        }
        let away_geo_weight = self.away_geo_weight.unwrap_or(crate::decision::DEFAULT_AWAY_GEO_WEIGHT);
        if !(away_geo_weight > 0.0 && away_geo_weight <= 1.0) {
            return Err(invalid("away_geo_weight", "must be within (0, 1]"));
        }
        let max_ads_per_hour = self.max_ads_per_hour.unwrap_or(DEFAULT_MAX_ADS_PER_HOUR);
        if max_ads_per_hour == 0 {
            return Err(invalid("max_ads_per_hour", "must be at least 1"));
        }
        let category_separation_secs =
            self.category_separation_secs.unwrap_or(DEFAULT_CATEGORY_SEPARATION_SECS);
        if category_separation_secs > 7 * 24 * 3600 {
            return Err(invalid("category_separation_secs", "must be at most 7 days"));
        }
        let half_life_days = self.taste_half_life_days.unwrap_or(DEFAULT_TASTE_HALF_LIFE_DAYS);
        if !(half_life_days.is_finite() && (0.01..=3650.0).contains(&half_life_days)) {
            return Err(invalid("taste_half_life_days", "must be within [0.01, 3650]"));
        }
        let token_key = match self.token_key {
            Some(hex_key) => {
                let key = hex::decode(hex_key.trim()).map_err(|_| invalid("token_key", "must be hex"))?;
                if key.len() < 32 {
                    return Err(invalid("token_key", "must be at least 32 bytes (64 hex digits)"));
                }
                Some(key)
            }
            None => None,
        };
        let token_ttl_secs = self.token_ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
        if !(60..=30 * 24 * 3600).contains(&token_ttl_secs) {
            return Err(invalid("token_ttl_secs", "must be within [60, 2592000]"));
        }
        let worker_threads = self.worker_threads.unwrap_or(DEFAULT_WORKER_THREADS);
        if worker_threads > 256 {
            return Err(invalid("worker_threads", "must be at most 256"));
        }
        let limits = Limits {
            max_message_bytes: self.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
            max_concurrent_streams: self.max_concurrent_streams.unwrap_or(DEFAULT_MAX_CONCURRENT_STREAMS),
            max_in_flight_per_connection: self
                .max_in_flight_per_connection
                .unwrap_or(DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION),
            max_in_flight: self.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
            request_timeout: Duration::from_secs(
                self.request_timeout_secs.unwrap_or(DEFAULT_REQUEST_TIMEOUT_SECS),
            ),
            stream_idle_timeout: Duration::from_secs(
                self.stream_idle_timeout_secs.unwrap_or(DEFAULT_STREAM_IDLE_TIMEOUT_SECS),
            ),
            keepalive_interval: Duration::from_secs(self.keepalive_secs.unwrap_or(DEFAULT_KEEPALIVE_SECS)),
            max_header_list_bytes: self.max_header_list_bytes.unwrap_or(DEFAULT_MAX_HEADER_LIST_BYTES),
            max_connections: self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            handshake_timeout: Duration::from_secs(
                self.handshake_timeout_secs.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT_SECS),
            ),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS)),
            max_error_reset_streams: self.max_error_reset_streams.unwrap_or(DEFAULT_MAX_ERROR_RESET_STREAMS),
            max_pending_reset_streams: self
                .max_pending_reset_streams
                .unwrap_or(DEFAULT_MAX_PENDING_RESET_STREAMS),
        };
        if !(1024..=64 * 1024 * 1024).contains(&limits.max_message_bytes) {
            return Err(invalid("max_message_bytes", "must be within [1024, 67108864]"));
        }
        if limits.max_concurrent_streams == 0 {
            return Err(invalid("max_concurrent_streams", "must be at least 1"));
        }
        if limits.max_in_flight_per_connection == 0 {
            return Err(invalid("max_in_flight_per_connection", "must be at least 1"));
        }
        // tokio's semaphore holds at most usize::MAX >> 3 permits.
        if !(1..=1 << 20).contains(&limits.max_in_flight) {
            return Err(invalid("max_in_flight", "must be within [1, 1048576]"));
        }
        if limits.request_timeout.is_zero() || limits.request_timeout > Duration::from_secs(3600) {
            return Err(invalid("request_timeout_secs", "must be within [1, 3600]"));
        }
        if limits.stream_idle_timeout.is_zero() || limits.stream_idle_timeout > Duration::from_secs(3600) {
            return Err(invalid("stream_idle_timeout_secs", "must be within [1, 3600]"));
        }
        if limits.keepalive_interval.is_zero() {
            return Err(invalid("keepalive_secs", "must be at least 1"));
        }
        if limits.max_header_list_bytes < 1024 {
            return Err(invalid("max_header_list_bytes", "must be at least 1024"));
        }
        if !(1..=1_000_000).contains(&limits.max_connections) {
            return Err(invalid("max_connections", "must be within [1, 1000000]"));
        }
        if !(1..=600).contains(&limits.handshake_timeout.as_secs()) {
            return Err(invalid("handshake_timeout_secs", "must be within [1, 600]"));
        }
        // An RPC in flight keeps its connection: the idle timeout only has to outlast a pause
        // between RPCs, but a shorter one than the request timeout would surprise.
        if limits.idle_timeout < limits.request_timeout || limits.idle_timeout > Duration::from_secs(86_400) {
            return Err(invalid("idle_timeout_secs", "must be within [request_timeout_secs, 86400]"));
        }
        if !(1..=100_000).contains(&limits.max_error_reset_streams) {
            return Err(invalid("max_error_reset_streams", "must be within [1, 100000]"));
        }
        if !(1..=10_000).contains(&limits.max_pending_reset_streams) {
            return Err(invalid("max_pending_reset_streams", "must be within [1, 10000]"));
        }
        let redis = match self.redis_nodes.as_deref() {
            None => None,
            Some(nodes) => Some(RedisSettings {
                nodes: redis_nodes(nodes).map_err(|reason| invalid("redis_nodes", reason))?,
                timeout: Duration::from_millis(self.redis_timeout_ms.unwrap_or(DEFAULT_REDIS_TIMEOUT_MS)),
                wait_replicas: self.redis_wait_replicas.unwrap_or(1),
            }),
        };
        if let Some(r) = &redis
            && !(1..=10_000).contains(&r.timeout.as_millis())
        {
            return Err(invalid("redis_timeout_ms", "must be within [1, 10000]"));
        }
        if redis.as_ref().is_some_and(|r| r.wait_replicas > 1) {
            return Err(invalid("redis_wait_replicas", "must be 0 or 1"));
        }
        // Cluster mode keeps its state in Redis: a data directory as well would be a second
        // truth, so only an explicit one is refused and the default is simply not used.
        let data_dir = match (self.data_dir.as_deref(), &redis) {
            (Some(dir), Some(_)) if dir != "off" => {
                return Err(invalid("data_dir", "must be \"off\" (or unset) with redis_nodes"));
            }
            (_, Some(_)) => Some("off"),
            (dir, None) => dir,
        };
        let data_dir = match data_dir.unwrap_or(DEFAULT_DATA_DIR) {
            "off" => None,
            "" => return Err(invalid("data_dir", "must be a path or \"off\"")),
            dir => Some(PathBuf::from(dir)),
        };
        let profile_cache_mib = self.profile_cache_mib.unwrap_or(DEFAULT_PROFILE_CACHE_MIB);
        if !(1..=1 << 20).contains(&profile_cache_mib) {
            return Err(invalid("profile_cache_mib", "must be within [1, 1048576]"));
        }
        let history_cache_mib = self.history_cache_mib.unwrap_or(DEFAULT_HISTORY_CACHE_MIB);
        if !(1..=1 << 20).contains(&history_cache_mib) {
            return Err(invalid("history_cache_mib", "must be within [1, 1048576]"));
        }
        let token = |field: &'static str, value: Option<String>| match value {
            Some(t) if t.chars().count() < MIN_TOKEN_CHARS || t.chars().any(|c| !c.is_ascii_graphic()) => {
                Err(invalid(field, "must be at least 20 printable ASCII characters, no spaces"))
            }
            other => Ok(other.map(Secret)),
        };
        let admin_token = token("admin_token", self.admin_token)?;
        let decision_token = token("decision_token", self.decision_token)?;
        let read = |field: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| invalid(field, &format!("cannot read {}: {e}", path.display())))
        };
        let tls = match (&self.tls_cert, &self.tls_key, &self.tls_client_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), ca) => Some(Tls {
                cert_pem: read("tls_cert", cert)?,
                key_pem: read("tls_key", key)?,
                client_ca_pem: ca.as_ref().map(|ca| read("tls_client_ca", ca)).transpose()?,
            }),
            (None, _, _) => return Err(invalid("tls_cert", "must be set with tls_key and tls_client_ca")),
            (Some(_), None, _) => return Err(invalid("tls_key", "must be set with tls_cert")),
        };
        if let Some(tls) = &tls {
            // Parses the PEM files now, so a bad one stops the server before it binds.
            tonic::transport::Server::builder()
                .tls_config(tls.server_config())
                .map_err(|e| invalid("tls_cert", &format!("unusable certificate, key or CA: {e}")))?;
        }
        // Secure by default: without configured credentials the server is reachable from this
        // host only. Off loopback, decision RPCs need their token or client certificates.
        if !listen.ip().is_loopback() {
            if admin_token.is_none() {
                return Err(invalid("admin_token", "must be set to listen on a non-loopback address"));
            }
            let mtls = tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some());
            if decision_token.is_none() && !mtls {
                return Err(invalid(
                    "decision_token",
                    "must be set (or tls_client_ca, for mTLS) to listen on a non-loopback address",
                ));
            }
        }
        let log = self.log.unwrap_or_else(|| DEFAULT_LOG.to_owned());
        tracing_subscriber::EnvFilter::try_new(&log).map_err(|e| invalid("log", &e.to_string()))?;
        const DAY_MS: i64 = 24 * 3600 * 1000;
        Ok(Config {
            listen,
            metrics_listen,
            http_listen,
            public_url,
            currency,
            demo: self.demo.unwrap_or(true),
            policy: Policy {
                relevance_floor,
                max_ads_per_hour,
                category_separation_ms: category_separation_secs as i64 * 1000,
                // Checked to be 1..=4 above.
                relevance_exponent: relevance_exponent as i32,
                away_geo_weight,
            },
            suppression: SuppressionPolicy {
                advertiser_ms: i64::from(
                    self.not_for_me_advertiser_days.unwrap_or(DEFAULT_NOT_FOR_ME_ADVERTISER_DAYS),
                ) * DAY_MS,
                category_ms: i64::from(
                    self.not_for_me_category_days.unwrap_or(DEFAULT_NOT_FOR_ME_CATEGORY_DAYS),
                ) * DAY_MS,
            },
            taste_half_life: Duration::from_secs_f64(half_life_days * 86_400.0),
            token_key,
            token_ttl: Duration::from_secs(token_ttl_secs),
            shutdown_grace: Duration::from_secs(
                self.shutdown_grace_secs.unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS),
            ),
            worker_threads,
            log,
            limits,
            data_dir,
            profile_cache_bytes: profile_cache_mib << 20,
            history_cache_bytes: history_cache_mib << 20,
            admin_token,
            decision_token,
            tls,
            redis,
        })
    }
}

/// Splits and checks the seed nodes of `redis_nodes`: "host:port" each, comma-separated.
fn redis_nodes(nodes: &str) -> Result<Vec<String>, &'static str> {
    let nodes: Vec<String> =
        nodes.split(',').map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect();
    if nodes.is_empty() {
        return Err("must name at least one node as host:port");
    }
    for node in &nodes {
        let well_formed = node.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && !host.contains(['/', '@', ' ']) && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !well_formed {
            return Err("each node must be host:port, e.g. 10.0.0.5:6379");
        }
    }
    Ok(nodes)
}

/// Checks a public base URL: http(s), a host, no query or fragment; drops a trailing slash.
fn public_url(url: String) -> Result<String, &'static str> {
    let uri: http::Uri = url.parse().map_err(|_| "must be an absolute http(s) URL")?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
        return Err("must be an absolute http(s) URL");
    }
    if uri.query().is_some() || url.contains('#') {
        return Err("must have no query or fragment");
    }
    Ok(url.trim_end_matches('/').to_owned())
}

impl Default for Config {
    /// The configuration with nothing set: every default.
    fn default() -> Self {
        // The defaults are constants that validate; a test below keeps it so.
        Settings::default().validate().unwrap_or_else(|e| unreachable!("defaults are valid: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("interlude").chain(args.iter().copied())).unwrap();
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::load(cli, &env)
    }

    #[test]
    fn defaults_are_valid_and_loopback() {
        let config = load(&[], &[]).unwrap();
        assert_eq!(config, Config::default());
        assert!(config.listen.ip().is_loopback());
        assert!(config.demo);
        assert_eq!(config.policy.relevance_floor, DEFAULT_RELEVANCE_FLOOR);
        assert_eq!(config.policy.relevance_exponent, 2);
    }

    #[test]
    fn flags_override_env_which_overrides_file() {
        let dir = std::env::temp_dir().join(format!("interlude-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("interlude.toml");
        std::fs::write(&path, "relevance_floor = 0.5\nmax_ads_per_hour = 3\ndemo = false\n").unwrap();
        let path_arg = path.to_str().unwrap();
        let config = load(
            &["--config", path_arg, "--max-ads-per-hour", "5"],
            &[
                ("INTERLUDE_RELEVANCE_FLOOR", "0.6"),
                ("INTERLUDE_MAX_ADS_PER_HOUR", "4"),
                ("INTERLUDE_LISTEN", "127.0.0.1:7000"),
            ],
        )
        .unwrap();
        assert_eq!(config.policy.relevance_floor, 0.6);
        assert_eq!(config.policy.max_ads_per_hour, 5);
        assert!(!config.demo);
        assert_eq!(config.listen.port(), 7000);
    }

    #[test]
    fn bad_values_name_the_field() {
        let err = load(&["--relevance-floor", "1.5"], &[]).unwrap_err();
        assert!(err.to_string().contains("relevance_floor"), "{err}");
        for exponent in ["0", "5"] {
            let err = load(&["--relevance-exponent", exponent], &[]).unwrap_err();
            assert!(err.to_string().contains("relevance_exponent"), "{err}");
        }
        let config = load(&[], &[("INTERLUDE_RELEVANCE_EXPONENT", "3")]).unwrap();
        assert_eq!(config.policy.relevance_exponent, 3);
        let err = load(&[], &[("INTERLUDE_TOKEN_KEY", "abcd")]).unwrap_err();
        assert!(err.to_string().contains("token_key"), "{err}");
        let err = load(&[], &[("INTERLUDE_NO_SUCH_SETTING", "1")]).unwrap_err();
        assert!(err.to_string().contains("INTERLUDE_NO_SUCH_SETTING"), "{err}");
        // A crafted value cannot set a second key: it is one value of its own key.
        let smuggled = "\nadmin_token = \"attacker-chosen-token-0123\"";
        let err = load(&[], &[("INTERLUDE_DEMO", &format!("true{smuggled}"))]).unwrap_err();
        assert!(err.to_string().contains("INTERLUDE_DEMO"), "{err}");
        let path = format!("/tmp/interlude{smuggled}");
        let config = load(&[], &[("INTERLUDE_DATA_DIR", &path)]).unwrap();
        assert_eq!(config.data_dir, Some(PathBuf::from(&path)), "taken whole, as the path");
        assert_ne!(config.admin_token, Some(Secret("attacker-chosen-token-0123".into())));
        let err = load(&[], &[("INTERLUDE_NO_SUCH_SETTING", "1")]).unwrap_err();
        assert!(err.to_string().contains("INTERLUDE_NO_SUCH_SETTING"), "{err}");
        assert!(load(&["--metrics-listen", "off"], &[]).unwrap().metrics_listen.is_none());
    }

    #[test]
    fn the_vast_edge_settings_are_checked_before_binding() {
        let config = load(&[], &[]).unwrap();
        assert_eq!(config.http_listen, Some(DEFAULT_HTTP_LISTEN.parse().unwrap()));
        assert!(config.http_listen.is_some_and(|a| a.ip().is_loopback()));
        assert_eq!((config.public_url, config.currency.as_str()), (None, "USD"));
        assert_eq!(load(&["--http-listen", "off"], &[]).unwrap().http_listen, None);
        let config = load(&["--public-url", "https://ads.example.com/", "--currency", "EUR"], &[]).unwrap();
        assert_eq!(config.public_url.as_deref(), Some("https://ads.example.com"), "the slash goes");
        assert_eq!(config.currency, "EUR");
        for (flag, value, field) in [
            ("--http-listen", "8080", "http_listen"),
            ("--public-url", "ads.example.com", "public_url"),
            ("--public-url", "ftp://ads.example.com", "public_url"),
            ("--public-url", "https://ads.example.com/?x=1", "public_url"),
            ("--currency", "usd", "currency"),
            ("--currency", "EURO", "currency"),
        ] {
            let err = load(&[flag, value], &[]).unwrap_err();
            assert!(err.to_string().contains(field), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn cluster_mode_settings_are_checked_before_binding() {
        let config = load(&[], &[]).unwrap();
        assert_eq!(config.redis, None, "single-node mode by default");
        let config = load(&[], &[("INTERLUDE_REDIS_NODES", "10.0.0.5:7000, redis-2.internal:7001")]).unwrap();
        let redis = config.redis.unwrap();
        assert_eq!(redis.nodes, ["10.0.0.5:7000", "redis-2.internal:7001"]);
        assert_eq!(redis.timeout, Duration::from_millis(DEFAULT_REDIS_TIMEOUT_MS));
        assert_eq!(redis.wait_replicas, 1, "acknowledged writes survive a master by default");
        assert_eq!(config.data_dir, None, "the default data_dir is not used in cluster mode");
        let config = load(&["--redis-nodes", "127.0.0.1:7000", "--data-dir", "off"], &[]).unwrap();
        assert!(config.redis.is_some() && config.data_dir.is_none());
        for (args, field) in [
            (&["--redis-nodes", ""][..], "redis_nodes"),
            (&["--redis-nodes", "127.0.0.1"], "redis_nodes"),
            (&["--redis-nodes", "127.0.0.1:0"], "redis_nodes"),
            (&["--redis-nodes", "redis://127.0.0.1:7000"], "redis_nodes"),
            (&["--redis-nodes", "127.0.0.1:7000", "--redis-timeout-ms", "0"], "redis_timeout_ms"),
            (&["--redis-nodes", "127.0.0.1:7000", "--data-dir", "/var/lib/interlude"], "data_dir"),
            (&["--redis-nodes", "127.0.0.1:7000", "--redis-wait-replicas", "2"], "redis_wait_replicas"),
        ] {
            let err = load(args, &[]).unwrap_err();
            assert!(err.to_string().contains(field), "{args:?}: {err}");
        }
    }

    #[test]
    fn off_loopback_needs_both_tokens_and_tokens_are_never_printed() {
        let err = load(&["--listen", "0.0.0.0:50051"], &[]).unwrap_err();
        assert!(err.to_string().contains("admin_token"), "{err}");
        let admin = "admin-token-0123456789abcdef";
        let err = load(&["--listen", "0.0.0.0:50051", "--admin-token", admin], &[]).unwrap_err();
        assert!(err.to_string().contains("decision_token"), "{err}");
        let config = load(
            &["--listen", "0.0.0.0:50051", "--admin-token", admin],
            &[("INTERLUDE_DECISION_TOKEN", "decision-token-0123456789")],
        )
        .unwrap();
        assert_eq!(config.admin_token, Some(Secret(admin.into())));
        assert!(!format!("{config:?}").contains(admin), "Debug redacts secrets");
        let err = load(&["--admin-token", "short"], &[]).unwrap_err();
        assert!(err.to_string().contains("admin_token"), "{err}");
        assert!(load(&[], &[]).unwrap().admin_token.is_none(), "loopback: generated at start");
    }
}
