//! Package validation and repacking.
//!
//! An uploaded package is a gzipped tar from an untrusted client. Before anything stages it, every
//! entry is checked: no absolute paths, no `..`, no symlink leading out of the app, no hardlinks,
//! no device files or FIFOs, and a bound on the extracted size. The same pass writes a clean tar
//! (entries under a prefix, owned by the stack's unprivileged user, modes normalised to at least
//! 0600) that is what a staging container receives, so nothing unchecked ever reaches Docker.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use pier_api::ErrorCode;

use crate::error::{Error, Result};

/// uid and gid of `vcap` in the stack image.
pub const VCAP_UID: u64 = 2000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSummary {
    pub entries: u64,
    pub extracted_bytes: u64,
}

fn refuse(message: String) -> Error {
    Error::api(ErrorCode::InvalidPackage, message)
}

/// Normalises an entry path: relative, no `..`, no root. Returns `None` for the root itself.
fn clean_path(raw: &Path) -> Result<Option<PathBuf>> {
    let shown = raw.display();
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(refuse(format!(
                    "package entry {shown:?} contains '..'; paths must stay inside the app"
                )))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(format!(
                    "package entry {shown:?} is an absolute path; paths must be relative to the app"
                )))
            }
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

/// True when a symlink at `entry` pointing to `target` stays inside the root.
fn link_stays_inside(entry: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = entry.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Checks a gzipped tar and writes a clean tar of it to `out` with every path under `prefix`.
/// Pass `std::io::sink()` to only check.
pub fn repack<R: Read, W: Write>(
    gz: R,
    out: W,
    prefix: &str,
    limits: Limits,
) -> Result<PackageSummary> {
    let mut archive = tar::Archive::new(GzDecoder::new(gz));
    let entries = archive
        .entries()
        .map_err(|e| refuse(format!("the package is not a gzipped tar: {e}")))?;
    let mut r = Repacker {
        builder: tar::Builder::new(out),
        prefix: Path::new(prefix).to_path_buf(),
        limits,
        dirs: std::collections::HashSet::new(),
        links: std::collections::HashMap::new(),
        written: 0,
        summary: PackageSummary {
            entries: 0,
            extracted_bytes: 0,
        },
    };
    if !r.prefix.as_os_str().is_empty() {
        let mut h = dir_header();
        r.builder.append_data(&mut h, &r.prefix, std::io::empty())?;
    }
    for entry in entries {
        let mut entry =
            entry.map_err(|e| refuse(format!("the package is not a valid gzipped tar: {e}")))?;
        r.entry(&mut entry)?;
    }
    r.check_links()?;
    r.builder.finish()?;
    Ok(r.summary)
}

/// What a package may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Total size of its files once extracted, in bytes.
    pub max_extracted_bytes: u64,
    /// Entries (files, folders, links, and the parent folders written for them).
    pub max_entries: u64,
}

/// One pass of [`repack`]: what it has written so far.
struct Repacker<W: Write> {
    builder: tar::Builder<W>,
    prefix: PathBuf,
    limits: Limits,
    /// Directories written: Docker creates missing parents as root, so every parent is written,
    /// once, owned by vcap.
    dirs: std::collections::HashSet<PathBuf>,
    /// Symlinks written (path → target): no entry may be written through one, and every target
    /// is resolved through all of them once the whole package is read.
    links: std::collections::HashMap<PathBuf, PathBuf>,
    /// Entries written so far, parent folders included (bounded by `limits.max_entries`).
    written: u64,
    summary: PackageSummary,
}

