//! A fault-injecting `ObjectStore` wrapper, the sibling of `counting.rs`: it
//! lets tests produce the failures a real network produces, deterministically.
//!
//! The fault that matters most to the protocol is the *ambiguous* conditional
//! PUT: the server applied it, but the client saw an error (a timeout), or
//! retried and was told "already exists".
//!
//! Besides the rules a test sets with [`FaultStore::inject`], a failpoints
//! build takes random faults from the environment (`SLUICE_FAULTS`, see
//! [`FaultSpec`]): every PUT of the process, sluice's own and Lance's, then
//! suffers a seeded random [`Fault`] with probability `p`, and each one is
//! logged on stderr as `fault: KIND PATH`, so a test driving real processes
//! can produce ambiguous answers anywhere and count them.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, Result,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Apply the PUT, then take this many milliseconds to answer (success):
    /// a caller's timeout fires after the write happened.
    AppliedThenSlow(u64),
    /// Take this many milliseconds, then apply the PUT and answer: a write
    /// that lands late while the writer's other requests go on beside it.
    SlowThenApplied(u64),
    /// Apply the PUT, then answer as a client that timed out, retried the
    /// create-only PUT and was told the object already exists.
    AppliedThenAlreadyExists,
    /// Answer with a transport error at once, and apply the PUT only when the
    /// store's next PUT to another path arrives: a write that lands after
    /// the client read back and found nothing.
    LandsLate,
    /// Apply the PUT, then answer with a transport error.
    AppliedThenError,
    /// Do not apply the PUT; answer with a transport error.
    Rejected,
    /// Do not apply the PUT; answer "already exists": a create race lost
    /// (Lance, reading the version back and finding none of its own, proves
    /// its commit attempt lost and tries again or gives up).
    Beaten,
}

impl Fault {
    /// The name logged on stderr (`fault: KIND PATH`).
    pub fn kind(self) -> &'static str {
        match self {
            Fault::AppliedThenAlreadyExists => "applied-then-exists",
            Fault::AppliedThenError => "applied-then-error",
            Fault::Rejected => "rejected",
            Fault::Beaten => "beaten",
            Fault::AppliedThenSlow(_) => "applied-then-slow",
            Fault::SlowThenApplied(_) => "slow-then-applied",
            Fault::LandsLate => "lands-late",
        }
    }

    /// `applied-then-exists`, `applied-then-error`, `rejected`, `beaten`,
    /// `applied-then-slow-MS`, `slow-then-applied-MS`, `lands-late`.
    pub fn parse(kind: &str) -> std::result::Result<Fault, String> {
        Ok(match kind {
            "applied-then-exists" => Fault::AppliedThenAlreadyExists,
            "applied-then-error" => Fault::AppliedThenError,
            "rejected" => Fault::Rejected,
            "beaten" => Fault::Beaten,
            "lands-late" => Fault::LandsLate,
            _ => match (kind.strip_prefix("applied-then-slow-"), kind.strip_prefix("slow-then-applied-")) {
                (Some(ms), _) if let Ok(ms) = ms.parse() => Fault::AppliedThenSlow(ms),
                (_, Some(ms)) if let Ok(ms) = ms.parse() => Fault::SlowThenApplied(ms),
                _ => return Err(format!("fault kind '{kind}': use applied-then-exists, applied-then-error, rejected, beaten, applied-then-slow-MS, slow-then-applied-MS or lands-late")),
            },
        })
    }
}

/// A targeted fault: the next `times` PUTs to a path containing `path` suffer `fault`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    pub path: String,
    pub fault: Fault,
    pub times: u32,
}

/// The environment variable holding a [`FaultSpec`] (read in failpoints builds only).
pub const FAULTS_ENV: &str = "SLUICE_FAULTS";

/// Which stores random faults hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// sluice's own store and every store Lance opens for the lake.
    All,
    /// sluice's own store only (manifest, sidecars, claims).
    Sluice,
    /// Lance's stores only (data files, Lance manifests).
    Lance,
}

/// Random ambiguous answers: `seed=N,p=F[,scope=all|sluice|lance]`, e.g.
/// `SLUICE_FAULTS="seed=42,p=0.05"`. With probability `p` a PUT suffers one
/// fault, drawn uniformly: applied then a transport error, applied then
/// "already exists" (create-only PUTs only: a client retry that found its
/// own object), or rejected with a transport error. One process draws from one
/// stream seeded by `seed`, so give concurrent processes different seeds to
/// make them differ (the explorer mixes its seed with a per-process counter).
///
/// Targeted faults, for deterministic tests: `rule=PATH:KIND[:TIMES]`
/// (repeatable; `seed` and `p` may then be left out), e.g.
/// `SLUICE_FAULTS="rule=_versions/:applied-then-slow-5000"`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    pub seed: u64,
    pub p: f64,
    pub scope: Scope,
    pub rules: Vec<FaultRule>,
}

