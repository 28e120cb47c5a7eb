//! Static files compiled into the binary and served under `/assets/…` from memory: the
//! vendored Designsystemet CSS and theme (MIT, with their licences), the site's own CSS and
//! the tick page's script. Nothing is loaded from another host.

use std::sync::LazyLock;

/// One embedded file.
pub struct Asset {
    /// Path under `/assets/`.
    pub path: &'static str,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The bytes.
    pub body: &'static [u8],
}

/// Every file served under `/assets/`.
pub static ASSETS: &[Asset] = &[
    Asset {
        path: "vendor/designsystemet-css/index.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/vendor/designsystemet-css/index.css"),
    },
    Asset {
        path: "vendor/designsystemet-css/LICENSE",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../../assets/vendor/designsystemet-css/LICENSE"),
    },
    Asset {
        path: "vendor/designsystemet-theme/digdir.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/vendor/designsystemet-theme/digdir.css"),
    },
    Asset {
        path: "vendor/designsystemet-theme/LICENSE",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../../assets/vendor/designsystemet-theme/LICENSE"),
    },
    Asset {
        path: "site.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/site.css"),
    },
    Asset {
        path: "dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/dashboard.css"),
    },
    Asset {
        path: "tick.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/tick.js"),
    },
];

/// The file at `path` under `/assets/`.
pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// A short fingerprint of every asset's bytes, appended to asset URLs (`?v=…`) so browsers
/// may cache them for a year and still get a new file after an upgrade. FNV-1a, 64 bits: a
/// cache key, not a security measure.
pub static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for a in ASSETS {
        for b in a.path.bytes().chain(a.body.iter().copied()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
});
