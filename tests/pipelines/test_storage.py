import pytest

from actors.errors import InputError
from pipelines.storage import RunStore, StorageSpec


def _exercise(store: RunStore):
    store.write_json("round-000/x.done.json", {"a": 1})
    store.write_bytes("round-000/pairs/b.parquet", b"bb")
    store.write_bytes("round-000/pairs/a.parquet", b"aa")
    store.write_bytes("round-000/pairs/notes.txt", b"n")
    assert store.read_json("round-000/x.done.json") == {"a": 1}
    assert store.read_json("round-000/missing.json") is None
    assert store.list_files("round-000/pairs", ".parquet") == ["round-000/pairs/a.parquet", "round-000/pairs/b.parquet"]
    store.write_bytes("round-000/pairs/a.parquet", b"a2")  # overwrite is whole
    assert store.read_bytes("round-000/pairs/a.parquet") == b"a2"
    store.delete_dir("round-000/pairs")
    assert store.list_files("round-000/pairs") == [] and store.exists("round-000/x.done.json")


def test_local_store(tmp_path):
    store = RunStore(StorageSpec(str(tmp_path)), "run")
    _exercise(store)
    assert not list(tmp_path.rglob("*.tmp-*")), "no temporary files are left behind"
    assert store.uri("round-000") == f"{tmp_path}/run/round-000"


def test_s3_store(s3_server, s3_bucket):
    store = RunStore(StorageSpec(f"s3://{s3_bucket}/prefix", endpoint_url=s3_server, region="us-east-1"), "run")
    _exercise(store)
    assert store.uri("round-000") == f"s3://{s3_bucket}/prefix/run/round-000"


def test_unreachable_endpoint_is_one_clear_line():
    spec = StorageSpec("s3://bucket/p", endpoint_url="http://127.0.0.1:9", region="us-east-1", max_attempts=1,
                       connect_timeout_s=1, request_timeout_s=1)
    with pytest.raises(InputError, match="storage error") as info:
        RunStore(spec, "run").write_bytes("x", b"1")
    assert "\n" not in str(info.value)


def test_bad_uri():
    with pytest.raises(InputError, match="only local paths and s3://"):
        RunStore(StorageSpec("gs://bucket/x"), "run")


def test_temporary_files_of_interrupted_writes_are_removed(tmp_path):
    from pipelines.rounds import _remove_torn_writes

    store = RunStore(StorageSpec(str(tmp_path)), "run")
    store.write_bytes("videos/a.mp4", b"whole")
    torn = tmp_path / "run" / "videos" / "b.mp4.tmp-1a2b3c4d"  # what a SIGKILL mid-write leaves
    torn.write_bytes(b"half")
    _remove_torn_writes(store, "videos")
    assert store.list_files("videos") == ["videos/a.mp4"] and store.read_bytes("videos/a.mp4") == b"whole"


def test_a_full_disk_and_a_missing_bucket_are_one_line_naming_cause_and_place(tmp_path, s3_server):
    import subprocess

    from actors.errors import StorageFailure

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        store = RunStore(StorageSpec(str(disk)), "run")
        store.write_bytes("config.yaml", b"kept")
        with pytest.raises(StorageFailure, match=f"^storage error at {disk}/run/big.bin: no space left on device"):
            store.write_bytes("big.bin", b"\0" * 200_000)
        assert sorted(p.name for p in (disk / "run").iterdir()) == ["config.yaml"]  # no torn temporary file
        assert store.read_bytes("config.yaml") == b"kept"
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)
    missing = RunStore(StorageSpec("s3://no-such-bucket-here/runs", endpoint_url=s3_server, region="us-east-1",
                                   max_attempts=1), "run")
    with pytest.raises(InputError, match="^storage error at s3://no-such-bucket-here/runs/run/lease/00000001.json: "
                                         "bucket 'no-such-bucket-here' does not exist; create it or fix output_uri"):
        missing.create_exclusive("lease/00000001.json", b"{}")
    with pytest.raises(InputError, match="bucket 'no-such-bucket-here' does not exist"):
        missing.write_bytes("config.yaml", b"x")
def test_s3_endpoint_and_region_from_the_standard_aws_variables(s3_server, s3_bucket, monkeypatch):
    """AWS_ENDPOINT_URL alone reaches the server, for pyarrow (the run's storage) and boto3 (model
    fetch); AWS_ENDPOINT_URL_S3 beats it, and storage.endpoint_url beats both."""
    from actors import s3

    dead = "http://127.0.0.1:9"
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    store = RunStore(StorageSpec(f"s3://{s3_bucket}/env"), "run")
    assert store.fs.region == "eu-west-3"
    store.write_json("a.json", {"x": 1})
    assert s3.boto3_client().get_object(Bucket=s3_bucket, Key="env/run/a.json")["Body"].read() == b'{\n  "x": 1\n}'
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    assert RunStore(StorageSpec(f"s3://{s3_bucket}/env"), "run").read_json("a.json") == {"x": 1}
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", dead)
    configured = StorageSpec(f"s3://{s3_bucket}/env", endpoint_url=s3_server, region="us-east-1")
    assert RunStore(configured, "run").read_json("a.json") == {"x": 1}
    # What the config sets, exported, wins in code that sees only the environment.
    s3.export_settings(s3.settings_env(s3_server, "us-east-1"))
    assert s3.endpoint_url() == s3_server and s3.region() == "us-east-1"
    assert s3.boto3_client().head_object(Bucket=s3_bucket, Key="env/run/a.json")["ContentLength"] > 0
