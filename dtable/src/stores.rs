//! Object stores: where a table's files live, `file://`, `s3://`, `gs://`, `az://`/`abfss://`
//! and `http(s)://`.
//!
//! Each process (the driver and every worker) builds the stores it reads from with its own
//! [`StoreRegistry`]: a store is made on first use from the standard environment of its cloud
//! (`AWS_*`, `GOOGLE_*`, `AZURE_*`, the AWS profile files), so a worker on another machine uses
//! that machine's credentials. A table's `OPTIONS` (datafusion-cli's keys: `'aws.region'`,
//! `'gcp.service_account_path'`, `'azure.account_name'`, ...) override the environment for the
//! store they name; they travel to the workers inside the tasks that read the store
//! ([`StoreSpec`]), over the authenticated channel, and are never displayed: a spec prints its
//! keys, not its values.

use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::file_format::csv::CsvSink;
use datafusion::datasource::file_format::json::JsonSink;
use datafusion::datasource::file_format::parquet::ParquetSink;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::physical_plan::{FileScanConfig, FileSink};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::physical_plan::ExecutionPlan;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// The option prefixes that configure a store rather than a file format.
const STORE_PREFIXES: [&str; 4] = ["aws.", "gcp.", "azure.", "http."];

/// A remote request is retried this many times (with exponential backoff from 100 ms) on a
/// transient failure: a 5xx, a 429 `SlowDown`, a timeout, a reset connection.
const MAX_RETRIES: usize = 6;

/// ... and for at most this long in all, so an unreachable store is an error in seconds rather
/// than object_store's default three minutes.
const RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// The options of one store, as a table's `OPTIONS` gave them, with the key of the store
/// (`scheme://host[:port]`) they apply to.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct StoreSpec {
    /// `scheme://host[:port]`: which store.
    pub(crate) key: String,
    /// `aws.region` → `us-east-1`, ...
    pub(crate) options: BTreeMap<String, String>,
}

impl std::fmt::Debug for StoreSpec {
    // Values may be secrets: only the keys are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSpec")
            .field("key", &self.key)
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The key a store is registered under: scheme, host and port, without credentials.
pub(crate) fn store_key(url: &Url) -> String {
    format!(
        "{}://{}",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort]
    )
}

/// Takes the store options out of a table's `OPTIONS` (the rest configure the file format).
fn take_store_options(options: &mut HashMap<String, String>) -> BTreeMap<String, String> {
    let keys: Vec<String> = options
        .keys()
        .filter(|k| STORE_PREFIXES.iter().any(|p| k.starts_with(p)))
        .cloned()
        .collect();
    keys.into_iter()
        .filter_map(|k| options.remove(&k).map(|v| (k, v)))
        .collect()
}

/// A process's object stores: `file://` and those registered explicitly, plus remote stores made
/// on first use from the environment or from a table's options.
#[derive(Debug)]
pub(crate) struct StoreRegistry {
    /// Stores registered explicitly (`register_object_store`), and the local file system: the
    /// registry of a DataFusion state the session was built from, or DataFusion's default one.
    registered: Arc<dyn ObjectStoreRegistry>,
    /// Stores made from the environment, by key.
    from_env: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
    /// Stores made from a table's options, by spec; and the spec each key uses now.
    from_options: RwLock<HashMap<StoreSpec, Arc<dyn ObjectStore>>>,
    current: RwLock<HashMap<String, StoreSpec>>,
}

impl StoreRegistry {
    /// A registry over DataFusion's default one (the local file system).
    pub(crate) fn new() -> Self {
        Self::over(Arc::new(DefaultObjectStoreRegistry::new()))
    }

    /// A registry whose explicitly registered stores are those of `registered`.
    pub(crate) fn over(registered: Arc<dyn ObjectStoreRegistry>) -> Self {
        StoreRegistry {
            registered,
            from_env: RwLock::default(),
            from_options: RwLock::default(),
            current: RwLock::default(),
        }
    }

