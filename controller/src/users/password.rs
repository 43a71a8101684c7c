//! Password hashes: argon2id with the crate's default parameters (19 MiB of memory, 2 passes,
//! 1 lane: OWASP's minimum for argon2id), a random 16-byte salt each, kept as PHC strings so the
//! parameters travel with the hash and can be raised later without breaking old ones. Checking
//! compares in constant time (argon2's `verify_password`).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, SaltString};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};

use crate::error::{Error, Result};

/// The PHC string of `password`'s argon2id hash, with a fresh salt.
pub fn hash(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Other(format!("cannot hash the password: {e}")))
}

/// True when `password` is the one `phc` was made from. A hash that cannot be read is false.
pub fn verify(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(!h.contains("correct horse"));
        assert!(verify(&h, "correct horse"));
        assert!(!verify(&h, "correct horsf"));
        assert!(!verify(&h, ""));
        assert!(!verify("not a phc string", "correct horse"));
        let again = hash("correct horse").unwrap();
        assert_ne!(h, again, "each hash has its own salt");
    }
}
