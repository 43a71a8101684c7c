//! Packs an app folder as a gzipped tar, the package `POST /v1/packages` takes.
//!
//! - `.cfignore` (gitignore syntax, rooted at the folder) leaves paths out; `.git` is always left out.
//! - Files and directories keep their permission bits; entries are sorted, owners are zeroed and
//!   gzip carries no timestamp, so unchanged source packs to the same bytes (and the same sha256).
//! - A symlink is kept as a symlink only if what it points to resolves inside the folder; one that
//!   escapes is refused, naming it, because the controller would refuse it anyway and a user should
//!   learn which one before uploading anything. An absolute target inside the folder is rewritten
//!   relative to the link, so it still resolves once the package is extracted somewhere else.
//! - Other file types (sockets, fifos, devices) are skipped with a warning.

use std::fs::{self, File, Metadata};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use flate2::write::GzEncoder;
use flate2::Compression;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::output::Failure;

/// A packed app, in an anonymous temporary file positioned at its start.
#[derive(Debug)]
pub struct Packed {
    pub file: File,
    /// Compressed size in bytes.
    pub size: u64,
    /// Files, directories and links packed.
    pub entries: u64,
    /// Paths skipped because they are neither files, directories nor symlinks.
    pub skipped: Vec<PathBuf>,
}

/// Names that never go into a package.
const ALWAYS_EXCLUDED: &[&str] = &[".git"];

/// Packs `path` (a folder, or a single file placed at the package's root).
pub fn pack(path: &Path) -> Result<Packed> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let tmp = tempfile::tempfile().context("cannot create a temporary file for the package")?;
    let mut builder = tar::Builder::new(GzEncoder::new(tmp, Compression::fast()));
    builder.follow_symlinks(false);
    let mut packer = Packer {
        builder,
        entries: 0,
        skipped: Vec::new(),
    };
    if meta.is_dir() {
        let root =
            fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))?;
        let ignore = cfignore(&root)?;
        packer.walk(&root, &root, &ignore)?;
    } else if meta.is_file() {
        let name = path
            .file_name()
            .with_context(|| format!("{} has no file name", path.display()))?;
        packer.file(path, Path::new(name), &meta)?;
    } else {
        anyhow::bail!(
            "{} is neither a folder nor a file: give a folder to push",
            path.display()
        );
    }
    let Packer {
        builder,
        entries,
        skipped,
    } = packer;
    let gz = builder
        .into_inner()
        .context("cannot finish the package archive")?;
    let mut file = gz.finish().context("cannot finish the package archive")?;
    file.flush().context("cannot write the package")?;
    let size = file
        .seek(SeekFrom::End(0))
        .context("cannot measure the package")?;
    file.seek(SeekFrom::Start(0))
        .context("cannot rewind the package")?;
    Ok(Packed {
        file,
        size,
        entries,
        skipped,
    })
}

fn cfignore(root: &Path) -> Result<Gitignore> {
    let mut builder = GitignoreBuilder::new(root);
    let path = root.join(".cfignore");
    if path.is_file() {
        if let Some(err) = builder.add(&path) {
            return Err(Failure::new(format!("cannot use {}: {err}", path.display())).into());
        }
    }
    builder
        .build()
        .map_err(|e| Failure::new(format!("cannot use {}: {e}", path.display())).into())
}

struct Packer {
    builder: tar::Builder<GzEncoder<File>>,
    entries: u64,
    skipped: Vec<PathBuf>,
}

impl Packer {
    fn walk(&mut self, root: &Path, dir: &Path, ignore: &Gitignore) -> Result<()> {
        let mut children: Vec<_> = fs::read_dir(dir)
            .with_context(|| format!("cannot read the folder {}", dir.display()))?
            .collect::<io::Result<_>>()
            .with_context(|| format!("cannot read the folder {}", dir.display()))?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let path = child.path();
            let name = child.file_name();
            if ALWAYS_EXCLUDED.iter().any(|x| name == *x) {
                continue;
            }
            let meta = fs::symlink_metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let ft = meta.file_type();
            if ignore.matched(&path, ft.is_dir()).is_ignore() {
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .with_context(|| format!("{} is outside {}", path.display(), root.display()))?
                .to_path_buf();
            if ft.is_dir() {
                self.dir(&rel, &meta)?;
                self.walk(root, &path, ignore)?;
            } else if ft.is_file() {
                self.file(&path, &rel, &meta)?;
            } else if ft.is_symlink() {
                let target = link_target_inside(root, &path, &rel)?;
                self.symlink(&rel, &target, &meta)?;
            } else {
                self.skipped.push(rel);
            }
        }
        Ok(())
    }

