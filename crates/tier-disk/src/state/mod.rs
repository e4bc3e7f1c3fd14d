//! [`DiskState`]: small, durable key/value state kept with the disk tier, for what the hierarchy
//! must not forget across restarts (tag generations, namespace versions, a clear floor, the
//! last applied invalidation-log position).

pub(crate) mod file;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use rustix::fs::FileType;

pub(crate) use file::STATE_FILE;
pub use file::{MAX_STATE_BYTES, MAX_STATE_KEY_LEN, MAX_STATE_VALUE_LEN};

use crate::config::FlushPolicy;
use crate::dir::{append_at, describe, Dir};
use crate::error::DiskError;
use crate::report::StateReport;
use file::{Map, Op, Parsed, FILE_HEADER_LEN, MAX_FILE_BYTES, STATE_TMP};

/// A state file is rewritten (compacted) once it is this many times its live size...
const COMPACT_RATIO: u64 = 4;
/// ...and at least this long.
const COMPACT_MIN: u64 = 1 << 20;

/// Small key/value state kept durably with a [`DiskTier`](crate::DiskTier), in the file `STATE`
/// of its directory; get it with [`DiskTier::state`](crate::DiskTier::state).
///
/// - **Durable on return.** [`put`](Self::put), [`put_many`](Self::put_many) and
///   [`remove`](Self::remove) have written their record when they return: a crash of the
///   process (`kill -9`) never loses it; with [`FlushPolicy::Always`] it is also synced, so a
///   power loss does not either. Otherwise it is synced per the tier's policy (periodically,
///   or when the tier is dropped or [flushed](crate::DiskTier::flush)).
/// - **Last write wins**; `put_many` is applied whole or not at all, even across a crash.
/// - **Damage is never replayed, and said.** Each record carries a CRC; replay stops at the
///   first bad one. A write cut short by a crash is dropped silently (it was never
///   acknowledged); anything else that may have lost acknowledged writes — a bad record, a
///   truncated or foreign file, a file that is missing while segments exist — makes
///   [`was_lost`](Self::was_lost) true, which stays true across opens until
///   [`clear_lost`](Self::clear_lost). The file is then rewritten with what survived.
/// - **Bounded.** Keys and values up to 64 KiB each ([`MAX_STATE_KEY_LEN`],
///   [`MAX_STATE_VALUE_LEN`]), 64 MiB of live pairs in all ([`MAX_STATE_BYTES`]); beyond, a
///   write fails with [`DiskError::TooLarge`] and changes nothing. The file is rewritten to its
///   live size (a new file renamed over the old) once it is several times larger.
/// - The same discipline as the segments: never through a link (a `STATE` that is a symbolic
///   link, or not a regular file, refuses the open), created 0600.
///
/// ```
/// use tier_disk::DiskTier;
///
/// let dir = tempfile::tempdir()?;
/// let tier = DiskTier::open(dir.path())?;
/// tier.state().put(b"gen:users", &7u64.to_le_bytes())?;
/// drop(tier);
/// let tier = DiskTier::open(dir.path())?;
/// assert_eq!(tier.state().get(b"gen:users").as_deref(), Some(&7u64.to_le_bytes()[..]));
/// assert!(!tier.state().was_lost());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DiskState {
    dir: Arc<Dir>,
    flush: FlushPolicy,
    map: RwLock<Map>,
    writer: Mutex<Writer>,
    lost: AtomicBool,
}

struct Writer {
    /// `None` when the file could not be rewritten at open (a full disk): every write tries
    /// again first, and fails until it can.
    file: Option<File>,
    /// Where the next record goes (the valid length of the file).
    len: u64,
    /// Bytes the live pairs take in a batch.
    live: u64,
    high_water: Option<u32>,
    dirty: bool,
    /// Do not try to compact again before the file is this long (after a failed attempt).
    compact_after: u64,
}

impl std::fmt::Debug for DiskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskState")
            .field("entries", &self.len())
            .field("was_lost", &self.was_lost())
            .finish_non_exhaustive()
    }
}

fn io(what: &'static str, dir: &Dir, e: std::io::Error) -> DiskError {
    DiskError::io(what, dir.join(STATE_FILE), e)
}

