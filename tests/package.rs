//! Runs scripts/package (a release build: about two minutes from cold on two cores, seconds
//! when up to date) and checks the zip azd deploys: exactly host.json, the binary and every
//! function.json, reproducible metadata, and a static binary that starts and serves a summary
//! (the deployed build: musl, with mimalloc).
//! The zip is read with python3's zipfile, which the script itself needs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python(script: &str, args: &[&Path]) -> String {
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().expect("python3");
    assert!(out.status.success(), "python3 failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Name, Unix mode, timestamp and text (for .json entries) of every entry, in archive order.
const LIST: &str = r#"
import json, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
print(json.dumps([{"name": i.filename, "mode": i.external_attr >> 16, "date": list(i.date_time),
                   "text": z.read(i).decode() if i.filename.endswith(".json") else None}
                  for i in z.infolist()]))
"#;

const EXTRACT: &str = r#"
import sys, zipfile
open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("handler"))
"#;

/// A static executable has no PT_INTERP program header (no dynamic loader).
fn is_static_elf(bytes: &[u8]) -> bool {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).all(|i| u32::from_le_bytes(bytes[phoff + i * size..][..4].try_into().unwrap()) != 3)
}

#[test]
fn package_builds_a_deployable_reproducible_zip_with_a_static_binary() {
    let root = root();
    let out = Command::new("bash")
        .arg(root.join("scripts/package"))
        .current_dir(&root)
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/package");
    assert!(out.status.success(), "scripts/package failed");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (digest, file) = stdout.trim().rsplit('\n').next().unwrap().split_once("  ").expect("sha256 line");
    assert_eq!(file, "dist/app.zip");
    assert!(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()), "{digest}");

    let zip = root.join("dist/app.zip");
    let entries: Vec<Value> = serde_json::from_str(&python(LIST, &[&zip])).unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e["name"].as_str().unwrap()).collect();

    // Exactly host.json, the binary and each function folder's function.json, sorted.
    let mut expected: BTreeSet<String> = ["host.json".to_owned(), "handler".to_owned()].into();
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("function.json").is_file() {
            expected.insert(format!("{}/function.json", dir.file_name().unwrap().to_string_lossy()));
        }
    }
    assert!(expected.len() > 2, "no function folders");
    assert_eq!(names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>(), expected);
    assert!(names.is_sorted(), "entries must be sorted: {names:?}");

    for e in &entries {
        let name = e["name"].as_str().unwrap();
        assert_eq!(e["date"], serde_json::json!([1980, 1, 1, 0, 0, 0]), "{name}: timestamp not fixed");
        let mode = e["mode"].as_u64().unwrap();
        let want = if name == "handler" { 0o100755 } else { 0o100644 };
        assert_eq!(mode, want, "{name}: mode {mode:o}");
        if let Some(text) = e["text"].as_str()
            && name != "host.json"
        {
            assert_eq!(text, std::fs::read_to_string(root.join(name)).unwrap(), "{name} differs from the repo's");
        }
    }

    // host.json: the repo's, with the executable path pointing at the packaged binary.
    let packaged = entries.iter().find(|e| e["name"] == "host.json").unwrap();
    let packaged: Value = serde_json::from_str(packaged["text"].as_str().unwrap()).unwrap();
    let path = packaged["customHandler"]["description"]["defaultExecutablePath"].as_str().unwrap();
    assert!(names.contains(&path), "defaultExecutablePath `{path}` is not in the zip");
    let mut repo: Value = serde_json::from_str(&std::fs::read_to_string(root.join("host.json")).unwrap()).unwrap();
    repo["customHandler"]["description"]["defaultExecutablePath"] = Value::from(path);
    assert_eq!(packaged, repo, "host.json changed beyond defaultExecutablePath");

    // The packaged binary: static, and it starts and prints its version within 5 s.
    let dir = std::env::temp_dir().join(format!("keyless-jobs-package-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("handler");
    python(EXTRACT, &[&zip, &binary]);
    assert!(is_static_elf(&std::fs::read(&binary).unwrap()), "the packaged handler is dynamically linked");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = Command::new(&binary)
        .arg("--version")
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the packaged handler");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(5) {
            child.kill().ok();
            panic!("`handler --version` did not exit within 5 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let version = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "handler --version failed: {}", String::from_utf8_lossy(&output.stderr));
    assert!(version.starts_with("handler "), "unexpected --version output: {version}");

    // And it does the job, against the emulator, as the host would run it in Azure.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let emulator = common::emulator().await;
        let env = common::HandlerEnv::managed_identity(&emulator);
        let handler = env.try_spawn_bin(&binary).await.unwrap_or_else(|output| panic!("did not start:\n{output}"));
        let (status, body) = common::post_json(&handler, "/api/summarize", &json!({"text": common::ARTICLE})).await;
        assert_eq!(status, 200, "{body}\n{}", handler.output());
        assert!(body["summary"].as_str().is_some_and(|s| !s.is_empty()), "{body}");
        assert_eq!(emulator.stats().chat_ok, 1);
    });
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_static_check_tells_static_from_dynamic() {
    // This test binary itself is dynamically linked (the default gnu target).
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert!(!is_static_elf(&me));
}
