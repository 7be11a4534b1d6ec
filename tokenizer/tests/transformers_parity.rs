//! Parity with HF transformers (the independent reference) for the real Qwen3 tokenizer and for the
//! small in-code tokenizer. All cases go to one Python process (`tests/oracle.py`) per test run.
//!
//! Needs `<workspace>/.venv/bin/python` with transformers (scripts/setup.sh) and
//! `<workspace>/../shared/data/tokenizers/qwen3` (or `$ALP_SHARED_DATA/tokenizers/qwen3`). Missing
//! either is a test failure, never a skip.

use alp_oracle as oracle;
use alp_tokenizer::{CharTokenizerSpec, ChatTemplate, FunctionCall, Message, Tokenizer, ToolCall};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn qwen3_dir() -> PathBuf {
    let file = alp_envs::dataset::shared_data_file("tokenizers/qwen3/tokenizer.json")
        .unwrap_or_else(|e| {
            panic!(
                "shared test data missing: tokenizers/qwen3 must hold tokenizer.json and \
                 tokenizer_config.json (see ../shared/data/README.md): {e}"
            )
        });
    file.parent().expect("a file has a folder").to_path_buf()
}

/// Runs the transformers oracle on `request`; panics with a clear message if it cannot.
fn run_oracle(request: &Value) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle.py");
    let tmp = tempfile::tempdir().expect("temp dir");
    let req_path = tmp.path().join("request.json");
    let resp_path = tmp.path().join("response.json");
    std::fs::write(&req_path, serde_json::to_string(request).unwrap()).unwrap();
    oracle::run(
        oracle::python_command()
            .arg(&script)
            .arg(&req_path)
            .arg(&resp_path)
            .env("HF_HUB_OFFLINE", "1")
            .env("TRANSFORMERS_OFFLINE", "1")
            .env("TOKENIZERS_PARALLELISM", "false")
            .env("TRANSFORMERS_VERBOSITY", "error")
            // strftime_now formats UTC here; make Python's local time UTC too.
            .env("TZ", "UTC"),
        "the transformers oracle",
    );
    let text = std::fs::read_to_string(&resp_path).expect("oracle wrote no response");
    serde_json::from_str(&text).expect("oracle response is not JSON")
}

/// One conversation to render. `typed` renders through the `Message` API instead of raw JSON.
struct ChatCase {
    name: String,
    messages: Vec<Value>,
    tools: Option<Vec<Value>>,
    add_generation_prompt: bool,
    kwargs: Map<String, Value>,
    typed: Option<Vec<Message>>,
}

impl ChatCase {
    fn request(&self) -> Value {
        json!({
            "messages": self.messages,
            "tools": self.tools,
            "add_generation_prompt": self.add_generation_prompt,
            "kwargs": self.kwargs,
        })
    }

    fn render(&self, tok: &Tokenizer) -> (String, Vec<u32>) {
        let tools = self.tools.as_deref();
        let agp = self.add_generation_prompt;
        let r = match &self.typed {
            Some(msgs) => tok
                .render_chat(msgs, tools, agp, &self.kwargs)
                .and_then(|t| Ok((t, tok.apply_chat_template(msgs, tools, agp, &self.kwargs)?))),
            None => tok
                .render_chat(&self.messages, tools, agp, &self.kwargs)
                .and_then(|t| {
                    let ids = tok.apply_chat_template(&self.messages, tools, agp, &self.kwargs)?;
                    Ok((t, ids))
                }),
        };
        r.unwrap_or_else(|e| panic!("case {}: {e}", self.name))
    }
}

