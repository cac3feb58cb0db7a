//! Key files (docs/FORMAT.md §5): parsed as readers parse them, then turned into a batch
//! (ids, commitment and wrappings checked), without a panic.
#![no_main]

use envseal::format::manifest::KeyFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = serde_json::from_slice::<KeyFile>(data) {
        let _ = k.to_batch("fuzz");
    }
});
