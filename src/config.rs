//! Configuration: TOML with embedded defaults and a `validate()` that names
//! the offending key.
//!
//! Every struct denies unknown fields, so a typo such as `[alert]` or
//! `acton = "deny"` is an error naming the key instead of a silently ignored
//! setting. `packaging/keyward.toml` lists every key with its default; a test
//! keeps it in step with [`Config::default`].
//!
//! This module imports nothing from the pipeline's stages: values that have
//! a closed set of spellings are enums here, parsed once by serde, and the
//! stages compile what they need (rules, exceptions) from these structs
//! where the policy is built.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Default path of the config file.
pub const DEFAULT_CONFIG: &str = "/etc/keyward/keyward.toml";
/// Default path of the control socket.
pub const DEFAULT_SOCKET: &str = "/run/keyward/keyward.sock";
/// Largest config file we read.
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Errors loading or validating the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("bad config {path}{}: {source}", key_part(.key))]
    Parse {
        path: PathBuf,
        /// The dotted key the error is at, where the text shows it.
        key: Option<String>,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("bad config value for `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

/// What keyward does when a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Alert only; the open is allowed.
    #[default]
    Alert,
    /// The open fails with EPERM.
    Deny,
    /// Deny, and SIGKILL the process.
    Kill,
    /// Deny, and stop the whole container.
    Stop,
    /// Take every non-loopback interface of the container down.
    Disconnect,
}

impl Action {
    /// How strongly the action stops a theft, for "an annotation may only
    /// strengthen": alert, then deny, then kill, then stop; disconnect
    /// stands beside deny (it blocks the way out, not the read).
    pub fn strength(self) -> u8 {
        match self {
            Action::Alert => 0,
            Action::Deny | Action::Disconnect => 1,
            Action::Kill => 2,
            Action::Stop => 3,
        }
    }

    /// The lowercase name used in config, annotations and alerts.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Alert => "alert",
            Action::Deny => "deny",
            Action::Kill => "kill",
            Action::Stop => "stop",
            Action::Disconnect => "disconnect",
        }
    }

    /// Whether the triggering open is refused with EPERM.
    pub fn denies_open(self) -> bool {
        matches!(self, Action::Deny | Action::Kill | Action::Stop)
    }
}

/// A spelling that names none of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}, expected one of {expected}")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl FromStr for Action {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        match s {
            "alert" => Ok(Action::Alert),
            "deny" => Ok(Action::Deny),
            "kill" => Ok(Action::Kill),
            "stop" => Ok(Action::Stop),
            "disconnect" => Ok(Action::Disconnect),
            other => Err(UnknownValue {
                what: "action",
                value: other.to_string(),
                expected: "alert, deny, kill, stop, disconnect",
            }),
        }
    }
}

/// Syslog facilities keyward may log under. Security facilities first:
/// `authpriv` is the default, so alerts land beside sshd's and sudo's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Facility {
    #[default]
    Authpriv,
    Auth,
    Kern,
    User,
    Mail,
    Daemon,
    Syslog,
    Lpr,
    News,
    Uucp,
    Cron,
    Ftp,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

/// The syslog wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFormat {
    /// RFC 5424 with structured data.
    #[default]
    Rfc5424,
    /// RFC 3164 (BSD), the ECS JSON after the message.
    Rfc3164,
}

/// A remote syslog collector, parsed from `udp://host:port` or
/// `tcp://host:port` (RFC 6587 octet counting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SyslogServer {
    Udp(String),
    Tcp(String),
}

/// Why a syslog server address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("{0:?} is not udp://host:port or tcp://host:port")]
    NoScheme(String),
    #[error("{0:?} has no valid port")]
    NoPort(String),
    #[error("{url:?} has unknown scheme {scheme:?}, expected udp or tcp")]
    Scheme { url: String, scheme: String },
}

