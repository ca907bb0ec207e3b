"""The caption tokeniser and Vocabulary: punctuation, non-ASCII words, top-N, weightings, and the
plain-data state that checkpoints carry."""
import math

import pytest
import torch

from dchml.data import DataError
from dchml.data.vocab import Vocabulary, tokenize


def test_tokenize_strips_punctuation_and_keeps_non_ascii_words():
    assert tokenize("A cat, a CAT; and a dog!!") == ["a", "cat", "a", "cat", "and", "a", "dog"]
    assert tokenize("Café naïve — 東京タワー! snake_case x2") == ["café", "naïve", "東京タワー", "snake", "case", "x2"]
    # NFKC: a decomposed é and a full-width word match their composed / ASCII forms
    assert tokenize("Cafe\u0301 ＡＢＣ") == ["café", "abc"]
    assert tokenize("Straße") == ["strasse"]  # case folding, not just lower()
    assert tokenize("  ...  ") == []
    with pytest.raises(DataError, match="must be a string"):
        tokenize(None)


def test_fit_keeps_top_terms_by_document_frequency_with_alphabetical_ties():
    texts = ["cat dog", "cat cat sea", "dog sky", "cat", "zebra ant"]
    v = Vocabulary.fit(texts, max_terms=4)
    # df: cat 3, dog 2, then ant / sea / sky / zebra 1 each -> ties alphabetical
    assert v.terms == ("cat", "dog", "ant", "sea")
    assert Vocabulary.fit(texts, max_terms=10, min_df=2).terms == ("cat", "dog")
    with pytest.raises(DataError, match="no word occurs in at least 9"):
        Vocabulary.fit(texts, min_df=9)
    with pytest.raises(DataError, match="zero captions"):
        Vocabulary.fit([])
    with pytest.raises(DataError, match="max_terms must be a positive integer"):
        Vocabulary.fit(texts, max_terms=0)


def test_binary_count_and_tfidf_rows():
    texts = ["cat cat dog", "dog", "sea"]
    binary = Vocabulary.fit(texts).transform(["Cat, cat! unknown dog", "nothing"])
    assert binary.dtype == torch.float32 and binary.shape == (2, 3)
    terms = Vocabulary.fit(texts).terms  # ('dog', 'cat', 'sea'): dog in 2 texts
    assert terms == ("dog", "cat", "sea")
    assert binary.tolist() == [[1, 1, 0], [0, 0, 0]]
    counts = Vocabulary.fit(texts, weighting="count").transform(["cat cat dog"])
    assert counts.tolist() == [[1, 2, 0]]
    tfidf = Vocabulary.fit(texts, weighting="tfidf")
    idf = [math.log(4 / 3) + 1, math.log(4 / 2) + 1, math.log(4 / 2) + 1]
    assert tfidf.idf == pytest.approx(idf)
    row = tfidf.transform(["cat cat dog"])[0]
    expect = torch.tensor([1 * idf[0], 2 * idf[1], 0.0])
    torch.testing.assert_close(row, expect / expect.norm())
    assert tfidf.transform([""]).abs().sum() == 0  # no words: a zero row, no NaN


def test_state_round_trips_through_a_weights_only_torch_file(tmp_path):
    v = Vocabulary.fit(["Café au lait", "東京 café", "lait"], weighting="tfidf")
    path = tmp_path / "v.pt"
    torch.save({"vocab": v.to_state()}, path)
    back = Vocabulary.from_state(torch.load(path, weights_only=True)["vocab"])
    assert back == v
    assert torch.equal(back.transform(["café 東京"]), v.transform(["café 東京"]))
    assert v.known_words("café, tea and 東京") == 2


def test_bad_states_are_refused():
    with pytest.raises(DataError, match="not a saved vocabulary"):
        Vocabulary.from_state({"terms": ["a"]})
    with pytest.raises(DataError, match="list of strings"):
        Vocabulary.from_state({"kind": "vocabulary", "terms": [1, 2]})
    with pytest.raises(DataError, match="weighting must be one of"):
        Vocabulary(("a",), "bm25")
    with pytest.raises(DataError, match="unique"):
        Vocabulary(("a", "a"))
    with pytest.raises(DataError, match="only with, weighting 'tfidf'"):
        Vocabulary(("a",), "binary", (1.0,))
