//! When a new reading is worth reporting: the one deadband rule for every bridge.
//!
//! Modbus (the poller) and BLE (the central) both report a point's value only when it
//! differs enough from the last one they reported. The rule, by kind:
//!
//! | last reported → now | reported when |
//! |---|---|
//! | nothing yet | always |
//! | number → number | the deadband is 0 (every reading), or `|now − last| ≥ deadband`; a change between a finite and a non-finite number, or between two different non-finite ones, always |
//! | bool → bool | the deadband is 0 (every reading), or the state changed |
//! | text → text | the text changed, whatever the deadband |
//! | one kind → another | always |
//!
//! Why text ignores a zero deadband: a text point is an identity or a mode (a serial
//! number, a recipe name); sending it again on every poll tells nobody anything and
//! costs the poll an allocation and the link its bytes. A number or a bool reported on
//! every poll with deadband 0 (the default) is how the fleet sees that a point is alive.

use crate::sample::Value;

/// True when `now` should be reported, given the `last` value reported for the same
/// point (`None` before the first) and the point's `deadband` (engineering units;
/// 0 or less reports every number and bool).
pub fn should_report(last: Option<&Value>, now: &Value, deadband: f64) -> bool {
    let every_reading = deadband.is_nan() || deadband <= 0.0;
    match (last, now) {
        (None, _) => true,
        (Some(Value::Number(last)), Value::Number(now)) => {
            if every_reading {
                return true;
            }
            if last.is_finite() && now.is_finite() {
                return (now - last).abs() >= deadband;
            }
            // NaN or infinite on either side: report a change of state, not a repeat.
            !(last.to_bits() == now.to_bits() || (last.is_nan() && now.is_nan()))
        }
        (Some(Value::Bool(last)), Value::Bool(now)) => every_reading || last != now,
        (Some(Value::Text(last)), Value::Text(now)) => last != now,
        (Some(_), _) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(n: f64) -> Value {
        Value::Number(n)
    }

    #[test]
    fn the_first_reading_is_always_reported() {
        for value in [number(1.0), Value::Bool(false), Value::Text(String::new())] {
            assert!(should_report(None, &value, 100.0));
        }
    }

    #[test]
    fn numbers_need_at_least_the_deadband() {
        assert!(should_report(Some(&number(20.0)), &number(20.0), 0.0));
        assert!(!should_report(Some(&number(20.0)), &number(20.4), 0.5));
        assert!(should_report(Some(&number(20.0)), &number(20.5), 0.5));
        assert!(should_report(Some(&number(20.0)), &number(19.5), 0.5));
        assert!(!should_report(Some(&number(20.0)), &number(19.6), 0.5));
    }

    #[test]
    fn numbers_that_are_not_finite_report_their_changes_only() {
        let nan = number(f64::NAN);
        assert!(should_report(Some(&number(20.0)), &nan, 0.5));
        assert!(should_report(Some(&nan), &number(20.0), 0.5));
        assert!(!should_report(Some(&nan), &nan, 0.5));
        assert!(should_report(Some(&nan), &number(f64::INFINITY), 0.5));
        assert!(!should_report(
            Some(&number(f64::INFINITY)),
            &number(f64::INFINITY),
            0.5
        ));
        assert!(should_report(Some(&nan), &nan, 0.0));
    }

    #[test]
    fn bools_report_every_reading_at_zero_and_changes_otherwise() {
        let on = Value::Bool(true);
        let off = Value::Bool(false);
        assert!(should_report(Some(&on), &on, 0.0));
        assert!(!should_report(Some(&on), &on, 0.5));
        // A deadband larger than 1 does not swallow a change of state.
        assert!(should_report(Some(&on), &off, 5.0));
    }

    #[test]
    fn texts_report_changes_only_whatever_the_deadband() {
        let a = Value::Text("AB-17".into());
        let b = Value::Text("AB-18".into());
        for deadband in [0.0, 1.0] {
            assert!(!should_report(Some(&a), &a, deadband));
            assert!(should_report(Some(&a), &b, deadband));
        }
    }

    #[test]
    fn a_change_of_kind_is_always_reported() {
        let pairs = [
            (number(1.0), Value::Bool(true)),
            (Value::Bool(true), number(1.0)),
            (number(1.0), Value::Text("1".into())),
            (Value::Text("1".into()), number(1.0)),
        ];
        for (last, now) in pairs {
            assert!(should_report(Some(&last), &now, 10.0), "{last:?} → {now:?}");
        }
    }
}