impl FromStr for SyslogServer {
    type Err = ServerError;
    fn from_str(s: &str) -> Result<Self, ServerError> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| ServerError::NoScheme(s.to_string()))?;
        if rest
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(ServerError::NoPort(s.to_string()));
        }
        match scheme {
            "udp" => Ok(SyslogServer::Udp(rest.to_string())),
            "tcp" => Ok(SyslogServer::Tcp(rest.to_string())),
            other => Err(ServerError::Scheme {
                url: s.to_string(),
                scheme: other.to_string(),
            }),
        }
    }
}

impl TryFrom<String> for SyslogServer {
    type Error = ServerError;
    fn try_from(s: String) -> Result<Self, ServerError> {
        s.parse()
    }
}

impl From<SyslogServer> for String {
    fn from(s: SyslogServer) -> String {
        s.to_string()
    }
}

impl fmt::Display for SyslogServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyslogServer::Udp(a) => write!(f, "udp://{a}"),
            SyslogServer::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// A rule's severity, as Elastic grades it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// Where the name-service files (`incidental_paths`) are marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkIncidental {
    /// Only in containers whose action denies the open.
    #[default]
    Deny,
    /// In every container.
    Always,
}

/// The whole config file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Control socket the hook and CLI talk to.
    pub socket: PathBuf,
    pub daemon: DaemonConfig,
    pub alerts: AlertsConfig,
    pub response: ResponseConfig,
    pub rules: RulesConfig,
    /// Known-good archiving to tune out; see [`crate::rules::exceptions`].
    pub exceptions: Vec<ExceptionConfig>,
    pub metrics: MetricsConfig,
    pub engines: EnginesConfig,
    /// What one container may make the daemon do.
    pub limits: LimitsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            daemon: DaemonConfig::default(),
            alerts: AlertsConfig::default(),
            response: ResponseConfig::default(),
            rules: RulesConfig::default(),
            exceptions: Vec::new(),
            metrics: MetricsConfig::default(),
            engines: EnginesConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// Bounds on the work one container can make the daemon do, so that what
/// a container does cannot slow another's registration or decisions. Each
/// bound reached is counted (`keyward status`) and reported in a health
/// alert that names the container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Kernel marks per container: credential files and directories, and
    /// the directories watched for new entries. Each pins an inode in the
    /// kernel. Past this, further credential paths of that container are
    /// left unmarked (an open of one is then judged by the exec path and
    /// its directory's mark only).
    pub marks_per_container: usize,
    /// Derived credentials (copies a reader wrote) per container; past
    /// this, further copies are not marked.
    pub derived_per_container: usize,
    /// Create events per container per second marked at once, each for
    /// the entry it made; past this, that container's creates wait for one
    /// full rescan.
    pub creates_per_second: u32,
    /// Least time between two full rescans of one container.
    pub rescan_interval_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            marks_per_container: 16_384,
            derived_per_container: 10_000,
            creates_per_second: 2_000,
            rescan_interval_ms: 2_000,
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        within(
            "limits.marks_per_container",
            self.marks_per_container,
            64..=1_048_576,
        )?;
        within(
            "limits.derived_per_container",
            self.derived_per_container,
            0..=1_048_576,
        )?;
        within(
            "limits.creates_per_second",
            self.creates_per_second,
            1..=1_000_000,
        )?;
        within(
            "limits.rescan_interval_ms",
            self.rescan_interval_ms,
            100..=600_000,
        )
    }
}

/// Where keyward finds what an engine knows about a container beyond its
/// OCI spec (see [`crate::registry::enrich`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EnginesConfig {
    /// Docker data roots (`dockerd --data-root`), searched in order for
    /// `containers/<id>/config.v2.json`, which holds a container's name
    /// and image. Docker's OCI spec carries neither.
    pub docker_roots: Vec<PathBuf>,
}

impl Default for EnginesConfig {
    fn default() -> Self {
        Self {
            docker_roots: vec![PathBuf::from("/var/lib/docker")],
        }
    }
}

/// Prometheus metrics over HTTP (`GET /metrics`), opt-in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Where to listen; loopback by default, so the node's scraper (or a
    /// sidecar) reaches it and nothing off the host does. Read at start:
    /// a reload does not move the listener.
    pub listen: std::net::SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9477)),
        }
    }
}

