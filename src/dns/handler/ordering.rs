//! The order of a record set for one query: random, round robin or
//! weighted, drawn lazily, or walked affinely for large sets.

use super::*;

/// Sets larger than this are walked affinely rather than shuffled.
pub(super) const AFFINE_ABOVE: usize = 64;

/// A query's order of a record set.
#[derive(Clone, Copy)]
pub(super) enum Draw {
    Lazy,
    Fixed,
    Affine { start: usize, stride: usize },
}

pub(super) fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Handler {
    /// How this query orders the entries of `set`: a lazy shuffle, an
    /// order put in `s.order`, or for large sets a random affine walk
    /// (`start + i·stride mod n`, stride coprime to n), which needs no
    /// per-query setup, so a 5,000-instance answer costs what its few
    /// answered records cost.
    pub(super) fn order(&self, set: &RecordSet, mode: Balance, s: &mut Scratch) -> Draw {
        let n = set.entries.len();
        let uniform = matches!(mode, Balance::Random) || (mode == Balance::Weighted && set.uniform);
        if uniform && n > AFFINE_ABOVE {
            let mut stride = s.rng.usize(1..n);
            while gcd(stride, n) != 1 {
                stride = s.rng.usize(1..n);
            }
            return Draw::Affine {
                start: s.rng.usize(0..n),
                stride,
            };
        }
        s.order.clear();
        s.order.extend(0..n as u32);
        match mode {
            Balance::Random => Draw::Lazy,
            Balance::Weighted if set.uniform => Draw::Lazy,
            Balance::RoundRobin => {
                let start = set.next.fetch_add(1, Ordering::Relaxed) as usize % n;
                s.order.rotate_left(start);
                Draw::Fixed
            }
            Balance::Weighted => {
                // Efraimidis–Spirakis: sorting by -ln(u)/w draws a random
                // order in which each entry comes first with probability
                // w / Σw. Weight 0 goes last, in random order.
                s.keys.clear();
                for (i, e) in set.entries.iter().enumerate() {
                    let u = s.rng.f64();
                    let key = if e.weight == 0 {
                        (true, u)
                    } else {
                        (false, -(1.0 - u).ln() / e.weight as f64)
                    };
                    s.keys.push((key.0, key.1, i as u32));
                }
                s.keys
                    .sort_unstable_by(|a, b| (a.0, a.1).partial_cmp(&(b.0, b.1)).expect("no NaN"));
                s.order.clear();
                s.order.extend(s.keys.iter().map(|k| k.2));
                Draw::Fixed
            }
        }
    }
}
