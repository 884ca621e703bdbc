//! The durable [`Store`]: one redb file holding the pending deliveries, the dead letters and the
//! replay table. What to store and when is the queue's business; this module only makes it
//! atomic and on disk.
//!
//! Every write goes through one writer thread that commits in groups: it takes every request
//! queued while its previous commit was running, applies them in order in one write transaction
//! and commits once (fsync), then answers each. Under load one fsync serves many callbacks, and
//! a caller still hears back only once its write is on disk. Reads open read transactions
//! directly, beside the writer.
//!
//! Writes that need no fsync of their own (attempt records, completed deliveries) become
//! durable with the next fsync, and at the latest [`SYNC_AFTER`] later even when nothing else
//! is written.
//!
//! After an I/O error (a full disk) redb refuses every further write on that handle. The
//! writer then reports the store as failing ([`Store::health`]), answers writes with errors,
//! and about every [`REOPEN_EVERY`] closes the file and opens it again (redb repairs it to its
//! last durable commit, which holds everything acknowledged) and tries a durable probe write;
//! once that succeeds the store is healthy again by itself.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use tokio::sync::oneshot;

use super::store::{Accepted, ReplayEntry, Seen, Store, StoreError, Ticket, answered};
use super::{Delivery, DeliveryState};

/// Delivery id → the delivery as JSON.
const PENDING: TableDefinition<&str, &[u8]> = TableDefinition::new("pending");
/// Delivery id → the dead letter as JSON.
const DEAD: TableDefinition<&str, &[u8]> = TableDefinition::new("dead");
/// Replay key → [`encode_replay`].
const REPLAY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("replay");
/// `"format"` → [`FORMAT`]: a file written in another layout is refused, not misread.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FORMAT: u64 = 1;
/// Requests applied in one transaction at most, so that one commit stays short.
const MAX_BATCH: usize = 1024;
/// A commit without fsync is made durable at most this long after it.
pub const SYNC_AFTER: Duration = Duration::from_secs(1);
/// While the store is failing, how often it is closed, opened again and probed.
pub const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// A failing store counts as writable again only with this much free space beside it: redb
/// reuses free pages inside its file, so a probe write can succeed on a disk that is still
/// full, and the next growth of the file would fail again.
pub const MIN_FREE: u64 = 1024 * 1024;

/// The open database, swapped by the writer when it reopens the file; `None` while it does.
type Handle = Arc<RwLock<Option<Arc<Database>>>>;
/// Why the store cannot write, while it cannot.
type Health = Arc<Mutex<Option<String>>>;

/// The redb-backed store. Dropping it stops the writer thread and closes the file.
pub struct RedbStore {
    path: PathBuf,
    db: Handle,
    health: Health,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    commits: Arc<AtomicU64>,
    recent: Recent,
}

/// The replay keys written, in memory, so that the replay check of a key never seen (nearly
/// every callback) answers without a read transaction: a 64-bit fingerprint of each key and
/// its expiry, about 16 bytes per entry (hashbrown's table adds its control bytes and slack:
/// 18 to 36 bytes per entry in all). A fingerprint present may be another key's (one chance in
/// 2^64 per pair): the file is read then, and it decides. Filled from the file at open, added
/// to before each accept is handed to the writer (so a key the file holds is always here), and
/// purged with the file's entries.
struct Recent {
    hasher: std::collections::hash_map::RandomState,
    keys: Mutex<std::collections::HashMap<u64, u64>>,
}