impl<W: Write> Repacker<W> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry
            .path()
            .map_err(|e| refuse(format!("package entry has an unreadable path: {e}")))?
            .into_owned();
        let kind = entry.header().entry_type();
        let shown = raw.display().to_string();
        let Some(path) = clean_path(&raw)? else {
            return Ok(());
        };
        if let Some(link) = path
            .ancestors()
            .skip(1)
            .find(|a| self.links.contains_key(*a))
        {
            return Err(refuse(format!(
                "package entry {shown:?} is inside the symlink {:?}; entries must not be \
                 written through links",
                link.display().to_string()
            )));
        }
        if self.links.contains_key(&path)
            || (kind == tar::EntryType::Symlink && self.dirs.contains(&path))
        {
            return Err(refuse(format!(
                "package entry {shown:?} replaces a symlink or folder of the same name"
            )));
        }
        self.parents(&path)?;
        let dest = self.prefix.join(&path);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.file(entry, &dest, &shown, mode)?
            }
            tar::EntryType::Directory => {
                if !self.dirs.insert(path.clone()) {
                    return Ok(());
                }
                let mut h = dir_header();
                h.set_mode(mode | 0o700);
                self.builder.append_data(&mut h, &dest, std::io::empty())?;
            }
            tar::EntryType::Symlink => self.symlink(entry, &path, &dest, &shown)?,
            // pax/GNU extension headers are consumed by the tar crate.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => return Ok(()),
            other => return Err(refuse_kind(&shown, other)),
        }
        self.count_entry()
    }

    fn count_entry(&mut self) -> Result<()> {
        self.summary.entries += 1;
        self.count_written()
    }

    /// Counts an entry written (the package's own, or a parent folder written for one).
    fn count_written(&mut self) -> Result<()> {
        self.written += 1;
        let max = self.limits.max_entries;
        if self.written > max {
            return Err(Error::api(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the package has more than {max} entries (files, folders and links); leave \
                     files out with .cfignore, or raise the controller's --max-package-entries"
                ),
            ));
        }
        Ok(())
    }

    /// Every symlink's target, resolved through every symlink of the package (as the kernel
    /// would once all are extracted), stays inside the app.
    fn check_links(&self) -> Result<()> {
        for (path, target) in &self.links {
            if let Err(why) = resolve_inside(&self.links, path, target) {
                return Err(refuse(format!(
                    "symlink {:?} points outside the app (to {:?}, through other links: {why})",
                    path.display().to_string(),
                    target.display().to_string()
                )));
            }
        }
        Ok(())
    }

    fn parents(&mut self, path: &Path) -> Result<()> {
        let parents: Vec<&Path> = path.ancestors().skip(1).collect();
        for parent in parents.into_iter().rev() {
            if !parent.as_os_str().is_empty() && self.dirs.insert(parent.to_path_buf()) {
                let mut h = dir_header();
                self.builder
                    .append_data(&mut h, self.prefix.join(parent), std::io::empty())?;
                self.count_written()?;
            }
        }
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        dest: &Path,
        shown: &str,
        mode: u32,
    ) -> Result<()> {
        let size = entry.size();
        self.summary.extracted_bytes += size;
        let max = self.limits.max_extracted_bytes;
        if self.summary.extracted_bytes > max {
            return Err(Error::api(
                ErrorCode::PayloadTooLarge,
                format!("the package extracts to more than {max} bytes (at entry {shown:?})"),
            ));
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size);
        h.set_mode(mode | 0o600);
        set_owner(&mut h);
        h.set_mtime(entry.header().mtime().unwrap_or(0));
        self.builder
            .append_data(&mut h, dest, entry)
            .map_err(|e| refuse(format!("package entry {shown:?} could not be read: {e}")))?;
        Ok(())
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        path: &Path,
        dest: &Path,
        shown: &str,
    ) -> Result<()> {
        let target = entry
            .link_name()
            .map_err(|e| refuse(format!("symlink {shown:?} has an unreadable target: {e}")))?
            .ok_or_else(|| refuse(format!("symlink {shown:?} has no target")))?
            .into_owned();
        if !link_stays_inside(path, &target) {
            return Err(refuse(format!(
                "symlink {shown:?} points outside the app (to {:?})",
                target.display().to_string()
            )));
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        set_owner(&mut h);
        self.builder.append_link(&mut h, dest, &target)?;
        self.links.insert(path.to_path_buf(), target);
        Ok(())
    }
}

