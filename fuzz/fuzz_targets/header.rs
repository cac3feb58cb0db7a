//! Object headers (docs/FORMAT.md §4.1): decode never panics; what decodes re-encodes to
//! the same bytes.
#![no_main]

use envseal::format::{ObjectHeader, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ObjectHeader::decode(data) {
        assert_eq!(&h.encode()[..], &data[..HEADER_LEN]);
    }
});
