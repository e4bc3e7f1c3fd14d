//! Which files of a directory are its segments: named exactly `{id:08x}.seg`, a regular file
//! (never followed through a link, never a FIFO or device opened), with a valid header naming
//! that id, among the run of ids a live tier can hold. Everything else named like a segment is
//! a stray: skipped, set aside, or (a segment whose creation a crash cut short) deleted. A stray
//! never costs a valid segment, never stops an open and never uses up the id space.

use std::fs::File;

use crate::config::{MAX_ID_SPAN, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE};
use crate::dir::{parse_segment_name, Dir, OpenError, SEGMENT_SUFFIX};
use crate::error::DiskError;
use crate::format::{parse_segment_header, SegmentHeader, RECORD_ALIGN, SEGMENT_HEADER_LEN};
use crate::scan::read_at_most;

/// A segment file with a valid header.
pub(crate) struct Candidate {
    pub id: u32,
    pub file: File,
    /// The file's length when opened.
    pub len: u64,
    pub header: SegmentHeader,
}

impl Candidate {
    /// The size its header names.
    pub fn size(&self) -> u64 {
        u64::from(self.header.size)
    }
    /// How far it can hold records: its length or its size, the smaller.
    pub fn limit(&self) -> u64 {
        self.len.min(self.size())
    }
}

/// What to do with a stray.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Not a regular file (or not readable): leave it, report it.
    Skip,
    /// A regular file that is not a valid segment of this directory: rename it out of the way.
    SetAside,
    /// The newest file, all zeros: a crash cut its creation short. Delete it (not damage).
    Unborn,
}

/// A file named like a segment that is not one.
#[derive(Debug, Clone)]
pub(crate) struct Stray {
    pub name: String,
    pub id: u32,
    pub reason: String,
    pub action: Action,
}

/// The segments of a directory and its strays.
pub(crate) struct Survey {
    /// Valid segments, in id order.
    pub segments: Vec<Candidate>,
    pub strays: Vec<Stray>,
}

/// Look at every file of `dir` named like a segment. `high_water` is the newest segment id the
/// state file says was ever created (a zeroed file at or below it is damage, not a crash).
pub(crate) fn survey(dir: &Dir, high_water: Option<u32>) -> Result<Survey, DiskError> {
    let mut named = Vec::new();
    let mut strays = Vec::new();
    for name in dir.names()? {
        match parse_segment_name(&name) {
            Some(id) => named.push((id, name)),
            None if name.ends_with(SEGMENT_SUFFIX) => {
                let reason = "named like a segment, but not `{id:08x}.seg`: ignored".into();
                strays.push(Stray { name, id: u32::MAX, reason, action: Action::Skip });
            }
            None => {}
        }
    }
    named.sort_unstable();
    let mut segments = Vec::new();
    let mut zeroed = Vec::new();
    for (id, name) in named {
        let stray = |reason: String, action| Stray { name: name.clone(), id, reason, action };
        let file = match dir.open_file(&name, false) {
            Ok(f) => f,
            Err(OpenError::Missing) => {
                // Reclaimed by a live writer since the listing (the inspector does not hold the
                // lock). Reclaim goes oldest first, so the older ones are going too.
                segments.clear();
                continue;
            }
            Err(e @ OpenError::NotRegular(_)) => {
                strays.push(stray(format!("{e}: skipped"), Action::Skip));
                continue;
            }
            Err(OpenError::Io(e)) => {
                strays.push(stray(format!("cannot be opened ({e}): skipped"), Action::Skip));
                continue;
            }
        };
        let (len, head) = match file
            .metadata()
            .and_then(|m| Ok((m.len(), read_at_most(&file, 0, SEGMENT_HEADER_LEN)?)))
        {
            Ok(x) => x,
            Err(e) => {
                strays.push(stray(format!("cannot be read ({e}): skipped"), Action::Skip));
                continue;
            }
        };
        if head.iter().all(|b| *b == 0) {
            zeroed.push((id, name.clone()));
            continue;
        }
        let header = match parse_segment_header(&head) {
            Ok(h) if h.id != id => Err(format!("its header names segment {:08x}", h.id)),
            Ok(h) if !valid_size(h.size) => Err(format!("its header names a size of {}", h.size)),
            other => other,
        };
        match header {
            Ok(header) => segments.push(Candidate { id, file, len, header }),
            Err(reason) => {
                strays.push(stray(format!("not a valid segment: {reason}"), Action::SetAside))
            }
        }
    }
    let far = keep_closest_run(&mut segments);
    let newest = segments.last().map(|c| c.id);
    for c in far {
        let reason = format!(
            "a valid segment, but far from the others (the newest is {:08x}): set aside",
            newest.unwrap_or(0)
        );
        strays.push(Stray {
            name: crate::dir::segment_file_name(c.id),
            id: c.id,
            reason,
            action: Action::SetAside,
        });
    }
    let known = match (newest, high_water) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    for (id, name) in zeroed {
        if known.is_none_or(|k| id > k) {
            let reason = "all zeros, the newest file: its creation was cut short".into();
            strays.push(Stray { name, id, reason, action: Action::Unborn });
        } else {
            let reason = "not a valid segment: no header (zeros or empty)".into();
            strays.push(Stray { name, id, reason, action: Action::SetAside });
        }
    }
    strays.sort_by(|a, b| (a.id, &a.name).cmp(&(b.id, &b.name)));
    Ok(Survey { segments, strays })
}

fn valid_size(size: u32) -> bool {
    let size = u64::from(size);
    (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&size)
        && size.is_multiple_of(RECORD_ALIGN as u64)
}

/// Keep the run of ids spanning fewer than [`MAX_ID_SPAN`] that holds the most segments (the
/// newest such run on a tie); return the others.
fn keep_closest_run(segments: &mut Vec<Candidate>) -> Vec<Candidate> {
    let (mut best, mut best_len, mut start) = (0usize, 0usize, 0usize);
    for end in 0..segments.len() {
        while segments[end].id - segments[start].id >= MAX_ID_SPAN {
            start += 1;
        }
        if end + 1 - start >= best_len {
            (best, best_len) = (start, end + 1 - start);
        }
    }
    let mut kept = std::mem::take(segments);
    let after = kept.split_off((best + best_len).min(kept.len()));
    let mut far: Vec<Candidate> = kept.drain(..best).collect();
    far.extend(after);
    *segments = kept;
    far
}