/// Daemon internals.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Where the registry is persisted, so restart and crash lose nothing.
    pub runtime_dir: PathBuf,
    /// Capacity of the queue from the answering thread to the alert thread.
    pub queue_capacity: usize,
    /// An archiver run's alert is sent once it has been quiet this long (or
    /// has exited), so one run makes one alert listing every file.
    pub aggregate_ms: u64,
    /// How many credential files one alert lists before it only counts.
    pub max_files_per_alert: usize,
    /// A permission event still undecided after this long is allowed by the
    /// watchdog and counted as degraded coverage.
    pub decision_deadline_ms: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            runtime_dir: PathBuf::from("/run/keyward"),
            queue_capacity: 4096,
            aggregate_ms: 300,
            max_files_per_alert: 64,
            decision_deadline_ms: 200,
        }
    }
}

/// Alert sinks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// ECS JSON lines file; remove the key to disable.
    pub json: Option<PathBuf>,
    /// Opt-in: an ECS process start event for every exec in a watched
    /// container, one JSON object per line, so Elastic can run the seed EQL
    /// unchanged. Unset by default (volume: one document per exec).
    pub process_events: Option<PathBuf>,
    /// Alerts per container per minute; more are counted and summarised in
    /// one alert when the minute ends. 0 disables the limit.
    pub rate_limit_per_minute: u32,
    /// Whose names the documents carry: `keyward` (event.module
    /// `keyward`, data streams `logs-keyward.*`), or `cloud_defend`, under
    /// which Elastic's prebuilt "Container Workload Protection" rule and
    /// the seed EQL (on `logs-cloud_defend*`) pick them up.
    pub profile: EcsProfile,
    /// `data_stream.namespace` of every document.
    pub namespace: String,
    pub syslog: SyslogConfig,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            json: Some(PathBuf::from("/var/log/keyward/alerts.json")),
            process_events: None,
            rate_limit_per_minute: 60,
            profile: EcsProfile::Keyward,
            namespace: "default".into(),
            syslog: SyslogConfig::default(),
        }
    }
}

/// The module and data streams ECS documents are filed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EcsProfile {
    /// `event.module: keyward`; datasets `keyward.alerts`,
    /// `keyward.process`, `keyward.health`.
    #[default]
    Keyward,
    /// `event.module: cloud_defend`; datasets `cloud_defend.alerts` (alerts,
    /// summaries and health alike) and `cloud_defend.process`.
    CloudDefend,
}

impl EcsProfile {
    /// The `event.module` of every document.
    pub fn module(self) -> &'static str {
        match self {
            EcsProfile::Keyward => "keyward",
            EcsProfile::CloudDefend => "cloud_defend",
        }
    }

    /// The dataset of a document keyward files under `keyward.<kind>`.
    pub fn dataset(self, kind: &str) -> String {
        match self {
            EcsProfile::Keyward => format!("keyward.{kind}"),
            EcsProfile::CloudDefend if kind == "process" => "cloud_defend.process".into(),
            EcsProfile::CloudDefend => "cloud_defend.alerts".into(),
        }
    }
}

/// Syslog sink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyslogConfig {
    pub enabled: bool,
    /// Local datagram socket, used unless `server` is set.
    pub socket: PathBuf,
    /// Remote collector: `udp://host:port` or `tcp://host:port` (RFC 6587
    /// octet-counting framing).
    pub server: Option<SyslogServer>,
    /// Facility name: a security facility (`authpriv`, `auth`) by default.
    pub facility: Facility,
    /// `rfc5424` (structured data) or `rfc3164`.
    pub format: SyslogFormat,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            socket: PathBuf::from("/dev/log"),
            server: None,
            facility: Facility::Authpriv,
            format: SyslogFormat::Rfc5424,
        }
    }
}

