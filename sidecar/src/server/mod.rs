//! The sidecar process: it opens the data directory, assembles the backend stack, the key store,
//! the core and the front-ends, serves them on loopback, runs background work, and shuts down
//! gracefully. No request logic lives here: the pipeline is `core::Core::call`, the AWS wire is
//! `frontend/aws_json/`, the Kubernetes KMS v2 plugin is `frontend/kmsv2/` (served here on its Unix
//! socket, `unix.rs`, beside the HTTP ports and stopped by the same signal).

mod background;
mod listen;
mod unix;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use self::background::Reloader;
use self::background::{background, build_rate_limits};
use self::listen::accept_loop;
use crate::admin::{self, Admin};
use crate::auth::clients::{self, ClientStore, Issued};
use crate::auth::sigv4::Verifier;
use crate::backend::Backend;
use crate::backend::embedded::Embedded;
use crate::backend::faults::Faults;
use crate::backend::observed::Observed;
use crate::backend::pkcs11::Pkcs11;
use crate::backend::remote;
use crate::backend::upstream::Upstream;
use crate::cache::DecryptCache;
use crate::cache::pool::DataKeyPool;
use crate::cache::reuse::DataKeyReuse;
use crate::config::proxy::ProxyConfig;
use crate::config::{BackendConfig, Config};
use crate::core::ops::CacheFollower;
use crate::core::proxy::{DataKeys, Proxy, ProxyMetrics};
use crate::core::{Core, Kms, Metrics, RateLimiting};
use crate::datadir::{DataDir, DirLock};
use crate::frontend::aws_json::AwsJson;
use crate::frontend::kmsv2::KmsV2;
use crate::frontend::xks::Xks;
use crate::keys::registry::{
    ClientFollower, EtcdRegistry, Follower, MaterialFollower, RegistrySettings,
};
use crate::keys::{self, KeyStore};
use crate::limits::Breaker;
use crate::limits::resilient::{Resilience, Resilient};
use crate::observe::audit::AuditLog;
use crate::tls::{self, Tls};

pub use crate::frontend::aws_json::KEY_VERSION_HEADER;

/// The fleet's registry and its followers, in the order changes are applied.
type Fleet = (Arc<EtcdRegistry>, Vec<Arc<dyn Follower>>);

/// A started sidecar: listeners bound, data directory locked, not yet serving.
#[derive(Debug)]
pub struct Sidecar {
    core: Arc<Core>,
    aws_json: Arc<AwsJson>,
    admin: Arc<Admin>,
    clients: Arc<ClientStore>,
    kms_listener: TcpListener,
    admin_listener: TcpListener,
    kms_addr: SocketAddr,
    admin_addr: SocketAddr,
    config: Config,
    issued: Option<Issued>,
    tls: Option<Tls>,
    /// The Kubernetes KMS v2 plugin, its listening socket and the socket file (removed at exit).
    kmsv2: Option<(Arc<KmsV2>, tokio::net::UnixListener, unix::SocketFile)>,
    /// The XKS proxy front-end and its listener (`--xks-listen`).
    xks: Option<(Arc<Xks>, TcpListener)>,
    /// The fleet's registry and what follows it (the etcd registry only).
    fleet: Option<Fleet>,
    _lock: DirLock,
}

