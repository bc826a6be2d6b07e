//! `-q redis`: gearmand's redis queue (PROTOCOL.md §5), through the `redis` crate.
//!
//! # Layout
//! gearmand 1.1.20 keeps each job in a HASH at `<prefix>-<function>-<unique>` (default prefix
//! `_gear_`), fields `data` (binary-safe) and `priority` (decimal 0/1/2), written with HMSET
//! and removed with DEL. We write the same key and fields, so gearmand replays our jobs and
//! deletes them when done, plus three fields of our own that gearmand ignores:
//! `function` and `unique` (so replay never has to split the key) and `when` (the epoch time,
//! decimal; gearmand's redis store refuses epoch jobs, we keep them).
//!
//! # Reading keys gearmand wrote (no `function`/`unique` fields)
//! gearmand 1.1.20 reads its own keys back with `sscanf("%[^-]-%[^-]-%s")`: the function is
//! everything up to the **first** `-` after `<prefix>-`, the unique is the rest (so UUID
//! uniques, which contain `-`, come back whole, and a function name containing `-` comes back
//! cut at its first `-`). We apply the same rule, which is the only one consistent with the
//! key: a job replayed that way is deleted by rebuilding the very same key. (A hash holding a
//! plain string value, as gearmand ≤ 1.1.15 wrote, is read as the job's data at NORMAL.)
//!
//! # Keys that would collide
//! `<prefix>-<function>-<unique>` is ambiguous when names contain `-`: jobs (`a-b`, `c`) and
//! (`a`, `b-c`) have the same key. gearmand lets the second overwrite the first; we never do.
//! The store remembers every function name it has seen (replay and adds). A job whose key
//! could also be another known function's key (some `-` in `<function>-<unique>` other than the
//! one after the function ends a known function name) is placed by probing: the gearmand key
//! if it is free or already holds this job (by its `function`/`unique` fields, or, for a
//! gearmand-written hash, by the first-`-` rule), else the first free of
//! `<prefix>#-<function>-<unique>#<n>`, n = 1..7, which no gearmand-style key can equal (the
//! byte after the prefix is `#`, not `-`). Deletes of such jobs probe the same slots. Jobs
//! with no possible collision — the usual case — cost no extra round trip.
//!
//! # Durability
//! A batch is one MULTI/EXEC: redis applies it whole, with no other client's command in
//! between, and `apply` returns when EXEC has answered. Whether that answer means "on disk"
//! is the redis server's persistence setting, not ours: with `appendonly yes` and
//! `appendfsync always` redis fsyncs the AOF before it replies, so an acknowledged batch
//! survives a crash of redis or of the machine (and a torn transaction at the AOF's tail is
//! dropped whole on load); with `appendfsync everysec` up to about a second of batches can be
//! lost on a power cut; with RDB snapshots only, everything since the last snapshot. The store
//! logs a warning at connect when the server does not say `appendonly yes` and `appendfsync
//! always` (and stays quiet if CONFIG is disabled).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use redis::{Connection, ConnectionAddr, ConnectionLike, IntoConnectionInfo, RedisConnectionInfo};

use super::sqlite::priority_from_stored;
use super::{Backend, Op, StoreError, StoredJob};

/// Default `--redis-server`.
pub const DEFAULT_SERVER: &str = "127.0.0.1";
/// Default `--redis-port`.
pub const DEFAULT_PORT: u16 = 6379;
/// Default `--redis-prefix`.
pub const DEFAULT_PREFIX: &str = "_gear_";

/// Probe slots for colliding keys: the gearmand key plus 7 alternatives.
const SLOTS: usize = 8;
const TIMEOUT: Duration = Duration::from_secs(10);

/// The redis store: one connection, used by the store thread only.
pub struct Redis {
    host: String,
    port: u16,
    password: Option<String>,
    prefix: Vec<u8>,
    conn: Option<Connection>,
    /// Every function name seen in the store: a key can only be ambiguous through these.
    functions: HashSet<Vec<u8>>,
    /// Jobs known to live at a probe slot other than their gearmand key.
    slotted: HashSet<(Vec<u8>, Vec<u8>)>,
}

/// `HMGET key function unique`.
type FieldPair = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Who holds a probed key.
#[derive(Clone, Debug, PartialEq)]
enum Holder {
    Free,
    Job(Vec<u8>, Vec<u8>),
    /// Something that is not one of our jobs (another type, a hash without a parseable key).
    Foreign,
}

