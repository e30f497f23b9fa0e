use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Error, ErrorCode};

/// An opaque position in a list ordered by a time-ordered id. Clients pass back what they
/// were given; its encoding may change without notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(Uuid);

impl Cursor {
    pub fn after(id: Uuid) -> Self {
        Self(id)
    }

    pub fn id(self) -> Uuid {
        self.0
    }

    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(self.0.as_bytes())
    }

    pub fn decode(text: &str) -> Result<Self, Error> {
        let invalid = || Error::new(ErrorCode::InvalidRequest, "invalid pagination cursor");
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
        Uuid::from_slice(&bytes).map(Self).map_err(|_| invalid())
    }
}

/// `?limit=&cursor=` as accepted by every list endpoint.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageRequest {
    /// Items per page, 1 to 200 (default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageRequest {
    pub const DEFAULT_LIMIT: u32 = 50;
    pub const MAX_LIMIT: u32 = 200;

    /// Validated `(limit, cursor)`.
    pub fn parse(&self) -> Result<(u32, Option<Cursor>), Error> {
        let limit = self.limit.unwrap_or(Self::DEFAULT_LIMIT);
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(Error::validation(format!(
                "limit must be between 1 and {}",
                Self::MAX_LIMIT
            )));
        }
        let cursor = self.cursor.as_deref().map(Cursor::decode).transpose()?;
        Ok((limit, cursor))
    }
}

/// One page of a list: the items and, when more follow, the cursor to fetch them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows fetched in id order; the extra row only
    /// signals that another page exists.
    pub fn from_rows(mut rows: Vec<T>, limit: u32, id_of: impl Fn(&T) -> Uuid) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| Cursor::after(id_of(last)).encode())
        } else {
            None
        };
        Self {
            data: rows,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let id = Uuid::now_v7();
        assert_eq!(
            Cursor::decode(&Cursor::after(id).encode()).unwrap().id(),
            id
        );
        assert_eq!(
            Cursor::decode("!!").unwrap_err().code(),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            Cursor::decode("AAAA").unwrap_err().code(),
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn page_signals_more_only_when_an_extra_row_exists() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let page = Page::from_rows(ids.clone(), 2, |u| *u);
        assert_eq!(page.data.len(), 2);
        assert_eq!(
            Cursor::decode(page.next_cursor.as_deref().unwrap())
                .unwrap()
                .id(),
            ids[1]
        );
        let last = Page::from_rows(ids, 3, |u| *u);
        assert!(last.next_cursor.is_none());
    }

    #[test]
    fn limits_are_bounded() {
        let req = PageRequest {
            limit: Some(0),
            cursor: None,
        };
        assert_eq!(req.parse().unwrap_err().code(), ErrorCode::ValidationFailed);
        let req = PageRequest {
            limit: Some(201),
            cursor: None,
        };
        assert!(req.parse().is_err());
    }
}
