//! A real single-node Slurm for the tests (Debian `slurmctld slurmd munge slurm-client`, which
//! `.ci/run` installs): munged, slurmctld and slurmd started as root with their own key,
//! socket, ports and state in a temporary directory (nothing in /etc is read or changed),
//! stopped by PID on drop, after our own jobs are cancelled.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Slurm {
    pub dir: tempfile::TempDir,
    /// `SLURM_CONF` for every client and job.
    pub conf: PathBuf,
    node: String,
    daemons: Vec<Child>,
    jobs: Vec<String>,
}

/// Whether this machine can run the cluster: root, and the daemons installed. `false`
/// (skip, with a message) outside CI; a failure under CI.
fn available() -> bool {
    let have = ["munged", "slurmctld", "slurmd", "sbatch"].iter().all(|b| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let root = rustix::process::geteuid().is_root();
    if have && root {
        return true;
    }
    let why = if root {
        "Slurm is not installed (apt-get install slurmctld slurmd munge slurm-client)"
    } else {
        "the Slurm daemons need root"
    };
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("CI is set but {why}");
    }
    eprintln!("skipping: {why}");
    false
}

fn wait_until(what: &str, secs: u64, mut ready: impl FnMut() -> bool, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} not ready after {secs} s: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Slurm {
    /// A running cluster of one node, idle; `None` where it cannot run (see [`available`]).
    pub fn start() -> Option<Slurm> {
        if !available() {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let s = dir.path().to_path_buf();
        for d in ["munge", "state", "spool", "log", "run"] {
            std::fs::create_dir_all(s.join(d)).unwrap();
        }
        // munged refuses a socket in a directory not searchable by all.
        for d in [s.as_path(), &s.join("munge")] {
            crate::common::tree::chmod(d, 0o755);
        }
        let mut key = [0u8; 1024];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut key)
            .unwrap();
        std::fs::write(s.join("munge/munge.key"), key).unwrap();
        crate::common::tree::chmod(&s.join("munge/munge.key"), 0o400);
        let socket = s.join("munge/munge.socket");
        let mut me = Slurm {
            conf: s.join("slurm.conf"),
            dir,
            node: String::new(),
            daemons: Vec::new(),
            jobs: Vec::new(),
        };
        me.spawn(
            Command::new("munged")
                .arg("--foreground")
                .arg(format!(
                    "--key-file={}",
                    s.join("munge/munge.key").display()
                ))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--pid-file={}", s.join("run/munged.pid").display()))
                .arg(format!("--log-file={}", s.join("log/munged.log").display()))
                .arg(format!(
                    "--seed-file={}",
                    s.join("munge/munged.seed").display()
                )),
            "munged.out",
        );
        wait_until("munged", 30, || socket.exists(), || me.log("munged.log"));

        // The node line is this machine's own (`slurmd -C`), so that the node is not INVAL.
        let c = Command::new("slurmd")
            .arg("-C")
            .output()
            .expect("slurmd -C");
        let node_line = String::from_utf8_lossy(&c.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        me.node = node_line
            .split_whitespace()
            .next()
            .and_then(|w| w.strip_prefix("NodeName="))
            .expect("slurmd -C names the node")
            .to_string();
        let (ctld_port, d_port) = (crate::common::free_port(), crate::common::free_port());
        let p = |sub: &str| s.join(sub).display().to_string();
        let conf = format!(
            "ClusterName=envsealtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket}
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={run}/slurmctld.pid
SlurmdPidFile={run}/slurmd.pid
SlurmctldLogFile={log}/slurmctld.log
SlurmdLogFile={log}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=3600
KillWait=5
MailProg=/bin/true
DependencyParameters=kill_invalid_depend
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP
",
            node = me.node,
            socket = socket.display(),
            state = p("state"),
            spool = p("spool"),
            run = p("run"),
            log = p("log"),
        );
        std::fs::write(&me.conf, conf).unwrap();
        let conf_arg = me.conf.display().to_string();
        me.spawn(
            Command::new("slurmctld").args(["-D", "-f", &conf_arg]),
            "slurmctld.out",
        );
        wait_until(
            "slurmctld",
            60,
            || me.client("scontrol", &["ping"]).contains("UP"),
            || me.log("slurmctld.log"),
        );
        let node = me.node.clone();
        me.spawn(
            Command::new("slurmd").args(["-D", "-f", &conf_arg, "-N", &node]),
            "slurmd.out",
        );
        let idle = format!("{node} idle");
        wait_until(
            "slurmd",
            60,
            || me.client("sinfo", &["-h", "-N", "-o", "%N %T"]).trim() == idle,
            || me.log("slurmd.log"),
        );
        Some(me)
    }

    fn spawn(&mut self, cmd: &mut Command, out: &str) {
        let log = std::fs::File::create(self.dir.path().join("log").join(out)).unwrap();
        let child = cmd
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        self.daemons.push(child);
    }

    /// A client command's stdout (`scontrol`, `sinfo`, `squeue`...), empty if it failed.
    pub fn client(&self, prog: &str, args: &[&str]) -> String {
        Command::new(prog)
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The last lines of one of the cluster's logs.
    pub fn log(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("log").join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Submits a batch script (`sbatch --parsable ARGS SCRIPT`) with `env` added to this
    /// process's environment (the job gets it all: `--export=ALL`) and returns its job id.
    /// Output goes to `--output` under `workdir`, never to the checkout.
    pub fn sbatch(
        &mut self,
        workdir: &Path,
        args: &[&str],
        script: &Path,
        env: &[(&str, String)],
    ) -> String {
        let mut c = Command::new("sbatch");
        c.arg("--parsable")
            .arg("--export=ALL")
            .arg(format!("--chdir={}", workdir.display()))
            .arg(format!("--output={}/slurm-%A_%a.out", workdir.display()))
            .args(args)
            .arg(script)
            .env("SLURM_CONF", &self.conf);
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().expect("sbatch");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "sbatch {args:?}: {}{}",
            out,
            String::from_utf8_lossy(&o.stderr)
        );
        let id = out.trim().split(';').next().unwrap_or_default().to_string();
        assert!(!id.is_empty(), "sbatch printed no job id");
        self.jobs.push(id.clone());
        id
    }

    /// Waits until none of `ids` is queued or running (bounded).
    pub fn wait(&self, ids: &[&str], secs: u64) {
        let jobs = format!("--jobs={}", ids.join(","));
        wait_until(
            "the jobs",
            secs,
            || {
                self.client("squeue", &["-h", &jobs, "-o", "%i"])
                    .trim()
                    .is_empty()
            },
            || self.client("squeue", &[]) + &self.log("slurmctld.log"),
        );
    }

    /// The `JobState` of every task of job `id` (an array lists each task).
    pub fn states(&self, id: &str) -> Vec<String> {
        self.client("scontrol", &["-o", "show", "job", id])
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("JobState="))
                    .map(str::to_string)
            })
            .collect()
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        if !self.jobs.is_empty() {
            let _ = Command::new("scancel")
                .args(&self.jobs)
                .env("SLURM_CONF", &self.conf)
                .status();
        }
        // Reverse order: slurmd, slurmctld, munged.
        while let Some(mut c) = self.daemons.pop() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
