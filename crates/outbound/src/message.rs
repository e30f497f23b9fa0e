//! What a business can send, modelled on the Cloud API's message objects (so Meta's own
//! documentation describes the request), with the limits Meta enforces checked up front.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use waypost_core::{Error, Result};

/// The message itself, tagged by `type` exactly like the Cloud API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutboundContent {
    Text {
        text: Text,
    },
    Image {
        image: Media,
    },
    Video {
        video: Media,
    },
    Audio {
        audio: Media,
    },
    Document {
        document: Media,
    },
    Sticker {
        sticker: Media,
    },
    Location {
        location: Location,
    },
    Contacts {
        #[schema(value_type = Vec<Object>)]
        contacts: Vec<Value>,
    },
    Interactive {
        #[schema(value_type = Object)]
        interactive: Value,
    },
    Template {
        template: TemplateSend,
    },
    Reaction {
        reaction: Reaction,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Text {
    pub body: String,
    /// Show a preview of the first link.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preview_url: bool,
}

/// A media file by public `link` or by an uploaded media `id` (exactly one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Media {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    /// Documents only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reaction {
    /// The provider id (wamid) of the message reacted to.
    pub message_id: String,
    /// An emoji; empty removes the reaction.
    pub emoji: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSend {
    pub name: String,
    pub language: TemplateLanguage,
    /// Header, body and button parameters, as the Cloud API takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub components: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TemplateLanguage {
    pub code: String,
}

/// The media types WhatsApp carries (Cloud API "supported media types") and the usual file
/// extension of each: anything else is refused on upload and served as
/// `application/octet-stream` when downloaded.
pub const MEDIA_TYPES: &[(&str, &str)] = &[
    ("audio/aac", "aac"),
    ("audio/amr", "amr"),
    ("audio/mp4", "m4a"),
    ("audio/mpeg", "mp3"),
    ("audio/ogg", "ogg"),
    ("image/jpeg", "jpg"),
    ("image/png", "png"),
    ("image/webp", "webp"),
    ("video/3gpp", "3gp"),
    ("video/mp4", "mp4"),
    ("text/plain", "txt"),
    ("application/pdf", "pdf"),
    ("application/msword", "doc"),
    ("application/vnd.ms-excel", "xls"),
    ("application/vnd.ms-powerpoint", "ppt"),
    (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "docx",
    ),
    (
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "pptx",
    ),
    (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "xlsx",
    ),
];

/// The media type without parameters (`audio/ogg; codecs=opus` → `audio/ogg`), lower case,
/// and its file extension, if WhatsApp carries it.
pub fn whatsapp_media_type(content_type: &str) -> Option<(&'static str, &'static str)> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    MEDIA_TYPES.iter().copied().find(|(t, _)| *t == essence)
}

/// Meta's limits (characters), checked before anything is queued.
const TEXT_MAX: usize = 4096;
const CAPTION_MAX: usize = 1024;

fn chars(s: &str) -> usize {
    s.chars().count()
}

fn within(field: &str, value: &str, min: usize, max: usize) -> Result<()> {
    let n = chars(value);
    if n < min || n > max {
        return Err(Error::validation(format!(
            "{field} must be {min} to {max} characters (got {n})"
        )));
    }
    Ok(())
}

