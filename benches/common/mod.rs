//! What the benches share: a policy text with its organisations replaced by many synthetic
//! ones, so each bench measures at the scale it names.

use std::fmt::Write as _;

/// `base` (a policy text) with its `[[orgs]]` replaced by `orgs` organisations of `units`
/// units each: ids `org-00` and `unit-00` (two digits), headcounts 50, 60, … per unit.
pub fn with_orgs(base: &str, orgs: usize, units: usize) -> String {
    let head = &base[..base.find("[[orgs]]").expect("the policy has orgs")];
    let tail = &base[base
        .find("[[dimensions]]")
        .expect("the policy has dimensions")..];
    let mut out = String::new();
    for o in 0..orgs {
        let _ = writeln!(
            out,
            "[[orgs]]\nid = \"org-{o:02}\"\nname = \"Helseforetak {o:02}\"\nunits = ["
        );
        for u in 0..units {
            let _ = writeln!(
                out,
                "  {{ id = \"unit-{u:02}\", name = \"Avdeling {u:02}\", headcount = {} }},",
                50 + u * 10
            );
        }
        out.push_str("]\n\n");
    }
    format!("{head}{out}{tail}")
}
