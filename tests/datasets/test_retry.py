"""The one retry policy: "retries" are the attempts after the first, backoff is bounded."""

from __future__ import annotations

import pytest

from hafen.datasets import _commit
from hafen.datasets._retry import RetryPolicy
from hafen.datasets._storage import _azure, _s3


def test_retries_follow_the_first_attempt():
    assert RetryPolicy(retries=0, backoff=0.1, max_backoff=1.0).attempts == 1
    assert RetryPolicy(retries=5, backoff=0.1, max_backoff=1.0).attempts == 6
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(retries=-1, backoff=0.1, max_backoff=1.0)


def test_the_pause_grows_with_the_retry_and_stays_under_the_cap():
    policy = RetryPolicy(retries=10, backoff=0.01, max_backoff=0.5)
    for retry in range(1, 11):
        for _ in range(50):
            assert 0 <= policy.pause(retry) <= min(0.5, 0.01 * 2**retry)


def test_a_retry_after_raises_the_pause_up_to_the_cap():
    policy = RetryPolicy(retries=3, backoff=0.001, max_backoff=2.0)
    assert policy.pause(1, at_least=1.5) == 1.5
    assert policy.pause(1, at_least=30.0) == 2.0


def test_the_numbers_of_each_loop(monkeypatch):
    # the commit loop: HAFEN_COMMIT_RETRIES retries, up to 5 ms after the first loss, 0.5 s at most
    monkeypatch.setenv("HAFEN_COMMIT_RETRIES", "0")
    assert _commit.retry_policy().attempts == 1
    monkeypatch.setenv("HAFEN_COMMIT_RETRIES", "3")
    policy = _commit.retry_policy()
    assert (policy.attempts, policy.backoff * 2, policy.max_backoff) == (4, 0.005, 0.5)
    # the cloud stores' exclusive creates: 6 attempts, 0.25 s doubling, 8 s at most
    for cloud in (_azure.AZURE_RETRY, _s3.S3_RETRY):
        assert (cloud.attempts, cloud.backoff, cloud.max_backoff) == (6, 0.25, 8.0)
