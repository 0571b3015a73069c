//! Text ↔ tokens: the model's tokenizer, its own chat template (rendered with minijinja),
//! its end-of-sequence tokens, and incremental decoding that never splits a character.

use std::collections::BTreeSet;
use std::path::Path;

use aigw_models::openai::{ChatMessage, MessageContent};
use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use minijinja::{Environment, context};
use tokenizers::Tokenizer;

use super::LlmError;
use super::config::HfConfig;

/// Tokens that end an assistant turn in common chat formats, when the vocabulary has them.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<|endoftext|>",
    "</s>",
    "<|end_of_text|>",
];

/// Tokenizer, chat template and stop tokens of one model.
pub struct TextCodec {
    tokenizer: Tokenizer,
    template: Option<String>,
    bos: Option<(u32, String)>,
    eos_text: String,
    add_bos: bool,
    eos_ids: BTreeSet<u32>,
}

impl TextCodec {
    /// From the tokenizer and metadata embedded in a GGUF file.
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self, LlmError> {
        let mut tokenizer = Tokenizer::from_gguf(ct)
            .map_err(|e| LlmError::Format(format!("GGUF tokenizer: {e}")))?;
        let pre = ct
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok());
        if let Some(pre_tokenizer) = gpt2_style_pre_tokenizer(pre.map(String::as_str)) {
            tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
        }
        let get_u32 = |k: &str| ct.metadata.get(k).and_then(|v| v.to_u32().ok());
        let template = ct
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        let add_bos = ct
            .metadata
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        let bos_id = get_u32("tokenizer.ggml.bos_token_id");
        let eos_id = get_u32("tokenizer.ggml.eos_token_id");
        Self::assemble(
            tokenizer,
            template,
            bos_id,
            eos_id.into_iter().collect(),
            add_bos,
        )
    }

    /// From `tokenizer.json`, optional `tokenizer_config.json` text and `config.json`.
    pub(crate) fn from_hf_files(
        tokenizer_json: &Path,
        tokenizer_config: Option<&str>,
        config: &HfConfig,
    ) -> Result<Self, LlmError> {
        let tokenizer = Tokenizer::from_file(tokenizer_json)
            .map_err(|e| LlmError::Format(format!("{}: {e}", tokenizer_json.display())))?;
        let tc: serde_json::Value = match tokenizer_config {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| LlmError::Format(format!("tokenizer_config.json: {e}")))?,
            None => serde_json::Value::Null,
        };
        let template = match &tc["chat_template"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .map(str::to_string),
            _ => None,
        };
        let token_id = |v: &serde_json::Value| -> Option<u32> {
            let text = v.as_str().or_else(|| v["content"].as_str())?;
            tokenizer.token_to_id(text)
        };
        let bos_id = config.bos_token_id.or_else(|| token_id(&tc["bos_token"]));
        let mut eos_ids: Vec<u32> = match &config.eos_token_id {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().map(|v| v as u32).into_iter().collect()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            _ => Vec::new(),
        };
        eos_ids.extend(token_id(&tc["eos_token"]));
        let add_bos = tc["add_bos_token"].as_bool().unwrap_or(false);
        Self::assemble(tokenizer, template, bos_id, eos_ids, add_bos)
    }

    fn assemble(
        tokenizer: Tokenizer,
        template: Option<String>,
        bos_id: Option<u32>,
        eos: Vec<u32>,
        add_bos: bool,
    ) -> Result<Self, LlmError> {
        let mut eos_ids: BTreeSet<u32> = eos.into_iter().collect();
        eos_ids.extend(END_OF_TURN.iter().filter_map(|t| tokenizer.token_to_id(t)));
        if eos_ids.is_empty() {
            return Err(LlmError::Format(
                "the model defines no end-of-sequence token".into(),
            ));
        }
        let bos = bos_id.and_then(|id| tokenizer.id_to_token(id).map(|t| (id, t)));
        let first_eos = *eos_ids.iter().next().unwrap_or(&0);
        let eos_text = tokenizer.id_to_token(first_eos).unwrap_or_default();
        Ok(Self {
            tokenizer,
            template,
            bos,
            eos_text,
            add_bos,
            eos_ids,
        })
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// Renders a conversation with the model's own chat template, ready for the assistant's turn.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
    ) -> Result<String, LlmError> {
        let template = self
            .template
            .as_deref()
            .ok_or_else(|| LlmError::Template("the model has no chat template".into()))?;
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| LlmError::Template(e.to_string()))?;
        let messages: Vec<serde_json::Value> = messages.iter().map(template_message).collect();
        let bos_token = self
            .bos
            .as_ref()
            .map(|(_, t)| t.clone())
            .unwrap_or_default();
        env.get_template("chat")
            .and_then(|t| {
                t.render(context! {
                    messages => messages,
                    tools => tools,
                    add_generation_prompt => true,
                    bos_token => bos_token,
                    eos_token => self.eos_text.clone(),
                })
            })
            .map_err(|e| LlmError::Template(e.to_string()))
    }

    /// Token ids of a prompt: special tokens written in the text are recognised, and the BOS
    /// token is prepended when the model wants it and the text lacks it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| LlmError::Tokenizer(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if let Some((bos_id, _)) = &self.bos
            && self.add_bos
            && ids.first() != Some(bos_id)
        {
            ids.insert(0, *bos_id);
        }
        Ok(ids)
    }

    /// Decodes ids to text, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LlmError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| LlmError::Tokenizer(e.to_string()))
    }
}

