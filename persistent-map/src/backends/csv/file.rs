//! The CSV file itself: reading its records, encoding one record as 0.1.3 wrote it, and
//! replacing the whole file durably.
//!
//! persistent-map 0.1.3 wrote each entry with the `csv` crate's serde support and no header
//! row: `serialize((key.to_string(), value))`, so a record is the key's text followed by the
//! value's fields (one field for a number or a string, one per field for a struct). Reading
//! and writing through the same crate and settings keeps those files byte for byte.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use csv::{ReaderBuilder, StringRecord, WriterBuilder};
use serde::Serialize;

use crate::{PersistentError, Result};

/// A record of the file, and the line it starts on (from 1).
pub(super) struct Line {
    pub(super) number: u64,
    pub(super) record: StringRecord,
}

/// Every record of the file at `path`, in order; a missing file has none.
///
/// Records may differ in their number of fields (0.1.3 allowed values of varying shape); each
/// is checked against the value type when it is decoded.
pub(super) fn read(path: &Path) -> Result<Vec<Line>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(csv_error(path, None, format!("cannot be read: {error}"))),
    };
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(io::BufReader::new(file));
    let mut lines = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|error| {
            let line = error.position().map(csv::Position::line);
            csv_error(path, line, format!("is not CSV: {}", describe(&error)))
        })?;
        let number = record.position().map_or(0, csv::Position::line);
        lines.push(Line { number, record });
    }
    Ok(lines)
}

/// The records of the file, one per key text (a later record of a key replaces an earlier
/// one, as 0.1.3, which appended every save, read them), each encoded as it will be written.
pub(super) fn rows_of(path: &Path, lines: &[Line]) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut rows = BTreeMap::new();
    for line in lines {
        let key = line.record.get(0).unwrap_or_default().to_owned();
        let mut writer = writer();
        writer.write_record(&line.record).map_err(|error| {
            csv_error(
                path,
                Some(line.number),
                format!("cannot be re-encoded: {error}"),
            )
        })?;
        rows.insert(key, finish(path, writer)?);
    }
    Ok(rows)
}

/// The record of `value` under the key text `key`, as 0.1.3 wrote it, line end included.
pub(super) fn encode<V: Serialize>(path: &Path, key: &str, value: &V) -> Result<Vec<u8>> {
    let mut writer = writer();
    writer.serialize((key, value)).map_err(|error| {
        csv_error(
            path,
            None,
            format!(
                "value of key {key:?} cannot be stored: {}",
                describe(&error)
            ),
        )
    })?;
    finish(path, writer)
}

/// How many fields the one record in `encoded` has.
pub(super) fn field_count(encoded: &[u8]) -> usize {
    let mut record = csv::ByteRecord::new();
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(encoded);
    match reader.read_byte_record(&mut record) {
        Ok(true) => record.len(),
        Ok(false) | Err(_) => 0,
    }
}

fn writer() -> csv::Writer<Vec<u8>> {
    WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new())
}

fn finish(path: &Path, writer: csv::Writer<Vec<u8>>) -> Result<Vec<u8>> {
    writer.into_inner().map_err(|error| {
        csv_error(
            path,
            None,
            format!("cannot encode a record: {}", error.error()),
        )
    })
}

/// Replaces the file at `path` with `contents`, durably and atomically: the contents go to a
/// temporary file in the same directory, which is synced, renamed over `path`, and the
/// directory synced, so a crash at any point leaves the old file or the new one, whole.
pub(super) fn replace(path: &Path, contents: &[u8]) -> Result<()> {
    let written = (|| -> io::Result<()> {
        let directory = directory_of(path);
        fs::create_dir_all(&directory)?;
        let temporary = temporary_path(path);
        let mut file = File::create(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temporary, path)?;
        sync_directory(&directory)
    })();
    written.map_err(|error| csv_error(path, None, format!("cannot be written: {error}")))
}

fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `.name.tmp` beside the file: same directory, so the rename cannot cross file systems.
fn temporary_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".tmp");
    directory_of(path).join(name)
}

/// Makes the rename itself durable; only Unix can open a directory to sync it.
#[cfg(unix)]
fn sync_directory(directory: &Path) -> io::Result<()> {
    File::open(directory)?.sync_all()
}

#[cfg(not(unix))]
fn sync_directory(_directory: &Path) -> io::Result<()> {
    Ok(())
}

pub(super) fn csv_error(path: &Path, line: Option<u64>, reason: String) -> PersistentError {
    PersistentError::Csv {
        path: path.to_path_buf(),
        line,
        reason,
    }
}

/// The csv crate's error without the position it prints, which the caller reports as a line.
pub(super) fn describe(error: &csv::Error) -> String {
    match error.kind() {
        csv::ErrorKind::Deserialize { err, .. } => err.to_string(),
        csv::ErrorKind::Utf8 { err, .. } => format!("invalid UTF-8 in field {}", err.field() + 1),
        _ => error.to_string(),
    }
}
