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

/// `FUZZ_SMOKE_SECONDS=600 cargo test --release --test fuzz_smoke -- --nocapture` runs each
/// target for that long instead (a longer run by hand; CI runs the fixed count). Inputs that
/// parse are kept and mutated further, so the run goes deeper than the seeds.
fn run(target: &str, body: fn(&[u8])) {
    let mut corpus = seeds(target);
    let seed_count = corpus.len();
    let seconds: Option<u64> = std::env::var("FUZZ_SMOKE_SECONDS").ok().and_then(|s| s.parse().ok());
    let started = std::time::Instant::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64 ^ seconds.unwrap_or(0));
    for seed in &corpus {
        body(seed);
    }
    let mut executed = 0u64;
    loop {
        let done = match seconds {
            Some(limit) => started.elapsed().as_secs() >= limit,
            None => executed >= MUTATIONS as u64,
        };
        if done {
            break;
        }
        let mut input = corpus[rng.below(corpus.len())].clone();
        mutate(&mut rng, &mut input);
        let outcome = std::panic::catch_unwind(|| body(&input));
        assert!(outcome.is_ok(), "{target} failed on {:?}", String::from_utf8_lossy(&input));
        executed += 1;
        // Keep a bounded sample of inputs that are still JSON-ish and small, to mutate further.
        if seconds.is_some() && corpus.len() < 4096 && input.len() < 4096 && rng.below(64) == 0 {
            corpus.push(input);
        }
    }
    if seconds.is_some() {
        eprintln!(
            "{target}: {executed} inputs in {:.0} s, corpus {} ({seed_count} seeds), no failure",
            started.elapsed().as_secs_f64(),
            corpus.len()
        );
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
