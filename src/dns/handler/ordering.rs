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
    /// `start + i·stride mod n`; `stride` is below `n` and coprime to it.
    Affine {
        start: usize,
        stride: usize,
    },
}

/// Primes above 2³¹, and so above any record set's size: a prime `p` from
/// here gives the stride `p mod n`, coprime to `n` because `p` is a prime
/// that cannot divide it. One division a query, where drawing a stride and
/// testing it with Euclid's algorithm took several (100 to 160 ns at 500
/// and 5,000 entries, when a whole answer takes 200).
const STRIDE_PRIMES: [u64; 64] = [
    2156679601, 2157956663, 2163758767, 2173800467, 2187974741, 2198137373, 2202979321, 2204434447,
    2212996619, 2228553473, 2234321743, 2240913811, 2247884647, 2248197607, 2264536249, 2265078919,
    2266819267, 2281036649, 2288497537, 2299439633, 2303211307, 2316684677, 2322549443, 2323984249,
    2340740351, 2349093563, 2354618309, 2370010639, 2380207471, 2389305287, 2396345297, 2410372409,
    2422627399, 2425971841, 2433474751, 2449867573, 2452727063, 2456408807, 2463688663, 2476844221,
    2483690371, 2495002831, 2508302431, 2519774461, 2529213439, 2537996303, 2541291377, 2550412019,
    2561717273, 2568804487, 2573810399, 2578479083, 2587067207, 2599658317, 2603346913, 2617083299,
    2623974623, 2640057709, 2653246517, 2661173731, 2669825863, 2672236423, 2684858329, 2690010413,
];

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
            let p = STRIDE_PRIMES[s.rng.usize(0..STRIDE_PRIMES.len())];
            let stride = (p % n as u64) as usize;
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