impl DiskState {
    /// Open (or create) the state file of `dir`. `segments_exist`: a missing file then means
    /// the state was lost.
    pub(crate) fn open(
        dir: Arc<Dir>,
        flush: FlushPolicy,
        segments_exist: bool,
    ) -> Result<(Self, StateReport), DiskError> {
        if let Err(e) = dir.remove(STATE_TMP) {
            tracing::warn!(error = %e, "disk tier: could not remove a leftover {STATE_TMP}");
        }
        let (file, parsed, mut report) = read(&dir)?;
        if file.is_none() && !segments_exist {
            report.problem = None; // a new directory: nothing to lose yet
        }
        let mut lost = parsed.lost;
        let problem = parsed.problem.clone();
        let file = match (file, &problem) {
            (Some(file), None) => Some(file),
            (Some(file), Some(p)) if p.torn => {
                // An unacknowledged write cut short: drop its bytes so that appends follow the
                // last valid record.
                file.set_len(parsed.valid_end).map_err(|e| io("truncate", &dir, e))?;
                Some(file)
            }
            (None, _) => {
                // Missing: lost when there is something to be suspect of. Nothing is replaced,
                // so the new file is written in place (synced per the policy).
                lost |= segments_exist;
                match create(&dir, lost, flush) {
                    Ok(file) => Some(file),
                    Err(e) => {
                        tracing::warn!(error = %e, "disk tier: could not create the state file; writes to the state fail until it can be");
                        None
                    }
                }
            }
            (found, _) => {
                // Damaged past what a crash can do: what was acknowledged may be gone.
                lost |= found.is_some();
                match rewrite(&dir, &parsed.map, lost, parsed.high_water) {
                    Ok(file) => Some(file),
                    Err(e) => {
                        // Not the open's failure: reads go on; writes retry the rewrite.
                        tracing::warn!(error = %e, "disk tier: could not rewrite the state file; writes to the state fail until it can be");
                        None
                    }
                }
            }
        };
        if lost && !parsed.lost {
            tracing::warn!(dir = %dir.path().display(), problem = ?report.problem, "disk tier: the state file was lost or damaged; what depends on it must treat the disk's entries as suspect");
        }
        report.lost = lost;
        let len = match &file {
            Some(f) => f.metadata().map_err(|e| io("stat", &dir, e))?.len(),
            None => 0,
        };
        let writer = Writer {
            len,
            file,
            live: parsed.live,
            high_water: parsed.high_water,
            dirty: false,
            compact_after: 0,
        };
        let state = Self {
            dir,
            flush,
            map: RwLock::new(parsed.map),
            writer: Mutex::new(writer),
            lost: AtomicBool::new(lost),
        };
        Ok((state, report))
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // Poison means a panic elsewhere while held; the writer's fields stay consistent (the
        // length moves only after a whole record is written).
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Every key and value (in no particular order).
    pub fn entries(&self) -> Vec<(Bytes, Bytes)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// How many keys the state holds.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when the state holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Set `key` to `value`; written (and synced per the flush policy) when it returns.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), DiskError> {
        self.write(&[(key, Some(value))])
    }

    /// Set several keys at once: all of them or, after a crash, none.
    pub fn put_many(&self, pairs: &[(&[u8], &[u8])]) -> Result<(), DiskError> {
        let ops: Vec<Op<'_>> = pairs.iter().map(|(k, v)| (*k, Some(*v))).collect();
        self.write(&ops)
    }

    /// Remove `key` (nothing is written when it is not there).
    pub fn remove(&self, key: &[u8]) -> Result<(), DiskError> {
        if self.get(key).is_none() {
            return Ok(());
        }
        self.write(&[(key, None)])
    }

