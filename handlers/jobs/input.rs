//! Reading a request object field by field, so that every bad input gets an error naming the
//! field and the limit (serde's own messages name neither).

use serde_json::{Map, Value};

use crate::echo::echo;
use crate::error::ApiError;

/// A JSON object being validated; unknown fields are rejected so that typos surface.
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    known: &'static [&'static str],
}

impl<'a> Fields<'a> {
    pub fn new(value: &'a Value, what: &str, known: &'static [&'static str]) -> Result<Self, ApiError> {
        let map = value
            .as_object()
            .ok_or_else(|| ApiError::invalid("", format!("{what} must be a JSON object (got {})", kind(value))))?;
        if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
            // The name is client input, echoed twice (field and message): escaped and capped.
            let unknown = echo(unknown);
            let message = format!("unknown field `{unknown}`; expected one of: {}", known.join(", "));
            return Err(ApiError::invalid(unknown, message));
        }
        Ok(Self { map, known })
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        debug_assert!(self.known.contains(&name));
        self.map.get(name).filter(|v| !v.is_null())
    }

    /// A string of `min..=max` characters (Unicode scalar values).
    pub fn text(&self, name: &str, min: usize, max: usize) -> Result<Option<&'a str>, ApiError> {
        let Some(value) = self.get(name) else { return Ok(None) };
        let s = value
            .as_str()
            .ok_or_else(|| ApiError::invalid(name, format!("{name} must be a string (got {})", kind(value))))?;
        let count = s.chars().count();
        if count < min || count > max {
            let error = format!("{name} must be {min}..={max} characters (got {count})");
            return Err(if count > max {
                ApiError::PayloadTooLarge { field: Some(name.into()), message: error }
            } else {
                ApiError::invalid(name, error)
            });
        }
        Ok(Some(s))
    }

    pub fn required_text(&self, name: &str, min: usize, max: usize) -> Result<&'a str, ApiError> {
        self.text(name, min, max)?.ok_or_else(|| {
            ApiError::invalid(name, format!("{name} is required (a string of {min}..={max} characters)"))
        })
    }

    pub fn integer(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        let Some(value) = self.get(name) else { return Ok(None) };
        let n = value.as_i64().ok_or_else(|| {
            ApiError::invalid(name, format!("{name} must be a whole number in {min}..={max} (got {value})"))
        })?;
        if n < min || n > max {
            return Err(ApiError::invalid(name, format!("{name} must be in {min}..={max} (got {n})")));
        }
        Ok(Some(n))
    }

    pub fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        let Some(value) = self.get(name) else { return Ok(None) };
        value
            .as_bool()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(name, format!("{name} must be true or false (got {})", kind(value))))
    }

    pub fn array(&self, name: &str) -> Result<Option<&'a Vec<Value>>, ApiError> {
        let Some(value) = self.get(name) else { return Ok(None) };
        value
            .as_array()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(name, format!("{name} must be an array (got {})", kind(value))))
    }
}

pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