/// Response policy.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseConfig {
    /// Default action; the annotation `io.keyward.response` may strengthen
    /// it per container.
    pub action: Action,
    /// Whether `io.keyward.response` may also *lower* the action (a
    /// container set to `alert` on a `deny` host). Off by default: in
    /// Kubernetes every tenant can set pod annotations, which reach the
    /// OCI spec.
    pub annotation_may_lower: bool,
}

/// The rule pack.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// The seed rule, evaluated on every exec.
    pub exec: SeedRuleConfig,
    /// The file-access rule, evaluated on every credential open.
    pub file: FileRuleConfig,
}

/// The seed rule's data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SeedRuleConfig {
    pub enabled: bool,
    pub archivers: Vec<String>,
    pub paths: Vec<String>,
    /// `low`, `medium`, `high` or `critical`.
    pub severity: Severity,
    /// 0..=100, as Elastic's risk score.
    pub risk_score: u8,
    /// MITRE ATT&CK technique ids.
    pub mitre: Vec<String>,
}

impl Default for SeedRuleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            archivers: strings(SEED_ARCHIVERS),
            paths: strings(SEED_PATHS),
            severity: Severity::Medium,
            risk_score: 47,
            mitre: strings(MITRE),
        }
    }
}

/// The seed rule's MITRE ATT&CK sub-techniques.
pub const MITRE: &[&str] = &["T1560.001", "T1552.001"];

/// Credential paths beyond the seed, opted into with
/// `rules.file.extended = true`.
pub const EXTENDED_PATHS: &[&str] = &[
    "/var/run/secrets/kubernetes.io/serviceaccount/token",
    "/run/secrets/kubernetes.io/serviceaccount/token",
    "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
    "/root/.git-credentials",
    "/home/*/.git-credentials",
    "/root/.netrc",
    "/home/*/.netrc",
    "/root/.pgpass",
    "/home/*/.pgpass",
    "/root/.my.cnf",
    "/home/*/.my.cnf",
    "/root/.kube/config",
    "/home/*/.kube/config",
    "/root/.config/gcloud/credentials.db",
    "/home/*/.config/gcloud/credentials.db",
    "/root/.config/gcloud/application_default_credentials.json",
    "/home/*/.config/gcloud/application_default_credentials.json",
    "/root/.azure/accessTokens.json",
    "/home/*/.azure/accessTokens.json",
    "/root/.azure/msal_token_cache.json",
    "/home/*/.azure/msal_token_cache.json",
    "/root/.gnupg/private-keys-v1.d/*",
    "/home/*/.gnupg/private-keys-v1.d/*",
    "/root/.ssh/id_ecdsa",
    "/home/*/.ssh/id_ecdsa",
    "/root/.ssh/id_dsa",
    "/home/*/.ssh/id_dsa",
    "/root/.vault-token",
    "/home/*/.vault-token",
    "/root/.zsh_history",
    "/home/*/.zsh_history",
];

/// Directories the extended pack watches for children.
pub const EXTENDED_WATCH_DIRS: &[&str] = &[
    "/var/run/secrets/kubernetes.io/serviceaccount",
    "/run/secrets/kubernetes.io/serviceaccount",
    "/root/.kube",
    "/home/*/.kube",
    "/root/.config/gcloud",
    "/home/*/.config/gcloud",
    "/root/.azure",
    "/home/*/.azure",
    "/root/.gnupg/private-keys-v1.d",
    "/home/*/.gnupg/private-keys-v1.d",
];

