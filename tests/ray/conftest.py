"""Ray tier: a real local Ray cluster, real vLLM CPU engines, real FSDP2 on gloo, tiny model."""
import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False, runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from forge_ray.config import load_job
    from forge_ray.models.tiny import make_tiny_model
    from forge_ray.pipeline import tiny_corpus

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0, corpus=tiny_corpus(load_job(None))))


def wandb_records(path):
    """Records of an offline W&B run file (``run-*.wandb``): a 7-byte header, then 32 KiB
    blocks of chunks (crc32, length, kind: 1 full, 2 first, 3 middle, 4 last) holding
    ``wandb_internal_pb2.Record`` messages."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the tail of a block too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            buf = chunk
        elif kind in (3, 4):
            buf += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def wandb_history(run_dir):
    """Every history row logged to the offline W&B runs of ``run_dir``: a list of {key: value}."""
    import glob
    import json

    rows = []
    for path in sorted(glob.glob(f"{run_dir}/wandb/offline-run-*/run-*.wandb")):
        for r in wandb_records(path):
            if r.WhichOneof("record_type") == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    return rows

