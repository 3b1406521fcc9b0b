//! Typed JSON columns: `users.permissions` and `users.extraData`.
//!
//! audiobookshelf writes these with `JSON.stringify`, but older versions and hand edits leave them
//! NULL, `{}` or without some keys. Every field therefore has a default (a missing permission is
//! false, a missing list empty), and keys this server does not know are kept, so that writing a
//! value back loses nothing audiobookshelf put there.

use sea_orm::FromJsonQueryResult;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `users.permissions`, including the two lists audiobookshelf stores inside it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, FromJsonQueryResult)]
#[serde(rename_all = "camelCase", default)]
pub struct Permissions {
    pub download: bool,
    pub update: bool,
    pub delete: bool,
    pub upload: bool,
    pub create_ereader: bool,
    pub access_all_libraries: bool,
    pub access_all_tags: bool,
    pub access_explicit_content: bool,
    pub selected_tags_not_accessible: bool,
    pub libraries_accessible: Vec<String>,
    pub item_tags_selected: Vec<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Permissions {
    /// What audiobookshelf gives a new user of `kind` (`User.getDefaultPermissionsForUserType`).
    pub fn defaults_for(kind: &str) -> Self {
        let admin = crate::users::is_admin_type(Some(kind));
        Self {
            download: true,
            update: admin,
            delete: kind == "root",
            upload: admin,
            create_ereader: admin,
            access_all_libraries: true,
            access_all_tags: true,
            access_explicit_content: kind != "guest",
            ..Self::default()
        }
    }
}

/// `users.extraData`: only `oldUserId` matters here (ids of users from before v2.3).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, FromJsonQueryResult)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtraData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_user_id: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fixture_permissions_of_a_restricted_user() {
        let raw = r#"{"download":true,"update":false,"delete":false,"upload":false,"createEreader":false,"accessAllLibraries":false,"accessAllTags":false,"accessExplicitContent":false,"selectedTagsNotAccessible":false,"librariesAccessible":["0c290f4d-b1f0-45ab-b66b-86724bbeec73"],"itemTagsSelected":["family"]}"#;
        let p: Permissions = serde_json::from_str(raw).unwrap();
        assert!(!p.access_all_libraries);
        assert_eq!(
            p.libraries_accessible,
            ["0c290f4d-b1f0-45ab-b66b-86724bbeec73"]
        );
        assert_eq!(p.item_tags_selected, ["family"]);
        assert!(p.other.is_empty());
    }

    #[test]
    fn empty_or_partial_objects_default_to_no_rights() {
        let p: Permissions = serde_json::from_str("{}").unwrap();
        assert_eq!(p, Permissions::default());
        let p: Permissions = serde_json::from_str(r#"{"accessAllTags":true}"#).unwrap();
        assert!(p.access_all_tags && !p.access_all_libraries && p.libraries_accessible.is_empty());
    }

    #[test]
    fn unknown_keys_survive_a_round_trip() {
        let raw = r#"{"download":true,"futureFlag":7}"#;
        let p: Permissions = serde_json::from_str(raw).unwrap();
        let back: Value = serde_json::to_value(&p).unwrap();
        assert_eq!(back["futureFlag"], 7);
    }

    #[test]
    fn extra_data_old_user_id() {
        let e: ExtraData =
            serde_json::from_str(r#"{"seriesHideFromContinueListening":[],"oldUserId":"usr_1"}"#)
                .unwrap();
        assert_eq!(e.old_user_id.as_deref(), Some("usr_1"));
        let back = serde_json::to_string(&e).unwrap();
        assert!(back.contains("seriesHideFromContinueListening"));
    }
}