    fn dir(&mut self, rel: &Path, meta: &Metadata) -> Result<()> {
        let mut header = header(meta, tar::EntryType::Directory);
        header.set_size(0);
        self.builder
            .append_data(&mut header, rel, io::empty())
            .with_context(|| format!("cannot pack {}", rel.display()))?;
        self.entries += 1;
        Ok(())
    }

    fn file(&mut self, path: &Path, rel: &Path, meta: &Metadata) -> Result<()> {
        let mut header = header(meta, tar::EntryType::Regular);
        header.set_size(meta.len());
        let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        self.builder
            .append_data(&mut header, rel, file)
            .with_context(|| format!("cannot pack {}", path.display()))?;
        self.entries += 1;
        Ok(())
    }

    fn symlink(&mut self, rel: &Path, target: &Path, meta: &Metadata) -> Result<()> {
        let mut header = header(meta, tar::EntryType::Symlink);
        header.set_size(0);
        self.builder
            .append_link(&mut header, rel, target)
            .with_context(|| format!("cannot pack the symlink {}", rel.display()))?;
        self.entries += 1;
        Ok(())
    }
}

fn header(meta: &Metadata, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(meta.mode() & 0o7777);
    header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// The target to store for the symlink at `link` (shown to users as `rel`): its own target when that
/// is relative, or a relative path when it is absolute. Errors when it resolves outside `root`.
fn link_target_inside(root: &Path, link: &Path, rel: &Path) -> Result<PathBuf> {
    let target = fs::read_link(link)
        .with_context(|| format!("cannot read the symlink {}", rel.display()))?;
    let parent = link.parent().unwrap_or(root);
    let resolved = resolve(&parent.join(&target));
    if !resolved.starts_with(root) {
        return Err(Failure::new(format!(
            "symlink {} points outside the app folder (to {})",
            rel.display(),
            target.display()
        ))
        .hint("replace it with a copy of what it points to, or list it in .cfignore")
        .into());
    }
    if target.is_relative() {
        Ok(target)
    } else {
        let parent = resolve(parent);
        Ok(relative_to(&resolved, &parent))
    }
}

/// Where `path` really is: symlinks followed as far as the path exists, `..` and `.` applied
/// lexically to the part that doesn't (a dangling link may still point inside the folder).
fn resolve(path: &Path) -> PathBuf {
    if let Ok(p) = fs::canonicalize(path) {
        return p;
    }
    let normal = normalize(path);
    let mut existing = normal.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(p) = fs::canonicalize(existing) {
            let mut out = p;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return normal,
        }
    }
}