impl FaultSpec {
    /// Parse strictly: `seed` and `p` are required, each key at most once, nothing else.
    pub fn parse(spec: &str) -> std::result::Result<FaultSpec, String> {
        let (mut seed, mut p, mut scope) = (None, None, None);
        let mut rules = Vec::new();
        for part in spec.split(',').map(str::trim) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!("'{part}' is not KEY=VALUE"));
            };
            let (key, value) = (key.trim(), value.trim());
            let dup = || format!("'{key}' given twice");
            match key {
                "seed" => {
                    let v = value.parse::<u64>().map_err(|e| format!("seed '{value}': {e}"))?;
                    if seed.replace(v).is_some() {
                        return Err(dup());
                    }
                }
                "p" => {
                    let v = value.parse::<f64>().map_err(|e| format!("p '{value}': {e}"))?;
                    if !(0.0..=1.0).contains(&v) {
                        return Err(format!("p '{value}' is not a probability in [0, 1]"));
                    }
                    if p.replace(v).is_some() {
                        return Err(dup());
                    }
                }
                "scope" => {
                    let v = match value {
                        "all" => Scope::All,
                        "sluice" => Scope::Sluice,
                        "lance" => Scope::Lance,
                        _ => return Err(format!("scope '{value}': use all, sluice or lance")),
                    };
                    if scope.replace(v).is_some() {
                        return Err(dup());
                    }
                }
                "rule" => {
                    let mut parts = value.split(':');
                    let (Some(path), Some(kind)) = (parts.next(), parts.next()) else {
                        return Err(format!("rule '{value}': use PATH:KIND[:TIMES]"));
                    };
                    let times = match parts.next() {
                        Some(t) => t.parse::<u32>().map_err(|e| format!("rule '{value}': times: {e}"))?,
                        None => 1,
                    };
                    rules.push(FaultRule { path: path.to_string(), fault: Fault::parse(kind)?, times });
                }
                _ => return Err(format!("unknown key '{key}' (use seed, p, scope, rule)")),
            }
        }
        let targeted = !rules.is_empty();
        Ok(FaultSpec {
            seed: match seed {
                Some(s) => s,
                None if targeted => 0,
                None => return Err("seed=N is required".into()),
            },
            p: match p {
                Some(p) => p,
                None if targeted => 0.0,
                None => return Err("p=PROBABILITY is required".into()),
            },
            scope: scope.unwrap_or(Scope::All),
            rules,
        })
    }

    /// The spec in `SLUICE_FAULTS`, in failpoints builds; `None` if unset or
    /// (always) in other builds. A bad spec is an error naming the variable.
    pub fn from_env() -> std::result::Result<Option<FaultSpec>, String> {
        if !cfg!(feature = "failpoints") {
            return Ok(None);
        }
        match std::env::var(FAULTS_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => Err(format!("{FAULTS_ENV}: {e}")),
            Ok(spec) => FaultSpec::parse(&spec)
                .map(Some)
                .map_err(|e| format!("{FAULTS_ENV}='{spec}': {e}; expected seed=N,p=F[,scope=all|sluice|lance][,rule=PATH:KIND[:TIMES]]")),
        }
    }
}

/// One process's stream of random faults, shared by every [`FaultStore`] of a lake.
#[derive(Debug)]
pub struct RandomFaults {
    spec: FaultSpec,
    state: Mutex<u64>,
    injected: AtomicU64,
    /// The targeted rules still to fire, shared by every store of the lake.
    rules: Mutex<Vec<FaultRule>>,
}

/// splitmix64: turns any seed (0 included) into a well-mixed xorshift state.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl RandomFaults {
    pub fn new(spec: FaultSpec) -> Arc<RandomFaults> {
        let rules = Mutex::new(spec.rules.clone());
        Arc::new(RandomFaults { state: Mutex::new(splitmix(spec.seed) | 1), injected: AtomicU64::new(0), rules, spec })
    }

    pub fn spec(&self) -> FaultSpec {
        self.spec.clone()
    }

    /// A targeted rule's fault for a PUT to `location`, if one is due.
    fn targeted(&self, location: &Path) -> Option<Fault> {
        let mut rules = self.rules.lock().expect("fault rules poisoned");
        let rule = rules.iter_mut().find(|r| r.times > 0 && location.as_ref().contains(&r.path))?;
        rule.times -= 1;
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(rule.fault)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Does this stream hit stores of `scope` (`Sluice` or `Lance`)?
    pub fn covers(&self, scope: Scope) -> bool {
        self.spec.scope == Scope::All || self.spec.scope == scope
    }

    fn next(&self) -> u64 {
        // xorshift64*
        let mut x = self.state.lock().expect("fault stream poisoned");
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The fault for the next PUT, if any (`create_only`: may answer "already exists").
    fn draw(&self, create_only: bool) -> Option<Fault> {
        let roll = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        if roll >= self.spec.p {
            return None;
        }
        let kinds: &[Fault] = if create_only {
            &[Fault::AppliedThenError, Fault::AppliedThenAlreadyExists, Fault::Rejected]
        } else {
            &[Fault::AppliedThenError, Fault::Rejected]
        };
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(kinds[(self.next() % kinds.len() as u64) as usize])
    }
}

#[derive(Debug)]
struct Rule {
    path_contains: String,
    fault: Fault,
    remaining: u32,
}

/// Injects [`Fault`]s into PUTs whose path contains a given string, and
/// (built with [`FaultStore::random`]) into random PUTs.
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    rules: Mutex<Vec<Rule>>,
    random: Option<Arc<RandomFaults>>,
    /// A `LandsLate` PUT not yet applied.
    late: Mutex<Option<(Path, PutPayload, PutOptions)>>,
}

