//! What the fault tests (`e2e/tests/faults.rs`) need beyond the harness: root, a small tmpfs, a
//! private Docker daemon that can be killed and restarted without disturbing anything else, and
//! CPU and latency measurements.
//!
//! Everything here undoes itself on drop, also when the test panics: the tmpfs is unmounted, the
//! private dockerd's containers, daemon, containerd, mounts, folders and bridge are removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fails the test, saying what is needed, unless it runs as root (CI and this machine do).
pub fn require_root(what: &str) {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "this fault test needs root to {what}: run it as root (`sudo -E cargo test -p pier-e2e \
         --test faults`, or scripts/faults as root); CI runs it as root"
    );
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Unmounts every mount at or under `root` (deepest first), lazily if busy.
fn unmount_under(root: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let root = root.to_string_lossy().to_string();
    let mut points: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p == &root || p.starts_with(&format!("{root}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if run("umount", &[&p]).is_err() {
            let _ = run("umount", &["-l", &p]);
        }
    }
}

/// A tmpfs of a given size mounted on a folder; unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, bytes: u64) -> Tmpfs {
        require_root("mount a small tmpfs as the controller's data dir");
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700"),
                "tmpfs",
                &path.to_string_lossy(),
            ],
        )
        .unwrap_or_else(|e| panic!("cannot mount a tmpfs on {}: {e}", path.display()));
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Bytes still free.
    pub fn available(&self) -> u64 {
        let out = run(
            "df",
            &["--output=avail", "-B1", &self.path.to_string_lossy()],
        )
        .expect("df");
        out.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df output")
    }

    /// Fills what is free with a file at `file` (left for the test to remove).
    pub fn fill(&self, file: &Path) {
        use std::io::Write;
        let mut f = std::fs::File::create(file).expect("filler file");
        let block = vec![0xA5u8; 64 * 1024];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => break, // ENOSPC: full.
            }
        }
        // The last bytes, one at a time.
        while let Ok(1) = f.write(&block[..1]) {}
        let _ = f.flush();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount_under(&self.path);
    }
}

/// A `dockerd` of the test's own: its own socket, data root, exec root, pidfile, containerd and
/// bridge, so killing it disturbs nothing else on the machine. Never `--bridge=none` (that would
/// delete the host's docker0): it gets a bridge `pier-f<id>` on its own /24.
pub struct PrivateDockerd {
    pub id: String,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub bridge: String,
    /// `10.216.N.1/24`, the bridge's address.
    pub bridge_cidr: String,
    /// A /24 for the controller's instance network, which no other test uses (10.215.N.0/24).
    pub instance_subnet: String,
    child: Option<Child>,
    log: PathBuf,
}

impl PrivateDockerd {
    pub fn start() -> PrivateDockerd {
        require_root("run a private dockerd with its own bridge (ip link add)");
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let n = u32::from_str_radix(&id[..4], 16).expect("hex") % 250 + 2;
        // Short paths: a unix socket's path has at most 107 bytes.
        let root = PathBuf::from(format!("/tmp/pf-{id}"));
        std::fs::create_dir_all(&root).expect("dockerd root");
        let mut d = PrivateDockerd {
            bridge: format!("pier-f{id}"),
            bridge_cidr: format!("10.216.{n}.1/24"),
            instance_subnet: format!("10.215.{n}.0/24"),
            socket: root.join("docker.sock"),
            log: root.join("dockerd.log"),
            root,
            id,
            child: None,
        };
        // `d` exists before the bridge, so its drop removes the bridge if anything below fails.
        run("ip", &["link", "add", &d.bridge, "type", "bridge"])
            .unwrap_or_else(|e| panic!("cannot add the bridge: {e}"));
        run("ip", &["addr", "add", &d.bridge_cidr, "dev", &d.bridge]).expect("bridge address");
        run("ip", &["link", "set", &d.bridge, "up"]).expect("bridge up");
        d.launch();
        d
    }