impl Recent {
    fn fingerprint(&self, key: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    /// Whether `key` may have a live entry.
    fn may_hold(&self, key: &[u8], now_ms: u64) -> bool {
        let fp = self.fingerprint(key);
        let keys = self.keys.lock().expect("replay index lock");
        keys.get(&fp).is_some_and(|&expires| expires > now_ms)
    }

    fn insert(&self, key: &[u8], expires_ms: u64) {
        let fp = self.fingerprint(key);
        let mut keys = self.keys.lock().expect("replay index lock");
        let e = keys.entry(fp).or_insert(expires_ms);
        *e = (*e).max(expires_ms);
    }

    fn purge(&self, now_ms: u64) {
        let mut keys = self.keys.lock().expect("replay index lock");
        keys.retain(|_, &mut expires| expires > now_ms);
    }

    fn len(&self) -> usize {
        self.keys.lock().expect("replay index lock").len()
    }
}

/// Every replay entry's key and expiry, read once at open (expired ones too: the check compares
/// with its own clock, and the purge drops them).
fn load_recent(db: &Database) -> Result<Recent, redb::Error> {
    let recent = Recent {
        hasher: std::collections::hash_map::RandomState::new(),
        keys: Mutex::default(),
    };
    let txn = db.begin_read()?;
    let table = txn.open_table(REPLAY)?;
    for entry in table.iter()? {
        let (key, value) = entry?;
        let value = value.value();
        if let Some(expires) = value.get(32..40) {
            let expires = u64::from_be_bytes(expires.try_into().expect("8 bytes"));
            recent.insert(key.value(), expires);
        }
    }
    Ok(recent)
}

/// One write, encoded by the caller (serializing is not the writer's work).
enum Write {
    Accept {
        replay: Option<(Vec<u8>, Vec<u8>)>,
        deliveries: Vec<(String, Vec<u8>)>,
        now_ms: u64,
    },
    Save {
        id: String,
        state: DeliveryState,
        json: Vec<u8>,
    },
    Remove(String),
    PurgeReplay(u64),
}

enum Done {
    Accepted(Accepted),
    Saved,
    Removed(bool),
    Purged(usize),
}

struct Request {
    write: Write,
    /// On disk before the answer (fsync); otherwise with the next durable commit.
    durable: bool,
    reply: oneshot::Sender<Result<Done, StoreError>>,
}

impl RedbStore {
    /// Opens the store at `path`, creating the file and its folder if missing. A file left by a
    /// crash is repaired here.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let fail = |e: &dyn Display| StoreError(format!("cannot open {}: {e}", path.display()));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError(format!("cannot create folder {}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| fail(&e))?;
        init(&db).map_err(|e| fail(&e))?;
        let recent = load_recent(&db).map_err(|e| fail(&e))?;
        let db: Handle = Arc::new(RwLock::new(Some(Arc::new(db))));
        let health: Health = Arc::default();
        let commits = Arc::new(AtomicU64::new(0));
        let (requests, inbox) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("zimhook-store".into())
            .spawn({
                let writer = Writer {
                    path: path.to_path_buf(),
                    db: db.clone(),
                    health: health.clone(),
                    commits: commits.clone(),
                    unsynced_since: None,
                    last_reopen: None,
                };
                move || writer.run(&inbox)
            })
            .map_err(|e| fail(&e))?;
        Ok(RedbStore {
            path: path.to_path_buf(),
            db,
            health,
            requests: Some(requests),
            writer: Some(writer),
            commits,
            recent,
        })
    }

    /// Replay keys held in memory (live or not yet purged).
    pub fn replay_index_len(&self) -> usize {
        self.recent.len()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Transactions committed so far (each one fsync), for tests and metrics.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Hands `write` to the writer thread; the answer comes once it is committed.
    fn submit(&self, write: Write, durable: bool) -> oneshot::Receiver<Result<Done, StoreError>> {
        let (reply, answer) = oneshot::channel();
        if let Some(requests) = &self.requests {
            // A send error drops `reply`, and the receiver reports the writer as stopped.
            let _ = requests.send(Request {
                write,
                durable,
                reply,
            });
        }
        answer
    }

    /// Hands `write` to the writer thread and waits (blocking) until it is on disk.
    fn write(&self, write: Write) -> Result<Done, StoreError> {
        self.submit(write, true)
            .blocking_recv()
            .map_err(|_| stopped())?
    }

    /// Hands `write` to the writer thread; the ticket resolves once it is committed (on disk
    /// if `durable`, else with the next durable commit).
    fn write_queued<T: Send + 'static>(
        &self,
        write: Write,
        durable: bool,
        answer: fn(Done) -> T,
    ) -> Ticket<T> {
        let rx = self.submit(write, durable);
        Box::pin(async move { rx.await.map_err(|_| stopped())?.map(answer) })
    }

