//! The file-system calls [`WalStorage`](crate::WalStorage) makes, behind a trait, so that the
//! same code runs on the real disk ([`StdFs`]) and, with the `sim` feature, on the
//! simulator's crash-faithful disk (`flotilla_sim::fs::SimFs`).
//!
//! The interface is exactly what a segmented write-ahead log with atomic-rename snapshots
//! needs and no more: create (truncating) or open for appending, append, `set_len`,
//! `fsync`/`fdatasync`, read a file (whole, or streamed), rename, remove, create, list and
//! sync a directory, and ask what a path names (and how long a file is). Writes through a [`WritableFile`] go to the end of the file; the WAL never
//! writes anywhere else.
//!
//! [`StdFs`] is `std::fs`, call for call, with what the WAL did before this trait existed: a
//! zero-sized type whose methods inline to the same system calls.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

/// What a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
}

/// A file open for writing at its end.
pub trait WritableFile: io::Write + fmt::Debug {
    /// `fsync`: data and metadata. Not the file's directory entry.
    fn sync_all(&mut self) -> io::Result<()>;
    /// `fdatasync`: data and what is needed to read it back (the size).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Truncates (or extends with zeros) to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// The file-system calls the WAL makes. Errors are the `io::Error`s the calls return.
pub trait FileSystem: fmt::Debug {
    type File: WritableFile;
    type Reader: io::Read;

    /// Creates a file, or truncates an existing one, for writing (`File::create`).
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Opens an existing file for appending.
    fn open_append(&self, path: &Path) -> io::Result<Self::File>;
    /// The whole content of a file; `NotFound` if there is none.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// A file opened for reading from its start, to stream it; `NotFound` if there is none.
    fn open_read(&self, path: &Path) -> io::Result<Self::Reader>;
    /// The names in a directory (files and directories), in no particular order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<std::ffi::OsString>>;
    /// Renames `from` to `to` atomically, replacing a file at `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file; `NotFound` if there is none.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Creates one directory (its parent must exist).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// `fsync` of a directory: makes the creations, renames and removals in it durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// What `path` names, following symbolic links; `None` if nothing.
    fn kind(&self, path: &Path) -> io::Result<Option<EntryKind>>;
    /// Whether anything is at `path`, not following a symbolic link (a dangling one counts).
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// The length of a file in bytes; `NotFound` if there is none. By default it reads the
    /// file through; [`StdFs`] asks its metadata.
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        io::copy(&mut self.open_read(path)?, &mut io::sink())
    }
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

impl WritableFile for File {
    #[inline]
    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }

    #[inline]
    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    #[inline]
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

impl FileSystem for StdFs {
    type File = File;
    type Reader = File;

    #[inline]
    fn create(&self, path: &Path) -> io::Result<File> {
        File::create(path)
    }

    #[inline]
    fn open_append(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().append(true).open(path)
    }

    #[inline]
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    #[inline]
    fn open_read(&self, path: &Path) -> io::Result<File> {
        File::open(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<std::ffi::OsString>> {
        fs::read_dir(path)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect()
    }

    #[inline]
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    #[inline]
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    #[inline]
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        #[cfg(unix)]
        {
            File::open(path)?.sync_all()
        }
        #[cfg(not(unix))]
        {
            // Directories cannot be opened for syncing here; renames are journaled.
            let _ = path;
            Ok(())
        }
    }

    fn kind(&self, path: &Path) -> io::Result<Option<EntryKind>> {
        match fs::metadata(path) {
            Ok(meta) if meta.is_dir() => Ok(Some(EntryKind::Dir)),
            Ok(_) => Ok(Some(EntryKind::File)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        match fs::symlink_metadata(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    #[inline]
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        fs::metadata(path).map(|meta| meta.len())
    }
}

#[cfg(feature = "sim")]
mod sim {
    use super::*;
    use flotilla_sim::fs::{self as sim_fs, SimFile, SimFs};

    impl WritableFile for SimFile {
        fn sync_all(&mut self) -> io::Result<()> {
            SimFile::sync_all(self)
        }

        fn sync_data(&mut self) -> io::Result<()> {
            SimFile::sync_data(self)
        }

        fn set_len(&mut self, len: u64) -> io::Result<()> {
            SimFile::set_len(self, len)
        }
    }

    /// The simulator's file system: see `flotilla_sim::fs` for what a crash keeps.
    impl FileSystem for SimFs {
        type File = SimFile;
        /// The file's content at the moment it was opened.
        type Reader = io::Cursor<Vec<u8>>;

        fn create(&self, path: &Path) -> io::Result<SimFile> {
            SimFs::create(self, path)
        }

        fn open_append(&self, path: &Path) -> io::Result<SimFile> {
            SimFs::open_append(self, path)
        }

        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            SimFs::read(self, path)
        }

        fn open_read(&self, path: &Path) -> io::Result<io::Cursor<Vec<u8>>> {
            SimFs::read(self, path).map(io::Cursor::new)
        }

        fn list_dir(&self, path: &Path) -> io::Result<Vec<std::ffi::OsString>> {
            SimFs::list_dir(self, path)
        }

        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            SimFs::rename(self, from, to)
        }

        fn remove_file(&self, path: &Path) -> io::Result<()> {
            SimFs::remove_file(self, path)
        }

        fn create_dir(&self, path: &Path) -> io::Result<()> {
            SimFs::create_dir(self, path)
        }

        fn sync_dir(&self, path: &Path) -> io::Result<()> {
            SimFs::sync_dir(self, path)
        }

        fn kind(&self, path: &Path) -> io::Result<Option<EntryKind>> {
            Ok(SimFs::kind(self, path)?.map(|kind| match kind {
                sim_fs::EntryKind::File => EntryKind::File,
                sim_fs::EntryKind::Dir => EntryKind::Dir,
            }))
        }

        fn exists(&self, path: &Path) -> io::Result<bool> {
            Ok(SimFs::kind(self, path)?.is_some())
        }
    }
}