fn text_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn check_link(field: &str, link: &str) -> Result<()> {
    let url = url::Url::parse(link)
        .map_err(|_| Error::validation(format!("{field} must be an absolute URL")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(Error::validation(format!("{field} must be http or https")));
    }
    Ok(())
}

impl Media {
    fn check(&self, kind: &str) -> Result<()> {
        match (&self.id, &self.link) {
            (Some(id), None) => within(&format!("{kind}.id"), id, 1, 128)?,
            (None, Some(link)) => check_link(&format!("{kind}.link"), link)?,
            _ => {
                return Err(Error::validation(format!(
                    "{kind} needs exactly one of id (an uploaded media id) or link"
                )));
            }
        }
        if let Some(caption) = &self.caption {
            if matches!(kind, "audio" | "sticker") {
                return Err(Error::validation(format!("{kind} cannot have a caption")));
            }
            within(&format!("{kind}.caption"), caption, 0, CAPTION_MAX)?;
        }
        if self.filename.is_some() && kind != "document" {
            return Err(Error::validation("only a document has a filename"));
        }
        Ok(())
    }
}

impl OutboundContent {
    /// The Cloud API `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Text { .. } => "text",
            Self::Image { .. } => "image",
            Self::Video { .. } => "video",
            Self::Audio { .. } => "audio",
            Self::Document { .. } => "document",
            Self::Sticker { .. } => "sticker",
            Self::Location { .. } => "location",
            Self::Contacts { .. } => "contacts",
            Self::Interactive { .. } => "interactive",
            Self::Template { .. } => "template",
            Self::Reaction { .. } => "reaction",
        }
    }

    pub fn text(body: impl Into<String>) -> Self {
        Self::Text {
            text: Text {
                body: body.into(),
                preview_url: false,
            },
        }
    }

    /// Checks everything that can be checked without the template store.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Text { text } => within("text.body", &text.body, 1, TEXT_MAX),
            Self::Image { image } => image.check("image"),
            Self::Video { video } => video.check("video"),
            Self::Audio { audio } => audio.check("audio"),
            Self::Document { document } => document.check("document"),
            Self::Sticker { sticker } => sticker.check("sticker"),
            Self::Location { location } => {
                if !(-90.0..=90.0).contains(&location.latitude)
                    || !(-180.0..=180.0).contains(&location.longitude)
                {
                    return Err(Error::validation(
                        "location needs a latitude in -90..90 and a longitude in -180..180",
                    ));
                }
                Ok(())
            }
            Self::Contacts { contacts } => {
                if contacts.is_empty() || contacts.len() > 257 {
                    return Err(Error::validation("contacts must hold 1 to 257 cards"));
                }
                for card in contacts {
                    within(
                        "contacts[].name.formatted_name",
                        text_at(card, "/name/formatted_name").unwrap_or_default(),
                        1,
                        256,
                    )?;
                }
                Ok(())
            }
            Self::Interactive { interactive } => validate_interactive(interactive),
            Self::Template { template } => {
                if template.name.is_empty()
                    || template.name.len() > 512
                    || !template
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    return Err(Error::validation(
                        "template.name must be lowercase letters, digits and underscores",
                    ));
                }
                within("template.language.code", &template.language.code, 2, 16)
            }
            Self::Reaction { reaction } => {
                within("reaction.message_id", &reaction.message_id, 1, 256)?;
                within("reaction.emoji", &reaction.emoji, 0, 16)
            }
        }
    }

    /// Whether Meta allows it only inside the customer-service window.
    pub fn needs_open_window(&self) -> bool {
        !matches!(self, Self::Template { .. })
    }
}

