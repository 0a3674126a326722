"""Real multi-node Ray clusters on this one machine (a static ``ray start`` cluster and the KubeRay
manifest rehearsed on Ray's fake autoscaler), and the marked processes they start: used by
``benchmarks/elastic.py`` and the tests."""
