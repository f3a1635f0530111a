//! Configuration: TOML with embedded defaults and a `validate()` that names
//! the offending key.
//!
//! Every struct denies unknown fields, so a typo such as `[alert]` or
//! `acton = "deny"` is an error naming the key instead of a silently ignored
//! setting. `packaging/keyward.toml` lists every key with its default; a test
//! keeps it in step with [`Config::default`].

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::rules::exceptions::{ExceptionConfig, ExceptionError, Exceptions};
use crate::rules::{RuleError, Rules};

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
    #[error("bad config {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("bad config value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(transparent)]
    Exception(#[from] ExceptionError),
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

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "alert" => Ok(Action::Alert),
            "deny" => Ok(Action::Deny),
            "kill" => Ok(Action::Kill),
            "stop" => Ok(Action::Stop),
            "disconnect" => Ok(Action::Disconnect),
            other => Err(format!(
                "unknown action {other:?}, expected one of alert, deny, kill, stop, disconnect"
            )),
        }
    }
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
    pub syslog: SyslogConfig,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            json: Some(PathBuf::from("/var/log/keyward/alerts.json")),
            process_events: None,
            rate_limit_per_minute: 60,
            syslog: SyslogConfig::default(),
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
    pub server: Option<String>,
    /// Facility name: a security facility (`authpriv`, `auth`) by default.
    pub facility: String,
    /// `rfc5424` (structured data) or `rfc3164`.
    pub format: String,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            socket: PathBuf::from("/dev/log"),
            server: None,
            facility: "authpriv".into(),
            format: "rfc5424".into(),
        }
    }
}

/// Response policy.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseConfig {
    /// Default action; the annotation `io.keyward.response` overrides it.
    pub action: Action,
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
    pub severity: String,
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
            severity: "medium".into(),
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
    pub mark_incidental: String,
    /// Add the extended credential pack: Kubernetes service account
    /// tokens, `.git-credentials`, `.netrc`, `.pgpass`, gcloud and azure
    /// credentials, GPG private keys, and the like.
    pub extended: bool,
    pub severity: String,
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
            mark_incidental: "deny".into(),
            extended: false,
            severity: "medium".into(),
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
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        if !self.socket.is_absolute() {
            return invalid(
                "socket",
                format!("{:?} is not an absolute path", self.socket),
            );
        }
        if !self.daemon.runtime_dir.is_absolute() {
            return invalid(
                "daemon.runtime_dir",
                format!("{:?} is not an absolute path", self.daemon.runtime_dir),
            );
        }
        if !(16..=1_048_576).contains(&self.daemon.queue_capacity) {
            return invalid(
                "daemon.queue_capacity",
                format!("{} is outside 16..=1048576", self.daemon.queue_capacity),
            );
        }
        if self.daemon.aggregate_ms > 60_000 {
            return invalid(
                "daemon.aggregate_ms",
                format!("{} is more than 60000", self.daemon.aggregate_ms),
            );
        }
        if !(1..=4096).contains(&self.daemon.max_files_per_alert) {
            return invalid(
                "daemon.max_files_per_alert",
                format!("{} is outside 1..=4096", self.daemon.max_files_per_alert),
            );
        }
        if !(10..=10_000).contains(&self.daemon.decision_deadline_ms) {
            return invalid(
                "daemon.decision_deadline_ms",
                format!("{} is outside 10..=10000", self.daemon.decision_deadline_ms),
            );
        }
        if let Some(p) = self
            .alerts
            .process_events
            .as_ref()
            .filter(|j| !j.is_absolute())
        {
            return invalid(
                "alerts.process_events",
                format!("{p:?} is not an absolute path"),
            );
        }
        if let Some(json) = self.alerts.json.as_ref().filter(|j| !j.is_absolute()) {
            return invalid("alerts.json", format!("{json:?} is not an absolute path"));
        }
        let s = &self.alerts.syslog;
        if syslog::Facility::from_str(&s.facility).is_err() {
            return invalid(
                "alerts.syslog.facility",
                format!("unknown facility {:?}", s.facility),
            );
        }
        if !matches!(s.format.as_str(), "rfc5424" | "rfc3164") {
            return invalid(
                "alerts.syslog.format",
                format!("{:?} is neither rfc5424 nor rfc3164", s.format),
            );
        }
        if let Some(server) = &s.server {
            if let Err(reason) = crate::alert::sink::syslog::Target::parse_server(server) {
                return invalid("alerts.syslog.server", reason);
            }
        } else if !s.socket.is_absolute() {
            return invalid(
                "alerts.syslog.socket",
                format!("{:?} is not an absolute path", s.socket),
            );
        }
        for (key, list) in [
            ("rules.file.watch_dirs", &self.rules.file.watch_dirs),
            (
                "rules.file.incidental_paths",
                &self.rules.file.incidental_paths,
            ),
            ("rules.file.paths", &self.rules.file.paths),
            ("rules.exec.paths", &self.rules.exec.paths),
        ] {
            if let Some(bad) = list.iter().find(|p| !p.starts_with('/')) {
                return invalid(key, format!("{bad:?} is not an absolute container path"));
            }
        }
        if !matches!(self.rules.file.mark_incidental.as_str(), "deny" | "always") {
            return invalid(
                "rules.file.mark_incidental",
                format!(
                    "{:?} is neither deny nor always",
                    self.rules.file.mark_incidental
                ),
            );
        }
        for (key, sev) in [
            ("rules.exec.severity", &self.rules.exec.severity),
            ("rules.file.severity", &self.rules.file.severity),
        ] {
            if !matches!(sev.as_str(), "low" | "medium" | "high" | "critical") {
                return invalid(key, format!("{sev:?} is not low, medium, high or critical"));
            }
        }
        for (key, risk) in [
            ("rules.exec.risk_score", self.rules.exec.risk_score),
            ("rules.file.risk_score", self.rules.file.risk_score),
        ] {
            if risk > 100 {
                return invalid(key, format!("{risk} is more than 100"));
            }
        }
        Rules::compile(&self.rules)?;
        Exceptions::compile(&self.exceptions)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"))
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