impl Redis {
    /// Connects to `--redis-server`:`--redis-port`, authenticating with `--redis-password`
    /// when it is not empty; keys start with `--redis-prefix`.
    pub fn open(
        server: &str,
        port: u16,
        password: Option<&str>,
        prefix: &str,
    ) -> Result<Redis, StoreError> {
        let mut store = Redis {
            host: server.to_string(),
            port,
            password: password.filter(|p| !p.is_empty()).map(str::to_string),
            prefix: prefix.as_bytes().to_vec(),
            conn: None,
            functions: HashSet::new(),
            slotted: HashSet::new(),
        };
        store.connect()?;
        Ok(store)
    }

    fn err(&self, what: &str, e: &redis::RedisError) -> StoreError {
        StoreError(format!("redis {}:{}: {what}: {e}", self.host, self.port))
    }

    fn connect(&mut self) -> Result<(), StoreError> {
        self.conn = None;
        let mut settings = RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(p) = &self.password {
            settings = settings.set_password(p);
        }
        let info = ConnectionAddr::Tcp(self.host.clone(), self.port)
            .into_connection_info()
            .map_err(|e| self.err("bad address", &e))?
            .set_redis_settings(settings);
        let client = redis::Client::open(info).map_err(|e| self.err("bad address", &e))?;
        let conn = client
            .get_connection_with_timeout(TIMEOUT)
            .map_err(|e| self.err("cannot connect", &e))?;
        conn.set_read_timeout(Some(TIMEOUT))
            .map_err(|e| self.err("set timeout", &e))?;
        conn.set_write_timeout(Some(TIMEOUT))
            .map_err(|e| self.err("set timeout", &e))?;
        let mut conn = conn;
        self.warn_if_not_durable(&mut conn);
        self.conn = Some(conn);
        Ok(())
    }

    fn warn_if_not_durable(&self, conn: &mut Connection) {
        let get = |conn: &mut Connection, name: &str| -> Option<String> {
            let v: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query(conn).ok()?;
            v.get(1).cloned()
        };
        let (Some(aof), Some(fsync)) = (get(conn, "appendonly"), get(conn, "appendfsync")) else {
            return;
        };
        if aof != "yes" || fsync != "always" {
            log::warn!(
                "redis {}:{}: appendonly={aof} appendfsync={fsync}: an acknowledged job is on \
                 disk only with appendonly yes and appendfsync always",
                self.host,
                self.port
            );
        }
    }

    fn conn(&mut self) -> Result<&mut Connection, StoreError> {
        if self.conn.as_ref().is_none_or(|c| !c.is_open()) {
            self.connect()?;
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// gearmand's key: `<prefix>-<function>-<unique>`.
    fn key(&self, function: &[u8], unique: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + function.len() + unique.len() + 2);
        k.extend_from_slice(&self.prefix);
        k.push(b'-');
        k.extend_from_slice(function);
        k.push(b'-');
        k.extend_from_slice(unique);
        k
    }

    /// Probe slot `n` ≥ 1: `<prefix>#-<function>-<unique>#<n>`.
    fn slot_key(&self, function: &[u8], unique: &[u8], n: usize) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(b"#-");
        k.extend_from_slice(function);
        k.push(b'-');
        k.extend_from_slice(unique);
        k.extend_from_slice(format!("#{n}").as_bytes());
        k
    }

    /// gearmand 1.1.20's reading of a key it wrote: after `<prefix>-`, the function runs to
    /// the first `-` and the unique is the rest.
    fn split_key(&self, key: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        let rest = key
            .strip_prefix(self.prefix.as_slice())?
            .strip_prefix(b"-")?;
        let dash = rest.iter().position(|&b| b == b'-')?;
        Some((rest[..dash].to_vec(), rest[dash + 1..].to_vec()))
    }

    /// Could another known function's job have this job's gearmand key?
    fn may_collide(&self, function: &[u8], unique: &[u8]) -> bool {
        if self.slotted.contains(&(function.to_vec(), unique.to_vec())) {
            return true;
        }
        let mut joined = Vec::with_capacity(function.len() + unique.len() + 1);
        joined.extend_from_slice(function);
        joined.push(b'-');
        joined.extend_from_slice(unique);
        joined
            .iter()
            .enumerate()
            .filter(|&(i, &b)| b == b'-' && i != function.len())
            .any(|(i, _)| self.functions.contains(&joined[..i]))
    }

