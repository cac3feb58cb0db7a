//! The shipped deployment files (deploy/): the Slurm array and its merge job run on a real
//! single-node Slurm; the Kubernetes Jobs, for which no cluster runs here, are checked for
//! their contract, and their shell commands are run with a recording `envseal` to see the
//! command lines each pod would run.

use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

use crate::common;

fn deploy(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(p)
}

fn load(p: &str) -> Yaml {
    let text = std::fs::read_to_string(deploy(p)).unwrap();
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(docs.len(), 1, "{p}: one document");
    docs.remove(0)
}

/// The one container of a Job's pod template.
fn container(job: &Yaml) -> &Yaml {
    let c = job["spec"]["template"]["spec"]["containers"]
        .as_vec()
        .unwrap();
    assert_eq!(c.len(), 1);
    &c[0]
}

fn env_value<'a>(c: &'a Yaml, name: &str) -> &'a str {
    c["env"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no env {name}"))
}

/// Runs a container's `sh -c` command with its env (plus `extra`) and an `envseal` on PATH
/// that records its arguments, one per line; returns them.
fn run_container(c: &Yaml, extra: &[(&str, &str)]) -> Vec<String> {
    let t = tempfile::tempdir().unwrap();
    let rec = t.path().join("args");
    let fake = t.path().join("envseal");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done > {}\n",
            rec.display()
        ),
    )
    .unwrap();
    common::tree::chmod(&fake, 0o755);
    let command: Vec<&str> = c["command"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(command, ["/bin/sh", "-c"]);
    let args = c["args"].as_vec().unwrap();
    assert_eq!(args.len(), 1);
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(args[0].as_str().unwrap()).env_clear();
    cmd.env("PATH", format!("{}:/usr/bin:/bin", t.path().display()));
    for e in c["env"].as_vec().unwrap() {
        cmd.env(e["name"].as_str().unwrap(), e["value"].as_str().unwrap());
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let o = common::run(&mut cmd);
    assert!(o.status.success(), "{}", common::stderr(&o));
    std::fs::read_to_string(rec)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// deploy/k8s: an Indexed Job whose pods each encrypt the shard of their completion index
/// (as many completions as the merge job's SHARDS), credentials from a Secret, the tree and
/// the plan mounted read-only; a merge Job that names every part in order.
#[test]
fn kubernetes_jobs_keep_their_contract() {
    let job = load("k8s/indexed-job.yaml");
    assert_eq!(job["apiVersion"].as_str(), Some("batch/v1"));
    assert_eq!(job["kind"].as_str(), Some("Job"));
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"].as_str(), Some("Indexed"));
    let shards = spec["completions"].as_i64().unwrap();
    assert!(spec["parallelism"].as_i64().unwrap() <= shards);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"].as_str(), Some("Never"));
    let c = container(&job);
    assert!(c["envFrom"]
        .as_vec()
        .unwrap()
        .iter()
        .any(|e| e["secretRef"]["name"].as_str().is_some()));
    for m in c["volumeMounts"].as_vec().unwrap() {
        assert_eq!(m["readOnly"].as_bool(), Some(true), "{m:?}");
    }
    let bucket = env_value(c, "BUCKET");
    let argv = run_container(c, &[("JOB_COMPLETION_INDEX", "5")]);
    let part5 = format!("oss://{bucket}/parts/part-5");
    assert_eq!(
        argv[..7],
        [
            "encrypt",
            "--plan",
            "/plan/plan.json",
            "--shard",
            "5",
            "-o",
            part5.as_str()
        ]
    );
    // The plan's mount is the one the command reads.
    assert!(pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .any(|v| v["configMap"]["name"].as_str().is_some()));

    let merge = load("k8s/merge-job.yaml");
    assert_eq!(merge["kind"].as_str(), Some("Job"));
    let c = container(&merge);
    assert_eq!(env_value(c, "SHARDS"), shards.to_string());
    assert_eq!(env_value(c, "BUCKET"), bucket);
    let argv = run_container(c, &[]);
    assert_eq!(argv[0], "merge");
    let parts: Vec<String> = (0..shards)
        .map(|i| format!("oss://{bucket}/parts/part-{i}"))
        .collect();
    assert_eq!(argv[1..=shards as usize], parts[..]);
    assert_eq!(
        argv[shards as usize + 1..shards as usize + 3],
        ["-o".to_string(), format!("oss://{bucket}/vault")]
    );
}

/// deploy/slurm on a real single-node Slurm: `envseal plan` into 4 shards, the shipped
/// `encrypt-array.sbatch` as `sbatch --array=0-3`, the shipped `merge.sbatch` after it
/// (`--dependency=afterok:`), then the merged vault verifies deeply and restores the tree.
#[test]
fn slurm_array_then_merge_restores_the_tree() {
    let Some(mut slurm) = common::slurm::Slurm::start() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    // Slurm jobs run as root from the work directory; they must reach the key store too.
    common::tree::chmod(t.path(), 0o755);
    let home = t.path().join("home");
    let src = common::tree::fixture_copy(t.path());
    for i in 0..6 {
        common::tree::gen_file(&src.join(format!("big-{i}")), 3 << 20, i);
    }
    let plan = t.path().join("plan.json");
    let parts = t.path().join("parts");
    let vault = t.path().join("merged.vault");
    common::tree::ok(common::envseal(&home).args([
        "plan",
        src.to_str().unwrap(),
        "--shards",
        "4",
        "-o",
        plan.to_str().unwrap(),
    ]));
    let env = [
        ("ENVSEAL", env!("CARGO_BIN_EXE_envseal").to_string()),
        ("ENVSEAL_HOME", home.display().to_string()),
        ("PLAN", plan.display().to_string()),
        ("PARTS", parts.display().to_string()),
        ("SHARDS", "4".to_string()),
        ("VAULT", vault.display().to_string()),
    ];
    std::fs::create_dir_all(&parts).unwrap();
    let array = slurm.sbatch(
        t.path(),
        &["--array=0-3"],
        &deploy("slurm/encrypt-array.sbatch"),
        &env,
    );
    let merge = slurm.sbatch(
        t.path(),
        &[&format!("--dependency=afterok:{array}")],
        &deploy("slurm/merge.sbatch"),
        &env,
    );
    slurm.wait(&[&array, &merge], 300);
    let logs = || {
        common::tree::files_under(t.path())
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("slurm-"))
            .map(|p| {
                format!(
                    "{}:\n{}",
                    p.display(),
                    std::fs::read_to_string(&p).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(slurm.states(&array), ["COMPLETED"; 4], "{}", logs());
    assert_eq!(
        slurm.states(&merge),
        ["COMPLETED"],
        "{}\n{}",
        logs(),
        slurm.client("scontrol", &["show", "job", &merge])
    );
    common::tree::ok(common::envseal(&home).args(["verify", "--deep", vault.to_str().unwrap()]));
    let out = t.path().join("out");
    common::tree::decrypt_ok(&home, &vault, &out, &[]);
    common::tree::assert_same_tree(&src, &out.join(src.file_name().unwrap()));
}
