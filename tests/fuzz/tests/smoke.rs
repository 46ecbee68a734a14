//! A stable-toolchain smoke run of every fuzz target: its corpus, then mutations of it
//! (bit flips, byte edits, truncation, splicing, repeats) for `FUZZ_SMOKE_SECS` seconds per
//! target (default 5), with a seed from `FUZZ_SMOKE_SEED` (default: the clock, printed). No
//! coverage guidance: it keeps the targets compiling and catches the shallow crashes. An input
//! that panics is saved under `artifacts/<target>/` and the test fails naming it; replay it
//! with `cargo fuzz run <target> <file>` or `FUZZ_SMOKE_REPLAY=<file>`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*: enough randomness for mutations, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes that matter to the parsers: JSON, SDP and candidate syntax.
const INTERESTING: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"\\u0000",
    b"null",
    b"-1",
    b"1e999",
    b"\r\n",
    b"\n",
    b"a=candidate:",
    b"m=audio ",
    b"a=mid:",
    b"a=fingerprint:sha-256 ",
    b"a=setup:",
    b"|",
    b";",
    b" typ host",
    b".local",
    b"a=end-of-candidates",
    b"\xff",
    b"\xc3\xa9",
    b"\xf0\x9f\x93\x9e",
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(64)) + 1;
                input.drain(i..i + n);
            }
            3 => {
                let tok = INTERESTING[rng.below(INTERESTING.len())];
                let i = rng.below(len + 1);
                input.splice(i..i, tok.iter().copied());
            }
            4 if len > 0 => input.truncate(rng.below(len)),
            5 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let (i, j) = (rng.below(len + 1), rng.below(other.len() + 1));
                input.truncate(i);
                input.extend_from_slice(&other[j..]);
            }
            6 if len > 0 && len < 1 << 16 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(256)) + 1;
                let piece = input[i..i + n].to_vec();
                input.splice(i..i, piece);
            }
            _ => input.push(rng.next() as u8),
        }
    }
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn load_corpus(target: &str) -> Vec<Vec<u8>> {
    let d = dir().join("corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&d)
        .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Runs `body` on `input`; on a panic, saves the input and fails naming it.
fn run_one(target: &str, body: vertobot_fuzz::Body, input: &[u8], seed: u64) {
    if std::panic::catch_unwind(|| body(input)).is_err() {
        let d = dir().join("artifacts").join(target);
        std::fs::create_dir_all(&d).unwrap();
        let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
        let f = d.join(format!("smoke-crash-{hash:016x}"));
        std::fs::write(&f, input).unwrap();
        // Back to the default hook (the quiet one hid the target's own panic) so this shows.
        drop(std::panic::take_hook());
        panic!(
            "{target} panicked (seed {seed}) on an input saved as {}: {:?}",
            f.display(),
            String::from_utf8_lossy(&input[..input.len().min(500)])
        );
    }
}

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    if let Ok(f) = std::env::var("FUZZ_SMOKE_REPLAY") {
        let input = std::fs::read(&f).unwrap();
        for (name, body) in vertobot_fuzz::TARGETS {
            if f.contains(name) {
                body(&input);
            }
        }
        return;
    }
    let secs: f64 = std::env::var("FUZZ_SMOKE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let seed: u64 = std::env::var("FUZZ_SMOKE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    println!("FUZZ_SMOKE_SEED={seed}");
    // The panics are expected to be caught and reported above; keep the log short.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for (name, body) in vertobot_fuzz::TARGETS {
        let corpus = load_corpus(name);
        assert!(!corpus.is_empty(), "{name}: empty corpus");
        for input in &corpus {
            run_one(name, *body, input, seed);
        }
        let mut rng = Rng(seed);
        let (start, mut runs) = (Instant::now(), corpus.len());
        while start.elapsed() < Duration::from_secs_f64(secs) {
            let mut input = corpus[rng.below(corpus.len())].clone();
            for _ in 0..=rng.below(8) {
                mutate(&mut rng, &corpus, &mut input);
            }
            run_one(name, *body, &input, seed);
            runs += 1;
        }
        println!("{name}: {runs} inputs in {:?}", start.elapsed());
    }
    std::panic::set_hook(hook);
}
