//! Fitness shaping: raw member rewards to the weights of the update.

/// How raw fitness becomes the update's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FitnessShaping {
    /// Subtract each group's mean (the members answering one prompt), divide by the global std of the
    /// raw scores (the reference LLM runs; GRPO-like).
    Group { size: usize },
    /// `(f - mean) / sqrt(var + 1e-5)` over the population.
    ZScore,
    /// Centered ranks in `[-0.5, 0.5]` (ties get their mean rank).
    Rank,
}

/// Shapes `raw` (one value per member, in member order).
pub fn shape_fitness(raw: &[f64], shaping: FitnessShaping) -> Vec<f64> {
    let n = raw.len();
    if n == 0 {
        return Vec::new();
    }
    let mean = raw.iter().sum::<f64>() / n as f64;
    let var = raw.iter().map(|f| (f - mean).powi(2)).sum::<f64>() / n as f64;
    match shaping {
        FitnessShaping::ZScore => raw
            .iter()
            .map(|f| (f - mean) / (var + 1e-5).sqrt())
            .collect(),
        FitnessShaping::Group { size } => {
            let size = size.max(1);
            let std = (var + 1e-5).sqrt();
            raw.chunks(size)
                .flat_map(|g| {
                    let m = g.iter().sum::<f64>() / g.len() as f64;
                    g.iter().map(move |f| (f - m) / std)
                })
                .collect()
        }
        FitnessShaping::Rank => {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| raw[a].total_cmp(&raw[b]));
            let mut ranks = vec![0.0; n];
            let mut i = 0;
            while i < n {
                let mut j = i;
                while j + 1 < n && raw[order[j + 1]] == raw[order[i]] {
                    j += 1;
                }
                let r = (i + j) as f64 / 2.0;
                for &k in &order[i..=j] {
                    ranks[k] = r;
                }
                i = j + 1;
            }
            let denom = (n - 1).max(1) as f64;
            ranks.iter().map(|r| r / denom - 0.5).collect()
        }
    }
}
