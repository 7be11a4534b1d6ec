//! Greedy generation of the local engine against transformers `generate(do_sample=False)`: a ragged,
//! left-padded batch must give each prompt's tokens exactly, with log-probs within 1e-4.
use alp_policy::{CausalLM, LoadOptions};
use alp_rollout::{
    FinishReason, GenerationBackend, GenerationRequest, LocalEngine, SamplingParams,
};
use alp_test_support::hf_models;

const NEW_TOKENS: usize = 40;

#[test]
fn greedy_generation_matches_transformers() {
    tch::set_num_threads(1);
    let prompts = hf_models::ragged_prompts();
    for &(arch, tied, kv_heads) in hf_models::CASES {
        let dir = tempfile::tempdir().unwrap();
        let reference = hf_models::make_model_with_reference(
            arch,
            dir.path(),
            tied,
            kv_heads,
            &prompts,
            NEW_TOKENS,
        );
        let model = CausalLM::load(dir.path(), &LoadOptions::default()).unwrap();
        let mut engine = LocalEngine::new(model, 8);
        let params = SamplingParams {
            greedy: true,
            max_new_tokens: NEW_TOKENS,
            ..SamplingParams::default()
        };
        let requests: Vec<_> = prompts
            .iter()
            .cloned()
            .map(GenerationRequest::new)
            .collect();
        let out = engine.generate(&requests, &params).unwrap();
        for (i, (ours, theirs)) in out.iter().zip(&reference).enumerate() {
            assert_eq!(
                ours.completion_ids, theirs.greedy_ids,
                "{arch} tied={tied} prompt {i}"
            );
            assert_eq!(ours.finish_reason, FinishReason::Length);
            for (t, (a, b)) in ours
                .logprobs
                .iter()
                .zip(&theirs.greedy_logprobs)
                .enumerate()
            {
                assert!(
                    (*a as f64 - b).abs() < 1e-4,
                    "{arch} prompt {i} token {t}: log-prob {a} vs transformers {b}"
                );
            }
        }
    }
}
