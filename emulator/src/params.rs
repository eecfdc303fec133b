//! The request parameters a deployment's model accepts, checked in the service's order after
//! the deployment is found: the dated api-version gate, then parameters reasoning models
//! refuse, then `reasoning_effort`. Each refusal is the real 400 body (see `errors.rs`).

use serde_json::Value;

use crate::errors;
use crate::models::{Effort, ModelProfile};

/// Parameters reasoning models refuse outright (`temperature` is refused unless it is 1).
const REFUSED_BY_REASONING: [&str; 6] =
    ["max_tokens", "top_p", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs"];

/// The effort a request runs at (`None` for a model that does not reason), or the 400 answer.
pub(crate) fn check(
    model: &ModelProfile,
    api_version: Option<&str>,
    body: &Value,
) -> Result<Option<Effort>, (u16, Value)> {
    if let Some(version) = api_version
        && !model.serves_api_version(version)
    {
        return Err(errors::api_version_too_old(&model.name));
    }
    let effort = &body["reasoning_effort"];
    let Some(reasoning) = model.reasoning else {
        if !effort.is_null() {
            return Err(errors::unrecognized_argument("reasoning_effort"));
        }
        return Ok(None);
    };
    if let Some(name) = REFUSED_BY_REASONING.iter().find(|name| !body[**name].is_null()) {
        return Err(errors::unsupported_parameter(name));
    }
    let temperature = &body["temperature"];
    if !temperature.is_null() && temperature.as_f64() != Some(1.0) {
        return Err(errors::unsupported_temperature(temperature));
    }
    if effort.is_null() {
        return Ok(Some(reasoning.default));
    }
    let text = effort.as_str().map_or_else(|| effort.to_string(), str::to_owned);
    match Effort::parse(&text).filter(|e| reasoning.efforts.contains(e)) {
        Some(chosen) => Ok(Some(chosen)),
        None => {
            let accepted: Vec<&str> = reasoning.efforts.iter().map(|e| e.as_str()).collect();
            Err(errors::unsupported_effort(&text, &accepted))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(result: Result<Option<Effort>, (u16, Value)>) -> String {
        let (status, body) = result.unwrap_err();
        assert_eq!(status, 400);
        body["error"]["code"].as_str().unwrap_or("null").to_owned()
    }

    #[test]
    fn reasoning_models_refuse_what_the_service_refuses() {
        let mini = ModelProfile::known("gpt-5-mini").unwrap();
        let newer = ModelProfile::known("gpt-5.4-mini").unwrap();
        let plain = ModelProfile::known("gpt-4o-mini").unwrap();
        assert_eq!(check(&mini, None, &json!({})).unwrap(), Some(Effort::Medium));
        assert_eq!(check(&newer, None, &json!({})).unwrap(), Some(Effort::None));
        assert_eq!(check(&plain, None, &json!({"temperature": 0.2})).unwrap(), None);
        assert_eq!(code(check(&mini, None, &json!({"max_tokens": 5}))), "unsupported_parameter");
        assert_eq!(code(check(&mini, None, &json!({"temperature": 0.2}))), "unsupported_value");
        assert!(check(&mini, None, &json!({"temperature": 1})).is_ok());
        assert_eq!(check(&mini, None, &json!({"reasoning_effort": "minimal"})).unwrap(), Some(Effort::Minimal));
        let (_, body) = check(&newer, None, &json!({"reasoning_effort": "minimal"})).unwrap_err();
        assert_eq!(
            body["error"]["message"],
            "Unsupported value: 'reasoning_effort' does not support 'minimal' with this model. Supported values are: 'none', 'low', 'medium', and 'high'."
        );
        assert_eq!(code(check(&plain, None, &json!({"reasoning_effort": "low"}))), "null");
        let (_, body) = check(&mini, Some("2024-10-21"), &json!({})).unwrap_err();
        assert_eq!(
            body["error"]["message"],
            "Model gpt-5-mini is enabled only for api versions 2024-12-01-preview and later"
        );
    }
}
