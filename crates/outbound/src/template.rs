//! Templates: checking a send's parameters against the stored template (count, type and
//! length, positional or named), rendering a preview, and reading the Graph API's template
//! objects.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};
use waypost_core::{Error, ErrorCode, Result};
use waypost_store::{Template, TemplateUpsert};

use crate::message::TemplateSend;

/// Meta caps a text parameter well below the body limit; 1024 keeps a body renderable.
const PARAM_MAX: usize = 1024;

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::TemplateInvalid, message)
}

/// The placeholders of a template text, in order: `1`, `2` or `customer_name`.
pub fn placeholders(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let name = after[..end].trim();
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            found.push(name.to_string());
        }
        rest = &after[end + 2..];
    }
    found
}

fn component<'a>(template: &'a Template, kind: &str) -> Option<&'a Value> {
    template.components.as_array()?.iter().find(|c| {
        c.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.eq_ignore_ascii_case(kind))
    })
}

fn send_parameters<'a>(components: &'a [Value], kind: &str) -> &'a [Value] {
    components
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
        .and_then(|c| c.get("parameters"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The text a parameter stands for (for previews), after checking its type and length.
fn parameter_text(where_: &str, p: &Value) -> Result<String> {
    let kind = p.get("type").and_then(Value::as_str).unwrap_or_default();
    let text = match kind {
        "text" => p.get("text").and_then(Value::as_str).map(str::to_string),
        "currency" => p
            .pointer("/currency/fallback_value")
            .and_then(Value::as_str)
            .map(str::to_string),
        "date_time" => p
            .pointer("/date_time/fallback_value")
            .and_then(Value::as_str)
            .map(str::to_string),
        other => {
            return Err(invalid(format!(
                "{where_}: a parameter of type {other:?} cannot fill a text placeholder \
                 (use text, currency or date_time)"
            )));
        }
    }
    .ok_or_else(|| invalid(format!("{where_}: the {kind} parameter has no value")))?;
    let n = text.chars().count();
    if n == 0 || n > PARAM_MAX {
        return Err(invalid(format!(
            "{where_}: parameters must be 1 to {PARAM_MAX} characters (got {n})"
        )));
    }
    Ok(text)
}

/// Matches parameters to placeholders, positionally or by `parameter_name`.
fn fill(
    where_: &str,
    template_text: &str,
    named: bool,
    params: &[Value],
) -> Result<(String, usize)> {
    let wanted = placeholders(template_text);
    if params.len() != wanted.len() {
        return Err(invalid(format!(
            "{where_} takes {} parameter(s), {} given",
            wanted.len(),
            params.len()
        )));
    }
    let mut values = BTreeMap::new();
    for (i, p) in params.iter().enumerate() {
        let key = if named {
            p.get("parameter_name")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| invalid(format!("{where_}: named parameters need parameter_name")))?
        } else {
            (i + 1).to_string()
        };
        if !wanted.contains(&key) {
            return Err(invalid(format!(
                "{where_} has no placeholder {{{{{key}}}}}"
            )));
        }
        values.insert(key, parameter_text(where_, p)?);
    }
    let mut rendered = template_text.to_string();
    for (key, value) in &values {
        rendered = rendered.replace(&format!("{{{{{key}}}}}"), value);
    }
    Ok((rendered, params.len()))
}

/// The `index` of a send's button component (Meta documents a string; some clients send a
/// number).
fn button_index(component: &Value) -> Option<usize> {
    if component.get("type").and_then(Value::as_str) != Some("button") {
        return None;
    }
    match component.get("index")? {
        Value::String(s) => s.parse().ok(),
        other => other.as_u64().and_then(|n| usize::try_from(n).ok()),
    }
}

/// A template rendered with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Rendered {
    pub header: Option<String>,
    pub body: String,
    pub footer: Option<String>,
    pub buttons: Vec<String>,
}

/// Checks a send against the stored template before it is queued: the template must be
/// approved and the parameters must fit (`template_invalid` otherwise).
pub fn check_send(template: &Template, send: &TemplateSend) -> Result<Rendered> {
    if template.status != "APPROVED" {
        return Err(invalid(format!(
            "template {} ({}) is {}, not APPROVED",
            template.name, template.language, template.status
        )));
    }
    render(template, &send.components)
}