impl Sidecar {
    /// Opens and checks everything the sidecar needs; any problem is an error naming it.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let dir = Arc::new(DataDir::open(config.data_dir(), config.root_key())?);
        let lock = dir.lock()?;
        // With etcd the whole registry is read once here (a linearizable read); the watch
        // started by `run` continues from its revision.
        let shared = match config.registry() {
            RegistrySettings::DataDir => None,
            RegistrySettings::Etcd(settings) => {
                let registry = EtcdRegistry::connect(settings, &dir).await?;
                let (revision, all) = registry.load().await?;
                registry.loaded(revision);
                tracing::info!(prefix = %registry.prefix(), revision, entries = all.len(), "loaded the fleet's key registry from etcd");
                Some((registry, all))
            }
        };
        let (raw, embedded): (Arc<dyn Backend>, _) = match config.backend() {
            BackendConfig::Embedded => {
                let embedded = match &shared {
                    Some((registry, all)) => {
                        let e = Arc::new(Embedded::shared(dir.clone(), registry.clone()));
                        MaterialFollower(e.clone()).reset(all);
                        e
                    }
                    None => Arc::new(Embedded::open(dir.clone())?),
                };
                (embedded.clone(), Some(embedded))
            }
            BackendConfig::Pkcs11(settings) => (Arc::new(Pkcs11::open(settings.clone())?), None),
            BackendConfig::Upstream(settings) => (Arc::new(Upstream::new(settings.clone())?), None),
        };
        let metrics = Arc::new(
            Metrics::register(raw.name(), config.metrics()).context("registering metrics")?,
        );
        // Fault injection, only when enabled, sits right on the real backend so that an injected
        // failure is measured, retried and seen by the breaker exactly like a real one.
        let faults = config.faults_enabled().then(|| {
            Arc::new(Faults::new(
                raw.clone(),
                config.backend_timeout(),
                &metrics.faults,
            ))
        });
        let raw: Arc<dyn Backend> = match &faults {
            Some(f) => {
                tracing::warn!(
                    "fault injection is enabled: /v1/faults on the admin port can make backend calls fail"
                );
                f.clone()
            }
            None => raw,
        };
        // Every backend attempt is measured (Observed); retries, the outbound budget and the circuit
        // breaker wrap that (Resilient), so each attempt shows in backend_requests_total.
        let observed: Arc<dyn Backend> = Arc::new(Observed::new(raw, metrics.backend.clone()));
        // The limits' settings were validated by the configuration; building them cannot fail.
        let breaker = Arc::new(Breaker::from_valid(
            observed.name(),
            config.breaker(),
            &metrics.breaker,
        ));
        let outbound = config.outbound().cloned();
        if let Some(budget) = &outbound {
            budget.export(&metrics.rate, observed.name());
        }
        let resilience = Resilience {
            breaker: breaker.clone(),
            retry: config.retry().clone(),
            retry_budget: config.retry_budget().clone(),
            outbound,
            request_timeout: config.backend_timeout(),
            retries: Some(metrics.retry.for_backend(observed.name())),
        };
        let backend: Arc<dyn Backend> = Arc::new(Resilient::new(observed, resilience));
        let keys = Arc::new(
            match &shared {
                Some((registry, all)) => {
                    registry.attach_metrics(metrics.keys.registry.clone());
                    KeyStore::open_shared(
                        dir.clone(),
                        backend.clone(),
                        config.arn_scope(),
                        registry.clone(),
                        all,
                    )
                }
                None => KeyStore::open(dir.clone(), backend.clone(), config.arn_scope())?,
            }
            .with_metrics(metrics.keys.clone()),
        );
        let foreign = keys
            .snapshot()
            .keys
            .values()
            .filter(|k| k.backend != backend.name())
            .count();
        if foreign > 0 {
            anyhow::bail!(
                "data directory {} holds {foreign} key(s) of another backend than {}: use one data directory per backend",
                config.data_dir().display(),
                backend.name()
            );
        }
        if let Some(embedded) = &embedded {
            check_material(&keys, embedded)?;
        }
        let scope = config.arn_scope();
        let mut followers: Vec<Arc<dyn Follower>> = Vec::new();
        let clients = match &shared {
            Some((_, all)) => {
                let clients = Arc::new(ClientStore::shared(dir.clone(), &scope.account));
                let follower = Arc::new(ClientFollower::new(clients.clone()));
                follower.reset(all);
                // Material before clients before keys: a key version is never visible before
                // the material it needs.
                if let Some(e) = &embedded {
                    followers.push(Arc::new(MaterialFollower(e.clone())));
                }
                followers.push(follower);
                followers.push(keys.clone());
                if clients.is_empty() {
                    tracing::warn!(
                        "the fleet's registry holds no client credentials: issue one with `kms-sidecar clients add NAME --registry etcd ...` or `registry import`"
                    );
                }
                clients
            }
            None => Arc::new(ClientStore::open(dir.clone(), &scope.account)?),
        };
        let issued = if clients.is_empty() && shared.is_none() {
            let issued = clients::add(&dir, "default", Default::default())?;
            clients.reload()?;
            Some(issued)
        } else {
            None
        };
        if config.outbound().is_some() {
            // Before the first export: the outbound budget can refuse every principal, so their
            // `throttled_total{scope="backend"}` series start at 0 too.
            metrics.rate.mark_outbound_budget();
        }
        let rate = Arc::new(RateLimiting {
            limits: ArcSwap::from_pointee(build_rate_limits(
                &config.inbound_rate_spec(),
                config.admin_principals(),
                &clients,
                &metrics,
            )?),
            spec: ArcSwap::from_pointee(config.inbound_rate_spec()),
            metrics: metrics.rate.clone(),
        });
        let audit =
            AuditLog::open(config.audit().clone(), metrics.audit.clone()).with_context(|| {
                format!(
                    "cannot open the audit log in {}",
                    config.audit().dir.display()
                )
            })?;
        let tls = config
            .tls()
            .map(|source| tls::load(source, config.data_dir(), config.listen()))
            .transpose()?;
        let kms_listener = TcpListener::bind(config.listen())
            .await
            .with_context(|| format!("cannot listen on {} (KMS API)", config.listen()))?;
        let admin_listener = TcpListener::bind(config.admin_listen())
            .await
            .with_context(|| format!("cannot listen on {} (admin API)", config.admin_listen()))?;
        let kms_addr = kms_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let report = keys.maintain(keys::now()).await;
        if !report.rotation_failed.is_empty() || !report.deletion_failed.is_empty() {
            tracing::warn!(rotation_failed = ?report.rotation_failed, deletion_failed = ?report.deletion_failed, "maintenance at start left work for later");
        }
        let kms = Kms::with_caches(
            keys.clone(),
            config
                .admin_principals()
                .iter()
                .map(|n| clients::principal_arn(&scope.account, n))
                .collect(),
            DecryptCache::new(config.cache(), metrics.cache.for_cache("decrypt")),
            DataKeyPool::new(config.pool(), metrics.cache.for_cache("data_key_pool")),
            config.cache_invalidate_on_rotation(),
        )
        .with_breaker(breaker)
        .with_reuse(DataKeyReuse::new(
            config.reuse().clone(),
            metrics.cache.for_cache("data_key_reuse"),
        ));
        if shared.is_some() {
            // After the key store: changes made elsewhere in the fleet reach this sidecar's caches.
            followers.push(Arc::new(CacheFollower::new(kms.clone())));
        }
        let proxy = match config.proxy() {
            Some(settings) => Some(start_proxy(&config, settings, &metrics).await?),
            None => None,
        };
        let mut core = Core::new(
            kms,
            Some(rate),
            metrics,
            audit,
            config.admin_principals().to_vec(),
        );
        if let Some(proxy) = proxy {
            core = core.with_proxy(proxy);
        }
        let core = Arc::new(core);
        let aws_json = Arc::new(AwsJson::new(
            core.clone(),
            clients.clone(),
            Verifier::new(config.max_clock_skew()),
            config.max_body_bytes(),
            config.otlp_endpoint().is_some(),
        ));
        let admin = Arc::new(Admin::new(core.clone(), config.clone(), faults));
        let kmsv2 = match config.kmsv2() {
            Some(settings) => Some(start_kmsv2(&core, settings).await?),
            None => None,
        };
        let xks = match config.xks() {
            Some(settings) => Some(start_xks(&core, &config, settings).await?),
            None => None,
        };
        Ok(Self {
            kmsv2,
            xks,
            core,
            aws_json,
            admin,
            clients,
            kms_listener,
            admin_listener,
            kms_addr,
            admin_addr,
            config,
            issued,
            tls,
            fleet: shared.map(|(registry, _)| (registry, followers)),
            _lock: lock,
        })
    }

    pub fn kms_addr(&self) -> SocketAddr {
        self.kms_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// A handle that applies a reloaded configuration (see [`Reloader`]).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            core: self.core.clone(),
            clients: self.clients.clone(),
            xks: self.xks.as_ref().map(|(x, _)| x.clone()),
        }
    }

    /// The KMS API's base URL (`http://` or `https://`).
    pub fn kms_endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.kms_addr)
    }

    /// The TLS settings in use, if the KMS port speaks HTTPS.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// The credential issued on first run, to be shown once.
    pub fn take_issued(&mut self) -> Option<Issued> {
        self.issued.take()
    }

    /// The XKS proxy API's address, when it is enabled.
    pub fn xks_addr(&self) -> Option<SocketAddr> {
        self.xks.as_ref().and_then(|(_, l)| l.local_addr().ok())
    }

    /// The Kubernetes KMS v2 plugin's socket, when it is enabled.
    pub fn kmsv2_socket(&self) -> Option<&std::path::Path> {
        self.config.kmsv2().map(|k| k.socket.as_path())
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish (up to the grace period).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let kmsv2 = self.kmsv2.map(|(plugin, listener, file)| {
            let mut stop = stop_rx.clone();
            let mut stopped = stop_rx.clone();
            let grace = self.config.shutdown_grace();
            tokio::spawn(async move {
                let served = tonic::transport::Server::builder()
                    .add_service(plugin.service())
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::UnixListenerStream::new(listener),
                        async move {
                            let _ = stop.changed().await;
                        },
                    );
                tokio::pin!(served);
                // After the stop signal, in-flight calls get the grace period, as on the HTTP ports.
                let grace_over = async {
                    let _ = stopped.changed().await;
                    tokio::time::sleep(grace).await;
                };
                tokio::select! {
                    result = &mut served => {
                        if let Err(e) = result {
                            tracing::error!(error = %e, "the KMS v2 plugin server failed");
                        }
                    }
                    _ = grace_over => tracing::warn!("shutdown grace period over; closing KMS v2 connections"),
                }
                // Removes the socket file.
                drop(file);
            })
        });
        let graceful = Arc::new(GracefulShutdown::new());
        // The XKS proxy API on its own listener, with the KMS port's TLS (AWS KMS needs HTTPS).
        let xks = self.xks.map(|(xks, listener)| {
            tokio::spawn(accept_loop(
                listener,
                self.tls.as_ref().map(|t| t.acceptor.clone()),
                stop_rx.clone(),
                graceful.clone(),
                move |req, peer| xks.clone().handle(req, peer),
            ))
        });
        let aws_json = self.aws_json.clone();
        let kms = tokio::spawn(accept_loop(
            self.kms_listener,
            self.tls.map(|t| t.acceptor),
            stop_rx.clone(),
            graceful.clone(),
            move |req, peer| aws_json.clone().handle(req, peer),
        ));
        let admin_api = self.admin.clone();
        let admin = tokio::spawn(accept_loop(
            self.admin_listener,
            None,
            stop_rx.clone(),
            graceful.clone(),
            move |req, _peer| admin::handle(admin_api.clone(), req),
        ));
        // Proxy mode: the upstream's aliases and rotation status, polled off the request path.
        let poll = self.core.proxy().zip(self.config.proxy()).map(|(p, c)| {
            tokio::spawn(
                p.clone()
                    .poll(self.core.metrics().keys.clone(), c.poll_interval),
            )
        });
        let follow = self
            .fleet
            .map(|(registry, followers)| tokio::spawn(registry.follow(followers, stop_rx.clone())));
        let history = tokio::spawn(crate::observe::history::run(
            self.core.metrics().history.clone(),
            self.core.metrics().registry.clone(),
            self.core.keys().clone(),
            stop_rx.clone(),
        ));
        let background = tokio::spawn(background(
            self.core.clone(),
            self.clients.clone(),
            self.config.maintenance_interval(),
            stop_rx,
        ));
        shutdown.await;
        tracing::info!("shutting down: no new connections, letting in-flight requests finish");
        let _ = stop_tx.send(true);
        if let Some(poll) = poll {
            poll.abort();
        }
        let _ = tokio::join!(kms, admin, background, history);
        if let Some(xks) = xks {
            let _ = xks.await;
        }
        if let Some(kmsv2) = kmsv2 {
            let _ = kmsv2.await;
        }
        if let Some(follow) = follow {
            let _ = follow.await;
        }
        match Arc::try_unwrap(graceful) {
            Ok(g) => {
                if tokio::time::timeout(self.config.shutdown_grace(), g.shutdown())
                    .await
                    .is_err()
                {
                    tracing::warn!("shutdown grace period over; closing remaining connections");
                }
            }
            Err(_) => tracing::warn!("connections still referenced at shutdown"),
        }
        Ok(())
    }
}