/// Tool schemas with nested objects, non-ASCII text, escapes and every JSON number shape.
const TOOLS: &str = r#"[
 {"type": "function", "function": {
   "name": "get_weather",
   "description": "Météo actuelle pour une ville — returns °C.\nUse \"metric\" units.",
   "parameters": {"type": "object", "properties": {
     "city": {"type": "string", "description": "城市名称, e.g. 東京"},
     "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
     "location": {"type": "object", "description": "nested", "properties": {
        "lat": {"type": "number", "minimum": -90.0, "maximum": 90},
        "lon": {"type": "number", "minimum": -180.5, "maximum": 180.25},
        "tags": {"type": "array", "items": {"type": "string"}}},
      "required": ["lat", "lon"]}},
   "required": ["city"]}}},
 {"type": "function", "function": {
   "name": "calculator",
   "description": "Evaluate 'expr' with back\\slash, tab\t and emoji 🧮",
   "parameters": {"type": "object", "properties": {
     "expr": {"type": "string"},
     "precision": {"type": "integer", "default": 6, "minimum": 0, "maximum": 1e3},
     "tolerance": {"type": "number", "default": 1e-7},
     "tiny": {"type": "number", "default": 0.0001},
     "big": {"type": "integer", "default": 12345678901234567890},
     "huge": {"type": "number", "default": 1.5e300},
     "neg": {"type": "number", "default": -2.5e16},
     "third": {"type": "number", "default": 0.3333333333333333},
     "strict": {"type": "boolean", "default": false},
     "flags": {"type": "object", "properties": {}, "additionalProperties": false},
     "empty_list": {"type": "array", "items": []},
     "nothing": {"default": null}},
   "required": ["expr"]}}}
]"#;

/// Conversations, each rendered with and without some options below.
const CONVERSATIONS: &str = r#"{
 "plain": [{"role": "user", "content": "Hello! What is 2+2?"}],
 "multi_turn": [
   {"role": "system", "content": "You are a terse assistant."},
   {"role": "user", "content": "Name a prime."},
   {"role": "assistant", "content": "7"},
   {"role": "user", "content": "Another, bigger than  100?\n\nThanks 🙏"}],
 "tool_flow": [
   {"role": "system", "content": "Use tools when useful."},
   {"role": "user", "content": "Weather in Zürich and 3*7?"},
   {"role": "assistant", "content": "", "tool_calls": [
     {"type": "function", "function": {"name": "get_weather",
       "arguments": {"city": "Zürich", "location": {"lat": 47.37, "lon": 8.54, "tags": ["ch", "東京"]}, "unit": "celsius"}}},
     {"type": "function", "function": {"name": "calculator",
       "arguments": {"expr": "3*7", "precision": 0, "tolerance": 1e-9, "strict": true, "nothing": null}}}]},
   {"role": "tool", "content": "{\"temp\": 21.5, \"sky\": \"ensoleillé\"}"},
   {"role": "tool", "content": "21"},
   {"role": "assistant", "content": "<think>\nBoth tools answered.\n</think>\n\nIt is 21.5 °C and 3*7 = 21."}],
 "tool_call_flat_and_string_args": [
   {"role": "user", "content": "Compute 1/3."},
   {"role": "assistant", "content": "Let me compute.", "tool_calls": [
     {"name": "calculator", "arguments": "{\"expr\": \"1/3\"}"},
     {"name": "calculator", "arguments": {"expr": "1/3", "tolerance": 0.5}}]},
   {"role": "tool", "content": "0.3333333333333333"}],
 "think_history": [
   {"role": "user", "content": "First question"},
   {"role": "assistant", "content": "<think>\nplan A\n</think>\n\nAnswer one."},
   {"role": "user", "content": "Second question"},
   {"role": "assistant", "content": "<think>reasoning two</think>Answer two."}],
 "reasoning_content_field": [
   {"role": "user", "content": "Why?"},
   {"role": "assistant", "content": "\nBecause.", "reasoning_content": "\nI should explain.\n"}],
 "tool_response_as_user": [
   {"role": "user", "content": "Start"},
   {"role": "assistant", "content": "calling"},
   {"role": "user", "content": "<tool_response>\nok\n</tool_response>"},
   {"role": "assistant", "content": "<think>\ndone\n</think>\n\nFinished."}]
}"#;