/// Applies `.` and `..` without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `to` relative to the directory `from` (both absolute and normalized).
fn relative_to(to: &Path, from: &Path) -> PathBuf {
    let to: Vec<_> = to.components().collect();
    let from: Vec<_> = from.components().collect();
    let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// path → (kind, mode, link target or contents)
    fn unpack(packed: Packed) -> BTreeMap<String, (tar::EntryType, u32, String)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(packed.file));
        let mut out = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let kind = entry.header().entry_type();
            let mode = entry.header().mode().unwrap();
            let extra = if kind.is_symlink() {
                entry
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            } else {
                let mut s = String::new();
                entry.read_to_string(&mut s).unwrap();
                s
            };
            out.insert(path, (kind, mode, extra));
        }
        out
    }

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn packs_files_with_modes_and_leaves_out_git() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("app.py"), "print('hi')");
        write(&root.join("bin/run"), "#!/bin/sh");
        fs::set_permissions(root.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
        write(&root.join(".git/HEAD"), "ref");
        write(&root.join("sub/.git"), "gitdir: ../.git/modules/sub");
        write(&root.join("manifest.yml"), "applications: []");
        let entries = unpack(pack(root).unwrap());
        let names: Vec<&str> = entries.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["app.py", "bin", "bin/run", "manifest.yml", "sub"],
            "{entries:?}"
        );
        assert_eq!(entries["bin/run"].1, 0o755);
        assert_eq!(entries["bin/run"].2, "#!/bin/sh");
        assert_eq!(entries["bin"].0, tar::EntryType::Directory);
    }

    #[test]
    fn honours_cfignore() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            &root.join(".cfignore"),
            "*.log\n/build/\nsecret.txt\n!keep.log\n",
        );
        write(&root.join("app.py"), "");
        write(&root.join("debug.log"), "");
        write(&root.join("keep.log"), "");
        write(&root.join("build/out"), "");
        write(&root.join("src/build/out"), "");
        write(&root.join("src/secret.txt"), "");
        let entries = unpack(pack(root).unwrap());
        let names: Vec<&str> = entries.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                ".cfignore",
                "app.py",
                "keep.log",
                "src",
                "src/build",
                "src/build/out"
            ]
        );
    }

    #[test]
    fn refuses_a_symlink_out_of_the_folder_naming_it() {
        let outside = tempfile::tempdir().unwrap();
        write(&outside.path().join("passwd"), "x");
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("app.py"), "");
        fs::create_dir(dir.path().join("conf")).unwrap();
        symlink(outside.path().join("passwd"), dir.path().join("conf/link")).unwrap();
        let err = pack(dir.path()).unwrap_err().to_string();
        assert!(
            err.starts_with("symlink conf/link points outside the app folder (to /"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        symlink("../../etc/passwd", dir.path().join("up")).unwrap();
        let err = pack(dir.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            "symlink up points outside the app folder (to ../../etc/passwd)"
        );
    }

    #[test]
    fn refuses_a_symlink_through_another_symlink_out() {
        let outside = tempfile::tempdir().unwrap();
        write(&outside.path().join("x"), "x");
        let dir = tempfile::tempdir().unwrap();
        symlink(outside.path(), dir.path().join("out")).unwrap();
        // `via` looks inside lexically but resolves through `out` to the other folder. `out` sorts
        // after `a-via`, so this checks the link that's hit first.
        symlink("out/x", dir.path().join("a-via")).unwrap();
        let err = pack(dir.path()).unwrap_err().to_string();
        assert!(err.starts_with("symlink a-via points outside"), "{err}");
    }

    #[test]
    fn keeps_symlinks_inside_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("public/index.html"), "hi");
        symlink("public/index.html", root.join("index.html")).unwrap();
        symlink(root.join("public"), root.join("www")).unwrap();
        symlink("missing-but-inside", root.join("dangling")).unwrap();
        let entries = unpack(pack(root).unwrap());
        assert_eq!(entries["index.html"].0, tar::EntryType::Symlink);
        assert_eq!(entries["index.html"].2, "public/index.html");
        // An absolute target inside the folder is stored relative to the link.
        assert_eq!(entries["www"].2, "public");
        assert_eq!(entries["dangling"].2, "missing-but-inside");
    }

    #[test]
    fn same_source_packs_to_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("a/b.txt"), "b");
        write(&dir.path().join("c.txt"), "c");
        let read = |p: Packed| {
            let mut v = Vec::new();
            let mut f = p.file;
            f.read_to_end(&mut v).unwrap();
            v
        };
        assert_eq!(
            read(pack(dir.path()).unwrap()),
            read(pack(dir.path()).unwrap())
        );
    }

    #[test]
    fn packs_a_single_file() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("app.jar"), "jar");
        let entries = unpack(pack(&dir.path().join("app.jar")).unwrap());
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["app.jar"]);
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_to(Path::new("/a/b/c"), Path::new("/a/d")),
            Path::new("../b/c")
        );
        assert_eq!(
            relative_to(Path::new("/a"), Path::new("/a")),
            Path::new(".")
        );
    }
}
