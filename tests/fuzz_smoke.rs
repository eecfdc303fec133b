//! Issue 12, item 12: the fuzz targets (fuzz/targets.rs) on stable, bounded: every seed, then a
//! fixed number of deterministic mutations of them, so CI runs the same checks as the nightly
//! `cargo fuzz` runs in seconds. A failure prints the input to add as a seed.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::Path;

/// Inputs per target beyond the seeds (a few seconds in a debug build).
const MUTATIONS: usize = 4000;

/// Fragments that broke parsers before, spliced into seeds.
const FRAGMENTS: &[&str] = &[
    "1e300",
    "-1",
    "NaN",
    "99999999999999999999h",
    "18446744073709551616",
    "\n",
    "\r\n",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "null",
    "é",
    "\u{2028}",
    "0.",
    ".5s",
    "ms",
    "Data",
    "Metadata",
    "job",
    "id",
    "task",
    "input",
    "labels",
    "text",
    "reply_to",
    "\"\"",
    "{}",
    "[]",
    "true",
];

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(6) {
            0 if !input.is_empty() => {
                let last = input.len() - 1;
                input[at.min(last)] ^= 1 << rng.below(8);
            }
            1 => input.splice(at..at, FRAGMENTS[rng.below(FRAGMENTS.len())].bytes()).for_each(drop),
            2 => input.truncate(at),
            3 if at < input.len() => {
                let end = (at + rng.below(64)).min(input.len());
                let piece = input[at..end].to_vec();
                input.splice(at..at, piece.iter().copied().cycle().take(piece.len() * rng.below(50))).for_each(drop);
            }
            4 if at < input.len() => input[at] = rng.below(256) as u8,
            _ => input.insert(at, rng.below(128) as u8),
        }
    }
}

fn run(target: &str, body: fn(&[u8])) {
    let seeds = seeds(target);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
    for seed in &seeds {
        body(seed);
    }
    for _ in 0..MUTATIONS {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &mut input);
        let outcome = std::panic::catch_unwind(|| body(&input));
        assert!(outcome.is_ok(), "{target} failed on {:?}", String::from_utf8_lossy(&input));
    }
}

#[test]
fn invocation_payload() {
    run("invocation_payload", targets::invocation_payload);
}

#[test]
fn job_parser() {
    run("job_parser", targets::job_parser);
}

#[test]
fn upstream_headers() {
    run("upstream_headers", targets::upstream_headers);
}