    /// True when, at open, the directory held segments but the state file was missing, or it
    /// was damaged in a way that may have lost acknowledged writes (or an earlier open found
    /// that and [`clear_lost`](Self::clear_lost) was not called since). What was built on the
    /// state — e.g. which disk entries are still valid — should then be treated as suspect.
    pub fn was_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Say that the loss was taken into account (e.g. a suspect floor was recorded with
    /// [`put`](Self::put)): later opens no longer report it, unless the file is damaged again.
    pub fn clear_lost(&self) -> Result<(), DiskError> {
        let mut w = self.lock();
        if !self.was_lost() {
            return Ok(());
        }
        let mut rec = Vec::new();
        file::encode(&mut rec, file::FOUND, |_| {});
        self.append(&mut w, &rec)?;
        self.lost.store(false, Ordering::Release);
        Ok(())
    }

    /// The newest segment id the tier ever created, as recorded.
    pub(crate) fn high_water(&self) -> Option<u32> {
        self.lock().high_water
    }

    /// Record that segment `id` was created.
    pub(crate) fn note_segment(&self, id: u32) -> Result<(), DiskError> {
        let mut w = self.lock();
        if w.high_water.is_some_and(|h| h >= id) {
            return Ok(());
        }
        let mut rec = Vec::new();
        file::encode(&mut rec, file::SEGMENT, |b| b.extend_from_slice(&id.to_le_bytes()));
        self.append(&mut w, &rec)?;
        w.high_water = Some(id);
        Ok(())
    }

    /// `fdatasync` the file when written since the last sync.
    pub(crate) fn sync(&self) -> Result<(), DiskError> {
        let w = &mut *self.lock();
        crate::dir::sync_dirty(w.file.as_ref(), &mut w.dirty).map_err(|e| io("fsync", &self.dir, e))
    }

    /// Check, write and apply one batch.
    fn write(&self, ops: &[Op<'_>]) -> Result<(), DiskError> {
        for (k, v) in ops {
            if k.len() > MAX_STATE_KEY_LEN || v.is_some_and(|v| v.len() > MAX_STATE_VALUE_LEN) {
                return Err(DiskError::TooLarge(format!(
                    "state key of {} bytes with a value of {} bytes: at most {MAX_STATE_KEY_LEN} and {MAX_STATE_VALUE_LEN}",
                    k.len(),
                    v.map_or(0, <[u8]>::len)
                )));
            }
        }
        let mut w = self.lock();
        let mut next = Parsed { live: w.live, ..Parsed::default() };
        // What the batch does to the live size, applied to a scratch copy of the touched keys
        // (only writers change the map, and they hold the writer's lock).
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            for (k, _) in ops {
                if let Some((key, v)) = map.get_key_value(*k) {
                    next.map.insert(key.clone(), v.clone());
                }
            }
        }
        for (k, v) in ops {
            next.apply(k, *v);
        }
        if next.live > MAX_STATE_BYTES {
            return Err(DiskError::TooLarge(format!(
                "the state would hold {} bytes, at most {MAX_STATE_BYTES}",
                next.live
            )));
        }
        let mut rec = Vec::new();
        file::encode(&mut rec, file::BATCH, |b| {
            for (k, v) in ops {
                file::encode_pair(b, k, *v);
            }
        });
        self.append(&mut w, &rec)?;
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        for (k, v) in ops {
            match v {
                Some(v) => map.insert(Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)),
                None => map.remove(*k),
            };
        }
        w.live = next.live;
        drop(map);
        self.maybe_compact(&mut w);
        Ok(())
    }

    /// Append a record at the end of the valid part; undo a partial write.
    fn append(&self, w: &mut Writer, rec: &[u8]) -> Result<(), DiskError> {
        let file = match w.file.take() {
            Some(file) => file,
            None => {
                let map = self.map.read().unwrap_or_else(|e| e.into_inner());
                let file = rewrite(&self.dir, &map, self.was_lost(), w.high_water)?;
                w.len = file.metadata().map_err(|e| io("stat", &self.dir, e))?.len();
                file
            }
        };
        let always = self.flush == FlushPolicy::Always;
        let appended = append_at(&file, w.len, rec, always);
        if appended.is_ok() {
            w.len += rec.len() as u64;
        }
        // A sync that failed after the write leaves the record written, not synced.
        w.dirty = !always || appended.is_err();
        w.file = Some(file);
        appended.map_err(|e| io("append to", &self.dir, e))
    }

    /// Rewrite the file to its live size when it has grown several times past it.
    fn maybe_compact(&self, w: &mut Writer) {
        let live = w.live + FILE_HEADER_LEN as u64;
        if w.len < COMPACT_MIN || w.len < COMPACT_RATIO * live || w.len < w.compact_after {
            return;
        }
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        match rewrite(&self.dir, &map, self.was_lost(), w.high_water) {
            Ok(file) => {
                w.len = file.metadata().map(|m| m.len()).unwrap_or(w.len);
                w.file = Some(file);
                w.dirty = false;
                w.compact_after = 0;
            }
            Err(e) => {
                tracing::warn!(error = %e, "disk tier: could not compact the state file; appending to it");
                w.compact_after = w.len.saturating_mul(2);
            }
        }
    }
}

