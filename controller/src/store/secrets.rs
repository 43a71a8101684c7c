//! Secrets sealed at rest: broker passwords, the credentials brokers give (bindings, service
//! keys), user-provided services' credentials, and the apps' and revisions' env and
//! `VCAP_SERVICES` (`Store::app_bytes`) are kept encrypted with XChaCha20-Poly1305 under a random
//! 256-bit key in the data dir (`secrets.key`, mode 0600, made at first use). A sealed value is
//! `v1:` and the base64 of a random 24-byte nonce followed by the ciphertext; the key is never
//! logged or shown.
//!
//! The key beside the store protects the store's files (a copied database, a backup, a log of
//! sled's pages) rather than a machine whose data dir is read whole.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

use crate::error::{Error, Result};

const PREFIX: &str = "v1:";
const NONCE_LEN: usize = 24;
/// The key file's name in the data dir.
pub const KEY_FILE: &str = "secrets.key";

pub struct Secrets {
    path: PathBuf,
    cipher: Mutex<Option<XChaCha20Poly1305>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").field("path", &self.path).finish()
    }
}

impl Secrets {
    /// Secrets whose key is (or will be) the file `path`.
    pub fn at(path: &Path) -> Secrets {
        Secrets {
            path: path.to_path_buf(),
            cipher: Mutex::new(None),
        }
    }

    /// The cipher, reading the key file or making it (0600) the first time.
    fn cipher(&self) -> Result<XChaCha20Poly1305> {
        let mut guard = self
            .cipher
            .lock()
            .map_err(|_| Error::Other("secrets lock poisoned".into()))?;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let key = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.make_key()?,
            Err(e) => return Err(e.into()),
        };
        if key.len() != 32 {
            return Err(Error::Other(format!(
                "{} holds {} bytes, not a 32-byte key",
                self.path.display(),
                key.len()
            )));
        }
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&key));
        *guard = Some(cipher.clone());
        Ok(cipher)
    }

    fn make_key(&self) -> Result<Vec<u8>> {
        use std::os::unix::fs::OpenOptionsExt;
        let key = XChaCha20Poly1305::generate_key(&mut OsRng).to_vec();
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&key)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        tracing::info!(path = %self.path.display(), "made the secrets key");
        Ok(key)
    }

    pub fn seal(&self, plain: &[u8]) -> Result<String> {
        let cipher = self.cipher()?;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = cipher
            .encrypt(&nonce, plain)
            .map_err(|_| Error::Other("cannot seal a secret".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    pub fn open(&self, sealed: &str) -> Result<Vec<u8>> {
        let bad = || Error::Other("a sealed secret is damaged or its key changed".into());
        let b64 = sealed.strip_prefix(PREFIX).ok_or_else(bad)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| bad())?;
        if bytes.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        self.cipher()?
            .decrypt(XNonce::from_slice(nonce), ct)
            .map_err(|_| bad())
    }

    /// A JSON value sealed.
    pub fn seal_json<T: serde::Serialize>(&self, v: &T) -> Result<String> {
        self.seal(&serde_json::to_vec(v)?)
    }

    pub fn open_json<T: serde::de::DeserializeOwned>(&self, sealed: &str) -> Result<T> {
        Ok(serde_json::from_slice(&self.open(sealed)?)?)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn sealed_values_open_with_the_key_made_at_first_use_and_not_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let s = Secrets::at(&path);
        assert!(!path.exists(), "no key before first use");
        let sealed = s.seal(b"hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Another handle on the same key file opens it; each seal has its own nonce.
        let again = Secrets::at(&path);
        assert_eq!(again.open(&sealed).unwrap(), b"hunter2");
        assert_ne!(s.seal(b"hunter2").unwrap(), sealed);
        // Another key does not, nor does a damaged value.
        let other = Secrets::at(&dir.path().join("other.key"));
        assert!(other.open(&sealed).is_err());
        let mut damaged = sealed.clone();
        damaged.pop();
        damaged.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(s.open(&damaged).is_err());
    }
}
