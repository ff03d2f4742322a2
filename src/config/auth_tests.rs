//! Unit tests of `auth`.

use super::*;

fn jwt_config(edit: impl FnOnce(&mut JwtConfig)) -> AuthConfig {
    let mut auth = AuthConfig {
        mode: AuthMode::Jwt,
        ..AuthConfig::default()
    };
    edit(&mut auth.jwt);
    auth
}

fn problems_of(auth: &AuthConfig) -> Vec<String> {
    let mut problems = Problems::default();
    auth.check(&mut problems);
    problems.0
}

fn keys_of(auth: &AuthConfig) -> Vec<String> {
    problems_of(auth)
        .iter()
        .map(|p| p.split(' ').next().unwrap_or("").to_owned())
        .collect()
}

fn key_list(entries: &[&str]) -> Result<ApiKeyList, String> {
    ApiKeyList::try_from(entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

#[test]
fn none_mode_with_defaults_is_valid() {
    assert!(problems_of(&AuthConfig::default()).is_empty());
}

#[test]
fn keys_configured_while_auth_is_off_are_refused_rather_than_ignored() {
    let auth = AuthConfig {
        api_keys: key_list(&["a-long-enough-key"]).unwrap(),
        ..AuthConfig::default()
    };
    assert_eq!(keys_of(&auth), ["auth.mode"]);
}

#[test]
fn any_jwt_setting_with_auth_off_is_refused_rather_than_ignored() {
    let auth = AuthConfig {
        jwt: JwtConfig {
            audience: Some("orga-proxy".into()),
            ..JwtConfig::default()
        },
        ..AuthConfig::default()
    };
    assert_eq!(keys_of(&auth), ["auth.mode"]);
}

#[test]
fn api_key_mode_needs_at_least_one_key() {
    let auth = AuthConfig {
        mode: AuthMode::ApiKey,
        ..AuthConfig::default()
    };
    assert_eq!(keys_of(&auth), ["auth.api_keys"]);
}

#[test]
fn bad_api_keys_are_reported_without_showing_them() {
    let error = key_list(&[
        "web:canary one-0123456789",
        "web:canary2-0123456789abc",
        "canary2-0123456789abc",
        "canary2-0123456789abc",
        "ios:canary",
    ])
    .unwrap_err();
    assert!(error.contains("entry 1 contains white space"), "{error}");
    assert!(error.contains("\"web\" is used more than once"), "{error}");
    assert!(error.contains("entry 3 repeats"), "{error}");
    assert!(error.contains("entry 4 repeats"), "{error}");
    assert!(
        error.contains("entry 5 is shorter than 16 characters"),
        "{error}"
    );
    assert!(!error.contains("canary"), "{error}");
}

#[test]
fn a_name_is_the_text_before_the_first_colon_when_it_looks_like_a_name() {
    let named = ApiKeyEntry::parse("mobile-app:k3y:with:colons");
    assert_eq!(named.name.as_deref(), Some("mobile-app"));
    assert_eq!(named.key.expose(), "k3y:with:colons");
    let unnamed = ApiKeyEntry::parse("0f9a:b2");
    assert_eq!(unnamed.name, None);
    assert_eq!(unnamed.key.expose(), "0f9a:b2");
    assert_eq!(ApiKeyEntry::parse("plain").key.expose(), "plain");
}

#[test]
fn check_config_shows_key_names_but_never_keys() {
    let keys = key_list(&["web:canary-key-1-0123456789", "canary-key-2-0123456789"]).unwrap();
    let shown = serde_json::to_string(&keys).unwrap();
    assert_eq!(shown, r#"["web:[redacted]","[redacted]"]"#);
}

#[test]
fn jwt_mode_needs_exactly_one_key_source() {
    assert_eq!(keys_of(&jwt_config(|_| {})), ["auth.jwt.jwks_url"]);
    let both = jwt_config(|jwt| {
        jwt.secret = Secret::new("x".repeat(40));
        jwt.jwks_url = Some("https://idp.example.com/jwks.json".parse().unwrap());
    });
    assert_eq!(keys_of(&both), ["auth.jwt.secret"]);
}

#[test]
fn a_short_secret_is_refused_without_being_shown() {
    let auth = jwt_config(|jwt| jwt.secret = Secret::new("canary-but-short"));
    assert_eq!(keys_of(&auth), ["auth.jwt.secret"]);
    assert!(!format!("{:?}", problems_of(&auth)).contains("canary"));
}

#[test]
fn jwks_url_must_be_https_except_on_localhost() {
    for ok in [
        "https://idp.example.com/.well-known/jwks.json",
        "http://127.0.0.1:8081/jwks",
        "http://localhost/jwks",
        "http://[::1]:9/jwks",
    ] {
        assert!(ok.parse::<JwksUrl>().is_ok(), "{ok}");
    }
    for bad in [
        "http://idp.example.com/jwks",
        "ftp://idp.example.com/jwks",
        "https://user:pw@idp.example.com/jwks",
        "not a url",
    ] {
        assert!(bad.parse::<JwksUrl>().is_err(), "{bad}");
    }
}

#[test]
fn algorithms_must_exist_and_suit_the_key_source() {
    let algorithms = |names: &[&str]| {
        Algorithms::try_from(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    };
    assert!(algorithms(&["none"]).is_err());
    let jwks = |names: &[&str]| {
        jwt_config(|jwt| {
            jwt.jwks_url = Some("https://idp.example.com/jwks".parse().unwrap());
            jwt.algorithms = algorithms(names).unwrap();
        })
    };
    assert!(problems_of(&jwks(&["RS256", "EdDSA"])).is_empty());
    assert_eq!(keys_of(&jwks(&["HS256"])), ["auth.jwt.algorithms"]);
    let secret = jwt_config(|jwt| {
        jwt.secret = Secret::new("s".repeat(32));
        jwt.algorithms = algorithms(&["RS256"]).unwrap();
    });
    assert_eq!(keys_of(&secret), ["auth.jwt.algorithms"]);
}

#[test]
fn default_algorithms_follow_the_key_source() {
    let mut jwt = JwtConfig::default();
    assert_eq!(jwt.algorithms(), DEFAULT_JWKS_ALGORITHMS);
    jwt.secret = Secret::new("s".repeat(32));
    assert_eq!(jwt.algorithms(), [Algorithm::HS256]);
    assert_eq!(algorithm_name(Algorithm::EdDSA), "EdDSA");
}

#[test]
fn leeway_cookie_and_refresh_periods_are_checked() {
    assert!("my cookie".parse::<CookieName>().is_err());
    let auth = jwt_config(|jwt| {
        jwt.jwks_url = Some("https://idp.example.com/jwks".parse().unwrap());
        jwt.leeway = Duration::from_secs(3600);
        jwt.jwks_min_refresh = Duration::ZERO;
    });
    assert_eq!(
        keys_of(&auth),
        ["auth.jwt.leeway", "auth.jwt.jwks_min_refresh"]
    );
    let auth = jwt_config(|jwt| {
        jwt.jwks_url = Some("https://idp.example.com/jwks".parse().unwrap());
        jwt.jwks_refresh = Duration::from_secs(10);
    });
    assert_eq!(keys_of(&auth), ["auth.jwt.jwks_refresh"]);
    let auth = jwt_config(|jwt| {
        jwt.jwks_url = Some("https://idp.example.com/jwks".parse().unwrap());
        jwt.jwks_max_stale = Duration::from_secs(60);
    });
    assert_eq!(keys_of(&auth), ["auth.jwt.jwks_max_stale"]);
}

#[test]
fn jwks_max_stale_outlasts_one_failed_refresh_and_at_most_a_week() {
    let stale = |refresh: u64, max_stale: u64| {
        jwt_config(|jwt| {
            jwt.jwks_url = Some("https://idp.example.com/jwks".parse().unwrap());
            jwt.jwks_refresh = Duration::from_secs(refresh);
            jwt.jwks_max_stale = Duration::from_secs(max_stale);
        })
    };
    let week = 7 * 86_400;
    assert!(problems_of(&stale(300, 300)).is_empty());
    assert!(problems_of(&stale(300, week)).is_empty());
    assert_eq!(keys_of(&stale(300, 299)), ["auth.jwt.jwks_max_stale"]);
    assert_eq!(keys_of(&stale(300, week + 1)), ["auth.jwt.jwks_max_stale"]);
}
