//! Outcome advantages from the rewards of one group (all samples of one prompt).
use crate::settings::AdvantageKind;

/// The epsilon of GRPO's std normalisation (verl's default).
pub const GRPO_EPS: f64 = 1e-6;

/// One advantage per reward, broadcast later to every token of the sample.
///
/// A group of one has no baseline to compare against, so its advantage is 0 for every kind (verl would
/// return the raw reward for GRPO, which silently turns a singleton into REINFORCE without baseline).
pub fn group_advantages(rewards: &[f64], kind: AdvantageKind) -> Vec<f64> {
    let g = rewards.len();
    if g < 2 {
        return vec![0.0; g];
    }
    let n = g as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    match kind {
        AdvantageKind::Grpo => {
            // Bessel-corrected std, as torch.std in verl's GRPO.
            let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0);
            let std = var.sqrt();
            rewards
                .iter()
                .map(|r| (r - mean) / (std + GRPO_EPS))
                .collect()
        }
        AdvantageKind::DrGrpo => rewards.iter().map(|r| r - mean).collect(),
        AdvantageKind::Rloo => {
            let sum: f64 = rewards.iter().sum();
            rewards.iter().map(|r| r - (sum - r) / (n - 1.0)).collect()
        }
    }
}