    /// Encodes an accept, and notes its replay key in memory first (see [`Recent`]).
    fn encode_accept(
        &self,
        replay: Option<&ReplayEntry>,
        deliveries: &[Delivery],
        now_ms: u64,
    ) -> Result<Write, StoreError> {
        let deliveries = deliveries
            .iter()
            .map(|d| Ok((d.id.clone(), encode_delivery(d)?)))
            .collect::<Result<_, StoreError>>()?;
        if let Some(r) = replay {
            self.recent.insert(&r.key, r.expires_ms);
        }
        let replay = replay.map(|r| (r.key.clone(), encode_replay(r)));
        Ok(Write::Accept {
            replay,
            deliveries,
            now_ms,
        })
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = current(&self.db).ok_or_else(reopening)?;
        let txn = db.begin_read().map_err(db_error)?;
        f(&txn)
    }

    fn all(&self, table: TableDefinition<&str, &[u8]>) -> Result<Vec<Delivery>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(table).map_err(db_error)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(db_error)? {
                let (id, json) = entry.map_err(db_error)?;
                out.push(decode_delivery(id.value(), json.value())?);
            }
            Ok(out)
        })
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer once it has answered what is queued.
        drop(self.requests.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Store for RedbStore {
    fn health(&self) -> Result<(), String> {
        match &*self.health.lock().expect("health lock") {
            None => Ok(()),
            Some(e) => Err(e.clone()),
        }
    }

    fn check_replay(&self, key: &[u8], now_ms: u64) -> Result<Option<Seen>, StoreError> {
        if !self.recent.may_hold(key, now_ms) {
            return Ok(None);
        }
        self.read(|txn| {
            let table = txn.open_table(REPLAY).map_err(db_error)?;
            let Some(value) = table.get(key).map_err(db_error)? else {
                return Ok(None);
            };
            let (seen, expires_ms) = decode_replay(value.value())?;
            Ok((expires_ms > now_ms).then_some(seen))
        })
    }

    fn accept(
        &self,
        replay: Option<&ReplayEntry>,
        deliveries: &[Delivery],
        now_ms: u64,
    ) -> Result<Accepted, StoreError> {
        let write = self.encode_accept(replay, deliveries, now_ms)?;
        self.write(write).map(accepted)
    }

    fn accept_async(
        &self,
        replay: Option<&ReplayEntry>,
        deliveries: &[Delivery],
        now_ms: u64,
    ) -> Ticket<Accepted> {
        match self.encode_accept(replay, deliveries, now_ms) {
            Ok(write) => self.write_queued(write, true, accepted),
            Err(e) => answered(Err(e)),
        }
    }

    fn save_async(&self, delivery: &Delivery) -> Ticket<()> {
        match encode_delivery(delivery) {
            Ok(json) => self.write_queued(
                Write::Save {
                    id: delivery.id.clone(),
                    state: delivery.state,
                    json,
                },
                false,
                |_| (),
            ),
            Err(e) => answered(Err(e)),
        }
    }

    fn remove_async(&self, id: &str) -> Ticket<bool> {
        self.write_queued(Write::Remove(id.to_string()), false, removed)
    }

    fn pending(&self) -> Result<Vec<Delivery>, StoreError> {
        self.all(PENDING)
    }

    fn dead(&self) -> Result<Vec<Delivery>, StoreError> {
        self.all(DEAD)
    }

    fn get(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        self.read(|txn| {
            for def in [PENDING, DEAD] {
                let table = txn.open_table(def).map_err(db_error)?;
                if let Some(json) = table.get(id).map_err(db_error)? {
                    return decode_delivery(id, json.value()).map(Some);
                }
            }
            Ok(None)
        })
    }

    fn save(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let json = encode_delivery(delivery)?;
        self.write(Write::Save {
            id: delivery.id.clone(),
            state: delivery.state,
            json,
        })
        .map(|_| ())
    }

    fn remove(&self, id: &str) -> Result<bool, StoreError> {
        self.write(Write::Remove(id.to_string())).map(removed)
    }

    fn purge_replay(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.recent.purge(now_ms);
        match self.write(Write::PurgeReplay(now_ms))? {
            Done::Purged(n) => Ok(n),
            _ => unreachable!("purge answers Purged"),
        }
    }
}

fn stopped() -> StoreError {
    StoreError("writer thread stopped".into())
}

fn reopening() -> StoreError {
    StoreError("store is being reopened after a write error".into())
}

/// The open database, if any (none while the writer reopens it).
fn current(db: &Handle) -> Option<Arc<Database>> {
    db.read().expect("db lock").clone()
}

fn accepted(done: Done) -> Accepted {
    match done {
        Done::Accepted(a) => a,
        _ => unreachable!("accept answers Accepted"),
    }
}

fn removed(done: Done) -> bool {
    match done {
        Done::Removed(found) => found,
        _ => unreachable!("remove answers Removed"),
    }
}

/// Creates the tables (so that read transactions find them) and checks the file's format.
fn init(db: &Database) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        let format = meta
            .get("format")
            .map_err(|e| e.to_string())?
            .map(|v| v.value());
        match format {
            None => {
                meta.insert("format", FORMAT).map_err(|e| e.to_string())?;
            }
            Some(FORMAT) => {}
            Some(other) => {
                return Err(format!(
                    "store format {other} is not the one this zimhook reads ({FORMAT})"
                ));
            }
        }
        for def in [PENDING, DEAD] {
            txn.open_table(def).map_err(|e| e.to_string())?;
        }
        txn.open_table(REPLAY).map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())
}

