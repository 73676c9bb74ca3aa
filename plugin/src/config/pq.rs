//! The `TIERKV_PQ_*` variables, read into PQ retrieval's own settings
//! ([`PqSettings`]), defaults from the table.

use super::parse::{parse_size, SIZE_FORMS};
use super::read::{int_in, Vars};
use super::ConfigError;
use crate::pq::PqSettings;

/// Reads the `TIERKV_PQ_*` variables (each validated; the combination too: the
/// common head dimensions 64 and 128 must split into the sub-spaces).
pub(super) fn read(v: &Vars<impl Fn(&str) -> Option<String>>) -> Result<PqSettings, ConfigError> {
    let d = PqSettings::default();
    let budget = v.value(
        "TIERKV_PQ_BUDGET",
        |s| s.parse::<f64>().ok().filter(|b| *b > 0.0 && *b <= 1.0),
        "a fraction of the context above 0 and at most 1 (0.2: a fifth)",
    )?;
    let (sink, sink_forms) = int_in(0usize, 4096);
    let sink = v.value("TIERKV_PQ_SINK", sink, &sink_forms)?;
    let (bits, bit_forms) = int_in(1u8, 8);
    let bits = v.value("TIERKV_PQ_BITS", bits, &bit_forms)?;
    let subspaces = v.value(
        "TIERKV_PQ_SUBSPACES",
        |s| s.parse::<usize>().ok().filter(|m| [1, 2, 4, 8, 16].contains(m)),
        "1, 2, 4, 8 or 16 (a divisor of the head dimension)",
    )?;
    let cache_bytes = v.value("TIERKV_PQ_CACHE_BYTES", parse_size, SIZE_FORMS)?;
    Ok(PqSettings {
        budget,
        sink,
        cache_bytes,
        train: crate::pq::Train {
            subspaces,
            bits,
            ..d.train
        },
    })
}