    /// `unix:///...`, for DOCKER_HOST.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("dockerd log");
        let r = |p: &str| self.root.join(p).to_string_lossy().to_string();
        // Not the host's /etc/docker/daemon.json: its data root is the host daemon's.
        std::fs::write(self.root.join("daemon.json"), "{}").expect("daemon.json");
        let child = Command::new("dockerd")
            .args(["--config-file", &r("daemon.json")])
            .args(["-H", &self.host()])
            .args(["--data-root", &r("data")])
            .args(["--exec-root", &r("exec")])
            .args(["--pidfile", &r("dockerd.pid")])
            .args(["--bridge", &self.bridge])
            // No NAT needed: the controller and its router reach instances on the bridge
            // directly, and the host's iptables chains stay the host dockerd's.
            .args(["--iptables=false", "--ip-masq=false"])
            .args(["--storage-driver", &host_storage_driver()])
            .args(["--log-driver", "json-file"])
            .args(["--log-opt", "max-size=10m", "--log-opt", "max-file=3"])
            .args(["--containerd-namespace", &format!("pf-{}", self.id)])
            .args([
                "--containerd-plugins-namespace",
                &format!("pf-{}-plugins", self.id),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self
            .docker(&["info", "--format", "{{.ServerVersion}}"])
            .is_err()
        {
            if Instant::now() > deadline {
                panic!(
                    "the private dockerd did not answer within 60 s; its log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs the docker CLI against this daemon.
    pub fn docker(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", self.host())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    /// Copies an image from the host's Docker into this one.
    pub fn load_image(&self, image: &str) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker save {image} | DOCKER_HOST={} docker load -q",
                self.host()
            ))
            .stdout(Stdio::null())
            .status()
            .expect("docker save | docker load");
        assert!(
            status.success(),
            "cannot load {image} into the private dockerd"
        );
    }

    /// SIGKILLs the daemon (its containerd and containers are left as they are, as in a crash).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again on the same folders and socket.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// Containers (running or not) labelled `pier.controller=<id>`, id → labels.
    pub fn containers(&self, controller_id: &str) -> HashMap<String, HashMap<String, String>> {
        let out = self
            .docker(&[
                "ps",
                "-a",
                "--no-trunc",
                "--filter",
                &format!("label=pier.controller={controller_id}"),
                "--format",
                "{{.ID}}\t{{.State}}\t{{.Labels}}",
            ])
            .unwrap_or_default();
        out.lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, '\t');
                let id = f.next()?.to_string();
                let state = f.next()?.to_string();
                let mut labels: HashMap<String, String> = f
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once('=')?;
                        Some((k.to_string(), v.to_string()))
                    })
                    .collect();
                labels.insert("state".into(), state);
                Some((id, labels))
            })
            .collect()
    }

    /// Pids of processes whose command line names this daemon's folder (its containerd, shims).
    fn leftover_pids(&self) -> Vec<u32> {
        let needle = self.root.to_string_lossy().to_string();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- private dockerd log (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        // Containers first, while the daemon runs, then the daemon (SIGTERM: it stops its
        // containerd), then whatever is left of its processes, mounts, folders and bridge.
        if self.child.is_some() {
            if let Ok(ids) = self.docker(&["ps", "-aq"]) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f", "-v"];
                    args.extend(ids);
                    let _ = self.docker(&args);
                }
            }
            // User-defined networks have bridges in the host's kernel: remove them with the
            // daemon's own call.
            let _ = self.docker(&["network", "prune", "-f"]);
        }
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for _ in 0..3 {
            let pids = self.leftover_pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        unmount_under(&self.root);
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = run("ip", &["link", "del", &self.bridge]);
        // A network's bridge left behind by a daemon that could not be asked (killed when the
        // test failed): found by the instance subnet's gateway, which only this test uses.
        let gateway = self.instance_subnet.replace(".0/24", ".1/24");
        if let Ok(out) = run("ip", &["-o", "-4", "addr", "show"]) {
            for l in out.lines().filter(|l| l.contains(&format!(" {gateway} "))) {
                if let Some(dev) = l.split_whitespace().nth(1) {
                    let _ = run("ip", &["link", "del", dev]);
                }
            }
        }
    }
}

/// The host daemon's storage driver (what works on this machine: overlay2, or fuse-overlayfs
/// where the data root's filesystem cannot hold overlay mounts).
fn host_storage_driver() -> String {
    run("docker", &["info", "--format", "{{.Driver}}"])
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "overlay2".into())
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    run("getconf", &["CLK_TCK"])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The `p`th percentile (0..=100) of some durations, in milliseconds.
pub fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    assert!(!samples.is_empty(), "no samples");
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (ms.len() - 1) as f64).round() as usize;
    ms[i.min(ms.len() - 1)]
}
