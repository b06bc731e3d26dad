from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from nachbar.ai import text as text_module
from nachbar.ai.errors import InputTooLongError, InvalidInputError, TextTooLargeError
from nachbar.ai.text import TextTokenizer, Truncation
from tests.ai.tiny_models import (
    BERT_STYLE,
    CLIP_STYLE,
    ROBERTA_STYLE,
    WORDS,
    TokenizerStyle,
    make_tokenizer,
    reference_tokenizer,
)

LIMIT = 12


def tokenizer(
    tmp_path: Path, style: TokenizerStyle = BERT_STYLE, limit: int = LIMIT
) -> TextTokenizer:
    path = tmp_path / "tokenizer.json"
    make_tokenizer(style).save(str(path))
    return TextTokenizer(path, model_name="tiny", max_tokens=limit)


def words(n: int) -> str:
    return " ".join(["cat"] * n)


def test_hub_length_settings_in_tokenizer_json_are_ignored(tmp_path: Path) -> None:
    # The file pads and truncates to 8; the model's limit (12) is what counts.
    tok = tokenizer(tmp_path)
    (encoded,) = tok.encode([words(10)], Truncation.ERROR)
    assert encoded.length == 12
    (short,) = tok.encode(["cat"], Truncation.ERROR)
    assert short.length == 3  # [CLS] cat [SEP], no padding


def test_ids_match_the_tokenizer(tmp_path: Path) -> None:
    tok = tokenizer(tmp_path)
    (encoded,) = tok.encode(["A photo of cats"], Truncation.ERROR)
    expected = reference_tokenizer(BERT_STYLE).encode("A photo of cats")
    assert encoded.ids.tolist() == expected.ids
    assert encoded.ids.dtype == np.int64
    assert encoded.type_ids.tolist() == [0] * len(expected.ids)


def test_error_policy_reports_count_and_limit_and_the_fix(tmp_path: Path) -> None:
    tok = tokenizer(tmp_path)
    with pytest.raises(InputTooLongError) as caught:
        tok.encode(["cat", words(20)], Truncation.ERROR)
    error = caught.value
    assert (error.token_count, error.limit) == (22, LIMIT)
    message = str(error)
    assert "Input 1" in message and "22 tokens" in message and "12-token" in message
    assert "truncation=TRUNCATE" in message and "shorter" in message


def test_truncate_policy_cuts_to_the_limit_and_keeps_special_tokens(tmp_path: Path) -> None:
    tok = tokenizer(tmp_path)
    short, cut = tok.encode(["cat", words(20)], Truncation.TRUNCATE)
    assert short.length == 3
    assert cut.length == LIMIT
    ids = reference_tokenizer(BERT_STYLE)
    assert cut.ids[0] == ids.token_to_id("[CLS]") and cut.ids[-1] == ids.token_to_id("[SEP]")


def test_text_at_exactly_the_limit_passes_under_error(tmp_path: Path) -> None:
    (encoded,) = tokenizer(tmp_path).encode([words(LIMIT - 2)], Truncation.ERROR)
    assert encoded.length == LIMIT


@pytest.mark.parametrize("bad", ["", "   \n\t"])
def test_empty_text_is_invalid(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidInputError, match="Input 1 is empty"):
        tokenizer(tmp_path).encode(["cat", bad], Truncation.TRUNCATE)


def test_pairs_carry_segment_ids(tmp_path: Path) -> None:
    (pair,) = tokenizer(tmp_path).encode_pairs("cat", ["the dog"], Truncation.ERROR)
    # [CLS] cat [SEP] the dog [SEP]
    assert pair.type_ids.tolist() == [0, 0, 0, 1, 1, 1]


def test_roberta_pairs_have_no_segment_ids(tmp_path: Path) -> None:
    tok = tokenizer(tmp_path, ROBERTA_STYLE)
    (pair,) = tok.encode_pairs("cat", ["the dog"], Truncation.ERROR)
    ref = reference_tokenizer(ROBERTA_STYLE).encode("cat", "the dog")
    assert pair.ids.tolist() == ref.ids  # <s> cat </s> </s> the dog </s>
    assert set(pair.type_ids.tolist()) == {0}


