"""The built-in world: train and test problems never overlap, output is a pure function of the seed,
answers are right, and the pre-training corpus holds no test problem."""

from __future__ import annotations

import random
import re

import pytest

from posttrain.data import world
from posttrain.data.world import LEVELS, Problem, arithmetic_problems, arithmetic_rows, corpus_documents

BARE = re.compile(r"^What is (\d+) ([+-]) (\d+)\?$")
STORY = re.compile(r"^\w+ has (\d+) \w+ and (gets|gives away) (\d+)(?: more)?\. How many now\?$")
SUM_SENTENCE = re.compile(r"(\d+) ([+-]) (\d+) = (-?\d+)\.")
STORY_SENTENCE = re.compile(r"(\w+) has (\d+) (\w+) and (gets|gives away) (\d+)\. Now \1 has (-?\d+) \3\.")
RANGES = {
    1: ((0, 9), (0, 9)),
    2: ((10, 99), (0, 9)),
    3: ((10, 99), (10, 99)),
    4: ((10, 99), (10, 99)),
    5: ((100, 999), (10, 99)),
}


def identity(problem: Problem) -> tuple[str, int, int]:
    return (problem.op, problem.a, problem.b)


def parse_question(question: str) -> tuple[str, int, int]:
    bare = BARE.match(question)
    if bare:
        return bare.group(2), int(bare.group(1)), int(bare.group(3))
    story = STORY.match(question)
    assert story, question
    return ("+" if story.group(2) == "gets" else "-"), int(story.group(1)), int(story.group(3))


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("level", LEVELS)
def test_train_and_test_problems_never_overlap(seed: int, level: int) -> None:
    train = arithmetic_problems("train", 400, seed, (level,))
    test = arithmetic_problems("test", 5 if level == 1 else 60, seed, (level,))
    train_ids = {identity(p) for p, _ in train}
    test_ids = {identity(p) for p, _ in test}
    assert train_ids and test_ids and not train_ids & test_ids
    assert all(p.level == level for p, _ in train + test)
    # the test split holds distinct problems only
    assert len(test_ids) == len(test)


def test_split_depends_on_identity_only() -> None:
    problem = Problem(2, "+", 23, 45)
    assert problem.split == Problem(4, "+", 23, 45).split  # the level is not part of the identity
    level_one = [Problem(1, "+", a, b) for a in range(10) for b in range(10)]
    held_out = [p for p in level_one if p.split == "test"]
    assert 0 < len(held_out) < 30  # about 10% of the 100 level-1 problems
    # the test split of level 1 is exactly the held-out problems; asking for more is an error...
    test = arithmetic_problems("test", len(held_out), 0, (1,))
    assert {identity(p) for p, _ in test} == {identity(p) for p in held_out}
    with pytest.raises(ValueError, match="fewer than"):
        arithmetic_problems("test", len(held_out) + 1, 0, (1,))
    # ...unless other levels can continue once level 1 is used up
    mixed = arithmetic_problems("test", len(held_out) + 100, 0, (1, 3))
    assert len({identity(p) for p, _ in mixed}) == len(mixed)
    assert sum(p.level == 1 for p, _ in mixed) <= len(held_out)


def test_deterministic_for_a_seed() -> None:
    assert arithmetic_rows("train", 40, 3) == arithmetic_rows("train", 40, 3)
    assert arithmetic_rows("train", 40, 3) != arithmetic_rows("train", 40, 4)
    assert list(corpus_documents("train", 20, 3)) == list(corpus_documents("train", 20, 3))
    assert list(corpus_documents("train", 20, 3)) != list(corpus_documents("train", 20, 4))
    # the global random state plays no part
    random.seed(123)
    first = arithmetic_rows("test", 20, 3)
    random.seed(456)
    assert arithmetic_rows("test", 20, 3) == first


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_level_has_right_answers(split: str) -> None:
    rows = arithmetic_rows(split, 200, 0)
    assert {row["level"] for row in rows} == set(LEVELS)
    for row in rows:
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        op, a, b = parse_question(user["content"])
        expected = a + b if op == "+" else a - b
        assert row["answer"] == assistant["content"] == str(expected)
        (a_lo, a_hi), (b_lo, b_hi) = RANGES[row["level"]]
        assert a_lo <= a <= a_hi and b_lo <= b <= b_hi
        assert op == ("-" if row["level"] == 4 else "+")
        assert expected >= 0


