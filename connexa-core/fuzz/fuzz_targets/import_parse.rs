//! Feeds arbitrary bytes to the import parser (through a reader that returns
//! them in small, uneven pieces) and checks that it never panics, that every
//! error has a line number inside the input, and that a read in one piece gives
//! the same result.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;

struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.step = self.step % 7 + 1;
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let lines = data.iter().filter(|b| **b == b'\n').count() + 1;
    let whole: Vec<_> = connexa_core::import::parse(data).collect();
    for row in &whole {
        let line = match row {
            Ok(p) => p.line,
            Err(e) => e.line,
        };
        assert!(line >= 1 && line <= lines, "line {line} of {lines}");
    }
    let trickled: Vec<_> = connexa_core::import::parse(Trickle { data, step: 0 }).collect();
    assert_eq!(whole, trickled);
});
