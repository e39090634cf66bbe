//! A seeded, synthetic Taobao-like impression log with privileged (interacted) features.
//!
//! No public log set carries privileged features, so this module simulates one. The generative model
//! is documented in `docs/synthetic-data.md`; the constants below are that document's "fixed
//! settings" and must not be tuned to obtain a particular Table-2 ordering.
//!
//! Invariants:
//! - Everything is a pure function of [`SynthConfig`] (including its seed): the same config gives the
//!   same logs byte for byte, on any machine (ChaCha8 RNG, no floating-point reductions whose order
//!   depends on threads).
//! - Impressions are emitted in time order within a user, grouped by request, and a request's
//!   privileged features and behaviour sequence only use events strictly before the request.

use rand::distributions::{Distribution, WeightedIndex};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::logs::{Behavior, Item, Logs, Request, Shown};

/// Seconds in a simulated day.
pub const DAY: i64 = 86_400;
/// Actions, from the weakest to the strongest signal; a behaviour records the strongest one.
pub const ACTIONS: [&str; 4] = ["click", "fav", "cart", "buy"];

/// Scale knobs and the seed of the generator (everything else is fixed, see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    /// Seed of the whole generative process.
    pub seed: u64,
    /// Number of users.
    pub users: usize,
    /// Size of the item corpus (every item is exported in a snapshot).
    pub items: usize,
    /// Number of leaf categories.
    pub categories: usize,
    /// Number of shops (each specialised in one category).
    pub shops: usize,
    /// Number of brands (each present in a few categories).
    pub brands: usize,
    /// Simulated days; the last one is the held-out day.
    pub days: u32,
    /// Mean requests (page views) per user and day.
    pub requests_per_user_day: f64,
    /// Items shown per request (each one is an impression row).
    pub impressions_per_request: usize,
    /// Behaviours kept per request in the log (most recent first).
    pub max_behaviors: usize,
}

impl SynthConfig {
    /// Named presets: `ci` (seconds, for tests), `small` (a minute of training), `full` (Table 2 and
    /// the bundled default).
    pub fn preset(name: &str, seed: u64) -> Option<Self> {
        let base = SynthConfig {
            seed,
            users: 6_000,
            items: 20_000,
            categories: 200,
            shops: 2_000,
            brands: 500,
            days: 8,
            requests_per_user_day: 2.0,
            impressions_per_request: 10,
            max_behaviors: 50,
        };
        match name {
            "ci" => Some(SynthConfig {
                users: 120,
                items: 600,
                categories: 20,
                shops: 60,
                brands: 30,
                days: 3,
                requests_per_user_day: 1.5,
                impressions_per_request: 6,
                max_behaviors: 12,
                ..base
            }),
            "small" => Some(SynthConfig {
                users: 2_000,
                items: 5_000,
                categories: 80,
                shops: 500,
                brands: 150,
                days: 5,
                ..base
            }),
            "full" => Some(base),
            _ => None,
        }
    }
}

// ---- fixed settings of the generative model (docs/synthetic-data.md, "Fixed settings") ----
/// Dimension of the latent taste space.
const LATENT: usize = 8;
/// Zipf exponent of category popularity.
const CATEGORY_ZIPF: f64 = 0.9;
/// Spread of an item's latent vector around its category centre.
const ITEM_SPREAD: f64 = 0.6;
/// Standard deviation of item quality.
const QUALITY_SD: f64 = 0.5;
/// Long-term interest categories per user.
const LONG_TERM_CATEGORIES: usize = 4;
/// Probability that a day's intent is one of the long-term categories.
const INTENT_FROM_LONG_TERM: f64 = 0.5;
/// Probability that the intent changes between two requests of the same day.
const INTENT_SWITCH: f64 = 0.25;
/// Candidate generator mix: long-term categories, current intent, global popularity.
const CANDIDATE_MIX: [f64; 3] = [0.45, 0.25, 0.30];
/// Mean number of pre-history behaviours before day 0.
const PRE_HISTORY: f64 = 25.0;
/// Click model weights (logit scale).
const W_BIAS: f64 = -2.6;
const W_AFFINITY: f64 = 0.35;
const W_QUALITY: f64 = 0.6;
const W_INTENT: f64 = 1.0;
const W_CLICKS_CATEGORY: f64 = 0.55;
const W_CLICKS_SHOP: f64 = 0.7;
const W_FATIGUE: f64 = -0.45;
const W_GENDER: f64 = 0.4;
const W_AGE: f64 = 0.3;

