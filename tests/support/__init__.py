"""Helpers the tests share: the tiny pipelines, synthetic pair shards, the quickstart run, the flaky S3 proxy."""
