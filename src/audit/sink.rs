//! Where audit lines go, with blocking I/O (the writer runs it off the async workers):
//! standard output, or a file opened for appending, synced to disk after each batch,
//! and reopened when it is moved (logrotate) or on request (SIGHUP).

use crate::config::AuditSink;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Permissions of an audit file this process creates: records name callers and their
/// addresses, so other users of the machine may not read them.
const FILE_MODE: u32 = 0o640;

/// An open sink.
#[derive(Debug)]
pub enum Sink {
    /// Standard output, shared with the log lines (both write through std's locked
    /// `Stdout`, so lines never interleave).
    Stdout,
    /// A file.
    File(FileSink),
}

/// A file sink: the path, and the file open at it (if any).
#[derive(Debug)]
pub struct FileSink {
    /// `audit.sink`.
    path: PathBuf,
    /// The open file; `None` after a failure, until reopened.
    file: Option<Open>,
}

/// An open audit file.
#[derive(Debug)]
struct Open {
    /// Opened for appending (and reading its last byte).
    file: File,
    /// Its device and inode, to notice when the path names another file.
    identity: (u64, u64),
    /// The file ended without a newline when opened (a write cut short by a crash or a
    /// full disk): the next write starts a new line, so that fragment stays a fragment.
    torn: bool,
}

impl Sink {
    /// The sink `config` names, no file open yet (the first write opens it); `None` when
    /// the audit trail is off.
    pub fn closed(config: &AuditSink) -> Option<Self> {
        match config {
            AuditSink::Off => None,
            AuditSink::Stdout => Some(Self::Stdout),
            AuditSink::File(path) => Some(Self::File(FileSink {
                path: path.clone(),
                file: None,
            })),
        }
    }

    /// Opens the sink `config` names; `None` when the audit trail is off.
    pub fn open(config: &AuditSink) -> io::Result<Option<Self>> {
        let mut sink = Self::closed(config);
        if let Some(Self::File(file)) = &mut sink {
            file.reopen()?;
        }
        Ok(sink)
    }

    /// Writes `lines` (whole records, each ending in a newline) and makes them durable
    /// as far as this sink can: a file is synced to disk (`fdatasync`), standard output
    /// is flushed to whatever reads it. A failed file is reopened first.
    pub fn write(&mut self, lines: &[u8]) -> io::Result<()> {
        match self {
            Self::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(lines)?;
                out.flush()
            }
            Self::File(sink) => sink.write(lines),
        }
    }

    /// Reopens a file sink (SIGHUP, or a move noticed); `Ok(true)` when it did.
    pub fn reopen(&mut self) -> io::Result<bool> {
        match self {
            Self::Stdout => Ok(false),
            Self::File(sink) => sink.reopen().map(|()| true),
        }
    }

    /// Reopens a file sink whose path no longer names the open file (moved away or
    /// deleted), or that has no file open; `Ok(true)` when it did.
    pub fn reopen_if_moved(&mut self) -> io::Result<bool> {
        match self {
            Self::File(sink) if sink.moved() => sink.reopen().map(|()| true),
            _ => Ok(false),
        }
    }

    /// Whether the sink can be written to now, for a sink that failed: standard output
    /// is flushed; a file is reopened, and one byte is written, synced and removed in a
    /// probe file beside it (`.<name>.probe`), which fails like the audit file would on
    /// a full disk or a read-only filesystem, without a stray line in the trail. A
    /// directory this process may not create files in skips that byte.
    pub fn probe(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout => io::stdout().lock().flush(),
            Self::File(sink) => {
                sink.reopen()?;
                match sink.write_probe() {
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
                    result => result,
                }
            }
        }
    }

    /// The file's path, for logs (`None` for standard output).
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Stdout => None,
            Self::File(sink) => Some(&sink.path),
        }
    }
}

impl FileSink {
    fn write(&mut self, lines: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            self.reopen()?;
        }
        let Some(open) = &mut self.file else {
            return Err(io::Error::other("the audit file is not open"));
        };
        let result = (|| {
            if open.torn {
                open.file.write_all(b"\n")?;
                open.torn = false;
            }
            open.file.write_all(lines)?;
            open.file.sync_data()
        })();
        if result.is_err() {
            // Whatever went wrong (a full disk, a deleted directory, an I/O error), the
            // next attempt starts from a fresh open of the path.
            self.file = None;
        }
        result
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.file = None;
        let existed = self.path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(FILE_MODE)
            .open(&self.path)?;
        let metadata = file.metadata()?;
        let mut last = [0u8; 1];
        let torn = metadata.len() > 0
            && file.read_exact_at(&mut last, metadata.len() - 1).is_ok()
            && last[0] != b'\n';
        if !existed {
            // A new file's name is durable only once its directory is synced.
            let dir = match self.path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            File::open(dir)?.sync_all()?;
        }
        self.file = Some(Open {
            file,
            identity: (metadata.dev(), metadata.ino()),
            torn,
        });
        Ok(())
    }

    fn write_probe(&self) -> io::Result<()> {
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let probe = self.path.with_file_name(format!(".{name}.probe"));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(FILE_MODE)
                .open(&probe)?;
            file.write_all(b"\n")?;
            file.sync_data()
        })();
        let _ = std::fs::remove_file(&probe);
        written
    }

    /// True when no file is open, or the path names another file or none.
    fn moved(&self) -> bool {
        let Some(open) = &self.file else {
            return true;
        };
        match std::fs::metadata(&self.path) {
            Ok(now) => (now.dev(), now.ino()) != open.identity,
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("orga-proxy-sink-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("audit.log")
    }

    #[test]
    fn a_torn_last_line_is_ended_before_the_next_record() {
        let path = temp_path("torn");
        std::fs::write(&path, "{\"audit\":\"credential\",\"outc").unwrap();
        let mut sink = Sink::open(&AuditSink::File(path.clone())).unwrap().unwrap();
        sink.write(b"{\"n\":1}\n").unwrap();
        sink.write(b"{\"n\":2}\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\"audit\":\"credential\",\"outc\n{\"n\":1}\n{\"n\":2}\n"
        );
    }

    #[test]
    fn a_moved_file_is_noticed_and_a_new_one_opened_at_the_path() {
        let path = temp_path("moved");
        let mut sink = Sink::open(&AuditSink::File(path.clone())).unwrap().unwrap();
        sink.write(b"{\"n\":1}\n").unwrap();
        assert!(!sink.reopen_if_moved().unwrap());
        let rotated = path.with_extension("log.1");
        std::fs::rename(&path, &rotated).unwrap();
        sink.write(b"{\"n\":2}\n").unwrap();
        assert!(sink.reopen_if_moved().unwrap());
        sink.write(b"{\"n\":3}\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":3}\n");
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode & 0o007, 0, "not readable by others: {mode:o}");
    }
}