    /// Makes the store of `url` from `options` over the environment and uses it for that store
    /// from now on; checks the options (an unknown key is an error naming it).
    pub(crate) fn configure(&self, url: &Url, options: BTreeMap<String, String>) -> Result<()> {
        let spec = StoreSpec {
            key: store_key(url),
            options,
        };
        self.store_for(&spec)?;
        self.current.write().insert(spec.key.clone(), spec);
        Ok(())
    }

    /// Takes the store options out of a statement's `OPTIONS` (the rest configure the file
    /// format) and configures with them the store of each of `locations`; whether there were
    /// any.
    pub(crate) fn take_options_for(
        &self,
        options: &mut HashMap<String, String>,
        locations: &[String],
    ) -> Result<bool> {
        let store_options = take_store_options(options);
        if store_options.is_empty() {
            return Ok(false);
        }
        for location in locations {
            let listing = ListingTableUrl::parse(location)?;
            let url =
                Url::parse(listing.object_store().as_str()).map_err(|e| bad_url(location, e))?;
            self.configure(&url, store_options.clone())?;
        }
        Ok(true)
    }

    /// The specs of the stores (by key) that were given options, for a task that reads them.
    pub(crate) fn specs_for<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Vec<StoreSpec> {
        let current = self.current.read();
        let mut specs: Vec<StoreSpec> = keys
            .into_iter()
            .filter_map(|k| current.get(k).cloned())
            .collect();
        specs.sort_by(|a, b| a.key.cmp(&b.key));
        specs.dedup();
        specs
    }

    /// The store a spec describes, made once per process.
    pub(crate) fn store_for(&self, spec: &StoreSpec) -> Result<Arc<dyn ObjectStore>> {
        if let Some(store) = self.from_options.read().get(spec) {
            return Ok(Arc::clone(store));
        }
        let url = Url::parse(&spec.key).map_err(|e| bad_url(&spec.key, e))?;
        let store = build_store(&url, &spec.options)?;
        self.from_options
            .write()
            .insert(spec.clone(), Arc::clone(&store));
        Ok(store)
    }
}

impl ObjectStoreRegistry for StoreRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.registered.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.registered.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.registered.get_store(url) {
            return Ok(store);
        }
        let key = store_key(url);
        let spec = self.current.read().get(&key).cloned();
        if let Some(spec) = spec {
            return self.store_for(&spec);
        }
        if let Some(store) = self.from_env.read().get(&key) {
            return Ok(Arc::clone(store));
        }
        let store = build_store(url, &BTreeMap::new())?;
        Ok(Arc::clone(
            self.from_env.write().entry(key).or_insert(store),
        ))
    }
}

/// A task's view of its worker's stores: the stores its specs describe, then the worker's own.
#[derive(Debug)]
pub(crate) struct TaskStores {
    worker: Arc<dyn ObjectStoreRegistry>,
    stores: HashMap<String, Arc<dyn ObjectStore>>,
}

impl TaskStores {
    /// The stores of `specs` (made once per worker by `registry`) over `worker`.
    pub(crate) fn new(
        registry: &StoreRegistry,
        worker: Arc<dyn ObjectStoreRegistry>,
        specs: &[StoreSpec],
    ) -> Result<Self> {
        let stores = specs
            .iter()
            .map(|s| Ok((s.key.clone(), registry.store_for(s)?)))
            .collect::<Result<_>>()?;
        Ok(TaskStores { worker, stores })
    }
}

impl ObjectStoreRegistry for TaskStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.worker.register_store(url, store)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        match self.stores.get(&store_key(url)) {
            Some(store) => Ok(Arc::clone(store)),
            None => self.worker.get_store(url),
        }
    }
}

