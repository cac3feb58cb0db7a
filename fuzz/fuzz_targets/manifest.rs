//! The manifest reader (docs/FORMAT.md §6) on arbitrary bytes: every record parsed, the tree
//! order checked, the end record's counts compared, without a panic and within the limits.
//! Each line is also given to `Entry::from_line` directly (the per-entry validation).
#![no_main]

use envseal::format::manifest::{Entry, Header, ManifestReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = Header {
        vault_id: [1; 16],
        created: String::new(),
        generator: String::new(),
        segment_size: 4096,
        conceal_names: false,
        shard: None,
    };
    for line in data.split(|&b| b == b'\n') {
        let _ = Entry::from_line(line, &header);
    }
    let bytes = Box::new(std::io::Cursor::new(data.to_vec()));
    if let Ok(mut r) = ManifestReader::from_reader(bytes, "fuzz input".into()) {
        while let Ok(Some(_)) = r.next_entry() {}
    }
});
