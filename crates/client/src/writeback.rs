//! Writing large files so that the final `fsync` does not stall.
//!
//! Linux starts writing dirty pages back only when a tenth of RAM is dirty or after 30 s, so
//! a gigabyte image written by a fast producer sits in the page cache until the closing
//! `fsync`, which then writes all of it while nothing else happens (≈ 1.7 s per GiB on the
//! benchmark machine's disk, see BENCHMARKS.md). [`WriteBehind`] flushes what has been
//! written so far (`fdatasync` on a second handle, on a helper thread) each time another
//! [`WINDOW`] is complete and the previous flush has finished, so the disk works while the
//! next window is downloaded, hashed and decrypted, and the `fsync` at the end only waits for
//! the last stretch. On a T-BOX it also keeps an image from filling RAM with dirty pages.
//! Pages stay cached for whoever reads the file next. Durability is unchanged: callers still
//! `fsync` ([`WriteBehind::sync_all`]) before they trust the file, and an error of any
//! intermediate flush is returned there.

use std::fs::File;
use std::io::Write;
use std::thread::JoinHandle;

/// Bytes after which a flush of what is written so far is started (if none is running).
pub const WINDOW: u64 = 8 * 1024 * 1024;

/// A file being written sequentially, flushed to disk in the background as it grows.
#[derive(Debug)]
pub struct WriteBehind {
    file: File,
    written: u64,
    flushed_at: u64,
    flushing: Option<JoinHandle<std::io::Result<()>>>,
    failed: Option<std::io::Error>,
    flushes: u32,
}

impl WriteBehind {
    /// Wraps `file`, whose next write lands at `offset` (0 for a new file, the current length
    /// when appending).
    pub fn new(file: File, offset: u64) -> Self {
        WriteBehind {
            file,
            written: offset,
            flushed_at: offset,
            flushing: None,
            failed: None,
            flushes: 0,
        }
    }

    /// Writes all of `data`; starts a background flush when a window is complete.
    pub fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all(data)?;
        self.written = self.written.saturating_add(data.len() as u64);
        if self.written.saturating_sub(self.flushed_at) >= WINDOW
            && self.flushing.as_ref().is_none_or(|h| h.is_finished())
        {
            self.reap();
            // Without a second handle or a thread, the final fsync simply does all the work.
            if let Ok(handle) = self.file.try_clone() {
                let spawned = std::thread::Builder::new()
                    .name("rampart-writeback".into())
                    .stack_size(64 * 1024)
                    .spawn(move || handle.sync_data());
                if let Ok(h) = spawned {
                    self.flushing = Some(h);
                    self.flushes += 1;
                }
            }
            self.flushed_at = self.written;
        }
        Ok(())
    }

    /// Waits for a running background flush and keeps its error, if any.
    fn reap(&mut self) {
        if let Some(h) = self.flushing.take() {
            let result = h
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("writeback thread failed")));
            if let Err(e) = result {
                self.failed.get_or_insert(e);
            }
        }
    }

    /// Truncates the file to zero length and starts over at offset 0.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.reap();
        self.file.set_len(0)?;
        self.written = 0;
        self.flushed_at = 0;
        Ok(())
    }

    /// Flushes everything to stable storage (`fsync`) and hands the file back; fails if this
    /// or any background flush failed.
    pub fn sync_all(mut self) -> std::io::Result<File> {
        self.reap();
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.file.sync_all()?;
        Ok(self.file)
    }

    /// Background flushes started so far.
    pub fn flushes(&self) -> u32 {
        self.flushes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn writes_everything_across_windows_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let data: Vec<u8> = (0..WINDOW * 3 + 4321).map(|i| (i % 251) as u8).collect();
        let mut w = WriteBehind::new(File::create(&path).unwrap(), 0);
        for chunk in data.chunks(64 * 1024 + 3) {
            w.write_all(chunk).unwrap();
        }
        assert!(w.flushes() >= 1, "at least one background flush");
        w.sync_all().unwrap();
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);

        let mut w = WriteBehind::new(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap(),
            data.len() as u64,
        );
        w.restart().unwrap();
        w.write_all(b"again").unwrap();
        w.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"again");
    }
}
