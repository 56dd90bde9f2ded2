"""The router: weights, the stable hash of a routing key, and the shadow's independent decision."""

from __future__ import annotations

import os
import random
import subprocess
import sys

from serve.rollout.router import mirrors, pick, unit_hash
from serve.rollout.spec import Arm, Routing

N = 20_000
# 4.5 standard deviations of a binomial count: a correct router fails this once in ~150,000 runs.
TOLERANCE_SIGMAS = 4.5


def _within_binomial(count: int, n: int, p: float) -> bool:
    sigma = (n * p * (1 - p)) ** 0.5
    return abs(count - n * p) <= TOLERANCE_SIGMAS * sigma


def test_without_candidates_the_primary_answers() -> None:
    assert pick(Routing(1, (), None, None), None) == (1, "primary")


def test_a_random_split_follows_the_weights() -> None:
    random.seed(20)
    routing = Routing(1, (Arm(2, 10.0), Arm(3, 30.0)), None, None)
    picked = [pick(routing, None) for _ in range(N)]
    assert _within_binomial(picked.count((2, "candidate")), N, 0.10)
    assert _within_binomial(picked.count((3, "candidate")), N, 0.30)
    assert _within_binomial(picked.count((1, "primary")), N, 0.60)


def test_a_keyed_split_follows_the_weights_over_many_keys() -> None:
    routing = Routing(1, (Arm(2, 10.0),), None, "user")
    picked = [pick(routing, f"user-{i}")[0] for i in range(N)]
    assert _within_binomial(picked.count(2), N, 0.10)


def test_a_key_always_lands_on_the_same_arm() -> None:
    routing = Routing(1, (Arm(2, 50.0),), None, "user")
    for i in range(200):
        assert len({pick(routing, f"user-{i}") for _ in range(5)}) == 1


def test_the_key_hash_is_the_same_in_another_process() -> None:
    # blake2b, not Python's hash(), which is salted per process: a key lands alike on every worker and replica.
    code = "from serve.rollout.router import unit_hash; print(repr(unit_hash('alice')))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert float(other.stdout) == unit_hash("alice")


def test_a_100_percent_candidate_takes_every_request() -> None:
    routing = Routing(1, (Arm(2, 100.0),), None, None)
    assert {pick(routing, None) for _ in range(1000)} == {(2, "candidate")}


def test_no_shadow_mirrors_nothing() -> None:
    assert not mirrors(Routing(1, (), None, None), None)


def test_a_100_percent_shadow_mirrors_everything() -> None:
    routing = Routing(1, (), Arm(3, 100.0), "user")
    assert all(mirrors(routing, f"user-{i}") for i in range(1000))


def test_a_shadow_share_follows_its_percent() -> None:
    random.seed(21)
    routing = Routing(1, (), Arm(3, 25.0), None)
    assert _within_binomial(sum(mirrors(routing, None) for _ in range(N)), N, 0.25)


def test_mirroring_is_independent_of_the_arm_for_keyed_requests() -> None:
    routing = Routing(1, (Arm(2, 50.0),), Arm(3, 50.0), "user")
    keys = [f"user-{i}" for i in range(N)]
    on_candidate = [k for k in keys if pick(routing, k)[0] == 2]
    mirrored = sum(mirrors(routing, k) for k in on_candidate)
    assert _within_binomial(mirrored, len(on_candidate), 0.5)
