//! The check status state machine: Consul's thresholds.
//!
//! A probe's result changes the check's status only once enough results in
//! a row agree: `SuccessBeforePassing` successes (warning counts as a
//! success, as in Consul), `FailuresBeforeWarning` failures for warning and
//! `FailuresBeforeCritical` for critical (warning's threshold defaults to
//! critical's). Below a threshold nothing changes, output included.

use crate::registry::{Health, Thresholds};

#[derive(Debug, Clone)]
pub struct StatusMachine {
    thresholds: Thresholds,
    successes: u32,
    failures: u32,
}

impl StatusMachine {
    pub fn new(thresholds: Thresholds) -> StatusMachine {
        StatusMachine {
            thresholds,
            successes: 0,
            failures: 0,
        }
    }

    /// Feeds one probe result; returns the status to record, if any.
    pub fn observe(&mut self, result: Health) -> Option<Health> {
        let t = &self.thresholds;
        match result {
            Health::Passing | Health::Warning => {
                self.successes = self.successes.saturating_add(1);
                self.failures = 0;
                (self.successes >= t.success_before_passing).then_some(result)
            }
            Health::Critical => {
                self.failures = self.failures.saturating_add(1);
                self.successes = 0;
                let before_warning = if t.failures_before_warning == 0 {
                    t.failures_before_critical
                } else {
                    t.failures_before_warning
                };
                if self.failures >= t.failures_before_critical {
                    Some(Health::Critical)
                } else if self.failures >= before_warning {
                    Some(Health::Warning)
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::*;

    fn run(t: Thresholds, results: &[Health]) -> Vec<Option<Health>> {
        let mut m = StatusMachine::new(t);
        results.iter().map(|r| m.observe(*r)).collect()
    }

    #[test]
    fn no_thresholds_follow_every_result() {
        let out = run(
            Thresholds::default(),
            &[Passing, Critical, Warning, Passing],
        );
        assert_eq!(
            out,
            [Some(Passing), Some(Critical), Some(Warning), Some(Passing)]
        );
    }

    #[test]
    fn success_before_passing() {
        let t = Thresholds {
            success_before_passing: 3,
            ..Thresholds::default()
        };
        let out = run(t, &[Passing, Passing, Critical, Passing, Passing, Passing]);
        assert_eq!(out, [None, None, Some(Critical), None, None, Some(Passing)]);
    }

    #[test]
    fn failures_before_warning_then_critical() {
        let t = Thresholds {
            failures_before_warning: 1,
            failures_before_critical: 3,
            ..Thresholds::default()
        };
        let out = run(t, &[Critical, Critical, Critical, Passing, Critical]);
        assert_eq!(
            out,
            [
                Some(Warning),
                Some(Warning),
                Some(Critical),
                Some(Passing),
                Some(Warning)
            ]
        );
    }

    #[test]
    fn warning_threshold_defaults_to_critical_threshold() {
        let t = Thresholds {
            failures_before_critical: 2,
            ..Thresholds::default()
        };
        assert_eq!(run(t, &[Critical, Critical]), [None, Some(Critical)]);
    }
}