fn chat_cases() -> Vec<ChatCase> {
    let tools: Vec<Value> = serde_json::from_str(TOOLS).unwrap();
    let convs: Map<String, Value> = serde_json::from_str(CONVERSATIONS).unwrap();
    let conv = |n: &str| -> Vec<Value> { serde_json::from_value(convs[n].clone()).unwrap() };
    let kw = |v: Value| -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    };
    let mut cases = Vec::new();
    let mut add =
        |name: &str, conv_name: &str, tools: Option<Vec<Value>>, agp: bool, kwargs: Value| {
            cases.push(ChatCase {
                name: name.to_string(),
                messages: conv(conv_name),
                tools,
                add_generation_prompt: agp,
                kwargs: kw(kwargs),
                typed: None,
            });
        };
    add("plain+gen", "plain", None, true, json!({}));
    add("plain", "plain", None, false, json!({}));
    add(
        "plain+tools+gen",
        "plain",
        Some(tools.clone()),
        true,
        json!({}),
    );
    add(
        "plain+empty_tools+gen",
        "plain",
        Some(vec![]),
        true,
        json!({}),
    );
    add("multi_turn+gen", "multi_turn", None, true, json!({}));
    add("multi_turn", "multi_turn", None, false, json!({}));
    add(
        "multi_turn+tools",
        "multi_turn",
        Some(tools.clone()),
        false,
        json!({}),
    );
    add(
        "tool_flow+tools",
        "tool_flow",
        Some(tools.clone()),
        false,
        json!({}),
    );
    add(
        "tool_flow+tools+gen",
        "tool_flow",
        Some(tools.clone()),
        true,
        json!({}),
    );
    add("tool_flow_no_tools", "tool_flow", None, false, json!({}));
    add(
        "tool_call_flat",
        "tool_call_flat_and_string_args",
        Some(tools.clone()),
        true,
        json!({}),
    );
    add("think_history", "think_history", None, false, json!({}));
    add("think_history+gen", "think_history", None, true, json!({}));
    add(
        "reasoning_content",
        "reasoning_content_field",
        None,
        false,
        json!({}),
    );
    add(
        "tool_response_as_user",
        "tool_response_as_user",
        None,
        false,
        json!({}),
    );
    add(
        "no_thinking+gen",
        "plain",
        None,
        true,
        json!({"enable_thinking": false}),
    );
    add(
        "thinking+gen",
        "multi_turn",
        None,
        true,
        json!({"enable_thinking": true}),
    );
    add(
        "no_thinking",
        "multi_turn",
        Some(tools.clone()),
        false,
        json!({"enable_thinking": false}),
    );
    add(
        "no_thinking+tools+gen",
        "tool_flow",
        Some(tools.clone()),
        true,
        json!({"enable_thinking": false}),
    );

    // The same kind of conversation through the typed API.
    let typed = vec![
        Message::system("Be exact."),
        Message::user("What is 6*7? Use the calculator."),
        Message::assistant("").with_tool_calls(vec![ToolCall::function(
            "calculator",
            json!({"expr": "6*7", "precision": 2}),
        )]),
        Message::tool("42"),
        Message::assistant("<think>\nThe tool said 42.\n</think>\n\n6*7 = 42."),
    ];
    // Cross-check the typed shape itself before trusting the oracle with it.
    let call = &typed[2].tool_calls[0];
    assert_eq!(
        call.function,
        FunctionCall {
            name: "calculator".into(),
            arguments: json!({"expr": "6*7", "precision": 2})
        }
    );
    cases.push(ChatCase {
        name: "typed_messages+tools+gen".into(),
        messages: typed
            .iter()
            .map(|m| serde_json::to_value(m).unwrap())
            .collect(),
        tools: Some(tools),
        add_generation_prompt: true,
        kwargs: Map::new(),
        typed: Some(typed),
    });
    cases
}

/// Strings that stress pre-tokenisation, byte-level BPE and added-token matching.
fn tricky_strings() -> Vec<String> {
    [
        "Hello, world!",
        "",
        "héllo wörld — ünïcödé ✓ 漢字 日本語 한국어 Ελληνικά",
        "👋🏽 family: 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵",
        "a  b   c\t\t\n\n\n   d    \n",
        "     leading and trailing     ",
        "\r\n\r\nwindows\r\n",
        "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
        "<|im_start|assistant <|im_end|> broken <|im_end",
        "<think>\nhmm\n</think>\n\n<tool_call>\n{\"name\": \"f\"}\n</tool_call>",
        "12345678901234567890 3.14159 -0.5e-10",
        "def f(x):\n    return x**2  # comment\n",
        "e\u{301} combining, zero\u{200b}width, nbsp\u{a0}here",
        "control \u{0}\u{7} chars",
    ]
    .map(String::from)
    .to_vec()
}