/// The file-access rule's data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileRuleConfig {
    pub enabled: bool,
    pub archivers: Vec<String>,
    pub paths: Vec<String>,
    /// Credential directories marked with `FAN_EVENT_ON_CHILD`, so a
    /// directory walk and files created later are seen.
    pub watch_dirs: Vec<String>,
    /// Files that archivers read on their own: GNU tar and busybox tar look
    /// up user and group names through NSS (`/etc/passwd`, `/etc/group`),
    /// resolvers read `/etc/hosts`. An archiver's open of one of these
    /// counts only when an argument names the file or a directory above it.
    pub incidental_paths: Vec<String>,
    /// `deny` (default): incidental files are marked only in containers
    /// whose action denies; elsewhere NSS lookups cost nothing and an
    /// archiver naming one is caught by the exec rule. `always`: marked
    /// everywhere (race-free attribution of every open, at a permission
    /// round trip per lookup).
    pub mark_incidental: MarkIncidental,
    /// Add the extended credential pack: Kubernetes service account
    /// tokens, `.git-credentials`, `.netrc`, `.pgpass`, gcloud and azure
    /// credentials, GPG private keys, and the like.
    pub extended: bool,
    /// Archiver by behaviour: how long after its credential read a
    /// process's archive output counts as an archive of that credential,
    /// in seconds (1..=3600). A long-lived service that read its own
    /// credentials at start and writes compressed logs later is outside it.
    pub behaviour_window_s: u64,
    pub severity: Severity,
    pub risk_score: u8,
    pub mitre: Vec<String>,
}

impl Default for FileRuleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            archivers: strings(FILE_ARCHIVERS),
            paths: strings(SEED_PATHS),
            watch_dirs: strings(WATCH_DIRS),
            incidental_paths: strings(INCIDENTAL_PATHS),
            mark_incidental: MarkIncidental::Deny,
            extended: false,
            behaviour_window_s: 60,
            severity: Severity::Medium,
            risk_score: 47,
            mitre: strings(MITRE),
        }
    }
}

/// The seed rule's archiver names, exactly.
pub const SEED_ARCHIVERS: &[&str] = &["zip", "tar", "gzip", "hdiutil", "7z"];

/// The seed rule's 27 credential path patterns, exactly.
pub const SEED_PATHS: &[&str] = &[
    "/root/.ssh/id_rsa",
    "/root/.ssh/id_rsa.pub",
    "/root/.ssh/id_ed25519",
    "/root/.ssh/id_ed25519.pub",
    "/root/.ssh/authorized_keys",
    "/root/.ssh/authorized_keys2",
    "/root/.ssh/known_hosts",
    "/root/.bash_history",
    "/etc/hosts",
    "/home/*/.ssh/id_rsa",
    "/home/*/.ssh/id_rsa.pub",
    "/home/*/.ssh/id_ed25519",
    "/home/*/.ssh/id_ed25519.pub",
    "/home/*/.ssh/authorized_keys",
    "/home/*/.ssh/authorized_keys2",
    "/home/*/.ssh/known_hosts",
    "/home/*/.bash_history",
    "/root/.aws/credentials",
    "/root/.aws/config",
    "/home/*/.aws/credentials",
    "/home/*/.aws/config",
    "/root/.docker/config.json",
    "/home/*/.docker/config.json",
    "/etc/group",
    "/etc/passwd",
    "/etc/shadow",
    "/etc/gshadow",
];

/// Archivers for the file-access rule: the seed's plus the common
/// compressors and archive formats.
pub const FILE_ARCHIVERS: &[&str] = &[
    "zip", "tar", "gzip", "hdiutil", "7z", "7za", "7zr", "bzip2", "xz", "zstd", "lz4", "cpio",
    "pax", "rar", "ar", "gtar", "bsdtar", "pigz", "lzma", "lzip", "lzop", "compress",
];

/// Credential directories watched for children.
pub const WATCH_DIRS: &[&str] = &[
    "/root/.ssh",
    "/home/*/.ssh",
    "/root/.aws",
    "/home/*/.aws",
    "/root/.docker",
    "/home/*/.docker",
];