/// Most links followed resolving one path (the kernel's limit is 40).
const MAX_HOPS: usize = 40;

/// Resolves `target` of the link at `link` through `links`, component by component, as the kernel
/// would: `Ok` when every step stays inside the root, else why not.
fn resolve_inside(
    links: &std::collections::HashMap<PathBuf, PathBuf>,
    link: &Path,
    target: &Path,
) -> std::result::Result<(), String> {
    use std::collections::VecDeque;
    // Where resolution stands (components from the root) and what is left to walk.
    let mut at: Vec<std::ffi::OsString> = link
        .parent()
        .map(|p| p.iter().map(|c| c.to_os_string()).collect())
        .unwrap_or_default();
    let mut todo: VecDeque<Component<'_>> = target.components().collect();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if at.pop().is_none() {
                    return Err("it climbs above the app's root".into());
                }
            }
            Component::Normal(name) => {
                at.push(name.to_os_string());
                let here: PathBuf = at.iter().collect();
                if let Some(next) = links.get(&here) {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err("the links loop".into());
                    }
                    at.pop();
                    for c in next.components().rev() {
                        todo.push_front(c);
                    }
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("it is absolute".into());
            }
        }
    }
    Ok(())
}

/// The refusal of an entry type packages may not hold.
fn refuse_kind(shown: &str, kind: tar::EntryType) -> Error {
    match kind {
        tar::EntryType::Link => refuse(format!(
            "package entry {shown:?} is a hardlink; hardlinks are not allowed"
        )),
        tar::EntryType::Char | tar::EntryType::Block => refuse(format!(
            "package entry {shown:?} is a device file; device files are not allowed"
        )),
        tar::EntryType::Fifo => refuse(format!(
            "package entry {shown:?} is a FIFO; special files are not allowed"
        )),
        other => refuse(format!(
            "package entry {shown:?} has an unsupported type ({other:?})"
        )),
    }
}

fn set_owner(h: &mut tar::Header) {
    h.set_uid(VCAP_UID);
    h.set_gid(VCAP_UID);
}

fn dir_header() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o755);
    set_owner(&mut h);
    h
}

/// Writes a droplet (a gzipped tar a staging made) as an image layer at `out`: an uncompressed
/// tar of the same entries under `home/vcap/`, hard links' targets too, and returns the layer's
/// `sha256:<hex>` (its diff id). One pass that checks as it goes: every entry path stays inside
/// (no `..`, nothing absolute), hardlinks name an entry path that does, and there are no device
/// files or FIFOs; on a refusal nothing is left at `out`. Symlink targets are not checked: inside
/// the image a link resolves in the container's own filesystem.
pub fn droplet_layer(droplet: &Path, out: &Path) -> Result<String> {
    let written = write_droplet_layer(droplet, out);
    if written.is_err() {
        let _ = std::fs::remove_file(out);
    }
    written
}

