//! The sidecar's settings for one workload: each from its flag, else from the pod template's
//! `causeway.io/*` annotation, else from the workload's, else its default.

use yaml_serde::Mapping;

use crate::config::AppUrl;

/// The prefix of causeway's annotations.
pub(crate) const PREFIX: &str = "causeway.io/";
/// `causeway.io/inject: disabled` leaves a workload as it is.
pub(crate) const INJECT: &str = "causeway.io/inject";
/// What inject changed besides the container and its volumes, for `--uninject`.
pub(crate) const RECORD: &str = "causeway.io/injected";

/// The image, without its tag: the one deploy/ builds and names.
const IMAGE: &str = "causeway";

/// A setting: its flag is `--NAME` and its annotation `causeway.io/NAME`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Setting {
    Service,
    Image,
    ConfigMap,
    Schemas,
    AmqpSecret,
    AmqpSecretKey,
    AppUrl,
    OtlpEndpoint,
}

/// Every setting with its name.
const KEYS: [(Setting, &str); 8] = [
    (Setting::Service, "service"),
    (Setting::Image, "image"),
    (Setting::ConfigMap, "config-map"),
    (Setting::Schemas, "schemas"),
    (Setting::AmqpSecret, "amqp-secret"),
    (Setting::AmqpSecretKey, "amqp-secret-key"),
    (Setting::AppUrl, "app-url"),
    (Setting::OtlpEndpoint, "otlp-endpoint"),
];

impl Setting {
    fn name(self) -> &'static str {
        KEYS.iter()
            .find(|(key, _)| *key == self)
            .map_or("", |(_, name)| *name)
    }
}

/// The settings given on the command line; each wins over its annotation.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Flags {
    /// The service name (CAUSEWAY_SERVICE) [default: the workload's name]
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// The sidecar's image; without a tag, this causeway's version is the tag [default:
    /// causeway:VERSION]
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// The ConfigMap whose key causeway.toml is mounted as /etc/causeway/causeway.toml
    /// [default: causeway-config]
    #[arg(long, value_name = "NAME")]
    pub config_map: Option<String>,
    /// A ConfigMap of JSON Schemas, keys named <EventType>-<MAJOR.MINOR>.json, mounted at
    /// /etc/causeway/schemas [default: none]
    #[arg(long, value_name = "NAME")]
    pub schemas: Option<String>,
    /// The Secret that holds the broker URL [default: causeway-amqp]
    #[arg(long, value_name = "NAME")]
    pub amqp_secret: Option<String>,
    /// The key of that Secret [default: CAUSEWAY_AMQP_URL]
    #[arg(long, value_name = "KEY")]
    pub amqp_secret_key: Option<String>,
    /// Where the sidecar delivers events: an http:// URL, or a port on 127.0.0.1 [default:
    /// the sidecar's, http://127.0.0.1:8080]
    #[arg(long, value_name = "URL|PORT")]
    pub app_url: Option<String>,
    /// Where spans are exported (OTEL_EXPORTER_OTLP_ENDPOINT) [default: not exported]
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

impl Flags {
    fn get(&self, key: Setting) -> Option<&str> {
        match key {
            Setting::Service => self.service.as_deref(),
            Setting::Image => self.image.as_deref(),
            Setting::ConfigMap => self.config_map.as_deref(),
            Setting::Schemas => self.schemas.as_deref(),
            Setting::AmqpSecret => self.amqp_secret.as_deref(),
            Setting::AmqpSecretKey => self.amqp_secret_key.as_deref(),
            Setting::AppUrl => self.app_url.as_deref(),
            Setting::OtlpEndpoint => self.otlp_endpoint.as_deref(),
        }
    }

    /// Checks every flag that was given, before any input is read.
    pub(crate) fn check(&self) -> Result<(), SettingError> {
        for (key, name) in KEYS {
            if let Some(value) = self.get(key) {
                parse(key, value).map_err(|problem| SettingError {
                    setting: format!("--{name}"),
                    problem,
                })?;
            }
        }
        Ok(())
    }
}

/// A setting whose value cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct SettingError {
    /// The flag or the annotation.
    setting: String,
    problem: String,
}

impl SettingError {
    fn annotation(name: &str, problem: impl Into<String>) -> Self {
        SettingError {
            setting: format!("annotation {name}"),
            problem: problem.into(),
        }
    }
}

/// The settings of one workload's sidecar, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) service: String,
    pub(crate) image: String,
    pub(crate) config_map: String,
    pub(crate) schemas: Option<String>,
    pub(crate) amqp_secret: String,
    pub(crate) amqp_secret_key: String,
    pub(crate) app_url: Option<String>,
    pub(crate) otlp_endpoint: Option<String>,
}

