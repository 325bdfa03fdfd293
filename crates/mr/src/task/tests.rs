use std::os::unix::fs::MetadataExt;

use super::format::*;
use super::map::*;
use super::*;

/// An intermediate file whose segment `r` holds the pair `(k{r}, v{r})`, written under a
/// temporary name in `dir`; returns it and its size.
fn intermediate_file(dir: &Path, n_reduce: usize) -> (tempfile::NamedTempFile, u64) {
    let mut bytes = Vec::new();
    let mut index = Vec::new();
    for r in 0..n_reduce {
        let mut writer = RecordWriter::new(Vec::new()).unwrap();
        writer
            .write(format!("k{r}").as_bytes(), format!("v{r}").as_bytes())
            .unwrap();
        let (segment, len) = writer.finish().unwrap();
        index.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        index.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&segment);
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&index);
    crc.update(&(n_reduce as u64).to_le_bytes());
    bytes.extend_from_slice(&index);
    bytes.extend_from_slice(&crc.finalize().to_le_bytes());
    bytes.extend_from_slice(&(n_reduce as u64).to_le_bytes());
    bytes.extend_from_slice(&INDEX_MAGIC);
    let temp = tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}map-0-"))
        .tempfile_in(dir)
        .unwrap();
    std::fs::write(temp.path(), &bytes).unwrap();
    (temp, bytes.len() as u64)
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(TEMP_PREFIX))
        .collect()
}

/// Publishes a 3-partition file with `link`; checks every name reads its own pair and
/// returns the names' inodes.
fn publish_with(link: impl Fn(&Path, &Path) -> io::Result<()>) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (0..3)
        .map(|r| intermediate_path(dir.path(), 0, 0, r))
        .collect();
    for path in &paths {
        std::fs::write(path, "an older file, to be replaced").unwrap();
    }
    let (temp, size) = intermediate_file(dir.path(), 3);
    let prefix = format!("{TEMP_PREFIX}map-0-");
    publish(dir.path(), &prefix, temp, size, &paths, link).unwrap();
    for (r, path) in paths.iter().enumerate() {
        assert_eq!(std::fs::metadata(path).unwrap().len(), size);
        assert_eq!(
            read_intermediate(dir.path(), 0, 0, r).unwrap(),
            [(format!("k{r}"), format!("v{r}"))]
        );
    }
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    paths
        .iter()
        .map(|path| std::fs::metadata(path).unwrap().ino())
        .collect()
}

#[test]
fn publishing_makes_hard_links() {
    let inodes = publish_with(|from, to| std::fs::hard_link(from, to));
    assert!(inodes.iter().all(|&i| i == inodes[0]), "{inodes:?}");
}

#[test]
fn without_hard_links_every_name_gets_a_copy() {
    let inodes = publish_with(|_, _| Err(io::ErrorKind::Unsupported.into()));
    assert!(
        inodes[0] != inodes[1] && inodes[1] != inodes[2] && inodes[0] != inodes[2],
        "{inodes:?}"
    );
    // Linking works once, then fails: the rest are copies.
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let inodes = publish_with(|from, to| {
        if calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
            std::fs::hard_link(from, to)
        } else {
            Err(io::Error::from_raw_os_error(1)) // EPERM
        }
    });
    assert_eq!(inodes[0], inodes[2], "{inodes:?}");
    assert_ne!(inodes[0], inodes[1], "{inodes:?}");
}