/// The writer thread's state.
struct Writer {
    path: PathBuf,
    db: Handle,
    health: Health,
    commits: Arc<AtomicU64>,
    /// When the oldest commit not yet made durable happened.
    unsynced_since: Option<Instant>,
    /// When the store was last reopened after a failure.
    last_reopen: Option<Instant>,
}

impl Writer {
    /// One transaction and one commit per batch of queued requests, until the store is dropped.
    fn run(mut self, inbox: &mpsc::Receiver<Request>) {
        loop {
            let first = match self.wait() {
                Some(wait) => match inbox.recv_timeout(wait) {
                    Ok(r) => Some(r),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match inbox.recv() {
                    Ok(r) => Some(r),
                    Err(_) => break,
                },
            };
            self.tend();
            let Some(first) = first else { continue };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match inbox.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.apply(batch);
        }
        // Closing: put commits made without fsync on disk too.
        if self.unsynced_since.is_some()
            && let Some(db) = current(&self.db)
            && let Err(e) = sync(&db)
        {
            tracing::warn!(error = %e, "final store sync failed; the last attempt records may run again");
        }
    }

    /// How long to wait for the next request before there is work of its own: a sync due, or a
    /// reopen to try. `None`: wait as long as it takes.
    fn wait(&self) -> Option<Duration> {
        if self.failing() {
            let since = self
                .last_reopen
                .map(|t| t.elapsed())
                .unwrap_or(REOPEN_EVERY);
            return Some(REOPEN_EVERY.saturating_sub(since));
        }
        self.unsynced_since
            .map(|t| SYNC_AFTER.saturating_sub(t.elapsed()))
    }

    fn failing(&self) -> bool {
        self.health.lock().expect("health lock").is_some()
    }

    fn fail(&mut self, error: String) {
        let mut health = self.health.lock().expect("health lock");
        if health.is_none() {
            tracing::error!(error = %error, path = %self.path.display(), "store cannot write; callbacks get 503 until it recovers");
        }
        *health = Some(error);
    }

    /// Work due whatever arrives: the periodic sync, or reopening a failing store.
    fn tend(&mut self) {
        if self.failing() {
            if self.last_reopen.is_none_or(|t| t.elapsed() >= REOPEN_EVERY) {
                self.reopen();
            }
            return;
        }
        if self
            .unsynced_since
            .is_some_and(|t| t.elapsed() >= SYNC_AFTER)
        {
            let Some(db) = current(&self.db) else { return };
            match sync(&db) {
                Ok(()) => {
                    self.commits.fetch_add(1, Ordering::Relaxed);
                    self.unsynced_since = None;
                }
                Err(e) => self.fail(format!("sync failed: {e}")),
            }
        }
    }

    fn apply(&mut self, batch: Vec<Request>) {
        let db = match current(&self.db) {
            Some(db) if !self.failing() => db,
            _ => {
                let error = self
                    .health
                    .lock()
                    .expect("health lock")
                    .clone()
                    .unwrap_or_else(|| reopening().0);
                for req in batch {
                    let _ = req.reply.send(Err(StoreError(error.clone())));
                }
                return;
            }
        };
        let overdue = self
            .unsynced_since
            .is_some_and(|t| t.elapsed() >= SYNC_AFTER);
        match apply_batch(&db, &batch, overdue) {
            Ok((done, committed)) => {
                if committed {
                    self.commits.fetch_add(1, Ordering::Relaxed);
                    if overdue || batch.iter().any(|r| r.durable) {
                        self.unsynced_since = None;
                    } else if self.unsynced_since.is_none() {
                        self.unsynced_since = Some(Instant::now());
                    }
                }
                for (req, done) in batch.into_iter().zip(done) {
                    let _ = req.reply.send(Ok(done));
                }
            }
            Err(e) => {
                let error = format!("write failed: {e}");
                tracing::error!(error = %error, requests = batch.len(), "store write failed");
                self.fail(error.clone());
                for req in batch {
                    let _ = req.reply.send(Err(StoreError(error.clone())));
                }
            }
        }
    }

    /// Closes the file, opens it again (redb repairs it to its last durable commit) and probes
    /// it with a durable write. Healthy again only if all of that worked.
    fn reopen(&mut self) {
        self.last_reopen = Some(Instant::now());
        let old = self.db.write().expect("db lock").take();
        if let Some(old) = old {
            // Readers hold the old handle only for one read; the file lock goes with the last.
            let end = Instant::now() + Duration::from_secs(2);
            while Arc::strong_count(&old) > 1 && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(old);
        }
        let opened = free_space(&self.path)
            .and_then(|_| Database::create(&self.path).map_err(|e| e.to_string()))
            .and_then(|db| {
                init(&db)?;
                probe(&db).map_err(|e| e.to_string())?;
                Ok(db)
            });
        match opened {
            Ok(db) => {
                *self.db.write().expect("db lock") = Some(Arc::new(db));
                *self.health.lock().expect("health lock") = None;
                self.unsynced_since = None;
                tracing::warn!(path = %self.path.display(), "store reopened and writable again");
            }
            Err(e) => {
                tracing::debug!(error = %e, "store still cannot write");
                *self.health.lock().expect("health lock") =
                    Some(format!("cannot write {}: {e}", self.path.display()));
            }
        }
    }
}

/// Whether the file system holding `path` has [`MIN_FREE`] bytes free for unprivileged writes.
fn free_space(path: &Path) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| format!("statvfs: {e}"))?;
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    if free < MIN_FREE {
        return Err(format!("only {free} bytes free on its file system"));
    }
    Ok(())
}