/// Proxy mode's stack: the upstream client, its own breaker, retries and budgets (the same settings
/// as a backend's), a decrypt cache of its own and the local policy.
async fn start_proxy(
    config: &Config,
    settings: &ProxyConfig,
    metrics: &Metrics,
) -> anyhow::Result<Arc<Proxy>> {
    const NAME: &str = "proxy";
    let client = remote::client(&settings.upstream).await?;
    // The outbound budget and the retry budget are the process's (one quota, one retry allowance);
    // the breaker is the upstream's own.
    let outbound = config.outbound().cloned();
    if let Some(budget) = &outbound {
        budget.export(&metrics.rate, NAME);
    }
    let limits = Resilience {
        breaker: Arc::new(Breaker::from_valid(
            NAME,
            config.breaker(),
            &metrics.breaker,
        )),
        retry: config.retry().clone(),
        retry_budget: config.retry_budget().clone(),
        outbound,
        request_timeout: config.backend_timeout(),
        retries: Some(metrics.retry.for_backend(NAME)),
    };
    let proxy_metrics = Arc::new(
        ProxyMetrics::register(&metrics.registry).context("registering the proxy metrics")?,
    );
    tracing::info!(endpoint = ?settings.upstream.endpoint, region = %settings.upstream.region, "proxy mode: forwarding to the upstream KMS");
    // The data-key pool and reuse take the same settings as in local mode, per upstream key.
    let data_keys = DataKeys::new(
        DataKeyPool::new(
            config.pool(),
            metrics.cache.for_cache("proxy_data_key_pool"),
        ),
        DataKeyReuse::new(
            config.reuse().clone(),
            metrics.cache.for_cache("proxy_data_key_reuse"),
        ),
        config.cache().ttl,
    );
    Ok(Proxy::new(
        client,
        limits,
        DecryptCache::new(config.cache(), metrics.cache.for_cache("proxy_decrypt")),
        settings.policy()?,
        proxy_metrics,
        data_keys,
    ))
}