impl Settings {
    /// The settings from `flags`, then the annotation layers (the pod template's first, the
    /// workload's last), then the defaults; `name` is the workload's name.
    pub(crate) fn resolve(
        flags: &Flags,
        layers: &[&Mapping],
        name: Option<&str>,
    ) -> Result<Settings, SettingError> {
        check_annotations(layers)?;
        let get = |key: Setting| -> Result<Option<String>, SettingError> {
            if let Some(value) = flags.get(key) {
                return parse(key, value).map(Some).map_err(|problem| SettingError {
                    setting: format!("--{}", key.name()),
                    problem,
                });
            }
            let annotation = format!("{PREFIX}{}", key.name());
            match annotation_value(layers, &annotation)? {
                Some(value) => parse(key, value)
                    .map(Some)
                    .map_err(|problem| SettingError::annotation(&annotation, problem)),
                None => Ok(None),
            }
        };
        let service = match get(Setting::Service)? {
            Some(service) => service,
            None => {
                let name = name.ok_or_else(|| SettingError {
                    setting: "service".into(),
                    problem: format!(
                        "the object has no metadata.name to name the service after: set --service \
                         or the annotation {PREFIX}service"
                    ),
                })?;
                parse(Setting::Service, name).map_err(|problem| SettingError {
                    setting: "service (the workload's name)".into(),
                    problem: format!("{problem}: set --service or the annotation {PREFIX}service"),
                })?
            }
        };
        Ok(Settings {
            service,
            image: get(Setting::Image)?.unwrap_or_else(|| image_with_tag(IMAGE)),
            config_map: get(Setting::ConfigMap)?.unwrap_or_else(|| "causeway-config".into()),
            schemas: get(Setting::Schemas)?,
            amqp_secret: get(Setting::AmqpSecret)?.unwrap_or_else(|| "causeway-amqp".into()),
            amqp_secret_key: get(Setting::AmqpSecretKey)?
                .unwrap_or_else(|| "CAUSEWAY_AMQP_URL".into()),
            app_url: get(Setting::AppUrl)?,
            otlp_endpoint: get(Setting::OtlpEndpoint)?,
        })
    }
}

/// Whether the workload is to be injected: `causeway.io/inject` of the first layer that has it.
pub(crate) fn enabled(layers: &[&Mapping]) -> Result<bool, SettingError> {
    match annotation_value(layers, INJECT)? {
        None | Some("enabled") => Ok(true),
        Some("disabled") => Ok(false),
        Some(_) => Err(SettingError::annotation(
            INJECT,
            "expected enabled or disabled",
        )),
    }
}

/// The first layer's value of `name`; an annotation must be a string.
fn annotation_value<'a>(
    layers: &[&'a Mapping],
    name: &str,
) -> Result<Option<&'a str>, SettingError> {
    for layer in layers {
        if let Some(value) = layer.get(name) {
            return value.as_str().map(Some).ok_or_else(|| {
                SettingError::annotation(name, "the value must be a string (quote it)")
            });
        }
    }
    Ok(None)
}