/// The state file of `dir`, what it holds, and the report of what was found. `None` for the
/// file when it is missing or too long to read (then `Parsed` says why).
fn read(dir: &Dir) -> Result<(Option<File>, Parsed, StateReport), DiskError> {
    let refuse = |problem: String| {
        DiskError::unsafe_path(
            dir.join(STATE_FILE),
            problem,
            "the state file must be a regular file: remove it",
        )
    };
    match dir.file_type(STATE_FILE).map_err(|e| io("stat", dir, e))? {
        None => {
            let report = StateReport { problem: Some("missing".into()), ..StateReport::default() };
            return Ok((None, Parsed::default(), report));
        }
        Some(FileType::RegularFile) => {}
        Some(FileType::Symlink) => {
            return Err(refuse("is a symbolic link, which the tier never follows".into()))
        }
        Some(t) => return Err(refuse(format!("is {}, not a regular file", describe(t)))),
    }
    let file = dir.open_or_create(STATE_FILE, "the state file must be a regular file")?;
    let (parsed, mut report) = parse_file(&file).map_err(|e| io("read", dir, e))?;
    report.present = true;
    Ok((Some(file), parsed, report))
}

/// Read and replay an open state file.
fn parse_file(file: &File) -> std::io::Result<(Parsed, StateReport)> {
    let len = file.metadata()?.len();
    let parsed = if len > MAX_FILE_BYTES {
        let problem = file::Problem {
            offset: 0,
            reason: format!("{len} bytes, longer than a state file can be ({MAX_FILE_BYTES})"),
            torn: false,
        };
        Parsed { problem: Some(problem), ..Parsed::default() }
    } else {
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        file::parse(crate::scan::read_at_most(file, 0, len)?.into())
    };
    let report = StateReport {
        present: true,
        entries: parsed.map.len() as u64,
        live_bytes: parsed.live,
        file_bytes: len,
        lost: parsed.lost,
        problem: parsed.problem.as_ref().map(|p| {
            let what = if p.torn { "an interrupted write (dropped)" } else { "damage" };
            format!("{what} at offset {}: {}", p.offset, p.reason)
        }),
        interrupted_write: parsed.problem.as_ref().is_some_and(|p| p.torn),
        newest_segment: parsed.high_water,
    };
    Ok((parsed, report))
}

/// Create a state file where there is none: empty, with the "lost" mark when `lost`.
fn create(dir: &Dir, lost: bool, flush: FlushPolicy) -> Result<File, DiskError> {
    let file = dir.create_file(STATE_FILE).map_err(|e| io("create", dir, e))?;
    let written = file.write_all_at(&file::image(&Map::default(), lost, None), 0).and_then(|()| {
        if flush == FlushPolicy::Always {
            file.sync_data()?;
            dir.sync()?;
        }
        Ok(())
    });
    if let Err(e) = written {
        let _ = dir.remove(STATE_FILE);
        return Err(io("write", dir, e));
    }
    Ok(file)
}

/// Write a new state file holding `map` and rename it over the old one (synced first, so that
/// a crash leaves the old file or the new one, whole). Returns the new file, open.
fn rewrite(dir: &Dir, map: &Map, lost: bool, high_water: Option<u32>) -> Result<File, DiskError> {
    dir.replace(STATE_TMP, STATE_FILE, &file::image(map, lost, high_water))
        .map_err(|e| io("write", dir, e))
}

/// What the state file of `dir` holds, read-only (for the inspector): `None` when there is no
/// state file; a problem (never an error) when it is not a regular file.
pub(crate) fn inspect(dir: &Dir) -> Option<StateReport> {
    match dir.open_file(STATE_FILE, false) {
        Err(crate::dir::OpenError::Missing) => None,
        Err(e) => Some(StateReport {
            present: true,
            problem: Some(format!("cannot be read: {e}")),
            ..StateReport::default()
        }),
        Ok(file) => Some(match parse_file(&file) {
            Ok((_, report)) => report,
            Err(e) => StateReport {
                present: true,
                problem: Some(format!("cannot be read: {e}")),
                ..StateReport::default()
            },
        }),
    }
}