/// Checks the KMS v2 plugin's key (it must exist: a typo would otherwise surface only when the API
/// server first writes a Secret), binds its socket and runs one Status so the health gauge and the
/// log tell at once whether the plugin can serve.
async fn start_kmsv2(
    core: &Arc<Core>,
    settings: &crate::config::KmsV2Settings,
) -> anyhow::Result<(Arc<KmsV2>, tokio::net::UnixListener, unix::SocketFile)> {
    let meta = core.keys().resolve(&settings.key_id).map_err(|e| {
        anyhow::anyhow!(
            "kmsv2_key_id = {:?} does not name a key of this sidecar ({}): create it (CreateKey, CreateAlias) or fix the setting",
            settings.key_id,
            e.wire_message()
        )
    })?;
    if meta.state != keys::KeyState::Enabled {
        tracing::warn!(key = %meta.id, state = meta.state.as_str(), "the KMS v2 plugin's key is not enabled: Encrypt and Status will fail until it is");
    }
    let (listener, file) = unix::bind(&settings.socket, settings.socket_group)?;
    let plugin = Arc::new(KmsV2::new(
        core.clone(),
        settings.key_id.clone(),
        &settings.principal,
        &settings.socket,
    ));
    let status = plugin.status().await;
    if status.healthz == crate::frontend::kmsv2::HEALTHY {
        tracing::info!(socket = %settings.socket.display(), key_id = %status.key_id, principal = %settings.principal, "Kubernetes KMS v2 plugin ready");
    } else {
        tracing::warn!(socket = %settings.socket.display(), healthz = %status.healthz, "Kubernetes KMS v2 plugin starts unhealthy");
    }
    Ok((plugin, listener, file))
}

