"""Ray Train's internals stay out of the console; the job's own progress does not."""
import logging

from forge_ray.cluster.worker_logs import route_worker_logs, split_lines


def test_ray_train_chatter_goes_to_the_log_file_only():
    report = "Reporting training result 1: TrainingReport(checkpoint=None, metrics={'step': 10}, validation=False) from rank 0"
    worker = {"actor_name": "RayTrainWorker", "pid": 7, "lines": ["[sft] step 10/750 loss 2.93", report, "Loading weights: 100%"]}
    assert split_lines(worker) == (["[sft] step 10/750 loss 2.93"], [report, "Loading weights: 100%"])
    cleaner = {"actor_name": "PlacementGroupCleaner", "pid": 8, "lines": ["Failed to query Ray Train Controller actor state."]}
    assert split_lines(cleaner) == ([], cleaner["lines"])
    engine = {"actor_name": "RolloutWorker", "pid": 9, "lines": ["engine up"]}
    assert split_lines(engine) == (["engine up"], [])


def test_routing_replaces_rays_printer(tmp_path, monkeypatch):
    from ray._private.ray_logging import WorkerStandardStreamDispatcher

    dispatcher = WorkerStandardStreamDispatcher()
    monkeypatch.setattr("ray._private.ray_logging.global_worker_stdstream_dispatcher", dispatcher)
    printed = []
    dispatcher.add_handler("ray_print_logs", printed.append)
    sink = logging.FileHandler(tmp_path / "log.txt")
    assert route_worker_logs(sink)
    dispatcher.emit({"actor_name": "TrainController", "pid": 3, "lines": ["Requesting resources"]})
    dispatcher.emit({"actor_name": "RayTrainWorker", "pid": 4, "lines": ["[sft] step 1/2 loss 3.0"]})
    sink.flush()
    assert [d["lines"] for d in printed] == [["[sft] step 1/2 loss 3.0"]]
    assert "(TrainController pid=3) Requesting resources" in (tmp_path / "log.txt").read_text()
