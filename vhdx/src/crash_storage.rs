//! A storage for crash-injection tests: it lets the first N writes, size
//! changes and flushes through and fails everything after, and can then
//! give the bytes a disk might hold after such a crash (the durable state
//! plus a chosen subset, in order, of the changes since the last flush).
//! Used by this workspace's tests; public so that every crate's tests
//! share one implementation.

use crate::storage::Storage;
use std::io;
use std::sync::Mutex;

pub(crate) enum Undo {
    Write {
        offset: u64,
        old: Vec<u8>,
        new: Vec<u8>,
        old_len: usize,
    },
    SetLen {
        old_len: usize,
        old_tail: Vec<u8>,
        new_len: usize,
    },
}

#[derive(Default)]
pub(crate) struct State {
    current: Vec<u8>,
    /// Changes since the last flush, oldest first.
    unflushed: Vec<Undo>,
    ops: u64,
    crash_after: Option<u64>,
    crashed: bool,
}

/// Storage that stops after a number of writes/size changes/flushes.
#[derive(Default)]
pub struct CrashStorage(Mutex<State>);

fn dead() -> io::Error {
    io::Error::other("injected crash")
}

impl CrashStorage {
    /// Storage holding `bytes`, all of them durable.
    pub fn new(bytes: Vec<u8>) -> Self {
        CrashStorage(Mutex::new(State {
            current: bytes,
            ..State::default()
        }))
    }
    /// Changes made since the last flush.
    pub fn unflushed(&self) -> usize {
        self.0.lock().unwrap().unflushed.len()
    }
    /// True once the injected crash has happened.
    pub fn crashed(&self) -> bool {
        self.0.lock().unwrap().crashed
    }
    fn step(s: &mut State) -> io::Result<()> {
        if s.crashed {
            return Err(dead());
        }
        s.ops += 1;
        if s.crash_after.is_some_and(|n| s.ops > n) {
            s.crashed = true;
            return Err(dead());
        }
        Ok(())
    }
    /// Lets the next `n` operations through and fails every one after
    /// (`None`: never fails); counts operations from zero.
    pub fn arm(&self, n: Option<u64>) {
        let mut s = self.0.lock().unwrap();
        s.ops = 0;
        s.crash_after = n;
    }
    /// Writes, size changes and flushes seen since `arm`.
    pub fn ops(&self) -> u64 {
        self.0.lock().unwrap().ops
    }
    /// The bytes after a crash: durable state plus the unflushed changes
    /// that `keep` selects, in order.
    pub fn after_crash(&self, keep: &mut dyn FnMut(usize) -> bool) -> Vec<u8> {
        let s = self.0.lock().unwrap();
        let mut b = s.current.clone();
        for u in s.unflushed.iter().rev() {
            match u {
                Undo::Write {
                    offset,
                    old,
                    old_len,
                    ..
                } => {
                    let o = *offset as usize;
                    b[o..o + old.len()].copy_from_slice(old);
                    b.truncate(*old_len);
                }
                Undo::SetLen {
                    old_len, old_tail, ..
                } => {
                    b.truncate(*old_len - old_tail.len());
                    b.extend_from_slice(old_tail);
                    b.resize(*old_len, 0);
                }
            }
        }
        for (i, u) in s.unflushed.iter().enumerate() {
            if !keep(i) {
                continue;
            }
            match u {
                Undo::Write { offset, new, .. } => {
                    let o = *offset as usize;
                    if b.len() < o + new.len() {
                        b.resize(o + new.len(), 0);
                    }
                    b[o..o + new.len()].copy_from_slice(new);
                }
                Undo::SetLen { new_len, .. } => b.resize(*new_len, 0),
            }
        }
        b
    }
}

impl Storage for CrashStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.0.lock().unwrap();
        let o = offset as usize;
        let src = s
            .current
            .get(o..o + buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        Self::step(&mut s)?;
        let o = offset as usize;
        let old_len = s.current.len();
        if s.current.len() < o + buf.len() {
            s.current.resize(o + buf.len(), 0);
        }
        let old = s.current[o..o + buf.len()].to_vec();
        s.current[o..o + buf.len()].copy_from_slice(buf);
        s.unflushed.push(Undo::Write {
            offset,
            old,
            new: buf.to_vec(),
            old_len,
        });
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        Self::step(&mut s)?;
        s.unflushed.clear();
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.lock().unwrap().current.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        Self::step(&mut s)?;
        let old_len = s.current.len();
        let new_len = len as usize;
        let old_tail = if new_len < old_len {
            s.current[new_len..].to_vec()
        } else {
            vec![]
        };
        s.current.resize(new_len, 0);
        s.unflushed.push(Undo::SetLen {
            old_len,
            old_tail,
            new_len,
        });
        Ok(())
    }
}