/// Binds the XKS proxy's listener and builds its front-end from the validated settings.
async fn start_xks(
    core: &Arc<Core>,
    config: &Config,
    settings: &crate::config::xks::XksSettings,
) -> anyhow::Result<(Arc<Xks>, TcpListener)> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} (XKS proxy API)", settings.listen))?;
    let xks = Arc::new(Xks::new(core.clone(), xks_options(core, config, settings)));
    tracing::info!(listen = %listener.local_addr()?, tls = config.tls().is_some(), prefixes = settings.prefixes.len(), keys = settings.keys.len(), "XKS proxy API ready");
    Ok((xks, listener))
}

/// The XKS front-end's options from the validated settings (at start and on SIGHUP); a mapped key
/// that does not exist (yet) is a warning, as calls naming it answer KeyNotFoundException.
pub(super) fn xks_options(
    core: &Core,
    config: &Config,
    settings: &crate::config::xks::XksSettings,
) -> crate::frontend::xks::XksOptions {
    use crate::frontend::xks::{XksKey, XksOptions, XksPrefix, auth::PrefixAuth};
    let account = config.arn_scope().account;
    let prefixes = settings
        .prefixes
        .iter()
        .map(|p| XksPrefix {
            uri_path: p.uri_path.clone(),
            auth: PrefixAuth {
                principal: Arc::new(crate::auth::Principal {
                    name: p.principal.clone(),
                    arn: clients::principal_arn(&account, &p.principal),
                    tags: Default::default(),
                }),
                credentials: p
                    .credentials
                    .iter()
                    .map(|c| (c.access_key_id.clone(), c.secret_access_key.clone()))
                    .collect(),
            },
        })
        .collect();
    let keys = settings
        .keys
        .iter()
        .map(|(external, k)| {
            if core.keys().resolve(&k.key_id).is_err() {
                tracing::warn!(external_key_id = %external, key_id = %k.key_id, "an XKS external key names no key of this sidecar (yet): its calls answer KeyNotFoundException");
            }
            let usage = crate::core::xks::XksUsage {
                encrypt: k.usage.encrypt(),
                decrypt: k.usage.decrypt(),
            };
            (
                external.clone(),
                XksKey {
                    key_id: k.key_id.clone(),
                    usage,
                },
            )
        })
        .collect();
    XksOptions {
        region: settings.region.clone(),
        max_skew: config.max_clock_skew(),
        prefixes,
        keys,
        health_key_id: settings.health_key_id.clone(),
        fleet_size: settings.fleet_size,
    }
}

/// Every version that a key record names has its material on disk. A missing material file (lost,
/// or deleted by hand) would otherwise surface only when a Decrypt fails; it stops the start here,
/// naming both files. Keys pending deletion are exempt: their material is destroyed first, so a
/// crash part-way through a deletion leaves a record without it, which maintenance finishes.
fn check_material(keys: &KeyStore, embedded: &Embedded) -> anyhow::Result<()> {
    let index = keys.snapshot();
    let mut ids: Vec<&String> = index.keys.keys().collect();
    ids.sort();
    for id in ids {
        let Some(meta) = index.keys.get(id) else {
            continue;
        };
        if meta.state == keys::KeyState::PendingDeletion {
            continue;
        }
        if let Some(v) = meta
            .versions
            .iter()
            .find(|v| !embedded.holds(id, v.version))
        {
            anyhow::bail!(
                "key record {} names version {} but its key material {} is missing: restore it from a backup (without it, data encrypted under that version cannot be decrypted)",
                keys.record_path(id).display(),
                v.version,
                embedded.material_path(id, v.version).display()
            );
        }
    }
    Ok(())
}
