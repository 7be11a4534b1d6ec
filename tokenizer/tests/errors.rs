//! Malformed tokenizer directories and templates give errors that name the file and the problem.

use alp_tokenizer::{CharTokenizerSpec, ChatTemplate, Error, Message, Tokenizer, TokenizerConfig};
use serde_json::Map;
use std::path::Path;

/// A valid small tokenizer saved into a fresh temp dir, to be broken by each test.
fn saved_small() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    CharTokenizerSpec::chatml("abc".chars())
        .build()
        .unwrap()
        .save(dir.path())
        .unwrap();
    dir
}

#[test]
fn missing_tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, Error::MissingFile { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn corrupt_tokenizer_json() {
    let dir = saved_small();
    std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": ").unwrap();
    let msg = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("cannot load"),
        "{msg}"
    );
}

#[test]
fn bad_json_in_tokenizer_config() {
    let dir = saved_small();
    std::fs::write(dir.path().join("tokenizer_config.json"), "{not json").unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Json { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("tokenizer_config.json") && msg.contains("invalid JSON"),
        "{msg}"
    );
}

#[test]
fn wrongly_typed_config_field() {
    let dir = saved_small();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": [{"name": "default"}]}"#,
    )
    .unwrap();
    let msg = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("tokenizer_config.json") && msg.contains("chat_template"),
        "{msg}"
    );
}

#[test]
fn missing_chat_template() {
    let dir = saved_small();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": "<|im_end|>"}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let err = tok
        .apply_chat_template(&[Message::user("a")], None, true, &Map::new())
        .unwrap_err();
    assert!(matches!(err, Error::NoChatTemplate(_)), "{err:?}");
    assert!(err.to_string().contains("chat_template"), "{err}");
}

#[test]
fn chat_template_jinja_file_overrides_config() {
    let dir = saved_small();
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{{ messages[0].content }}!\n",
    )
    .unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let text = tok
        .render_chat(&[Message::user("cab")], None, false, &Map::new())
        .unwrap();
    // Jinja2 drops the single trailing newline (keep_trailing_newline=False).
    assert_eq!(text, "cab!");
}

#[test]
fn template_syntax_error_names_the_source() {
    let dir = saved_small();
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{% for m in messages %}",
    )
    .unwrap();
    let msg = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("does not compile") && msg.contains("chat_template.jinja"),
        "{msg}"
    );
}

#[test]
fn raise_exception_and_undefined_errors_carry_the_template_message() {
    let tmpl = ChatTemplate::new(
        "strict.jinja",
        "{% if messages[0].role != 'system' %}{{ raise_exception('Conversation must start with a system message') }}{% endif %}",
    )
    .unwrap();
    let err = tmpl
        .render(&[Message::user("hi")], None, false, &Map::new())
        .unwrap_err();
    assert!(matches!(err, Error::Render { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("strict.jinja")
            && msg.contains("Conversation must start with a system message"),
        "{msg}"
    );
    // tojson on something Python cannot serialise is an error too, not silent output.
    let tmpl = ChatTemplate::new("t", "{{ missing | tojson }}").unwrap();
    let msg = tmpl
        .render(&[Message::user("hi")], None, false, &Map::new())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not JSON serializable"), "{msg}");
}

#[test]
fn unreadable_config_path_is_named() {
    let err = TokenizerConfig::from_file(Path::new("/nonexistent/dir/tokenizer_config.json"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/dir/tokenizer_config.json"),
        "{err}"
    );
}
