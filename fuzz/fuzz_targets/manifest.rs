//! The manifest reader (docs/FORMAT.md §6) on arbitrary bytes: every record parsed, the tree
//! order checked, the end record's counts compared, without a panic and within the limits.
//! Each line is also given to `Entry::from_line` directly (the per-entry validation).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use envseal::manifest::{Entry, Header, ManifestReader};
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("envseal-fuzz-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let header = Header {
        vault_id: [1; 16],
        created: String::new(),
        generator: String::new(),
        segment_size: 4096,
        conceal_names: false,
    };
    for line in data.split(|&b| b == b'\n') {
        let _ = Entry::from_line(line, &header);
    }
    let d = dir();
    if std::fs::write(d.join("manifest.jsonl"), data).is_err() {
        return;
    }
    if let Ok(mut r) = ManifestReader::open(d) {
        while let Ok(Some(_)) = r.next_entry() {}
    }
});
