//! `envseal bench`: the figures of [`envseal::bench`] as a table (like `cryptsetup benchmark`)
//! or as JSON.

use envseal::bench::{self, BenchOptions, BenchReport};
use envseal::Error;

use super::args::BenchArgs;
use super::size::parse_size;
use super::values::Jobs;

/// Runs per figure; the fastest is kept.
const RUNS: usize = 3;

pub fn run(args: BenchArgs) -> anyhow::Result<i32> {
    let size = parse_size(&args.size).map_err(|e| Error::Usage(format!("--size: {e}")))?;
    if size < bench::SEGMENT as u64 {
        return Err(Error::Usage(format!("--size {}: must be at least 1MiB", args.size)).into());
    }
    let jobs = Jobs::or_cores(args.jobs);
    let opts = BenchOptions {
        size,
        jobs,
        runs: RUNS,
        dir: std::env::temp_dir(),
    };
    if !args.json {
        eprintln!(
            "envseal: measuring {} per run, best of {RUNS}, {jobs} threads, scratch files in {}",
            args.size,
            opts.dir.display()
        );
    }
    let report = bench::run(&opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(0)
}

fn table(r: &BenchReport) -> String {
    let f = &r.figures;
    let n = r.jobs;
    let rows: [(&str, usize, f64); 11] = [
        ("aes-256-gcm seal", 1, f.seal_single),
        ("aes-256-gcm seal", n, f.seal_parallel),
        ("aes-256-gcm open", 1, f.open_single),
        ("aes-256-gcm open", n, f.open_parallel),
        ("blake3 keyed", 1, f.blake3_single),
        ("blake3 keyed", n, f.blake3_parallel),
        ("memcpy", 1, f.memcpy),
        ("page cache write", n, f.page_cache_write),
        ("write + syncfs", n, f.durable_write),
        ("tree write", n, f.tree_write),
        ("encrypt (tree)", n, f.encrypt_tree),
    ];
    let mut out = format!(
        "# {:>22} | {:>7} | {:>12} | {:>8}\n",
        "Test", "Threads", "Throughput", "vs limit"
    );
    for (name, threads, v) in rows {
        out += &format!(
            "  {name:>22}   {threads:>7}   {:>12}   {:>8.2}\n",
            human(v),
            v / r.limit
        );
    }
    out += &format!("# aes-256-gcm backend: {}\n", r.aead_backend);
    out += &format!(
        "# limit = min(seal, blake3 on {n} threads, page cache write) = {}\n",
        human(r.limit)
    );
    out += &format!(
        "# tree limit = min(seal, blake3, tree write) = {}\n",
        human(r.tree_limit)
    );
    out += &format!(
        "# encrypt reaches {:.2} of the limit, {:.2} of the tree limit\n",
        r.ratio, r.tree_ratio
    );
    out
}

/// Bytes per second as MiB/s below 1 GiB/s, GiB/s above.
fn human(bytes_per_sec: f64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    const GIB: f64 = (1u64 << 30) as f64;
    if bytes_per_sec < GIB {
        format!("{:.1} MiB/s", bytes_per_sec / MIB)
    } else {
        format!("{:.2} GiB/s", bytes_per_sec / GIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_switches_units_at_one_gib() {
        assert_eq!(human(512.0 * 1024.0 * 1024.0), "512.0 MiB/s");
        assert_eq!(human(3.0 * 1024.0 * 1024.0 * 1024.0), "3.00 GiB/s");
    }
}