/// Reply buttons, lists and call-to-action URL buttons, with Meta's limits.
fn validate_interactive(v: &Value) -> Result<()> {
    let kind = text_at(v, "/type").unwrap_or_default();
    within(
        "interactive.body.text",
        text_at(v, "/body/text").unwrap_or_default(),
        1,
        if kind == "button" { 1024 } else { TEXT_MAX },
    )?;
    if let Some(footer) = text_at(v, "/footer/text") {
        within("interactive.footer.text", footer, 1, 60)?;
    }
    match kind {
        "button" => {
            let buttons = v
                .pointer("/action/buttons")
                .and_then(Value::as_array)
                .filter(|b| (1..=3).contains(&b.len()))
                .ok_or_else(|| Error::validation("interactive buttons need 1 to 3 buttons"))?;
            let mut titles = std::collections::HashSet::new();
            for b in buttons {
                within(
                    "button reply.id",
                    text_at(b, "/reply/id").unwrap_or_default(),
                    1,
                    256,
                )?;
                let title = text_at(b, "/reply/title").unwrap_or_default();
                within("button reply.title", title, 1, 20)?;
                if !titles.insert(title) {
                    return Err(Error::validation("button titles must be unique"));
                }
            }
            Ok(())
        }
        "list" => {
            within(
                "interactive.action.button",
                text_at(v, "/action/button").unwrap_or_default(),
                1,
                20,
            )?;
            let sections = v
                .pointer("/action/sections")
                .and_then(Value::as_array)
                .filter(|s| (1..=10).contains(&s.len()))
                .ok_or_else(|| Error::validation("a list needs 1 to 10 sections"))?;
            let mut rows = 0;
            for section in sections {
                if let Some(title) = text_at(section, "/title") {
                    within("section title", title, 1, 24)?;
                }
                for row in section
                    .get("rows")
                    .and_then(Value::as_array)
                    .map_or(&[][..], Vec::as_slice)
                {
                    rows += 1;
                    within("row id", text_at(row, "/id").unwrap_or_default(), 1, 200)?;
                    within(
                        "row title",
                        text_at(row, "/title").unwrap_or_default(),
                        1,
                        24,
                    )?;
                    if let Some(d) = text_at(row, "/description") {
                        within("row description", d, 0, 72)?;
                    }
                }
            }
            if !(1..=10).contains(&rows) {
                return Err(Error::validation("a list needs 1 to 10 rows in all"));
            }
            Ok(())
        }
        "cta_url" => {
            within(
                "cta_url display_text",
                text_at(v, "/action/parameters/display_text").unwrap_or_default(),
                1,
                20,
            )?;
            check_link(
                "cta_url url",
                text_at(v, "/action/parameters/url").unwrap_or_default(),
            )
        }
        other => Err(Error::validation(format!(
            "interactive.type {other:?} is not supported; use button, list or cta_url"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<OutboundContent> {
        let content: OutboundContent =
            serde_json::from_value(v).map_err(|e| Error::validation(e.to_string()))?;
        content.validate()?;
        Ok(content)
    }

    #[test]
    fn round_trips_in_the_cloud_api_shape() {
        let v =
            json!({"type": "image", "image": {"link": "https://x.test/a.png", "caption": "hi"}});
        let content = parse(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&content).unwrap(), v);
        assert_eq!(content.kind(), "image");
    }

    #[test]
    fn meta_limits_are_enforced() {
        assert!(parse(json!({"type": "text", "text": {"body": ""}})).is_err());
        assert!(parse(json!({"type": "text", "text": {"body": "x".repeat(4097)}})).is_err());
        assert!(
            parse(json!({"type": "image", "image": {"id": "1", "link": "https://a.b"}})).is_err()
        );
        assert!(parse(json!({"type": "audio", "audio": {"id": "1", "caption": "no"}})).is_err());
        assert!(
            parse(json!({"type": "location", "location": {"latitude": 91.0, "longitude": 0.0}}))
                .is_err()
        );
        let four = json!({"type": "interactive", "interactive": {"type": "button", "body": {"text": "Pick"},
            "action": {"buttons": (0..4).map(|i| json!({"type": "reply", "reply": {"id": i.to_string(), "title": format!("B{i}")}})).collect::<Vec<_>>()}}});
        assert!(parse(four).is_err());
        let dup = json!({"type": "interactive", "interactive": {"type": "button", "body": {"text": "Pick"},
            "action": {"buttons": [{"type": "reply", "reply": {"id": "a", "title": "Yes"}}, {"type": "reply", "reply": {"id": "b", "title": "Yes"}}]}}});
        assert!(parse(dup).is_err());
        let list = json!({"type": "interactive", "interactive": {"type": "list", "body": {"text": "Menu"},
            "action": {"button": "Open", "sections": [{"title": "Food", "rows": [{"id": "1", "title": "Soup"}]}]}}});
        assert!(parse(list).is_ok());
        let cta = json!({"type": "interactive", "interactive": {"type": "cta_url", "body": {"text": "See"},
            "action": {"name": "cta_url", "parameters": {"display_text": "Open", "url": "https://x.test"}}}});
        assert!(parse(cta).is_ok());
        assert!(parse(json!({"type": "template", "template": {"name": "Bad Name", "language": {"code": "en"}}})).is_err());
    }
}
