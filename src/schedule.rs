//! When periodic work is due: evaluations, RL checkpoints and warm-start checkpoints share one rule.

/// Whether something done every `every` steps (0: never) and always at the `last` step is due at
/// `step`.
pub fn due(step: u64, every: u64, last: u64) -> bool {
    step == last || (every > 0 && step.is_multiple_of(every))
}

#[cfg(test)]
mod tests {
    use super::due;

    #[test]
    fn due_every_n_and_at_the_last_step() {
        let hits: Vec<u64> = (1..=10).filter(|&s| due(s, 4, 10)).collect();
        assert_eq!(hits, [4, 8, 10]);
        let never: Vec<u64> = (1..=10).filter(|&s| due(s, 0, 10)).collect();
        assert_eq!(never, [10]);
    }
}
