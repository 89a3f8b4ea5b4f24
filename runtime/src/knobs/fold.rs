//! The one fold of every configuration layer into the [`Limits`] a service runs under.
//!
//! Precedence, lowest first:
//! 1. built-in defaults ([`super::builtin_defaults`]);
//! 2. the node's `[defaults]`;
//! 3. OCI `linux.resources` (what Kubernetes or `ctr` set);
//! 4. overrides: `wasmhttp.io/` annotations. An override may tighten the value in force (the OCI value,
//!    else the node's or the built-in default, which stands in for a limit the spec did not set) freely; it
//!    may loosen it only up to the node's `[ceilings]` value for that knob. Any override past a ceiling, or
//!    looser than the value in force where the node sets no ceiling, is refused, naming both. (`wasmhttp run`
//!    passes its flags as the OCI layer: whoever runs it is the operator.)
//!
//! Update re-folds with the new OCI values: an override stays in force unless the Update changed the very
//! OCI field it overrides, in which case the operator's new value wins.

use super::{KNOBS, Limits};

/// Every input of the fold. Create passes the same OCI values twice; Update passes the values at Create
/// beside the current ones, so the fold can tell which OCI fields an Update changed.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    /// The node's `[defaults]`.
    pub node_defaults: Limits,
    /// The node's `[ceilings]`: the most an override may ask for.
    pub node_ceilings: Limits,
    /// OCI `linux.resources` now (after any Updates).
    pub oci: Limits,
    /// OCI `linux.resources` at Create.
    pub oci_at_create: Limits,
    /// Annotations, or CLI flags.
    pub overrides: Limits,
}

/// An override the node does not allow.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// The knob's name.
    pub knob: &'static str,
    /// The value asked for.
    pub value: String,
    /// Why, naming the limit it would pass.
    pub reason: String,
}

