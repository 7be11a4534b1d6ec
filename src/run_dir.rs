//! The run directory's layout (documented in `docs/run-directory.md`) and atomic file writes: every file
//! is written under a temporary name in the same directory, synced, and renamed, so a crash never leaves
//! a half file that a reader could mistake for a whole one; the directory is then synced too, so the
//! rename itself survives a power loss.
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Paths inside one run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }

    pub fn run_json(&self) -> PathBuf {
        self.root.join("run.json")
    }

    pub fn config_toml(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.parquet")
    }

    pub fn rollouts_dir(&self) -> PathBuf {
        self.root.join("rollouts")
    }

    pub fn rollouts(&self, step: u64) -> PathBuf {
        self.rollouts_dir().join(format!("step-{step:06}.parquet"))
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.checkpoints_dir().join(checkpoint_name(step))
    }

    /// The file naming the latest complete checkpoint.
    pub fn latest(&self) -> PathBuf {
        self.checkpoints_dir().join("latest")
    }

    /// Where a `model.new_model` preset is created (once; a resumed run finds it there).
    pub fn initial_model(&self) -> PathBuf {
        self.root.join("initial-model")
    }

    /// The latest complete checkpoint's directory and step, if any.
    pub fn latest_checkpoint(&self) -> std::io::Result<Option<(PathBuf, u64)>> {
        let latest = self.latest();
        if !latest.exists() {
            return Ok(None);
        }
        let name = std::fs::read_to_string(&latest)?;
        let name = name.trim();
        let step = parse_checkpoint_name(name).ok_or_else(|| {
            std::io::Error::other(format!(
                "{} names {name:?}, not a checkpoint",
                latest.display()
            ))
        })?;
        Ok(Some((self.checkpoints_dir().join(name), step)))
    }

    /// Steps of the complete checkpoints on disk, ascending (temporary directories are not listed).
    pub fn checkpoint_steps(&self) -> std::io::Result<Vec<u64>> {
        let dir = self.checkpoints_dir();
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut steps: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_checkpoint_name(&e.file_name().to_string_lossy()))
            .collect();
        steps.sort_unstable();
        Ok(steps)
    }
}

pub fn checkpoint_name(step: u64) -> String {
    format!("step-{step:06}")
}

pub fn parse_checkpoint_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    (digits.len() >= 6 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The temporary sibling a file or directory is written to before the rename.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes a file through `write` under a temporary name, syncs it, renames it into place and syncs
/// the parent directory (without that last sync the rename can be lost on power failure even though the
/// file's data reached the disk).
pub fn write_atomic<T>(
    path: &Path,
    write: impl FnOnce(File) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent)?;
    let tmp = temp_path(path);
    let out = write(File::create(&tmp)?)?;
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(parent)?;
    Ok(out)
}

/// Syncs a directory, which makes the renames and creations in it durable. A filesystem that cannot
/// sync directories (fsync on a directory fails with EINVAL or is unsupported) is not an error; any
/// other failure is, and so is a directory that cannot be opened.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    match File::open(dir)?.sync_all() {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// [`write_atomic`] for bytes.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic(path, |mut f| f.write_all(bytes))
}

/// Removes temporary files and directories a killed run left behind (names from [`temp_path`]).
pub fn remove_stale_temps(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") {
            let path = entry.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_round_trip() {
        assert_eq!(checkpoint_name(50), "step-000050");
        assert_eq!(parse_checkpoint_name("step-000050"), Some(50));
        assert_eq!(parse_checkpoint_name(".step-000050.tmp-1"), None);
        assert_eq!(parse_checkpoint_name("latest"), None);
    }

    #[test]
    fn atomic_write_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b.txt");
        write_bytes_atomic(&p, b"hi").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hi");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
        std::fs::write(temp_path(&p), b"half").unwrap();
        remove_stale_temps(p.parent().unwrap()).unwrap();
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn directories_sync_and_a_missing_one_is_an_error() {
        // What can be checked without pulling the power: the directory sync runs on a real
        // directory (on tmpfs/ext4 it succeeds) and a directory that is not there is reported, not
        // skipped. Whether the rename then survives a power loss is not testable here.
        let dir = tempfile::tempdir().unwrap();
        sync_dir(dir.path()).unwrap();
        let err = sync_dir(&dir.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        // write_atomic ends with that sync: a write into a fresh nested directory succeeds.
        write_bytes_atomic(&dir.path().join("x/y/z.bin"), b"z").unwrap();
        assert_eq!(std::fs::read(dir.path().join("x/y/z.bin")).unwrap(), b"z");
    }
}