/// Hand-written templates probing Jinja2 semantics (Python printing, tojson options, whitespace
/// control, string methods, filters, loop controls). Rendered with the small tokenizer's special
/// tokens through `apply_chat_template(chat_template=...)`. An `!` prefix marks an expected error.
const TEMPLATE_PROBES: &[(&str, &str)] = &[
    (
        "python_printing",
        "{{ flag }}|{{ nothing }}|{{ xs }}|{{ m }}|{{ 1.5e-7 }}|{{ 10 / 4 }}|{{ 7 // 2 }}|{{ 2 ** 10 }}|\
{{ eos_token }}|{{ pad_token }}|{{ unk_token }}|{{ additional_special_tokens }}|\
{{ bos_token is defined }}|{{ undefined_thing }}|{{ tools }}|{{ documents }}|{{ add_generation_prompt }}",
    ),
    (
        "tojson_options",
        "{{ xs | tojson }}\n{{ xs | tojson(indent=2) }}\n{{ m | tojson(indent='\t', sort_keys=true) }}\n\
{{ m | tojson(separators=(',', ':')) }}\n{{ weird | tojson(ensure_ascii=true) }}\n{{ weird | tojson(true) }}\n\
{{ weird | tojson }}\n{{ messages | tojson(indent=0) }}\n{{ {} | tojson(indent=4) }}{{ [] | tojson(indent=4) }}",
    ),
    (
        "whitespace_control",
        "{% for message in messages %}\n    {% if loop.first %}\n  first: {{ message.role }}\n    {% else %}\n  other:   {{ message.role }}\n    {% endif %}\n  {%- if not loop.last %}, {% endif %}\n{% endfor %}\n  {%+ if true %}kept-indent{% endif %}\n\n",
    ),
    (
        "string_methods_and_filters",
        "{% set ns = namespace(n=0, seen=[]) %}{% for m in messages[::-1] %}{% set ns.n = ns.n + 1 %}{% if m.role == 'assistant' %}{% break %}{% endif %}{% endfor %}\
{{ ns.n }}|{{ messages | length }}|{{ messages | selectattr('role', 'equalto', 'user') | list | length }}|\
{{ messages[0].content.strip().upper() }}|{{ '  a b  '.split() }}|{{ 'x,y'.split(',') }}|{{ 'abc'[1:] }}|\
{{ 'Hello'.startswith('He') }}|{{ 'Hello'.endswith(('lo', 'x')) }}|{{ '  pad '.lstrip() }}|{{ 'a-b'.replace('-', '+') }}|\
{{ m2.get('k') }}|{{ m2.get('zz', 'dflt') }}|{% for k, v in m2.items() %}{{ k }}={{ v }};{% endfor %}|\
{{ messages | map(attribute='role') | join(', ') }}|{{ 'x' ~ 1 ~ none }}|{{ ' t ' | trim }}|{{ [3, 1, 2] | sort }}|\
{{ 'abc' is string }}|{{ 1 is number }}|{{ none is none }}|{{ 'title me'.title() }}|{{ messages[-1]['content'] }}|\
{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{{ i }}{% endfor %}",
    ),
    ("strftime", "{{ strftime_now('%d %B %Y %a %j') }}"),
    (
        "!raise",
        "{% if messages[0].role != 'system' %}{{ raise_exception('First message must be a system message') }}{% endif %}",
    ),
];

fn template_probe_messages() -> Vec<Value> {
    serde_json::from_str(
        r#"[{"role": "user", "content": "  hello there  "},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "last one"}]"#,
    )
    .unwrap()
}

fn template_probe_kwargs() -> Map<String, Value> {
    serde_json::from_str(
        r#"{"flag": true, "nothing": null, "xs": [1, 0.5, "it's", true, null, -0.0, 1e100],
            "m": {"z": "last", "k": "v", "n": [1, {"deep": "é"}]},
            "m2": {"k": 1, "b": "two"},
            "weird": "é😀\u007f\u0001\"\\/<>&'"}"#,
    )
    .unwrap()
}

