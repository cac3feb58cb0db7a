//! The journal reader (docs/FORMAT.md §7) on arbitrary bytes: structure parsed, torn tails
//! cut, authenticated lines checked under a fixed MAC key, without a panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use envseal::journal::Journal;
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("envseal-fuzz-journal-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let d = dir();
    if std::fs::write(d.join("journal.jsonl"), data).is_err() {
        return;
    }
    let store = envseal::store::local::LocalStore::new(d);
    let _ = envseal::journal::head(&store);
    if let Ok((mut j, loaded)) = Journal::open(&store) {
        j.set_mac_key(zeroize::Zeroizing::new([7u8; 32]));
        let _ = j.authenticated(&loaded);
    }
});
