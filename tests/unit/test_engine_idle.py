"""vLLM's shared-memory readers stop busy-waiting soon after their last message in a forge_ray
CPU engine's processes (forge_ray/rollout/engine.py, quiet_when_idle)."""
import pytest

shm = pytest.importorskip("vllm.distributed.device_communicators.shm_broadcast")


def _reader():
    import zmq

    from vllm.utils.network_utils import get_open_zmq_ipc_path

    return shm.SpinCondition(is_reader=True, context=zmq.Context.instance(), notify_address=get_open_zmq_ipc_path())


@pytest.fixture
def restore(monkeypatch):
    monkeypatch.setattr(shm.SpinCondition, "wait", shm.SpinCondition.wait)
    monkeypatch.delattr(shm.SpinCondition, "forge_spin_cap", raising=False)
    return monkeypatch


def test_the_readers_spin_is_capped_in_engine_processes(restore):
    from forge_ray.rollout.engine import quiet_when_idle

    restore.setenv("FORGE_RAY_ENGINE", "1")
    restore.setenv("FORGE_RAY_ENGINE_IDLE_SPIN_S", "0.02")
    reader = _reader()  # made before the hook ran, as vLLM's worker makes its queue
    assert reader.busy_loop_s == 1
    quiet_when_idle()
    quiet_when_idle()  # idempotent: one wrapper, not two
    reader.wait(timeout_ms=1)
    assert reader.busy_loop_s == 0.02 and shm.SpinCondition.forge_spin_cap == 0.02


def test_other_processes_keep_vllms_spin(restore):
    from forge_ray.rollout.engine import quiet_when_idle

    restore.delenv("FORGE_RAY_ENGINE", raising=False)
    restore.setenv("FORGE_RAY_ENGINE_IDLE_SPIN_S", "0.02")
    quiet_when_idle()
    reader = _reader()
    reader.wait(timeout_ms=1)
    assert reader.busy_loop_s == 1 and getattr(shm.SpinCondition, "forge_spin_cap", None) is None
