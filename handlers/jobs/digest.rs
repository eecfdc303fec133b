//! The input digest: what makes a job id safe to reuse only for the same job.
//!
//! A Result records the digest of the job it answers, so a redelivery of the same job (same
//! digest) is told apart from a different job that reuses the id (another digest, a `conflict`),
//! and a client can check that a Result answers *its* input (`POST /api/jobs` returns each
//! accepted job's digest).
//!
//! The digest is SHA-256, lower-case hex, of `keyless-jobs/1\n{task}\n{input}` where `{input}` is
//! the job's `input` as canonical JSON: object keys sorted (by their UTF-16-agnostic byte order),
//! no whitespace, members whose value is `null` left out (a null field counts as absent when a
//! job is validated), strings and numbers as serde_json writes them. `id` and `reply_to` are not
//! part of it: they do not change the answer.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The digest of a job with task name `task` and input `input`.
pub fn input_digest(task: &str, input: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"keyless-jobs/1\n");
    hasher.update(task.as_bytes());
    hasher.update(b"\n");
    let mut canonical = String::new();
    write_canonical(input, &mut canonical);
    hasher.update(canonical.as_bytes());
    hex(&hasher.finalize())
}

/// The digest of a job document (`{"task", "input", ...}`) as far as it can be read: a missing
/// task or input counts as empty / null, so even an invalid job's Result carries a digest.
pub fn document_digest(document: &Value) -> String {
    let task = document.get("task").and_then(Value::as_str).unwrap_or_default();
    input_digest(task, document.get("input").unwrap_or(&Value::Null))
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().filter(|(_, v)| !v.is_null()).collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, member)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(member, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes.iter().flat_map(|b| [DIGITS[usize::from(b >> 4)] as char, DIGITS[usize::from(b & 15)] as char]).collect()
}

/// Whether `text` looks like a digest (64 lower-case hex digits).
pub fn is_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_whitespace_and_nulls_do_not_matter_content_does() {
        let a = input_digest("summarize", &json!({"text": "t", "max_words": 20}));
        let b: Value = serde_json::from_str(r#"{ "max_words" : 20, "language": null, "text":"t" }"#).unwrap();
        assert_eq!(a, input_digest("summarize", &b));
        assert!(is_digest(&a), "{a}");
        assert_ne!(a, input_digest("summarize", &json!({"text": "t", "max_words": 21})));
        assert_ne!(a, input_digest("classify", &json!({"text": "t", "max_words": 20})));
        assert_ne!(
            input_digest("classify", &json!({"text": "t", "labels": ["a", "b"]})),
            input_digest("classify", &json!({"text": "t", "labels": ["b", "a"]})),
            "label order is part of the input"
        );
        // Known answer: a change of the canonical form is a change of the contract.
        assert_eq!(
            input_digest("summarize", &json!({"text": "t"})),
            hex(&Sha256::digest(b"keyless-jobs/1\nsummarize\n{\"text\":\"t\"}"))
        );
        assert_eq!(
            document_digest(&json!({"id": "x", "task": "summarize", "input": {"text": "t"}, "reply_to": "q"})),
            { input_digest("summarize", &json!({"text": "t"})) }
        );
    }
}