/// Every `causeway.io/` annotation is one that inject knows: a misspelt one would be ignored.
fn check_annotations(layers: &[&Mapping]) -> Result<(), SettingError> {
    for layer in layers {
        for key in layer.keys() {
            let Some(name) = key.as_str().and_then(|k| k.strip_prefix(PREFIX)) else {
                continue;
            };
            let known = KEYS.iter().any(|(_, known)| *known == name)
                || [INJECT, RECORD].contains(&key.as_str().unwrap_or_default());
            if !known {
                let names: Vec<_> = KEYS.iter().map(|(_, n)| *n).chain(["inject"]).collect();
                return Err(SettingError::annotation(
                    &format!("{PREFIX}{name}"),
                    format!("unknown (known: {})", names.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

/// The value of `key` as the sidecar will use it, or what is wrong with it.
fn parse(key: Setting, value: &str) -> Result<String, String> {
    match key {
        Setting::Service => service(value),
        Setting::Image => image(value),
        Setting::ConfigMap | Setting::Schemas | Setting::AmqpSecret => object_name(value),
        Setting::AmqpSecretKey => secret_key(value),
        Setting::AppUrl => app_url(value),
        Setting::OtlpEndpoint => otlp_endpoint(value),
    }
}

/// As the sidecar checks CAUSEWAY_SERVICE (src/config.rs).
fn service(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 100
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(
            "expected 1-100 characters of letters, digits, '-', '_', '.', ':', starting with a \
             letter or digit"
                .into(),
        )
    }
}

fn image(value: &str) -> Result<String, String> {
    if value.is_empty()
        || value.len() > 512
        || value.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(
            "expected an image reference such as registry.example.com/causeway:0.1.0".into(),
        );
    }
    Ok(image_with_tag(value))
}

/// `image` with this causeway's version as its tag when it has neither a tag nor a digest.
fn image_with_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_owned()
    } else {
        format!("{image}:{}", env!("CARGO_PKG_VERSION"))
    }
}

/// A Kubernetes object name (a DNS subdomain), as ConfigMaps and Secrets have.
fn object_name(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 253
        && value.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && value.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'));
    if valid {
        Ok(value.to_owned())
    } else {
        Err("expected a Kubernetes object name: lower-case letters, digits, '-' and '.'".into())
    }
}

fn secret_key(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 253
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(value.to_owned())
    } else {
        Err("expected a Secret key: letters, digits, '-', '_' and '.'".into())
    }
}

/// An http:// URL as the sidecar takes it, or a port on 127.0.0.1; never the sidecar's own
/// ports.
fn app_url(value: &str) -> Result<String, String> {
    let url = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        match value.parse::<u16>() {
            Ok(port) if port > 0 => format!("http://127.0.0.1:{port}"),
            _ => return Err("expected a port from 1 to 65535, or an http:// URL".into()),
        }
    } else {
        value.to_owned()
    };
    let parsed = AppUrl::parse(&url)?;
    let (host, port) = parsed.address.rsplit_once(':').unwrap_or_default();
    let loopback = matches!(host, "127.0.0.1" | "localhost" | "[::1]");
    if loopback && matches!(port, "7070" | "7071") {
        return Err(format!(
            "port {port} is the sidecar's own ({}); the app must listen on another",
            if port == "7070" {
                "its API"
            } else {
                "its admin listener"
            }
        ));
    }
    Ok(url)
}

fn otlp_endpoint(value: &str) -> Result<String, String> {
    let valid = (value.starts_with("http://") || value.starts_with("https://"))
        && value.len() <= 2048
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(value.to_owned())
    } else {
        Err("expected an http:// or https:// URL, such as http://otel-collector:4318".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_without_a_tag_gets_this_version() {
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(image_with_tag("causeway"), format!("causeway:{version}"));
        assert_eq!(
            image_with_tag("registry.example.com:5000/team/causeway"),
            format!("registry.example.com:5000/team/causeway:{version}")
        );
        assert_eq!(image_with_tag("causeway:0.2.0"), "causeway:0.2.0");
        assert_eq!(image_with_tag("causeway@sha256:abc"), "causeway@sha256:abc");
    }

    #[test]
    fn an_app_port_is_a_loopback_url_and_never_the_sidecars_own() {
        assert_eq!(app_url("9000").unwrap(), "http://127.0.0.1:9000");
        assert_eq!(
            app_url("http://127.0.0.1:8081/hooks").unwrap(),
            "http://127.0.0.1:8081/hooks"
        );
        assert!(app_url("7071").unwrap_err().contains("admin listener"));
        assert!(
            app_url("http://localhost:7070")
                .unwrap_err()
                .contains("its API")
        );
        assert!(app_url("0").is_err());
        assert!(app_url("https://app:443").is_err());
    }

    #[test]
    fn flags_win_over_the_pod_template_which_wins_over_the_workload() {
        let template: Mapping = yaml_serde::from_str(
            "causeway.io/service: from-template\ncauseway.io/config-map: template-config",
        )
        .unwrap();
        let workload: Mapping = yaml_serde::from_str(
            "causeway.io/service: from-workload\ncauseway.io/amqp-secret: workload-amqp",
        )
        .unwrap();
        let flags = Flags {
            config_map: Some("flag-config".into()),
            ..Flags::default()
        };
        let settings = Settings::resolve(&flags, &[&template, &workload], Some("name")).unwrap();
        assert_eq!(settings.service, "from-template");
        assert_eq!(settings.config_map, "flag-config");
        assert_eq!(settings.amqp_secret, "workload-amqp");
        assert_eq!(settings.amqp_secret_key, "CAUSEWAY_AMQP_URL");
        let defaults = Settings::resolve(&Flags::default(), &[], Some("orders")).unwrap();
        assert_eq!(defaults.service, "orders");
        assert_eq!(
            defaults.image,
            format!("causeway:{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(defaults.schemas, None);
    }

    #[test]
    fn an_unknown_or_non_string_annotation_is_an_error() {
        let typo: Mapping = yaml_serde::from_str("causeway.io/servce: x").unwrap();
        let error = Settings::resolve(&Flags::default(), &[&typo], Some("a")).unwrap_err();
        assert!(
            error.to_string().contains("causeway.io/servce: unknown"),
            "{error}"
        );
        let number: Mapping = yaml_serde::from_str("causeway.io/app-url: 9000").unwrap();
        let error = Settings::resolve(&Flags::default(), &[&number], Some("a")).unwrap_err();
        assert!(error.to_string().contains("must be a string"), "{error}");
    }
}