/// Files archivers open for their own lookups (NSS, resolver).
pub const INCIDENTAL_PATHS: &[&str] = &["/etc/passwd", "/etc/group", "/etc/hosts"];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl Config {
    /// Parse TOML text; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            key: e.span().and_then(|span| key_at(text, span.start)),
            source: Box::new(e),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Load `path`; with `None`, the default path if it exists, else the
    /// embedded defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => {
                let p = PathBuf::from(DEFAULT_CONFIG);
                if !p.exists() {
                    return Ok(Self::default());
                }
                p
            }
        };
        let read_err = |source| ConfigError::Read {
            path: path.clone(),
            source,
        };
        let meta = std::fs::metadata(&path).map_err(read_err)?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path });
        }
        let text = std::fs::read_to_string(&path).map_err(read_err)?;
        Self::from_toml(&text, &path)
    }

    /// Check values that the types alone do not, naming the bad key.
    ///
    /// Rules and exceptions are compiled where the policy is built
    /// (`answer::policy`); a pattern that does not compile is an error
    /// there, quoting the pattern.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_paths()?;
        self.daemon.validate()?;
        self.limits.validate()?;
        self.alerts.validate()?;
        self.rules.validate()?;
        for (index, e) in self.exceptions.iter().enumerate() {
            e.validate(index)?;
        }
        Ok(())
    }

    fn validate_paths(&self) -> Result<(), ConfigError> {
        absolute("socket", &self.socket)?;
        absolute("daemon.runtime_dir", &self.daemon.runtime_dir)?;
        for root in &self.engines.docker_roots {
            absolute("engines.docker_roots", root)?;
        }
        Ok(())
    }
}

fn key_part(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!(" at `{k}`"))
        .unwrap_or_default()
}

/// The dotted key (`alerts.syslog.facility`) of the line holding byte
/// `offset` of a TOML text: the last table header above it and the key on
/// that line. serde's errors name the value, not where it sits, and a
/// `facility = "nope"` means nothing without its table.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let mut table = String::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        let end = at + line.len();
        if trimmed.starts_with('[') {
            table = trimmed
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
        }
        if offset < end {
            let key = trimmed.split_once('=').map(|(k, _)| k.trim())?;
            return Some(if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            });
        }
        at = end;
    }
    None
}

fn invalid(key: impl Into<String>, reason: String) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key: key.into(),
        reason,
    })
}

fn absolute(key: &str, p: &Path) -> Result<(), ConfigError> {
    if p.is_absolute() {
        return Ok(());
    }
    invalid(key, format!("{p:?} is not an absolute path"))
}

fn within<T: PartialOrd + fmt::Display>(
    key: &str,
    v: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), ConfigError> {
    if range.contains(&v) {
        return Ok(());
    }
    invalid(
        key,
        format!("{v} is outside {}..={}", range.start(), range.end()),
    )
}

impl DaemonConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        within("daemon.queue_capacity", self.queue_capacity, 16..=1_048_576)?;
        if self.aggregate_ms > 60_000 {
            return invalid(
                "daemon.aggregate_ms",
                format!("{} is more than 60000", self.aggregate_ms),
            );
        }
        within(
            "daemon.max_files_per_alert",
            self.max_files_per_alert,
            1..=4096,
        )?;
        within(
            "daemon.decision_deadline_ms",
            self.decision_deadline_ms,
            10..=10_000,
        )
    }
}

impl AlertsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(p) = &self.process_events {
            absolute("alerts.process_events", p)?;
        }
        if let Some(p) = &self.json {
            absolute("alerts.json", p)?;
        }
        // A server, when set, was parsed by serde; the local socket is used
        // only without one.
        if self.syslog.server.is_none() {
            absolute("alerts.syslog.socket", &self.syslog.socket)?;
        }
        // Elastic's rules for a data stream namespace.
        let ns = &self.namespace;
        if ns.is_empty()
            || ns.len() > 100
            || ns
                .chars()
                .any(|c| c.is_ascii_uppercase() || "\\/*?\"<>|, #:-".contains(c))
        {
            return invalid(
                "alerts.namespace",
                format!(
                    "{ns:?} is not a data stream namespace (lowercase, no -, at most 100 bytes)"
                ),
            );
        }
        Ok(())
    }
}