fn write_droplet_layer(droplet: &Path, out: &Path) -> Result<String> {
    use sha2::Digest as _;
    use std::io::Write as _;

    /// Hashes what it writes.
    struct Hashing<W> {
        inner: W,
        hash: sha2::Sha256,
    }
    impl<W: std::io::Write> std::io::Write for Hashing<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.hash.update(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }

    let refuse_droplet = |m: String| {
        Error::api(
            ErrorCode::StagingFailed,
            format!("the droplet cannot become an image: {m}"),
        )
    };
    let checked = |raw: &Path| clean_path(raw).map_err(|e| refuse_droplet(e.to_api().message));
    let f = std::fs::File::open(droplet)?;
    let mut archive = tar::Archive::new(GzDecoder::new(std::io::BufReader::new(f)));
    let entries = archive
        .entries()
        .map_err(|e| refuse_droplet(format!("it is not a gzipped tar ({e})")))?;
    let sink = Hashing {
        inner: std::io::BufWriter::new(std::fs::File::create(out)?),
        hash: sha2::Sha256::new(),
    };
    let mut layer = tar::Builder::new(sink);
    let under = Path::new("home/vcap");
    for entry in entries {
        let mut entry =
            entry.map_err(|e| refuse_droplet(format!("it is not a valid tar ({e})")))?;
        let raw = entry
            .path()
            .map_err(|e| refuse_droplet(format!("an entry has an unreadable path ({e})")))?
            .into_owned();
        let rel = checked(&raw)?;
        let mut header = entry.header().clone();
        let kind = header.entry_type();
        if matches!(
            kind,
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
        ) {
            return Err(refuse_droplet(format!(
                "{:?} is a device file or FIFO",
                raw.display()
            )));
        }
        let target = match kind {
            tar::EntryType::Link => {
                let t = entry.link_name().ok().flatten().ok_or_else(|| {
                    refuse_droplet(format!("hardlink {:?} has no target", raw.display()))
                })?;
                Some(under.join(checked(&t)?.unwrap_or_default()))
            }
            tar::EntryType::Symlink => Some(entry.link_name()?.unwrap_or_default().into_owned()),
            _ => None,
        };
        // The droplet's root entry is /home/vcap itself, which the stack has.
        let Some(rel) = rel else { continue };
        let path = under.join(rel);
        match target {
            Some(t) => layer.append_link(&mut header, &path, t)?,
            None => layer.append_data(&mut header, &path, &mut entry)?,
        }
    }
    let mut sink = layer.into_inner()?;
    sink.flush()?;
    Ok(format!("sha256:{}", hex::encode(sink.hash.finalize())))
}

/// Validates a package file on disk.
pub fn validate_file(path: &Path, limits: Limits) -> Result<PackageSummary> {
    let f = std::fs::File::open(path)?;
    repack(std::io::BufReader::new(f), std::io::sink(), "", limits)
}