def test_pair_truncation_cuts_the_document_first(tmp_path: Path) -> None:
    tok = tokenizer(tmp_path)
    query = "red car"
    (pair,) = tok.encode_pairs(query, [words(30)], Truncation.TRUNCATE)
    assert pair.length == LIMIT
    ref = reference_tokenizer(BERT_STYLE)
    query_ids = ref.encode(query).ids  # [CLS] red car [SEP]
    assert pair.ids[: len(query_ids)].tolist() == query_ids
    assert pair.ids[-1] == ref.token_to_id("[SEP]")


def test_pair_over_the_limit_names_the_document_under_error(tmp_path: Path) -> None:
    tok = tokenizer(tmp_path)
    with pytest.raises(InputTooLongError, match="document 1") as caught:
        tok.encode_pairs("red car", ["cat", words(30)], Truncation.ERROR)
    assert caught.value.token_count == 4 + 30 + 1


def test_query_over_the_limit_is_blamed_on_the_query(tmp_path: Path) -> None:
    with pytest.raises(InputTooLongError, match="^The query is 22 tokens"):
        tokenizer(tmp_path).encode_pairs(words(20), ["cat"], Truncation.ERROR)


def test_empty_query_or_document_is_invalid(tmp_path: Path) -> None:
    tok = tokenizer(tmp_path)
    with pytest.raises(InvalidInputError, match="query is empty"):
        tok.encode_pairs(" ", ["cat"], Truncation.ERROR)
    with pytest.raises(InvalidInputError, match="Document 0 is empty"):
        tok.encode_pairs("cat", [""], Truncation.ERROR)


def test_padding_masks_the_tail_with_the_pad_id(tmp_path: Path) -> None:
    tok = tokenizer(tmp_path, ROBERTA_STYLE)
    items = tok.encode(["cat", "the big dog"], Truncation.ERROR)
    batch = tok.pad(items)
    pad = ROBERTA_STYLE.specials.index("<pad>")
    assert batch.input_ids.shape == batch.attention_mask.shape == (2, 5)
    assert batch.input_ids[0].tolist()[3:] == [pad, pad]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_pad_id_falls_back_to_config_json(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    make_tokenizer(CLIP_STYLE, hub_settings=False).save(str(path))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"text_config": {"pad_token_id": 7}}))
    with_config = TextTokenizer(path, model_name="t", max_tokens=77, config_json=config)
    assert with_config.pad_id == 7
    # Without a config the pad token is found by name (CLIP pads with <|endoftext|>).
    without = TextTokenizer(path, model_name="t", max_tokens=77)
    assert without.pad_id == reference_tokenizer(CLIP_STYLE).token_to_id("<|endoftext|>")


def test_unreadable_tokenizer_file_is_reported(tmp_path: Path) -> None:
    from nachbar.ai.errors import ModelUnavailableError

    path = tmp_path / "tokenizer.json"
    path.write_text("{not json")
    with pytest.raises(ModelUnavailableError, match="tokenizer of model 'tiny'"):
        TextTokenizer(path, model_name="tiny", max_tokens=8)


# --- bounded cost: the byte cap and tokenizing long texts from their beginning ---------------


def truncating_reference(style: TokenizerStyle = BERT_STYLE, limit: int = LIMIT) -> Tokenizer:
    reference = reference_tokenizer(style)
    reference.enable_truncation(max_length=limit, strategy="longest_first")
    return reference


