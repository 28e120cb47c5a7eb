//! Numbers as a leader reads them: an estimate with its 95 % interval and words ("ca. 12
//! (trolig 8–16)"), made by one function, and intervals derived from the releases' declared
//! noise where a number is not a released cell (hours, shares, differences).

use super::*;

/// The normal quantile of a two-sided 95 % interval, for intervals derived from variances.
pub(super) const Z95: f64 = 1.959_963_984_540_054;

/// Text in Norwegian bokmål and English.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Words {
    /// Norwegian bokmål (shown by default).
    pub nb: String,
    /// English.
    pub en: String,
}

/// One number as a leader may read it: the estimate with its 95 % interval, and whether it is
/// too small to show (then `words` says "under N" instead of the estimate).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Num {
    /// The post-processed estimate (never a raw count).
    pub estimate: f64,
    /// Lower end of the 95 % interval.
    pub low: f64,
    /// Upper end of the 95 % interval.
    pub high: f64,
    /// Too small to show: the estimate is below the policy's `suppress_below` (in this
    /// number's unit), decided on noisy values only.
    pub suppressed: bool,
    /// Below this (in this number's unit) it is suppressed; shown as "<limit".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    /// Decimals shown in `words`.
    #[serde(skip)]
    pub decimals: usize,
    /// "ca. 12 (trolig 8–16)" / "about 12 (likely 8–16)", from [`words`].
    pub words: Words,
}

impl Num {
    /// A number from an estimate and interval, with its words.
    pub fn new(estimate: f64, low: f64, high: f64, decimals: usize) -> Num {
        let mut n = Num {
            estimate,
            low: low.min(estimate),
            high: high.max(estimate),
            suppressed: false,
            limit: None,
            decimals,
            words: Words {
                nb: String::new(),
                en: String::new(),
            },
        };
        n.words = words(&n);
        n
    }

    /// A released cell's estimate and interval.
    pub fn from_cell(c: &ReleaseCell, suppress_below: u32) -> Num {
        let mut n = Num::new(c.estimate as f64, c.ci[0] as f64, c.ci[1] as f64, 0);
        n.suppress(c.suppressed, f64::from(suppress_below));
        n
    }

    /// This number times `factor` (per 100 employees, per month ...), interval and limit too.
    pub fn scaled(&self, factor: f64, decimals: usize) -> Num {
        let mut n = Num::new(
            self.estimate * factor,
            self.low * factor,
            self.high * factor,
            decimals,
        );
        if let Some(l) = self.limit {
            n.suppress(self.suppressed, l * factor);
        }
        n
    }

    /// Marks the number suppressed (or not) with its display limit, and redoes the words.
    pub(super) fn suppress(&mut self, suppressed: bool, limit: f64) {
        self.suppressed = suppressed;
        self.limit = Some(limit);
        self.words = words(self);
    }
}

/// The one formatting function for numbers shown to people: "ca. 12 (trolig 8–16)" in bokmål,
/// "about 12 (likely 8–16)" in English, with a decimal comma in bokmål; a suppressed number is
/// "<3" (its limit), never a bare noisy digit. "Trolig"/"likely" means the 95 % interval, which
/// [`reading_note`] states once per page.
pub fn words(n: &Num) -> Words {
    let d = n.decimals;
    let fmt = |x: f64, comma: bool| {
        let s = format!(
            "{:.*}",
            d,
            if x.abs() < 0.5 * 10f64.powi(-(d as i32)) {
                0.0
            } else {
                x
            }
        );
        if comma { s.replace('.', ",") } else { s }
    };
    if n.suppressed {
        let limit = n.limit.unwrap_or(0.0);
        return Words {
            nb: format!("<{}", fmt(limit, true)),
            en: format!("<{}", fmt(limit, false)),
        };
    }
    Words {
        nb: format!(
            "ca. {} (trolig {}–{})",
            fmt(n.estimate, true),
            fmt(n.low, true),
            fmt(n.high, true)
        ),
        en: format!(
            "about {} (likely {}–{})",
            fmt(n.estimate, false),
            fmt(n.low, false),
            fmt(n.high, false)
        ),
    }
}

/// What "trolig"/"likely" and "<3" mean: stated once on every page that shows numbers.
pub fn reading_note(suppress_below: u32) -> Words {
    Words {
        nb: format!(
            "Tallene er tilsatt tilfeldig støy for å verne den enkelte og endres aldri etter at de er publisert. «ca. 12 (trolig 8–16)» betyr: beste anslag 12, og med 95 % sannsynlighet ligger det sanne tallet mellom 8 og 16. «<{suppress_below}» betyr for lite til å vises."
        ),
        en: format!(
            "The numbers carry random noise that protects each person, and never change once published. \"about 12 (likely 8–16)\" means: best estimate 12, and with 95 % probability the true number lies between 8 and 16. \"<{suppress_below}\" means too small to show."
        ),
    }
}

/// The noise variance of one ordinary cell of `r`, from its mechanism and scale.
pub fn cell_variance(r: &Release) -> f64 {
    if r.mechanism == "discrete_laplace" {
        let q = (-1.0 / r.scale).exp();
        2.0 * q / ((1.0 - q) * (1.0 - q))
    } else {
        r.scale * r.scale
    }
}

/// An interval `x ± 1.96·sd`, cut at 0 below.
pub(super) fn normal_num(x: f64, variance: f64, decimals: usize) -> Num {
    let h = Z95 * variance.max(0.0).sqrt();
    Num::new(x, (x - h).max(0.0), x + h, decimals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_state_estimate_and_interval_with_a_decimal_comma_in_bokmal() {
        let n = Num::new(12.0, 8.0, 16.0, 0);
        assert_eq!(n.words.nb, "ca. 12 (trolig 8–16)");
        assert_eq!(n.words.en, "about 12 (likely 8–16)");
        let r = Num::new(12.0, 8.0, 16.0, 0).scaled(100.0 / 480.0, 1);
        assert_eq!(r.words.nb, "ca. 2,5 (trolig 1,7–3,3)");
        assert_eq!(r.words.en, "about 2.5 (likely 1.7–3.3)");
    }

    #[test]
    fn a_suppressed_number_shows_its_limit_never_a_digit_of_noise() {
        let c = ReleaseCell {
            key: BTreeMap::new(),
            noisy: 1,
            estimate: 2,
            ci: [0, 7],
            noisy_ci: [-5, 7],
            suppressed: true,
        };
        let n = Num::from_cell(&c, 3);
        assert_eq!(n.words.nb, "<3");
        assert_eq!(n.scaled(100.0 / 200.0, 1).words.en, "<1.5");
    }
}
