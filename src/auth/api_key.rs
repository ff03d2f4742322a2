//! api_key mode: the configured keys, kept only as SHA-256 digests and compared in
//! constant time against every one of them.

use crate::config::ApiKeyList;
use crate::secret::sha256;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// The accepted keys. Comparing digests of fixed length means neither the length of
/// a key nor how much of it matched shows in the timing, and every key is compared
/// on every request, so neither does which key matched.
pub(super) struct ApiKeys {
    keys: Vec<StoredKey>,
}

struct StoredKey {
    digest: [u8; 32],
    /// `api_key:<name>` or `api_key:<1-based index>`: what logs show, never the key.
    subject: String,
}

impl ApiKeys {
    /// From the validated `auth.api_keys`.
    pub fn new(entries: &ApiKeyList) -> Self {
        let keys = entries
            .0
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let label = entry
                    .name
                    .clone()
                    .unwrap_or_else(|| (index + 1).to_string());
                StoredKey {
                    digest: sha256(entry.key.expose()),
                    subject: format!("api_key:{label}"),
                }
            })
            .collect();
        Self { keys }
    }

    /// The subject of the key `presented` matches, if any.
    pub fn check(&self, presented: &str) -> Option<&str> {
        let presented = sha256(presented);
        let mut found = subtle::Choice::from(0);
        let mut index: u32 = 0;
        for (i, key) in self.keys.iter().enumerate() {
            let equal = key.digest.ct_eq(&presented);
            // `i` fits: the configuration is a short list.
            index.conditional_assign(&(i as u32), equal);
            found |= equal;
        }
        bool::from(found).then(|| self.keys[index as usize].subject.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        let entries = vec![
            "first-key-0123456789".to_owned(),
            "ios:second-key-0123456789".to_owned(),
        ];
        ApiKeys::new(&ApiKeyList::try_from(entries).unwrap())
    }

    #[test]
    fn a_configured_key_yields_its_name_or_index() {
        assert_eq!(keys().check("first-key-0123456789"), Some("api_key:1"));
        assert_eq!(keys().check("second-key-0123456789"), Some("api_key:ios"));
    }

    #[test]
    fn other_keys_prefixes_and_the_name_form_are_refused() {
        let keys = keys();
        assert_eq!(keys.check("first-key-012345678"), None);
        assert_eq!(keys.check("first-key-01234567890"), None);
        assert_eq!(keys.check(""), None);
        assert_eq!(keys.check("ios:second-key-0123456789"), None);
    }
}