/// The pre-tokenizer the original `tokenizer.json` of GPT-2-style GGUF vocabularies used.
/// candle's generic fallback adds a prefix space (and, for SmolLM, misses the per-digit
/// split), which shifts every prompt away from the tokens the model was trained on.
fn gpt2_style_pre_tokenizer(pre: Option<&str>) -> Option<tokenizers::PreTokenizerWrapper> {
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        Some("smollm") => {
            Some(Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into())
        }
        None | Some("default" | "gpt2" | "gpt-2") => Some(byte_level.into()),
        Some(_) => None,
    }
}

/// The message as chat templates expect it: role, content as text, and tool fields.
fn template_message(m: &ChatMessage) -> serde_json::Value {
    let content = match &m.content {
        Some(MessageContent::Text(t)) => t.clone(),
        Some(c @ MessageContent::Parts(_)) => c.joined_text(),
        None => String::new(),
    };
    let mut v = serde_json::json!({"role": m.role.as_str(), "content": content});
    if let Some(name) = &m.name {
        v["name"] = name.clone().into();
    }
    if let Some(calls) = &m.tool_calls {
        v["tool_calls"] = serde_json::to_value(calls).unwrap_or_default();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = id.clone().into();
    }
    v
}

/// Turns generated ids into text deltas as they arrive, holding back bytes that do not yet
/// form whole characters.
#[derive(Debug, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    /// Adds one id; returns the text it completes (possibly empty).
    pub fn push(&mut self, codec: &TextCodec, id: u32) -> Result<String, LlmError> {
        self.ids.push(id);
        let prefix = codec.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = codec.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }
}

/// Holds back text that might be the start of a stop sequence; reports a match.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// What the matcher lets through.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text safe to emit; generation goes on.
    Continue(String),
    /// Text before the stop sequence; generation ends here.
    Stopped(String),
}

impl StopMatcher {
    /// A matcher for these stop sequences (empty ones are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Feeds new text.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(text.to_string());
        }
        self.pending.push_str(text);
        let first_hit = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first_hit {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return StopOutcome::Stopped(out);
        }
        // Keep the longest suffix that is a prefix of some stop sequence.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.pending, s))
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopOutcome::Continue(out)
    }

    /// Text still held back, released when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && stop.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_sequences_split_across_pushes() {
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("hello E"), StopOutcome::Continue("hello ".into()));
        assert_eq!(m.push("N"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("Dgame"), StopOutcome::Stopped("".into()));
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("an E"), StopOutcome::Continue("an ".into()));
        assert_eq!(m.push("xit"), StopOutcome::Continue("Exit".into()));
        assert_eq!(m.flush(), "");
        let mut m = StopMatcher::new(&["\n\n".to_string(), "bye".to_string()]);
        assert_eq!(m.push("one\n"), StopOutcome::Continue("one".into()));
        assert_eq!(m.push("\ntwo"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn multibyte_text_is_never_cut() {
        let mut m = StopMatcher::new(&["é!".to_string()]);
        assert_eq!(m.push("café"), StopOutcome::Continue("caf".into()));
        assert_eq!(m.flush(), "é");
    }
}