struct Fixture {
    qwen: Tokenizer,
    qwen_saved: Tokenizer,
    small: Tokenizer,
    small_reloaded: Tokenizer,
    chat: Vec<ChatCase>,
    small_chat: Vec<ChatCase>,
    texts: Vec<String>,
    small_texts: Vec<String>,
    decode_cases: Vec<(Vec<u32>, bool)>,
    small_decode_cases: Vec<(Vec<u32>, bool)>,
    /// Oracle jobs: 0 = Qwen3, 1 = our saved copy of Qwen3, 2 = the small tokenizer.
    response: Value,
    _dirs: Vec<tempfile::TempDir>,
}

fn encode_requests(texts: &[String]) -> Vec<Value> {
    texts
        .iter()
        .flat_map(|t| [false, true].map(|s| json!({"text": t, "add_special_tokens": s})))
        .collect()
}

fn decode_requests(cases: &[(Vec<u32>, bool)]) -> Vec<Value> {
    cases
        .iter()
        .map(|(ids, skip)| json!({"ids": ids, "skip_special_tokens": skip}))
        .collect()
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let qwen = Tokenizer::from_dir(qwen3_dir()).expect("load Qwen3 tokenizer");
        let saved_dir = tempfile::tempdir().unwrap();
        qwen.save(saved_dir.path()).expect("save Qwen3 copy");
        let qwen_saved = Tokenizer::from_dir(saved_dir.path()).expect("reload saved Qwen3");

        let small = CharTokenizerSpec::chatml(CharTokenizerSpec::ascii_chars())
            .build()
            .expect("build small tokenizer");
        let small_dir = tempfile::tempdir().unwrap();
        small.save(small_dir.path()).expect("save small tokenizer");
        let small_reloaded = Tokenizer::from_dir(small_dir.path()).expect("reload small tokenizer");

        let chat = chat_cases();
        let texts = tricky_strings();
        // Decode the encodings of the tricky strings, plus ids that cut a character in half
        // and ids mixing special tokens.
        let mut decode_cases = Vec::new();
        for t in &texts {
            let ids = qwen.encode(t, false).unwrap();
            decode_cases.push((ids.clone(), false));
            decode_cases.push((ids, true));
        }
        let emoji = qwen.encode("👋", false).unwrap();
        decode_cases.push((emoji[..1].to_vec(), false));
        let wrapped = qwen
            .encode("<|im_start|>assistant\nok<|im_end|><|endoftext|>", false)
            .unwrap();
        decode_cases.push((wrapped.clone(), true));
        decode_cases.push((wrapped, false));

        let small_texts: Vec<String> = [
            "12 + 30 = 42",
            "<|im_start|>user\nHi there!<|im_end|>\n",
            "unknown: é 👋 ok",
            "  spaces\t\ttabs\n\nnewlines  ",
            "<|endoftext|><|unk|>",
        ]
        .map(String::from)
        .to_vec();
        let mut small_decode_cases = Vec::new();
        for t in &small_texts {
            let ids = small.encode(t, false).unwrap();
            small_decode_cases.push((ids.clone(), false));
            small_decode_cases.push((ids, true));
        }
        let small_chat = vec![
            ChatCase {
                name: "small+gen".into(),
                messages: vec![json!({"role": "user", "content": "What is 3+4?"})],
                tools: None,
                add_generation_prompt: true,
                kwargs: Map::new(),
                typed: None,
            },
            ChatCase {
                name: "small multi-turn".into(),
                messages: serde_json::from_str(
                    r#"[{"role": "system", "content": "Answer with a number."},
                        {"role": "user", "content": "3+4?"},
                        {"role": "assistant", "content": "7"}]"#,
                )
                .unwrap(),
                tools: None,
                add_generation_prompt: false,
                kwargs: Map::new(),
                typed: None,
            },
        ];

        let request = json!({"jobs": [
            {
                "dir": qwen3_dir(),
                "chat": chat.iter().map(ChatCase::request).collect::<Vec<_>>(),
                "encode": encode_requests(&texts),
                "decode": decode_requests(&decode_cases),
            },
            {
                "dir": saved_dir.path(),
                "chat": chat.iter().take(8).map(ChatCase::request).collect::<Vec<_>>(),
                "encode": encode_requests(&texts[..4]),
            },
            {
                "dir": small_dir.path(),
                "chat": small_chat.iter().map(ChatCase::request).collect::<Vec<_>>(),
                "encode": encode_requests(&small_texts),
                "decode": decode_requests(&small_decode_cases),
                "templates": TEMPLATE_PROBES.iter().map(|(_, src)| json!({
                    "template": src,
                    "messages": template_probe_messages(),
                    "tools": null,
                    "add_generation_prompt": true,
                    "kwargs": template_probe_kwargs(),
                })).collect::<Vec<_>>(),
            },
        ]});
        let response = run_oracle(&request);
        Fixture {
            qwen,
            qwen_saved,
            small,
            small_reloaded,
            chat,
            small_chat,
            texts,
            small_texts,
            decode_cases,
            small_decode_cases,
            response,
            _dirs: vec![saved_dir, small_dir],
        }
    })
}