def test_text_over_the_byte_cap_is_refused_before_tokenizing(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    make_tokenizer(BERT_STYLE).save(str(path))
    tok = TextTokenizer(path, model_name="tiny", max_tokens=LIMIT, max_text_bytes=1000)
    with pytest.raises(TextTooLargeError) as caught:
        tok.encode(["cat", "ü" * 600], Truncation.ERROR)  # 600 characters, 1200 bytes
    message = str(caught.value)
    assert "Input 1 is 1200 bytes" in message and "1000 bytes" in message
    assert "--max-text-bytes" in message and "truncation=TRUNCATE" in message
    assert isinstance(caught.value, InputTooLongError)  # the same status: OUT_OF_RANGE
    (fits,) = tok.encode(["ü" * 500], Truncation.TRUNCATE)  # 1000 bytes: at the cap
    assert fits.length == 3
    with pytest.raises(TextTooLargeError, match="The query"):
        tok.encode_pairs(words(300), ["cat"], Truncation.ERROR)
    with pytest.raises(TextTooLargeError, match="Document 0"):
        tok.encode_pairs("cat", [words(300)], Truncation.ERROR)


def test_truncation_reads_a_text_only_up_to_the_byte_cap(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    make_tokenizer(BERT_STYLE).save(str(path))
    tok = TextTokenizer(path, model_name="tiny", max_tokens=LIMIT, max_text_bytes=1000)
    text = words(50) + " ü" * 100_000  # the tail would be [UNK]s: it is never read
    (cut,) = tok.encode([text], Truncation.TRUNCATE)
    assert cut.ids.tolist() == truncating_reference().encode(text).ids
    ((pair,),) = [tok.encode_pairs("red car", [text], Truncation.TRUNCATE)]
    assert pair.ids.tolist() == truncating_reference().encode("red car", text).ids


def spaced_text(rng: np.random.Generator, word_count: int) -> str:
    """Words separated by runs of whitespace from one to a few thousand characters long."""
    parts = []
    for word in rng.choice(np.array(WORDS), size=word_count):
        gap = (
            " " * int(rng.integers(1, 4))
            if rng.random() < 0.8
            else "\n" * int(rng.integers(1, 3000))
        )
        parts.append(str(word) + gap)
    return "".join(parts)


@pytest.mark.parametrize("window", [16, 4096])
def test_long_texts_tokenized_from_their_beginning_equal_the_whole_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    # A small first window makes every text take the bounded path and the window double.
    monkeypatch.setattr(text_module, "_MIN_WINDOW_CHARS", window)
    tok = tokenizer(tmp_path)
    whole = reference_tokenizer(BERT_STYLE)
    rng = np.random.default_rng(11)
    for _ in range(60):
        text = spaced_text(rng, int(rng.integers(1, 40)))
        full_length = len(whole.encode(text).ids)
        (cut,) = tok.encode([text], Truncation.TRUNCATE)
        assert cut.ids.tolist() == truncating_reference().encode(text).ids
        if full_length <= LIMIT:
            (exact,) = tok.encode([text], Truncation.ERROR)
            assert exact.ids.tolist() == whole.encode(text).ids
        else:
            with pytest.raises(InputTooLongError) as caught:
                tok.encode([text], Truncation.ERROR)
            assert LIMIT < caught.value.token_count <= full_length
        query = spaced_text(rng, int(rng.integers(1, 4)))
        (pair,) = tok.encode_pairs(query, [text], Truncation.TRUNCATE)
        assert pair.ids.tolist() == truncating_reference().encode(query, text).ids


def test_a_long_text_over_the_limit_reports_a_lower_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(text_module, "_MIN_WINDOW_CHARS", 16)
    with pytest.raises(InputTooLongError, match=r"Input 0 is at least \d+ tokens long"):
        tokenizer(tmp_path).encode([words(5000)], Truncation.ERROR)


def test_a_long_text_costs_its_window_not_its_length(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = tokenizer(tmp_path)
    seen: list[int] = []
    exact = tok._exact
    original = exact.encode

    class Spy:
        def __getattr__(self, name: str) -> object:
            return getattr(exact, name)

        def encode(self, text: str, add_special_tokens: bool = True) -> object:
            seen.append(len(text))
            return original(text, add_special_tokens=add_special_tokens)

        def encode_batch(self, inputs: list[str]) -> object:
            seen.extend(len(x) for x in inputs)
            return exact.encode_batch(inputs)

    monkeypatch.setattr(tok, "_exact", Spy())
    text = words(200_000)  # 800 kB
    (cut,) = tok.encode([text], Truncation.TRUNCATE)
    assert cut.length == LIMIT
    assert max(seen) <= 4096, "the tokenizer saw more than the first window"
