//! The deepest test that can run against a known-good node.

use serde::Serialize;

use crate::domain::{Failure, Level, Node};
use crate::ports::JobKind;

/// The deepest test that can run here against one known-good node, and why
/// deeper ones cannot (see [`deepest_test`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestPlan {
    /// The job to run: `light`, `auth` or `pipeline` (light, auth and speed).
    pub kind: JobKind,
    /// Why the next deeper test is skipped (`None` when the whole pipeline runs).
    pub skipped: Option<String>,
}

/// Finds the deepest test this process can run, by trying it on `sample` (a node
/// known to pass the light test, e.g. a healthy simulated node), marking nothing:
///
/// * the auth test needs `CAP_NET_RAW` (raw GRE) and a server that answers
///   logins: the sample must log in, or have its password rejected, within `budget`;
/// * the speed test needs a [`SpeedTester`](crate::ports::SpeedTester) (`None`
///   when this build has none) that measures the sample within `budget`.
///
/// The result is `pipeline` when both work, else `auth`, else `light`.
pub async fn deepest_test(
    prober: &dyn crate::ports::Prober,
    speed: Option<&dyn crate::ports::SpeedTester>,
    sample: &Node,
    budget: std::time::Duration,
) -> TestPlan {
    use crate::ports::ProbeDepth;
    let light = |why: String| TestPlan {
        kind: JobKind::Light,
        skipped: Some(why),
    };
    match tokio::time::timeout(budget, prober.probe(sample, ProbeDepth::Auth)).await {
        Err(_) => {
            return light(format!(
                "auth and speed tests skipped: a healthy node did not answer a login within {budget:?}"
            ));
        }
        Ok(Err(e)) => return light(format!("auth and speed tests skipped: {e}")),
        Ok(Ok(o))
            if o.reached >= Level::Auth
                || matches!(o.failure, Some(Failure::AuthRejected { .. })) => {}
        Ok(Ok(o)) => {
            let why = o
                .failure
                .map(|f| f.to_string())
                .unwrap_or_else(|| format!("reached only {:?}", o.reached));
            return light(format!(
                "auth and speed tests skipped: a healthy node does not answer logins ({why})"
            ));
        }
    }
    let auth = |why: String| TestPlan {
        kind: JobKind::Auth,
        skipped: Some(why),
    };
    let Some(speed) = speed else {
        return auth("speed test skipped: no speed tester was given".into());
    };
    match tokio::time::timeout(budget, speed.measure(sample)).await {
        Err(_) => auth(format!(
            "speed test skipped: measuring a healthy node did not finish within {budget:?}"
        )),
        Ok(Err(e)) => auth(format!("speed test skipped: {e}")),
        Ok(Ok(o))
            if o.reached >= Level::Speed || matches!(o.failure, Some(Failure::TooSlow { .. })) =>
        {
            TestPlan {
                kind: JobKind::Pipeline,
                skipped: None,
            }
        }
        Ok(Ok(o)) => auth(format!(
            "speed test skipped: a healthy node could not be measured ({})",
            o.failure
                .map(|f| f.to_string())
                .unwrap_or_else(|| format!("reached only {:?}", o.reached))
        )),
    }
}