    /// Who holds each probe slot of (function, unique), the batch's own pending writes first.
    fn probe(
        &mut self,
        function: &[u8],
        unique: &[u8],
        pending: &HashMap<Vec<u8>, Holder>,
    ) -> Result<Vec<(Vec<u8>, Holder)>, StoreError> {
        let keys: Vec<Vec<u8>> = (0..SLOTS)
            .map(|n| {
                if n == 0 {
                    self.key(function, unique)
                } else {
                    self.slot_key(function, unique, n)
                }
            })
            .collect();
        let (host, port) = (self.host.clone(), self.port);
        let err = |e: redis::RedisError| {
            StoreError(format!(
                "redis {host}:{port}: cannot read a key's holder: {e}"
            ))
        };
        let conn = self.conn()?;
        let mut pipe = redis::pipe();
        pipe.cmd("TYPE").arg(&keys[0]);
        for k in &keys[1..] {
            pipe.cmd("HMGET").arg(k).arg("function").arg("unique");
        }
        let (kind, rest): (String, Vec<FieldPair>) = {
            let v: Vec<redis::Value> = pipe.query(conn).map_err(err)?;
            let mut it = v.into_iter();
            let kind = redis::from_redis_value(it.next().unwrap_or(redis::Value::Nil))
                .map_err(|e| err(e.into()))?;
            let rest = it
                .map(|v| redis::from_redis_value(v).map_err(|e| err(e.into())))
                .collect::<Result<_, _>>()?;
            (kind, rest)
        };
        let slot0 = match kind.as_str() {
            "none" => Holder::Free,
            "hash" => {
                let (f, u): (Option<Vec<u8>>, Option<Vec<u8>>) = redis::cmd("HMGET")
                    .arg(&keys[0])
                    .arg("function")
                    .arg("unique")
                    .query(self.conn()?)
                    .map_err(err)?;
                match (f, u) {
                    (Some(f), Some(u)) => Holder::Job(f, u),
                    _ => self.legacy_holder(&keys[0]),
                }
            }
            "string" => self.legacy_holder(&keys[0]),
            _ => Holder::Foreign,
        };
        let mut out = Vec::with_capacity(SLOTS);
        for (i, k) in keys.into_iter().enumerate() {
            let holder = if let Some(h) = pending.get(&k) {
                h.clone()
            } else if i == 0 {
                slot0.clone()
            } else {
                match &rest[i - 1] {
                    (Some(f), Some(u)) => Holder::Job(f.clone(), u.clone()),
                    (None, None) => Holder::Free,
                    _ => Holder::Foreign,
                }
            };
            out.push((k, holder));
        }
        Ok(out)
    }

    fn legacy_holder(&self, key: &[u8]) -> Holder {
        match self.split_key(key) {
            Some((f, u)) => Holder::Job(f, u),
            None => Holder::Foreign,
        }
    }

    /// The key a job is (to be) stored at, probing when its gearmand key is ambiguous.
    /// For a delete, `None` when the job is not stored.
    fn place(
        &mut self,
        function: &[u8],
        unique: &[u8],
        adding: bool,
        pending: &HashMap<Vec<u8>, Holder>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if !self.may_collide(function, unique) {
            return Ok(Some(self.key(function, unique)));
        }
        let slots = self.probe(function, unique, pending)?;
        let me = Holder::Job(function.to_vec(), unique.to_vec());
        if let Some((k, _)) = slots.iter().find(|(_, h)| *h == me) {
            return Ok(Some(k.clone()));
        }
        if !adding {
            return Ok(None);
        }
        match slots.into_iter().find(|(_, h)| *h == Holder::Free) {
            Some((k, _)) => Ok(Some(k)),
            None => Err(StoreError(format!(
                "redis {}:{}: no free key for job {}/{}: {SLOTS} jobs share its key",
                self.host,
                self.port,
                String::from_utf8_lossy(function),
                String::from_utf8_lossy(unique)
            ))),
        }
    }

    fn scan_pattern(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(self.prefix.len() + 1);
        for &b in &self.prefix {
            if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
                p.push(b'\\');
            }
            p.push(b);
        }
        p.push(b'*');
        p
    }
}

fn field<'a>(h: &'a HashMap<Vec<u8>, Vec<u8>>, name: &str) -> Option<&'a [u8]> {
    h.get(name.as_bytes()).map(Vec::as_slice)
}

fn decimal(v: Option<&[u8]>) -> Option<i64> {
    std::str::from_utf8(v?).ok()?.trim().parse().ok()
}