/// A durable write: fails while the file cannot be written.
fn probe(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        meta.insert("probe", crate::deliver::now_ms())?;
    }
    txn.commit()?;
    Ok(())
}

/// An empty commit with fsync: makes every earlier commit durable.
fn sync(db: &Database) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.commit()?;
    Ok(())
}

/// Applies `batch` in order in one write transaction; commits it if anything changed, durably
/// if a request needs it or `sync` says so.
fn apply_batch(
    db: &Database,
    batch: &[Request],
    sync: bool,
) -> Result<(Vec<Done>, bool), redb::Error> {
    let mut txn = db.begin_write()?;
    // Only accepting a callback must be on disk before it returns (the 2xx depends on it). The
    // record of an attempt may be lost in a crash: the delivery then runs again, which
    // at-least-once allows. Such batches skip the fsync; the next accept, or the writer within
    // SYNC_AFTER, makes them durable.
    let needs_fsync = sync || batch.iter().any(|r| r.durable);
    txn.set_durability(if needs_fsync {
        Durability::Immediate
    } else {
        Durability::None
    })?;
    let mut done = Vec::with_capacity(batch.len());
    let mut changed = false;
    {
        let mut tables = Tables::open(&txn)?;
        for req in batch {
            let (d, c) = tables.apply(&req.write)?;
            done.push(d);
            changed |= c;
        }
    }
    if changed {
        txn.commit()?;
    } else {
        txn.abort()?;
    }
    Ok((done, changed))
}