impl FaultStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner, rules: Mutex::new(Vec::new()), random: None, late: Mutex::new(None) }
    }

    /// A store whose PUTs also suffer `random`'s faults (besides injected rules).
    pub fn random(inner: Arc<dyn ObjectStore>, random: Arc<RandomFaults>) -> Self {
        Self { inner, rules: Mutex::new(Vec::new()), random: Some(random), late: Mutex::new(None) }
    }

    /// The next `times` PUTs to a path containing `path_contains` suffer `fault`.
    pub fn inject(&self, path_contains: &str, fault: Fault, times: u32) {
        self.rules.lock().expect("fault rules poisoned").push(Rule { path_contains: path_contains.into(), fault, remaining: times });
    }

    /// Apply a `LandsLate` PUT once a request to another path arrives.
    async fn land(&self, location: &Path) {
        let pending = {
            let mut late = self.late.lock().expect("late PUT poisoned");
            match late.as_ref() {
                Some((path, _, _)) if path != location => late.take(),
                _ => None,
            }
        };
        if let Some((path, payload, opts)) = pending {
            let landed = self.inner.put_opts(&path, payload, opts).await;
            eprintln!("fault: landed-late {path} ({})", if landed.is_ok() { "applied" } else { "refused" });
        }
    }

    fn take(&self, location: &Path) -> Option<Fault> {
        let mut rules = self.rules.lock().expect("fault rules poisoned");
        let rule = rules.iter_mut().find(|r| r.remaining > 0 && location.as_ref().contains(&r.path_contains))?;
        rule.remaining -= 1;
        Some(rule.fault)
    }
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.land(location).await;
        let create_only = matches!(opts.mode, object_store::PutMode::Create);
        let fault = self
            .take(location)
            .or_else(|| self.random.as_ref().and_then(|r| r.targeted(location)))
            .or_else(|| self.random.as_ref().and_then(|r| r.draw(create_only)));
        let Some(fault) = fault else { return self.inner.put_opts(location, payload, opts).await };
        if fault == Fault::LandsLate {
            eprintln!("fault: {} {location}", fault.kind());
            *self.late.lock().expect("late PUT poisoned") = Some((location.clone(), payload, opts));
            return Err(object_store::Error::Generic { store: "FaultStore", source: "injected: no answer (the PUT lands later)".into() });
        }
        if let Fault::AppliedThenSlow(ms) = fault {
            let put = self.inner.put_opts(location, payload, opts).await?;
            eprintln!("fault: {} {location}", fault.kind());
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            return Ok(put);
        }
        if let Fault::SlowThenApplied(ms) = fault {
            eprintln!("fault: {} {location}", fault.kind());
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            return self.inner.put_opts(location, payload, opts).await;
        }
        if !matches!(fault, Fault::Rejected | Fault::Beaten) {
            // A PUT the store itself refused (a lost create race) is answered as it is.
            self.inner.put_opts(location, payload, opts).await?;
        }
        eprintln!("fault: {} {location}", fault.kind());
        match fault {
            Fault::AppliedThenAlreadyExists => Err(object_store::Error::AlreadyExists {
                path: location.to_string(),
                source: "injected: the retried create-only PUT found the first attempt's object".into(),
            }),
            Fault::AppliedThenError => Err(object_store::Error::Generic {
                store: "FaultStore",
                source: "injected: the PUT was applied but the response was lost".into(),
            }),
            Fault::Rejected => Err(object_store::Error::Generic { store: "FaultStore", source: "injected: the PUT failed".into() }),
            Fault::Beaten => Err(object_store::Error::AlreadyExists { path: location.to_string(), source: "injected: another writer's object was there".into() }),
            Fault::AppliedThenSlow(_) | Fault::SlowThenApplied(_) | Fault::LandsLate => unreachable!("answered above"),
        }
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.land(location).await;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
