//! Who may see what: audiobookshelf's access rules for libraries and library items.
//!
//! A transcription of `User.checkCanAccessLibrary`, `checkCanAccessLibraryItem` and
//! `checkCanAccessLibraryItemWithTags` (`CONTRACT.md` section 3), kept pure so that every rule
//! is unit-tested here and the fan-out only asks.

use entity::Permissions;
use serde::Deserialize;

/// What decides access to a library item: its library, its tags, and whether it is explicit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ItemAccess {
    #[serde(rename = "libraryId")]
    pub library_id: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub explicit: bool,
}

/// A user as the access rules see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAccess {
    pub id: String,
    pub active: bool,
    pub permissions: Permissions,
}

impl UserAccess {
    pub fn can_access_library(&self, library_id: &str) -> bool {
        self.active
            && (self.permissions.access_all_libraries
                || self
                    .permissions
                    .libraries_accessible
                    .iter()
                    .any(|l| l == library_id))
    }

    pub fn can_access_item(&self, item: &ItemAccess) -> bool {
        if !self.can_access_library(&item.library_id) {
            return false;
        }
        if item.explicit && !self.permissions.access_explicit_content {
            return false;
        }
        self.can_access_tags(&item.tags)
    }

    fn can_access_tags(&self, tags: &[String]) -> bool {
        let p = &self.permissions;
        if p.access_all_tags {
            return true;
        }
        let selected = |t: &String| p.item_tags_selected.contains(t);
        if p.selected_tags_not_accessible {
            // Deny-list: an untagged item passes.
            return !tags.iter().any(selected);
        }
        // Allow-list: an untagged item fails.
        tags.iter().any(selected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(lib: &str, tags: &[&str], explicit: bool) -> ItemAccess {
        ItemAccess {
            library_id: lib.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            explicit,
        }
    }

    fn user(f: impl FnOnce(&mut Permissions)) -> UserAccess {
        let mut permissions = Permissions::defaults_for("user");
        f(&mut permissions);
        UserAccess {
            id: "u".into(),
            active: true,
            permissions,
        }
    }

    #[test]
    fn libraries() {
        let all = user(|_| {});
        assert!(all.can_access_library("any"));
        let one = user(|p| {
            p.access_all_libraries = false;
            p.libraries_accessible = vec!["lib1".into()];
        });
        assert!(one.can_access_library("lib1"));
        assert!(!one.can_access_library("lib2"));
        let none = user(|p| p.access_all_libraries = false);
        assert!(!none.can_access_library("lib1"));
        let inactive = UserAccess {
            active: false,
            ..all.clone()
        };
        assert!(!inactive.can_access_library("lib1"));
    }

    #[test]
    fn explicit_needs_the_permission() {
        let prude = user(|p| p.access_explicit_content = false);
        assert!(!prude.can_access_item(&item("l", &[], true)));
        assert!(prude.can_access_item(&item("l", &[], false)));
        assert!(user(|_| {}).can_access_item(&item("l", &[], true)));
    }

    #[test]
    fn tag_allow_list_fails_untagged_items() {
        let allow = user(|p| {
            p.access_all_tags = false;
            p.item_tags_selected = vec!["family".into()];
        });
        assert!(allow.can_access_item(&item("l", &["family", "x"], false)));
        assert!(!allow.can_access_item(&item("l", &["x"], false)));
        assert!(!allow.can_access_item(&item("l", &[], false)));
    }

    #[test]
    fn tag_deny_list_passes_untagged_items() {
        let deny = user(|p| {
            p.access_all_tags = false;
            p.selected_tags_not_accessible = true;
            p.item_tags_selected = vec!["horror".into()];
        });
        assert!(deny.can_access_item(&item("l", &[], false)));
        assert!(deny.can_access_item(&item("l", &["family"], false)));
        assert!(!deny.can_access_item(&item("l", &["family", "horror"], false)));
    }

    #[test]
    fn all_three_must_hold() {
        let tom = user(|p| {
            p.access_all_libraries = false;
            p.libraries_accessible = vec!["pods".into()];
            p.access_all_tags = false;
            p.item_tags_selected = vec!["family".into()];
            p.access_explicit_content = false;
        });
        assert!(tom.can_access_item(&item("pods", &["family"], false)));
        assert!(!tom.can_access_item(&item("books", &["family"], false)));
        assert!(!tom.can_access_item(&item("pods", &["family"], true)));
        assert!(!tom.can_access_item(&item("pods", &[], false)));
    }
}
