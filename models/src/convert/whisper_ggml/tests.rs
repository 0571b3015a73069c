//! The converter on a tiny whisper-shaped model, read back as whisper.cpp would.

use super::*;
use crate::convert::ct2::tests::model_bin;

/// A whisper-shaped CTranslate2 model: width 4, 2 heads, 1 layer each side, 3 mels,
/// vocabulary of 5 (3 ordinary tokens, then specials); element `i` of every tensor is
/// `i` (or 0 for key biases).
pub(crate) fn tiny_model() -> Vec<u8> {
    let d = 4;
    let f16 = |n: usize, zero: std::ops::Range<usize>| -> Vec<u8> {
        (0..n)
            .map(|i| if zero.contains(&i) { 0.0 } else { i as f32 })
            .flat_map(|x| half::f16::from_f32(x).to_bits().to_le_bytes())
            .collect()
    };
    let mut vars: Vec<(String, Vec<usize>, u8, Vec<u8>)> = vec![
        (
            "encoder/num_heads".into(),
            vec![],
            2,
            2i16.to_le_bytes().to_vec(),
        ),
        (
            "decoder/num_heads".into(),
            vec![],
            2,
            2i16.to_le_bytes().to_vec(),
        ),
        (
            "encoder/position_encodings/encodings".into(),
            vec![6, d],
            4,
            f16(6 * d, 0..0),
        ),
        (
            "decoder/position_encodings/encodings".into(),
            vec![3, d],
            4,
            f16(3 * d, 0..0),
        ),
        (
            "decoder/embeddings/weight".into(),
            vec![5, d],
            4,
            f16(5 * d, 0..0),
        ),
        (
            "encoder/conv1/weight".into(),
            vec![d, 3, 3],
            4,
            f16(d * 9, 0..0),
        ),
        (
            "encoder/conv2/weight".into(),
            vec![d, d, 3],
            4,
            f16(d * d * 3, 0..0),
        ),
    ];
    let mut add = |name: String, shape: Vec<usize>, zero: std::ops::Range<usize>| {
        let n = shape.iter().product();
        vars.push((name, shape, 4, f16(n, zero)));
    };
    for p in ["encoder/conv1", "encoder/conv2"] {
        add(format!("{p}/bias"), vec![d], 0..0);
    }
    let norm = |add: &mut dyn FnMut(String, Vec<usize>, std::ops::Range<usize>), p: &str| {
        add(format!("{p}/gamma"), vec![d], 0..0);
        add(format!("{p}/beta"), vec![d], 0..0);
    };
    let lin = |add: &mut dyn FnMut(String, Vec<usize>, std::ops::Range<usize>),
               p: &str,
               rows: usize,
               cols: usize,
               zero: std::ops::Range<usize>| {
        add(format!("{p}/weight"), vec![rows, cols], 0..0);
        add(format!("{p}/bias"), vec![rows], zero);
    };
    norm(&mut add, "encoder/layer_norm");
    norm(&mut add, "decoder/layer_norm");
    for side in ["encoder", "decoder"] {
        let l = format!("{side}/layer_0");
        norm(&mut add, &format!("{l}/self_attention/layer_norm"));
        lin(
            &mut add,
            &format!("{l}/self_attention/linear_0"),
            3 * d,
            d,
            d..2 * d,
        );
        lin(
            &mut add,
            &format!("{l}/self_attention/linear_1"),
            d,
            d,
            0..0,
        );
        norm(&mut add, &format!("{l}/ffn/layer_norm"));
        lin(&mut add, &format!("{l}/ffn/linear_0"), 4 * d, d, 0..0);
        lin(&mut add, &format!("{l}/ffn/linear_1"), d, 4 * d, 0..0);
    }
    let a = "decoder/layer_0/attention";
    norm(&mut add, &format!("{a}/layer_norm"));
    lin(&mut add, &format!("{a}/linear_0"), d, d, 0..0);
    lin(&mut add, &format!("{a}/linear_1"), 2 * d, d, 0..d);
    lin(&mut add, &format!("{a}/linear_2"), d, d, 0..0);
    let refs: Vec<(&str, &[usize], u8, Vec<u8>)> = vars
        .iter()
        .map(|(n, s, t, d)| (n.as_str(), s.as_slice(), *t, d.clone()))
        .collect();
    model_bin("WhisperSpec", &refs)
}

/// The vocabulary of [`tiny_model`].
pub(crate) const TINY_VOCAB: &str = "a\nĠb\nĊ\n<|endoftext|>\n<|startoftranscript|>\n";

/// A parsed ggml tensor: dims as written (innermost first), type, f32 values.
type Parsed = std::collections::HashMap<String, (Vec<i32>, i32, Vec<f32>)>;

/// Hyperparameters, (n_mel, n_fft, filters), tokens, tensors.
type Ggml = (Vec<i32>, (i32, i32, Vec<f32>), Vec<Vec<u8>>, Parsed);