def test_levels_filter_and_bad_arguments() -> None:
    assert {row["level"] for row in arithmetic_rows("train", 30, 0, (2, 3))} == {2, 3}
    with pytest.raises(ValueError, match="split must be"):
        arithmetic_problems("valid", 3, 0)
    with pytest.raises(ValueError, match="unknown difficulty level 6"):
        world.sample_problem(6, random.Random(0))


def test_a_level_listed_three_times_is_drawn_about_three_times_as_often() -> None:
    # the quickstart's SFT data (levels [1, 2, 3, 3, 3]); draws that land in the test split are redrawn at
    # the next level in turn, so the shares are near, not at, 1/5 : 1/5 : 3/5
    def share(levels: tuple[int, ...]) -> float:
        return sum(p.level == 3 for p, _ in arithmetic_problems("train", 3000, 0, levels)) / 3000

    assert 0.55 < share((1, 2, 3, 3, 3)) < 0.65 and 0.28 < share((1, 2, 3)) < 0.38


@pytest.mark.parametrize("seed", [0, 2])
def test_train_corpus_holds_no_test_problem(seed: int) -> None:
    documents = list(corpus_documents("train", 400, seed))
    assert len(documents) == 400
    mentioned: set[tuple[str, int, int]] = set()
    for document in documents:
        for a, op, b, result in SUM_SENTENCE.findall(document):
            mentioned.add((op, int(a), int(b)))
            assert int(result) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        for _, a, _, verb, b, result in STORY_SENTENCE.findall(document):
            op = "+" if verb == "gets" else "-"
            mentioned.add((op, int(a), int(b)))
            assert int(result) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    assert len(mentioned) > 200
    assert all(Problem(0, *key).split == "train" for key in mentioned)
    test_ids = {identity(p) for p, _ in arithmetic_problems("test", 300, seed)}
    assert not mentioned & test_ids
    # and the test corpus is built from test problems only
    held_out = {(op, int(a), int(b)) for doc in corpus_documents("test", 50, seed) for a, op, b, _ in SUM_SENTENCE.findall(doc)}
    assert held_out and all(Problem(0, *key).split == "test" for key in held_out)


def test_carry_by_hand() -> None:
    assert world.has_carry(world.Problem(2, "+", 27, 5)) and world.slipped_answer(world.Problem(2, "+", 27, 5)) == 22
    assert world.has_carry(world.Problem(3, "+", 38, 46)) and world.slipped_answer(world.Problem(3, "+", 38, 46)) == 74
    assert not world.has_carry(world.Problem(3, "+", 31, 46)) and world.slipped_answer(world.Problem(3, "+", 31, 46)) == 77
    assert world.has_carry(world.Problem(1, "+", 6, 8)) and world.slipped_answer(world.Problem(1, "+", 6, 8)) == 4
    assert not world.has_carry(world.Problem(4, "-", 71, 28))  # differences borrow; they never slip


def test_carry_slip_changes_only_the_demonstrated_answer_of_carrying_sums() -> None:
    clean = world.arithmetic_rows("train", 2000, 0, (1, 2, 3))
    slipped = world.arithmetic_rows("train", 2000, 0, (1, 2, 3), carry_slip=0.5)
    always = world.arithmetic_rows("train", 2000, 0, (1, 2, 3), carry_slip=1.0)
    shown_wrong = 0
    carrying = 0
    for c, s, a in zip(clean, slipped, always):
        assert c["messages"][0] == s["messages"][0] == a["messages"][0]  # same problems, same wording
        assert c["answer"] == s["answer"] == a["answer"] == c["messages"][1]["content"]  # `answer` stays right
        problem = world.Problem(c["level"], *parse_question(c["messages"][0]["content"]))
        if world.has_carry(problem):
            carrying += 1
            assert a["messages"][1]["content"] == str(problem.answer - 10)
            shown_wrong += s["messages"][1]["content"] != s["answer"]
            assert s["messages"][1]["content"] in (str(problem.answer), str(problem.answer - 10))
        else:
            assert s["messages"][1]["content"] == a["messages"][1]["content"] == c["answer"]
    assert carrying > 500  # about 45% of two-digit sums carry
    assert 0.45 < shown_wrong / carrying < 0.55  # binomial sd ~0.015 at ~900 carrying rows
    with pytest.raises(ValueError, match="carry_slip"):
        world.arithmetic_rows("train", 10, 0, (1,), carry_slip=1.5)