/// The keys of the stores the file scans of `plan` read and its file sinks write.
pub(crate) fn store_keys(plan: &Arc<dyn ExecutionPlan>) -> Vec<String> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut keys = Vec::new();
    let _ = plan.apply(|node| {
        let scan = node
            .downcast_ref::<DataSourceExec>()
            .and_then(|d| d.data_source().downcast_ref::<FileScanConfig>());
        let sink = node.downcast_ref::<DataSinkExec>().and_then(|d| {
            let sink = d.sink();
            let config = sink
                .downcast_ref::<ParquetSink>()
                .map(FileSink::config)
                .or_else(|| sink.downcast_ref::<CsvSink>().map(FileSink::config))
                .or_else(|| sink.downcast_ref::<JsonSink>().map(FileSink::config));
            config.map(|c| &c.object_store_url)
        });
        let url = scan.map(|s| &s.object_store_url).or(sink);
        if let Some(url) = url.and_then(|u| Url::parse(u.as_str()).ok()) {
            keys.push(store_key(&url));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    keys.sort();
    keys.dedup();
    keys
}

fn bad_url(url: &str, e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Configuration(format!("invalid store URL {url}: {e}"))
}

fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: MAX_RETRIES,
        retry_timeout: RETRY_TIMEOUT,
    }
}

/// Makes the store for `url` from its cloud's environment, overridden by `options`.
fn build_store(url: &Url, options: &BTreeMap<String, String>) -> Result<Arc<dyn ObjectStore>> {
    let host = url.host_str().unwrap_or_default();
    let unknown = |key: &str| {
        DataFusionError::Configuration(format!(
            "unknown option '{key}' for the store {}",
            store_key(url)
        ))
    };
    let wrong_prefix = |key: &str| {
        DataFusionError::Configuration(format!(
            "option '{key}' does not apply to the store {}",
            store_key(url)
        ))
    };
    let failed = |e: object_store::Error| {
        DataFusionError::Configuration(format!("cannot set up the store {}: {e}", store_key(url)))
    };
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => {
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(host)
                .with_retry(retry());
            b = with_aws_profile(b, options);
            for (key, value) in options {
                let rest = key.strip_prefix("aws.").ok_or_else(|| wrong_prefix(key))?;
                let parsed = AmazonS3ConfigKey::from_str(&format!("aws_{rest}"))
                    .or_else(|_| AmazonS3ConfigKey::from_str(rest))
                    .map_err(|_| unknown(key))?;
                b = b.with_config(parsed, value);
            }
            Arc::new(b.build().map_err(failed)?)
        }
        "gs" => {
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(host)
                .with_retry(retry());
            for (key, value) in options {
                let rest = key.strip_prefix("gcp.").ok_or_else(|| wrong_prefix(key))?;
                let parsed = GoogleConfigKey::from_str(&format!("google_{rest}"))
                    .or_else(|_| GoogleConfigKey::from_str(rest))
                    .map_err(|_| unknown(key))?;
                b = b.with_config(parsed, value);
            }
            Arc::new(b.build().map_err(failed)?)
        }
        "az" | "adl" | "azure" | "abfs" | "abfss" => {
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .with_retry(retry());
            for (key, value) in options {
                let rest = key
                    .strip_prefix("azure.")
                    .ok_or_else(|| wrong_prefix(key))?;
                let parsed = AzureConfigKey::from_str(&format!("azure_storage_{rest}"))
                    .or_else(|_| AzureConfigKey::from_str(&format!("azure_{rest}")))
                    .or_else(|_| AzureConfigKey::from_str(rest))
                    .map_err(|_| unknown(key))?;
                b = b.with_config(parsed, value);
            }
            Arc::new(b.build().map_err(failed)?)
        }
        "http" | "https" => {
            let mut b = HttpBuilder::new()
                .with_url(store_key(url))
                .with_retry(retry());
            for (key, value) in options {
                let rest = key.strip_prefix("http.").ok_or_else(|| wrong_prefix(key))?;
                let parsed = ClientConfigKey::from_str(rest).map_err(|_| unknown(key))?;
                b = b.with_config(parsed, value);
            }
            Arc::new(b.build().map_err(failed)?)
        }
        "file" if options.is_empty() => Arc::new(object_store::local::LocalFileSystem::new()),
        other => {
            return Err(DataFusionError::Configuration(format!(
                "no object store for URLs of scheme '{other}' ({}); Dirk reads file://, s3://, \
                 gs://, az://, abfss://, http:// and https://",
                store_key(url)
            )))
        }
    };
    Ok(store)
}