/// Folds `layers` into the limits in force (see the module docs for the precedence).
pub fn fold(layers: &Layers) -> Result<Limits, Refused> {
    let mut limits = super::builtin_defaults();
    limits.take_set(&layers.node_defaults);
    limits.take_set(&layers.oci);
    for knob in KNOBS {
        let Some(value) = knob.get(&layers.overrides) else {
            continue;
        };
        if (knob.differs)(&layers.oci, &layers.oci_at_create) {
            continue;
        }
        let refused = |reason: String| Refused {
            knob: knob.name,
            value: value.clone(),
            reason,
        };
        if (knob.exceeds)(&layers.overrides, &layers.node_ceilings) {
            let ceiling = knob.get(&layers.node_ceilings).unwrap_or_default();
            let side = if knob.lower_is_looser {
                "below the node's ceiling (for this minimum, the lowest value allowed)"
            } else {
                "above the node's ceiling"
            };
            return Err(refused(format!("{side} {} = {ceiling}", knob.name)));
        }
        // `limits` holds this knob's value before any override: the OCI value, else the node's or the built-in
        // default, which stands in for a limit the spec cannot set (a pod without `memory.limit` must not
        // annotate itself past the node's default, nor any pod its request-timeout or max-connections).
        if knob.get(&layers.node_ceilings).is_none() && (knob.exceeds)(&layers.overrides, &limits) {
            let in_force = knob.get(&limits).unwrap_or_default();
            let source = match knob.oci {
                Some(field) if knob.get(&layers.oci).is_some() => {
                    format!("linux.resources.{field}")
                }
                Some(_) => "the default that stands in for it".to_string(),
                None if knob.get(&layers.node_defaults).is_some() => {
                    "the node's default".to_string()
                }
                None => "the built-in default".to_string(),
            };
            return Err(refused(format!(
                "looser than {source} ({in_force}); the node sets no ceiling for {} that would allow it",
                knob.name
            )));
        }
        (knob.take)(&mut limits, &layers.overrides);
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(pairs: &[(&str, &str)]) -> Limits {
        let mut limits = Limits::default();
        for (name, text) in pairs {
            limits.set(name, text).unwrap();
        }
        limits
    }

    fn create(node: Limits, ceilings: Limits, oci: Limits, overrides: Limits) -> Layers {
        Layers {
            node_defaults: node,
            node_ceilings: ceilings,
            oci_at_create: oci.clone(),
            oci,
            overrides,
        }
    }

    #[test]
    fn later_layers_win_in_order() {
        let folded = fold(&create(
            limits(&[
                ("memory", "256Mi"),
                ("request-timeout", "5s"),
                ("queue-depth", "4"),
            ]),
            Limits::default(),
            limits(&[("memory", "64Mi"), ("max-concurrency", "8")]),
            limits(&[("queue-depth", "2"), ("max-concurrency", "3")]),
        ))
        .unwrap();
        assert_eq!(folded.memory, Some(64 << 20), "OCI over node defaults");
        assert_eq!(
            folded.request_timeout,
            Some(Duration::from_secs(5)),
            "node over built-in"
        );
        assert_eq!(folded.queue_depth, Some(2), "annotation over node");
        assert_eq!(folded.max_concurrency, Some(3), "annotation tightens OCI");
        assert_eq!(
            folded.drain_timeout,
            Some(Duration::from_secs(10)),
            "built-in default"
        );
    }

    #[test]
    fn overrides_loosen_oci_only_within_a_ceiling() {
        let oci = limits(&[("max-concurrency", "4")]);
        let looser = limits(&[("max-concurrency", "16")]);
        let err = fold(&create(
            Limits::default(),
            Limits::default(),
            oci.clone(),
            looser.clone(),
        ))
        .unwrap_err();
        assert_eq!(err.knob, "max-concurrency");
        assert!(
            err.reason.contains("linux.resources.pids.limit (4)"),
            "{err:?}"
        );

        // Without an OCI memory limit the node's default stands in for it: no annotating past it.
        let node = limits(&[("memory", "256Mi")]);
        let err = fold(&create(
            node.clone(),
            Limits::default(),
            Limits::default(),
            limits(&[("memory", "1Gi")]),
        ))
        .unwrap_err();
        assert!(
            err.reason
                .contains("the default that stands in for it (256Mi)"),
            "{err:?}"
        );
        let tighter = fold(&create(
            node,
            Limits::default(),
            Limits::default(),
            limits(&[("memory", "64Mi")]),
        ))
        .unwrap();
        assert_eq!(tighter.memory, Some(64 << 20));

        let ceilings = limits(&[("max-concurrency", "32")]);
        let folded = fold(&create(
            Limits::default(),
            ceilings,
            oci.clone(),
            looser.clone(),
        ))
        .unwrap();
        assert_eq!(folded.max_concurrency, Some(16));

        let low_ceiling = limits(&[("max-concurrency", "8"), ("queue-depth", "10")]);
        let err = fold(&create(Limits::default(), low_ceiling.clone(), oci, looser)).unwrap_err();
        assert!(
            err.reason.contains("ceiling max-concurrency = 8"),
            "{err:?}"
        );
        let err = fold(&create(
            Limits::default(),
            low_ceiling,
            Limits::default(),
            limits(&[("queue-depth", "11")]),
        ))
        .unwrap_err();
        assert_eq!((err.knob, err.value.as_str()), ("queue-depth", "11"));
    }

    #[test]
    fn a_knob_without_an_oci_field_is_bounded_by_the_default_in_force() {
        let refusal = |node: Limits, overrides: &[(&str, &str)]| {
            fold(&create(
                node,
                Limits::default(),
                Limits::default(),
                limits(overrides),
            ))
            .unwrap_err()
            .reason
        };
        let reason = refusal(Limits::default(), &[("request-timeout", "60s")]);
        assert!(
            reason.contains("looser than the built-in default (30s)")
                && reason.contains("no ceiling for request-timeout"),
            "{reason}"
        );
        let node = limits(&[("queue-depth", "2"), ("max-connections", "64")]);
        for (knob, value, in_force) in [("queue-depth", "3", "2"), ("max-connections", "65", "64")]
        {
            let reason = refusal(node.clone(), &[(knob, value)]);
            assert!(
                reason.contains(&format!("the node's default ({in_force})")),
                "{knob}: {reason}"
            );
        }
        // A minimum is loosened downwards: no minimum at all is the loosest.
        let reason = refusal(Limits::default(), &[("min-request-body-rate", "0")]);
        assert!(reason.contains("the built-in default (4Ki)"), "{reason}");

        // Tighter values pass; a knob with no limit in force (fuel) takes any value; a ceiling allows more.
        let tighter = [
            ("request-timeout", "5s"),
            ("queue-depth", "1"),
            ("fuel-per-request", "1000000000000"),
            ("min-request-body-rate", "8Ki"),
        ];
        let folded = fold(&create(
            node.clone(),
            Limits::default(),
            Limits::default(),
            limits(&tighter),
        ))
        .unwrap();
        assert_eq!(folded.queue_depth, Some(1));
        assert_eq!(folded.fuel_per_request, Some(1_000_000_000_000));
        let ceilings = limits(&[("request-timeout", "2m"), ("min-request-body-rate", "0")]);
        let looser = [("request-timeout", "90s"), ("min-request-body-rate", "0")];
        let folded = fold(&create(node, ceilings, Limits::default(), limits(&looser))).unwrap();
        assert_eq!(
            (folded.request_timeout, folded.min_request_body_rate),
            (Some(Duration::from_secs(90)), Some(0))
        );
    }

    #[test]
    fn a_minimums_ceiling_is_the_lowest_an_override_may_ask_for() {
        let ceilings = limits(&[("min-request-body-rate", "1Ki")]);
        let err = fold(&create(
            Limits::default(),
            ceilings.clone(),
            Limits::default(),
            limits(&[("min-request-body-rate", "512")]),
        ))
        .unwrap_err();
        assert_eq!(err.knob, "min-request-body-rate");
        assert!(
            err.reason
                .contains("below the node's ceiling (for this minimum, the lowest value allowed) min-request-body-rate = 1Ki"),
            "{err:?}"
        );
        let stricter = fold(&create(
            Limits::default(),
            ceilings,
            Limits::default(),
            limits(&[("min-request-body-rate", "64Ki")]),
        ))
        .unwrap();
        assert_eq!(stricter.min_request_body_rate, Some(64 << 10));
    }

    #[test]
    fn update_keeps_overrides_unless_it_changes_their_oci_field() {
        let at_create = limits(&[("max-concurrency", "8"), ("memory", "64Mi")]);
        let overrides = limits(&[("max-concurrency", "3")]);
        let mut layers = create(Limits::default(), Limits::default(), at_create, overrides);
        assert_eq!(fold(&layers).unwrap().max_concurrency, Some(3));

        // An Update of memory only: the annotation on max-concurrency stays.
        layers.oci.take_set(&limits(&[("memory", "128Mi")]));
        let folded = fold(&layers).unwrap();
        assert_eq!(
            (folded.max_concurrency, folded.memory),
            (Some(3), Some(128 << 20))
        );

        // An Update of pids.limit itself: the operator's new value wins.
        layers.oci.take_set(&limits(&[("max-concurrency", "5")]));
        assert_eq!(fold(&layers).unwrap().max_concurrency, Some(5));
    }
}