impl RulesConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, list) in [
            ("rules.file.watch_dirs", &self.file.watch_dirs),
            ("rules.file.incidental_paths", &self.file.incidental_paths),
            ("rules.file.paths", &self.file.paths),
            ("rules.exec.paths", &self.exec.paths),
        ] {
            if let Some(bad) = list.iter().find(|p| !p.starts_with('/')) {
                return invalid(key, format!("{bad:?} is not an absolute container path"));
            }
        }
        if !(1..=3600).contains(&self.file.behaviour_window_s) {
            return invalid(
                "rules.file.behaviour_window_s",
                format!(
                    "{} is not within 1..=3600 seconds",
                    self.file.behaviour_window_s
                ),
            );
        }
        for (key, risk) in [
            ("rules.exec.risk_score", self.exec.risk_score),
            ("rules.file.risk_score", self.file.risk_score),
        ] {
            if risk > 100 {
                return invalid(key, format!("{risk} is more than 100"));
            }
        }
        Ok(())
    }
}

/// A SHA-256 digest, written in config as 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256(pub [u8; 32]);

impl std::str::FromStr for Sha256 {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a SHA-256 digest (64 hex digits)");
        let hex = s.trim();
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

impl std::fmt::Display for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl ExceptionConfig {
    /// The checks that need no compiling: a reason, at least one
    /// condition, `key=value` annotations. Errors name `exceptions[i]`.
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("exceptions[{index}].{k}");
        if self.reason.trim().is_empty() {
            return invalid(key("reason"), "is missing: say why it exists".into());
        }
        let has_condition = self.container_name.is_some()
            || self.image.is_some()
            || self.annotation.is_some()
            || self.executable.is_some()
            || self.parent_executable.is_some()
            || !self.executable_sha256.is_empty()
            || !self.parent_executable_sha256.is_empty()
            || self.args.is_some();
        if !has_condition {
            return invalid(
                format!("exceptions[{index}]"),
                format!(
                    "({}) has no condition: it would suppress everything",
                    self.reason
                ),
            );
        }
        if let Some(a) = &self.annotation
            && !a.contains('=')
        {
            return invalid(key("annotation"), format!("{a:?} is not key=value"));
        }
        Ok(())
    }
}