/// Credentials from the AWS profile files (`~/.aws/credentials`, `~/.aws/config`) for
/// `AWS_PROFILE` (or the `default` profile), where neither the environment nor the options give
/// an access key: object_store reads only the environment.
fn with_aws_profile(mut b: AmazonS3Builder, options: &BTreeMap<String, String>) -> AmazonS3Builder {
    let given = |k: &str| std::env::var_os(k).is_some();
    if given("AWS_ACCESS_KEY_ID") || options.contains_key("aws.access_key_id") {
        return b;
    }
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_string());
    let Some(home) = std::env::var_os("HOME").map(std::path::PathBuf::from) else {
        return b;
    };
    let file = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| home.join(".aws").join(default))
    };
    let credentials = read_ini_section(
        &file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
        &profile,
    );
    let section = if profile == "default" {
        profile.clone()
    } else {
        format!("profile {profile}")
    };
    let config = read_ini_section(&file("AWS_CONFIG_FILE", "config"), &section);
    for (key, value) in credentials.iter().chain(config.iter()) {
        let parsed = match key.as_str() {
            "aws_access_key_id" => AmazonS3ConfigKey::AccessKeyId,
            "aws_secret_access_key" => AmazonS3ConfigKey::SecretAccessKey,
            "aws_session_token" => AmazonS3ConfigKey::Token,
            "region" if !given("AWS_REGION") && !given("AWS_DEFAULT_REGION") => {
                AmazonS3ConfigKey::Region
            }
            "endpoint_url" if !given("AWS_ENDPOINT_URL") && !given("AWS_ENDPOINT") => {
                AmazonS3ConfigKey::Endpoint
            }
            _ => continue,
        };
        b = b.with_config(parsed, value);
    }
    b
}

/// The `key = value` lines of `[section]` in an INI file; nothing if it is not there.
fn read_ini_section(path: &std::path::Path, section: &str) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
        } else if let (true, Some((k, v))) = (inside, line.split_once('=')) {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_options_are_taken_out_of_a_tables_options() {
        let mut options: HashMap<String, String> = [
            ("format.has_header", "true"),
            ("aws.region", "us-east-1"),
            ("aws.secret_access_key", "s3cr3t"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let store = take_store_options(&mut options);
        assert_eq!(options.len(), 1);
        assert_eq!(store.len(), 2);
        let spec = StoreSpec {
            key: "s3://b".into(),
            options: store,
        };
        let shown = format!("{spec:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("aws.region"), "{shown}");
    }

    #[test]
    fn an_unknown_or_misplaced_option_is_named() {
        let registry = StoreRegistry::new();
        let url = Url::parse("s3://bucket/x/").unwrap();
        let options = |k: &str| [(k.to_string(), "v".to_string())].into_iter().collect();
        let e = registry
            .configure(&url, options("aws.no_such_thing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown option 'aws.no_such_thing'"), "{e}");
        let e = registry
            .configure(&url, options("gcp.service_account_path"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not apply to the store s3://bucket"), "{e}");
        let e = registry
            .get_store(&Url::parse("hdfs://nn:9000/x").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("scheme 'hdfs'"), "{e}");
    }

    #[test]
    fn profiles_are_read_from_ini_sections() {
        let dir = std::env::temp_dir().join(format!("dirk-ini-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("credentials");
        std::fs::write(
            &path,
            "[default]\naws_access_key_id = A\n\n[profile other]\nregion=eu-west-1\n",
        )
        .unwrap();
        assert_eq!(
            read_ini_section(&path, "default"),
            vec![("aws_access_key_id".to_string(), "A".to_string())]
        );
        assert_eq!(
            read_ini_section(&path, "profile other"),
            vec![("region".to_string(), "eu-west-1".to_string())]
        );
        assert!(read_ini_section(&path, "missing").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
