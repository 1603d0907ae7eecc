"""Ray tier: a real local Ray cluster, real vLLM CPU engines, real FSDP2 on gloo, tiny model."""
import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(num_cpus=8, include_dashboard=False, runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from forge_ray.config import load_job
    from forge_ray.models.tiny import make_tiny_model
    from forge_ray.pipeline import tiny_corpus

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0, corpus=tiny_corpus(load_job(None))))