/// Renders a template with its parameters, whatever its review status (a preview of a
/// pending template is useful too). Fails with `template_invalid` when they do not fit.
pub fn render(template: &Template, components: &[Value]) -> Result<Rendered> {
    let named = template.parameter_format.eq_ignore_ascii_case("NAMED");
    for c in components {
        let kind = c.get("type").and_then(Value::as_str).unwrap_or_default();
        if !matches!(kind, "header" | "body" | "button") {
            return Err(invalid(format!(
                "component type {kind:?} is not header, body or button"
            )));
        }
    }
    let header = match component(template, "HEADER") {
        None => {
            if !send_parameters(components, "header").is_empty() {
                return Err(invalid("this template has no header"));
            }
            None
        }
        Some(h) => {
            let format = h.get("format").and_then(Value::as_str).unwrap_or("TEXT");
            let params = send_parameters(components, "header");
            if format.eq_ignore_ascii_case("TEXT") {
                let text = h.get("text").and_then(Value::as_str).unwrap_or_default();
                Some(fill("the header", text, named, params)?.0)
            } else {
                let wanted = format.to_ascii_lowercase();
                let ok = params.len() == 1
                    && params[0].get("type").and_then(Value::as_str) == Some(&wanted)
                    && params[0]
                        .get(&wanted)
                        .is_some_and(|m| m.get("link").is_some() || m.get("id").is_some());
                if !ok {
                    return Err(invalid(format!(
                        "the header needs one {wanted} parameter with a link or id"
                    )));
                }
                Some(format!("[{wanted}]"))
            }
        }
    };
    let body_text = component(template, "BODY")
        .and_then(|b| b.get("text"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (body, _) = fill(
        "the body",
        body_text,
        named,
        send_parameters(components, "body"),
    )?;
    let footer = component(template, "FOOTER")
        .and_then(|f| f.get("text"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut buttons = Vec::new();
    let template_buttons = component(template, "BUTTONS")
        .and_then(|b| b.get("buttons"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    for (i, b) in template_buttons.iter().enumerate() {
        let text = b.get("text").and_then(Value::as_str).unwrap_or_default();
        let kind = b.get("type").and_then(Value::as_str).unwrap_or_default();
        let given = components.iter().find(|c| button_index(c) == Some(i));
        if kind.eq_ignore_ascii_case("URL")
            && b.get("url")
                .and_then(Value::as_str)
                .is_some_and(|u| u.contains("{{"))
        {
            let params = given
                .and_then(|g| g.get("parameters"))
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            let url = b.get("url").and_then(Value::as_str).unwrap_or_default();
            // A URL suffix is positional even in named templates.
            let (rendered, _) = fill(&format!("button {i}"), url, false, params)?;
            buttons.push(format!("{text} ({rendered})"));
        } else {
            buttons.push(text.to_string());
        }
    }
    for c in components {
        if c.get("type").and_then(Value::as_str) == Some("button")
            && button_index(c).is_none_or(|i| i >= template_buttons.len())
        {
            return Err(invalid(
                "a button parameter names a button the template lacks",
            ));
        }
    }
    Ok(Rendered {
        header,
        body,
        footer,
        buttons,
    })
}

/// A Graph API template object as stored locally.
pub fn from_graph(v: &Value) -> Option<TemplateUpsert> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    Some(TemplateUpsert {
        provider_template_id: s("id"),
        name: s("name")?,
        language: s("language")?,
        category: s("category").unwrap_or_else(|| "UTILITY".into()),
        status: s("status").unwrap_or_else(|| "PENDING".into()),
        quality: v
            .pointer("/quality_score/score")
            .and_then(Value::as_str)
            .map(str::to_string),
        parameter_format: s("parameter_format").unwrap_or_else(|| "POSITIONAL".into()),
        components: v.get("components").cloned().unwrap_or_else(|| json!([])),
        reason: s("rejected_reason").filter(|r| r != "NONE"),
    })
}

/// A template to submit for approval.
#[derive(Debug, Clone, serde::Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTemplate {
    /// Lowercase letters, digits and underscores; at most 512 characters.
    pub name: String,
    /// e.g. `en_US`; 2 to 16 characters.
    pub language: String,
    /// `MARKETING`, `UTILITY` or `AUTHENTICATION`.
    pub category: String,
    /// `POSITIONAL` (default) or `NAMED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter_format: Option<String>,
    /// HEADER, BODY, FOOTER and BUTTONS components, as the Graph API takes them, with Meta's
    /// limits: at most 4 components; header text at most 60 characters, body text 1 to 1024,
    /// footer text at most 60; at most 10 buttons, each text at most 25 characters, url at
    /// most 2000, phone_number at most 20; any other text (examples, formats) at most 2000.
    #[schema(value_type = Vec<Object>)]
    pub components: Vec<Value>,
}

/// Meta's limits on a template's parts, in characters.
const COMPONENTS_MAX: usize = 4;
const HEADER_TEXT_MAX: usize = 60;
const BODY_TEXT_MAX: usize = 1024;
const FOOTER_TEXT_MAX: usize = 60;
const BUTTONS_MAX: usize = 10;
const BUTTON_TEXT_MAX: usize = 25;
const BUTTON_URL_MAX: usize = 2000;
const BUTTON_PHONE_MAX: usize = 20;
/// Examples, formats and anything else a component carries.
const OTHER_TEXT_MAX: usize = 2000;

fn too_long(what: &str, max: usize) -> Error {
    Error::validation(format!("{what} must be at most {max} characters"))
}

/// Every string anywhere in `value` has at most `max` characters.
fn strings_within(value: &Value, max: usize) -> bool {
    match value {
        Value::String(s) => s.chars().count() <= max,
        Value::Array(items) => items.iter().all(|v| strings_within(v, max)),
        Value::Object(fields) => fields.values().all(|v| strings_within(v, max)),
        _ => true,
    }
}

/// The field `key` of `value`, if it is a string longer than `max` characters.
fn field_over(value: &Value, key: &str, max: usize) -> bool {
    value
        .get(key)
        .and_then(Value::as_str)
        .is_some_and(|s| s.chars().count() > max)
}

fn check_component(component: &Value) -> Result<()> {
    let kind = component.get("type").and_then(Value::as_str).unwrap_or("");
    match kind.to_ascii_uppercase().as_str() {
        "HEADER" if field_over(component, "text", HEADER_TEXT_MAX) => {
            return Err(too_long("the header text", HEADER_TEXT_MAX));
        }
        "FOOTER" if field_over(component, "text", FOOTER_TEXT_MAX) => {
            return Err(too_long("the footer text", FOOTER_TEXT_MAX));
        }
        "BUTTONS" => {
            let buttons = component.get("buttons").and_then(Value::as_array);
            if buttons.is_some_and(|b| b.len() > BUTTONS_MAX) {
                return Err(Error::validation(format!(
                    "a template has at most {BUTTONS_MAX} buttons"
                )));
            }
            for button in buttons.into_iter().flatten() {
                for (key, max) in [
                    ("text", BUTTON_TEXT_MAX),
                    ("url", BUTTON_URL_MAX),
                    ("phone_number", BUTTON_PHONE_MAX),
                ] {
                    if field_over(button, key, max) {
                        return Err(too_long(&format!("a button's {key}"), max));
                    }
                }
            }
        }
        _ => {}
    }
    if strings_within(component, OTHER_TEXT_MAX) {
        Ok(())
    } else {
        Err(too_long("every text in a component", OTHER_TEXT_MAX))
    }
}

impl NewTemplate {
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty()
            || self.name.len() > 512
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(Error::validation(
                "name must be lowercase letters, digits and underscores",
            ));
        }
        if !matches!(
            self.category.as_str(),
            "MARKETING" | "UTILITY" | "AUTHENTICATION"
        ) {
            return Err(Error::validation(
                "category must be MARKETING, UTILITY or AUTHENTICATION",
            ));
        }
        if let Some(f) = &self.parameter_format
            && !matches!(f.as_str(), "POSITIONAL" | "NAMED")
        {
            return Err(Error::validation(
                "parameter_format must be POSITIONAL or NAMED",
            ));
        }
        if self.language.len() < 2 || self.language.len() > 16 {
            return Err(Error::validation("language must be a code like en_US"));
        }
        if self.components.len() > COMPONENTS_MAX {
            return Err(Error::validation(format!(
                "a template has at most {COMPONENTS_MAX} components"
            )));
        }
        for component in &self.components {
            check_component(component)?;
        }
        let body = self.components.iter().find(|c| {
            c.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.eq_ignore_ascii_case("BODY"))
        });
        match body.and_then(|b| b.get("text")).and_then(Value::as_str) {
            Some(text) if !text.is_empty() && text.chars().count() <= BODY_TEXT_MAX => Ok(()),
            _ => Err(Error::validation(
                "components need a BODY with 1 to 1024 characters of text",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use waypost_core::{ChannelId, TemplateId, Timestamp};

    use super::*;
    use crate::message::TemplateLanguage;

    fn template(format: &str, components: Value) -> Template {
        Template {
            id: TemplateId::new(),
            channel_id: ChannelId::new(),
            provider_template_id: None,
            name: "order_update".into(),
            language: "en_US".into(),
            category: "UTILITY".into(),
            status: "APPROVED".into(),
            quality: None,
            parameter_format: format.into(),
            components,
            reason: None,
            created_at: Timestamp::now(),
            updated_at: Timestamp::now(),
        }
    }

    fn send(components: Value) -> TemplateSend {
        TemplateSend {
            name: "order_update".into(),
            language: TemplateLanguage {
                code: "en_US".into(),
            },
            components: serde_json::from_value(components).unwrap(),
        }
    }

    #[test]
    fn positional_parameters_fill_in_order_and_are_counted() {
        let t = template(
            "POSITIONAL",
            json!([{"type": "BODY", "text": "Order {{1}} is {{2}}."}, {"type": "FOOTER", "text": "Thanks"},
                   {"type": "BUTTONS", "buttons": [{"type": "URL", "text": "Track", "url": "https://x.test/{{1}}"}]}]),
        );
        let ok = send(
            json!([{"type": "body", "parameters": [{"type": "text", "text": "A1"}, {"type": "text", "text": "shipped"}]},
            {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "A1"}]}]),
        );
        let r = render(&t, &ok.components).unwrap();
        assert_eq!(r.body, "Order A1 is shipped.");
        assert_eq!(r.footer.as_deref(), Some("Thanks"));
        assert_eq!(r.buttons, vec!["Track (https://x.test/A1)"]);
        let short = send(json!([{"type": "body", "parameters": [{"type": "text", "text": "A1"}]}]));
        assert_eq!(
            render(&t, &short.components).unwrap_err().code(),
            ErrorCode::TemplateInvalid
        );
        let wrong_type = send(
            json!([{"type": "body", "parameters": [{"type": "image", "image": {"link": "https://a"}}, {"type": "text", "text": "x"}]}]),
        );
        assert!(render(&t, &wrong_type.components).is_err());
        let too_long = send(
            json!([{"type": "body", "parameters": [{"type": "text", "text": "x".repeat(1025)}, {"type": "text", "text": "x"}]}]),
        );
        assert!(render(&t, &too_long.components).is_err());
    }

    #[test]
    fn named_parameters_match_by_name_and_media_headers_need_media() {
        let t = template(
            "NAMED",
            json!([{"type": "HEADER", "format": "IMAGE"}, {"type": "BODY", "text": "Hi {{customer_name}}"}]),
        );
        let ok = send(
            json!([{"type": "header", "parameters": [{"type": "image", "image": {"link": "https://x.test/a.png"}}]},
            {"type": "body", "parameters": [{"type": "text", "parameter_name": "customer_name", "text": "Pablo"}]}]),
        );
        assert_eq!(render(&t, &ok.components).unwrap().body, "Hi Pablo");
        let misnamed = send(
            json!([{"type": "header", "parameters": [{"type": "image", "image": {"link": "https://x.test/a.png"}}]},
            {"type": "body", "parameters": [{"type": "text", "parameter_name": "name", "text": "Pablo"}]}]),
        );
        assert!(render(&t, &misnamed.components).is_err());
        let no_header = send(
            json!([{"type": "body", "parameters": [{"type": "text", "parameter_name": "customer_name", "text": "Pablo"}]}]),
        );
        assert!(render(&t, &no_header.components).is_err());
    }

    #[test]
    fn unapproved_templates_are_refused() {
        let mut t = template("POSITIONAL", json!([{"type": "BODY", "text": "Hello"}]));
        t.status = "PAUSED".into();
        assert_eq!(
            check_send(&t, &send(json!([]))).unwrap_err().code(),
            ErrorCode::TemplateInvalid
        );
    }

    #[test]
    fn placeholders_are_found_in_order() {
        assert_eq!(
            placeholders("{{1}} and {{ 2 }} and {{x y}} {{name}}"),
            vec!["1", "2", "name"]
        );
    }
}
