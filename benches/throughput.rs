//! Criterion benchmarks of the primitives and of a whole `encrypt` (docs/PERFORMANCE.md). Sizes are
//! small so `cargo bench` finishes in about a minute; `envseal bench` measures at scale and
//! reports the ratios that matter.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use envseal::bench::{self, EncryptRig, SEGMENT};
use envseal::format::TAG_LEN;

fn segments(c: &mut Criterion) {
    let keys = bench::random_file_keys().expect("keys");
    let mut g = c.benchmark_group("segment");
    g.throughput(Throughput::Bytes(SEGMENT as u64));
    let mut buf = vec![0x5au8; SEGMENT + TAG_LEN];
    g.bench_function("seal 1MiB", |b| {
        b.iter(|| keys.seal_segment(0, false, black_box(&mut buf)))
    });
    // Opening in place destroys the ciphertext: each iteration opens a fresh sealed copy
    // (the copy is not timed).
    keys.seal_segment(0, false, &mut buf);
    let sealed = buf.clone();
    g.bench_function("open 1MiB", |b| {
        b.iter_batched_ref(
            || sealed.clone(),
            |ct| keys.open_segment(0, false, ct).map(|p| p.len()),
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let key = [7u8; 32];
    let data = vec![0x5au8; SEGMENT];
    let mut g = c.benchmark_group("blake3");
    g.throughput(Throughput::Bytes(SEGMENT as u64));
    g.bench_function("keyed 1MiB, 1 thread", |b| {
        b.iter(|| blake3::keyed_hash(&key, black_box(&data)))
    });
    g.finish();
}

fn end_to_end(c: &mut Criterion) {
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let size = 8u64 << 20;
    let mut rig = EncryptRig::new(&std::env::temp_dir(), size, jobs).expect("bench rig");
    let mut g = c.benchmark_group("encrypt");
    g.throughput(Throughput::Bytes(rig.bytes()));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function(BenchmarkId::new("tree", "8MiB"), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rig.run().expect("encrypt")).sum())
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = segments, hashing, end_to_end
}
criterion_main!(benches);
