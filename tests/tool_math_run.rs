//! `alp-rl train` on the multi-turn `tool_math` environment after a short SFT warm start on its worked
//! conversations: the policy calls the calculator in its rollouts, and in the rollout logs the tool's
//! reply (and the template text around it) has loss mask 0 while the policy's own turns have mask 1.
use alp_test_support::cli::{ok, AlpRl};
use alp_test_support::run_outputs::{list_row, read, text};
use arrow_array::types::{Int32Type, UInt8Type};

const ALP_RL: AlpRl = AlpRl::new(env!("CARGO_BIN_EXE_alp-rl"));

const CONFIG: &str = r#"[model]
new_model = "tiny"
device = "cpu"
threads = 1

[env]
name = "tool_math"
max_turns = 2
source_settings = { digits = 1, max_operands = 2 }
prompt_template = "{question} ="

[sft]
steps = 120
batch_size = 16
lr = 5e-3
warmup_steps = 5
log_every = 40

[rollout]
group_size = 4
prompts_per_step = 4
max_new_tokens = 96
max_total_tokens = 144
temperature = 0.5

[learner.correction]
kind = "alp"

[run]
steps = 1
checkpoint_every = 0
keep = 1
"#;

/// Maximal runs of equal mask: `(mask, token ids)`.
fn runs(ids: &[i32], mask: &[u8]) -> Vec<(u8, Vec<u32>)> {
    let mut out: Vec<(u8, Vec<u32>)> = Vec::new();
    for (&id, &m) in ids.iter().zip(mask) {
        match out.last_mut() {
            Some((last, run)) if *last == m => run.push(id as u32),
            _ => out.push((m, vec![id as u32])),
        }
    }
    out
}

#[test]
fn warm_started_rollouts_call_the_calculator_with_masked_tool_results() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("tool.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let run = tmp.path().join("run");
    ok(ALP_RL.train(&config, &run, &[]));
    let tok =
        alp_tokenizer::Tokenizer::from_dir(run.join("sft/checkpoints/step-000120/model")).unwrap();
    let decode = |ids: &[u32]| tok.decode(ids, false).unwrap();

    let mut rows = 0;
    let mut with_call = 0;
    for b in read(&run.join("rollouts/step-000001.parquet")) {
        for i in 0..b.num_rows() {
            rows += 1;
            let ids = list_row::<Int32Type>(&b, "completion_ids", i);
            let mask = list_row::<UInt8Type>(&b, "loss_mask", i);
            assert_eq!(ids.len(), mask.len());
            let completion = text(&b, "completion_text", i);
            assert_eq!(
                decode(&ids.iter().map(|&t| t as u32).collect::<Vec<_>>()),
                completion
            );
            if !completion.contains("<|im_start|>tool\n") {
                // No tool turn: everything after the prompt was sampled.
                assert!(mask.iter().all(|&m| m == 1), "{completion:?}");
                continue;
            }
            with_call += 1;
            // Sampled call (1), the tool turn and the next generation prompt (0), the answer (1).
            let r = runs(&ids, &mask);
            assert!(r.len() == 2 || r.len() == 3, "{completion:?}: {r:?}");
            let (m, call) = (&r[0].0, decode(&r[0].1));
            assert_eq!(*m, 1);
            assert!(
                call.starts_with("<tool_call>") && call.ends_with("<|im_end|>"),
                "{call:?}"
            );
            let (m, reply) = (&r[1].0, decode(&r[1].1));
            assert_eq!(*m, 0);
            let result = reply
                .strip_prefix("\n<|im_start|>tool\n")
                .and_then(|t| t.strip_suffix("<|im_end|>\n<|im_start|>assistant\n"))
                .unwrap_or_else(|| panic!("the masked span is not one tool turn: {reply:?}"));
            // The calculator's reply: a number, or an explanation of what was wrong with the call.
            assert!(
                result.starts_with("error:") || result.parse::<f64>().is_ok(),
                "{result:?}"
            );
            if let Some((m, answer)) = r.get(2) {
                assert_eq!(*m, 1);
                assert!(!decode(answer).contains("<|im_start|>"), "{completion:?}");
            }
        }
    }
    assert_eq!(rows, 16);
    // The warm start teaches the call: most rollouts make one (16 of 16 when this test was written).
    assert!(
        with_call * 2 >= rows,
        "only {with_call} of {rows} rollouts called the calculator after the warm start"
    );
}
