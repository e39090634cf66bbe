//! Evaluation metrics: exact, tie-aware ROC AUC and log-loss.

/// Exact ROC AUC: the probability that a random positive scores above a random negative, counting
/// ties as one half (average ranks). `None` when either class is absent.
pub fn auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
    assert_eq!(
        scores.len(),
        labels.len(),
        "scores and labels differ in length"
    );
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let positives = labels.iter().filter(|&&y| y > 0.5).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // Sum of the (1-based, tie-averaged) ranks of the positives.
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        let pos_in_tie = order[i..=j].iter().filter(|&&k| labels[k] > 0.5).count();
        rank_sum += avg_rank * pos_in_tie as f64;
        i = j + 1;
    }
    let p = positives as f64;
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64))
}

/// Mean log-loss of logits against 0/1 labels.
pub fn logloss(logits: &[f32], labels: &[f32]) -> f64 {
    let n = logits.len().max(1) as f64;
    logits
        .iter()
        .zip(labels)
        .map(|(&x, &y)| {
            let x = f64::from(x);
            let softplus = x.max(0.0) + (-x.abs()).exp().ln_1p();
            softplus - x * f64::from(y)
        })
        .sum::<f64>()
        / n
}

/// Mean and sample standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_force(scores: &[f32], labels: &[f32]) -> f64 {
        let mut num = 0.0;
        let mut den = 0.0;
        for (i, &yi) in labels.iter().enumerate() {
            for (j, &yj) in labels.iter().enumerate() {
                if yi > 0.5 && yj < 0.5 {
                    den += 1.0;
                    if scores[i] > scores[j] {
                        num += 1.0;
                    } else if scores[i] == scores[j] {
                        num += 0.5;
                    }
                }
            }
        }
        num / den
    }

    #[test]
    fn auc_hand_cases() {
        assert_eq!(auc(&[0.1, 0.9], &[0.0, 1.0]), Some(1.0));
        assert_eq!(auc(&[0.9, 0.1], &[0.0, 1.0]), Some(0.0));
        assert_eq!(auc(&[0.5, 0.5], &[0.0, 1.0]), Some(0.5));
        assert_eq!(auc(&[0.5, 0.5, 0.5], &[0.0, 1.0, 1.0]), Some(0.5));
        // 2 positives (0.8, 0.4), 2 negatives (0.4, 0.1): pairs 1, 1, 0.5, 1 -> 0.875.
        assert_eq!(
            auc(&[0.8, 0.4, 0.4, 0.1], &[1.0, 1.0, 0.0, 0.0]),
            Some(0.875)
        );
        assert_eq!(auc(&[0.1, 0.2], &[1.0, 1.0]), None);
        assert_eq!(auc(&[], &[]), None);
    }

    #[test]
    fn auc_matches_brute_force_with_ties() {
        let scores: Vec<f32> = (0..200).map(|i| ((i * 37) % 11) as f32 / 10.0).collect();
        let labels: Vec<f32> = (0..200)
            .map(|i| f32::from(u8::from((i * 13) % 7 < 3)))
            .collect();
        let a = auc(&scores, &labels).expect("both classes");
        assert!((a - brute_force(&scores, &labels)).abs() < 1e-12);
    }

    #[test]
    fn logloss_and_mean_std() {
        assert!((logloss(&[0.0], &[1.0]) - std::f64::consts::LN_2).abs() < 1e-12);
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
    }
}
