//! Plausible answer content: JSON conforming to a `json_schema` response format (labels chosen
//! by overlap with the text), or an extractive summary of the last user message.

use serde_json::{Map, Value, json};

use crate::faults::strip_markers;
use crate::labels;

/// The label sent instead of a listed one for `[[emulator:bad_label]]`.
pub(crate) const BAD_LABEL: &str = "emulator-unlisted-label";

/// The text of one message (a string, or an array of `{type: "text", text}` parts).
pub(crate) fn message_text(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

fn messages(body: &Value) -> &[Value] {
    body["messages"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// All text of the messages with `role` (joined by newlines).
pub(crate) fn text_of(body: &Value, roles: &[&str]) -> String {
    let texts: Vec<String> =
        messages(body).iter().filter(|m| roles.contains(&m["role"].as_str().unwrap_or(""))).map(message_text).collect();
    texts.join("\n")
}

/// Total characters of every message, for token estimates.
pub(crate) fn prompt_chars(body: &Value) -> usize {
    messages(body).iter().map(|m| message_text(m).chars().count()).sum()
}

/// Prompt tokens as the emulator counts them (about 4 characters a token, as for English).
pub(crate) fn prompt_tokens(body: &Value) -> u64 {
    (prompt_chars(body).div_ceil(4) as u64).max(1)
}

/// `max_completion_tokens`, else `max_tokens`.
pub(crate) fn max_completion(body: &Value) -> Option<u64> {
    body["max_completion_tokens"].as_u64().or_else(|| body["max_tokens"].as_u64())
}

/// The assistant's content for this request.
pub(crate) fn answer(body: &Value, bad_label: bool) -> String {
    let last_user = messages(body).iter().rev().find(|m| m["role"] == "user").map(message_text).unwrap_or_default();
    let text = strip_markers(&last_user);
    let system = text_of(body, &["system", "developer"]);
    let format = &body["response_format"];
    match format["type"].as_str() {
        Some("json_schema") => {
            let schema = &format["json_schema"]["schema"];
            let context = Context { text: &text, bad_label, root: schema };
            context.value(schema, 0).to_string()
        }
        Some("json_object") => json!({"summary": summary(&text, &system, max_completion(body))}).to_string(),
        _ => summary(&text, &system, max_completion(body)),
    }
}

/// For [`Fault::InvalidOutput`](crate::faults::Fault): JSON that matches no object schema (every
/// required property missing, one unknown property).
pub(crate) fn not_matching(_body: &Value) -> String {
    json!({"emulator_unexpected_property": true}).to_string()
}

struct Context<'a> {
    text: &'a str,
    bad_label: bool,
    /// The whole schema, for `$ref`s (`#` and `#/$defs/<name>`).
    root: &'a Value,
}

impl Context<'_> {
    fn value(&self, schema: &Value, depth: usize) -> Value {
        if depth > 16 {
            return Value::Null;
        }
        if let Some(reference) = schema["$ref"].as_str() {
            let target = match reference.strip_prefix("#/$defs/") {
                Some(name) => &self.root["$defs"][name],
                None if reference == "#" => self.root,
                None => &Value::Null,
            };
            // A recursive reference answers null where the schema allows it, else recurses.
            return self.value(target, depth + 4);
        }
        if let Some(options) = schema["anyOf"].as_array().or_else(|| schema["oneOf"].as_array()) {
            // Deep in a recursive schema, end the recursion where null is allowed.
            if depth > 8 && options.iter().any(|o| o["type"] == "null") {
                return Value::Null;
            }
            return options.iter().find(|o| o["type"] != "null").map_or(Value::Null, |o| self.value(o, depth + 1));
        }
        if let Some(values) = schema["enum"].as_array() {
            return self.choose(values, false).into_iter().next().unwrap_or(Value::Null);
        }
        let kind = match &schema["type"] {
            Value::Array(kinds) => kinds.iter().filter_map(Value::as_str).find(|k| *k != "null").unwrap_or("null"),
            other => other.as_str().unwrap_or(if schema["properties"].is_object() { "object" } else { "string" }),
        };
        match kind {
            "object" => {
                let properties = schema["properties"].as_object().cloned().unwrap_or_default();
                let object: Map<String, Value> =
                    properties.iter().map(|(name, s)| (name.clone(), self.value(s, depth + 1))).collect();
                Value::Object(object)
            }
            "array" => match schema["items"]["enum"].as_array() {
                Some(values) => Value::Array(self.choose(values, true)),
                None => Value::Array(vec![self.value(&schema["items"], depth + 1)]),
            },
            "number" => json!(if self.matches_any() { 0.9 } else { 0.55 }),
            "integer" => json!(1),
            "boolean" => json!(true),
            "null" => Value::Null,
            _ => Value::String(summary(self.text, "at most 12 words", None)),
        }
    }

    /// Enum values for the answer: labels by overlap with the text (or an unlisted one).
    fn choose(&self, values: &[Value], multi: bool) -> Vec<Value> {
        if self.bad_label {
            return vec![json!(BAD_LABEL)];
        }
        let names: Vec<String> =
            values.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect();
        labels::choose(self.text, &names, multi).into_iter().map(|i| values[i].clone()).collect()
    }

    fn matches_any(&self) -> bool {
        self.text.split_whitespace().next().is_some() && !self.bad_label
    }
}

/// The first number N before the word "words" in `system` (e.g. "at most 120 words"), default 60.
pub(crate) fn word_budget(system: &str) -> usize {
    let tokens: Vec<&str> = system.split_whitespace().collect();
    tokens
        .windows(2)
        .find_map(|w| {
            let next = w[1].trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
            (next == "words").then(|| w[0].parse::<usize>().ok()).flatten()
        })
        .unwrap_or(60)
}

/// Sentences of `text` (whitespace collapsed), split after `.`, `!` or `?`.
fn sentences(text: &str) -> Vec<String> {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = Vec::new();
    let mut current = String::new();
    for word in flat.split(' ') {
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
        if word.ends_with(['.', '!', '?']) {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// An extractive summary: whole sentences spread evenly over the text, starting with the first,
/// within the word budget (bullets when the system message asks for them), never more than 3/4
/// of the completion allowance in words. Spread, not just the opening, so that a summary of a
/// long document (or of its parts' summaries) reflects all of it, as a model's would.
pub(crate) fn summary(text: &str, system: &str, max_completion: Option<u64>) -> String {
    let mut budget = word_budget(system);
    if let Some(max) = max_completion {
        budget = budget.min((max as usize * 3 / 4).max(1));
    }
    let bullets = system.to_lowercase().contains("bullet");
    let all = sentences(text);
    if all.is_empty() {
        return "The text is empty.".to_owned();
    }
    let cost = |sentence: &String| sentence.split(' ').count() + usize::from(bullets);
    let total: usize = all.iter().map(cost).sum();
    // How many sentences of average length fit; pick that many at even steps.
    let fit = (budget * all.len() / total.max(1)).clamp(1, all.len());
    let mut chosen: Vec<&String> = Vec::new();
    let mut used = 0;
    for i in 0..fit {
        let sentence = &all[i * all.len() / fit];
        if used + cost(sentence) <= budget {
            used += cost(sentence);
            chosen.push(sentence);
        }
    }
    if chosen.is_empty() {
        let room = budget.saturating_sub(usize::from(bullets)).max(1);
        let first = all[0].split(' ').take(room).collect::<Vec<_>>().join(" ");
        return if bullets { format!("- {first}") } else { first };
    }
    if bullets {
        chosen.iter().map(|s| format!("- {s}")).collect::<Vec<_>>().join("\n")
    } else {
        chosen.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARTICLE: &str = "The city council approved a new budget on Tuesday. It funds three new libraries and repairs \
        to the old bridge. Opponents said the plan raises property taxes too quickly.";

    #[test]
    fn summary_respects_the_budget_and_bullets() {
        assert_eq!(word_budget("Summarise in at most 20 words. Use facts."), 20);
        assert_eq!(word_budget("Be brief."), 60);
        let s = summary(ARTICLE, "at most 20 words", Some(200));
        assert!(s.contains("budget") && s.split_whitespace().count() <= 20, "{s}");
        let s = summary(ARTICLE, "in at most 5 words", None);
        assert_eq!(s.split_whitespace().count(), 5, "{s}");
        let s = summary(ARTICLE, "at most 40 words, as a bulleted list", None);
        assert!(s.lines().all(|l| l.starts_with("- ")) && s.lines().count() == 3, "{s}");
        let s = summary(ARTICLE, "at most 100 words", Some(8));
        assert!(s.split_whitespace().count() <= 6, "{s}");
    }

    #[test]
    fn structured_answers_follow_refs_and_the_fault_does_not() {
        let schema = json!({"type": "object", "additionalProperties": false, "required": ["people", "next"],
            "properties": {"people": {"type": "array", "items": {"$ref": "#/$defs/person"}},
                           "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
            "$defs": {"person": {"type": "object", "additionalProperties": false, "required": ["name", "age"],
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}}});
        let body = json!({"messages": [{"role": "user", "content": ARTICLE}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": schema}}});
        let answer: Value = serde_json::from_str(&answer(&body, false)).unwrap();
        assert!(answer["people"][0]["name"].is_string() && answer["people"][0]["age"] == 1, "{answer}");
        assert!(answer["next"].is_object() || answer["next"].is_null(), "{answer}");
        let bad: Value = serde_json::from_str(&not_matching(&body)).unwrap();
        assert!(bad.get("people").is_none(), "{bad}");
    }

    #[test]
    fn a_long_text_is_summarised_from_beginning_to_end() {
        let text: String =
            (1..=200).map(|i| format!("Chapter {i} reports finding F{i}. It adds details nobody needs.\n\n")).collect();
        let s = summary(&text, "in at most 60 words", None);
        assert!(s.split_whitespace().count() <= 60, "{s}");
        assert!(s.starts_with("Chapter 1 reports"), "{s}");
        let last = s.rsplit("Chapter ").next().unwrap();
        let n: usize = last.split(' ').next().unwrap().parse().unwrap();
        assert!(n > 150, "the summary should reach the end of the text: {s}");
    }
}