struct Tables<'t> {
    pending: Table<'t, &'static str, &'static [u8]>,
    dead: Table<'t, &'static str, &'static [u8]>,
    replay: Table<'t, &'static [u8], &'static [u8]>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, redb::Error> {
        Ok(Tables {
            pending: txn.open_table(PENDING)?,
            dead: txn.open_table(DEAD)?,
            replay: txn.open_table(REPLAY)?,
        })
    }

    /// One write; also says whether it changed anything.
    fn apply(&mut self, write: &Write) -> Result<(Done, bool), redb::Error> {
        match write {
            Write::Accept {
                replay,
                deliveries,
                now_ms,
            } => {
                if let Some((key, value)) = replay {
                    let live = match self.replay.get(key.as_slice())? {
                        // A value that cannot be decoded is treated as absent and overwritten.
                        Some(v) => decode_replay(v.value())
                            .ok()
                            .filter(|(_, expires_ms)| expires_ms > now_ms),
                        None => None,
                    };
                    if let Some((seen, _)) = live {
                        return Ok((Done::Accepted(Accepted::Existing(seen)), false));
                    }
                    self.replay.insert(key.as_slice(), value.as_slice())?;
                }
                for (id, json) in deliveries {
                    self.pending.insert(id.as_str(), json.as_slice())?;
                }
                let changed = replay.is_some() || !deliveries.is_empty();
                Ok((Done::Accepted(Accepted::New), changed))
            }
            Write::Save { id, state, json } => {
                let (to, from) = match state {
                    DeliveryState::Pending => (&mut self.pending, &mut self.dead),
                    DeliveryState::Dead => (&mut self.dead, &mut self.pending),
                };
                from.remove(id.as_str())?;
                to.insert(id.as_str(), json.as_slice())?;
                Ok((Done::Saved, true))
            }
            Write::Remove(id) => {
                let pending = self.pending.remove(id.as_str())?.is_some();
                let dead = self.dead.remove(id.as_str())?.is_some();
                Ok((Done::Removed(pending || dead), pending || dead))
            }
            Write::PurgeReplay(now_ms) => {
                let mut purged = 0;
                self.replay.retain(|_, value| {
                    let keep =
                        decode_replay(value).is_ok_and(|(_, expires_ms)| expires_ms > *now_ms);
                    purged += usize::from(!keep);
                    keep
                })?;
                Ok((Done::Purged(purged), purged > 0))
            }
        }
    }
}

/// A replay value: the body's hash (32 bytes), `expires_ms` (8 bytes, big-endian), the reply.
fn encode_replay(r: &ReplayEntry) -> Vec<u8> {
    let mut v = Vec::with_capacity(40 + r.reply.len());
    v.extend_from_slice(&r.body_hash);
    v.extend_from_slice(&r.expires_ms.to_be_bytes());
    v.extend_from_slice(&r.reply);
    v
}

fn decode_replay(v: &[u8]) -> Result<(Seen, u64), StoreError> {
    if v.len() < 40 {
        return Err(StoreError(format!(
            "replay entry of {} bytes is too short",
            v.len()
        )));
    }
    let (hash, rest) = v.split_at(32);
    let (expires, reply) = rest.split_at(8);
    let seen = Seen {
        body_hash: hash.try_into().expect("32 bytes"),
        reply: Bytes::copy_from_slice(reply),
    };
    Ok((
        seen,
        u64::from_be_bytes(expires.try_into().expect("8 bytes")),
    ))
}

fn encode_delivery(d: &Delivery) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(d)
        .map_err(|e| StoreError(format!("delivery {} cannot be encoded: {e}", d.id)))
}

fn decode_delivery(id: &str, json: &[u8]) -> Result<Delivery, StoreError> {
    serde_json::from_slice(json)
        .map_err(|e| StoreError(format!("delivery {id} cannot be read: {e}")))
}

