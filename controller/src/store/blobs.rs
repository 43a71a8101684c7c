//! A content-addressed blob store: packages and droplets, named by the sha256 of their bytes.
//!
//! Blobs are written to a temporary file beside the store and renamed into place only once
//! complete (and, for packages, validated), so a reader never sees half a blob and a refused
//! upload leaves nothing behind.

use std::path::{Path, PathBuf};

use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
    tmp: PathBuf,
}

/// A blob that has been written but not yet committed. Dropping it deletes the file.
#[derive(Debug)]
pub struct PendingBlob {
    pub sha256: String,
    pub size: u64,
    file: tempfile::TempPath,
}

impl PendingBlob {
    pub fn path(&self) -> &Path {
        &self.file
    }
}

/// Why a streamed write stopped.
#[derive(Debug)]
pub enum WriteError {
    TooLarge { limit: u64 },
    Source(String),
    Io(std::io::Error),
}

impl BlobStore {
    pub fn open(data_dir: &Path) -> Result<BlobStore> {
        let root = data_dir.join("blobs");
        let tmp = data_dir.join("tmp");
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&tmp)?;
        // Leftovers from a controller killed mid-upload.
        for entry in std::fs::read_dir(&tmp)? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(BlobStore { root, tmp })
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    fn valid_sha(sha: &str) -> bool {
        sha.len() == 64
            && sha
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    }

    pub fn path(&self, sha: &str) -> Result<PathBuf> {
        if !Self::valid_sha(sha) {
            return Err(Error::bad_request(format!(
                "{sha:?} is not a sha256 digest"
            )));
        }
        Ok(self.root.join(&sha[..2]).join(sha))
    }

    pub fn exists(&self, sha: &str) -> bool {
        self.path(sha).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Streams `body` to a pending blob, hashing as it goes; stops at `limit` bytes.
    pub async fn write_stream<S, B, E>(
        &self,
        mut body: S,
        limit: u64,
    ) -> std::result::Result<PendingBlob, WriteError>
    where
        S: Stream<Item = std::result::Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let tmp = tempfile::NamedTempFile::new_in(&self.tmp).map_err(WriteError::Io)?;
        let (std_file, path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(std_file);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| WriteError::Source(e.to_string()))?;
            let chunk = chunk.as_ref();
            size += chunk.len() as u64;
            if size > limit {
                return Err(WriteError::TooLarge { limit });
            }
            hasher.update(chunk);
            file.write_all(chunk).await.map_err(WriteError::Io)?;
        }
        file.flush().await.map_err(WriteError::Io)?;
        file.sync_all().await.map_err(WriteError::Io)?;
        Ok(PendingBlob {
            sha256: hex::encode(hasher.finalize()),
            size,
            file: path,
        })
    }

    /// Copies a reader into a pending blob (blocking; call from a blocking task).
    pub fn write_reader(&self, reader: &mut impl std::io::Read) -> Result<PendingBlob> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.tmp)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            std::io::Write::write_all(&mut tmp, &buf[..n])?;
            size += n as u64;
        }
        tmp.as_file().sync_all()?;
        Ok(PendingBlob {
            sha256: hex::encode(hasher.finalize()),
            size,
            file: tmp.into_temp_path(),
        })
    }

    /// Moves a pending blob into the store. Idempotent: the same bytes are only stored once.
    pub fn commit(&self, blob: PendingBlob) -> Result<String> {
        let dest = self.path(&blob.sha256)?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if !dest.exists() {
            blob.file.persist(&dest).map_err(|e| Error::Io(e.error))?;
        }
        Ok(blob.sha256)
    }

    /// Every blob stored, with when it was last written.
    pub fn list(&self) -> Result<Vec<(String, std::time::SystemTime)>> {
        let mut out = Vec::new();
        for shard in std::fs::read_dir(&self.root)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(shard.path())? {
                let f = f?;
                let name = f.file_name().to_string_lossy().into_owned();
                if Self::valid_sha(&name) {
                    out.push((name, f.metadata()?.modified()?));
                }
            }
        }
        Ok(out)
    }

    pub fn delete(&self, sha: &str) -> Result<()> {
        match std::fs::remove_file(self.path(sha)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(
        parts: &[&'static [u8]],
    ) -> impl Stream<Item = Result<&'static [u8], String>> + Unpin {
        futures_util::stream::iter(parts.iter().map(|p| Ok(*p)).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn write_commit_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let blob = store
            .write_stream(chunks(&[b"hello ", b"world"]), 100)
            .await
            .unwrap();
        assert_eq!(blob.size, 11);
        // sha256("hello world")
        assert_eq!(
            blob.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        let sha = store.commit(blob).unwrap();
        assert!(store.exists(&sha));
        assert_eq!(
            std::fs::read(store.path(&sha).unwrap()).unwrap(),
            b"hello world"
        );

        let err = store
            .write_stream(chunks(&[b"0123456789"]), 5)
            .await
            .unwrap_err();
        assert!(matches!(err, WriteError::TooLarge { limit: 5 }));
        assert_eq!(
            std::fs::read_dir(store.tmp_dir()).unwrap().count(),
            0,
            "temp removed"
        );
        assert!(store.path("../etc/passwd").is_err());
    }
}