struct World {
    cat_centre: Vec<[f64; LATENT]>,
    cat_weight: Vec<f64>,
    cat_gender: Vec<f64>,
    cat_age: Vec<f64>,
    items_by_cat: Vec<Vec<usize>>,
    item_weight_by_cat: Vec<WeightedIndex<f64>>,
    item_cat: Vec<usize>,
    item_shop: Vec<usize>,
    item_brand: Vec<usize>,
    item_latent: Vec<[f64; LATENT]>,
    item_quality: Vec<f64>,
    popular: WeightedIndex<f64>,
}

/// A user's running state inside the simulation.
struct UserState {
    age: i64,
    gender: usize,
    purchase_level: i64,
    latent: [f64; LATENT],
    long_term: Vec<usize>,
    /// (time, item, action index, dwell)
    history: Vec<(i64, usize, usize, f64)>,
    /// (time, item, clicked)
    impressions: Vec<(i64, usize, bool)>,
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller; deterministic and dependency-free.
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> usize {
    // Knuth's method; the means used here are small.
    let l = (-mean).exp();
    let mut k = 0;
    let mut p = 1.0;
    loop {
        p *= rng.gen::<f64>();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

fn item_id(index: usize) -> u64 {
    1_000_000 + index as u64
}

fn build_world(cfg: &SynthConfig, rng: &mut ChaCha8Rng) -> World {
    let cats = cfg.categories.max(1);
    let cat_centre: Vec<[f64; LATENT]> = (0..cats)
        .map(|_| std::array::from_fn(|_| normal(rng)))
        .collect();
    let cat_weight: Vec<f64> = (0..cats)
        .map(|k| 1.0 / ((k + 1) as f64).powf(CATEGORY_ZIPF))
        .collect();
    let cat_gender: Vec<f64> = (0..cats).map(|_| normal(rng)).collect();
    let cat_age: Vec<f64> = (0..cats).map(|_| normal(rng)).collect();
    // Shops specialise in one category; brands span three categories.
    let shop_cat: Vec<usize> = (0..cfg.shops.max(1)).map(|s| s % cats).collect();
    let mut shops_by_cat = vec![Vec::new(); cats];
    for (s, &c) in shop_cat.iter().enumerate() {
        shops_by_cat[c].push(s);
    }
    let mut brands_by_cat = vec![Vec::new(); cats];
    for b in 0..cfg.brands.max(1) {
        for _ in 0..3 {
            brands_by_cat[rng.gen_range(0..cats)].push(b);
        }
    }
    let cat_dist = WeightedIndex::new(&cat_weight).expect("positive weights");
    let mut items_by_cat = vec![Vec::new(); cats];
    let mut item_cat = Vec::with_capacity(cfg.items);
    let mut item_shop = Vec::with_capacity(cfg.items);
    let mut item_brand = Vec::with_capacity(cfg.items);
    let mut item_latent = Vec::with_capacity(cfg.items);
    let mut item_quality = Vec::with_capacity(cfg.items);
    for i in 0..cfg.items {
        // Every category gets at least one item, then popularity decides.
        let c = if i < cats { i } else { cat_dist.sample(rng) };
        let shops = &shops_by_cat[c];
        let shop = if shops.is_empty() {
            rng.gen_range(0..cfg.shops.max(1))
        } else {
            shops[rng.gen_range(0..shops.len())]
        };
        let brands = &brands_by_cat[c];
        let brand = if brands.is_empty() {
            rng.gen_range(0..cfg.brands.max(1))
        } else {
            brands[rng.gen_range(0..brands.len())]
        };
        let centre = cat_centre[c];
        let latent: [f64; LATENT] = std::array::from_fn(|d| centre[d] + ITEM_SPREAD * normal(rng));
        items_by_cat[c].push(i);
        item_cat.push(c);
        item_shop.push(shop);
        item_brand.push(brand);
        item_latent.push(latent);
        item_quality.push(QUALITY_SD * normal(rng));
    }
    let item_weight_by_cat = items_by_cat
        .iter()
        .map(|items| {
            let w: Vec<f64> = if items.is_empty() {
                vec![1.0]
            } else {
                items.iter().map(|&i| item_quality[i].exp()).collect()
            };
            WeightedIndex::new(w).expect("positive weights")
        })
        .collect();
    let popular = WeightedIndex::new(
        (0..cfg.items)
            .map(|i| item_quality[i].exp() * cat_weight[item_cat[i]])
            .collect::<Vec<_>>(),
    )
    .expect("positive weights");
    World {
        cat_centre,
        cat_weight,
        cat_gender,
        cat_age,
        items_by_cat,
        item_weight_by_cat,
        item_cat,
        item_shop,
        item_brand,
        item_latent,
        item_quality,
        popular,
    }
}

impl World {
    fn item_in_category(&self, c: usize, rng: &mut ChaCha8Rng) -> usize {
        let items = &self.items_by_cat[c];
        if items.is_empty() {
            self.popular.sample(rng)
        } else {
            items[self.item_weight_by_cat[c].sample(rng)]
        }
    }

    fn affinity(&self, user: &UserState, item: usize) -> f64 {
        let dot: f64 = (0..LATENT)
            .map(|d| user.latent[d] * self.item_latent[item][d])
            .sum();
        dot / (LATENT as f64).sqrt()
    }

    fn profile_effect(&self, user: &UserState, item: usize) -> f64 {
        let c = self.item_cat[item];
        let g = if user.gender == 0 { 1.0 } else { -1.0 };
        let a = (user.age as f64 - 40.0) / 15.0;
        W_GENDER * g * self.cat_gender[c] + W_AGE * a * self.cat_age[c]
    }
}

/// Counts of the privileged (interacted) features of one (user, candidate) pair at time `t`.
fn interacted(world: &World, user: &UserState, item: usize, t: i64) -> [i32; 4] {
    let c = world.item_cat[item];
    let s = world.item_shop[item];
    let b = world.item_brand[item];
    let since = t - DAY;
    let mut clicks_cat = 0;
    let mut clicks_shop = 0;
    let mut clicks_brand = 0;
    for &(time, it, _, _) in user.history.iter().rev() {
        if time < since {
            break;
        }
        if time >= t {
            continue;
        }
        clicks_cat += i32::from(world.item_cat[it] == c);
        clicks_shop += i32::from(world.item_shop[it] == s);
        clicks_brand += i32::from(world.item_brand[it] == b);
    }
    let mut impressions_cat = 0;
    for &(time, it, _) in user.impressions.iter().rev() {
        if time < since {
            break;
        }
        if time >= t {
            continue;
        }
        impressions_cat += i32::from(world.item_cat[it] == c);
    }
    [clicks_cat, clicks_shop, clicks_brand, impressions_cat]
}

fn behaviors_before(world: &World, user: &UserState, t: i64, max: usize) -> Vec<Behavior> {
    user.history
        .iter()
        .rev()
        .filter(|h| h.0 < t)
        .take(max)
        .map(|&(time, it, action, dwell)| Behavior {
            item_id: item_id(it),
            category: world.item_cat[it] as u64,
            shop: world.item_shop[it] as u64,
            brand: world.item_brand[it] as u64,
            action: ACTIONS[action].to_string(),
            seconds_ago: (t - time) as f64,
            dwell_seconds: dwell,
        })
        .collect()
}

fn sample_action(rng: &mut ChaCha8Rng) -> usize {
    let r: f64 = rng.gen();
    if r < 0.04 {
        3
    } else if r < 0.12 {
        2
    } else if r < 0.18 {
        1
    } else {
        0
    }
}

fn sample_dwell(rng: &mut ChaCha8Rng, affinity: f64) -> f64 {
    let log_dwell = 2.5 + 0.4 * affinity + 0.8 * normal(rng);
    (log_dwell.exp()).clamp(1.0, 600.0).round()
}

/// Runs the simulation and returns the item corpus and the impression log (time-ordered per user).
pub fn generate(cfg: &SynthConfig) -> Logs {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let world = build_world(cfg, &mut rng);
    let cats = world.cat_centre.len();
    let cat_dist = WeightedIndex::new(&world.cat_weight).expect("positive weights");
    let mut requests = Vec::new();
    let mut request_id: u64 = 0;
    for u in 0..cfg.users {
        // Each user has an independent stream so that the log does not depend on user order.
        let mut rng = ChaCha8Rng::seed_from_u64(
            cfg.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(u as u64 + 1)),
        );
        let gender = usize::from(rng.gen_bool(0.5));
        let age = rng.gen_range(16..70);
        let purchase_level = rng.gen_range(1..=5);
        // Long-term interests: popular categories, tilted by the profile.
        let g = if gender == 0 { 1.0 } else { -1.0 };
        let a = (age as f64 - 40.0) / 15.0;
        let tilted: Vec<f64> = (0..cats)
            .map(|c| {
                world.cat_weight[c]
                    * (0.8 * g * world.cat_gender[c] + 0.5 * a * world.cat_age[c]).exp()
            })
            .collect();
        let tilted = WeightedIndex::new(&tilted).expect("positive weights");
        let mut long_term = Vec::with_capacity(LONG_TERM_CATEGORIES);
        while long_term.len() < LONG_TERM_CATEGORIES.min(cats) {
            let c = tilted.sample(&mut rng);
            if !long_term.contains(&c) {
                long_term.push(c);
            }
        }
        let mut latent = [0.0; LATENT];
        for &c in &long_term {
            for d in 0..LATENT {
                latent[d] += world.cat_centre[c][d] / LONG_TERM_CATEGORIES as f64;
            }
        }
        for v in latent.iter_mut() {
            *v = 1.5 * *v + 0.5 * normal(&mut rng);
        }
        let mut user = UserState {
            age,
            gender,
            purchase_level,
            latent,
            long_term,
            history: Vec::new(),
            impressions: Vec::new(),
        };
        // Pre-history: clicks over the 30 days before day 0, from long-term interests.
        let n_pre = poisson(&mut rng, PRE_HISTORY);
        let mut pre: Vec<(i64, usize, usize, f64)> = (0..n_pre)
            .map(|_| {
                let c = user.long_term[rng.gen_range(0..user.long_term.len())];
                let it = world.item_in_category(c, &mut rng);
                let t = -rng.gen_range(1..30 * DAY);
                let aff = world.affinity(&user, it);
                (t, it, sample_action(&mut rng), sample_dwell(&mut rng, aff))
            })
            .collect();
        pre.sort_by_key(|h| h.0);
        user.history = pre;
        let activity = 0.3 + 1.4 * rng.gen::<f64>();
        for day in 0..cfg.days {
            let n_req = poisson(&mut rng, cfg.requests_per_user_day * activity);
            let mut times: Vec<i64> = (0..n_req)
                .map(|_| i64::from(day) * DAY + rng.gen_range(0..DAY))
                .collect();
            times.sort_unstable();
            let mut intent = if rng.gen_bool(INTENT_FROM_LONG_TERM) {
                user.long_term[rng.gen_range(0..user.long_term.len())]
            } else {
                cat_dist.sample(&mut rng)
            };
            for t in times {
                if rng.gen_bool(INTENT_SWITCH) {
                    intent = if rng.gen_bool(INTENT_FROM_LONG_TERM) {
                        user.long_term[rng.gen_range(0..user.long_term.len())]
                    } else {
                        cat_dist.sample(&mut rng)
                    };
                }
                let behaviors = behaviors_before(&world, &user, t, cfg.max_behaviors);
                let mut shown = Vec::with_capacity(cfg.impressions_per_request);
                while shown.len() < cfg.impressions_per_request.min(cfg.items) {
                    let r: f64 = rng.gen();
                    let it = if r < CANDIDATE_MIX[0] {
                        let c = user.long_term[rng.gen_range(0..user.long_term.len())];
                        world.item_in_category(c, &mut rng)
                    } else if r < CANDIDATE_MIX[0] + CANDIDATE_MIX[1] {
                        world.item_in_category(intent, &mut rng)
                    } else {
                        world.popular.sample(&mut rng)
                    };
                    if !shown.contains(&it) {
                        shown.push(it);
                    }
                }
                let mut clicked = Vec::new();
                let mut rows = Vec::with_capacity(shown.len());
                for &it in &shown {
                    let counts = interacted(&world, &user, it, t);
                    let aff = world.affinity(&user, it);
                    let logit = W_BIAS
                        + W_AFFINITY * aff
                        + W_QUALITY * world.item_quality[it]
                        + W_INTENT * f64::from(u8::from(world.item_cat[it] == intent))
                        + W_CLICKS_CATEGORY * f64::from(counts[0]).ln_1p()
                        + W_CLICKS_SHOP * f64::from(counts[1]).ln_1p()
                        + W_FATIGUE * (f64::from(counts[3] - counts[0]).max(0.0) / 3.0).ln_1p()
                        + world.profile_effect(&user, it);
                    let p = 1.0 / (1.0 + (-logit).exp());
                    let label = rng.gen_bool(p);
                    if label {
                        clicked.push((it, aff));
                    }
                    rows.push(Shown {
                        item_id: item_id(it),
                        item_category: world.item_cat[it] as u64,
                        item_shop: world.item_shop[it] as u64,
                        item_brand: world.item_brand[it] as u64,
                        privileged: counts,
                        label: u8::from(label),
                    });
                }
                requests.push(Request {
                    request_id,
                    day: day as i32,
                    timestamp: t,
                    user_id: 10_000_000 + u as u64,
                    user_age: Some(user.age),
                    user_gender: Some(if user.gender == 0 { "f" } else { "m" }.to_string()),
                    user_purchase_level: Some(user.purchase_level),
                    behaviors,
                    shown: rows,
                });
                for &it in &shown {
                    let was_clicked = clicked.iter().any(|c| c.0 == it);
                    user.impressions.push((t, it, was_clicked));
                }
                // Clicks happen during the minutes after the request, in shown order.
                for (k, &(it, aff)) in clicked.iter().enumerate() {
                    let dt = 30 + 60 * k as i64 + rng.gen_range(0..30);
                    user.history.push((
                        t + dt,
                        it,
                        sample_action(&mut rng),
                        sample_dwell(&mut rng, aff),
                    ));
                }
                // Keep the history sorted by time (clicks of one request can outlast the next one).
                user.history.sort_by_key(|h| h.0);
                request_id += 1;
            }
        }
    }
    let items = (0..cfg.items)
        .map(|i| Item {
            item_id: item_id(i),
            category: world.item_cat[i] as u64,
            shop: world.item_shop[i] as u64,
            brand: world.item_brand[i] as u64,
        })
        .collect();
    Logs { items, requests }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_sane() {
        let cfg = SynthConfig::preset("ci", 3).expect("preset");
        let a = generate(&cfg);
        let b = generate(&cfg);
        assert_eq!(a, b);
        let c = generate(&SynthConfig {
            seed: 4,
            ..cfg.clone()
        });
        assert_ne!(a.requests, c.requests);
        assert_eq!(a.items.len(), cfg.items);
        assert!(!a.requests.is_empty());
        let shown: Vec<&Shown> = a.requests.iter().flat_map(|r| &r.shown).collect();
        let clicks: usize = shown.iter().map(|i| usize::from(i.label)).sum();
        let ctr = clicks as f64 / shown.len() as f64;
        assert!(ctr > 0.02 && ctr < 0.5, "ctr {ctr}");
        for imp in &a.requests {
            assert!(imp.behaviors.len() <= cfg.max_behaviors);
            assert!(imp
                .behaviors
                .windows(2)
                .all(|w| w[0].seconds_ago <= w[1].seconds_ago));
            assert!(imp.behaviors.iter().all(|b| b.seconds_ago > 0.0));
            assert!(imp.day < cfg.days as i32);
        }
    }
}
