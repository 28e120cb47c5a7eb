//! Languages of the pages: Norwegian bokmål by default, English by a switch remembered in a
//! cookie. Every text is in one Fluent catalogue per language (`src/web/locales/{nb,en}`),
//! compiled into the binary.

use std::borrow::Cow;
use std::collections::HashMap;

use fluent_templates::fluent_bundle::FluentValue;
use fluent_templates::{LanguageIdentifier, Loader, langid, static_loader};

static_loader! {
    static LOCALES = {
        locales: "./src/web/locales",
        fallback_language: "nb",
        // No Unicode isolation marks around arguments: every argument is a number or a word
        // in the page's own language, and the marks would show in plain-text views.
        customise: |bundle| bundle.set_use_isolating(false),
    };
}

/// A page language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Norwegian bokmål, the default.
    Nb,
    /// English.
    En,
}

impl Lang {
    /// From the language cookie's value; anything else is bokmål.
    pub fn from_cookie(value: Option<&str>) -> Lang {
        match value {
            Some("en") => Lang::En,
            _ => Lang::Nb,
        }
    }

    /// From a path segment (`/lang/en`).
    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "nb" => Some(Lang::Nb),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    /// The `lang` attribute and cookie value.
    pub fn code(self) -> &'static str {
        match self {
            Lang::Nb => "nb",
            Lang::En => "en",
        }
    }

    /// The language the switch offers.
    pub fn other(self) -> Lang {
        match self {
            Lang::Nb => Lang::En,
            Lang::En => Lang::Nb,
        }
    }

    fn id(self) -> LanguageIdentifier {
        match self {
            Lang::Nb => langid!("nb"),
            Lang::En => langid!("en"),
        }
    }
}

/// The catalogue of one language, as the templates use it.
#[derive(Debug, Clone, Copy)]
pub struct Tr(pub Lang);

impl Tr {
    /// The message `id`.
    pub fn get(&self, id: &str) -> String {
        LOCALES.lookup(&self.0.id(), id)
    }

    /// The message `id` with one argument.
    pub fn get1(&self, id: &str, name: &str, value: impl ToString) -> String {
        let args: HashMap<Cow<'static, str>, FluentValue<'_>> = HashMap::from([(
            Cow::Owned(name.to_string()),
            FluentValue::from(value.to_string()),
        )]);
        LOCALES.lookup_with_args(&self.0.id(), id, &args)
    }

    /// The page language's code.
    pub fn code(&self) -> &'static str {
        self.0.code()
    }

    /// A policy label in the page language.
    pub fn label<'a>(&self, l: &'a crate::policy::Label) -> &'a str {
        match self.0 {
            Lang::Nb => &l.nb,
            Lang::En => &l.en,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message of one catalogue is in the other, so no page falls back to bokmål in
    /// English or shows a message id.
    #[test]
    fn catalogues_have_the_same_messages() {
        let ids = |text: &str| -> Vec<String> {
            let mut v: Vec<String> = text
                .lines()
                .filter(|l| !l.starts_with('#') && l.contains(" = "))
                .map(|l| l.split(" = ").next().unwrap_or_default().to_string())
                .collect();
            v.sort();
            v
        };
        let nb = ids(include_str!("locales/nb/main.ftl"));
        let en = ids(include_str!("locales/en/main.ftl"));
        assert_eq!(nb, en);
        assert!(nb.len() > 30);
        let text = |l: Lang, id: &str| match id {
            "public-year" | "public-total" => Tr(l).get1(id, &id[7..], 2026),
            "export-ledger-lead" => Tr(l).get1(id, "budget", 2),
            "admin-invite-created-for" => Tr(l).get1(id, "name", "Kari"),
            "admin-invite-once" => Tr(l).get1(id, "days", 14),
            "home-body" => Tr(l).get1(id, "role", "x"),
            "invite-body" => Tr(l).get1(id, "days", 1),
            _ => Tr(l).get(id),
        };
        for id in nb
            .iter()
            .filter(|id| !["site-name", "role-admin"].contains(&id.as_str()))
        {
            let (en, nb) = (text(Lang::En, id), text(Lang::Nb, id));
            assert!(!en.contains("Unknown localization key"), "{id}: {en}");
            assert_ne!(en, nb, "{id}");
        }
    }

    #[test]
    fn arguments_are_filled_in() {
        assert!(
            Tr(Lang::Nb)
                .get1("invite-body", "days", 180)
                .contains("180 dager")
        );
        assert!(
            Tr(Lang::En)
                .get1("invite-body", "days", 180)
                .contains("180 days")
        );
    }
}