fn db_error(e: impl Into<redb::Error>) -> StoreError {
    StoreError(e.into().to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn delivery(id: &str) -> Delivery {
        Delivery {
            id: id.into(),
            rule: "r".into(),
            event: "call_timeout".into(),
            body: format!(r#"{{"call_id":"{id}"}}"#),
            order_key: None,
            depth: 0,
            created_ms: 1,
            due_ms: 1,
            attempts: 0,
            state: DeliveryState::Pending,
            last_error: None,
            history: vec![],
        }
    }

    fn entry(key: &str, body: u8, expires_ms: u64) -> ReplayEntry {
        ReplayEntry {
            key: key.as_bytes().to_vec(),
            body_hash: [body; 32],
            reply: Bytes::from(format!("reply-{key}")),
            expires_ms,
        }
    }

    fn ids(v: Vec<Delivery>) -> BTreeSet<String> {
        v.into_iter().map(|d| d.id).collect()
    }

    #[test]
    fn the_replay_index_holds_what_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zimhook.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            for (key, expires) in [("a", 1_000), ("b", 2_000), ("c", 3_000)] {
                store.accept(Some(&entry(key, 1, expires)), &[], 0).unwrap();
            }
            assert_eq!(store.replay_index_len(), 3);
            // A key the index does not hold is not live, without a read.
            assert_eq!(store.check_replay(b"d", 0).unwrap(), None);
        }
        // Reopened: the index is filled from the file, and the checks read the file's entries.
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.replay_index_len(), 3);
        assert!(store.check_replay(b"b", 1_500).unwrap().is_some());
        assert_eq!(store.check_replay(b"b", 2_000).unwrap(), None);
        // The purge empties both.
        assert_eq!(store.purge_replay(2_500).unwrap(), 2);
        assert_eq!(store.replay_index_len(), 1);
        assert!(store.check_replay(b"c", 2_500).unwrap().is_some());
        assert_eq!(store.check_replay(b"a", 0).unwrap(), None);
    }

    #[test]
    fn accepted_deliveries_and_replay_entries_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        // The folder is created too.
        let path = dir.path().join("data/nested/zimhook.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            let a = store
                .accept(
                    Some(&entry("k1", 1, 1_000)),
                    &[delivery("a"), delivery("b")],
                    0,
                )
                .unwrap();
            assert_eq!(a, Accepted::New);
            assert_eq!(
                store.accept(None, &[delivery("c")], 0).unwrap(),
                Accepted::New
            );
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(
            ids(store.pending().unwrap()),
            ids(vec![delivery("a"), delivery("b"), delivery("c")])
        );
        assert_eq!(store.get("a").unwrap(), Some(delivery("a")));
        let seen = store.check_replay(b"k1", 500).unwrap().unwrap();
        assert_eq!(seen.body_hash, [1; 32]);
        assert_eq!(seen.reply, Bytes::from("reply-k1"));
        // Expired entries are not live.
        assert_eq!(store.check_replay(b"k1", 1_000).unwrap(), None);
        assert_eq!(store.check_replay(b"other", 0).unwrap(), None);
    }

    #[test]
    fn a_live_replay_key_writes_nothing_and_an_expired_one_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        store
            .accept(Some(&entry("k", 1, 1_000)), &[delivery("a")], 0)
            .unwrap();
        let commits = store.commits();
        let again = store
            .accept(Some(&entry("k", 2, 5_000)), &[delivery("b")], 10)
            .unwrap();
        let Accepted::Existing(seen) = again else {
            panic!("expected Existing, got {again:?}");
        };
        assert_eq!(seen.body_hash, [1; 32]);
        assert_eq!(ids(store.pending().unwrap()), ids(vec![delivery("a")]));
        // Nothing changed, so nothing was committed.
        assert_eq!(store.commits(), commits);

        let later = store
            .accept(Some(&entry("k", 3, 9_000)), &[delivery("c")], 2_000)
            .unwrap();
        assert_eq!(later, Accepted::New);
        assert_eq!(
            store.check_replay(b"k", 2_000).unwrap().unwrap().body_hash,
            [3; 32]
        );
        assert_eq!(
            ids(store.pending().unwrap()),
            ids(vec![delivery("a"), delivery("c")])
        );
    }

    #[test]
    fn identical_keys_in_one_batch_resolve_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let request = |body: u8, id: &str| {
            let (reply, _) = oneshot::channel();
            let r = entry("same", body, 1_000);
            Request {
                write: Write::Accept {
                    replay: Some((r.key.clone(), encode_replay(&r))),
                    deliveries: vec![(id.to_string(), encode_delivery(&delivery(id)).unwrap())],
                    now_ms: 0,
                },
                durable: true,
                reply,
            }
        };
        let batch = [request(1, "first"), request(2, "second")];
        let db = current(&store.db).unwrap();
        let (done, committed) = apply_batch(&db, &batch, false).unwrap();
        assert!(committed);
        assert!(matches!(done[0], Done::Accepted(Accepted::New)));
        match &done[1] {
            Done::Accepted(Accepted::Existing(seen)) => assert_eq!(seen.body_hash, [1; 32]),
            _ => panic!("the second request with the same key must be Existing"),
        }
        assert_eq!(ids(store.pending().unwrap()), ids(vec![delivery("first")]));
    }

    #[test]
    fn save_moves_a_delivery_between_pending_and_dead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = RedbStore::open(&path).unwrap();
        store
            .accept(None, &[delivery("a"), delivery("b")], 0)
            .unwrap();

        let mut a = delivery("a");
        a.state = DeliveryState::Dead;
        a.attempts = 3;
        a.last_error = Some("connection refused".into());
        store.save(&a).unwrap();
        assert_eq!(ids(store.pending().unwrap()), ids(vec![delivery("b")]));
        assert_eq!(store.dead().unwrap(), vec![a.clone()]);
        assert_eq!(store.get("a").unwrap(), Some(a.clone()));

        // A retry in the same state updates it in place.
        let mut b = delivery("b");
        b.attempts = 1;
        store.save(&b).unwrap();
        assert_eq!(store.get("b").unwrap(), Some(b));

        a.state = DeliveryState::Pending;
        a.attempts = 0;
        store.save(&a).unwrap();
        drop(store);
        let store = RedbStore::open(&path).unwrap();
        assert!(store.dead().unwrap().is_empty());
        assert_eq!(
            ids(store.pending().unwrap()),
            ids(vec![delivery("a"), delivery("b")])
        );
        assert_eq!(store.get("a").unwrap(), Some(a));
    }

    #[test]
    fn remove_takes_pending_and_dead_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        store
            .accept(None, &[delivery("a"), delivery("b")], 0)
            .unwrap();
        let mut b = delivery("b");
        b.state = DeliveryState::Dead;
        store.save(&b).unwrap();
        assert!(store.remove("a").unwrap());
        assert!(store.remove("b").unwrap());
        assert!(!store.remove("a").unwrap());
        assert!(!store.remove("never").unwrap());
        assert!(store.pending().unwrap().is_empty());
        assert!(store.dead().unwrap().is_empty());
        assert_eq!(store.get("a").unwrap(), None);
    }

    #[test]
    fn purge_drops_only_expired_replay_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        for (key, expires) in [("old1", 100), ("old2", 200), ("new", 5_000)] {
            store.accept(Some(&entry(key, 1, expires)), &[], 0).unwrap();
        }
        assert_eq!(store.purge_replay(200).unwrap(), 2);
        assert_eq!(store.purge_replay(200).unwrap(), 0);
        assert!(store.check_replay(b"new", 200).unwrap().is_some());
        // Even asked about an earlier time, purged entries are gone.
        assert!(store.check_replay(b"old1", 0).unwrap().is_none());
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let _store = RedbStore::open(&path).unwrap();
        let e = RedbStore::open(&path).err().expect("the file is in use");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn concurrent_accepts_share_commits() {
        const THREADS: usize = 64;
        const EACH: usize = 50;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Arc::new(RedbStore::open(&path).unwrap());
        let before = store.commits();
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let id = format!("{t}-{i}");
                        let a = store
                            .accept(Some(&entry(&id, 1, u64::MAX)), &[delivery(&id)], 0)
                            .unwrap();
                        assert_eq!(a, Accepted::New);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let commits = store.commits() - before;
        let requests = THREADS * EACH;
        println!(
            "group commit: {requests} accepts in {commits} commits ({:.1} requests per commit)",
            requests as f64 / commits as f64
        );
        drop(store);
        let store = RedbStore::open(&path).unwrap();
        let stored = ids(store.pending().unwrap());
        assert_eq!(stored.len(), requests);
        for t in 0..THREADS {
            for i in 0..EACH {
                let id = format!("{t}-{i}");
                assert!(stored.contains(&id), "{id} missing");
                assert!(store.check_replay(id.as_bytes(), 0).unwrap().is_some());
            }
        }
    }
}
