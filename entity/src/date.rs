//! [`AbsDate`], the value of every `DATETIME` column.
//!
//! Sequelize's SQLite dialect stores dates as text, in UTC, with exactly three fractional digits and
//! a space before the offset: `2026-12-04 13:05:09.123 +00:00`. audiobookshelf parses that text back
//! with its own rules, so abs-socket must write exactly this shape. Callers only ever see a
//! `DateTime<Utc>`; how it is stored is decided here, in one place: reading accepts the Sequelize
//! text (with or without fractional digits), ISO 8601, or a native timestamp column, so a backend
//! with real timestamps can be added without touching any caller.
//!
//! Writing is the one place where the backend shows: SQLite columns get the Sequelize text, and a
//! PostgreSQL store (abs-socket's own, never audiobookshelf's) gets native `timestamptz` values,
//! since PostgreSQL refuses text bound to a timestamp column. sea-query converts a value without
//! knowing the backend, so the choice is process-wide, made once by whoever opens the database
//! ([`store_natively`]); a process opens one database.

use chrono::{DateTime, NaiveDateTime, SubsecRound, TimeZone, Utc};
use sea_orm::sea_query::{ArrayType, ColumnType, Nullable, ValueType, ValueTypeErr};
use sea_orm::{ColIdx, DbErr, QueryResult, TryGetError, TryGetable, Value};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

static NATIVE: AtomicBool = AtomicBool::new(false);

/// Makes every date written from now on a native timestamp (PostgreSQL) rather than Sequelize's
/// text (SQLite, the default).
pub fn store_natively(native: bool) {
    NATIVE.store(native, Ordering::Relaxed);
}

fn native() -> bool {
    NATIVE.load(Ordering::Relaxed)
}

/// A point in time as audiobookshelf stores it: millisecond precision, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AbsDate(DateTime<Utc>);

/// The text did not hold a date in any format audiobookshelf writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseAbsDateError(pub String);

impl fmt::Display for ParseAbsDateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a date: {:?}", self.0)
    }
}

impl std::error::Error for ParseAbsDateError {}

impl AbsDate {
    /// Now, truncated to the millisecond as JavaScript's `Date.now()` would be.
    pub fn now() -> Self {
        Self::from(Utc::now())
    }

    /// From milliseconds since the epoch, the form dates take over the socket.
    pub fn from_millis(ms: i64) -> Option<Self> {
        DateTime::from_timestamp_millis(ms).map(Self)
    }

    /// Milliseconds since the epoch, as audiobookshelf sends dates to its clients.
    pub fn millis(&self) -> i64 {
        self.0.timestamp_millis()
    }

    /// Whether this instant is at or before `now_secs` (seconds since the epoch).
    pub fn reached(&self, now_secs: f64) -> bool {
        self.millis() as f64 / 1000.0 <= now_secs
    }

    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }

    /// The Sequelize SQLite text form, e.g. `2026-12-04 13:05:09.123 +00:00`.
    pub fn to_sequelize(&self) -> String {
        self.0.format("%Y-%m-%d %H:%M:%S%.3f +00:00").to_string()
    }
}

impl From<DateTime<Utc>> for AbsDate {
    fn from(dt: DateTime<Utc>) -> Self {
        Self(dt.trunc_subsecs(3))
    }
}

impl fmt::Display for AbsDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_sequelize())
    }
}

impl FromStr for AbsDate {
    type Err = ParseAbsDateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        // Sequelize's own form, with any offset and any number of fractional digits.
        if let Ok(dt) = DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f %:z") {
            return Ok(Self::from(dt.with_timezone(&Utc)));
        }
        if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
            return Ok(Self::from(dt.with_timezone(&Utc)));
        }
        // A date without an offset is UTC, as SQLite's own date functions write it.
        for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
            if let Ok(naive) = NaiveDateTime::parse_from_str(t, fmt) {
                return Ok(Self::from(Utc.from_utc_datetime(&naive)));
            }
        }
        Err(ParseAbsDateError(s.to_owned()))
    }
}

impl From<AbsDate> for Value {
    fn from(d: AbsDate) -> Self {
        if native() {
            Value::ChronoDateTimeUtc(Some(d.0))
        } else {
            Value::String(Some(d.to_sequelize()))
        }
    }
}

impl TryGetable for AbsDate {
    fn try_get_by<I: ColIdx>(res: &QueryResult, idx: I) -> Result<Self, TryGetError> {
        match String::try_get_by(res, idx) {
            Ok(text) => text
                .parse()
                .map_err(|e: ParseAbsDateError| TryGetError::DbErr(DbErr::Type(e.to_string()))),
            Err(TryGetError::Null(col)) => Err(TryGetError::Null(col)),
            // A backend with a native timestamp type hands it over as such.
            Err(_) => DateTime::<Utc>::try_get_by(res, idx).map(Self::from),
        }
    }
}

impl ValueType for AbsDate {
    fn try_from(v: Value) -> Result<Self, ValueTypeErr> {
        match v {
            Value::String(Some(s)) => s.parse().map_err(|_| ValueTypeErr),
            Value::ChronoDateTimeUtc(Some(dt)) => Ok(Self::from(dt)),
            _ => Err(ValueTypeErr),
        }
    }

    fn type_name() -> String {
        "AbsDate".to_owned()
    }

    fn array_type() -> ArrayType {
        ArrayType::String
    }

    fn column_type() -> ColumnType {
        ColumnType::TimestampWithTimeZone
    }
}

impl Nullable for AbsDate {
    fn null() -> Value {
        if native() {
            Value::ChronoDateTimeUtc(None)
        } else {
            Value::String(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_exactly_the_sequelize_form() {
        let d: AbsDate = "2026-12-04 13:41:15.866 +00:00".parse().unwrap();
        assert_eq!(d.to_sequelize(), "2026-12-04 13:41:15.866 +00:00");
        assert_eq!(d.millis(), 1_796_391_675_866);
    }

    #[test]
    fn a_date_without_milliseconds_gains_three_zeros() {
        let d: AbsDate = "2026-12-04 13:05:09 +00:00".parse().unwrap();
        assert_eq!(d.to_sequelize(), "2026-12-04 13:05:09.000 +00:00");
    }

    #[test]
    fn other_offsets_and_iso_forms_are_read_as_utc() {
        let a: AbsDate = "2026-12-04 14:05:09.123 +01:00".parse().unwrap();
        let b: AbsDate = "2026-12-04T13:05:09.123Z".parse().unwrap();
        let c: AbsDate = "2026-12-04 13:05:09.123".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(a.to_sequelize(), "2026-12-04 13:05:09.123 +00:00");
    }

    #[test]
    fn sub_millisecond_precision_is_truncated_like_javascript() {
        let d = AbsDate::from(DateTime::from_timestamp_nanos(1_796_391_675_866_999_999));
        assert_eq!(d.to_sequelize(), "2026-12-04 13:41:15.866 +00:00");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!("yesterday".parse::<AbsDate>().is_err());
        assert!("".parse::<AbsDate>().is_err());
    }

    #[test]
    fn value_round_trip() {
        let d = AbsDate::from_millis(1_796_391_675_866).unwrap();
        let v: Value = d.into();
        assert_eq!(
            v,
            Value::String(Some("2026-12-04 13:41:15.866 +00:00".into()))
        );
        assert_eq!(<AbsDate as ValueType>::try_from(v).unwrap(), d);
        assert_eq!(<AbsDate as Nullable>::null(), Value::String(None));
    }
}