/// The same text as [`Backend::describe`]: never a password.
impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Backend for Redis {
    fn describe(&self) -> String {
        format!(
            "redis {}:{} prefix {}",
            self.host,
            self.port,
            String::from_utf8_lossy(&self.prefix)
        )
    }

    fn replay(&mut self) -> Result<Vec<StoredJob>, StoreError> {
        let pattern = self.scan_pattern();
        let (host, port) = (self.host.clone(), self.port);
        let err = |what: &str, e: redis::RedisError| {
            StoreError(format!("redis {host}:{port}: replay: {what}: {e}"))
        };
        // SCAN (not KEYS: it never blocks the server); it may repeat a key, so dedupe.
        let mut keys = Vec::new();
        let mut seen = HashSet::new();
        let mut cursor = 0u64;
        loop {
            let conn = self.conn()?;
            let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .cursor_arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query(conn)
                .map_err(|e| err("SCAN failed", e))?;
            for k in batch {
                if seen.insert(k.clone()) {
                    keys.push(k);
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut raw_prefix = self.prefix.clone();
        raw_prefix.push(b'-');
        let mut slot_prefix = self.prefix.clone();
        slot_prefix.extend_from_slice(b"#-");

        let mut jobs = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let conn = self.conn()?;
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.cmd("TYPE").arg(k);
            }
            let kinds: Vec<String> = pipe.query(conn).map_err(|e| err("TYPE failed", e))?;
            let mut pipe = redis::pipe();
            let mut wanted = Vec::new();
            for (k, kind) in chunk.iter().zip(&kinds) {
                match kind.as_str() {
                    "hash" => {
                        pipe.cmd("HGETALL").arg(k);
                    }
                    "string" => {
                        pipe.cmd("GET").arg(k);
                    }
                    _ => continue,
                }
                wanted.push((k, kind.as_str() == "hash"));
            }
            let values: Vec<redis::Value> =
                pipe.query(conn).map_err(|e| err("HGETALL failed", e))?;
            for ((key, is_hash), value) in wanted.into_iter().zip(values) {
                let is_slot = key.starts_with(&slot_prefix);
                if !is_slot && !key.starts_with(&raw_prefix) {
                    continue; // `<prefix>` followed by something that is not ours
                }
                let job = if is_hash {
                    let h: HashMap<Vec<u8>, Vec<u8>> = match redis::from_redis_value(value) {
                        Ok(h) => h,
                        Err(_) => continue, // deleted between SCAN and HGETALL
                    };
                    let (function, unique) = match (field(&h, "function"), field(&h, "unique")) {
                        (Some(f), Some(u)) => (f.to_vec(), u.to_vec()),
                        _ if is_slot => continue,
                        _ => match self.split_key(key) {
                            Some(fu) => fu,
                            None => {
                                log::warn!(
                                    "redis {host}:{port}: replay: skipping key {:?}: no \
                                     function and unique in it",
                                    String::from_utf8_lossy(key)
                                );
                                continue;
                            }
                        },
                    };
                    StoredJob {
                        function,
                        unique,
                        priority: priority_from_stored(decimal(field(&h, "priority")).unwrap_or(1)),
                        data: field(&h, "data").unwrap_or_default().to_vec(),
                        when: decimal(field(&h, "when")).unwrap_or(0),
                    }
                } else {
                    // gearmand <= 1.1.15: a plain string holding the data.
                    let Ok(Some(data)) = redis::from_redis_value::<Option<Vec<u8>>>(value) else {
                        continue;
                    };
                    let Some((function, unique)) = self.split_key(key) else {
                        continue;
                    };
                    StoredJob {
                        function,
                        unique,
                        priority: priority_from_stored(1),
                        data,
                        when: 0,
                    }
                };
                if is_slot {
                    self.slotted
                        .insert((job.function.clone(), job.unique.clone()));
                }
                self.functions.insert(job.function.clone());
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut pending: HashMap<Vec<u8>, Holder> = HashMap::new();
        for op in ops {
            match op {
                Op::Add(job) => {
                    self.functions.insert(job.function.clone());
                    let key = self
                        .place(&job.function, &job.unique, true, &pending)?
                        .expect("adds always get a key");
                    if key != self.key(&job.function, &job.unique) {
                        self.slotted
                            .insert((job.function.clone(), job.unique.clone()));
                    }
                    // DEL first: the key may hold an older job's extra fields, or a
                    // gearmand <= 1.1.15 string value that HSET would fail on mid-EXEC.
                    pipe.cmd("DEL").arg(&key).ignore();
                    pipe.cmd("HSET")
                        .arg(&key)
                        .arg("data")
                        .arg(job.data.as_slice())
                        .arg("priority")
                        .arg(job.priority as u8 as i64)
                        .arg("function")
                        .arg(job.function.as_slice())
                        .arg("unique")
                        .arg(job.unique.as_slice())
                        .arg("when")
                        .arg(job.when)
                        .ignore();
                    pending.insert(key, Holder::Job(job.function.clone(), job.unique.clone()));
                }
                Op::Delete { function, unique } => {
                    if let Some(key) = self.place(function, unique, false, &pending)? {
                        pipe.cmd("DEL").arg(&key).ignore();
                        pending.insert(key, Holder::Free);
                    }
                }
            }
        }
        let result: redis::RedisResult<()> = pipe.query(self.conn()?);
        result.map_err(|e| {
            let err = self.err("MULTI/EXEC failed", &e);
            if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                self.conn = None;
            }
            err
        })
    }

    fn reconnect(&mut self) -> Result<(), StoreError> {
        self.connect()
    }
}
