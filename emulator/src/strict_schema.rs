//! Azure OpenAI's check of a strict `json_schema` response format: the service refuses, with
//! 400 `invalid_json_schema`, a schema that uses a keyword outside the subset its structured
//! outputs support (learn.microsoft.com, "Structured outputs", *Supported schemas and
//! limitations*: `minLength`, `pattern`, `format`, `minimum`, `minItems`, ... are not), an
//! object without `additionalProperties: false`, or a property missing from `required`.

use serde_json::{Value, json};

/// The keywords a strict schema may use.
const SUPPORTED: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "anyOf",
    "$defs",
    "$ref",
    "description",
    "title",
];

/// The 400 body for `request`'s strict schema, if the service would refuse it.
pub(crate) fn refusal(request: &Value) -> Option<Value> {
    let format = &request["response_format"];
    if format["type"] != "json_schema" || format["json_schema"]["strict"] != true {
        return None;
    }
    let name = format["json_schema"]["name"].as_str().unwrap_or_default();
    let problem = check(&format["json_schema"]["schema"], &mut Vec::new(), 0)?;
    Some(json!({"error": {
        "message": format!("Invalid schema for response_format '{name}': {problem}"),
        "type": "invalid_request_error",
        "param": "response_format",
        "code": "invalid_json_schema",
    }}))
}

fn check(schema: &Value, context: &mut Vec<String>, depth: usize) -> Option<String> {
    let here = |context: &[String]| {
        let parts: Vec<String> = context.iter().map(|c| format!("'{c}'")).collect();
        format!("In context=({})", parts.join(", "))
    };
    let Some(map) = schema.as_object() else {
        return Some(format!("{}, schema must be a JSON Schema of 'type: \"object\"', got '{schema}'.", here(context)));
    };
    if depth > 64 {
        return None;
    }
    if let Some(keyword) = map.keys().find(|k| !SUPPORTED.contains(&k.as_str())) {
        return Some(format!("{}, '{keyword}' is not permitted.", here(context)));
    }
    if let Some(properties) = map.get("properties").and_then(Value::as_object) {
        if map.get("additionalProperties") != Some(&Value::Bool(false)) {
            return Some(format!(
                "{}, 'additionalProperties' is required to be supplied and to be false.",
                here(context)
            ));
        }
        let required: Vec<&str> = map
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(missing) = properties.keys().find(|k| !required.contains(&k.as_str())) {
            return Some(format!(
                "{}, 'required' is required to be supplied and to be an array including every key in properties. Missing '{missing}'.",
                here(context)
            ));
        }
        for (name, property) in properties {
            context.extend(["properties".to_owned(), name.clone()]);
            let problem = check(property, context, depth + 1);
            context.truncate(context.len() - 2);
            if problem.is_some() {
                return problem;
            }
        }
    }
    for (key, nested) in [("items", map.get("items"))].into_iter().filter_map(|(k, v)| v.map(|v| (k, v))) {
        context.push(key.to_owned());
        let problem = check(nested, context, depth + 1);
        context.pop();
        if problem.is_some() {
            return problem;
        }
    }
    for key in ["anyOf", "$defs"] {
        let children: Vec<(String, &Value)> = match map.get(key) {
            Some(Value::Array(items)) => items.iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
            Some(Value::Object(items)) => items.iter().map(|(k, v)| (k.clone(), v)).collect(),
            _ => Vec::new(),
        };
        for (name, child) in children {
            context.extend([key.to_owned(), name]);
            let problem = check(child, context, depth + 1);
            context.truncate(context.len() - 2);
            if problem.is_some() {
                return problem;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(schema: Value) -> Value {
        json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": schema}}})
    }

    #[test]
    fn refuses_what_strict_mode_refuses() {
        let ok = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "array", "items": {"$ref": "#/$defs/n"}}},
            "required": ["a", "b"], "additionalProperties": false, "$defs": {"n": {"type": "number"}}});
        assert_eq!(refusal(&request(ok)), None);
        let bad = json!({"type": "object", "properties": {"a": {"type": "string", "minLength": 2}}, "required": ["a"], "additionalProperties": false});
        let body = refusal(&request(bad)).unwrap();
        assert_eq!(body["error"]["code"], "invalid_json_schema");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("In context=('properties', 'a'), 'minLength' is not permitted."),
            "{body}"
        );
        let open = json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]});
        assert!(refusal(&request(open)).is_some());
        let optional = json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": [], "additionalProperties": false});
        assert!(refusal(&request(optional)).is_some());
    }
}