fn job(i: usize) -> &'static Value {
    &fixture().response["jobs"][i]
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).expect("oracle ids")
}

/// Compares every chat case; reports all mismatches with the first differing position.
fn check_chat(tok: &Tokenizer, cases: &[ChatCase], expected: &Value) {
    let expected = expected.as_array().expect("oracle chat results");
    assert_eq!(expected.len(), cases.len());
    let mut failures = Vec::new();
    for (case, want) in cases.iter().zip(expected) {
        let (text, got_ids) = case.render(tok);
        let want_text = want["text"].as_str().unwrap();
        if text != want_text {
            let at = text
                .char_indices()
                .zip(want_text.chars())
                .find(|((_, a), b)| a != b)
                .map_or(text.len().min(want_text.len()), |((i, _), _)| i);
            failures.push(format!(
                "{}: text differs at byte {at}\n ours:   {:?}\n theirs: {:?}",
                case.name,
                &text[at.saturating_sub(40).min(text.len())..],
                want_text.get(at.saturating_sub(40)..).unwrap_or(want_text),
            ));
        } else if got_ids != ids(&want["ids"]) {
            failures.push(format!("{}: ids differ", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn qwen3_chat_template_text_and_ids_match_transformers() {
    let f = fixture();
    check_chat(&f.qwen, &f.chat, &job(0)["chat"]);
    // Guard against a vacuous comparison: the tool case really exercises tojson and tool calls.
    let tool_case = f.chat.iter().find(|c| c.name == "tool_flow+tools").unwrap();
    let (text, _) = tool_case.render(&f.qwen);
    for needle in [
        "<tools>\n{\"type\": \"function\"",
        "\"minimum\": -90.0, \"maximum\": 90}",
        "\"default\": 1e-07}",
        "\"default\": 12345678901234567890}",
        "城市名称",
        "<tool_call>\n{\"name\": \"calculator\", \"arguments\": {\"expr\": \"3*7\", \"precision\": 0, \"tolerance\": 1e-09, \"strict\": true, \"nothing\": null}}\n</tool_call>",
        "</tool_response>\n<tool_response>\n21\n</tool_response><|im_end|>",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[test]
fn qwen3_encode_matches_transformers() {
    let f = fixture();
    let want = job(0)["encode"].as_array().unwrap();
    let mut i = 0;
    for t in &f.texts {
        for special in [false, true] {
            assert_eq!(
                f.qwen.encode(t, special).unwrap(),
                ids(&want[i]),
                "encode({t:?}, {special})"
            );
            i += 1;
        }
    }
}

#[test]
fn qwen3_decode_and_stream_match_transformers() {
    let f = fixture();
    let want = job(0)["decode"].as_array().unwrap();
    for ((case_ids, skip), want) in f.decode_cases.iter().zip(want) {
        let want = want.as_str().unwrap();
        assert_eq!(
            f.qwen.decode(case_ids, *skip).unwrap(),
            want,
            "decode({case_ids:?}, {skip})"
        );
    }
    // Streaming reassembles the full decode of complete sequences (which is the NFC-normalised
    // input: Qwen's normalizer composes "e\u{301}" into "é").
    for t in &f.texts {
        let ids = f.qwen.encode(t, false).unwrap();
        let full = f.qwen.decode(&ids, false).unwrap();
        let mut stream = f.qwen.stream_decoder(false);
        let mut text = String::new();
        for id in ids {
            if let Some(piece) = stream.step(id).unwrap() {
                text.push_str(&piece);
            }
        }
        assert_eq!(text, full, "stream decode of {t:?}");
    }
}

#[test]
fn qwen3_special_ids_and_vocab_size_match_transformers() {
    let f = fixture();
    let info = &job(0)["info"];
    assert_eq!(f.qwen.vocab_size() as u64, info["len"].as_u64().unwrap());
    assert_eq!(
        f.qwen.eos_token_id().map(u64::from),
        info["eos_token_id"].as_u64()
    );
    assert_eq!(
        f.qwen.pad_token_id().map(u64::from),
        info["pad_token_id"].as_u64()
    );
    assert_eq!(
        f.qwen.bos_token_id().map(u64::from),
        info["bos_token_id"].as_u64()
    );
    assert_eq!(f.qwen.eos_token_id(), Some(151645));
}

#[test]
fn saved_qwen3_copy_loads_identically_in_transformers_and_here() {
    let f = fixture();
    let saved = job(1);
    assert_eq!(saved["info"]["class"], job(0)["info"]["class"]);
    assert_eq!(saved["info"]["len"], job(0)["info"]["len"]);
    check_chat(&f.qwen_saved, &f.chat[..8], &saved["chat"]);
    check_chat(&f.qwen, &f.chat[..8], &saved["chat"]);
    let want = saved["encode"].as_array().unwrap();
    for (i, t) in f.texts[..4].iter().enumerate() {
        assert_eq!(f.qwen_saved.encode(t, false).unwrap(), ids(&want[2 * i]));
    }
}

#[test]
fn small_tokenizer_round_trips_through_transformers() {
    let f = fixture();
    let small = job(2);
    let info = &small["info"];
    assert_eq!(info["class"], "PreTrainedTokenizerFast");
    assert_eq!(f.small.vocab_size() as u64, info["len"].as_u64().unwrap());
    assert_eq!(
        f.small.eos_token_id().map(u64::from),
        info["eos_token_id"].as_u64()
    );
    assert_eq!(
        f.small.pad_token_id().map(u64::from),
        info["pad_token_id"].as_u64()
    );
    let want = small["encode"].as_array().unwrap();
    let mut i = 0;
    for t in &f.small_texts {
        for special in [false, true] {
            let want_ids = ids(&want[i]);
            assert_eq!(
                f.small.encode(t, special).unwrap(),
                want_ids,
                "encode({t:?})"
            );
            assert_eq!(f.small_reloaded.encode(t, special).unwrap(), want_ids);
            i += 1;
        }
    }
    let want = small["decode"].as_array().unwrap();
    for ((case_ids, skip), want) in f.small_decode_cases.iter().zip(want) {
        assert_eq!(
            f.small.decode(case_ids, *skip).unwrap(),
            want.as_str().unwrap()
        );
    }
    check_chat(&f.small, &f.small_chat, &small["chat"]);
    check_chat(&f.small_reloaded, &f.small_chat, &small["chat"]);
}

#[test]
fn template_probes_match_jinja2_in_transformers() {
    let f = fixture();
    let want = job(2)["templates"].as_array().unwrap();
    assert_eq!(want.len(), TEMPLATE_PROBES.len());
    let messages = template_probe_messages();
    let kwargs = template_probe_kwargs();
    let mut failures = Vec::new();
    for ((name, src), want) in TEMPLATE_PROBES.iter().zip(want) {
        let ours = ChatTemplate::new(*name, *src)
            .map(|t| t.with_special_tokens(f.small.config()))
            .and_then(|t| t.render(&messages, None, true, &kwargs));
        match (
            name.starts_with('!'),
            ours,
            want.get("text").and_then(Value::as_str),
        ) {
            (false, Ok(text), Some(theirs)) if text == theirs => {}
            (true, Err(e), None) => {
                // Both fail; the template's own message must survive into our error.
                let theirs = want["error"].as_str().unwrap();
                assert!(
                    theirs.contains("First message must be a system message"),
                    "{theirs}"
                );
                assert!(
                    e.to_string()
                        .contains("First message must be a system message"),
                    "{e}"
                );
            }
            (_, ours, _) => failures.push(format!("{name}:\n ours:   {ours:?}\n theirs: {want}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
