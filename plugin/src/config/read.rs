//! [`Vars`]: reading one variable, its documented default standing in when it is
//! not set, so that every default is written once (in [`super::VARS`]).

use super::vars::VARS;
use super::ConfigError;

/// The variables as one lookup (the environment, or a map in tests) sees them.
pub(super) struct Vars<L: Fn(&str) -> Option<String>> {
    /// The lookup.
    pub lookup: L,
}

impl<L: Fn(&str) -> Option<String>> Vars<L> {
    /// The trimmed value of `name` when set, else its documented default; `None`
    /// when it is unset and documented as `unset` (or with a computed default such
    /// as `default-u<uid>`).
    fn raw(&self, name: &'static str) -> Option<String> {
        if let Some(v) = (self.lookup)(name) {
            return Some(v.trim().to_string());
        }
        let d = VARS.iter().find(|v| v.name == name)?.default;
        (d != "unset" && !d.contains('<')).then(|| d.to_string())
    }

    /// `name` parsed by `parse` (set, or its documented default); `None` when it
    /// has neither. A value `parse` refuses is an error naming the variable, the
    /// value and `expected`.
    pub fn get<T>(
        &self,
        name: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
        expected: &str,
    ) -> Result<Option<T>, ConfigError> {
        let Some(v) = self.raw(name) else { return Ok(None) };
        match parse(&v) {
            Some(x) => Ok(Some(x)),
            None => Err(ConfigError {
                var: name,
                value: v,
                expected: expected.to_string(),
            }),
        }
    }

    /// [`Vars::get`] for a variable whose documented default is a value.
    pub fn value<T>(
        &self,
        name: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
        expected: &str,
    ) -> Result<T, ConfigError> {
        self.get(name, parse, expected)?.ok_or_else(|| ConfigError {
            var: name,
            value: "unset".into(),
            expected: "a documented default (a bug: see config/vars.rs)".into(),
        })
    }
}

/// A parser of integers in `min..=max`, and the phrase for its errors.
pub(super) fn int_in<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    min: T,
    max: T,
) -> (impl Fn(&str) -> Option<T>, String) {
    (
        move |s: &str| s.parse::<T>().ok().filter(|n| *n >= min && *n <= max),
        format!("an integer from {min} to {max}"),
    )
}

/// A parser of a value where an empty one means "off" (`Some(None)`).
pub(super) fn or_off<T>(parse: impl Fn(&str) -> Option<T>) -> impl Fn(&str) -> Option<Option<T>> {
    move |s: &str| if s.is_empty() { Some(None) } else { parse(s).map(Some) }
}