fn parse_ggml(b: &[u8]) -> Ggml {
    let mut pos = 0;
    let i32_at = |pos: &mut usize| {
        let v = i32::from_le_bytes(b[*pos..*pos + 4].try_into().unwrap());
        *pos += 4;
        v
    };
    assert_eq!(i32_at(&mut pos) as u32, GGML_MAGIC);
    let hparams: Vec<i32> = (0..11).map(|_| i32_at(&mut pos)).collect();
    let (n_mel, n_fft) = (i32_at(&mut pos), i32_at(&mut pos));
    let mut filters = Vec::new();
    for _ in 0..n_mel * n_fft {
        filters.push(f32::from_bits(i32_at(&mut pos) as u32));
    }
    let n_tokens = i32_at(&mut pos);
    let mut tokens = Vec::new();
    for _ in 0..n_tokens {
        let len = i32_at(&mut pos) as usize;
        tokens.push(b[pos..pos + len].to_vec());
        pos += len;
    }
    let mut tensors = Parsed::new();
    while pos < b.len() {
        let (rank, name_len, ftype) = (i32_at(&mut pos), i32_at(&mut pos), i32_at(&mut pos));
        let dims: Vec<i32> = (0..rank).map(|_| i32_at(&mut pos)).collect();
        let name = String::from_utf8(b[pos..pos + name_len as usize].to_vec()).unwrap();
        pos += name_len as usize;
        let n: i32 = dims.iter().product();
        let values: Vec<f32> = (0..n as usize)
            .map(|i| {
                if ftype == 0 {
                    f32::from_le_bytes(b[pos + 4 * i..pos + 4 * i + 4].try_into().unwrap())
                } else {
                    let bits = u16::from_le_bytes([b[pos + 2 * i], b[pos + 2 * i + 1]]);
                    half::f16::from_bits(bits).to_f32()
                }
            })
            .collect();
        pos += n as usize * if ftype == 0 { 4 } else { 2 };
        assert!(tensors.insert(name, (dims, ftype, values)).is_none());
    }
    (hparams, (n_mel, n_fft, filters), tokens, tensors)
}

#[test]
fn writes_whisper_cpp_layout_names_and_split_projections() {
    let vocab = TINY_VOCAB;
    let mut out = Vec::new();
    let summary = convert(&tiny_model(), vocab, &mut out).unwrap();
    assert_eq!(summary.tensors, 7 + 15 + 4 + 24);
    let (hp, (n_mel, n_fft, filters), tokens, t) = parse_ggml(&out);
    assert_eq!(hp, [5, 6, 4, 2, 1, 3, 4, 2, 1, 3, 1]);
    assert_eq!((n_mel, n_fft, filters.len()), (3, 201, 3 * 201));
    assert_eq!(tokens, [b"a".to_vec(), b" b".to_vec(), b"\n".to_vec()]);
    assert_eq!(t.len(), summary.tensors);

    // Matrices in f16 with dims reversed; vectors, positions and conv biases in f32.
    assert_eq!(t["encoder.conv1.weight"].0, [3, 3, 4]);
    assert_eq!(t["encoder.conv1.weight"].1, 1);
    assert_eq!(
        (&t["encoder.conv1.bias"].0, t["encoder.conv1.bias"].1),
        (&vec![1, 4], 0)
    );
    assert_eq!(
        (
            &t["encoder.positional_embedding"].0,
            t["encoder.positional_embedding"].1
        ),
        (&vec![4, 6], 0)
    );
    assert_eq!(
        (
            &t["decoder.token_embedding.weight"].0,
            t["decoder.token_embedding.weight"].1
        ),
        (&vec![4, 5], 1)
    );
    assert_eq!(t["encoder.ln_post.weight"].1, 0);
    assert_eq!(t["decoder.blocks.0.mlp.0.weight"].0, [4, 16]);
    assert_eq!(t["decoder.blocks.0.mlp.2.weight"].0, [16, 4]);

    // The fused q, k, v rows land in query, key, value; the key has no bias.
    let q = &t["encoder.blocks.0.attn.query.weight"];
    let k = &t["encoder.blocks.0.attn.key.weight"];
    let v = &t["encoder.blocks.0.attn.value.weight"];
    assert_eq!(q.0, [4, 4]);
    assert_eq!(q.2[0], 0.0);
    assert_eq!(k.2[0], 16.0);
    assert_eq!(v.2[15], 47.0);
    assert_eq!(
        t["encoder.blocks.0.attn.value.bias"].2,
        [8.0, 9.0, 10.0, 11.0]
    );
    assert!(!t.contains_key("encoder.blocks.0.attn.key.bias"));
    assert_eq!(t["decoder.blocks.0.cross_attn.key.weight"].2[0], 0.0);
    assert_eq!(t["decoder.blocks.0.cross_attn.value.weight"].2[0], 16.0);
    assert_eq!(
        t["decoder.blocks.0.cross_attn.value.bias"].2,
        [4.0, 5.0, 6.0, 7.0]
    );
    for name in [
        "decoder.blocks.0.cross_attn_ln.bias",
        "decoder.ln.weight",
        "decoder.blocks.0.attn.out.bias",
    ] {
        assert!(t.contains_key(name), "{name}");
    }
}

#[test]
fn refuses_what_whisper_cpp_cannot_load() {
    let mut out = Vec::new();
    let err = convert(&tiny_model(), "a\nb\n<|endoftext|>\n", &mut out).unwrap_err();
    assert!(
        err.to_string()
            .contains("vocabulary.txt has 3 tokens, the model 5"),
        "{err}"
    );
    let err = convert(&tiny_model(), "a\nb\nc\nd\ne\n", &mut out).unwrap_err();
    assert!(err.to_string().contains("<|endoftext|>"), "{err}");
    let other = model_bin("TransformerSpec", &[("x", &[1], 0, vec![0; 4])]);
    let err = convert(&other, "", &mut out).unwrap_err();
    assert!(err.to_string().contains("not whisper"), "{err}");
}

#[test]
fn the_byte_alphabet_round_trips_every_byte() {
    let decode = byte_decoder();
    assert_eq!(decode('Ġ'), Some(b' '));
    assert_eq!(decode('Ċ'), Some(b'\n'));
    assert_eq!(decode('a'), Some(b'a'));
    assert_eq!(decode('\u{0100}'), Some(0));
    assert_eq!(decode('€'), None);
    let mut seen: Vec<u8> = (0..=0x143u32)
        .filter_map(char::from_u32)
        .filter_map(&decode)
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 256);
}