/// Takes an upload: refuses one that says it is over `limit` before reading a byte, streams it
/// into a pending blob (stopping at `limit`), checks every entry, and only then stores it.
pub async fn accept<S, B, E>(
    blobs: &crate::store::BlobStore,
    body: S,
    declared_len: Option<u64>,
    limit: u64,
    limits: Limits,
) -> Result<pier_api::PackageResponse>
where
    S: futures_util::Stream<Item = std::result::Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    use crate::store::blobs::WriteError;
    let too_large = || {
        Error::api(
            ErrorCode::PayloadTooLarge,
            format!(
                "the package is larger than the controller's limit of {limit} bytes; leave files \
                 out with .cfignore, or raise --max-package-bytes"
            ),
        )
    };
    if declared_len.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let pending = match blobs.write_stream(body, limit).await {
        Ok(p) => p,
        Err(WriteError::TooLarge { .. }) => return Err(too_large()),
        Err(WriteError::Source(e)) => {
            return Err(Error::bad_request(format!("the upload broke off: {e}")))
        }
        Err(WriteError::Io(e)) => return Err(e.into()),
    };
    let path = pending.path().to_path_buf();
    tokio::task::spawn_blocking(move || validate_file(&path, limits))
        .await
        .map_err(|e| Error::Other(format!("package check failed: {e}")))??;
    let size = pending.size;
    let sha256 = blobs.commit(pending)?;
    Ok(pier_api::PackageResponse { sha256, size })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::write::GzEncoder;

    /// Builds a gzipped tar with raw headers, so tests can write what a hostile client would.
    pub(crate) fn raw_tar(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut tar_bytes = Vec::new();
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_old();
            // set_path refuses '..' and absolute paths, so write the name field by hand.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if let Some(l) = link {
                let l = l.as_bytes();
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
            }
            h.set_cksum();
            tar_bytes.extend_from_slice(h.as_bytes());
            tar_bytes.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            tar_bytes.extend(std::iter::repeat_n(0u8, pad));
        }
        tar_bytes.extend(std::iter::repeat_n(0u8, 1024));
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar_bytes).unwrap();
        gz.finish().unwrap()
    }

    const LIMITS: Limits = Limits {
        max_extracted_bytes: 1 << 20,
        max_entries: 1000,
    };

    fn check(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Result<PackageSummary> {
        repack(&raw_tar(entries)[..], std::io::sink(), "app", LIMITS)
    }

    use tar::EntryType as T;

    #[test]
    fn accepts_a_normal_app() {
        let s = check(&[
            ("app.py", T::Regular, b"print(1)", None),
            ("static/", T::Directory, b"", None),
            ("static/link", T::Symlink, b"", Some("../app.py")),
            ("./x/./y.txt", T::Regular, b"y", None),
        ])
        .unwrap();
        assert_eq!(s.entries, 4);
        assert_eq!(s.extracted_bytes, 9);
    }

    fn refused(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)], needle: &str) {
        let err = check(entries).unwrap_err().to_api();
        assert!(
            err.message.contains(needle),
            "{:?} lacks {needle:?}",
            err.message
        );
    }

    #[test]
    fn refuses_hostile_entries_naming_them() {
        refused(
            &[("../evil", T::Regular, b"x", None)],
            "\"../evil\" contains '..'",
        );
        refused(&[("a/../../evil", T::Regular, b"x", None)], "a/../../evil");
        refused(
            &[("/etc/passwd", T::Regular, b"x", None)],
            "\"/etc/passwd\" is an absolute path",
        );
        refused(
            &[("up", T::Symlink, b"", Some("../outside"))],
            "symlink \"up\" points outside",
        );
        refused(
            &[("abs", T::Symlink, b"", Some("/etc/shadow"))],
            "symlink \"abs\" points outside",
        );
        refused(
            &[("d/l", T::Symlink, b"", Some("../../x"))],
            "symlink \"d/l\"",
        );
        refused(
            &[("hard", T::Link, b"", Some("app.py"))],
            "\"hard\" is a hardlink",
        );
        refused(&[("dev", T::Char, b"", None)], "\"dev\" is a device file");
        refused(&[("blk", T::Block, b"", None)], "\"blk\" is a device file");
        refused(&[("fifo", T::Fifo, b"", None)], "\"fifo\" is a FIFO");
    }

    #[test]
    fn refuses_garbage_and_bombs() {
        let tiny = Limits {
            max_extracted_bytes: 10,
            max_entries: 10,
        };
        let err = repack(&b"not a tarball"[..], std::io::sink(), "", tiny).unwrap_err();
        assert_eq!(err.to_api().code, ErrorCode::InvalidPackage);
        let big = vec![0u8; 100];
        let err = repack(
            &raw_tar(&[("big", T::Regular, &big, None)])[..],
            std::io::sink(),
            "",
            tiny,
        )
        .unwrap_err();
        assert_eq!(err.to_api().code, ErrorCode::PayloadTooLarge);
        // Many tiny entries (a header bomb): refused at the entry count, with the fix named.
        let names: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
        let many: Vec<_> = names
            .iter()
            .map(|n| (n.as_str(), T::Regular, &b""[..], None))
            .collect();
        let err = repack(&raw_tar(&many)[..], std::io::sink(), "", tiny)
            .unwrap_err()
            .to_api();
        assert_eq!(err.code, ErrorCode::PayloadTooLarge);
        assert!(
            err.message.contains("more than 10 entries"),
            "{}",
            err.message
        );
        // Parent folders written for deep paths count too.
        let deep = "a/b/c/d/e/f/g/h/i/j/k/file";
        let err = repack(
            &raw_tar(&[(deep, T::Regular, &b""[..], None)])[..],
            std::io::sink(),
            "",
            tiny,
        )
        .unwrap_err();
        assert_eq!(err.to_api().code, ErrorCode::PayloadTooLarge);
    }

    #[test]
    fn symlinks_are_resolved_through_each_other() {
        // The chain from the issue: d/l → .. is inside, but d/l/e is written through it.
        refused(
            &[
                ("d/l", T::Symlink, b"", Some("..")),
                ("d/l/e", T::Symlink, b"", Some("../..")),
            ],
            "\"d/l/e\" is inside the symlink \"d/l\"",
        );
        // A target that walks through another link and climbs out, in either order.
        for order in [[0, 1], [1, 0]] {
            let links = [
                ("d/l", T::Symlink, &b""[..], Some("..")),
                ("e", T::Symlink, &b""[..], Some("d/l/..")),
            ];
            let entries: Vec<_> = order.iter().map(|&i| links[i]).collect();
            refused(&entries, "symlink \"e\" points outside the app");
        }
        // Links that loop are refused; links between links that stay inside are fine.
        refused(
            &[
                ("a", T::Symlink, b"", Some("b")),
                ("b", T::Symlink, b"", Some("a")),
            ],
            "loop",
        );
        check(&[
            ("lib/v1/x.py", T::Regular, b"x", None),
            ("lib/current", T::Symlink, b"", Some("v1")),
            ("x", T::Symlink, b"", Some("lib/current/x.py")),
            ("y", T::Symlink, b"", Some("x")),
        ])
        .unwrap();
        // A symlink may not replace a folder, nor a file a symlink.
        refused(
            &[
                ("d/f", T::Regular, b"x", None),
                ("d", T::Symlink, b"", Some(".")),
            ],
            "replaces a symlink or folder",
        );
        refused(
            &[
                ("s", T::Symlink, b"", Some("x")),
                ("s", T::Regular, b"x", None),
            ],
            "replaces a symlink or folder",
        );
    }

    #[test]
    fn repacked_entries_are_owned_by_vcap_under_prefix() {
        let mut out = Vec::new();
        repack(
            &raw_tar(&[("bin/run", T::Regular, b"#!/bin/sh", None)])[..],
            &mut out,
            "app",
            LIMITS,
        )
        .unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let names: Vec<_> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                assert_eq!(e.header().uid().unwrap(), VCAP_UID);
                e.path().unwrap().display().to_string()
            })
            .collect();
        assert_eq!(names, vec!["app", "app/bin", "app/bin/run"]);
    }

    #[test]
    fn a_droplet_becomes_a_layer_under_home_vcap_and_a_hostile_one_none() {
        use sha2::Digest as _;
        let dir = tempfile::tempdir().unwrap();
        let droplet = dir.path().join("droplet.tgz");
        std::fs::write(
            &droplet,
            raw_tar(&[
                ("./", T::Directory, b"", None),
                ("app/", T::Directory, b"", None),
                ("app/app.py", T::Regular, b"print(1)", None),
                ("app/same.py", T::Link, b"", Some("app/app.py")),
                ("app/up", T::Symlink, b"", Some("../deps")),
            ]),
        )
        .unwrap();
        let layer = dir.path().join("layer.tar");
        let diff_id = droplet_layer(&droplet, &layer).unwrap();
        let bytes = std::fs::read(&layer).unwrap();
        assert_eq!(
            diff_id,
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)))
        );
        let mut seen = Vec::new();
        for e in tar::Archive::new(&bytes[..]).entries().unwrap() {
            let e = e.unwrap();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            seen.push((e.path().unwrap().display().to_string(), link));
        }
        assert_eq!(
            seen,
            vec![
                ("home/vcap/app".to_string(), None),
                ("home/vcap/app/app.py".to_string(), None),
                (
                    "home/vcap/app/same.py".to_string(),
                    Some("home/vcap/app/app.py".to_string())
                ),
                ("home/vcap/app/up".to_string(), Some("../deps".to_string())),
            ]
        );
        // An entry that would leave /home/vcap makes no layer.
        std::fs::write(
            &droplet,
            raw_tar(&[("../../etc/cron.d/evil", T::Regular, b"x", None)]),
        )
        .unwrap();
        let err = droplet_layer(&droplet, &dir.path().join("evil.tar")).unwrap_err();
        assert!(
            err.to_api().message.contains("cannot become an image"),
            "{err:?}"
        );
        assert!(!dir.path().join("evil.tar").exists(), "nothing written");
    }
}
