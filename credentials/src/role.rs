//! What an account or API key may do.

use serde::{Deserialize, Serialize};

/// Ordered: each role can do everything the ones below it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May only read: consumers, queues, metrics.
    Viewer,
    /// Also publishes messages.
    Publisher,
    /// Also changes consumers, topology, accounts and API keys.
    Admin,
}

impl Role {
    /// Whether this role may do what needs `required`: a higher role includes the lower ones.
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }

    /// Reads the lowercase name used in the API and the store; `None` for any other spelling.
    pub fn parse(raw: &str) -> Option<Role> {
        match raw {
            "viewer" => Some(Role::Viewer),
            "publisher" => Some(Role::Publisher),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Role;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.allows(Role::Publisher));
        assert!(Role::Publisher.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Publisher));
        assert!(!Role::Publisher.allows(Role::Admin));
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
    }
}