/// One `[[exceptions]]` entry: known-good archiving to tune out, as the
/// seed's false-positive analysis advises (backups, configuration
/// management, CI, scanners). Every condition given must hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExceptionConfig {
    /// Why this exception exists; required, shown in `keyward status`.
    pub reason: String,
    pub container_name: Option<String>,
    pub image: Option<String>,
    /// `key=value-glob`: the container has this annotation.
    pub annotation: Option<String>,
    /// Glob over the executable's path, as the kernel shows it
    /// (`/proc/<pid>/exe`): the path the container laid out, so a
    /// container can put any program there.
    pub executable: Option<String>,
    pub parent_executable: Option<String>,
    /// The executable's content: its SHA-256 is one of these. What the
    /// container cannot fake; pair it with `executable` to say which file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executable_sha256: Vec<Sha256>,
    /// The same for the parent's executable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_executable_sha256: Vec<Sha256>,
    /// Glob over the command line, arguments joined by single spaces.
    pub args: Option<String>,
    /// Rule ids this applies to; empty means every rule.
    #[serde(default)]
    pub rules: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"))
    }

    #[test]
    fn profile_and_namespace_are_typed_and_checked() {
        let c = parse("[alerts]\nprofile = \"cloud_defend\"\nnamespace = \"prod\"\n").unwrap();
        assert_eq!(c.alerts.profile, EcsProfile::CloudDefend);
        let e = parse("[alerts]\nprofile = \"splunk\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("splunk"), "{e}");
        let e = parse("[alerts]\nnamespace = \"my-ns\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("alerts.namespace") && e.contains("my-ns"), "{e}");
    }

    #[test]
    fn digests_are_parsed_and_a_bad_one_is_named() {
        let hex = "ab".repeat(32);
        let c = parse(&format!(
            "[[exceptions]]\nreason = \"r\"\nexecutable_sha256 = [\"{hex}\"]\n"
        ))
        .unwrap();
        assert_eq!(c.exceptions[0].executable_sha256[0].0, [0xab; 32]);
        assert_eq!(c.exceptions[0].executable_sha256[0].to_string(), hex);
        let e = parse("[[exceptions]]\nreason = \"r\"\nparent_executable_sha256 = [\"abc\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"abc\" is not a SHA-256 digest"), "{e}");
        assert!(e.contains("parent_executable_sha256"), "{e}");
        let e = parse(&format!(
            "[[exceptions]]\nreason = \"r\"\nexecutable_sha256 = [\"{}\"]\n",
            "zz".repeat(32)
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a SHA-256"), "{e}");
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn shipped_example_lists_every_key_with_its_default() {
        let text = include_str!("../packaging/keyward.toml");
        assert_eq!(parse(text).unwrap(), Config::default());
        // Every key of the serialized defaults appears in the example.
        let defaults = toml::to_string(&Config::default()).unwrap();
        for line in defaults.lines() {
            if let Some((key, _)) = line.split_once(" = ") {
                assert!(
                    text.lines()
                        .any(|l| l.trim_start().starts_with(&format!("{key} ="))),
                    "example config lacks key {key}"
                );
            }
        }
    }

    #[test]
    fn design_interface_keys_parse() {
        let cfg = parse(
            r#"
socket = "/run/k.sock"
[alerts]
json = "/var/log/k.json"
[alerts.syslog]
enabled = true
socket = "/dev/log"
facility = "authpriv"
[response]
action = "deny"
"#,
        )
        .unwrap();
        assert_eq!(cfg.response.action, Action::Deny);
        assert_eq!(cfg.socket, PathBuf::from("/run/k.sock"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse("[alerts]\njsn = \"/x\"\n").unwrap_err().to_string();
        assert!(e.contains("jsn"), "{e}");
        let e = parse("bogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = parse("[response]\nacton = \"deny\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("acton"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = parse("[response]\naction = \"explode\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("explode"), "{e}");
        let e = parse("[alerts.syslog]\nfacility = \"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("alerts.syslog.facility"), "{e}");
        let e = parse("socket = \"relative.sock\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`socket`"), "{e}");
        let e = parse("[alerts.syslog]\nserver = \"ftp://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("alerts.syslog.server"), "{e}");
        let e = parse("[rules.file]\nwatch_dirs = [\"root/.ssh\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rules.file.watch_dirs"), "{e}");
        let e = parse("[daemon]\nqueue_capacity = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("daemon.queue_capacity"), "{e}");
    }

    #[test]
    fn exceptions_parse_and_bad_ones_are_named() {
        let cfg = parse(
            "[[exceptions]]\nreason = \"backup\"\ncontainer_name = \"backup-*\"\nexecutable = \"/usr/bin/tar\"\n",
        )
        .unwrap();
        assert_eq!(cfg.exceptions.len(), 1);
        let e = parse("[[exceptions]]\nreason = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("exceptions[0]"), "{e}");
        let e = parse("[[exceptions]]\nreason = \"x\"\nexe = \"/bin/tar\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("exe"), "{e}");
    }

    #[test]
    fn server_urls_parse_or_say_why() {
        // Moved here from the syslog sink: the server is parsed once, in
        // the config.
        assert_eq!(
            "udp://127.0.0.1:514".parse::<SyslogServer>().unwrap(),
            SyslogServer::Udp("127.0.0.1:514".into())
        );
        assert_eq!(
            "tcp://localhost:601".parse::<SyslogServer>().unwrap(),
            SyslogServer::Tcp("localhost:601".into())
        );
        assert!(
            "ftp://x:1"
                .parse::<SyslogServer>()
                .unwrap_err()
                .to_string()
                .contains("ftp")
        );
        assert!(
            "udp://x"
                .parse::<SyslogServer>()
                .unwrap_err()
                .to_string()
                .contains("port")
        );
        assert!("x:1".parse::<SyslogServer>().is_err());
    }

    #[test]
    fn action_names_round_trip() {
        for a in [
            Action::Alert,
            Action::Deny,
            Action::Kill,
            Action::Stop,
            Action::Disconnect,
        ] {
            assert_eq!(a.as_str().parse::<Action>().unwrap(), a);
        }
        assert!("Deny".parse::<Action>().is_err());
    }
}
